import math

import pytest
import torch

from iclab.config import ConfigError, config_from_dict
from iclab.families import make_task
from iclab.families.autoregressive import AutoregressiveTaskConfig
from iclab.seeding import make_generator
from iclab.tasks.autoregressive import AutoregressiveTask, squared_modulus


def make(**fields) -> AutoregressiveTask:
    return AutoregressiveTask(AutoregressiveTaskConfig(**fields), "cpu")


def angles_of_blocks(w: torch.Tensor) -> torch.Tensor:
    """Angles in [0, 2 pi) of the 2x2 diagonal blocks of block-diagonal rotations (batch, d/2)."""
    cos = torch.diagonal(w, dim1=-2, dim2=-1)[:, ::2]
    sin = w[:, 1::2, 0::2].diagonal(dim1=-2, dim2=-1)
    return torch.atan2(sin, cos) % (2 * math.pi)


@pytest.mark.parametrize("family", ["unitary", "rotations", "orthogonal"])
def test_batches_are_pure_functions_of_seed_and_step(family):
    task = make(w_family=family, n_dims=4, n_steps=6, noise_std=0.1, start="random")
    (a,) = task.train_batch(3, 7, 5)
    (b,) = make(w_family=family, n_dims=4, n_steps=6, noise_std=0.1, start="random").train_batch(
        3, 7, 5
    )
    assert torch.equal(a, b)
    assert not torch.equal(a, task.train_batch(3, 8, 5)[0])
    assert not torch.equal(a, task.train_batch(4, 7, 5)[0])
    (e,) = task.eval_batch("true", 3, 7, 5)
    assert not torch.equal(a, e)
    assert torch.equal(e, task.eval_sample("true", 3, 7, 5)[0])
    with pytest.raises(ValueError, match="pretrain"):
        task.eval_batch("pretrain", 0, 0, 2)


def test_shapes_dtypes_and_fixed_start():
    unitary = make(n_dims=5, n_steps=7)
    states, ws = unitary.sample(make_generator("cpu", 0), 3)
    assert states.shape == (3, 8, 5) and states.dtype == torch.complex64
    assert ws.shape == (3, 5, 5) and ws.dtype == torch.complex64
    assert torch.allclose(states[:, 0], torch.full((3, 5), 5**-0.5, dtype=torch.complex64))
    real, _ = make(w_family="rotations", n_dims=4, n_steps=7).sample(make_generator("cpu", 0), 3)
    assert real.dtype == torch.float32
    assert torch.allclose(real[:, 0], torch.full((3, 4), 0.5))


@pytest.mark.parametrize("family", ["unitary", "rotations", "orthogonal"])
def test_noise_free_transitions_and_random_start(family):
    task = make(w_family=family, n_dims=6, n_steps=10, start="random")
    states, ws = task.sample(make_generator("cpu", 1), 200)
    assert torch.allclose(
        states[:, 1:], (ws @ states[:, :-1].transpose(1, 2)).transpose(1, 2), atol=1e-5
    )
    norms = torch.linalg.vector_norm(states, dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)  # W preserves the unit norm
    assert (states[0, 0] - states[1, 0]).abs().max() > 0.1  # random starts differ


@pytest.mark.parametrize("family", ["unitary", "rotations"])
def test_noise_has_the_configured_variance(family):
    task = make(w_family=family, n_dims=4, n_steps=20, noise_std=0.3)
    states, ws = task.sample(make_generator("cpu", 2), 2000)
    residual = states[:, 1:] - (ws @ states[:, :-1].transpose(1, 2)).transpose(1, 2)
    variance = squared_modulus(residual).mean().item()  # E|eps_j|^2 = sigma^2, real or complex
    assert variance == pytest.approx(0.09, rel=0.03)
    if family == "unitary":  # circular: real and imaginary parts each carry half
        assert residual.real.var().item() == pytest.approx(0.045, rel=0.05)


@pytest.mark.parametrize("mu", [1.0, 7.0])
def test_unitary_w_is_diagonal_with_angles_in_range(mu):
    _, ws = make(n_dims=5, mu=mu).sample(make_generator("cpu", 3), 4000)
    diagonal = torch.diagonal(ws, dim1=-2, dim2=-1)
    assert torch.equal(torch.diag_embed(diagonal), ws)
    assert torch.allclose(diagonal.abs(), torch.ones(4000, 5))
    angles = diagonal.angle() % (2 * math.pi)
    assert angles.max() < 2 * math.pi / mu + 1e-5
    assert angles.max() > 0.99 * 2 * math.pi / mu  # fills the range
    assert angles.mean().item() == pytest.approx(math.pi / mu, rel=0.03)


def test_canonical_rotations_are_commuting_2x2_blocks():
    _, ws = make(w_family="rotations", n_dims=6, mu=3.0).sample(make_generator("cpu", 4), 2000)
    eye = torch.eye(6).expand(2000, 6, 6)
    assert torch.allclose(ws @ ws.transpose(1, 2), eye, atol=1e-5)
    mask = torch.block_diag(*[torch.ones(2, 2)] * 3).bool()
    assert ws[:, ~mask].abs().max() == 0
    assert torch.allclose(ws[0] @ ws[1], ws[1] @ ws[0], atol=1e-6)
    angles = angles_of_blocks(ws)
    assert angles.max() < 2 * math.pi / 3 + 1e-5 and angles.max() > 0.99 * 2 * math.pi / 3
    assert torch.allclose(torch.linalg.det(ws), torch.ones(2000), atol=1e-5)


def test_random_basis_rotations_share_one_basis():
    task = make(w_family="rotations", n_dims=4, rotation_basis="random", basis_seed=5)
    _, ws = task.sample(make_generator("cpu", 5), 50)
    q = task.basis
    assert torch.allclose(q @ q.T, torch.eye(4), atol=1e-6)
    assert torch.equal(
        q, make(w_family="rotations", n_dims=4, rotation_basis="random", basis_seed=5).basis
    )
    other = make(w_family="rotations", n_dims=4, rotation_basis="random", basis_seed=6).basis
    assert not torch.allclose(q, other)
    blocks = q.T @ ws @ q  # block diagonal in the shared basis
    mask = torch.block_diag(*[torch.ones(2, 2)] * 2).bool()
    assert blocks[:, ~mask].abs().max() < 1e-5
    assert ws[:, ~mask].abs().max() > 0.1  # but not in the canonical one
    assert torch.allclose(ws[0] @ ws[1], ws[1] @ ws[0], atol=1e-5)


def test_orthogonal_w_is_haar():
    _, ws = make(w_family="orthogonal", n_dims=4).sample(make_generator("cpu", 6), 8000)
    assert torch.allclose(ws @ ws.transpose(1, 2), torch.eye(4).expand(8000, 4, 4), atol=1e-5)
    trace = torch.diagonal(ws, dim1=-2, dim2=-1).sum(-1)
    # Haar on O(d): E[W] = 0 and E[tr(W)^2] = 1; both determinant signs occur.
    assert abs(trace.mean().item()) < 0.05
    assert trace.square().mean().item() == pytest.approx(1.0, abs=0.08)
    det = torch.linalg.det(ws)
    assert 0.45 < (det > 0).float().mean().item() < 0.55
    assert not torch.allclose(ws[0] @ ws[1], ws[1] @ ws[0], atol=1e-3)


def test_loss_is_mean_squared_modulus():
    task = make(n_dims=5, n_steps=8)
    batch = task.train_batch(0, 0, 64)
    zero = task.loss(lambda inputs: torch.zeros_like(inputs), batch)
    assert zero.item() == pytest.approx(1 / 5, rel=1e-5)  # |s_{t+1}|^2 = 1 spread over d = 5
    copy = task.loss(lambda inputs: batch[0][:, 1:], batch)
    assert copy.item() == 0


def test_config_validation_and_registry():
    with pytest.raises(ConfigError, match="task.mu"):
        AutoregressiveTaskConfig(w_family="orthogonal", mu=2.0)
    with pytest.raises(ConfigError, match="task.rotation_basis"):
        AutoregressiveTaskConfig(w_family="unitary", rotation_basis="random")
    with pytest.raises(ConfigError, match="task.n_dims"):
        AutoregressiveTaskConfig(w_family="rotations", n_dims=5)
    config = config_from_dict(
        {"task": {"family": "autoregressive", "n_dims": 3}, "model": {"family": "linear_attention"}}
    )
    assert isinstance(make_task(config.task, "cpu"), AutoregressiveTask)
