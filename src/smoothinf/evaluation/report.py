"""Aggregate results (mean ± std over runs), markdown tables, plots and report.md."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from smoothinf.evaluation.config import checks_switched_off

OLD_JUDGING = " (old judging)"
"""Marks a row measured with judging 1 (records without a ``judging`` key): see ``JUDGING_TEXT``."""
JUDGING_TEXT = (
    "Rows marked (old judging) were measured under judging 1, before issue 38: a randomised row's "
    "worst case was the minimum of noisy estimates over the attacks and checks (biased low), not "
    "the chosen point valued with fresh judgements."
)
RULE_TEXT = {
    "alone": "the attack that alone leaves the lowest accuracy",
    "without": "in a cascade, the attack without whose points the worst case (over the points judged) "
    "would rise most",
    "drop": "in a cascade (records written before issue 38), the attack that fooled the most of what the "
    "earlier attacks had left, which favours the attacks that run first",
}


def setting_name(vote: str, sigma: float, m: int) -> str:
    return "base (no smoothing)" if vote == "none" else f"{vote} sigma={sigma:g} m={m}"


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, sample std) of ``values``; std 0 for a single value."""
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def pm(ms: tuple[float, float] | None) -> str:
    """A (mean, std) pair of fractions as percent, ``"12.3 ± 0.4"``; ``"-"`` for None."""
    return "-" if ms is None else f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}"


def aggregate(records: list[dict], metrics: tuple[str, ...] = ()) -> dict[tuple, dict]:
    """Group by (vote, sigma, m, eps): mean and std over runs of clean, each attack and worst case,
    and of each further per-record number named in ``metrics`` (under its own key)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["vote"], float(r["sigma"]), int(r["m"]), float(r["eps"]))].append(r)
    rows = {}
    for key, rs in groups.items():
        names = list(dict.fromkeys(a for r in rs for a in r["attacks"]))  # in the order they ran
        attacks = {a: mean_std([r["attacks"][a] for r in rs if a in r["attacks"]]) for a in names}
        cascade = bool(rs[0].get("cascade"))
        rules = [r.get("strongest_rule", "drop" if cascade else "alone") for r in rs]
        rows[key] = {
            "runs": len(rs),
            "n": rs[0]["n"],
            "clean": mean_std([r["clean"] for r in rs]),
            "attacks": attacks,
            "worst_case": mean_std([r["worst_case"] for r in rs]),
            "strongest": (
                statistics.mode([r["strongest"] for r in rs])
                if cascade
                else min(attacks, key=lambda a: attacks[a][0])
                if attacks
                else "-"
            ),
            "strongest_rule": statistics.mode(rules),
            "judging": min(int(r.get("judging", 1)) for r in rs),
            "checks_off": checks_off(rs[0]),
            "budget": rs[0].get("budget", {}),
            "checks": _merge_checks([r.get("checks", {}) for r in rs]),
            "seconds": mean_std([r["seconds"] for r in rs]) if all("seconds" in r for r in rs) else None,
            "attack_time": _mean_attack_time(rs),
            **{name: mean_std([r[name] for r in rs]) for name in metrics},
        }
    return rows


def plot_mean_std(ax, points: list[tuple[float, tuple[float, float]]], label: str) -> None:
    """One curve on ``ax``: (x, (mean, std)) points, accuracies as fractions drawn in %, std as
    error bars."""
    ax.errorbar(
        [p[0] for p in points],
        [100 * p[1][0] for p in points],
        yerr=[100 * p[1][1] for p in points],
        marker="o",
        capsize=3,
        label=label,
    )


def checks_off(record: dict) -> dict[str, str]:
    """Cross-check -> the setting that switched it off, as the record states it (records written
    before ``checks_off``: read from their config; nothing when that says nothing)."""
    if "checks_off" in record:
        return dict(record["checks_off"])
    cfg = record.get("config") or {}
    return checks_switched_off(cfg) if "check_examples" in cfg else {}


def checks_off_text(rows: dict[tuple, dict]) -> str:
    """ "Cross-checks off: ..." naming each switched-off check and the setting that did it ("" when
    every check ran)."""
    by_reason: dict[str, set[str]] = defaultdict(set)
    for row in rows.values():
        for name, reason in row.get("checks_off", {}).items():
            by_reason[reason].add(name)
    if not by_reason:
        return ""
    parts = [f"{', '.join(sorted(names))} ({reason})" for reason, names in sorted(by_reason.items())]
    return (
        f"Cross-checks off: {'; '.join(parts)}, a choice made for this evaluation: the worst case holds "
        "only the attacks above, unchecked against the reference's AutoAttack, a black-box attack "
        "or a doubled budget."
    )


def strongest_text(rows: dict[tuple, dict]) -> str:
    """What the ``strongest`` column names, for the rules the rows used."""
    rules = sorted({row.get("strongest_rule", "alone") for row in rows.values()})
    return "Strongest: " + "; ".join(f'{RULE_TEXT.get(rule, rule)} (rule "{rule}")' for rule in rules) + "."


def _mean_attack_time(records: list[dict]) -> dict[str, tuple[float, float]]:
    """attack -> (examples attacked, wall seconds), each the mean over the runs that recorded it
    (records written before per-attack timing give nothing)."""
    per_attack: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        for name, t in r.get("attack_time", {}).items():
            per_attack[name].append(t)
    return {
        name: (statistics.fmean(t["examples"] for t in ts), statistics.fmean(t["seconds"] for t in ts))
        for name, ts in per_attack.items()
    }


def _merge_checks(per_run: list[dict]) -> dict[str, dict]:
    """Cross-checks summed over runs: examples checked, robust before, extra found, any flag."""
    merged: dict[str, dict] = {}
    for checks in per_run:
        for name, c in checks.items():
            m = merged.setdefault(
                name, {"runs": 0, "n": 0, "robust_before": 0, "extra": 0, "flag": False, "seconds": 0.0}
            )
            m["runs"] += 1
            m["seconds"] += c.get("seconds", 0.0)
            m["n"] += c["n"]
            m["robust_before"] += c["robust_before"]
            m["extra"] += c["extra"]
            m["flag"] |= bool(c["flag"])
            m["label"] = c.get("version") or c.get("attack") or name
    return merged


def count_text(value: float) -> str:
    """An example count: an integer as such, a sum of probabilities (randomised judging) to 0.1."""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


FLAG_TEXT = {
    "autoattack": "AutoAttack finds more",
    "blackbox": "gradient masking suspected",
    "convergence": "not converged",
}


def _in_table_order(rows: dict[tuple, dict]) -> list[tuple[tuple, dict]]:
    """(key, row) pairs by eps, then the base model first, then vote, sigma and m."""
    return sorted(rows.items(), key=lambda kv: (kv[0][3], kv[0][0] != "none", kv[0]))


def row_flags(row: dict) -> str:
    """The report's flags for one aggregated row ("-" when none)."""
    checks = row.get("checks", {}).items()
    flags = [f"{FLAG_TEXT[name]} (+{count_text(c['extra'])})" for name, c in checks if c["flag"]]
    return "; ".join(flags) or "-"


def budget_table(rows: dict[tuple, dict]) -> str:
    """Per setting and attack: steps x draws x restarts and gradient evaluations per example (a
    black-box attack: its queries, no gradients)."""
    lines = [
        "| setting | attack | steps x draws x restarts (black-box: queries) | gradients per example |",
        "|---|---|---|---|",
    ]
    for (vote, sigma, m, eps), row in _in_table_order(rows):
        for name, b in sorted(row.get("budget", {}).items()):
            if b:
                cells = [f"{setting_name(vote, sigma, m)} eps {eps:g}", name]
                if "queries" in b:
                    cells += [f"{b['queries']} queries", "0"]
                else:
                    cells += [f"{b['steps']} x {b['draws']} x {b['restarts']}", str(b["gradients"])]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def checks_table(rows: dict[tuple, dict]) -> str:
    """Per setting: each cross-check's examples, robust before it, extra examples it fooled, flag."""
    lines = [
        "| setting | check | examples (all runs) | robust before | extra fooled | flag |",
        "|---|---|---|---|---|---|",
    ]
    for (vote, sigma, m, eps), row in _in_table_order(rows):
        for name, c in sorted(row.get("checks", {}).items()):
            cells = [f"{setting_name(vote, sigma, m)} eps {eps:g}", f"{name}: {c['label']}", str(c["n"])]
            cells += [count_text(c["robust_before"]), count_text(c["extra"])]
            cells.append(FLAG_TEXT[name] if c["flag"] else "ok")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def compute_table(rows: dict[tuple, dict]) -> str:
    """Per setting: each attack's examples attacked and wall seconds (means per run; a cascade
    attacks only what the earlier attacks left), each cross-check's seconds, and the row's total."""
    lines = [
        "| setting | step | examples attacked per run | seconds per run |",
        "|---|---|---|---|",
    ]
    for (vote, sigma, m, eps), row in _in_table_order(rows):
        if row.get("seconds") is None:
            continue
        label = f"{setting_name(vote, sigma, m)} eps {eps:g}"
        for name, (examples, seconds) in row.get("attack_time", {}).items():
            lines.append(f"| {label} | {name} | {examples:.1f} | {seconds:.1f} |")
        for name, c in sorted(row.get("checks", {}).items()):
            lines.append(
                f"| {label} | check: {name} ({c['label']}) | of the first {c['n'] / c['runs']:.0f} | "
                f"{c['seconds'] / c['runs']:.1f} |"
            )
        lines.append(f"| {label} | **total** (clean judging included) | - | **{row['seconds'][0]:.1f}** |")
    return "\n".join(lines) if len(lines) > 2 else ""


def markdown_table(rows: dict[tuple, dict]) -> str:
    """One line per setting and eps; accuracies in percent, mean ± std over runs."""
    names = list(dict.fromkeys(a for row in rows.values() for a in row["attacks"]))
    head = ["setting", "eps", "runs", "clean"] + names + ["worst case", "strongest", "flags"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (vote, sigma, m, eps), row in _in_table_order(rows):
        name = setting_name(vote, sigma, m) + (OLD_JUDGING if row.get("judging", 1) == 1 else "")
        cells = [name, f"{eps:g}", str(row["runs"]), pm(row["clean"])]
        cells += [pm(row["attacks"][a]) if a in row["attacks"] else "-" for a in names]
        cells += [pm(row["worst_case"]), row["strongest"], row_flags(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (for writing PNGs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sigma_sweep(rows: dict[tuple, dict], path: Path) -> Path | None:
    """Clean and worst-case accuracy vs sigma, one curve per (vote, m); the base model at sigma 0."""
    plt = pyplot()
    eps_values = sorted({k[3] for k in rows})
    if not eps_values:
        return None
    eps = eps_values[-1]
    base = rows.get(("none", 0.0, 1, eps))
    curves = defaultdict(list)
    for (vote, sigma, m, e), row in rows.items():
        if vote != "none" and e == eps:
            curves[(vote, m)].append((sigma, row))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, metric, title in (
        (axes[0], "clean", "clean"),
        (axes[1], "worst_case", f"worst case, eps {eps:g}"),
    ):
        for (vote, m), pts in sorted(curves.items()):
            pts = sorted(pts, key=lambda p: p[0])
            if base is not None:
                pts = [(0.0, base)] + pts
            s = [p[0] for p in pts]
            mean = np.array([p[1][metric][0] for p in pts])
            std = np.array([p[1][metric][1] for p in pts])
            ax.errorbar(s, 100 * mean, yerr=100 * std, marker="o", capsize=3, label=f"{vote}, m={m}")
        ax.set_xlabel("sigma (pixel units)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    if curves:
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sweep(rows: dict[tuple, dict], axis: str, path: Path) -> Path | None:
    """Worst-case accuracy vs ``axis`` ("m" or "eps"), one curve per remaining setting; None when the
    grid has fewer than two values on that axis."""
    index = {"m": 2, "eps": 3}[axis]
    if len({k[index] for k in rows if k[0] != "none" or axis == "eps"}) < 2:
        return None
    plt = pyplot()
    curves = defaultdict(list)
    for key, row in rows.items():
        if axis == "m" and key[0] == "none":
            continue
        rest = tuple(v for i, v in enumerate(key) if i != index)
        curves[rest].append((key[index], row["worst_case"]))
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for rest, pts in sorted(curves.items(), key=lambda kv: str(kv[0])):
        pts = sorted(pts)
        label = setting_name(*rest[:3]) if axis == "eps" else f"{rest[0]} sigma={rest[1]:g} eps={rest[2]:g}"
        plot_mean_std(ax, pts, label)
    if axis == "m":
        ax.set_xscale("log", base=2)
    ax.set_xlabel("Monte Carlo draws m" if axis == "m" else "eps (pixel units)")
    ax.set_ylabel("worst-case accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_certified(radius: np.ndarray, correct: np.ndarray, sigma: float, path: Path) -> Path:
    from smoothinf.smoothing import certified_accuracy

    plt = pyplot()
    grid = np.linspace(0, max(1.0, float(radius.max(initial=0)) * 1.05), 200)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(grid, 100 * certified_accuracy(radius, correct, grid), label=f"sigma = {sigma:g}")
    ax.set_xlabel("L2 radius (pixel units)")
    ax.set_ylabel("certified accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def runs_text(records: list[dict]) -> str:
    """ "3 runs (seeds 0..2)": the runs the records hold (a results file grown by a later, larger
    ``--runs`` holds more than its first record's config says)."""
    seeds = sorted({int(r["seed"]) for r in records if "seed" in r})
    runs = len({r["run"] for r in records})
    if not seeds:
        return f"{runs} runs"
    contiguous = seeds == list(range(seeds[0], seeds[-1] + 1))
    listed = f"{seeds[0]}..{seeds[-1]}" if contiguous and len(seeds) > 1 else ", ".join(map(str, seeds))
    return f"{runs} run{'s' if runs != 1 else ''} (seed{'s' if len(seeds) != 1 else ''} {listed})"


def write_report(
    records: list[dict],
    out_dir: str | Path,
    sanity_lines: list[str] | None = None,
    certificate: dict | None = None,
    preamble: str = "",
) -> Path:
    """Write tables, plots and ``report.md`` into ``out_dir``; returns the report path."""
    from smoothinf.evaluation.sanity import check_records

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(records)
    table = markdown_table(rows)
    (out / "results.md").write_text(table + "\n")
    parts = ["# smoothinf evaluation report", ""]
    if preamble:
        parts += [preamble, ""]
    if records:
        cfg = records[0]["config"]
        parts += [
            f"Checkpoint `{cfg['checkpoint']}`, data {cfg['data']} ({cfg['split']}, "
            f"{records[0]['n']} examples), {runs_text(records)}, attacks "
            f"{', '.join(cfg['attacks'])} (budgets below). Accuracies in %, mean ± std over "
            "runs; the worst case counts an example as robust only if every attack failed on it, judged by "
            "the defended (smoothed) classifier with fresh noise (for a randomised row: each example's "
            "strongest point, chosen on one set of judgements and valued on an independent one); it "
            "includes what the cross-checks found on their subset."
            + (
                " Attacks ran as a cascade (each only on the examples the earlier ones left robust): "
                "an attack's column is the robust accuracy after it and every attack left of it."
                if records[0].get("cascade")
                else ""
            )
            + " "
            + strongest_text(rows),
            "",
        ]
        if any(row.get("judging", 1) == 1 for row in rows.values()):
            parts += [JUDGING_TEXT, ""]
        off = checks_off_text(rows)
        if off:
            parts += [off, ""]
    parts += ["## Robust accuracy", "", table, ""]
    budgets = budget_table(rows)
    if budgets:
        parts += ["## Attack budgets", "", budgets, ""]
    cross = checks_table(rows)
    if cross:
        parts += [
            "## Cross-checks",
            "",
            "On the first examples of each run, only where some judgement of an example's chosen point "
            "was still right. Each check's points join the worst case as the attacks' do (the defended "
            "classifier judges them once to choose, and values the chosen ones with fresh judgements); "
            "extra fooled is how much a check lowered the worst case. The official AutoAttack runs "
            "standard on deterministic rows; on randomised rows it runs rand's attacks (the official "
            "APGD-CE and APGD-DLR, 100 iterations, EOT 20) on a soft surrogate averaged over the "
            "attack's draws, and the defended classifier judges every example's best-loss point. A flag "
            "shows that the attacks above missed points the reference's attack finds; no flag does not "
            "prove robustness (only that this attack found nothing more), and on randomised rows the "
            "surrogate it follows (the expected softmax) differs from the defended vote. A black-box "
            "Square attack flags suspected gradient masking; the strongest attack with twice the steps "
            "and draws flags a row as not converged. A randomised row flags only when a check lowers "
            "the worst case by more than the judge's Monte Carlo error (how far two fresh judgements "
            "of the strongest attack's points differ).",
            "",
            cross,
            "",
        ]
    compute = compute_table(rows)
    if compute:
        parts += [
            "## Compute",
            "",
            "Wall seconds per run on the machine that ran it (mean over runs): each attack's crafting and "
            "judging, each cross-check, and the whole row.",
            "",
            compute,
            "",
        ]
    plot = plot_sigma_sweep(rows, out / "sigma_sweep.png")
    if plot is not None:
        parts += ["![accuracy vs sigma](sigma_sweep.png)", ""]
    for axis in ("m", "eps"):
        if plot_sweep(rows, axis, out / f"{axis}_sweep.png") is not None:
            parts += [f"![accuracy vs {axis}]({axis}_sweep.png)", ""]
    if certificate is not None:
        from smoothinf.smoothing import certified_accuracy

        radius, correct, sigma = certificate["radius"], certificate["correct"], certificate["sigma"]
        plot_certified(radius, correct, sigma, out / "certified.png")
        radii = [0.0, 0.25, 0.5, 0.75, 1.0]
        acc = certified_accuracy(radius, correct, radii)
        parts += [
            f"## Certified accuracy (L2, sigma {sigma:g}, n0 {certificate['n0']}, n {certificate['n']}, "
            f"alpha {certificate['alpha']}, {len(radius)} examples)",
            "",
            "| radius | " + " | ".join(f"{r:g}" for r in radii) + " |",
            "|---|" + "---|" * len(radii),
            "| certified accuracy (%) | " + " | ".join(f"{100 * a:.1f}" for a in acc) + " |",
            "",
            "![certified accuracy](certified.png)",
            "",
        ]
    checks = [
        c.line() for c in check_records({setting_name(*k[:3]) + f" eps {k[3]:g}": r for k, r in rows.items()})
    ]
    lines = (sanity_lines or []) + checks
    if lines:
        parts += ["## Sanity checks", ""] + [f"- {line}" for line in lines] + [""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path
