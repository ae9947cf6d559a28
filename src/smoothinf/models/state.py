"""Reading a safetensors file and loading a state dict strictly, with one-line errors.

Shared by ``checkpoint`` (sidecar checkpoints) and ``legacy`` (state dicts without a sidecar), so
that neither imports the other's internals (``checkpoint`` -> ``legacy`` -> ``state``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from smoothinf.errors import CheckpointError


def read_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; missing, truncated or corrupt files raise a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({msg})") from None


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``model.load_state_dict(state, strict=True)`` with a one-line error naming the first mismatch."""
    target = model.state_dict()
    arch = getattr(model, "smoothinf_arch", {}).get("name", type(model).__name__)
    for key, value in target.items():
        if key not in state:
            raise CheckpointError(
                f"{path}: weights do not fit {arch}: missing key {key!r} {tuple(value.shape)}"
            )
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{path}: weights do not fit {arch}: {key!r} has shape {tuple(state[key].shape)},"
                f" the model expects {tuple(value.shape)}"
            )
    extra = [key for key in state if key not in target]
    if extra:
        raise CheckpointError(
            f"{path}: weights do not fit {arch}: unexpected key {extra[0]!r}"
            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
        )
    model.load_state_dict(dict(state), strict=True)
