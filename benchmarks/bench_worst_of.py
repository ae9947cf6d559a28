"""The per-image worst case over attacks saved by ``bench_steps_vs_draws.py --save DIR``.

Each ``DIR/<loss>-<steps>x<draws>.npy`` holds one attack's per-image P(correct). For every budget
(steps x draws, by gradients per image) the table gives each loss alone, the worst case over the
losses at that budget (mean over images of the smallest P(correct)) and the cumulative worst case
over every budget up to it: a doubled budget that lowers the cumulative number by < 1 point is
the convergence test of the paper study.

    python benchmarks/bench_worst_of.py /tmp/plateau [--out benchmarks/results/plateau.md]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from timing import emit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    budgets: dict[tuple[int, int], dict[str, np.ndarray]] = defaultdict(dict)
    for path in sorted(Path(args.folder).glob("*.npy")):
        loss, pair = path.stem.split("-", 1)
        steps, draws = (int(v) for v in pair.split("x"))
        budgets[(steps, draws)][loss] = np.load(path)
    if not budgets:
        raise SystemExit(f"no <loss>-<steps>x<draws>.npy files in {args.folder}")
    losses = sorted({loss for per in budgets.values() for loss in per})
    lines = [
        f"Per-image worst case over the APGD runs saved in {args.folder} (mean P(correct), %).",
        "",
        "| steps x draws | gradients | " + " | ".join(losses) + " | worst of these | cumulative worst |",
        "|---|---|" + "---|" * (len(losses) + 2),
    ]
    cumulative = None
    for steps, draws in sorted(budgets, key=lambda sd: (sd[0] * sd[1], sd)):
        per = budgets[(steps, draws)]
        worst = np.min(np.stack(list(per.values())), 0)
        cumulative = worst if cumulative is None else np.minimum(cumulative, worst)
        cells = [f"{steps} x {draws}", str(steps * draws)]
        cells += [f"{100 * per[loss].mean():.1f}" if loss in per else "-" for loss in losses]
        cells += [f"{100 * worst.mean():.1f}", f"{100 * cumulative.mean():.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
