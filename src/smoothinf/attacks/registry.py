"""Attacks by name: the CLI's and configs' entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from smoothinf.attacks.apgd import APGD
from smoothinf.attacks.autoattack import AutoAttackAdapter
from smoothinf.attacks.expectation import EPGD, SmoothAdv
from smoothinf.attacks.fgsm import FGSM
from smoothinf.attacks.nattack import NAttack
from smoothinf.attacks.pgd import PGD
from smoothinf.attacks.square import Square
from smoothinf.attacks.transfer import TransferAttack
from smoothinf.errors import ConfigError


def _transfer(
    model: nn.Module, eps: float, *, source: nn.Module | None = None, source_attack: str = "pgd", **kw: Any
) -> TransferAttack:
    """Transfer: ``source_attack`` (a registered name) crafted on ``source``; ``model`` is the target
    and is not queried (the judge evaluates the target)."""
    if source is None:
        raise ConfigError("the transfer attack needs source=<model> (CLI: --source-checkpoint)")
    if source_attack == "transfer":
        raise ConfigError("source_attack cannot itself be 'transfer'")
    return TransferAttack(build_attack(source_attack, source, eps, **kw))


def _autoattack(model: nn.Module, eps: float, *, norm: str = "linf", **kw: Any) -> AutoAttackAdapter:
    return AutoAttackAdapter(model, norm=norm, eps=eps, **kw)


_REGISTRY: dict[str, Callable[..., Any]] = {
    "fgsm": lambda model, eps, **kw: FGSM(model, eps, **kw),
    "pgd": lambda model, eps, **kw: PGD(model, eps, **kw),
    "epgd": lambda model, eps, **kw: EPGD(model, eps=eps, **kw),
    "apgd": lambda model, eps, **kw: APGD(model, eps=eps, **kw),
    "smoothadv": lambda model, eps, **kw: SmoothAdv(model, eps=eps, **kw),
    "nattack": lambda model, eps, **kw: NAttack(model, eps, **kw),
    "square": lambda model, eps, **kw: Square(model, eps, **kw),
    "transfer": _transfer,
    "autoattack": _autoattack,
}


def list_attacks() -> list[str]:
    """Registered attack names."""
    return sorted(_REGISTRY)


def build_attack(name: str, model: nn.Module, eps: float, **kwargs: Any) -> Any:
    """Build attack ``name`` on ``model`` with radius ``eps`` (pixel units); ``kwargs`` go to its class.

    fgsm, pgd (PGD options), apgd (noise, m, reduce, loss, target_classes, ...),
    epgd / smoothadv (noise, m + PGD options; a SmoothedClassifier model
    supplies its noise and m), nattack (population, sigma, lr, max_queries), square (queries,
    p_init), transfer (source=model, source_attack=name + that attack's options), autoattack (norm,
    version, seed, batch_size).
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown attack {name!r}; choose one of {', '.join(list_attacks())}")
    try:
        return _REGISTRY[name](model, eps, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad options for attack {name!r}: {exc}") from exc
