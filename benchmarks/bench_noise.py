"""Per-draw weight noise: the library's batched forwards of m draws vs m separate forwards.

Run: .venv/bin/python benchmarks/bench_noise.py [--out benchmarks/results/noise.md]

* looped: m separate forwards of the N examples, each with its own weight noise (reference code);
* batched: ``SmoothedClassifier.draw_logits``, the library's path: chunks of d draws, each one
  forward (grouped convolution / bmm) with d weight-noise draws, chunk size by the default rule;
* one forward: all m draws in a single forward (no chunking), for reference.
All three produce the (m, N, K) logits; the timings are interleaved (best of several rounds).
"""

from __future__ import annotations

import argparse
import platform

import torch

from smoothinf.models import create_model
from smoothinf.noise import chunk_rows, inject_noise, per_draw_noise
from smoothinf.smoothing import SmoothedClassifier
from timing import add_allocator_option, apply_allocator_option, best_times, emit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--models", nargs="+", default=["mnist_cnn_small", "mnist_cnn"])
    add_allocator_option(parser)
    args = parser.parse_args()
    malloc = apply_allocator_option(args)
    lines = [
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"device {args.device}, {malloc}; 1x28x28 inputs, no_grad forwards, best of {args.rounds} "
        "interleaved rounds.",
        "",
        "| model | noise | N | m | draws per chunk | looped (s) | batched (s) | batched speed-up "
        "| one forward (s) | one forward speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, kind in [(name, kind) for name in args.models for kind in ("pni-w", "cni-w")]:
        torch.manual_seed(0)
        model = create_model(name, 10, 1, (0.1307,), (0.3081,)).eval().to(args.device)
        inject_noise(model, kind)
        for n, m in ((16, 32), (64, 32), (16, 8), (64, 8)):
            x = torch.rand(n, 1, 28, 28, device=args.device)
            xb = x.repeat_interleave(m, 0)  # example-major rows (the per-draw contract)
            smoothed = SmoothedClassifier(model, 0.0, m)
            per_chunk = min(m, max(1, chunk_rows(x, model) // n))

            def looped(x=x, m=m, model=model):
                with torch.no_grad():
                    return torch.stack([model(x) for _ in range(m)])

            def batched(x=x, m=m, smoothed=smoothed):
                with torch.no_grad():
                    return torch.cat(list(smoothed.draw_logits(x, m)))

            def one_forward(xb=xb, m=m, model=model):
                with torch.no_grad(), per_draw_noise(model, m):
                    return model(xb)

            t = best_times({"loop": looped, "batched": batched, "one": one_forward}, args.rounds)
            lines.append(
                f"| {name} | {kind} | {n} | {m} | {per_chunk} | {t['loop']:.4f} | {t['batched']:.4f} | "
                f"{t['loop'] / t['batched']:.2f}x | {t['one']:.4f} | {t['loop'] / t['one']:.2f}x |"
            )
    text = "\n".join(lines)
    emit(text, args.out)


if __name__ == "__main__":
    main()
