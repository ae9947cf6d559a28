"""The library's Square attack against the official AutoAttack's and torchattacks' Square, and doubled.

For each zoo model (deterministic), on the first N MNIST test images at eps 0.3, Square alone (no
other attack first) runs four ways in one process: ``smoothinf.attacks.Square`` at 5000 queries
(the default preset's budget), the same at twice the queries with another seed (convergence:
what the doubled budget fools beyond the preset's budget), AutoAttack's Square at 5000 queries
(``AutoAttackAdapter`` custom ["square"]: the reference implementation) and torchattacks' Square
at 5000 queries (a peer's speed). Robust accuracy is the model's own prediction on the returned
points; seconds are wall time, one thread.

    python benchmarks/bench_square.py --models mnist_cnn_small_pgd_at_30ep \
        mnist_cnn_small_pgd_at_input_noise_30ep --examples 100 --out benchmarks/results/square.md
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from smoothinf import zoo
from smoothinf.attacks import Square
from smoothinf.attacks.autoattack import AutoAttackAdapter
from smoothinf.data.registry import load_dataset
from timing import emit


def robust(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mnist_cnn_small_pgd_at_30ep"])
    p.add_argument("--examples", type=int, default=100)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("mnist", "test")[0]
    x, y = data.images[: args.examples], data.labels[: args.examples]
    q = args.queries
    lines = [
        f"## Square alone (cpu: {platform.processor() or platform.machine()},"
        f" torch {torch.__version__}, 1 thread)",
        "",
        f"First {args.examples} MNIST test images, eps {args.eps}, L_inf; robust accuracy in % (the"
        " model's prediction at the returned points) and wall seconds.",
        "",
        f"| model | smoothinf {q} | smoothinf {2 * q} (other seed) | fooled only by the doubled run |"
        f" AutoAttack's Square {q} | torchattacks' Square {q} |",
        "|---|---|---|---|---|---|",
    ]
    for name in args.models:
        model = zoo.load(name).eval()
        runs = {
            "ours": lambda m=model: Square(m, args.eps, queries=q)(x, y, seeded(0)),
            "doubled": lambda m=model: Square(m, args.eps, queries=2 * q)(x, y, seeded(1)),
            "autoattack": lambda m=model: AutoAttackAdapter(
                m, "linf", args.eps, "custom", attacks=["square"], seed=0, square_queries=q
            )(x, y),
        }
        try:
            import torchattacks

            runs["torchattacks"] = lambda m=model: torchattacks.Square(
                m, norm="Linf", eps=args.eps, n_queries=q, n_restarts=1, seed=0
            )(x, y)
        except ImportError:
            pass
        cells, kept = {}, {}
        for key, fn in runs.items():
            start = time.perf_counter()
            x_adv = fn()
            seconds = time.perf_counter() - start
            assert float((x_adv - x).abs().max()) <= args.eps + 1e-6
            kept[key] = robust(model, x_adv, y)
            cells[key] = f"{100 * kept[key].float().mean():.1f} ({seconds:.1f} s)"
        extra = int((kept["ours"] & ~kept["doubled"]).sum())
        lines.append(
            f"| {name} | {cells['ours']} | {cells['doubled']} | {extra} |"
            f" {cells['autoattack']} | {cells.get('torchattacks', '-')} |"
        )
        print(lines[-1], flush=True)
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
