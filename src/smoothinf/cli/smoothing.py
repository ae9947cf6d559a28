"""``smoothinf predict`` and ``smoothinf certify``."""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from smoothinf.cli import add_common_args, dataset_name
from smoothinf.data import load_dataset
from smoothinf.errors import SmoothinfError
from smoothinf.evaluation.report import plot_certified
from smoothinf.models import load_checkpoint
from smoothinf.noise import NOISE_FAMILIES
from smoothinf.smoothing import (
    VOTES,
    SmoothedClassifier,
    certified_accuracy,
    certify,
    check_abstain_vote,
    check_certifiable,
    predict_with_abstain,
)
from smoothinf.utils import make_generator, resolve_device

TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
RADII = tuple(np.round(np.arange(0.0, 4.01, 0.25), 2))


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", required=True, help="model checkpoint (.safetensors)")
    p.add_argument("--data", default=None, help="data set (default: the checkpoint's)")
    p.add_argument("--root", default=None, help="folder of the data set files (CIFAR)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="rows per forward (default: by input size)")
    p.add_argument("--noise", default="gaussian", choices=NOISE_FAMILIES)
    add_common_args(p)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="accuracy of the smoothed classifier")
    _add_data_args(p)
    p.add_argument("--sigma", type=float, required=True, help="noise std (pixel units)")
    p.add_argument("--m", type=int, default=32, help="noise draws per example")
    p.add_argument("--vote", default="hard", choices=VOTES)
    p.add_argument("--alpha", type=float, default=None, help="abstain unless significant at level alpha")
    p.add_argument("--examples-per-step", type=int, default=256)
    p.set_defaults(func=run_predict)

    c = subparsers.add_parser("certify", help="L2 certificates of the hard-vote smoothed classifier")
    _add_data_args(c)
    c.add_argument("--sigma", type=float, required=True)
    c.add_argument("--n0", type=int, default=100)
    c.add_argument("--n", type=int, default=100_000)
    c.add_argument("--alpha", type=float, default=0.001)
    c.add_argument("--skip", type=int, default=1, help="certify every k-th example")
    c.add_argument("--out", required=True, help="TSV path (resumable: finished indices are skipped)")
    c.add_argument("--examples-per-step", type=int, default=16)
    c.set_defaults(func=run_certify)


def _load(args: argparse.Namespace):
    device = resolve_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device=device)
    name = dataset_name(args.data, meta)
    data, _ = load_dataset(name, args.split, args.root)
    x, y = data.tensors(args.max_examples)
    return model, x, y, device


def run_predict(args: argparse.Namespace) -> int:
    if args.alpha is not None:
        check_abstain_vote(args.vote)
    model, x, y, device = _load(args)
    smoothed = SmoothedClassifier(
        model, args.sigma, args.m, args.vote, args.noise, batch_size=args.batch_size
    )
    gen = make_generator(args.seed, device)
    preds = []
    step = max(1, args.examples_per_step)
    for i in tqdm(range(0, x.shape[0], step), desc="predict", unit="batch"):
        xb = x[i : i + step].to(device)
        if args.alpha is None:
            preds.append(smoothed.predict(xb, gen).cpu())
        else:
            preds.append(predict_with_abstain(smoothed, xb, args.m, args.alpha, gen).cpu())
    pred = torch.cat(preds)
    acc = (pred == y).float().mean().item()
    line = f"smoothed accuracy {acc:.4f} (sigma {args.sigma}, m {args.m}, vote {args.vote}, n {len(y)})"
    if args.alpha is not None:
        line += f"; abstain rate {(pred == -1).float().mean().item():.4f}"
    print(line)
    return 0


def _done_indices(path: Path) -> set[int]:
    if not path.exists():
        return set()
    with path.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and list(rows[0].keys()) != list(TSV_COLUMNS):
        raise SmoothinfError(
            f"{path} is not a certify TSV (columns {list(rows[0].keys())}); choose another --out"
        )
    return {int(r["idx"]) for r in rows}


def _read_tsv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return (np.array([float(r["radius"]) for r in rows]), np.array([r["correct"] == "1" for r in rows]))


def run_certify(args: argparse.Namespace) -> int:
    check_certifiable(args.noise)
    model, x, y, device = _load(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done_indices(out)
    todo = [i for i in range(0, x.shape[0], max(1, args.skip)) if i not in done]
    gen = make_generator(args.seed, device)
    new_file = not out.exists() or out.stat().st_size == 0
    with out.open("a", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        if new_file:
            writer.writerow(TSV_COLUMNS)
        step = max(1, args.examples_per_step)
        for s in tqdm(range(0, len(todo), step), desc="certify", unit="batch"):
            idx = todo[s : s + step]
            start = time.time()
            pred, radius = certify(
                model,
                x[idx].to(device),
                args.sigma,
                args.n0,
                args.n,
                args.alpha,
                args.batch_size,
                gen,
                args.noise,
            )
            per = (time.time() - start) / len(idx)
            for k, i in enumerate(idx):
                correct = int(pred[k].item() == y[i].item())
                writer.writerow(
                    [i, y[i].item(), pred[k].item(), f"{radius[k].item():.4f}", correct, f"{per:.3f}"]
                )
            f.flush()
    radius, correct = _read_tsv(out)
    acc = certified_accuracy(radius, correct, RADII)
    print("| radius | " + " | ".join(f"{r:g}" for r in RADII if r <= 1.5 * args.sigma * 4) + " |")
    shown = [a for r, a in zip(RADII, acc, strict=True) if r <= 1.5 * args.sigma * 4]
    print("| certified accuracy | " + " | ".join(f"{a:.3f}" for a in shown) + " |")
    png = out.with_suffix(".png")
    plot_certified(radius, correct, args.sigma, png)
    print(f"{len(radius)} examples in {out}; plot {png}")
    return 0
