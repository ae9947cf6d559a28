"""Smoothed prediction and certification speed vs the limit, a naive per-draw loop and ART.

Run: .venv/bin/python benchmarks/bench_smoothing.py [--quick] [--out benchmarks/results/smoothing.md]
The limit is the time of m plain forwards of the batch (no noise, no counting): smoothing cannot
beat it. "Limit + noise" adds only the sampling of the Gaussian noise (m forwards of x + fresh
noise, no counting): the floor for any smoothing with independent noise per example and draw.
Limit, limit + noise and ours are timed in interleaved rounds (best of each).
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch

from smoothinf.models import create_model
from smoothinf.smoothing import SmoothedClassifier, certify
from timing import add_allocator_option, apply_allocator_option, best_time, best_times, emit


def limit_forwards(model, x, m):
    """m plain forwards of the batch x, no noise, no counting: the floor for any smoothing."""
    with torch.no_grad():
        for _ in range(m):
            model(x)


def noisy_forwards(model, x, sigma, m, generator):
    """m forwards of freshly noised copies of x, no counting: the limit plus noise sampling."""
    with torch.no_grad():
        for _ in range(m):
            model(torch.empty_like(x).normal_(0.0, sigma, generator=generator).add_(x))


def naive_predict(model, x, sigma, m):
    """The reference code's way: one forward per draw in a Python loop."""
    counts = torch.zeros(x.shape[0], 10)
    with torch.no_grad():
        for _ in range(m):
            pred = model(x + sigma * torch.randn_like(x)).argmax(1)
            counts[torch.arange(x.shape[0]), pred] += 1
    return counts.argmax(1)


def art_classifier(model, m, sigma):
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    return PyTorchRandomizedSmoothing(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
        sample_size=m,
        scale=sigma,
        alpha=0.001,
    )


def bench_model(name: str, quick: bool, sigma: float = 0.25) -> list[tuple]:
    """Rows (setting, limit, limit + noise, ours, naive, ART) for one base model."""
    torch.manual_seed(0)
    model = create_model(name, 10, 1, (0.1307,), (0.3081,)).eval()
    rows = []
    settings = [(100, 8), (100, 32), (10, 1000)] if not quick else [(50, 8), (20, 32)]
    for n, m in settings:
        x = torch.rand(n, 1, 28, 28)
        smoothed = SmoothedClassifier(model, sigma, m, "hard")
        gen = torch.Generator().manual_seed(0)
        t = best_times(
            {
                "limit": lambda x=x, m=m: limit_forwards(model, x, m),
                "noise": lambda x=x, m=m, gen=gen: noisy_forwards(model, x, sigma, m, gen),
                "ours": lambda s=smoothed, x=x, gen=gen: s.predict(x, gen),
            },
            repeats=10 if m <= 100 else 3,
        )
        t_naive = best_time(lambda x=x, m=m: naive_predict(model, x, sigma, m), repeats=1 if m > 100 else 3)
        art = art_classifier(model, m, sigma)
        xn = x.numpy()
        t_art = best_time(lambda a=art, xn=xn: a.predict(xn, batch_size=128), repeats=1 if m > 100 else 3)
        rows.append((f"{name} predict N={n} m={m}", t["limit"], t["noise"], t["ours"], t_naive, t_art))
    n0, n_cert, n_ex = (100, 10000, 4) if not quick else (100, 2000, 2)
    x = torch.rand(n_ex, 1, 28, 28)
    t_limit = best_time(lambda: limit_forwards(model, x, n0 + n_cert), repeats=1)
    t_ours = best_time(lambda: certify(model, x, sigma, n0, n_cert, 0.001), repeats=1)
    art = art_classifier(model, n_cert, sigma)
    try:
        t_art = best_time(lambda: art.certify(x.numpy(), n=n_cert, batch_size=1024), repeats=1)
    except ImportError as exc:  # ART's certify needs statsmodels, which it does not declare
        print(f"ART certify unavailable: {exc}")
        t_art = float("nan")
    rows.append(
        (f"{name} certify N={n_ex} n0={n0} n={n_cert}", t_limit, float("nan"), t_ours, float("nan"), t_art)
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--models", nargs="+", default=["mnist_cnn_small", "mnist_cnn"])
    add_allocator_option(parser)
    args = parser.parse_args()
    malloc = apply_allocator_option(args)
    rows = [row for name in args.models for row in bench_model(name, args.quick)]
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {malloc}; models {', '.join(args.models)} (1x28x28), sigma 0.25, "
        "default chunking (by input size).",
        "",
        "| setting | limit (s) | limit + noise (s) | ours (s) | ours / limit speed | ours / (limit + noise) "
        "| naive loop (s) | ours vs naive | ART (s) | ours vs ART |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t_limit, t_noise, t_ours, t_naive, t_art in rows:
        lines.append(
            f"| {name} | {t_limit:.4f} | {t_noise:.4f} | {t_ours:.4f} | {t_limit / t_ours:.2f}x | "
            f"{t_noise / t_ours:.2f}x | {t_naive:.4f} | {t_naive / t_ours:.2f}x | {t_art:.4f} | "
            f"{t_art / t_ours:.2f}x |"
        )
    text = "\n".join(lines).replace("| nan |", "| - |").replace("| nanx |", "| - |")
    emit(text, args.out)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
