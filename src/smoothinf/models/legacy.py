"""Import of state dicts written by other code (``.pth`` / ``.pth.tar``), safely.

Files are read with ``torch.load(weights_only=True)`` only: a pickle that names anything other
than tensors and plain containers is refused *before* any of its code runs. Accepted layouts: a
bare state dict, or a dict holding one under ``state_dict`` / ``model`` / ``model_state_dict`` /
``net``; ``module.`` prefixes (DataParallel / DDP) are stripped. Key names are then mapped onto
the zoo's names by a short alias table (kuangliu-style ``shortcut``/``linear``, TRADES/Madry
Wide-ResNet ``block{s}.layer.{i}``/``convShortcut``), and the ``normalize`` buffers are filled in
from the normalisation the legacy network expected outside itself.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from smoothinf.errors import CheckpointError
from smoothinf.models.registry import create_model
from smoothinf.models.state import apply_state_dict, read_safetensors

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")

# (pattern, replacement) applied in order to each key the target model lacks; the renamed key is
# kept only if the model has it.
KEY_ALIASES: tuple[tuple[str, str], ...] = (
    (r"^block(\d+)\.layer\.", r"layer\1."),  # TRADES / Madry WRN stages
    (r"\.convShortcut\.", ".downsample."),  # TRADES / Madry WRN shortcut conv
    (r"\.shortcut\.", ".downsample."),  # kuangliu-style shortcut
    (r"^linear\.", "fc."),  # kuangliu-style classifier
    (r"^bn1\.", "bn."),  # WRN final BN (the pre-activation ResNet calls it ``bn``)
)
# Keys that legacy files carry but that hold no state of the zoo's networks.
DROP_PATTERNS: tuple[str, ...] = (r"^sub_block\d+\.",)


def read_torch_file(path: str | os.PathLike) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU; every failure is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line for line in first if "Unsupported global" in line or "GLOBAL" in line), "")
        raise CheckpointError(
            f"{path}: refused to unpickle: the file holds objects other than tensors (it may try to run code)"
            + (f"; {detail.strip().split(' was not an allowed')[0]}" if detail else "")
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, IndexError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint (truncated or corrupt?): {msg}"
        ) from None


def extract_state_dict(obj: object, path: str | os.PathLike = "<memory>") -> dict[str, torch.Tensor]:
    """The tensor state dict inside a loaded legacy object, ``module.`` prefixes stripped."""
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: no state dict found (expected a dict of tensors,"
            f" or one under {'/'.join(STATE_DICT_KEYS)})"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        out[key] = value
    return out


def legacy_scalars(obj: object) -> dict:
    """Plain scalar entries (epoch, best accuracy, ...) of a legacy container, for the meta dict."""
    if not isinstance(obj, Mapping):
        return {}
    return {str(k): v for k, v in obj.items() if isinstance(v, (int, float, str, bool))}


def map_legacy_keys(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename ``state``'s keys onto ``model``'s; keys the model lacks and no alias fixes stay as they are.

    The model's ``normalize.*`` buffers and any missing ``num_batches_tracked`` counters are taken
    from the model itself (legacy networks normalise outside; old PyTorch had no counters).
    """
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if any(re.search(p, key) for p in DROP_PATTERNS):
            continue
        new = key
        if key not in target:
            for pattern, repl in KEY_ALIASES:
                new = re.sub(pattern, repl, new)
            if new not in target:
                new = key
        out[new] = value
    for key, value in target.items():
        if key not in out and (key.startswith("normalize.") or key.endswith("num_batches_tracked")):
            out[key] = value
    return out


def load_legacy_checkpoint(
    path: str | os.PathLike,
    arch: str,
    num_classes: int,
    in_channels: int,
    mean: Sequence[float] | float,
    std: Sequence[float] | float,
    input_normalized: bool = True,
    device: str | torch.device = "cpu",
    **arch_kwargs,
) -> tuple[nn.Module, dict]:
    """Load a legacy ``.pth`` / ``.pth.tar`` (or sidecar-less ``.safetensors``) state dict into ``arch``.

    ``input_normalized=True``: the legacy network expected inputs already normalised with
    ``mean``/``std`` (pixel units), so they go into the model's ``normalize`` layer and the
    returned model takes pixels in [0, 1]. ``False``: it took raw pixels; ``normalize`` is the
    identity. Returns ``(model, meta)`` with the model in eval mode on ``device``; meta holds the
    arch record, the normalisation and the legacy container's scalar entries (epoch, ...).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        obj: object = read_safetensors(path)
    else:
        obj = read_torch_file(path)
    state = extract_state_dict(obj, path)
    if not input_normalized:
        mean, std = 0.0, 1.0
    try:
        model = create_model(arch, num_classes, in_channels, mean, std, **arch_kwargs)
    except CheckpointError:
        raise
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    apply_state_dict(model, map_legacy_keys(state, model), path)
    model.to(device).eval()
    meta = {
        "format": "legacy",
        "source": str(path),
        "arch": model.smoothinf_arch,
        "normalization": {
            "mean": model.smoothinf_arch["kwargs"]["mean"],
            "std": model.smoothinf_arch["kwargs"]["std"],
        },
        "legacy": legacy_scalars(obj),
    }
    return model, meta
