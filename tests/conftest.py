import os

import pytest
import torch

# The same for the processes the tests start (the console script, notebooks, the device check):
# each of the two workers has one core, and a child on two threads competes with the other worker
# (a quick reproduction took 114 s in the suite against 51 s alone).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _one_thread_per_worker():
    # pytest runs on two worker processes (pytest-xdist, -n 2), one per core; the tiny tensors of
    # these tests run faster on one thread each than when the workers compete for both cores.
    torch.set_num_threads(1)
