"""``smoothinf train``: train a model with any objective (flags override a YAML config)."""

from __future__ import annotations

import argparse
import dataclasses

from smoothinf.cli import add_common_args
from smoothinf.noise import NOISE_KINDS
from smoothinf.recipes import listing
from smoothinf.training.objectives import OBJECTIVES
from smoothinf.training.trainer import TrainConfig, train

_HELP = {
    "data": "data set (mnist, cifar10, cifar100, synthetic)",
    "model": "architecture (see `smoothinf models list`)",
    "noise": f"noise injection: {', '.join(NOISE_KINDS)}",
    "objective": f"training objective: {', '.join(OBJECTIVES)}",
    "eps": "L_inf radius of the training attack (pixel units)",
    "sigma": "the one input-noise std (pixel units): of the gaussian / cni-iw / epgd / smoothadv"
    " objectives or of the --noise cni-i layer",
    "noise_init": "init of the PNI noise scale alpha (cni-w starts its d and F at 0.0625 and 0.01; cni-i"
    " takes its std from --sigma)",
    "init": "fine-tune from this checkpoint",
    "start_noise": "single-step uniform start radius in multiples of eps (fgsm-rs 1, n-fgsm 2)",
    "grad_align": "GradAlign weight lambda for single-step objectives (0: off; ~3x a step's cost)",
    "co_guard": "catastrophic-overfitting guard for single-step objectives: stop | shrink",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model (standard, PGD-AT, TRADES, noise, EPGD-AT)")
    p.add_argument(
        "--config",
        default=None,
        help="a packaged recipe's name (see --list-configs) or a YAML file; flags override its values",
    )
    p.add_argument("--list-configs", action="store_true", help="list the packaged recipes and exit")
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT/last.pt (same settings; more epochs allowed)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace the training run already in OUT")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("seed", "device"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "amp":
            p.add_argument("--amp", action="store_true", default=None, help="bf16 autocast (opt-in)")
            continue
        if f.name == "milestones":
            p.add_argument(flag, type=int, nargs="*", default=None)
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = type(default) if isinstance(default, int | float) and not isinstance(default, bool) else None
        if kind is None:
            kind = {"alpha": float, "grad_clip": float, "max_train_examples": int, "start_noise": float}.get(
                f.name, str
            )
        p.add_argument(
            flag,
            type=kind,
            default=None,
            help=_HELP.get(
                f.name, f"(default {f.default!r})" if f.default is not dataclasses.MISSING else None
            ),
        )
    add_common_args(p)
    p.set_defaults(func=run_train)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    if args.config:
        return TrainConfig.from_yaml(args.config, **overrides)
    return TrainConfig(**overrides)


def run_train(args: argparse.Namespace) -> int:
    if args.list_configs:
        print(listing())
        return 0
    cfg = config_from_args(args)
    metrics = train(cfg, resume=args.resume, overwrite=args.overwrite)
    print(
        f"test accuracy {metrics['test_clean']:.4f}; checkpoint {metrics['checkpoint']} "
        f"({metrics['train_seconds']:.0f} s)"
    )
    return 0
