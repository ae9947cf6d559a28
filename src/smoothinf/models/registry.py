"""A timm-like registry: models are created by name, with their normalisation inside.

Every registered builder has the signature ``builder(num_classes, in_channels, mean, std, **kw)``
and returns an ``ImageClassifier`` (first module ``normalize``). ``create_model`` records how the
model was built in ``model.smoothinf_arch`` so a checkpoint can rebuild it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from smoothinf.errors import SmoothinfError

_REGISTRY: dict[str, ModelSpec] = {}


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: its builder, the data shape it is meant for, a description.

    ``input_shape`` (C, H, W) is the default data shape (MNIST 1x28x28 or CIFAR 3x32x32);
    ``takes_input_size`` is True when the builder needs the spatial size (fully connected heads).
    ``dataset_normalization``: whether ``create_model_for`` puts the data set's mean/std into the
    model (False: raw pixels, mean 0 and std 1, as ``lenet`` is trained in the smoothing literature).
    """

    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    description: str
    dataset_normalization: bool = True

    @property
    def takes_input_size(self) -> bool:
        return "input_size" in inspect.signature(self.builder).parameters


def register_model(
    name: str | None = None,
    *,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    description: str = "",
    dataset_normalization: bool = True,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding ``builder(num_classes, in_channels, mean, std, **kw)`` under ``name``
    (``dataset_normalization``: see ``ModelSpec``)."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise SmoothinfError(f"model {key!r} is already registered")
        doc_lines = (builder.__doc__ or "").strip().splitlines()
        doc = description or (doc_lines[0] if doc_lines else "")
        _REGISTRY[key] = ModelSpec(key, builder, tuple(input_shape), doc, bool(dataset_normalization))
        return builder

    return wrap


def list_models() -> list[str]:
    """Names of every registered architecture, in natural order (resnet20 before resnet110)."""
    return sorted(_REGISTRY, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; unknown names raise a SmoothinfError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SmoothinfError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def _jsonable(value):
    """Tuples -> lists (recursively) so the recorded kwargs survive a JSON round trip unchanged."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Sequence[float] | float = 0.0,
    std: Sequence[float] | float = 1.0,
    **kwargs,
) -> nn.Module:
    """Build the registered model ``name`` for ``num_classes`` classes and ``in_channels`` channels.

    ``mean``/``std`` (per channel, pixel units) go into the model's first module ``normalize``, so
    the model takes pixels in [0, 1], shape (N, in_channels, H, W), and returns logits (N, K).
    Extra ``kwargs`` go to the builder (e.g. ``input_size`` for fully connected heads, ``dropout``).
    """
    spec = get_model_spec(name)
    if int(num_classes) < 1 or int(in_channels) < 1:
        raise SmoothinfError(f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}")
    try:
        model = spec.builder(int(num_classes), int(in_channels), mean, std, **kwargs)
    except TypeError as exc:
        fixed = ("num_classes", "in_channels", "mean", "std")
        params = [p for p in inspect.signature(spec.builder).parameters if p not in fixed]
        raise SmoothinfError(f"bad arguments for model {name!r} ({exc}); it accepts {params}") from None
    stats_c = model.normalize.in_channels
    model.smoothinf_arch = {
        "name": name,
        "kwargs": _jsonable(
            {
                "num_classes": int(num_classes),
                "in_channels": int(in_channels),
                "mean": _expand(mean, stats_c),
                "std": _expand(std, stats_c),
                **kwargs,
            }
        ),
    }
    return model


def _expand(values: Sequence[float] | float, channels: int) -> list[float]:
    if isinstance(values, (int, float)):
        return [float(values)] * channels
    values = [float(v) for v in values]
    return values * channels if len(values) == 1 else values


def create_model_for(name: str, info, **kwargs) -> nn.Module:
    """``create_model`` with classes, channels, normalisation (and input size) from a DatasetInfo.

    An architecture registered with ``dataset_normalization=False`` gets mean 0 and std 1 (raw
    pixels) instead of the data set's statistics."""
    spec = get_model_spec(name)
    if spec.takes_input_size and "input_size" not in kwargs:
        kwargs["input_size"] = tuple(info.input_shape[1:])
    mean, std = (info.mean, info.std) if spec.dataset_normalization else (0.0, 1.0)
    return create_model(name, info.num_classes, info.in_channels, mean, std, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_count(name: str, **kwargs) -> int:
    """Parameters of ``name`` built for its default data shape (10 classes), without allocating weights."""
    spec = get_model_spec(name)
    with torch.device("meta"):
        model = create_model(name, 10, spec.input_shape[0], 0.0, 1.0, **kwargs)
    return count_parameters(model)
