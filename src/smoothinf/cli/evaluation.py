"""``smoothinf evaluate``: clean accuracy of a checkpoint."""

from __future__ import annotations

import argparse

from smoothinf.cli import add_common_args
from smoothinf.data import load_dataset
from smoothinf.models import load_checkpoint
from smoothinf.training.trainer import accuracy
from smoothinf.utils import resolve_device


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="clean accuracy of a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=None, help="data set (default: the checkpoint's)")
    p.add_argument("--root", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--max-examples", type=int, default=None)
    add_common_args(p)
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device=device)
    name = args.data or meta.get("dataset") or "mnist"
    data, _ = load_dataset(name if isinstance(name, str) else name["name"], args.split, args.root)
    x, y = data.tensors(args.max_examples)
    print(f"{name} {args.split}: clean accuracy {accuracy(model, x, y):.4f} on {x.shape[0]} examples")
    return 0
