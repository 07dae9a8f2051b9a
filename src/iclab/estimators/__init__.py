"""Closed-form baselines with the predictors' call shape: predict(xs, ys) -> (batch, n_points)."""
