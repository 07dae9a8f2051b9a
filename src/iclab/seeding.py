"""Reproducible random streams: every draw is a pure function of integer keys.

A batch at training step n is drawn from a generator seeded by (seed, stream, n), so it does not
depend on what ran before it; a resumed run therefore sees exactly the batches of an uninterrupted one.

Samplers draw through normal / uniform / integers below, from either of two random sources:
- a torch.Generator (make_generator): the default everywhere;
- CounterDraws: numbers computed from (key, step, call, element index) by integer arithmetic on
  the tensors' device, with the step a device tensor. Nothing is seeded on the host, so a
  captured train step (torch.compile / CUDA graphs) can draw its own next batch, and the numbers
  are the same on every device.
"""

import hashlib
import math

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


MASK32 = 0xFFFFFFFF


def _multiply32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2^32 for int64 x in [0, 2^32), without int64 overflow (16-bit halves)."""
    high = (x * (constant >> 16)) & 0xFFFF
    return ((high << 16) + x * (constant & 0xFFFF)) & MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (Wellons' lowbias32) of int64 x in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _multiply32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _multiply32(x, 0x846CA68B)
    return x ^ (x >> 16)


class CounterDraws:
    """A counter-based random source: call c of a step draws element i as a hash of
    (key, step, c, i), with integer tensor operations only (no host generator, no host sync).

    key: an integer (e.g. derive_seed(seed, TRAIN_STREAM)); step: a 0-dim int64 tensor on the
    device that holds the step (a captured train step updates it in place). Each call to
    normal / uniform / integers takes the next call number, so a sampler that makes the same
    calls in the same order gets the same numbers for the same (key, step).
    """

    def __init__(self, key: int, step: torch.Tensor):
        self.keys = (key & MASK32, (key >> 32) & MASK32)
        self.step = step
        self.calls = 0

    def bits(self, count: int) -> torch.Tensor:
        """count uniform 32-bit integers (int64 tensor on the step's device)."""
        call, self.calls = self.calls, self.calls + 1
        call_key = (call + 1) * 0x9E3779B9 & MASK32  # golden-ratio spacing of the call numbers
        stream = _mix32(_mix32((self.step & MASK32) ^ self.keys[0]) ^ call_key)
        index = torch.arange(count, device=self.step.device, dtype=torch.int64)
        return _mix32(_mix32(index ^ stream) ^ self.keys[1])

    def uniform(self, shape: tuple[int, ...]) -> torch.Tensor:
        """float32 in (0, 1), multiples of 2^-24 offset by half a step."""
        bits = self.bits(math.prod(shape)) >> 8
        return ((bits.float() + 0.5) * 2.0**-24).reshape(shape)

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal float32 by Box-Muller (tails cut beyond about 5.9)."""
        count = math.prod(shape)
        pairs = (count + 1) // 2
        u = self.uniform((2, pairs))
        radius = torch.sqrt(-2.0 * torch.log(u[0]))
        angle = (2.0 * math.pi) * u[1]
        return torch.cat((radius * torch.cos(angle), radius * torch.sin(angle)))[:count].reshape(
            shape
        )

    def integers(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        """int64 uniform on 0..high-1 (high < 2^31), as floor(bits * high / 2^32)."""
        if not 0 < high < 2**31:
            raise ValueError(f"high = {high} is not in 1..2^31 - 1")
        return ((self.bits(math.prod(shape)) * high) >> 32).reshape(shape)


RandomSource = torch.Generator | CounterDraws


def normal(source: RandomSource, shape: tuple[int, ...], device) -> torch.Tensor:
    """Standard normal float32 of `shape` on `device` from a generator or CounterDraws."""
    if isinstance(source, CounterDraws):
        return source.normal(tuple(shape))
    return torch.randn(shape, generator=source, device=device)


def uniform(source: RandomSource, shape: tuple[int, ...], device) -> torch.Tensor:
    """Uniform float32 of `shape` on `device` (torch.rand's [0, 1), CounterDraws' (0, 1))."""
    if isinstance(source, CounterDraws):
        return source.uniform(tuple(shape))
    return torch.rand(shape, generator=source, device=device)


def integers(source: RandomSource, high: int, shape: tuple[int, ...], device) -> torch.Tensor:
    """Uniform int64 on 0..high-1 of `shape` on `device`."""
    if isinstance(source, CounterDraws):
        return source.integers(high, tuple(shape))
    return torch.randint(high, shape, generator=source, device=device)
