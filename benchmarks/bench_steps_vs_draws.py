"""Steps or draws? APGD's accuracy on a randomised classifier at a fixed gradient budget.

For one checkpoint and sigma: APGD-CE on the expected softmax through the noise (the ``default``
preset's attack, judged per step by the smoothed classifier's ``--vote`` at m, soft by default), at
several (steps, draws) with the same steps x draws, on the first N MNIST test images. Each batch
is judged with ``judge_grid``'s probability estimate (``--judge-draws`` draws, ``--judge-subsets`` m-subsets):
the mean P(correct) of the smoothed classifier, lower = stronger attack.

    PYTHONPATH=studies python benchmarks/bench_steps_vs_draws.py \
        -c runs/paper_mnist/models/ft_epgd/best.safetensors \
        --sigma 0 --pairs 200x2 50x8 12x32 100x16 25x64 [--examples 200] [--out results/steps_vs_draws.md]

``--temperature T`` (CE only) follows the expected softmax of logits / T, a surrogate of the
hard vote's tally for T < 1; saved as ``ce_t<T>-...``. ``--runs R`` repeats each pair R times
from fresh random starts and noise (the restarts test: with ``--save``, ``bench_worst_of.py``
gives the cumulative worst case over runs).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from per_image import add_judge_options, judge_and_save, result_row
from smoothinf.attacks import APGD
from smoothinf.data import load_dataset
from smoothinf.models import load_checkpoint
from smoothinf.smoothing import SmoothedClassifier
from timing import emit


def _pair(text: str) -> tuple[int, int]:
    steps, draws = text.lower().split("x")
    return int(steps), int(draws)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", "-c", required=True)
    p.add_argument("--sigma", type=float, default=0.0, help="input noise (0: the model's weight noise only)")
    pairs = [(200, 2), (50, 8), (12, 32), (100, 16), (25, 64)]
    p.add_argument("--pairs", type=_pair, nargs="+", default=pairs, help="STEPSxDRAWS ...")
    p.add_argument("--examples", type=int, default=200)
    add_judge_options(p, vote="soft", m=64)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--runs", type=int, default=1, help="independent runs (fresh random starts and noise) per pair"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--loss", choices=("ce", "dlr"), default="ce", help="ce: expected softmax; dlr: expected loss"
    )
    p.add_argument(
        "--temperature", type=float, default=1.0, help="ce only: the expected softmax of logits / T"
    )
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    test, _ = load_dataset("mnist", "test")
    x, y = test.tensors(args.examples)
    model, _ = load_checkpoint(args.checkpoint)
    model.eval()
    judge = SmoothedClassifier(model, args.sigma, args.m, args.vote)
    reduce = "softmax" if args.loss == "ce" else "loss"  # as the default preset pairs them
    reduce_name = "expected softmax" if reduce == "softmax" else "expected loss"
    if args.temperature != 1.0:
        if args.loss != "ce":
            raise SystemExit(
                "--temperature applies to --loss ce (DLR does not change with the logits' scale)"
            )
        reduce_name += f" of logits / {args.temperature:g}"
    label = args.loss if args.temperature == 1.0 else f"{args.loss}_t{args.temperature:g}"
    noise = args.sigma if args.sigma > 0 else None
    lines = [
        f"APGD-{args.loss.upper()} ({reduce_name}) on {args.checkpoint}, sigma {args.sigma:g}, "
        f"first {x.shape[0]} MNIST test images, eps {args.eps}; "
        f"accuracy = mean P(correct) of {args.vote}@{args.m} ({args.judge_draws} draws, "
        f"{args.judge_subsets} subsets); torch {torch.__version__}, {torch.get_num_threads()} "
        f"thread(s), {platform.processor() or platform.machine()}. Lower = stronger.",
        "",
        "| steps x draws | gradients per image | accuracy % | majority-right % | craft s |",
        "|---|---|---|---|---|",
    ]
    if args.runs < 1:
        raise SystemExit(f"--runs must be >= 1, got {args.runs}")
    budgets = sorted(args.pairs, key=lambda sd: (sd[0] * sd[1], -sd[1]))
    for (steps, draws), run in ((sd, k) for sd in budgets for k in range(args.runs)):
        attack = APGD(
            model,
            args.eps,
            steps,
            noise=noise,
            m=draws,
            reduce=reduce,
            temperature=args.temperature,
            loss=args.loss,
            judge=judge,
        )
        seed = args.seed + 1000 * run  # run 0 reproduces a single-run benchmark with the same --seed
        start = time.perf_counter()
        x_adv = attack(x, y, torch.Generator().manual_seed(seed + 1))
        seconds = time.perf_counter() - start
        tag = f"-run{run}" if run else ""
        p_ok = judge_and_save(model, args.sigma, x_adv, y, args, seed + 2, f"{label}-{steps}x{draws}{tag}")
        budget = f"{steps} x {draws}" + (f" (run {run})" if args.runs > 1 else "")
        lines.append(result_row([budget, str(steps * draws)], p_ok, seconds))
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
