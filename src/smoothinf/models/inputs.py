"""What input a model accepts, and one check of a batch against it (shape, dtype, device, range).

A model built by ``create_model`` records ``in_channels`` (and, for fully connected heads,
``input_size``) in ``model.smoothinf_arch["kwargs"]``, which is what a checkpoint's sidecar stores.
``check_model_input`` compares a batch with that record, so a 3-channel or 32x32 batch fed to an
MNIST model fails with one line saying what was expected instead of a torch shape error deep in a
forward. It is called at every public entry point (``SmoothedClassifier``, ``certify``,
``robust_accuracy`` and the command line).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from smoothinf.errors import SmoothinfError
from smoothinf.utils import check_images, check_labels, model_device

_WRAPPERS = ("model", "module", "_orig_mod")  # SmoothedClassifier, DDP / DataParallel, torch.compile


@dataclass(frozen=True)
class ExpectedInput:
    """What a model takes: channels, spatial size (None: any), dtype, classes (None: unknown)."""

    arch: str
    in_channels: int | None
    input_size: tuple[int, int] | None
    dtype: torch.dtype | None
    num_classes: int | None

    def describe(self) -> str:
        """``(N, C, H, W)`` with the known values filled in."""
        c = str(self.in_channels) if self.in_channels is not None else "C"
        h, w = self.input_size if self.input_size else ("H", "W")
        return f"(N, {c}, {h}, {w})"


def base_model(model: nn.Module) -> nn.Module:
    """``model`` with smoothing / DDP / compile wrappers removed (the one carrying ``smoothinf_arch``)."""
    for _ in range(8):
        if getattr(model, "smoothinf_arch", None) is not None:
            return model
        inner = next(
            (getattr(model, a) for a in _WRAPPERS if isinstance(getattr(model, a, None), nn.Module)), None
        )
        if inner is None:
            return model
        model = inner
    return model


def expected_input(model: nn.Module) -> ExpectedInput:
    """The input a (possibly wrapped) model accepts, from its ``smoothinf_arch`` record / sidecar."""
    inner = base_model(model)
    arch = getattr(inner, "smoothinf_arch", None)
    kwargs = arch.get("kwargs", {}) if isinstance(arch, Mapping) else {}
    channels = kwargs.get("in_channels")
    if channels is None and isinstance(getattr(inner, "normalize", None), nn.Module):
        channels = getattr(inner.normalize, "in_channels", None)
    size = kwargs.get("input_size")
    if isinstance(size, int):
        size = (size, size)
    elif size is not None:
        size = tuple(int(v) for v in size)
    dtype = next((p.dtype for p in inner.parameters() if p.is_floating_point()), None)
    classes = kwargs.get("num_classes")
    name = arch.get("name", type(inner).__name__) if isinstance(arch, Mapping) else type(inner).__name__
    return ExpectedInput(
        name,
        None if channels is None else int(channels),
        size,
        dtype,
        None if classes is None else int(classes),
    )


def check_model_input(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    name: str = "x",
    allow_empty: bool = False,
    check_device: bool = True,
) -> None:
    """Raise a one-line SmoothinfError unless ``x`` (N, C, H, W) fits ``model``.

    Checks: a finite float batch in [0, 1] on the model's device (``check_images``), N >= 1
    unless ``allow_empty``, the recorded ``in_channels`` and ``input_size``, the model's dtype
    (float64 into a float32 model), and, when ``y`` is given, integer labels (N,) below the
    recorded number of classes. ``check_device=False`` skips the device test (data still on the
    CPU, moved batch by batch later).
    """
    check_images(x, name, device=model_device(model) if check_device else None)
    if x.shape[0] == 0 and not allow_empty:
        raise SmoothinfError(f"{name} is an empty batch (0 examples); pass at least one image")
    exp = expected_input(model)
    channels, size = x.shape[1], tuple(x.shape[2:])
    if (exp.in_channels is not None and channels != exp.in_channels) or (
        exp.input_size is not None and size != exp.input_size
    ):
        shape = ", ".join(str(v) for v in x.shape[1:])
        raise SmoothinfError(
            f"{name} has shape (N, {shape}) but the model ({exp.arch}) expects {exp.describe()}"
            f" (sidecar in_channels {exp.in_channels}"
            + (f", input_size {exp.input_size[0]}x{exp.input_size[1]})" if exp.input_size else ")")
            + "; use the data set the model was trained on"
        )
    if exp.dtype is not None and x.dtype != exp.dtype:
        raise SmoothinfError(
            f"{name} is {str(x.dtype).replace('torch.', '')} but the model is"
            f" {str(exp.dtype).replace('torch.', '')}; convert it with x.to({exp.dtype})"
        )
    if y is not None:
        check_labels(y, x.shape[0], exp.num_classes)


def check_normalization(model: nn.Module, meta: Mapping, path: str) -> None:
    """Raise a one-line CheckpointError unless every ``Normalize`` std is finite and > 0 and the
    sidecar's ``normalization`` record (when present) agrees with the loaded buffers."""
    from smoothinf.errors import CheckpointError
    from smoothinf.models.normalize import Normalize

    layers = [m for m in model.modules() if isinstance(m, Normalize)]
    for layer in layers:
        std = layer.std.flatten()
        if not (torch.isfinite(std).all() and (std > 0).all()):
            raise CheckpointError(f"{path}: normalisation std must be > 0 per channel, got {std.tolist()}")
    record = meta.get("normalization") if isinstance(meta, Mapping) else None
    if not layers or not isinstance(record, Mapping):
        return
    for key in ("mean", "std"):
        values = record.get(key)
        if values is None:
            continue
        try:
            recorded = torch.tensor([float(v) for v in values], dtype=torch.float32)
        except (TypeError, ValueError):
            raise CheckpointError(
                f"{path}: sidecar normalization {key} {values!r} is not a list of numbers"
            ) from None
        loaded = getattr(layers[0], key).flatten().cpu()
        if key == "std" and not (recorded > 0).all():
            raise CheckpointError(f"{path}: sidecar normalization std must be > 0 per channel, got {values}")
        if recorded.shape != loaded.shape or not torch.allclose(recorded, loaded, rtol=1e-5, atol=1e-6):
            raise CheckpointError(
                f"{path}: sidecar normalization {key} {values} disagrees with the weights' {loaded.tolist()}"
            )
