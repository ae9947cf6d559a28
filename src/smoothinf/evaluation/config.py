"""Evaluation configuration: a checkpoint, a grid of smoothing settings, attacks and repeated runs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from smoothinf.attacks.presets import HARD_VOTE_TEMPERATURES, check_temperatures
from smoothinf.errors import ConfigError
from smoothinf.evaluation.results import COUNTED_CHECKS
from smoothinf.smoothing import VOTES
from smoothinf.utils import check_dataclass_types, dataclass_from_yaml

EVAL_ATTACKS = (
    "default",
    "fgsm",
    "pgd",
    "apgd",
    "epgd",
    "smoothadv",
    "transfer",
    "nattack",
    "square",
    "autoattack",
)
JUDGING = 2
"""The judging rules this version measures with: 2 = each example's strongest point chosen on one set
of judgements and valued on an independent fresh set (issue 38); 1 = the minimum over noisy
estimates (records written before; read, never resumed)."""
CHECK_EXAMPLES = 100
"""Default examples of the cross-checks (capped by the examples evaluated)."""
CRAFTING = ("shared", "per-row")
"""How rows get their attacks: "shared" crafts the attacks and cross-checks that do not depend on
the vote or m once per (run, sigma, eps) and judges every vote and m on their points; "per-row"
crafts for every row (records written before sharing existed)."""
"""Default examples of the cross-checks (capped by the examples evaluated)."""


def checks_switched_off(settings: Mapping[str, object]) -> dict[str, str]:
    """Cross-check -> the setting that switched it off, from EvalConfig fields (``to_dict()`` or a
    record's ``config``; a missing field has its default); empty when every check is on."""
    if settings.get("check_examples", CHECK_EXAMPLES) == 0:
        return dict.fromkeys(COUNTED_CHECKS, "check_examples=0")
    return {name: f"{name}_check=False" for name in COUNTED_CHECKS if settings.get(f"{name}_check") is False}


# Fields that define what a result means; grid values and run count may grow on resume.
_IDENTITY = (
    "checkpoint",
    "data",
    "split",
    "max_examples",
    "steps",
    "restarts",
    "attack_m",
    "noise",
    "seed",
    "transfer_source",
    "nattack_population",
    "nattack_queries",
    "apgd_steps",
    "check_examples",
    "autoattack_check",
    "blackbox_check",
    "convergence_check",
    "square_queries",
    "cascade",
    "judgements",
    "temperatures",
    "judging",
    "crafting",
    "stop_decided",
    "preset_square_queries",
)


@dataclass
class EvalConfig:
    """The paper's protocol: every (vote, sigma, m) setting x eps, attacked by every attack, R runs.

    sigma and eps are in pixel units. The base model ("none" setting) is always included.
    Attacks: default = the recommended converging preset (``smoothinf.attacks.presets``: PGD on the
    base model, and APGD-CE / APGD-DLR through the noise, ``apgd_steps`` x ``attack_m`` draws; APGD-CE
    and APGD-T, then Square with ``preset_square_queries`` queries, for deterministic unsmoothed
    rows), pgd = PGD on the base model (the paper's setting),
    apgd = APGD-CE on the expected softmax, epgd / smoothadv = expectation
    attacks through the smoothing noise with ``attack_m`` draws per step, fgsm = single step,
    transfer = PGD on the ``transfer_source`` checkpoint, nattack = black-box NES on the defended
    classifier's scores, square = the Square attack (``preset_square_queries`` queries, or
    ``square_queries`` when that is 0) on the model, or on the ``attack_m``-draw soft scores of a
    smoothed row, autoattack = the official AutoAttack (version "rand" with EOT on a
    soft-vote smoothed surrogate for smoothed settings, "standard" for the base model).
    Cross-checks on the first ``check_examples`` examples (default 100, capped by the examples; 0:
    off, an explicit choice that records and reports state): ``autoattack_check`` (the official
    AutoAttack: ``standard`` on deterministic rows; on randomised rows rand's APGD-CE and APGD-DLR,
    EOT 20, on an ``attack_m``-draw soft surrogate, whose best-loss points the defended classifier
    judges), ``blackbox_check`` (Square with ``square_queries`` queries: gradient masking),
    ``convergence_check`` (the strongest attack of a randomised row, smoothed or with weight noise,
    with twice the steps and draws; a deterministic row's Square with twice the queries). ``cascade``
    (default: on with the ``default`` preset) runs each attack only on the examples the earlier ones
    left robust, as AutoAttack does; per-attack accuracies are then cumulative. ``judgements``: a
    randomised defence (smoothed with sigma > 0, or weight noise) judges every point this many times
    with fresh noise, and an example's correctness is the fraction right
    (``smoothinf.attacks.judge``); worst cases and accuracies are means of those probabilities.
    ``first_example``: skip the split's first N examples, so the protocol runs on examples
    [first_example, first_example + max_examples): one slice of a larger evaluation, whose files
    ``smoothinf report`` merges (``evaluation.slices``).
    ``temperatures``: the ``default`` preset's tempered APGD-CE (logits / T, one attack per T) on
    the rows judged by argmax counts: hard and weighted votes with input noise or weight noise, and
    a weight-noise model's own unsmoothed forward ([]: off; it is skipped on soft votes and
    deterministic rows).
    ``judging``: the version of the judging rules (``JUDGING``; part of the identity, left out of the
    fingerprint at 1 so that records written before it existed keep theirs and read as judging 1);
    ``evaluate`` measures with ``JUDGING`` only.
    ``crafting``: "shared" (default) crafts once per (run, sigma, eps) what every vote and m of that
    sigma can share and judges each row on it; "per-row" crafts for each row (``CRAFTING``; left out
    of the fingerprint and identity at "per-row", so records written before it existed keep theirs).
    ``stop_decided``: the judged APGD / EPGD / SmoothAdv runs stop spending steps on the examples
    that every row sharing the run already gets wrong in 16 fresh judgements
    (``smoothinf.attacks.decided``; left out of the fingerprint and identity when off).
    ``preset_square_queries``: the ``default`` preset's Square attack on deterministic unsmoothed
    rows (default 5000, AutoAttack standard's; 0: none, as in records written before it existed,
    and left out of the fingerprint and identity then). Such a row's ``blackbox_check`` is read
    from that Square's own finds beyond the white-box attacks instead of running Square again.
    """

    checkpoint: str = ""
    data: str | None = None
    root: str | None = None
    split: str = "test"
    first_example: int = 0
    max_examples: int = 200
    eps: list[float] = field(default_factory=lambda: [0.3])
    votes: list[str] = field(default_factory=lambda: ["hard", "soft"])
    sigmas: list[float] = field(default_factory=lambda: [0.1, 0.25])
    ms: list[int] = field(default_factory=lambda: [32])
    attacks: list[str] = field(default_factory=lambda: ["default"])
    steps: int = 20
    apgd_steps: int = 200
    restarts: int = 1
    attack_m: int = 16
    temperatures: list[float] = field(default_factory=lambda: list(HARD_VOTE_TEMPERATURES))
    transfer_source: str | None = None
    nattack_population: int = 50
    nattack_queries: int = 2000
    check_examples: int = CHECK_EXAMPLES
    autoattack_check: bool = True
    blackbox_check: bool = True
    convergence_check: bool = True
    square_queries: int = 1000
    cascade: bool | None = None
    judgements: int = 16
    judging: int = JUDGING
    crafting: str = "shared"
    stop_decided: bool = True
    preset_square_queries: int = 5000
    noise: str = "gaussian"
    runs: int = 3
    seed: int = 0
    batch_size: int = 200
    device: str = "auto"

    def validate(self) -> None:
        check_dataclass_types(self, "evaluation config")
        for name in (
            "max_examples",
            "restarts",
            "batch_size",
            "nattack_population",
            "nattack_queries",
            "judgements",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.checkpoint:
            raise ConfigError("an evaluation needs a checkpoint")
        if self.first_example < 0:
            raise ConfigError(f"first_example must be >= 0, got {self.first_example}")
        unknown = [v for v in self.votes if v not in VOTES]
        if unknown:
            raise ConfigError(f"unknown vote {unknown[0]!r}; choose from {', '.join(VOTES)}")
        unknown = [a for a in self.attacks if a not in EVAL_ATTACKS]
        if unknown:
            raise ConfigError(f"unknown attack {unknown[0]!r}; choose from {', '.join(EVAL_ATTACKS)}")
        if "transfer" in self.attacks and not self.transfer_source:
            raise ConfigError("the transfer attack needs transfer_source (a source checkpoint)")
        if not self.eps or not self.attacks:
            raise ConfigError("the grid is empty: give at least one eps and one attack")
        if self.votes and (not self.sigmas or not self.ms):
            raise ConfigError("the grid is empty: votes need at least one sigma and one m")
        if any(s < 0 for s in self.sigmas) or any(e < 0 for e in self.eps):
            raise ConfigError("sigma and eps must be >= 0 (pixel units)")
        if any(m < 1 for m in self.ms) or self.runs < 1 or self.steps < 1 or self.attack_m < 1:
            raise ConfigError("m, runs, steps and attack_m must be >= 1")
        if self.apgd_steps < 1 or self.square_queries < 1 or self.check_examples < 0:
            raise ConfigError("apgd_steps and square_queries must be >= 1 and check_examples >= 0")
        if self.preset_square_queries < 0:
            raise ConfigError(f"preset_square_queries must be >= 0, got {self.preset_square_queries}")
        check_temperatures(self.temperatures)
        if self.crafting not in CRAFTING:
            raise ConfigError(f"crafting must be one of {', '.join(CRAFTING)}, got {self.crafting!r}")
        if self.judging not in (1, JUDGING):
            raise ConfigError(f"judging must be 1 (old records) or {JUDGING}, got {self.judging}")

    def cascades(self) -> bool:
        """Whether attacks run as a cascade (see the class docstring)."""
        return "default" in self.attacks if self.cascade is None else bool(self.cascade)

    def checks_off(self) -> dict[str, str]:
        """Cross-checks switched off, each with the setting that did it (empty: all on)."""
        return checks_switched_off(self.to_dict())

    def settings(self) -> list[tuple[str, float, int]]:
        """(vote, sigma, m) rows: ("none", 0, 1) for the base model, then the grid."""
        return [("none", 0.0, 1)] + [
            (v, float(s), int(m)) for v in self.votes for s in self.sigmas for m in self.ms
        ]

    def fingerprint(self) -> str:
        ident = {k: getattr(self, k) for k in _IDENTITY}
        if self.first_example:  # absent at 0: records from before slices keep their fingerprint
            ident["first_example"] = self.first_example
        if self.judging == 1:  # absent at 1: records from before judging 2 keep their fingerprint
            del ident["judging"]
        if self.crafting == "per-row":  # absent: records from before shared crafting keep theirs
            del ident["crafting"]
        if not self.stop_decided:  # absent when off: records from before it keep theirs
            del ident["stop_decided"]
        if not self.preset_square_queries:  # absent at 0: records from before it keep theirs
            del ident["preset_square_queries"]
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides) -> EvalConfig:
        """Load from YAML; non-None ``overrides`` (CLI flags) win; unknown keys are errors."""
        return dataclass_from_yaml(cls, path, **overrides)
