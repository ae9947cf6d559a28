"""The attack-compute sweep: robust accuracy of a smoothed classifier vs the attack's k x m
(steps x noise draws per step) for PGD, EPGD and SmoothAdv (paper Fig. 0.B.3); each point is one
``smoothinf.evaluate`` call with that attack alone at that budget."""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from smoothinf.errors import ConfigError
from smoothinf.evaluation.config import EvalConfig
from smoothinf.evaluation.report import plot_mean_std, pyplot
from smoothinf.evaluation.results import ResultsStore, tensor_digest, weights_digest
from smoothinf.evaluation.sanity import Check
from smoothinf.evaluation.verdict import evaluate
from smoothinf.smoothing import VOTES

SWEEP_ATTACKS = ("pgd", "epgd", "smoothadv")


@dataclass
class ComputeSweepConfig:
    """A smoothed classifier (sigma, m, vote) attacked with every (steps, draws) budget; each point
    judged ``judgements`` times with fresh noise (accuracy: mean P(correct))."""

    sigma: float = 0.25
    m: int = 64
    vote: str = "hard"
    eps: float = 0.3
    steps: list[int] = field(default_factory=lambda: [5, 10, 20])
    draws: list[int] = field(default_factory=lambda: [1, 4, 16])
    attacks: list[str] = field(default_factory=lambda: ["pgd", "epgd", "smoothadv"])
    runs: int = 3
    seed: int = 0
    judgements: int = 16

    def validate(self) -> None:
        if self.vote not in VOTES:
            raise ConfigError(f"unknown vote {self.vote!r}; choose from {', '.join(VOTES)}")
        bad = [a for a in self.attacks if a not in SWEEP_ATTACKS]
        if bad:
            raise ConfigError(f"unknown attack {bad[0]!r}; choose from {', '.join(SWEEP_ATTACKS)}")
        if not self.steps or not self.draws or not self.attacks:
            raise ConfigError("the sweep is empty: give steps, draws and attacks")
        if min(self.steps) < 1 or min(self.draws) < 1 or min(self.runs, self.m, self.judgements) < 1:
            raise ConfigError("steps, draws, runs, m and judgements must be >= 1")


def _key(r: dict) -> tuple:
    return (r["run"], r["attack"], r["steps"], r["draws"])


def compute_sweep(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ComputeSweepConfig,
    results: str | os.PathLike | None = None,
    progress: bool = True,
    weights_sha256: str | None = None,
) -> list[dict]:
    """Run the sweep; rows already in ``results`` (JSONL, appended) are skipped. PGD takes one
    draw (it attacks the base model); EPGD / SmoothAdv take each ``draws`` value.

    ``results`` belongs to one identity (the weights: ``weights_sha256`` or a hash of the state
    dict, the examples, sigma / m / vote / eps / seed, the device type); a file written for
    another is refused with one line naming the differing field (steps, draws, attacks and runs
    may grow)."""
    cfg.validate()
    device = next(model.parameters()).device
    identity = {
        "weights_sha256": weights_sha256 or weights_digest(model),
        "data": {"examples": int(x.shape[0]), "sha256": tensor_digest(x, y)},
        "settings": {k: v for k, v in asdict(cfg).items() if k not in ("steps", "draws", "attacks", "runs")},
        "device": device.type,
        "measured_by": "smoothinf.evaluate",  # files of the sweep's own loop (before) are refused
    }
    x, y = x.to(device), y.to(device)
    path = Path(results) if results is not None else None
    store = None
    records: list[dict] = []
    if path is not None:
        required = ("run", "attack", "steps", "draws", "accuracy")
        store = ResultsStore(path, identity=identity, key=_key, required=required, flag="--out")
        records = store.records
    done = {_key(r) for r in records}
    jobs = [
        (run, a, k, d)
        for run in range(cfg.runs)
        for a in cfg.attacks
        for k in cfg.steps
        for d in ([1] if a == "pgd" else cfg.draws)
    ]
    for run, name, k, d in tqdm(jobs, desc="compute sweep", disable=not progress):
        if (run, name, k, d) in done:
            continue
        report = evaluate(model, x, y, config=_budget_config(cfg, x.shape[0], name, k, d, run, device))
        row = report.smoothed
        record = {
            "sweep": "compute",
            "run": run,
            "attack": name,
            "steps": k,
            "draws": d,
            "compute": k * d,
            "accuracy": row.attacks[name],
            "clean": row.clean,
            "n": int(x.shape[0]),
            "config": asdict(cfg),
        }
        if store is not None:
            store.append(record)  # stamps the identity, appends to store.records (= records)
        else:
            records.append(record)
    return records


def _budget_config(
    cfg: ComputeSweepConfig, n: int, attack: str, steps: int, draws: int, run: int, device: torch.device
) -> EvalConfig:
    """The protocol's config of one sweep point: the smoothed row (sigma, m, vote) attacked by
    ``attack`` alone at ``steps`` x ``draws`` (PGD on the base model, EPGD / SmoothAdv through the
    noise, each keeping its best point as the smoothed classifier judges it), judged
    ``judgements`` times, seeded ``cfg.seed + run``, no cross-checks (the sweep is the budget check)."""
    return EvalConfig(
        checkpoint="compute sweep",
        max_examples=int(n),
        eps=[cfg.eps],
        votes=[cfg.vote],
        sigmas=[cfg.sigma],
        ms=[cfg.m],
        attacks=[attack],
        steps=steps,
        attack_m=draws,
        check_examples=0,
        cascade=False,
        judgements=cfg.judgements,
        runs=1,
        seed=cfg.seed + run,
        device=str(device),
    )


def summarize(records: list[dict]) -> dict[tuple, tuple[float, float]]:
    """(attack, steps, draws) -> (mean, std) accuracy over runs."""
    groups = defaultdict(list)
    for r in records:
        groups[(r["attack"], r["steps"], r["draws"])].append(r["accuracy"])
    return {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for k, v in groups.items()}


def compute_checks(summary: dict[tuple, tuple[float, float]], tolerance: float = 0.02) -> list[Check]:
    """More steps (draws fixed) or more draws (steps fixed) must not raise accuracy."""
    checks = []
    for axis, label in ((1, "steps"), (2, "draws")):
        fixed = 3 - axis  # the other budget axis
        for key, (acc, _) in sorted(summary.items()):
            for other, (acc_other, _) in summary.items():
                same = other[0] == key[0] and other[fixed] == key[fixed]
                if same and other[axis] > key[axis] and acc_other > acc + tolerance:
                    detail = (
                        f"{other[axis]} {label} {acc_other:.3f} > {key[axis]} {label} {acc:.3f} "
                        f"(other budget {key[fixed]})"
                    )
                    checks.append(Check(f"{key[0]}: more {label} do not raise accuracy", False, detail))
    return checks or [Check("more attack steps or draws do not raise accuracy", True, "all budgets")]


def write_compute_report(records: list[dict], out_dir: str | os.PathLike) -> Path:
    """Table (markdown) and plot (accuracy vs k x m, one curve per attack and draws) in ``out_dir``."""
    plt = pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(records)
    lines = ["| attack | steps k | draws m | k x m | accuracy (%) |", "|---|---|---|---|---|"]
    for (a, k, d), (mean, std) in sorted(summary.items(), key=lambda kv: (kv[0][0], kv[0][1] * kv[0][2])):
        lines.append(f"| {a} | {k} | {d} | {k * d} | {100 * mean:.1f} ± {100 * std:.1f} |")
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    series = defaultdict(list)
    for (a, k, d), ms in summary.items():
        series[(a, d)].append((k * d, ms))
    for (a, d), pts in sorted(series.items()):
        pts.sort()
        plot_mean_std(ax, pts, f"{a}" + ("" if a == "pgd" else f", m={d}"))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("attack compute k x m (gradients per example)")
    ax.set_ylabel("robust accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "compute_sweep.png", dpi=120)
    plt.close(fig)
    checks = [c.line() for c in compute_checks(summary)]
    text = "\n".join(
        [
            "# Attack-compute sweep",
            "",
            *lines,
            "",
            "![accuracy vs compute](compute_sweep.png)",
            "",
            *[f"- {c}" for c in checks],
            "",
        ]
    )
    path = out / "compute_sweep.md"
    path.write_text(text)
    return path
