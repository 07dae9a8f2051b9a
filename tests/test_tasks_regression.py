import torch

from iclab.families.regression import RegressionTaskConfig
from iclab.tasks.linear import draw_pool
from iclab.tasks.regression import RegressionTask


def test_pools_are_nested_in_the_task_diversity():
    big = draw_pool(10_000, 8, 1.0, pool_seed=3)
    for m in (1, 7, 4096, 4097, 9000):
        assert torch.equal(draw_pool(m, 8, 1.0, pool_seed=3), big[:m])
    assert not torch.equal(draw_pool(16, 8, 1.0, pool_seed=4), big[:16])


def test_batches_are_a_pure_function_of_seed_and_step():
    task = RegressionTask(RegressionTaskConfig(n_tasks=32))
    first = task.train_batch(seed=0, step=5, batch_size=8)
    task.train_batch(seed=0, step=6, batch_size=8)  # other draws in between change nothing
    again = RegressionTask(RegressionTaskConfig(n_tasks=32)).train_batch(0, 5, 8)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    other = task.train_batch(seed=0, step=7, batch_size=8)
    assert not torch.equal(first[0], other[0])


def test_pretraining_batches_use_only_pool_tasks_and_the_noise_level():
    config = RegressionTaskConfig(n_dims=4, n_points=64, n_tasks=3, noise_std=0.5)
    task = RegressionTask(config)
    generator = torch.Generator().manual_seed(0)
    xs, ys, ws = task.sample(generator, 256, "pretrain")
    distances = torch.cdist(ws, task.pool)
    assert torch.all(distances.min(dim=1).values == 0)
    assert len(torch.unique(ws, dim=0)) == 3
    residual = ys - torch.einsum("bkd,bd->bk", xs, ws)
    assert abs(residual.std().item() - 0.5) < 0.02


def test_true_distribution_draws_fresh_tasks_and_eval_differs_from_training():
    task = RegressionTask(RegressionTaskConfig(n_dims=4, n_tasks=2))
    _, _, ws = task.sample(torch.Generator().manual_seed(0), 512, "true")
    assert len(torch.unique(ws, dim=0)) == 512
    assert abs(ws.var().item() - 1.0) < 0.1
    train_xs, _ = task.train_batch(0, 0, 16)
    eval_xs, _ = task.eval_batch("pretrain", 0, 0, 16)
    assert not torch.equal(train_xs, eval_xs)
