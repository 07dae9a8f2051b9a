import numpy as np
import pytest
import torch

from iclab.estimators.autoregressive import (
    CosineRecurrence,
    LastPair,
    LeastSquares,
    OneStepGD,
    Oracle,
    empirical_optimal_eta,
    optimal_eta,
    unitary_optimal_eta,
)
from iclab.families.autoregressive import AutoregressiveTaskConfig
from iclab.seeding import make_generator
from iclab.tasks.autoregressive import AutoregressiveTask, squared_modulus


def sample(n: int = 6, seed: int = 0, **fields) -> tuple[torch.Tensor, torch.Tensor]:
    task = AutoregressiveTask(AutoregressiveTaskConfig(**fields), "cpu")
    return task.sample(make_generator("cpu", seed), n)


def errors(predictions: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Per-position mean squared error against s_{t+1}: (T,)."""
    return squared_modulus(predictions - states[:, 1:]).mean(dim=(0, 2))


# Brute-force references: explicit loops over sequences and positions, numpy linear algebra.
def reference_least_squares(states: np.ndarray) -> np.ndarray:
    out = np.zeros_like(states)
    for b in range(states.shape[0]):
        for t in range(1, states.shape[1]):
            x = states[b, :t].T  # columns s_0..s_{t-1}
            y = states[b, 1 : t + 1].T
            out[b, t] = y @ np.linalg.pinv(x, rcond=1e-8) @ states[b, t]
    return out


def reference_one_step_gd(states: np.ndarray, eta: float) -> np.ndarray:
    out = np.zeros_like(states)
    for b in range(states.shape[0]):
        for t in range(states.shape[1]):
            w_hat = sum(
                (np.outer(states[b, s + 1], states[b, s].conj()) for s in range(t)),
                np.zeros((states.shape[2],) * 2, dtype=states.dtype),
            )
            out[b, t] = eta * w_hat @ states[b, t]
    return out


def reference_last_pair(states: np.ndarray) -> np.ndarray:
    out = np.zeros_like(states)
    for b in range(states.shape[0]):
        for t in range(1, states.shape[1]):
            w_hat = np.diag(states[b, t] / states[b, t - 1])
            out[b, t] = w_hat @ states[b, t]
    return out


def reference_cosine(states: np.ndarray, basis: np.ndarray) -> np.ndarray:
    out = np.zeros_like(states)
    x = states @ basis
    for b in range(states.shape[0]):
        for t in range(1, states.shape[1]):
            prediction = np.zeros(states.shape[2])
            for i in range(0, states.shape[2], 2):
                block = slice(i, i + 2)
                cross = sum(x[b, s + 1, block] @ x[b, s, block] for s in range(t))
                norm = sum(x[b, s, block] @ x[b, s, block] for s in range(t))
                prediction[block] = 2 * cross / norm * x[b, t, block] - x[b, t - 1, block]
            out[b, t] = basis @ prediction
    return out


@pytest.mark.parametrize("family", ["unitary", "rotations", "orthogonal"])
def test_least_squares_and_gd_match_loops(family):
    states, _ = sample(n=4, w_family=family, n_dims=4, n_steps=7, noise_std=0.2, start="random")
    inputs = states[:, :-1]
    wide = inputs.numpy().astype(np.complex128 if states.is_complex() else np.float64)
    ls = LeastSquares()(inputs).numpy()
    np.testing.assert_allclose(ls, reference_least_squares(wide), atol=2e-4)
    gd = OneStepGD(0.37)(inputs).numpy()
    np.testing.assert_allclose(gd, reference_one_step_gd(wide, 0.37), atol=1e-5)
    per_position = torch.linspace(0.1, 0.9, 7)
    gd_t = OneStepGD(per_position)(inputs)
    expected = OneStepGD(1.0)(inputs) * per_position[:, None]
    torch.testing.assert_close(gd_t, expected)


def test_last_pair_and_cosine_match_loops():
    states, _ = sample(n=4, n_dims=3, n_steps=6, noise_std=0.1, start="random")
    wide = states[:, :-1].numpy().astype(np.complex128)
    np.testing.assert_allclose(
        LastPair()(states[:, :-1]).numpy(), reference_last_pair(wide), atol=1e-4
    )
    task = AutoregressiveTask(
        AutoregressiveTaskConfig(
            w_family="rotations", n_dims=4, n_steps=6, noise_std=0.1, rotation_basis="random"
        ),
        "cpu",
    )
    states, _ = task.sample(make_generator("cpu", 1), 4)
    wide = states[:, :-1].numpy().astype(np.float64)
    expected = reference_cosine(wide, task.basis.numpy().astype(np.float64))
    np.testing.assert_allclose(
        CosineRecurrence(task.basis)(states[:, :-1]).numpy(), expected, atol=1e-4
    )


def test_oracle_is_exact_without_noise_and_needs_w():
    for family in ("unitary", "rotations", "orthogonal"):
        states, ws = sample(w_family=family, n_dims=4, n_steps=9)
        assert errors(Oracle()(states[:, :-1], ws), states).max() < 1e-10
    with pytest.raises(ValueError, match="ws"):
        Oracle()(states[:, :-1])


@pytest.mark.parametrize("family", ["unitary", "rotations", "orthogonal"])
def test_least_squares_is_exact_once_d_pairs_are_seen(family):
    states, _ = sample(n=50, w_family=family, n_dims=4, n_steps=10, start="random")
    error = errors(LeastSquares()(states[:, :-1]), states)
    assert error[4:].max() < 1e-8  # t >= d pairs span the space
    assert error[1:3].min() > 1e-3  # fewer pairs cannot pin W down


def test_last_pair_is_exact_for_unitary_w():
    states, _ = sample(n=50, n_dims=5, n_steps=9, mu=3.0)
    error = errors(LastPair()(states[:, :-1]), states)
    assert error[1:].max() < 1e-10 and error[0] == pytest.approx(0.2, rel=1e-5)


@pytest.mark.parametrize("basis", ["canonical", "random"])
def test_cosine_recurrence_is_exact_for_rotations(basis):
    task = AutoregressiveTask(
        AutoregressiveTaskConfig(w_family="rotations", n_dims=6, n_steps=9, rotation_basis=basis),
        "cpu",
    )
    states, _ = task.sample(make_generator("cpu", 2), 50)
    error = errors(CosineRecurrence(task.basis)(states[:, :-1]), states)
    assert error[1:].max() < 1e-10
    if basis == "random":  # the canonical-basis recurrence does not hold in another basis
        assert errors(CosineRecurrence()(states[:, :-1]), states)[1:].mean() > 1e-3


@pytest.mark.parametrize("family", ["unitary", "rotations", "orthogonal"])
def test_estimators_are_causal(family):
    states, ws = sample(n=3, w_family=family, n_dims=4, n_steps=8, noise_std=0.1)
    changed = states.clone()
    changed[:, 5:] = changed[:, 5:] * 3 + 1
    estimators = [LeastSquares(), OneStepGD(0.5), LastPair(), Oracle()]
    if family == "rotations":
        estimators.append(CosineRecurrence())
    for estimator in estimators:
        before = estimator(states[:, :-1], ws)
        after = estimator(changed[:, :-1], ws)
        assert torch.equal(before[:, :5], after[:, :5]), type(estimator).__name__
        assert not torch.equal(before[:, 5:], after[:, 5:]), type(estimator).__name__


def test_unitary_closed_form_eta():
    eta = unitary_optimal_eta(n_dims=5, n_steps=12)
    assert eta.per_position[0] == 0
    assert eta.per_position[1:] == pytest.approx([5 / (t + 4) for t in range(1, 12)])
    for mu in (1.0, 3.0):
        config = AutoregressiveTaskConfig(n_dims=5, n_steps=12, mu=mu)
        closed = unitary_optimal_eta(5, 12, mu)
        empirical = empirical_optimal_eta(config, n_sequences=16384)
        assert empirical.per_position[1:] == pytest.approx(closed.per_position[1:], rel=0.02)
        assert empirical.overall == pytest.approx(closed.overall, rel=0.01)
        assert optimal_eta(config).method == "closed form"


@pytest.mark.parametrize(
    "fields",
    [
        {"n_dims": 5},
        {"n_dims": 4, "w_family": "rotations", "noise_std": 0.1},
        {"n_dims": 4, "w_family": "orthogonal", "start": "random"},
    ],
)
def test_optimal_eta_beats_half_and_double(fields):
    config = AutoregressiveTaskConfig(n_steps=15, **fields)
    eta = optimal_eta(config, n_sequences=4096)
    states, _ = sample(n=4096, seed=11, n_steps=15, **fields)  # fresh sequences
    error = {
        scale: errors(OneStepGD(scale * eta.overall)(states[:, :-1]), states).sum().item()
        for scale in (0.5, 1.0, 2.0)
    }
    assert error[1.0] < error[0.5] and error[1.0] < error[2.0]
    per_position = errors(OneStepGD(eta.per_position)(states[:, :-1]), states).sum().item()
    assert per_position < error[1.0]
