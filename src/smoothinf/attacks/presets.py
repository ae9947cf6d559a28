"""Named attack presets: the recommended, converging set of attacks for a defended classifier.

``default`` (``smoothinf evaluate --attacks default``, the quickstart's set):
- every row: PGD-20 on the base model (the paper's attack, cheap; a reference point);
- smoothed rows (sigma > 0): APGD-CE on the loss of the expected softmax (SmoothAdv-style) and
  APGD-DLR on the expectation of the loss (EOT-style), both through the smoothing noise and the
  model's own weight noise with ``attack_m`` draws per step (200 steps x 16 draws by default),
  judged by the defended classifier;
- unsmoothed rows of a randomised model (PNI/CNI weight noise, or one marked randomised by
  ``judge.detect_randomised``): the same two APGD runs, EOT over its own noise only;
- unsmoothed deterministic rows: APGD-CE and APGD-T (DLR, 9 targets), AutoAttack's white-box pair,
  then the black-box Square attack (``square_queries`` queries, AutoAttack standard's 5000; 0: off)
  on what they leave, so a model that masks gradients is rated by what Square finds (the official
  AutoAttack ``standard`` runs beside it as the cross-check);
- with ``temperatures`` (``smoothinf evaluate`` passes them to the randomised rows judged by a vote
  that counts argmaxes: hard, weighted, or a weight-noise model's own forward): then APGD-CE on
  the expected softmax of logits / T, once per T, named ``apgd-ce-t<T>``. It follows the hard
  vote's tally, which the expected softmax at T = 1 does not; ``HARD_VOTE_TEMPERATURES`` are the two
  measured in docs/attack-strength.md, "Tempered APGD-CE".
``scale`` multiplies steps and draws (2: the convergence check's doubled budget); ``restarts`` runs
each APGD attack that many times from fresh random starts on the examples not yet fooled.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from smoothinf.attacks.apgd import APGD
from smoothinf.attacks.base import Attack, is_positive_number
from smoothinf.attacks.best import JudgeFn
from smoothinf.attacks.judge import is_randomised
from smoothinf.attacks.pgd import PGD
from smoothinf.attacks.square import DEFAULT_QUERIES, Square
from smoothinf.errors import ConfigError
from smoothinf.noise.distributions import NoiseDistribution

PRESETS = ("default",)
# Measured to converge on smoothed MNIST models (docs/attack-strength.md): at 100 x 8 doubling still found 4
# more images in 100 at sigma 0.1; at 200 x 16 doubling moved the worst case by 1 point.
DEFAULT_STEPS = 200
DEFAULT_DRAWS = 16
# The tempered APGD-CE runs of a hard / weighted vote; which T is best depends on the model and seed.
HARD_VOTE_TEMPERATURES = (0.5, 0.25)


def tempered_name(temperature: float) -> str:
    """The preset's name of its APGD-CE on the expected softmax of logits / ``temperature``."""
    return f"apgd-ce-t{temperature:g}"


def preset_attacks(
    name: str,
    model: nn.Module,
    eps: float,
    *,
    noise: NoiseDistribution | float | None = None,
    judge: nn.Module | JudgeFn | None = None,
    steps: int = DEFAULT_STEPS,
    attack_m: int = DEFAULT_DRAWS,
    scale: int = 1,
    norm: str = "linf",
    restarts: int = 1,
    temperatures: Sequence[float] = (),
    stop_decided: bool = False,
    square_queries: int = DEFAULT_QUERIES,
) -> dict[str, Attack]:
    """The attacks of preset ``name`` for base ``model`` smoothed with ``noise`` (None / sigma 0: unsmoothed).

    ``judge`` is the defended classifier (picks each example's strongest visited point); ``steps``
    and ``draws`` (per step) set the APGD budget, times ``scale``; ``restarts`` per APGD attack;
    ``temperatures`` add a tempered APGD-CE per T, last (the caller picks the rows that need it:
    ``smoothinf.evaluation.protocol.counts_argmaxes``); ``stop_decided``: the judged APGD runs stop
    spending steps on examples the judge already gets wrong (``smoothinf.attacks.decided``);
    ``square_queries``: the Square attack's budget on a deterministic unsmoothed model (times
    ``scale``; 0: no Square).
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown attack preset {name!r}; choose one of {', '.join(PRESETS)}")
    if isinstance(noise, (int, float)) and not isinstance(noise, bool):
        noise = NoiseDistribution.gaussian(float(noise)) if noise > 0 else None
    if noise is not None and noise.sigma <= 0:
        noise = None
    steps, draws = steps * scale, attack_m * scale
    attacks: dict[str, Attack] = {"pgd": PGD(model, eps, steps=20 * scale, norm=norm)}
    randomised = noise is not None or is_randomised(model)
    if randomised:
        m = draws
        common = dict(noise=noise, m=m, judge=judge, restarts=restarts, stop_decided=stop_decided)
        attacks["apgd-ce"] = APGD(model, eps, steps, norm, reduce="softmax", loss="ce", **common)
        attacks["apgd-dlr"] = APGD(model, eps, steps, norm, reduce="loss", loss="dlr", **common)
    else:
        common = dict(judge=judge, restarts=restarts, stop_decided=stop_decided)
        attacks["apgd-ce"] = APGD(model, eps, steps, norm, loss="ce", **common)
        attacks["apgd-t"] = APGD(model, eps, steps, norm, loss="dlr", target_classes=9, **common)
    for t in check_temperatures(temperatures):
        attacks[tempered_name(t)] = APGD(
            model, eps, steps, norm, reduce="softmax", loss="ce", temperature=t, **common
        )
    if not randomised and square_queries and norm == "linf":  # last: on what the white-box ones leave
        attacks["square"] = Square(model, eps, queries=square_queries * scale)
    return attacks


def check_temperatures(temperatures: Sequence[float]) -> list[float]:
    """``temperatures`` as floats, each > 0 and finite and none repeated, else a ConfigError."""
    values = list(temperatures)
    if any(not is_positive_number(t) for t in values) or len(set(values)) != len(values):
        raise ConfigError(f"temperatures must be distinct numbers > 0, got {values!r}")
    return [float(t) for t in values]
