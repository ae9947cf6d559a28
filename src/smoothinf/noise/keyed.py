"""Noise draws keyed by example: draw j of example i depends only on (seed, stage, i, j).

Monte Carlo draws taken from one generator per batch make an example's result depend on its
neighbours (batch size, examples per step, how many examples came before it). ``KeyedNoise`` keys
them instead: the draws of one sampling stage of example ``i`` (its index in the data split) are cut
into fixed blocks of ``block`` draws, and block ``k`` is always generated whole, by a generator of
its own seeded from (seed, stage, i, k). A caller that asks for draws [a, b) gets slices of whole
blocks, so chunking, grouping or ordering examples only regroups the same numbers. Each block fills
a contiguous (block, *shape) tensor in one call (never one call per draw), so its values do not
depend on how many blocks are generated together.

Seeds: a 64-bit splitmix hash of (seed, example) plus ``slot * 2**28 + k`` (slot = stage, or stage
+ ``LAYER_SLOT`` for the weight/activation noise of noise-injection layers). torch's CPU generator
keeps only the low 32 bits of a seed; the offsets keep every (slot, block) of one example on its own
32-bit seed, so no two blocks of one certificate share numbers. Draws are generated on the device
asked for, so CPU and CUDA give different (equally valid) numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from smoothinf.errors import SmoothinfError
from smoothinf.noise.distributions import NoiseDistribution

KEYED_STREAM = "keyed-by-example/1"
"""Name of this scheme (seeds, block size, stages); results files record it."""
BLOCK_DRAWS = 64
"""Draws per block: each (stage, example, block) has its own generator."""
SELECT, ESTIMATE, PREDICT = 0, 1, 2
"""Stages: CERTIFY's n0 selection draws, its n estimation draws, PREDICT's draws (independent)."""
LAYER_SLOT = 8
"""Noise-injection layers of stage s draw from slot s + LAYER_SLOT (the input noise uses slot s)."""
_SLOTS = 16
_SLOT_BLOCKS = 2**28  # blocks per slot: 2**28 * 64 draws per stage and example at most
_MASK = (1 << 64) - 1


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 values (wraps modulo 2**64)."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def as_index(index: torch.Tensor | Sequence[int], n: int | None = None) -> torch.Tensor:
    """Example indices as a CPU (N,) int64 tensor, each >= 0; N must equal ``n`` when given."""
    index = torch.as_tensor(index).detach().cpu()
    if index.dim() != 1 or index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise SmoothinfError(
            f"index must be a 1-D integer tensor, got {index.dtype} of shape {tuple(index.shape)}"
        )
    if n is not None and index.shape[0] != n:
        raise SmoothinfError(f"index has {index.shape[0]} entries for {n} examples")
    if index.numel() and int(index.min()) < 0:
        raise SmoothinfError(f"example indices must be >= 0, got {int(index.min())}")
    return index.to(torch.int64)


@dataclass(frozen=True)
class KeyedNoise:
    """Draws of ``noise`` keyed by (seed, stage, example index, draw index); see the module doc."""

    noise: NoiseDistribution
    seed: int = 0
    block: int = BLOCK_DRAWS

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise SmoothinfError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.block, int) or isinstance(self.block, bool) or self.block < 1:
            raise SmoothinfError(f"block must be an integer >= 1, got {self.block!r}")

    def block_seeds(self, index: torch.Tensor, slot: int, first: int, count: int) -> np.ndarray:
        """Seeds (N, count) uint64 of blocks first .. first + count - 1 of ``slot`` for examples
        ``index`` (N,)."""
        if not 0 <= slot < _SLOTS:
            raise SmoothinfError(f"stage slot must lie in [0, {_SLOTS}), got {slot}")
        if first < 0 or first + count > _SLOT_BLOCKS:
            raise SmoothinfError(f"draws beyond {_SLOT_BLOCKS * self.block} per stage and example")
        examples = as_index(index).numpy().astype(np.uint64)
        key = _splitmix64(_splitmix64(np.array([self.seed & _MASK], dtype=np.uint64)) ^ examples)
        offsets = np.uint64(slot * _SLOT_BLOCKS + first) + np.arange(count, dtype=np.uint64)
        with np.errstate(over="ignore"):
            return key[:, None] + offsets[None, :]

    def generator(self, example: int, slot: int, block: int, device: torch.device | str) -> torch.Generator:
        """The generator of block ``block`` of ``slot`` for one example, on ``device``."""
        seed = int(self.block_seeds(torch.tensor([example]), slot, block, 1)[0, 0])
        return torch.Generator(device=torch.device(device)).manual_seed(seed)

    def fill(self, out: torch.Tensor, index: torch.Tensor, stage: int, first_block: int) -> torch.Tensor:
        """Fill ``out`` (N, k * block, *shape), example-major, each ``out[i]`` contiguous, with
        blocks first_block .. first_block + k - 1 of ``stage`` for examples ``index`` (N,); returns
        ``out``. One generator per (example, block), generated on ``out``'s device."""
        n, draws = out.shape[0], out.shape[1]
        if draws % self.block or (n and not out[0].is_contiguous()):
            raise SmoothinfError(
                f"keyed noise fills whole blocks of {self.block} draws, each example's contiguous"
            )
        count = draws // self.block
        seeds = self.block_seeds(index, stage, first_block, count)
        if seeds.shape[0] != n:
            raise SmoothinfError(f"index has {seeds.shape[0]} entries for {n} examples")
        gen = torch.Generator(device=out.device)
        blocks = out.unflatten(1, (count, self.block))
        for i in range(n):
            for k in range(count):
                gen.manual_seed(int(seeds[i, k]))
                self.noise.sample_into(blocks[i, k], gen)
        return out

    def sample(
        self,
        index: torch.Tensor | Sequence[int],
        stage: int,
        start: int,
        stop: int,
        shape: tuple[int, ...] | torch.Size,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draws [start, stop) of ``stage`` for examples ``index`` (N,): noise (stop - start, N,
        *shape), draw-major like ``SmoothedClassifier``'s chunks. Whole blocks are generated and sliced."""
        if not 0 <= start <= stop:
            raise SmoothinfError(f"need 0 <= start <= stop, got [{start}, {stop})")
        index = as_index(index)
        first, last = start // self.block, math.ceil(stop / self.block)
        out = torch.empty(
            (index.shape[0], (last - first) * self.block) + tuple(shape), device=device, dtype=dtype
        )
        self.fill(out, index, stage, first)
        lo = start - first * self.block
        return out[:, lo : lo + stop - start].transpose(0, 1)


__all__ = [
    "BLOCK_DRAWS",
    "ESTIMATE",
    "KEYED_STREAM",
    "LAYER_SLOT",
    "PREDICT",
    "SELECT",
    "KeyedNoise",
    "as_index",
]
