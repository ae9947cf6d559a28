"""``smoothinf experiment paper-mnist``: the paper's claims re-measured on MNIST, resumable."""

from __future__ import annotations

import argparse

from smoothinf.cli import add_common_args, count
from smoothinf.experiments.study import PROFILES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("experiment", help="run a whole study (resumable) and write its report")
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    q = sub.add_parser("paper-mnist", help="the paper's seven claims on MNIST, one verdict each")
    q.add_argument("--out", default="runs/paper_mnist", help="folder of every output (resumes there)")
    q.add_argument(
        "--configs", default="configs/paper_mnist", help="folder with study.yaml and the model YAMLs"
    )
    q.add_argument("--quick", action="store_true", help="minutes-long version (study.yaml's quick: block)")
    q.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="apply this block of study.yaml (quick: the same as --quick; gpu: the full specification, "
        "1000 images x 3 runs at converged budgets, for a GPU machine)",
    )
    q.add_argument(
        "--report-only", action="store_true", help="rebuild the page from OUT's files; run nothing"
    )
    q.add_argument("--doc", default=None, help="also write the page here (e.g. docs/paper-reproduction.md)")
    q.add_argument(
        "--stop-after",
        choices=("train", "eval", "convergence", "certify"),
        default=None,
        help="end after this stage (the page is written from what exists)",
    )
    q.add_argument(
        "--only",
        choices=("long",),
        default=None,
        help="run only this stage (long: the longer-training stage, whose models train from scratch or "
        "from one another), then rebuild the page",
    )
    q.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="NAME",
        help="with --only long: run only these models' steps (and the training of the models they "
        "start from), e.g. to extend one model's slices of images",
    )
    q.add_argument(
        "--jobs",
        type=count(1),
        default=None,
        help="steps run at once, each in its own process (default: study.yaml's jobs)",
    )
    add_common_args(q)
    q.set_defaults(func=run_paper_mnist)


def run_paper_mnist(args: argparse.Namespace) -> int:
    from smoothinf.experiments.paper_mnist import run_study
    from smoothinf.experiments.paper_report import write_paper_report

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
    print(f"report: {path}" + (f" (copied to {args.doc})" if args.doc else ""))
    return 0
