"""Convert any model's layers to noise-injection layers, switch noise on/off, report learned levels."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from smoothinf.errors import SmoothinfError
from smoothinf.noise.layers import InputNoise, NoisyLayer

NOISE_KINDS = {
    "pni-w": "PNI on weights: W + alpha * N(0, std(W)^2), alpha learned (He et al. 2019)",
    "pni-a": "PNI on activations: a + alpha * N(0, std(a)^2) after each conv/linear",
    "pni-wa": "PNI on weights and activations",
    "cni-w": "CNI on weights: low-rank colored noise, Cov = diag(|std(W) d|) + F F^T (rank r)",
    "cni-i": "Gaussian noise on the input (std sigma, pixel units), fixed or learned sigma",
}
_LAYER_KINDS = {
    "pni-w": ("pni", False),
    "pni-a": (None, True),
    "pni-wa": ("pni", True),
    "cni-w": ("cni", False),
}
LayerSelector = str | Sequence[str] | Callable[[str, nn.Module], bool]


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parts = name.split(".")
    parent = model
    for p in parts[:-1]:
        parent = getattr(parent, p)
    return parent, parts[-1]


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    inside = {n for n, m in model.named_modules() if isinstance(m, NoisyLayer)}
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and not any(n.startswith(p + ".") for p in inside)
    ]


def inject_noise(
    model: nn.Module,
    kind: str | None = None,
    layers: LayerSelector = "all",
    rank: int = 5,
    init: float = 0.25,
    granularity: str = "layer",
    sigma: float = 0.25,
    learn_sigma: bool = False,
    stack: list[dict] | None = None,
) -> nn.Module:
    """Convert ``model`` in place and return it.

    ``kind``: pni-w | pni-a | pni-wa | cni-w (wrap Conv2d/Linear layers chosen by ``layers``: "all",
    a list of module names, or a predicate (name, module) -> bool) or cni-i (input noise of std
    ``sigma`` pixels before ``model.normalize``). Records ``model.smoothinf_noise`` so that
    checkpoints replay the conversion; ``stack`` replays several recorded conversions in order.
    """
    if stack is not None:
        for cfg in stack:
            inject_noise(model, **cfg)
        return model
    if kind not in NOISE_KINDS:
        raise SmoothinfError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    if rank < 0:
        raise SmoothinfError(f"rank must be >= 0, got {rank}")
    if init < 0:
        raise SmoothinfError(f"init must be >= 0, got {init}")
    if kind == "cni-i":
        normalize = getattr(model, "normalize", None)
        if normalize is None or isinstance(normalize, InputNoise):
            raise SmoothinfError("cni-i needs a model whose first module is `normalize` without input noise")
        model.normalize = InputNoise(normalize, sigma, learn_sigma)
        record = {"kind": kind, "sigma": float(sigma), "learn_sigma": bool(learn_sigma)}
    else:
        chosen = _select(model, layers)
        weight_noise, activation = _LAYER_KINDS[kind]
        device = next(model.parameters()).device
        for name, module in chosen:
            parent, attr = _parent(model, name)
            setattr(
                parent, attr, NoisyLayer(module, weight_noise, activation, init, granularity, rank).to(device)
            )
        record = {
            "kind": kind,
            "layers": [n for n, _ in chosen],
            "rank": int(rank),
            "init": float(init),
            "granularity": granularity,
        }
    previous = getattr(model, "smoothinf_noise", None)
    if previous:
        stack_list = previous.get("stack", [previous])
        model.smoothinf_noise = {"stack": stack_list + [record]}
    else:
        model.smoothinf_noise = record
    return model


def _select(model: nn.Module, layers: LayerSelector) -> list[tuple[str, nn.Module]]:
    candidates = _candidates(model)
    if layers == "all":
        chosen = candidates
    elif callable(layers):
        chosen = [(n, m) for n, m in candidates if layers(n, m)]
    elif isinstance(layers, Sequence) and not isinstance(layers, str):
        names = dict(candidates)
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise SmoothinfError(f"no Conv2d/Linear layer named {unknown[0]!r} in the model")
        chosen = [(n, names[n]) for n in layers]
    else:
        raise SmoothinfError(f"layers must be 'all', a list of names or a predicate, got {layers!r}")
    if not chosen:
        raise SmoothinfError("the model has no Conv2d or Linear layer to inject noise into")
    return chosen


def set_noise(model: nn.Module, enabled: bool) -> None:
    """Switch every noise layer of ``model`` on or off (independent of ``model.training``)."""
    for m in model.modules():
        if hasattr(m, "noise_enabled"):
            m.noise_enabled = bool(enabled)


@contextmanager
def noise_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Context in which ``model``'s noise layers are off; restores each layer's switch after."""
    layers = [m for m in model.modules() if hasattr(m, "noise_enabled")]
    saved = [m.noise_enabled for m in layers]
    try:
        for m in layers:
            m.noise_enabled = False
        yield model
    finally:
        for m, s in zip(layers, saved, strict=True):
            m.noise_enabled = s


def input_noise_std(model: nn.Module) -> float | None:
    """The std (pixel units) of ``model``'s switched-on cni-i input-noise layer, None without one."""
    for m in model.modules():
        if isinstance(m, InputNoise) and m.noise_enabled:
            return float(m.sigma.detach().abs())
    return None


def noise_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned noise parameters (alphas, CNI diagonals and factors, learned input sigma)."""
    return [p for n, p in model.named_parameters() if _is_noise_param(n)]


def _is_noise_param(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf in ("alpha_w", "alpha_a", "diag", "factor") or name.endswith("normalize.sigma")


def param_groups(model: nn.Module, weight_decay: float, noise_weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups: weight decay on the weights, ``noise_weight_decay`` on noise params."""
    noise, other = [], []
    for n, p in model.named_parameters():
        (noise if _is_noise_param(n) else other).append(p)
    groups = [{"params": other, "weight_decay": weight_decay}]
    if noise:
        groups.append({"params": noise, "weight_decay": noise_weight_decay})
    return groups


def noise_summary(model: nn.Module) -> list[dict]:
    """One row per noise layer: name, kind, mean alpha / mean |d|, factor norm, input sigma."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, NoisyLayer):
            row = {"layer": name, "kind": (m.weight_noise or "") + ("+act" if m.activation_noise else "")}
            if m.weight_noise == "pni":
                row["alpha_w"] = float(m.alpha_w.detach().mean())
            if m.weight_noise == "cni":
                row["diag"] = float(m.diag.detach().abs().mean())
                row["factor_norm"] = float(m.factor.detach().norm())
            if m.activation_noise:
                row["alpha_a"] = float(m.alpha_a.detach().mean())
            rows.append(row)
        elif isinstance(m, InputNoise):
            rows.append({"layer": name, "kind": "input", "sigma": float(m.sigma.detach().abs())})
    return rows


def format_noise_summary(rows: list[dict]) -> str:
    """A plain-text table of ``noise_summary`` rows."""
    if not rows:
        return "no noise layers"
    keys = ["layer", "kind", "alpha_w", "alpha_a", "diag", "factor_norm", "sigma"]
    keys = [k for k in keys if any(k in r for r in rows)]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["  ".join(keys)]
    lines += ["  ".join(fmt(r.get(k, "-")) for k in keys) for r in rows]
    return "\n".join(lines)


def mean_noise_level(model: nn.Module) -> dict[str, float]:
    """Compact learned-noise levels for progress bars: mean alpha / |d| / sigma over layers."""
    rows = noise_summary(model)
    out = {}
    for key in ("alpha_w", "alpha_a", "diag", "sigma"):
        vals = [r[key] for r in rows if key in r]
        if vals:
            out[key] = sum(vals) / len(vals)
    return out
