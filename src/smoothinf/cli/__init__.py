"""The ``smoothinf`` command line: one sub-module per group of sub-commands.

Each sub-module exposes ``register(subparsers)``, adding its parsers with
``set_defaults(func=run_function)``; ``run_function(args) -> int`` returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from smoothinf.errors import SmoothinfError, os_error_line

SUBCOMMAND_MODULES = ("data", "models", "train", "smoothing", "attack", "evaluation")


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (``PROG: error: ...``), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def count(minimum: int = 1):
    """An argparse ``type`` for an integer count >= ``minimum`` (rejects ``-5``, ``0``, ``1.5``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--seed`` and ``--threads``, shared by every sub-command that computes."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    parser.add_argument("--seed", type=int, default=0, help="seed for every random draw")
    parser.add_argument(
        "--threads",
        type=count(1),
        default=None,
        help="CPU threads for torch (default: $OMP_NUM_THREADS when set, else torch's default)",
    )


def set_threads(threads: int | None) -> int | None:
    """``torch.set_num_threads``: ``threads`` when given, else ``$OMP_NUM_THREADS`` when it is a
    positive integer; returns the count applied (None: torch's default left alone).

    Under load torch's default (one thread per core) can be many times slower than one thread.
    """
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if not env.isdigit() or int(env) < 1:
            return None
        threads = int(env)
    import torch

    torch.set_num_threads(threads)
    return threads


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
    if hasattr(args, "threads"):
        set_threads(args.threads)
    if os.environ.get("SMOOTHINF_MALLOC_TUNING", "1") != "0":
        from smoothinf.utils import tune_cpu_allocator

        tune_cpu_allocator()
    ok = False
    try:
        code = int(args.func(args) or 0)
        ok = True
        return code
    except (SmoothinfError, ValueError) as exc:
        print(f"smoothinf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file-system error: one line naming the path, whatever the step
        print(f"smoothinf {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
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
