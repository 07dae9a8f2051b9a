import pytest
import torch


@pytest.fixture(autouse=True)
def _small_thread_pool():
    # The suite runs on 2 cores; tiny models gain nothing from more threads.
    torch.set_num_threads(2)
