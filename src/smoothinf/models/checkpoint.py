"""Safe checkpoints: weights in safetensors + a JSON sidecar that says how to rebuild the model.

Layout: ``save_checkpoint("run/model.safetensors", model, meta)`` writes

* ``run/model.safetensors``: the state dict (``normalize`` buffers and noise parameters included);
* ``run/model.safetensors.json``: the sidecar, ``{"format": "smoothinf-checkpoint",
  "format_version": 1, "smoothinf_version", "created", "arch": {"name", "kwargs"},
  "normalization": {"mean", "std"}, "noise": model.smoothinf_noise or null, "dataset", "training",
  "metrics", ..., "weights_sha256"}`` (every other key of ``meta`` is kept as given).

The path is used as given (``.safetensors`` is appended when it has no suffix). Both files are
written to temporary files in the target folder, flushed, then renamed into place with
``os.replace`` (weights first, sidecar last); the sidecar carries the weights' sha256, so a pair
left incoherent by a crash between the two renames is detected on load, never silently used.
Legacy ``.pth`` / ``.pth.tar`` files go through ``smoothinf.models.legacy`` (``weights_only``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from smoothinf._version import __version__
from smoothinf.data.integrity import file_digest
from smoothinf.errors import CheckpointError, SmoothinfError
from smoothinf.models.legacy import load_legacy_checkpoint
from smoothinf.models.state import apply_state_dict, read_safetensors

_sha256 = file_digest  # the name cli/models.py imports; the one file hash is data.integrity's
FORMAT_NAME = "smoothinf-checkpoint"
FORMAT_VERSION = 1
LEGACY_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt")
__all__ = [
    "apply_state_dict",
    "load_checkpoint",
    "read_safetensors",
    "read_sidecar",
    "save_checkpoint",
    "sidecar_path",
]


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of a weights file: ``path + ".json"``."""
    return Path(str(path) + ".json")


def _to_json(value):
    """``json.dumps`` default: tuples, Paths, dataclasses, tensors and NumPy values to JSON types."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "tolist"):  # NumPy arrays and scalars
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, torch.device | torch.dtype):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temp file in ``path``'s folder, fsync it, then ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tensors_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous, storage-disjoint copies of the state dict (safetensors refuses shared memory)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset())
        if t.numel() and ident in seen:
            t = t.clone()
        seen.add(ident)
        out[key] = t
    return out


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: Mapping | None = None) -> Path:
    """Write ``model``'s weights (safetensors) and a JSON sidecar atomically; returns the weights path.

    ``model`` must come from ``create_model`` (it carries ``smoothinf_arch``; DDP / DataParallel /
    ``torch.compile`` wrappers are unwrapped); its noise config
    ``model.smoothinf_noise`` is recorded when present. ``meta`` (JSON-serialisable: dataset name
    or DatasetInfo, training config, metrics, ...) is stored in the sidecar as given.
    """
    for attr in ("module", "_orig_mod"):  # unwrap DataParallel / DDP / torch.compile
        if not hasattr(model, "smoothinf_arch") and isinstance(getattr(model, attr, None), nn.Module):
            model = getattr(model, attr)
    arch = getattr(model, "smoothinf_arch", None)
    if not isinstance(arch, Mapping) or "name" not in arch:
        raise CheckpointError(
            "model has no smoothinf_arch record; build it with smoothinf.models.create_model"
        )
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".safetensors")
    if not path.parent.is_dir():
        raise CheckpointError(f"{path}: folder {path.parent} does not exist")
    kwargs = dict(arch.get("kwargs", {}))
    noise = getattr(model, "smoothinf_noise", None)
    try:
        json.dumps(noise, default=_to_json)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: the model's noise config cannot be saved ({exc}); inject noise with JSON-able"
            " arguments (e.g. layers as names, not a callable)"
        ) from None
    sidecar = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "smoothinf_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arch": {"name": arch["name"], "kwargs": kwargs},
        "normalization": {"mean": kwargs.get("mean"), "std": kwargs.get("std")},
        "noise": noise,
    }
    reserved = set(sidecar) | {"weights_sha256", "weights_file"}
    for key, value in (meta or {}).items():
        if key in reserved:
            raise CheckpointError(f"{path}: meta key {key!r} is reserved for the checkpoint format")
        sidecar[str(key)] = value
    tensors = _tensors_for_saving(model)
    fd, tmp_weights = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        data = canonical_safetensors(tensors, {"format": "pt", "smoothinf_arch": arch["name"]})
        with open(tmp_weights, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        sidecar["weights_file"] = path.name
        sidecar["weights_sha256"] = file_digest(tmp_weights)
        try:
            text = json.dumps(sidecar, indent=2, default=_to_json, allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: meta is not JSON serialisable: {exc}") from None
        os.replace(tmp_weights, path)
    except BaseException:
        Path(tmp_weights).unlink(missing_ok=True)
        raise
    _atomic_write(sidecar_path(path), lambda tmp: Path(tmp).write_text(text + "\n"))
    return path


def _metadata(data: bytes) -> tuple[bytes, dict[str, str]]:
    """A safetensors file's JSON header bytes and its metadata, in the order it was written."""
    header = data[8 : 8 + int.from_bytes(data[:8], "little")]
    return header, json.loads(header).get("__metadata__") or {}


def _metadata_in_order(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its metadata keys sorted; the header keeps its length,
    so every tensor's offset stays."""
    header, written = _metadata(data)
    as_written = json.dumps(written, separators=(",", ":")).encode()
    ordered = {k: written[k] for k in sorted(written)}
    in_order = json.dumps(ordered, separators=(",", ":")).encode()
    if as_written not in header or len(in_order) != len(as_written):
        raise CheckpointError("safetensors wrote its metadata in an unexpected form; cannot order it")
    return data[:8] + header.replace(as_written, in_order, 1) + data[8 + len(header) :]


def canonical_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """The safetensors file of ``tensors`` with its ``metadata`` keys in sorted order. The library
    writes the metadata in hash-map order, which changes from one save to the next, so equal
    weights would get another file sha256 (the identity that results are keyed on) at each save."""
    return _metadata_in_order(safetensors_bytes(dict(tensors), metadata=dict(metadata)))


def read_sidecar(path: str | os.PathLike) -> dict:
    """The parsed sidecar of ``path`` (the weights file); one-line CheckpointError when bad."""
    side = sidecar_path(path)
    if not side.is_file():
        raise CheckpointError(f"{path}: sidecar {side.name} not found")
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{side}: corrupt sidecar JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f'{side}: not a smoothinf checkpoint sidecar (no "format": "{FORMAT_NAME}")')
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{side}: format_version {meta['format_version']} is newer than this smoothinf reads"
            f" ({FORMAT_VERSION}); upgrade smoothinf"
        )
    arch = meta.get("arch")
    if (
        not isinstance(arch, dict)
        or not isinstance(arch.get("name"), str)
        or not isinstance(arch.get("kwargs"), dict)
    ):
        raise CheckpointError(f'{side}: sidecar has no valid "arch" entry ({{"name", "kwargs"}})')
    return meta


def _rebuild(meta: dict, path: Path, arch_override: str | None, overrides: dict) -> nn.Module:
    from smoothinf.models.registry import create_model, list_models

    name = arch_override or meta["arch"]["name"]
    if name not in list_models():
        raise CheckpointError(
            f"{path}: unknown architecture {name!r} in the sidecar; known: {', '.join(list_models())}"
        )
    kwargs = {**meta["arch"]["kwargs"], **overrides}
    try:
        model = create_model(name, **kwargs)
    except SmoothinfError as exc:
        raise CheckpointError(f"{path}: cannot rebuild {name!r}: {exc}") from None
    noise = meta.get("noise")
    if noise:
        try:
            from smoothinf.noise import inject_noise
        except ImportError:
            raise CheckpointError(
                f"{path}: the checkpoint has noise layers ({noise}) but smoothinf.noise.inject_noise"
                " is unavailable"
            ) from None
        try:
            model = inject_noise(model, **noise)
        except SmoothinfError as exc:
            raise CheckpointError(f"{path}: cannot re-apply noise config {noise}: {exc}") from None
    return model


def load_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    arch: str | None = None,
    verify: bool = True,
    **overrides,
) -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint; returns ``(model, meta)``, the model in eval mode on ``device``.

    With a sidecar: the architecture (``arch`` overrides its name, ``overrides`` its kwargs), the
    noise layers (``inject_noise(model, **meta["noise"])``) and then the weights, loaded strictly;
    ``verify`` checks the weights' sha256 against the sidecar. Without a sidecar the file is taken
    as a legacy state dict: ``arch`` is then required, with ``num_classes``, ``in_channels``,
    ``mean``, ``std`` (or ``dataset="cifar10"`` etc. to take them from the data registry) and
    optionally ``input_normalized`` (see ``load_legacy_checkpoint``).
    """
    from smoothinf.utils import resolve_device

    path = Path(path)
    device = resolve_device(device)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not sidecar_path(path).is_file():
        return _load_without_sidecar(path, device, arch, overrides)
    meta = read_sidecar(path)
    if verify and meta.get("weights_sha256") and file_digest(path) != meta["weights_sha256"]:
        raise CheckpointError(
            f"{path}: weights do not match the sidecar's sha256 (file changed, truncated or half-written)"
        )
    state = read_safetensors(path)
    model = _rebuild(meta, path, arch, overrides)
    apply_state_dict(model, state, path)
    from smoothinf.models.inputs import check_normalization

    check_normalization(model, meta if not overrides else {}, str(path))
    return model.to(device).eval(), meta


def _load_without_sidecar(path: Path, device: torch.device, arch: str | None, overrides: dict):
    if arch is None:
        raise CheckpointError(
            f"{path}: no sidecar {sidecar_path(path).name}; convert a legacy state dict first with"
            " `smoothinf models convert -c FILE --arch NAME --dataset DATA -o OUT.safetensors`"
            " (Python: load_checkpoint(path, arch=NAME, dataset=DATA))"
        )
    dataset = overrides.pop("dataset", None)
    if dataset is not None:
        from smoothinf.data import get_dataset_info

        info = get_dataset_info(dataset)
        for key, value in (
            ("num_classes", info.num_classes),
            ("in_channels", info.in_channels),
            ("mean", info.mean),
            ("std", info.std),
        ):
            overrides.setdefault(key, value)
    missing = [k for k in ("num_classes", "in_channels", "mean", "std") if k not in overrides]
    if missing:
        raise CheckpointError(f"{path}: legacy checkpoint needs {', '.join(missing)} (or dataset=NAME)")
    return load_legacy_checkpoint(path, arch, device=device, **overrides)
