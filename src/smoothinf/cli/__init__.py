"""The ``smoothinf`` command line: one sub-module per group of sub-commands.

Each sub-module exposes ``register(subparsers)``, adding its parsers with
``set_defaults(func=run_function)``; ``run_function(args) -> int`` returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from smoothinf.errors import SmoothinfError

SUBCOMMAND_MODULES = ("data", "models", "train", "smoothing", "attack", "evaluation", "experiment")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--seed``, shared by every sub-command that computes."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed for every random draw")


def dataset_name(requested: str | None, meta: dict) -> str:
    """The data set to use: ``--data`` when given, else the one the checkpoint was trained on."""
    name = requested or meta.get("dataset")
    if isinstance(name, dict):
        name = name.get("name")
    if not name:
        raise SmoothinfError("the checkpoint names no data set; pass --data")
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoothinf",
        description="Smoothed inference for adversarial robustness: train, attack, certify, report.",
    )
    from smoothinf import __version__

    parser.add_argument("--version", action="version", version=f"smoothinf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        module = importlib.import_module(f"smoothinf.cli.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if os.environ.get("SMOOTHINF_MALLOC_TUNING", "1") != "0":
        from smoothinf.utils import tune_cpu_allocator

        tune_cpu_allocator()
    ok = False
    try:
        code = int(args.func(args) or 0)
        ok = True
        return code
    except (SmoothinfError, FileNotFoundError, ValueError) as exc:
        print(f"smoothinf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"smoothinf {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # under torchrun: leave the process group cleanly
            from smoothinf.distributed import shutdown_distributed

            shutdown_distributed(wait=ok)


if __name__ == "__main__":
    sys.exit(main())
