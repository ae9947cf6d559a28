"""Per-image judging shared by the benchmarks whose saved runs ``bench_worst_of.py`` combines."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from paper_mnist import judge_grid  # the paper study's code: PYTHONPATH=studies
from torch import nn


def add_judge_options(parser: argparse.ArgumentParser, vote: str, m: int) -> None:
    """The judged classifier (``--vote``, ``--m``), its judging and ``--save``."""
    parser.add_argument("--m", type=int, default=m, help="the judged classifier's draws")
    parser.add_argument("--vote", default=vote, choices=("hard", "weighted", "soft"), help="its vote")
    parser.add_argument("--judge-draws", type=int, default=256)
    parser.add_argument("--judge-subsets", type=int, default=32)
    parser.add_argument("--save", default=None, help="folder for each run's per-image P(correct) (.npy)")


def judge_and_save(
    model: nn.Module,
    sigma: float,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    args: argparse.Namespace,
    seed: int,
    name: str,
) -> torch.Tensor:
    """Per-image P(correct) (N,) of ``args.vote``@``args.m`` at ``sigma`` on x_adv (``judge_grid``'s
    estimate, generator seeded with ``seed``); with ``--save`` also ``<save>/<name>.npy``."""
    gen = torch.Generator().manual_seed(seed)
    judged = judge_grid(
        model, sigma, x_adv, y, [args.vote], [args.m], gen, draws=args.judge_draws, subsets=args.judge_subsets
    )
    p_ok = judged[f"{args.vote}@{args.m}"]
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
        np.save(Path(args.save) / f"{name}.npy", p_ok.numpy())
    return p_ok


def result_row(cells: list[str], p_ok: torch.Tensor, seconds: float) -> str:
    """A table row: ``cells``, then the accuracy % (mean P(correct)), the majority-right % and the
    crafting seconds; also printed, so that a long run shows its progress."""
    cells = cells + [
        f"{100 * p_ok.mean():.1f}",
        f"{100 * (p_ok >= 0.5).float().mean():.1f}",
        f"{seconds:.0f}",
    ]
    row = "| " + " | ".join(cells) + " |"
    print(row, flush=True)
    return row
