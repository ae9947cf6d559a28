"""Has the paper study's black-box Square converged on a deterministic row?

Reads a study's evaluation rows of one model's unsmoothed (base) setting, takes the images that
every attack of the row left robust (Square at the study's queries included) and runs Square
again with ``--queries`` (default: twice the study's) and a fresh seed. What it fools there is
what the study's budget left unfound: the row's worst case is an upper bound by at least that.

    PYTHONPATH=studies python benchmarks/bench_square_doubling.py --study runs/paper_mnist --model pgd_at \
        [--queries 10000] [--runs 0 1] [--out benchmarks/results/square_doubling_5000.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from paper_mnist.pipeline import _test_data
from paper_mnist.study import correct_fraction, study_from_json

from smoothinf.attacks.autoattack import AutoAttackAdapter
from smoothinf.evaluation.results import read_jsonl
from smoothinf.evaluation.steps import model_checkpoint
from smoothinf.models import load_checkpoint
from timing import emit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="runs/paper_mnist", help="the study's output folder (with models/)")
    p.add_argument("--model", action="append", required=True, help="model name (repeatable)")
    p.add_argument("--queries", type=int, default=None, help="Square queries (default: 2x the study's)")
    p.add_argument("--runs", type=int, nargs="+", default=[0])
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.study)
    study = study_from_json(out / "study.json")
    queries = args.queries or 2 * study.grid_square_queries
    x_all, y_all = (t[: study.examples] for t in _test_data(study))
    lines = [
        f"Square ({queries} queries, seed {args.seed}) on the images that every attack of the study in "
        f"`{out}` (Square at {study.grid_square_queries} queries included) left robust on an unsmoothed "
        f"deterministic model, first {study.examples} MNIST test images, eps {study.eps}. CPU, 1 thread.",
        "",
        "| model | run | study worst case % | robust left | fooled by the doubled Square "
        "| worst case % after "
        "| s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.model:
        model, _ = load_checkpoint(model_checkpoint(out / "models" / name))
        rows = read_jsonl(out / "eval" / f"{name}.jsonl")
        for run in args.runs:
            base = [r for r in rows if r["run"] == run and r["setting"] == "base"]
            worst = np.min([correct_fraction(r, "none@1", study.examples) for r in base], 0)
            idx = torch.from_numpy(np.nonzero(worst > 0)[0])
            start = time.perf_counter()
            square = AutoAttackAdapter(
                model, "linf", study.eps, "custom", attacks=["square"], seed=args.seed, square_queries=queries
            )
            with torch.no_grad():
                x_adv = square(x_all[idx], y_all[idx])
                fooled = int((model(x_adv).argmax(1) != y_all[idx]).sum())
            seconds = time.perf_counter() - start
            after = 100 * (worst.sum() - fooled) / len(worst)
            cells = [name, str(run), f"{100 * worst.mean():.1f}", str(len(idx)), str(fooled), f"{after:.1f}"]
            lines.append("| " + " | ".join(cells + [f"{seconds:.0f}"]) + " |")
            print(lines[-1], flush=True)
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
