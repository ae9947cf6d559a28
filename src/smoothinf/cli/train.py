"""``smoothinf train``: standard training of a registered model (minimal loop)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from smoothinf.cli import add_common_args
from smoothinf.data import load_dataset
from smoothinf.errors import ConfigError
from smoothinf.models import create_model_for, save_checkpoint
from smoothinf.noise import NOISE_KINDS, inject_noise, mean_noise_level, param_groups
from smoothinf.utils import resolve_device, seed_everything


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model (standard cross-entropy)")
    p.add_argument("--data", default="mnist")
    p.add_argument("--root", default=None)
    p.add_argument("--model", default="mnist_cnn_small")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--noise", default=None, choices=sorted(NOISE_KINDS), help="noise injection kind")
    p.add_argument("--noise-rank", type=int, default=5, help="CNI-W rank")
    p.add_argument("--noise-init", type=float, default=0.25, help="PNI alpha init / CNI-I sigma (pixels)")
    p.add_argument("--out", default="runs/train")
    add_common_args(p)
    p.set_defaults(func=run_train)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on pixels ``x`` (N, C, H, W) in [0, 1]."""
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        pred = model(x[i : i + batch_size].to(device)).argmax(1).cpu()
        correct += int((pred == y[i : i + batch_size]).sum())
    return correct / max(1, x.shape[0])


def run_train(args: argparse.Namespace) -> int:
    if args.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
    if args.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {args.lr}")
    seed_everything(args.seed)
    device = resolve_device(args.device)
    train, info = load_dataset(args.data, "train", args.root)
    test, _ = load_dataset(args.data, "test", args.root)
    model = create_model_for(args.model, info)
    if args.noise:
        inject_noise(model, args.noise, rank=args.noise_rank, init=args.noise_init, sigma=args.noise_init)
    model = model.to(device)
    opt = torch.optim.Adam(param_groups(model, weight_decay=0.0), lr=args.lr)
    x, y = train.tensors()
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        bar = tqdm(range(0, x.shape[0], args.batch_size), desc=f"epoch {epoch + 1}/{args.epochs}")
        for i in bar:
            idx = perm[i : i + args.batch_size]
            loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.set_postfix(
                loss=f"{loss.item():.3f}", **{k: f"{v:.3g}" for k, v in mean_noise_level(model).items()}
            )
    model.eval()
    xt, yt = test.tensors()
    acc = accuracy(model, xt, yt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "dataset": args.data,
        "training": vars(args) | {"func": None},
        "metrics": {"test_accuracy": acc, "train_seconds": time.time() - start},
    }
    path = save_checkpoint(out / "model.safetensors", model, json.loads(json.dumps(meta, default=str)))
    print(f"test accuracy {acc:.4f}; checkpoint {path}")
    return 0
