"""Small shared helpers: devices, seeds, generators and input validation."""

from __future__ import annotations

import os
import random
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from smoothinf.errors import ConfigError, SmoothinfError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N`` to a device; ``auto`` picks CUDA when present."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SmoothinfError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise SmoothinfError(f"unknown device {name!r}; use auto, cpu or cuda") from exc


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator | None:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``; ``None`` when seed is None."""
    if seed is None:
        return None
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(seed))
    return gen


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def check_images(x: torch.Tensor, name: str = "x", device: torch.device | None = None) -> None:
    """Raise a one-line ValueError unless ``x`` is a finite (N, C, H, W) float batch in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise SmoothinfError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise SmoothinfError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise SmoothinfError(f"{name} must be a float tensor with pixels in [0, 1], got {x.dtype}")
    if device is not None and x.device.type != device.type:
        raise SmoothinfError(f"{name} is on {x.device} but the model is on {device}; move it with .to()")
    if x.numel() and not torch.isfinite(x).all():
        raise SmoothinfError(f"{name} contains NaN or infinite values")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise SmoothinfError(
            f"{name} has pixels outside [0, 1] (min {x.min().item():.3g}, max {x.max().item():.3g});"
            " pass unnormalised images, normalisation is a layer inside the model"
        )


def check_labels(y: torch.Tensor, n: int, num_classes: int | None = None) -> None:
    """Raise unless ``y`` is an integer (n,) label vector with values in [0, num_classes)."""
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point():
        raise SmoothinfError("labels must be a 1-D integer tensor")
    if y.shape[0] != n:
        raise SmoothinfError(f"batch size mismatch: {n} inputs but {y.shape[0]} labels")
    if num_classes is not None and y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise SmoothinfError(f"labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")


def dataclass_from_yaml(cls, path: str | os.PathLike, **overrides):
    """Build dataclass ``cls`` from a YAML file; non-None ``overrides`` win; unknown keys are errors."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    unknown = sorted(set(raw) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"{path}: unknown config key(s) {', '.join(unknown)}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**raw)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_cpu_allocator(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 2**30) -> bool:
    """Make glibc's malloc keep and reuse freed memory for large CPU tensors. Returns whether applied.

    PyTorch's CPU tensors come straight from malloc. By default glibc serves blocks above a dynamic
    threshold with fresh mmap pages and trims freed heap memory back to the OS, so the activations
    of every forward of a 100-row batch are page-faulted afresh; fixing the mmap threshold at 32 MB
    and trimming only above 1 GB halved the time of such forwards on the CPU machine (PyTorch's
    tuning guide suggests jemalloc/tcmalloc for the same reason). Process-wide and irreversible:
    the command-line tool calls it at start (set SMOOTHINF_MALLOC_TUNING=0 to skip); Python users
    may call it themselves. A no-op (False) where the C library is not glibc.
    """
    import ctypes
    import platform

    if mmap_threshold < 0 or trim_threshold < 0:
        raise SmoothinfError(
            f"malloc thresholds must be >= 0 bytes, got mmap {mmap_threshold}, trim {trim_threshold}"
        )
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
