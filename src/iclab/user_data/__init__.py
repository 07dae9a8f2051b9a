"""In-context prediction on a user's own data: a trained regression run applied to a CSV of rows
(predict.py), an autoregressive run applied to a multivariate time series (forecast.py), each
beside honest baselines; csv_table.py reads and checks the files; example_data.py writes small
synthetic ones."""
