"""Per-draw weight noise: one batched forward of m draws (grouped conv / bmm) vs m separate forwards.

Run: .venv/bin/python benchmarks/bench_noise.py [--out benchmarks/results/noise.md]
"""

from __future__ import annotations

import argparse
import platform

import torch

from smoothinf.models import create_model
from smoothinf.noise import inject_noise, per_draw_noise
from timing import best_time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    lines = [
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"device {args.device}; mnist_cnn_small, 1x28x28, no_grad forward.",
        "",
        "| noise | N | m | looped (s) | batched (s) | batched speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("pni-w", "cni-w"):
        torch.manual_seed(0)
        model = create_model("mnist_cnn_small", 10, 1, (0.1307,), (0.3081,)).eval().to(args.device)
        inject_noise(model, kind)
        for n, m in ((16, 32), (64, 32), (16, 8)):
            x = torch.rand(n, 1, 28, 28, device=args.device)
            xb = x.repeat(m, 1, 1, 1)

            def looped(x=x, m=m, model=model):
                with torch.no_grad():
                    return torch.cat([model(x) for _ in range(m)])

            def batched(xb=xb, m=m, model=model):
                with torch.no_grad(), per_draw_noise(model, m):
                    return model(xb)

            t_loop, t_batch = best_time(looped, 5), best_time(batched, 5)
            lines.append(f"| {kind} | {n} | {m} | {t_loop:.4f} | {t_batch:.4f} | {t_loop / t_batch:.2f}x |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
