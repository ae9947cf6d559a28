"""``smoothinf attack``: run one attack on a checkpoint and print clean and robust accuracy.

With ``--smooth`` the defended classifier is ``SmoothedClassifier(model, sigma, m, vote)``, which
judges every adversarial example with its own fresh noise; the attacks work on surrogates:
epgd / smoothadv on the base model and the smoothing noise (``--m-attack`` draws per step), fgsm /
pgd / square / autoattack on the differentiable soft-vote smoothed classifier (same sigma, ``--m-attack``
draws), nattack on the defended classifier's scores (black box), transfer on ``--source-checkpoint``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothinf.errors import SmoothinfError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``attack``."""
    from smoothinf.attacks import list_attacks
    from smoothinf.cli import add_common_args, count

    p = subparsers.add_parser(
        "attack",
        help="attack a checkpoint (optionally smoothed) and print clean / robust accuracy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="model checkpoint (safetensors + .json sidecar)")
    p.add_argument("--data", default=None, help="data set (default: the checkpoint's)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--root", default=None, help="folder with the data set's files")
    p.add_argument("--data-root", default=None, help=argparse.SUPPRESS)  # deprecated spelling of --root
    p.add_argument("--attack", required=True, choices=list_attacks())
    p.add_argument("--eps", type=float, default=None, help="radius, pixels (default: data's eps_linf)")
    p.add_argument("--alpha", type=float, default=None, help="step size, pixel units (default 2.5*eps/steps)")
    p.add_argument("--steps", type=count(1), default=20)
    p.add_argument("--restarts", type=count(1), default=1)
    p.add_argument("--norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--loss", default="ce", choices=["ce", "cw", "dlr"])
    p.add_argument("--eot-iter", type=count(1), default=1, help="pgd/fgsm: model-noise draws per step")
    p.add_argument("--m-attack", type=count(1), default=8, help="draws per step: epgd/smoothadv/surrogate")
    p.add_argument(
        "--attack-sigma", type=float, default=None, help="epgd/smoothadv noise sigma (default: --sigma)"
    )
    p.add_argument("--source-checkpoint", default=None, help="transfer: the source model")
    p.add_argument("--source-attack", default="pgd", help="transfer: attack run on the source")
    p.add_argument("--population", type=count(1), default=100, help="nattack population")
    p.add_argument(
        "--max-queries",
        type=count(1),
        default=None,
        help="query budget per example: nattack (default 10000), square (default 5000)",
    )
    p.add_argument("--version", default="standard", choices=["standard", "rand"], help="autoattack version")
    p.add_argument("--smooth", action="store_true", help="defend with a SmoothedClassifier")
    p.add_argument("--sigma", type=float, default=None, help="with --smooth (required): noise std, pixels")
    p.add_argument(
        "--m", type=count(1), default=None, help="with --smooth: draws per prediction (default 32)"
    )
    p.add_argument("--vote", default="hard", help="hard | weighted | soft | logits")
    p.add_argument("--noise", default="gaussian", choices=["gaussian", "uniform", "laplace"])
    p.add_argument("--max-examples", type=count(1), default=None)
    p.add_argument("--batch-size", type=count(1), default=256, help="examples per attack call")
    p.add_argument(
        "--judgements",
        type=count(1),
        default=16,
        help="judgements per point of a randomised defence: robust accuracy = mean fraction right",
    )
    p.add_argument("--save-adv", default=None, help="write x, x_adv, y, predictions (safetensors)")
    p.add_argument("--save-grid", default=None, help="PNG grid of clean / adversarial pairs")
    p.add_argument("--overwrite", action="store_true", help="replace existing --save-adv / --save-grid files")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_common_args(p)
    p.set_defaults(func=run_attack)


def _smoothed(model: nn.Module, args: argparse.Namespace, m: int, vote: str) -> nn.Module:
    from smoothinf.smoothing import SmoothedClassifier

    return SmoothedClassifier(model, sigma=args.sigma, m=m, vote=vote, noise=args.noise)


def _build(args: argparse.Namespace, model: nn.Module, defended: nn.Module, eps: float, device, x, y) -> Any:
    """The attack object for ``args.attack`` (see the module docstring for surrogates); ``x``, ``y``:
    examples the transfer source must accept."""
    from smoothinf.attacks import build_attack
    from smoothinf.attacks.square import DEFAULT_QUERIES
    from smoothinf.noise import NoiseDistribution

    pgd_kw = dict(alpha=args.alpha, steps=args.steps, norm=args.norm, restarts=args.restarts, loss=args.loss)
    name = args.attack
    soft = _smoothed(model, args, args.m_attack, "soft") if args.smooth else model
    if name == "fgsm":
        return build_attack(name, soft, eps, norm=args.norm, loss=args.loss, eot_iter=args.eot_iter)
    if name == "pgd":
        return build_attack(name, soft, eps, eot_iter=args.eot_iter, **pgd_kw)
    if name in ("epgd", "smoothadv"):
        sigma = args.attack_sigma if args.attack_sigma is not None else (args.sigma if args.smooth else 0.0)
        noise = NoiseDistribution(args.noise, sigma)
        return build_attack(name, model, eps, noise=noise, m=args.m_attack, **pgd_kw)
    if name == "nattack":
        queries = args.max_queries or 10000
        return build_attack(
            name, defended, eps, norm=args.norm, population=args.population, max_queries=queries
        )
    if name == "square":
        return build_attack(name, soft, eps, norm=args.norm, queries=args.max_queries or DEFAULT_QUERIES)
    if name == "autoattack":
        return build_attack(
            name, soft, eps, norm=args.norm, version=args.version, seed=args.seed, batch_size=args.batch_size
        )
    # transfer
    if not args.source_checkpoint:
        raise SmoothinfError("--attack transfer needs --source-checkpoint")
    from smoothinf.models.checkpoint import load_checkpoint
    from smoothinf.models.inputs import check_model_input

    source, _ = load_checkpoint(args.source_checkpoint, device=device)
    check_model_input(source, x[:2], y[:2], name=f"--source-checkpoint {args.source_checkpoint}: the data")
    extra = pgd_kw if args.source_attack in ("pgd", "epgd", "smoothadv") else {}
    return build_attack("transfer", model, eps, source=source, source_attack=args.source_attack, **extra)


def save_grid(
    path: str | Path, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, pred: torch.Tensor, n: int = 8
) -> None:
    """PNG: clean images (top row) over their adversarial versions (bottom row) with predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, x.shape[0])
    fig, axes = plt.subplots(2, max(n, 1), figsize=(1.6 * max(n, 1), 3.6), squeeze=False)
    for i in range(n):
        for row, img, title in ((0, x[i], f"y={int(y[i])}"), (1, x_adv[i], f"adv: {int(pred[i])}")):
            ax = axes[row][i]
            arr = img.detach().cpu().permute(1, 2, 0).numpy()
            ax.imshow(
                arr[..., 0] if arr.shape[2] == 1 else arr,
                cmap="gray" if arr.shape[2] == 1 else None,
                vmin=0,
                vmax=1,
            )
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _check_smoothing_flags(args: argparse.Namespace) -> None:
    """--sigma / --m only mean something with --smooth, and --smooth needs an explicit --sigma."""
    if args.data_root is not None:
        if args.root is not None:
            raise SmoothinfError("pass --root only (--data-root is its deprecated spelling)")
        print("smoothinf attack: --data-root is deprecated; use --root", file=sys.stderr)
        args.root = args.data_root
    if not args.smooth:
        given = [flag for flag, value in (("--sigma", args.sigma), ("--m", args.m)) if value is not None]
        if given:
            raise SmoothinfError(f"{' and '.join(given)} only apply with --smooth (the defended classifier)")
        return
    if args.sigma is None:
        raise SmoothinfError("--smooth needs --sigma (the smoothing noise std, pixel units)")
    if not args.sigma >= 0:
        raise SmoothinfError(f"--sigma must be >= 0, got {args.sigma}")
    if args.m is None:
        args.m = 32


def _check_outputs(args: argparse.Namespace) -> None:
    """--save-adv / --save-grid are writable, and replace nothing without --overwrite (never the
    checkpoint under attack): checked before the attack runs."""
    from smoothinf.models.checkpoint import sidecar_path
    from smoothinf.utils import check_output

    inputs = {Path(p).resolve() for p in (args.checkpoint, sidecar_path(args.checkpoint))}
    for flag, path in (("--save-adv", args.save_adv), ("--save-grid", args.save_grid)):
        if path is None:
            continue
        path = check_output(path, flag)
        if path.resolve() in inputs:
            raise SmoothinfError(f"{flag} {path} is the --checkpoint under attack; choose another path")
        if path.exists() and not args.overwrite:
            raise SmoothinfError(
                f"{flag} {path} already exists; pass --overwrite to replace it or choose another path"
            )


def _save_adversarial(path: str, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` (safetensors) through a temporary file, so a failed write (a full disk)
    names ``path`` and leaves no half-written file."""
    import os

    from safetensors.torch import save

    from smoothinf.errors import naming

    tmp = Path(str(path) + ".tmp")
    try:
        with naming(path):
            tmp.write_bytes(save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
            os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def run_attack(args: argparse.Namespace) -> int:
    from smoothinf.attacks import defended_predict, is_randomised, robust_accuracy
    from smoothinf.evaluation.loading import load_checkpoint_and_examples
    from smoothinf.utils import make_generator, resolve_device, seed_everything

    _check_smoothing_flags(args)
    if args.eps is None and args.norm != "linf":  # before anything is loaded
        raise SmoothinfError("--eps is required with --norm l2")
    _check_outputs(args)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    got = load_checkpoint_and_examples(
        args.checkpoint, args.data, args.split, args.root, args.max_examples, device
    )
    model, data, info, x, y = got.model, got.data, got.info, got.x, got.y
    eps = info.eps_linf if args.eps is None else args.eps
    x, y = x.to(device), y.to(device)
    defended = _smoothed(model, args, args.m, args.vote) if args.smooth else model
    attack = _build(args, model, defended, eps, device, x, y)
    gen = make_generator(args.seed, device)
    keep = bool(args.save_adv or args.save_grid)
    start = time.perf_counter()
    res = robust_accuracy(
        defended,
        x,
        y,
        {args.attack: attack},
        generator=gen,
        batch_size=args.batch_size,
        keep_adversarial=keep,
        judgements=args.judgements,
    )
    seconds = time.perf_counter() - start
    summary = {
        "checkpoint": str(args.checkpoint),
        "data": data,
        "split": args.split,
        "n": int(x.shape[0]),
        "attack": repr(attack),
        "eps": eps,
        "norm": args.norm,
        "defended": (
            f"SmoothedClassifier(sigma={args.sigma}, m={args.m}, vote={args.vote}, noise={args.noise})"
            if args.smooth
            else "base model"
        ),
        "clean_accuracy": res.clean_accuracy,
        "robust_accuracy": res.worst_case_accuracy,
        "judgements": args.judgements if is_randomised(defended) else 1,
        "seconds": round(seconds, 3),
        "seed": args.seed,
    }
    if args.save_adv:
        summary["save_adv"] = str(args.save_adv)
    if args.save_grid:
        summary["save_grid"] = str(args.save_grid)
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        print(f"attack:          {summary['attack']} (eps={eps:.4g}, {args.norm})")
        print(f"defended by:     {summary['defended']}")
        print(f"examples:        {summary['n']} ({data}/{args.split})")
        print(f"clean accuracy:  {res.clean_accuracy:.4f}")
        print(f"robust accuracy: {res.worst_case_accuracy:.4f}")
        print(f"time:            {seconds:.1f} s", flush=True)
    if keep:  # optional files, after the numbers are out
        x_adv = res.adversarial[args.attack]
        pred = defended_predict(defended, x_adv, gen)
        if args.save_adv:
            _save_adversarial(
                args.save_adv, {"x": x, "x_adv": x_adv, "y": y, "pred_adv": pred, "robust": res.robust}
            )
        if args.save_grid:
            save_grid(args.save_grid, x, x_adv, y, pred)
    return 0
