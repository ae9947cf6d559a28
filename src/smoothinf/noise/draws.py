"""The per-draw weight-noise contract between noise layers and batched Monte Carlo.

A batch of B rows evaluated under ``per_draw_noise(model, d)`` is B/d examples with d draws each,
example-major: rows i*d .. i*d + d - 1 are the d draws of example i (row i*d + j is draw j). Every
noise layer (a module with an integer attribute ``num_draws``) then samples d independent
weight-noise tensors, one per draw, shared by the examples of that draw: the distribution of d
separate forwards. Outside the context ``num_draws`` is 1 (one noise draw shared by the whole batch,
as in the reference code). Example-major rows make a (B, C, H, W) activation a free view of the
(B/d, d*C, H, W) input of a grouped convolution with d groups (and back), so per-draw weights cost
no transposes. ``rows_for_draws`` builds such rows and ``draw_major`` turns outputs back into
(d, B/d, K).
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from smoothinf.errors import SmoothinfError

# Default chunk bounds of Monte Carlo forwards, in input values per forward. On the CPU, forwards
# much larger than a normal batch run slower per row (activations above glibc's 32 MB mmap threshold
# are page-faulted afresh on every allocation; timings in BENCHMARKS.md), so chunks stay near a plain
# batch; weight-noise models get 4x more, since each forward's draws share per-layer costs (grouped
# convolution set-up, the weights' std). On a GPU, large chunks fill the device.
CPU_CHUNK_VALUES = 2**17
CPU_WEIGHT_NOISE_CHUNK_VALUES = 2**19
GPU_CHUNK_VALUES = 2**25
# A chunk of d draws of a weight-noise model holds d noisy copies of every noisy weight tensor, so
# d is also bounded by these many weight values (mnist_cnn_small's 0.17M noisy weights: 25 draws per
# chunk on the CPU; mnist_cnn's 3.3M: 1, where batching draws was slower than a loop).
CPU_WEIGHT_NOISE_VALUES = 2**22
GPU_WEIGHT_NOISE_VALUES = 2**28
# With gradients a chunk's forward keeps what autograd saves for the backward pass: per CIFAR row
# (float32) 2 MiB for resnet20, 11 MiB for resnet110, 87 MiB for wide_resnet28_10, so the GPU bound
# of 2^25 input values (10922 rows) would need 22, 121 and 930 GiB. Gradient chunks on CUDA are
# also bounded to this fraction of the memory torch can still use (``grad_chunk_rows``).
GPU_GRAD_MEMORY_FRACTION = 0.5
_SAVED_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def noise_layers(model: nn.Module) -> list[nn.Module]:
    """Modules of ``model`` that follow the per-draw contract."""
    return [m for m in model.modules() if hasattr(m, "num_draws")]


@contextmanager
def per_draw_noise(
    model: nn.Module,
    num_draws: int,
    generator: torch.Generator | None = None,
    layers: list[nn.Module] | None = None,
) -> Iterator[None]:
    """Within the context, noise layers draw ``num_draws`` independent noises per forward.

    ``generator`` (optional) is used by the layers for their noise, for reproducible draws;
    ``layers`` (optional) is ``noise_layers(model)`` when the caller already has it.
    """
    layers = noise_layers(model) if layers is None else layers
    saved = [(m.num_draws, getattr(m, "noise_generator", None)) for m in layers]
    try:
        for m in layers:
            m.num_draws = int(num_draws)
            m.noise_generator = generator
        yield
    finally:
        for m, (d, g) in zip(layers, saved, strict=True):
            m.num_draws = d
            m.noise_generator = g


def weight_noise_values(model: nn.Module) -> int:
    """Number of weights that get per-draw noise (PNI-W / CNI-W layers); 0 for other models."""
    return sum(
        m.layer.weight.numel() for m in noise_layers(model) if getattr(m, "weight_noise", None) is not None
    )


def chunk_rows(
    x: torch.Tensor,
    model: nn.Module | None = None,
    batch_size: int | None = None,
    weight_values: int | None = None,
) -> int:
    """Rows of one Monte Carlo forward for inputs like ``x`` (N, C, H, W): ``batch_size`` when
    given, else the default bound on input values per forward (see ``CPU_CHUNK_VALUES``); for a
    weight-noise model also at most N times the draws whose noisy weights fit
    ``CPU_WEIGHT_NOISE_VALUES`` (``GPU_WEIGHT_NOISE_VALUES`` on CUDA). ``weight_values`` is
    ``weight_noise_values(model)`` when the caller already has it (saves a walk of the modules)."""
    if batch_size is not None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise SmoothinfError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        return batch_size
    cuda = x.device.type == "cuda"
    if weight_values is None:
        weight_values = weight_noise_values(model) if model is not None else 0
    budget = (
        GPU_CHUNK_VALUES if cuda else (CPU_WEIGHT_NOISE_CHUNK_VALUES if weight_values else CPU_CHUNK_VALUES)
    )
    rows = max(1, budget // max(1, math.prod(x.shape[1:])))
    if weight_values:
        draws = max(1, (GPU_WEIGHT_NOISE_VALUES if cuda else CPU_WEIGHT_NOISE_VALUES) // weight_values)
        rows = min(rows, max(1, x.shape[0]) * draws)
    return rows


def saved_bytes_per_row(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd saves for the backward pass per input row like ``x[0]`` (N, C, H, W): one
    forward of a copy of ``x[:1]`` under saved-tensor hooks, each saved storage counted once, the
    model's parameters and buffers excluded. The probe runs in eval mode with the RNG states
    restored afterwards (no side effect); the result is cached per model, input shape, dtype, device
    and autocast state."""
    key = (tuple(x.shape[1:]), x.dtype, x.device, torch.is_autocast_enabled(x.device.type))
    cache = _SAVED_BYTES.setdefault(model, {})
    if key not in cache:
        own = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in own:
                saved[ptr] = t.untyped_storage().nbytes()
            return t

        modes = [(m, m.training) for m in model.modules()]
        devices = [x.device] if x.device.type == "cuda" else []
        try:
            model.eval()
            with (
                torch.random.fork_rng(devices=devices),
                torch.enable_grad(),
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            ):
                model(x[:1].detach().clone().requires_grad_(True))
        finally:
            for m, training in modes:
                m.training = training
        cache[key] = max(1, sum(saved.values()))
    return cache[key]


def grad_chunk_rows(model: nn.Module, x: torch.Tensor, budget_bytes: int | None = None) -> int | None:
    """Rows of one forward with gradients whose saved activations (``saved_bytes_per_row``) fit
    ``budget_bytes``; by default, on CUDA, ``GPU_GRAD_MEMORY_FRACTION`` of the memory torch can still
    use (free device memory plus its cached blocks). None (no bound) on the CPU without a budget,
    where ``chunk_rows`` keeps chunks small anyway."""
    if budget_bytes is None:
        if x.device.type != "cuda":
            return None
        free, _ = torch.cuda.mem_get_info(x.device)
        cached = torch.cuda.memory_reserved(x.device) - torch.cuda.memory_allocated(x.device)
        budget_bytes = int(GPU_GRAD_MEMORY_FRACTION * (free + cached))
    return max(1, int(budget_bytes) // saved_bytes_per_row(model, x))


def rows_for_draws(
    x: torch.Tensor, draws: int, noise: torch.Tensor | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Example-major rows (N * draws, ...) with row i*draws + j = x[i] + noise[j, i].

    ``noise`` (draws, N, ...) is draw-major (the order it is sampled in); None means no noise.
    ``out`` (optional, N * draws rows, no autograd) receives the rows without a new allocation.
    """
    n = x.shape[0]
    shape = (n * draws,) + tuple(x.shape[1:])
    if noise is None:
        if draws == 1:
            return x
        return x.unsqueeze(1).expand((n, draws) + tuple(x.shape[1:])).reshape(shape)
    noise = noise.transpose(0, 1)  # (N, draws, ...), a view
    if out is not None:
        torch.add(x.unsqueeze(1), noise, out=out.view((n, draws) + tuple(x.shape[1:])))
        return out.view(shape)
    return (x.unsqueeze(1) + noise).reshape(shape)


def draw_major(outputs: torch.Tensor, draws: int) -> torch.Tensor:
    """Outputs (N * draws, K) of example-major rows -> (draws, N, K) (a view)."""
    if draws == 1:
        return outputs.unsqueeze(0)
    return outputs.view(-1, draws, outputs.shape[-1]).transpose(0, 1)
