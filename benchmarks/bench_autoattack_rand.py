"""Does the official AutoAttack find more after everything a paper study ran on a smoothed row?

Runs AutoAttack as the study runs it on that row (``rand`` for a randomised row: APGD-CE and
APGD-DLR, 100 steps each with EOT over 20 draws, on the soft vote of one draw; ``standard`` for a
deterministic one), with fresh seeds, on the first N MNIST test images, and judges each result as
``bench_steps_vs_draws.py`` does (the smoothed classifier's ``--vote`` at m, ``judge_grid``'s
probability estimate). With ``--save DIR`` it writes ``aa_<version>-<steps>x<draws>[-run<k>].npy``,
the per-image P(correct), named by the gradients it spends (rand: two APGD runs of 100 steps, 200 x
20 EOT draws; standard: 10 runs of 100 steps, 1000 x 1), so that

    PYTHONPATH=studies python benchmarks/bench_worst_of.py DIR --study studies/paper_mnist/results \
        --row ft_epgd,0.1,hard@8,0

gives the cumulative worst case of the study's attacks plus these runs: what AutoAttack finds on
the images the whole study left robust.

    PYTHONPATH=studies python benchmarks/bench_autoattack_rand.py \
        -c runs/paper_mnist/models/ft_epgd/best.safetensors \
        --sigma 0.1 --vote hard --m 8 --examples 100 --runs 2 --save /tmp/aa_ft_epgd \
        [--out benchmarks/results/autoattack_after_study_ft_epgd_hard8.md]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from per_image import add_judge_options, judge_and_save, result_row
from smoothinf.data import load_dataset
from smoothinf.evaluation.config import EvalConfig
from smoothinf.evaluation.protocol import autoattack_for
from smoothinf.models import load_checkpoint
from timing import emit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", "-c", required=True)
    p.add_argument("--sigma", type=float, default=0.0, help="input noise (0: the model's weight noise only)")
    p.add_argument("--examples", type=int, default=100)
    add_judge_options(p, vote="hard", m=8)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=7, help="run k uses AutoAttack seed SEED + 1000 k")
    p.add_argument("--runs", type=int, default=1, help="independent AutoAttack runs (fresh seeds)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.runs < 1:
        raise SystemExit(f"--runs must be >= 1, got {args.runs}")
    torch.set_num_threads(args.threads)
    test, _ = load_dataset("mnist", "test")
    x, y = test.tensors(args.examples)
    model, _ = load_checkpoint(args.checkpoint)
    model.eval()
    vote = "soft" if args.sigma > 0 else "none"  # the protocol's AutoAttack of the row (seed 0)
    attack = autoattack_for(model, vote, args.sigma, args.eps, EvalConfig(eps=[args.eps], seed=0))
    budget = attack.budget()
    steps = budget.get("steps", 0) * budget.get("restarts", 1)
    label = f"aa_{attack.version}-{steps}x{budget.get('draws', 1)}"
    lines = [
        f"The official AutoAttack `{attack.version}` ({budget.get('gradients', '?')} gradients per "
        f"image) on {args.checkpoint}, sigma {args.sigma:g}, first {x.shape[0]} MNIST test images, "
        f"eps {args.eps}; accuracy = mean P(correct) of {args.vote}@{args.m} ({args.judge_draws} "
        f"draws, {args.judge_subsets} subsets); torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}. "
        "Lower = stronger.",
        "",
        "| run | AutoAttack seed | accuracy % | majority-right % | craft s |",
        "|---|---|---|---|---|",
    ]
    for run in range(args.runs):
        attack.seed = args.seed + 1000 * run
        start = time.perf_counter()
        x_adv = attack(x, y)
        seconds = time.perf_counter() - start
        tag = f"-run{run}" if run else ""
        p_ok = judge_and_save(model, args.sigma, x_adv, y, args, attack.seed + 2, f"{label}{tag}")
        lines.append(result_row([str(run), str(attack.seed)], p_ok, seconds))
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
