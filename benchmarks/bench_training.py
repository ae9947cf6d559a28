"""PGD-AT epoch time vs its limit, (k + 1) x a standard epoch (k attack steps + the update).

Run: .venv/bin/python benchmarks/bench_training.py [--examples 5000] [--out benchmarks/results/training.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from smoothinf.training.trainer import TrainConfig, train
from timing import add_allocator_option, apply_allocator_option, emit


def epoch_seconds(cfg: TrainConfig) -> float:
    """Seconds of the epoch's training loop (data loading, validation and checkpoints excluded)."""
    train(cfg)
    last = (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()[-1]
    return json.loads(last)["epoch_loop_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    add_allocator_option(parser)
    args = parser.parse_args()
    malloc = apply_allocator_option(args)
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(
            data="mnist",
            model="mnist_cnn_small",
            epochs=1,
            max_train_examples=args.examples,
            eval_examples=100,
            device="cpu",
        )
        epoch_seconds(TrainConfig(objective="standard", out=f"{tmp}/warm", **common))  # warm-up
        at = dict(objective="adversarial", adv_weight=1.0, eps=0.3, attack_steps=args.steps, **common)
        t_std = t_at = float("inf")
        for i in range(args.rounds):  # interleaved, best of each
            t_std = min(t_std, epoch_seconds(TrainConfig(objective="standard", out=f"{tmp}/s{i}", **common)))
            t_at = min(t_at, epoch_seconds(TrainConfig(out=f"{tmp}/at{i}", **at)))
    limit = (args.steps + 1) * t_std
    text = "\n".join(
        [
            f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"{malloc}; "
            f"mnist_cnn_small, {args.examples} MNIST examples, batch 128, best of {args.rounds} interleaved "
            "rounds of one epoch's training loop "
            "(data loading, validation and checkpoints excluded).",
            "",
            f"| standard epoch (s) | PGD-AT epoch, k = {args.steps} (s) | limit (k + 1) x standard (s) "
            "| PGD-AT / limit |",
            "|---|---|---|---|",
            f"| {t_std:.2f} | {t_at:.2f} | {limit:.2f} | {t_at / limit:.2f}x |",
        ]
    )
    emit(text, args.out)


if __name__ == "__main__":
    main()
