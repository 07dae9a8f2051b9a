import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_per_worker():
    # pytest runs on two worker processes (pytest-xdist, -n 2), one per core; the tiny tensors of
    # these tests run faster on one thread each than when the workers compete for both cores.
    torch.set_num_threads(1)
