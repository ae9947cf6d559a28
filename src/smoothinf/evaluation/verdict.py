"""The one entry point: ``evaluate(model, x, y, eps=...)`` runs the protocol
(``smoothinf.evaluation.protocol.evaluate_rows`` per group of rows) and returns a ``Report`` (accuracies,
per-image P(correct), flags, budgets, seconds; printable, saved as JSON and read back).

Called with keywords it rates one model: the base model and, with ``sigma`` (or a
``SmoothedClassifier``), its smoothed version. Called with ``config=`` (an ``EvalConfig``: a grid
of votes x sigmas x ms x eps, any attacks, budgets and cross-checks) it runs that grid, resumable
through ``results=`` and split across processes under torchrun: the form behind ``smoothinf
evaluate``, the quickstart, the zoo's cards and the studies.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from smoothinf.attacks.presets import DEFAULT_DRAWS, DEFAULT_STEPS, PRESETS
from smoothinf.distributed import gather_json, init_distributed
from smoothinf.errors import ConfigError
from smoothinf.evaluation.config import CHECK_EXAMPLES, EvalConfig
from smoothinf.evaluation.protocol import Setting, evaluate_rows, grid_jobs, prepare_inputs, row_groups
from smoothinf.evaluation.report import (
    aggregate,
    checks_off_text,
    checks_table,
    markdown_table,
    row_flags,
    runs_text,
    setting_name,
)
from smoothinf.evaluation.results import ResultsStore, evaluation_identity, row_key, weights_digest
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
    robust: torch.Tensor | None  # (N,) float: P(correct) at each image's strongest point, mean over
    # runs; None when a record lacks it (results files written before records held it)
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
    """What ``evaluate`` found: ``records`` (one per (run, row), in the order they ran; the results
    files' schema) and ``per_image`` ((N,) float P(correct) of each record's worst case, on the
    CPU; None for a record without it). ``per_image`` defaults to each record's ``robust`` list.
    ``rows`` aggregates them per (setting, eps), base model first; ``print(report)`` gives the
    table; ``save`` / ``load`` keep both as JSON."""

    records: list[dict]
    per_image: list[torch.Tensor | None] | None = None
    rows: list[Row] = field(init=False)

    def __post_init__(self) -> None:
        if self.per_image is None:
            rows = [r.get("robust") for r in self.records]
            self.per_image = [None if v is None else torch.tensor(v, dtype=torch.float32) for v in rows]
        if len(self.records) != len(self.per_image) or not self.records:
            raise ConfigError(
                f"a report needs one per-image tensor per record, got {len(self.records)} records and"
                f" {len(self.per_image)} tensors"
            )
        self.per_image = [None if p is None else p.detach().float().cpu() for p in self.per_image]
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
            robust=None if any(p is None for p in same) else torch.stack(same).mean(0),
            strongest=row["strongest"],
            flags=row_flags(row),
            budget=row["budget"],
            checks=row["checks"],
            checks_off=row["checks_off"],
            seconds=row["seconds"][0] if row["seconds"] else float("nan"),
        )

    @property
    def config(self) -> EvalConfig:
        """The ``EvalConfig`` that ``evaluate(..., config=)`` runs to the same records."""
        # records written before a field existed measured with its old value
        old = {"judging": 1, "crafting": "per-row", "stop_decided": False, "preset_square_queries": 0}
        return EvalConfig(**{**old, **self.records[0]["config"]})

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
        if self.defended.robust is None:
            raise ConfigError("these records hold no per-image values (written before records kept them)")
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
            "per_image": [None if p is None else p.tolist() for p in self.per_image],
        }
        path.write_text(json.dumps(data) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Report:
        """Read a report written by ``save``."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise ConfigError(f"{path} is not a smoothinf report ({REPORT_FORMAT}) written by Report.save")
        per_image = [None if p is None else torch.tensor(p, dtype=torch.float32) for p in data["per_image"]]
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


_KEYWORD_DEFAULTS = {
    "norm": "linf",
    "preset": "default",
    "checks": True,
    "judgements": 16,
    "runs": 1,
    "steps": DEFAULT_STEPS,
    "attack_m": DEFAULT_DRAWS,
    "seed": 0,
    "device": "auto",
}
"""``evaluate``'s protocol keywords with their defaults: with ``config=`` each must keep its default."""


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
    config: EvalConfig | None = None,
    results: str | os.PathLike | ResultsStore | None = None,
    progress: bool = False,
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
        config: an ``EvalConfig`` giving the whole protocol instead of the keywords above (which
            must then keep their defaults): its grid of votes x sigmas x ms x eps (the base model's
            row always first), its attacks, budgets and cross-checks; ``model`` is the base model
            and stays on its device (x, y move there).
        results: a JSONL file (or a ``ResultsStore``) that keeps each row's record as it finishes;
            rows already in it are read back, not run again (resume). A path is keyed on the
            weights' tensor digest, the examples and every setting that changes a number
            (``evaluation_identity``): a file of other weights, data or settings is refused.
        progress: a progress bar over the rows.

    Rows: the base model (unsmoothed; for a SmoothedClassifier, its inner model) and, when
    ``sigma`` is given or ``model`` is a SmoothedClassifier, the smoothed classifier (vote, sigma,
    m), judged with fresh noise. Under torchrun each rank runs every world-size-th row on all
    examples and every rank returns the whole report.
    """
    keywords = dict(norm=norm, preset=preset, checks=checks, judgements=judgements, runs=runs, steps=steps)
    keywords.update(attack_m=attack_m, seed=seed, device=device)
    if config is None:
        base, cfg = _keyword_config(model, x, y, eps, sigma, m, vote, **keywords)
        base.to(cfg.device)
    else:
        changed = [k for k, v in keywords.items() if v != _KEYWORD_DEFAULTS[k]]
        changed += [k for k, v in dict(eps=eps, sigma=sigma, m=m, vote=vote).items() if v is not None]
        if changed:
            raise ConfigError(
                f"config= gives the whole protocol; set {', '.join(changed)} in the EvalConfig instead"
            )
        if not isinstance(config, EvalConfig):
            raise ConfigError(f"config must be an EvalConfig, got {type(config).__name__}")
        if isinstance(model, SmoothedClassifier):
            raise ConfigError("with config=, pass the base model: the config's grid gives the smoothing")
        _check_inputs(model, x, y)
        base, cfg = model, config
    x, y = prepare_inputs(cfg, base, x, y)
    store = results
    if results is not None and not isinstance(results, ResultsStore):
        store = ResultsStore(results, identity=evaluation_identity(cfg, weights_digest(base), x, y, x.device))
    records = _run_grid(cfg, base, x, y, store, progress)
    return Report(records)


def _check_inputs(model: object, x: object, y: object) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model must be a torch.nn.Module mapping [0, 1] images to logits, got {type(model).__name__}"
        )
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ConfigError("x and y must be tensors: (N, C, H, W) images in [0, 1] and (N,) labels")


def _keyword_config(
    model, x, y, eps, sigma, m, vote, *, norm, preset, checks, judgements, runs, steps, attack_m, seed, device
) -> tuple[nn.Module, EvalConfig]:
    """(base model, the ``EvalConfig`` of ``evaluate``'s keyword form), every value checked."""
    if eps is None:
        raise ConfigError(
            "eps is required: the L_inf radius in pixel units, e.g. 0.3 for MNIST, 8/255 for CIFAR-10"
        )
    eps = _pixel_value("eps", eps)
    if norm not in NORMS:
        raise ConfigError(f"norm {norm!r} is not run by the protocol; choose one of {', '.join(NORMS)}")
    if preset not in PRESETS:
        raise ConfigError(f"unknown attack preset {preset!r}; choose one of {', '.join(PRESETS)}")
    _check_inputs(model, x, y)
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
    return base, cfg


def row_jobs(
    cfg: EvalConfig, jobs: list[tuple[int, Setting, float]]
) -> list[tuple[int, list[Setting], float]]:
    """``jobs`` ((run, setting, eps) rows) as (run, settings, eps) groups that share crafting
    (``row_groups``), in the order of each group's first row."""
    by_run_eps: dict[tuple[int, float], list[Setting]] = {}
    for run, setting, eps in jobs:
        by_run_eps.setdefault((run, eps), []).append(setting)
    groups = [(run, g, eps) for (run, eps), settings in by_run_eps.items() for g in row_groups(cfg, settings)]
    first = {(run, s, eps): i for i, (run, s, eps) in enumerate(jobs)}
    return sorted(groups, key=lambda job: first[(job[0], job[1][0], job[2])])


def _run_grid(
    cfg: EvalConfig,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    store: ResultsStore | None,
    progress: bool,
) -> list[dict]:
    """Every (run, setting, eps) row of ``cfg`` (``grid_jobs``) as ``evaluate_rows``' record, in grid
    order: rows already in ``store`` are read back, the others run in groups that share crafting
    (``row_jobs``) and are appended as each group finishes. Under torchrun each rank takes every
    world-th group on all examples (so every record is computed exactly as one process would: same
    seeds, data and draws) and every rank gets them all."""
    jobs = grid_jobs(cfg)
    order = {(run, v, float(s), int(m), float(e)): i for i, (run, (v, s, m), e) in enumerate(jobs)}
    stored = {row_key(r): r for r in store.records} if store is not None else {}
    todo = [j for j, k in zip(jobs, order, strict=True) if k not in stored]
    source = None
    if "transfer" in cfg.attacks:
        from smoothinf.models import load_checkpoint

        source, _ = load_checkpoint(cfg.transfer_source, device=x.device)
    dist_info = init_distributed(x.device)
    mine = row_jobs(cfg, todo)[dist_info.rank :: dist_info.world_size]
    new = []
    bar = tqdm(mine, desc="evaluate", disable=not progress or not dist_info.is_main)
    for run, settings, eps in bar:
        label = f"run {run}, {' + '.join(setting_name(*s) for s in settings)}, eps {eps:g}"
        bar.set_postfix_str(label)
        on_step = lambda s, r=label: bar.set_postfix_str(f"{r}: {s}")  # noqa: E731
        rows = evaluate_rows(cfg, model, x, y, run, settings, eps, source=source, on_step=on_step)
        for row in rows:
            new.append(row.record)
            if store is not None and not dist_info.enabled:
                store.append(row.record)
    if dist_info.enabled:
        new = gather_json(new, dist_info)
        if store is not None and dist_info.is_main:
            for r in sorted(new, key=lambda r: order[row_key(r)]):
                store.append(r)
    done = {**stored, **{row_key(r): r for r in new}}
    return [done[k] for k in order if k in done]
