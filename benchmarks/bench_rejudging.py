"""How biased is a per-example worst case over single judgements of a randomised classifier?

Crafts one APGD-CE batch (the ``default`` preset's, at the paper study's grid budget) against a
checkpoint's one-draw base model and judges the same batch J times with fresh noise: the mean
accuracy per judgement against the per-example minimum over the first j judgements (what a worst
case over j attacks, each judged once, would report if no attack were stronger than another).
The same for the soft vote at m draws. ``judge_grid``'s probability judging removes this bias.

    PYTHONPATH=studies python benchmarks/bench_rejudging.py \
        -c runs/paper_mnist/models/ft_epgd/best.safetensors \
        [--examples 300] [--judgements 16] [--out results/rejudging.md]
"""

from __future__ import annotations

import argparse

import torch
from paper_mnist import judge_grid

from smoothinf.attacks.presets import preset_attacks
from smoothinf.data import load_dataset
from smoothinf.models import load_checkpoint
from smoothinf.smoothing import SmoothedClassifier
from timing import emit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", "-c", required=True)
    p.add_argument("--examples", type=int, default=300)
    p.add_argument("--judgements", type=int, default=16)
    p.add_argument("--m", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    test, _ = load_dataset("mnist", "test")
    x, y = test.tensors(args.examples)
    model, _ = load_checkpoint(args.checkpoint)
    model.eval()
    judge = SmoothedClassifier(model, 0.0, args.m, "soft")
    attack = preset_attacks("default", model, args.eps, judge=judge, steps=args.steps, attack_m=args.draws)
    attacks = dict(attack)
    x_adv = attacks["apgd-ce"](x, y, torch.Generator().manual_seed(args.seed))
    marks = [j for j in (1, 2, 4, 8, 16, 32, 64) if j <= args.judgements]
    lines = [
        f"One APGD-CE batch ({args.steps} x {args.draws}, expected softmax, judged by soft@{args.m}) on "
        f"{args.checkpoint}, first {x.shape[0]} MNIST test images, eps {args.eps}, judged "
        f"{args.judgements} times with fresh noise. Accuracies in %.",
        "",
        "| classifier | mean per judgement | " + " | ".join(f"min over {j}" for j in marks) + " |",
        "|---|---|" + "---|" * len(marks),
    ]
    for label, vote, m in (("one draw (base)", "hard", 1), (f"soft@{args.m}", "soft", args.m)):
        gen = torch.Generator().manual_seed(args.seed + 1)
        key = f"{vote}@{m}"
        judged = [judge_grid(model, 0.0, x_adv, y, [vote], [m], gen)[key] for _ in range(args.judgements)]
        ok = torch.stack(judged)
        running = ok.cummin(0).values.mean(1)
        cells = [label, f"{100 * ok.mean():.1f}"] + [f"{100 * running[j - 1]:.1f}" for j in marks]
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
