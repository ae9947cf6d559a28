"""The per-image worst case over attacks saved by ``bench_steps_vs_draws.py --save DIR``.

Each ``DIR/<loss>-<steps>x<draws>[-run<k>].npy`` holds one attack's per-image P(correct). For
every budget (steps x draws, by gradients per image) and run the table gives each loss alone, the
worst case over the losses (mean over images of the smallest P(correct)) and the cumulative worst
case over every budget and run up to it: a doubled budget, or a further independent run, that
lowers the cumulative number by < 1 point is the convergence test of the paper study.

The minimum of estimated probabilities is biased low: each P(correct) is a mean over ``--subsets``
independent judgements, and the smallest of several noisy estimates undershoots the smallest true
one. The last column estimates that bias by a parametric bootstrap (each estimate redrawn as
Binomial(subsets, p) / subsets): the part of a fall in the cumulative worst case that judging
noise alone would give.

    PYTHONPATH=studies python benchmarks/bench_worst_of.py /tmp/plateau [--out benchmarks/results/plateau.md]

``--study DIR --row MODEL,SIGMA,VOTE@M,RUN`` (a base model: ``MODEL,base,none@1,RUN``) starts the
cumulative worst case from a paper study's own worst case on that row (every attack of ``DIR``'s
grid, headline ladder and plateau stage, on the same first images): do further runs find images
the whole study left robust?
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from paper_mnist.report import load_results
from paper_mnist.study import min_estimate_bias, row_estimates

from timing import emit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--subsets", type=int, default=32, help="judgements per P(correct) (0: no bootstrap)")
    p.add_argument("--study", default=None, help="a paper study's results folder to start from")
    p.add_argument("--row", default=None, help="with --study: MODEL,SIGMA,VOTE@M,RUN of a smoothed row")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    budgets: dict[tuple[int, int, int], dict[str, np.ndarray]] = defaultdict(dict)
    for path in sorted(Path(args.folder).glob("*.npy")):
        loss, pair, *tag = path.stem.split("-")
        steps, draws = (int(v) for v in pair.split("x"))
        run = int(tag[0].removeprefix("run")) if tag else 0
        budgets[(steps, draws, run)][loss] = np.load(path)
    if not budgets:
        raise SystemExit(f"no <loss>-<steps>x<draws>.npy files in {args.folder}")
    losses = sorted({loss for per in budgets.values() for loss in per})
    lines = [
        f"Per-image worst case over the APGD runs saved in {args.folder} (mean P(correct), %).",
        "",
        "| steps x draws | run | gradients | "
        + " | ".join(losses)
        + " | worst of these | cumulative worst | judging-noise bias of the cumulative |",
        "|---|---|---|" + "---|" * (len(losses) + 3),
    ]
    seen: list[np.ndarray] = []
    subsets: list[int] = []
    rng = np.random.default_rng(0)
    if args.study:
        n = len(next(iter(next(iter(budgets.values())).values())))
        seen, subsets = study_estimates(Path(args.study), args.row, n)
        cumulative = 100 * np.min(np.stack(seen), 0).mean()
        bias = 100 * min_estimate_bias(np.stack(seen), subsets, rng)
        blank = " | ".join("-" for _ in losses)
        label = f"the study's {len(seen)} attacks ({args.row})"
        lines.append(f"| {label} | - | - | {blank} | - | {cumulative:.1f} | {bias:+.1f} |")
    for steps, draws, run in sorted(budgets, key=lambda k: (k[0] * k[1], k)):
        per = budgets[(steps, draws, run)]
        seen += [per[loss] for loss in losses if loss in per]
        subsets += [args.subsets] * sum(loss in per for loss in losses)
        worst = np.min(np.stack(list(per.values())), 0)
        cumulative = np.min(np.stack(seen), 0)
        cells = [f"{steps} x {draws}", str(run), str(steps * draws)]
        cells += [f"{100 * per[loss].mean():.1f}" if loss in per else "-" for loss in losses]
        cells += [f"{100 * worst.mean():.1f}", f"{100 * cumulative.mean():.1f}"]
        bias = min_estimate_bias(np.stack(seen), subsets, rng) if args.subsets else None
        cells.append("-" if bias is None else f"{100 * bias:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    emit("\n".join(lines), args.out)


def study_estimates(out: Path, row: str | None, n: int) -> tuple[list[np.ndarray], list[int]]:
    """Per attack of a paper study's row (clean pass included) its estimated P(correct) on the
    first n images, and the judgements behind each estimate. ``row``: MODEL,SIGMA,VOTE@M,RUN of a
    smoothed row, or MODEL,base,none@1,RUN of a base model."""
    if not row or len(parts := row.split(",")) != 4:
        raise SystemExit(
            "--study needs --row MODEL,SIGMA,VOTE@M,RUN (e.g. ft_epgd,0.1,hard@8,0) or MODEL,base,none@1,RUN"
        )
    model, key, run = parts[0], parts[2], int(parts[3])
    setting, sigma = ("base", 0.0) if parts[1] == "base" else ("smoothed", float(parts[1]))
    res = load_results(out)
    rows = [
        r
        for r in res["rows"] + res.get("headline", []) + res.get("plateau", [])
        if (r["model"], r["setting"], r["sigma"], r["run"]) == (model, setting, sigma, run)
        and key in r["correct"]
        and int(r["n"]) >= n
    ]
    if not rows:
        raise SystemExit(f"no {setting} rows {row} with at least {n} images in {out}")
    estimates, judgements = row_estimates(rows, key, n)
    return list(estimates), judgements


if __name__ == "__main__":
    main()
