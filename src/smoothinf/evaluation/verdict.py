"""One call to rate a model: ``evaluate(model, x, y, eps=...)`` runs the protocol on its rows and
returns a ``Report`` (accuracies, per-image P(correct), flags, budgets, seconds; printable, saved
as JSON and read back).

It is ``evaluate_grid``'s protocol (``smoothinf.evaluation.protocol``) on a grid of at most two
rows (``Report.config``): the base model and, with ``sigma`` (or a ``SmoothedClassifier``),
its smoothed version. Each row's record is the one ``evaluate_grid`` writes for that config.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from smoothinf.attacks.presets import DEFAULT_DRAWS, DEFAULT_STEPS, PRESETS
from smoothinf.errors import ConfigError
from smoothinf.evaluation.config import CHECK_EXAMPLES, EvalConfig
from smoothinf.evaluation.protocol import evaluate_row, grid_jobs, prepare_inputs
from smoothinf.evaluation.report import (
    aggregate,
    checks_off_text,
    checks_table,
    markdown_table,
    row_flags,
    runs_text,
    setting_name,
)
from smoothinf.evaluation.results import row_key
from smoothinf.smoothing import VOTES, SmoothedClassifier
from smoothinf.utils import resolve_device

DEFAULT_M = 64
"""Monte Carlo draws of the smoothed row when neither ``m`` nor a SmoothedClassifier gives them."""
DEFAULT_VOTE = "hard"
"""The smoothed row's vote by default: the randomised-smoothing classifier (Cohen et al.)."""
NORMS = ("linf",)
"""Threat models the protocol runs (its attacks and cross-checks are L_inf)."""
REPORT_FORMAT = "smoothinf-report/1"


@dataclass(frozen=True)
class Row:
    """One defended classifier at one eps over the report's runs. Accuracies are fractions in
    [0, 1], means over runs (``*_std``: standard deviations, 0 for one run); a randomised row's
    accuracies are means over images of P(correct) with fresh judgements."""

    vote: str  # "none" for the base model, else the smoothed row's vote
    sigma: float  # input noise std, pixel units
    m: int  # Monte Carlo draws of the smoothed classifier (1 for the base model)
    eps: float  # L_inf radius, pixel units
    runs: int
    n: int  # images
    clean: float
    clean_std: float
    worst_case: float  # every attack and cross-check (an image is robust only if all failed)
    worst_case_std: float
    attacks: dict[str, float]  # attack -> accuracy (cumulative in a cascade), in the order they ran
    attacks_std: dict[str, float]
    robust: torch.Tensor  # (N,) float: P(correct) at each image's strongest point, mean over runs
    strongest: str
    flags: str  # the cross-checks' flags ("-" when none)
    budget: dict[str, dict]  # attack -> steps, draws, restarts, gradients per image
    checks: dict[str, dict]  # cross-check -> examples, robust before, extra found, flag (summed over runs)
    checks_off: dict[str, str]  # cross-check -> the setting that switched it off (empty: all ran)
    seconds: float  # wall seconds per run, mean

    @property
    def setting(self) -> str:
        """The row's name in tables, e.g. "base (no smoothing)" or "hard sigma=0.1 m=64"."""
        return setting_name(self.vote, self.sigma, self.m)


@dataclass
class Report:
    """What ``evaluate`` found: ``records`` (``evaluate_grid``'s records, one per (run, row), in the
    order they ran) and ``per_image`` ((N,) float P(correct) of each record's worst case, on the
    CPU). ``rows`` aggregates them per (setting, eps), base model first; ``print(report)`` gives
    the table; ``save`` / ``load`` keep both as JSON."""

    records: list[dict]
    per_image: list[torch.Tensor]
    rows: list[Row] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.records) != len(self.per_image) or not self.records:
            raise ConfigError(
                f"a report needs one per-image tensor per record, got {len(self.records)} records and"
                f" {len(self.per_image)} tensors"
            )
        self.per_image = [p.detach().float().cpu() for p in self.per_image]
        self._aggregated = aggregate(self.records)
        self.rows = [self._row(key, row) for key, row in self._aggregated.items()]
        self.rows.sort(key=lambda r: (r.eps, r.vote != "none"))

    def _row(self, key: tuple, row: dict) -> Row:
        same = [
            p for r, p in zip(self.records, self.per_image, strict=True) if row_key(r)[1:] == key
        ]  # its runs
        return Row(
            *key,
            runs=row["runs"],
            n=row["n"],
            clean=row["clean"][0],
            clean_std=row["clean"][1],
            worst_case=row["worst_case"][0],
            worst_case_std=row["worst_case"][1],
            attacks={a: v[0] for a, v in row["attacks"].items()},
            attacks_std={a: v[1] for a, v in row["attacks"].items()},
            robust=torch.stack(same).mean(0),
            strongest=row["strongest"],
            flags=row_flags(row),
            budget=row["budget"],
            checks=row["checks"],
            checks_off=row["checks_off"],
            seconds=row["seconds"][0],
        )

    @property
    def config(self) -> EvalConfig:
        """The ``EvalConfig`` whose grid ``evaluate_grid`` runs to the same records."""
        return EvalConfig(**self.records[0]["config"])

    @property
    def base(self) -> Row:
        """The base model's row."""
        return next(r for r in self.rows if r.vote == "none")

    @property
    def smoothed(self) -> Row | None:
        """The smoothed row; None when the evaluation had none (``sigma`` None)."""
        return next((r for r in self.rows if r.vote != "none"), None)

    @property
    def defended(self) -> Row:
        """The row of the classifier under evaluation: the smoothed one when there is one."""
        return self.smoothed or self.base

    @property
    def robust(self) -> torch.Tensor:
        """(N,) float in [0, 1]: ``defended``'s P(correct) per image at its strongest point."""
        return self.defended.robust

    def __str__(self) -> str:
        cfg = self.records[0]["config"]
        k = min(cfg["check_examples"], self.records[0]["n"])
        checks = f"cross-checks on the first {k} images" if k else "cross-checks off (checks=False)"
        head = (
            f"smoothinf.evaluate: {self.records[0]['n']} images, L_inf, preset {', '.join(cfg['attacks'])}, "
            f"{runs_text(self.records)}, {cfg['judgements']} judgements per point of a randomised row, "
            f"{checks}. Accuracies in %, mean ± std over runs."
        )
        parts = [head, "", markdown_table(self._aggregated)]
        cross = checks_table(self._aggregated)
        if cross:
            parts += ["", "Cross-checks (what they fooled counts in the worst case):", "", cross]
        elif checks_off_text(self._aggregated):
            parts += ["", checks_off_text(self._aggregated)]
        return "\n".join(parts)

    def __repr__(self) -> str:
        rows = ", ".join(f"{r.setting}: worst case {r.worst_case:.3f}" for r in self.rows)
        return f"Report({rows}; {self.records[0]['n']} images)"

    def save(self, path: str | os.PathLike) -> Path:
        """Write the records and the per-image values as one JSON object; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "format": REPORT_FORMAT,
            "records": self.records,
            "per_image": [p.tolist() for p in self.per_image],
        }
        path.write_text(json.dumps(data) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Report:
        """Read a report written by ``save``."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise ConfigError(f"{path} is not a smoothinf report ({REPORT_FORMAT}) written by Report.save")
        per_image = [torch.tensor(p, dtype=torch.float32) for p in data["per_image"]]
        return cls(data["records"], per_image)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _pixel_value(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a number in [0, 1] (pixel units), got {value!r}")
    return float(value)


def _smoothing(
    model: nn.Module, sigma: float | None, m: int | None, vote: str | None
) -> tuple[nn.Module, float | None, int, str, str]:
    """(base model, sigma, m, vote, noise family) of the rows: a SmoothedClassifier's own, which any
    value given must equal, else the arguments (with the defaults)."""
    if not isinstance(model, SmoothedClassifier):
        return model, sigma, DEFAULT_M if m is None else m, DEFAULT_VOTE if vote is None else vote, "gaussian"
    own = {"sigma": model.sigma, "m": model.m, "vote": model.vote}
    for name, value in {"sigma": sigma, "m": m, "vote": vote}.items():
        if value is not None and value != own[name]:
            raise ConfigError(
                f"{name}={value!r} differs from the SmoothedClassifier's {name}={own[name]!r};"
                " pass one of them"
            )
    if model.weights is not None:
        raise ConfigError(
            "the protocol's weighted vote uses the default rank weights; pass a model without custom weights"
        )
    return model.model, model.sigma, model.m, model.vote, model.noise.family


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | None = None,
    norm: str = "linf",
    sigma: float | None = None,
    m: int | None = None,
    vote: str | None = None,
    preset: str = "default",
    checks: bool = True,
    judgements: int = 16,
    runs: int = 1,
    steps: int = DEFAULT_STEPS,
    attack_m: int = DEFAULT_DRAWS,
    seed: int = 0,
    device: str = "auto",
) -> Report:
    """Rate ``model``'s robustness on (x, y) with the protocol; returns a ``Report``.

    Args:
        model: any nn.Module mapping (N, C, H, W) images in [0, 1] to (N, K) logits: deterministic,
            with the library's weight noise (or otherwise random: detected and judged as such), or a
            ``SmoothedClassifier``, whose sigma, m and vote are then the smoothed row's (values
            passed too must equal them). Moved to ``device`` in place (``nn.Module.to``).
        x: (N, C, H, W) float images in [0, 1]; y: (N,) int64 labels.
        eps: required, the L_inf radius in pixel units (e.g. 0.3 MNIST, 8/255 CIFAR-10).
        norm: the threat model; the protocol runs "linf" only.
        sigma: the smoothing noise std in pixel units; None: no smoothed row (only the model itself).
        m: Monte Carlo draws of the smoothed classifier (default ``DEFAULT_M`` = 64).
        vote: one of ``smoothinf.smoothing.VOTES`` (default ``DEFAULT_VOTE``, "hard").
        preset: the attack preset (``smoothinf.attacks.presets``), run as a cascade.
        checks: the cross-checks on the first min(100, N) images (the official AutoAttack, Square,
            and for randomised rows the strongest attack at twice the steps and draws), whose finds
            count in the worst case; False switches them off and the report states it.
        judgements: fresh judgements per point of a randomised row (its P(correct) per image).
        runs: repeated runs with seeds ``seed``, ``seed + 1``, ...; the report gives mean ± std.
        steps, attack_m: the preset's APGD steps and noise draws per attack step (its defaults).
        device: "auto" (CUDA when present), "cpu", "cuda", ...

    Rows: the base model (unsmoothed; for a SmoothedClassifier, its inner model) and, when
    ``sigma`` is given or ``model`` is a SmoothedClassifier, the smoothed classifier (vote, sigma,
    m), judged with fresh noise. Each row's record equals ``evaluate_grid``'s for ``Report.config``.
    """
    if eps is None:
        raise ConfigError(
            "eps is required: the L_inf radius in pixel units, e.g. 0.3 for MNIST, 8/255 for CIFAR-10"
        )
    eps = _pixel_value("eps", eps)
    if norm not in NORMS:
        raise ConfigError(f"norm {norm!r} is not run by the protocol; choose one of {', '.join(NORMS)}")
    if preset not in PRESETS:
        raise ConfigError(f"unknown attack preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model must be a torch.nn.Module mapping [0, 1] images to logits, got {type(model).__name__}"
        )
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ConfigError("x and y must be tensors: (N, C, H, W) images in [0, 1] and (N,) labels")
    base, sigma, m, vote, noise = _smoothing(model, sigma, m, vote)
    if vote not in VOTES:
        raise ConfigError(f"unknown vote {vote!r}; choose one of {', '.join(VOTES)}")
    smoothed = sigma is not None
    cfg = EvalConfig(
        checkpoint=f"in-memory {type(base).__name__}",
        max_examples=int(x.shape[0]),
        eps=[eps],
        votes=[vote] if smoothed else [],
        sigmas=[_pixel_value("sigma", sigma)] if smoothed else [],
        ms=[_positive_int("m", m)] if smoothed else [],
        attacks=[preset],
        apgd_steps=_positive_int("steps", steps),
        attack_m=_positive_int("attack_m", attack_m),
        check_examples=CHECK_EXAMPLES if checks else 0,
        judgements=_positive_int("judgements", judgements),
        noise=noise,
        runs=_positive_int("runs", runs),
        seed=seed,
        device=str(resolve_device(device)),
    )
    base.to(cfg.device)
    x, y = prepare_inputs(cfg, base, x, y)
    rows = [evaluate_row(cfg, base, x, y, run, setting, e) for run, setting, e in grid_jobs(cfg)]
    return Report([r.record for r in rows], [r.robust for r in rows])
