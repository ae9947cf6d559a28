"""CPU forwards with glibc's default malloc vs malloc tuned as the CLI does (``tune_cpu_allocator``).

Run: .venv/bin/python benchmarks/bench_allocator.py [--out benchmarks/results/allocator.md]
mallopt is process-wide and cannot be undone, so each setting runs in its own child process; the
children alternate (``--rounds`` each) and the best time of each is kept.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

import torch

from timing import best_time, emit

CASES = [  # (model, input shape, rows per forward, forwards)
    ("mnist_cnn_small", (1, 28, 28), 100, 32),
    ("mnist_cnn", (1, 28, 28), 100, 8),
    ("resnet20", (3, 32, 32), 64, 4),
]


def child(tuned: bool) -> dict[str, float]:
    """Times (s) of the plain forwards and of a smoothed prediction for every case."""
    from smoothinf.models import create_model
    from smoothinf.smoothing import SmoothedClassifier
    from smoothinf.utils import tune_cpu_allocator

    if tuned and not tune_cpu_allocator():
        raise SystemExit("malloc tuning unavailable here (not glibc)")
    out = {}
    for name, shape, rows, m in CASES:
        torch.manual_seed(0)
        model = create_model(name, 10, shape[0], (0.5,) * shape[0], (0.25,) * shape[0]).eval()
        x = torch.rand(rows, *shape)

        def forwards(model=model, x=x, m=m):
            with torch.no_grad():
                for _ in range(m):
                    model(x)

        smoothed = SmoothedClassifier(model, 0.25, m)
        gen = torch.Generator().manual_seed(0)
        out[f"{name} forwards"] = best_time(forwards, 5)
        out[f"{name} predict"] = best_time(lambda s=smoothed, x=x, gen=gen: s.predict(x, gen), 5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=["default", "tuned"], default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "tuned")))
        return
    best: dict[str, dict[str, float]] = {"default": {}, "tuned": {}}
    for _ in range(args.rounds):
        for setting in ("default", "tuned"):
            cmd = [sys.executable, __file__, "--child", setting]
            res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            for k, v in res.items():
                best[setting][k] = min(best[setting].get(k, float("inf")), v)
    lines = [
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{platform.libc_ver()[0]} {platform.libc_ver()[1]}; best of {args.rounds} alternating child "
        "processes per setting; predict = SmoothedClassifier(sigma 0.25, m = the number of forwards).",
        "",
        "| model | rows per forward | work | default malloc (s) | tuned malloc (s) | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for name, _, rows, m in CASES:
        for work in ("forwards", "predict"):
            key = f"{name} {work}"
            d, t = best["default"][key], best["tuned"][key]
            what = f"{m} forwards" if work == "forwards" else f"predict, m = {m}"
            lines.append(f"| {name} | {rows} | {what} | {d:.4f} | {t:.4f} | {d / t:.2f}x |")
    text = "\n".join(lines)
    emit(text, args.out)


if __name__ == "__main__":
    main()
