"""Run (or resume) the paper-MNIST study and write its page: ``python studies/paper_mnist/run.py``.

``--report-only`` rebuilds the page from ``--out``'s files and runs nothing. Errors in a flag or a
config are one line, exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the folder above this one holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paper_mnist.study import DEFAULT_CONFIGS, PROFILES  # noqa: E402

PROG = "studies/paper_mnist/run.py"
from smoothinf.cli import OneLineParser, add_common_args, count, set_threads  # noqa: E402
from smoothinf.errors import ConfigError, SmoothinfError, os_error_line  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/paper_mnist", help="folder of every output (resumes there)")
    p.add_argument("--configs", default=str(DEFAULT_CONFIGS), help="folder of study.yaml and the model YAMLs")
    p.add_argument("--quick", action="store_true", help="minutes-long version (study.yaml's quick: block)")
    p.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="apply this block of study.yaml (quick: the same as --quick; gpu: the full specification, "
        "for a GPU machine)",
    )
    p.add_argument("--report-only", action="store_true", help="rebuild the page from OUT's files only")
    p.add_argument("--doc", default=None, help="also write the page to this file")
    p.add_argument(
        "--stop-after",
        choices=("train", "eval", "convergence", "certify"),
        default=None,
        help="end after this stage (the page is written from what exists)",
    )
    p.add_argument(
        "--only",
        choices=("long",),
        default=None,
        help="run only this stage (long: the longer-training stage, whose models train from scratch or "
        "from one another), then rebuild the page",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="NAME",
        help="with --only long: run only these models' steps (and the training of the models they "
        "start from)",
    )
    p.add_argument(
        "--jobs",
        type=count(1),
        default=None,
        help="steps run at once, each in its own process (default: study.yaml's jobs)",
    )
    add_common_args(p)
    return p


def check_paths(out: Path, doc: Path | None) -> None:
    """One-line ConfigError unless ``out`` is a folder (or absent) and ``doc`` a file (or absent)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give the study's folder")
    if doc is not None and doc.is_dir():
        raise ConfigError(f"--doc {doc} is a folder; give the page's file name (e.g. {doc}/page.md)")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    set_threads(args.threads)
    if os.environ.get("SMOOTHINF_MALLOC_TUNING", "1") != "0":  # as the smoothinf command does
        from smoothinf.utils import tune_cpu_allocator

        tune_cpu_allocator()
    try:
        check_paths(Path(args.out), Path(args.doc) if args.doc else None)
        from paper_mnist.pipeline import run_study
        from paper_mnist.report import write_paper_report

        if args.report_only:
            path = write_paper_report(args.out, args.doc)
        else:
            path = run_study(
                args.out,
                args.configs,
                args.quick,
                args.doc,
                args.stop_after,
                seed=args.seed,
                device=args.device,
                jobs=args.jobs,
                profile=args.profile,
                only=args.only,
                models=args.models,
            )
    except (SmoothinfError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file-system error: one line naming the path
        print(f"{PROG}: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    print(f"report: {path}" + (f" (copied to {args.doc})" if args.doc else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
