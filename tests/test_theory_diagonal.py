"""Closed-form loss of the diagonal multi-head attention model: exactness, minimisers, structure."""

import pytest
import torch

from iclab.models.diagonal_attention import DiagonalAttention, diagonal_attention_predict
from iclab.theory.diagonal_attention import (
    closed_form_loss,
    exact_average_loss,
    minimise_closed_form,
    required_grid_size,
    sequences_from_angles,
    structure_report,
)

F64 = torch.float64


def _random_params(gen: torch.Generator, d: int, h: int, t: int) -> list[torch.Tensor]:
    return [torch.randn(shape, generator=gen, dtype=F64) for shape in [(h, d), (h, d), (t, t)]]


def _random_start(gen: torch.Generator, d: int, family: str) -> torch.Tensor:
    real = torch.randn(d, generator=gen, dtype=F64)
    if family == "rotations":
        return real
    return torch.complex(real, torch.randn(d, generator=gen, dtype=F64))


@pytest.mark.parametrize(
    "family,d,h,t",
    [("unitary", 3, 2, 5), ("unitary", 2, 3, 4), ("rotations", 4, 3, 4), ("rotations", 6, 2, 3)],
)
@pytest.mark.parametrize("random_start", [False, True])
def test_closed_form_equals_exact_grid_average(family, d, h, t, random_start):
    gen = torch.Generator().manual_seed(d * 100 + h * 10 + t)
    for _ in range(3):
        A, B, P = _random_params(gen, d, h, t)
        start = _random_start(gen, d, family) if random_start else None
        closed = closed_form_loss(A, B, P, family, start=start, per_position=True)
        exact = exact_average_loss(A, B, P, family, start=start, per_position=True)
        assert closed.shape == (t - 1,)
        torch.testing.assert_close(closed, exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize("family,d,t", [("unitary", 3, 5), ("rotations", 4, 4)])
def test_one_grid_point_fewer_is_not_exact(family, d, t):
    # The grid size of required_grid_size is tight, so the agreement above is not luck.
    # (A random start: with s_0 = 1 the rotations top-frequency coefficient happens to alias to 0.)
    gen = torch.Generator().manual_seed(1)
    A, B, P = _random_params(gen, d, 2, t)
    start = _random_start(gen, d, family)
    closed = closed_form_loss(A, B, P, family, start=start)
    n_grid = required_grid_size(t, family) - 1
    coarse = exact_average_loss(A, B, P, family, n_grid=n_grid, start=start)
    assert abs(coarse - closed) / closed > 1e-3


def test_model_shapes_and_exact_solutions():
    d, t = 4, 6
    theta = 2 * torch.pi * torch.rand(8, d, dtype=F64, generator=torch.Generator().manual_seed(0))
    # Unitary, s_0 = 1: C = I, P = I predicts s_{t+1} = e^{i theta} s_t exactly.
    states = sequences_from_angles(theta, t, "unitary")
    eye = torch.eye(d, dtype=F64)
    pred = diagonal_attention_predict(eye, eye, torch.eye(t, dtype=F64), states)
    assert pred.shape == (8, t - 1, d) and pred.dtype == torch.complex128
    torch.testing.assert_close(pred, states[:, 2:])
    # Rotations, s_0 = 1 (|x_0|^2 = 2 per block): one head per block, p_prev = -p_last / 2.
    states = sequences_from_angles(theta[:, : d // 2], t, "rotations")
    heads = torch.block_diag(*[torch.ones(1, 2, dtype=F64)] * (d // 2))
    P = torch.eye(t, dtype=F64) - 0.5 * torch.diag(torch.ones(t - 1, dtype=F64), -1)
    pred = diagonal_attention_predict(heads, heads, P, states)
    torch.testing.assert_close(pred, states[:, 2:])
    # As a model it has the predictors' call shape: s_0 .. s_{T-1} in, output t predicts s_{t+1}.
    model = DiagonalAttention(d, 3, t).double()
    out = model(states[:, :-1])
    assert out.shape == (8, t, d) and not out[:, 0].any()
    torch.testing.assert_close(
        out[:, 1:], diagonal_attention_predict(model.A, model.B, model.P, states)
    )
    assert closed_form_loss(heads, heads, P, "rotations") < 1e-20


def test_unitary_full_heads_minimiser_is_multiple_of_identity():
    d, t = 4, 5
    found = minimise_closed_form(d, d, t, "unitary", steps=200, seed=0, init_std=0.01)
    report = structure_report(found.A, found.B, found.P)
    assert found.loss < 1e-4
    assert exact_average_loss(found.A, found.B, found.P, "unitary") < 1e-4
    assert report["identity_gap"] < 0.05
    assert report["rank"] == d
    assert abs(report["c_p_last"] - 1) < 0.01  # c p_last = 1 for s_0 = 1
    assert abs(report["ratio"]) < 0.01 and report["mass_elsewhere"] < 0.01
    # From a small init the heads come out orthogonal (A A^T - B B^T is nearly conserved) ...
    assert report["max_abs_cos"] < 0.01
    # ... but minimality does not force it: A -> M A, B -> M^{-T} B keeps C = B^T A and the loss.
    mix = torch.eye(d, dtype=F64) + 0.5 * torch.ones(d, d, dtype=F64)
    A, B = mix @ found.A, torch.linalg.inv(mix).T @ found.B
    assert closed_form_loss(A, B, found.P, "unitary") < 1e-4
    assert structure_report(A, B, found.P)["max_abs_cos"] > 0.3


def test_unitary_fewer_heads_minimum_is_the_rank_bound():
    d, h, t = 4, 2, 5
    found = minimise_closed_form(d, h, t, "unitary", steps=200, seed=0, init_std=0.01)
    C = found.B.T @ found.A
    # Per position and coordinate: (d - tr(C)^2 / |C|_F^2) / d at the best P, >= (d - rank C) / d.
    at_best_p = (d - torch.trace(C) ** 2 / torch.linalg.matrix_norm(C) ** 2) / d
    assert found.loss > 0.1
    assert abs(found.loss - at_best_p) < 1e-6
    assert abs(found.loss - (d - h) / d) < 1e-4
    assert structure_report(found.A, found.B, found.P)["rank"] == h


def test_rotations_half_heads_minimiser_uses_the_cosine_recurrence():
    d, t = 4, 5
    found = minimise_closed_form(d, d // 2, t, "rotations", steps=200, seed=0, init_std=0.01)
    report = structure_report(found.A, found.B, found.P)
    assert found.loss < 1e-4
    assert exact_average_loss(found.A, found.B, found.P, "rotations") < 1e-4
    assert abs(report["ratio"] + 0.5) < 0.025
    assert report["block_gap"] < 0.05 and report["rank"] == d // 2
    assert report["mass_elsewhere"] < 0.01
    assert report["max_abs_cos"] < 0.01
