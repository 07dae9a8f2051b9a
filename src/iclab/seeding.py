"""Reproducible random streams: every draw is a pure function of integer keys.

A batch at training step n is drawn from a generator seeded by (seed, stream, n), so it does not
depend on what ran before it; a resumed run therefore sees exactly the batches of an uninterrupted one.
"""

import hashlib

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (numpy's SeedSequence hashing, stable across runs)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def make_generator(device: torch.device | str, *keys: int) -> torch.Generator:
    """A torch generator on `device` seeded from `keys` (see derive_seed)."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(derive_seed(*keys))
    return generator


# Stream identifiers, so that pools, training batches and evaluation sets never share draws.
POOL_STREAM = 1
TRAIN_STREAM = 2
EVAL_STREAM = 3
INIT_STREAM = 4
# 5 and 6 are the Monte-Carlo estimators' draws (estimators/laplace_posterior, classification).


def content_key(*tensors: torch.Tensor) -> int:
    """A 63-bit key from the bytes of `tensors`: estimators seed their Monte-Carlo draws for an
    evaluation chunk with it, so the draws are a pure function of the chunk (itself a pure function
    of the evaluation seed, the distribution and the chunk index)."""
    digest = hashlib.blake2b(digest_size=8)
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1
