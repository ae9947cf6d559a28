"""Does the ``default`` preset converge? Its worst case vs the official AutoAttack ``rand``, in one run.

For each checkpoint, sigma and vote (m draws): the preset (PGD-20 on the base model, APGD-CE on the
expected softmax and APGD-DLR on the expected loss through the noise, judged by the smoothed
classifier; a cascade, as AutoAttack runs), the same preset with twice the steps and draws, and
AutoAttack ``rand`` (APGD-CE + APGD-DLR, EOT 20, on a one-draw soft surrogate: crafted once per
sigma, judged with every vote).
Every accuracy is judged by the defended classifier with fresh noise (m draws). Targets (issue 11):
preset worst case <= AutoAttack rand + 1 image, in <= half its wall time; doubling moves < 1 point.

    python benchmarks/bench_convergence.py -c runs/quickstart/model/model.safetensors \
        [-c runs/pni/model.safetensors] [--examples 100] [--out results/convergence.md]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from smoothinf.attacks import AutoAttackAdapter, defended_predict, robust_accuracy
from smoothinf.attacks.presets import preset_attacks
from smoothinf.data import load_dataset
from smoothinf.models import load_checkpoint
from smoothinf.noise import noise_layers, noise_summary
from smoothinf.smoothing import SmoothedClassifier
from timing import add_allocator_option, apply_allocator_option, emit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", "-c", action="append", required=True)
    p.add_argument("--examples", type=int, default=100)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--votes", nargs="+", default=["hard", "soft"])
    p.add_argument("--m", type=int, default=64)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    add_allocator_option(p)
    args = p.parse_args()
    malloc = apply_allocator_option(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    test, _ = load_dataset("mnist", "test")
    x, y = test.tensors(args.examples)
    n = x.shape[0]
    lines = [
        f"Preset vs AutoAttack rand: first {n} MNIST test images, eps {args.eps}, judged by the smoothed "
        f"classifier (m = {args.m}, fresh noise); torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {platform.processor() or platform.machine()}, {malloc}. Accuracies in %; times in s.",
        "",
        "| model | sigma | vote | clean | preset | preset s | preset x2 | x2 s | AutoAttack rand | AA s "
        "| preset <= AA + 1 image | time ratio preset/AA | doubling moves < 1 pt |",
        "|" + "---|" * 13,
    ]
    for path in args.checkpoint:
        model, meta = load_checkpoint(path)
        kinds = sorted({row["kind"] for row in noise_summary(model)}) if noise_layers(model) else []
        label = f"{meta['arch']['name']} ({'+'.join(kinds) + ' noise' if kinds else 'no weight noise'})"
        for sigma in args.sigmas:
            gen = lambda k: torch.Generator().manual_seed(args.seed + k)  # noqa: E731
            surrogate = SmoothedClassifier(model, sigma, 1, "soft")
            aa = AutoAttackAdapter(surrogate, "linf", args.eps, "rand", seed=args.seed)
            start = time.perf_counter()
            x_aa = aa(x, y)
            aa_s = time.perf_counter() - start
            for vote in args.votes:
                g = SmoothedClassifier(model, sigma, args.m, vote)
                clean = defended_predict(g, x, gen(1)) == y
                aa_acc = (clean & (defended_predict(g, x_aa, gen(2)) == y)).float().mean().item()
                res = {}
                for scale in (1, 2):
                    attacks = preset_attacks("default", model, args.eps, noise=sigma, judge=g, scale=scale)
                    start = time.perf_counter()
                    r = robust_accuracy(g, x, y, attacks, generator=gen(3), cascade=True)
                    res[scale] = (r.worst_case_accuracy, time.perf_counter() - start, r.clean_accuracy)
                (w1, s1, c1), (w2, s2, _) = res[1], res[2]
                cells = [label, f"{sigma:g}", vote, f"{100 * c1:.0f}", f"{100 * w1:.0f}", f"{s1:.0f}"]
                cells += [f"{100 * w2:.0f}", f"{s2:.0f}", f"{100 * aa_acc:.0f}", f"{aa_s:.0f}"]
                cells += [
                    "yes" if w1 <= aa_acc + 1 / n + 1e-9 else "no",
                    f"{s1 / aa_s:.2f}",
                    "yes" if abs(w1 - w2) < 0.01 + 1e-9 else f"no ({100 * (w1 - w2):+.0f})",
                ]
                lines.append("| " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
