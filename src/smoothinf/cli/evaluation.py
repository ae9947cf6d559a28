"""``smoothinf evaluate``, ``smoothinf report`` and ``smoothinf quickstart``."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from smoothinf.cli import add_common_args, count
from smoothinf.errors import SmoothinfError
from smoothinf.evaluation import EvalConfig, ResultsStore, evaluate, read_results, write_report
from smoothinf.evaluation.config import CRAFTING
from smoothinf.evaluation.loading import load_checkpoint_and_examples, protocol_inputs
from smoothinf.evaluation.slices import merge_slices
from smoothinf.quickstart import QuickstartConfig, run_quickstart
from smoothinf.training.trainer import accuracy
from smoothinf.utils import check_output, output_lock, resolve_device


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="clean accuracy of a checkpoint, or the full protocol with --attacks/--config"
    )
    p.add_argument("--checkpoint", "-c", default=None)
    p.add_argument("--config", default=None, help="YAML EvalConfig (flags override)")
    p.add_argument("--data", default=None, help="data set (default: the checkpoint's)")
    p.add_argument("--root", default=None)
    p.add_argument("--split", default=None)
    p.add_argument("--max-examples", type=count(1), default=None)
    p.add_argument(
        "--first-example",
        type=count(0),
        default=None,
        help="skip the split's first N examples (one slice of a larger evaluation; `smoothinf report` "
        "merges the slices' results files)",
    )
    p.add_argument(
        "--attacks",
        nargs="+",
        default=None,
        help="default (the converging preset) and/or fgsm pgd apgd epgd smoothadv transfer nattack "
        "autoattack (runs the protocol)",
    )
    p.add_argument("--eps", type=float, nargs="+", default=None)
    p.add_argument("--votes", nargs="+", default=None)
    p.add_argument("--sigmas", type=float, nargs="+", default=None)
    p.add_argument("--ms", type=count(1), nargs="+", default=None)
    p.add_argument("--steps", type=count(1), default=None)
    p.add_argument("--attack-m", type=count(1), default=None, help="noise draws per attack step")
    p.add_argument("--apgd-steps", type=count(1), default=None, help="APGD iterations (default 200)")
    p.add_argument(
        "--temperatures",
        type=float,
        nargs="*",
        default=None,
        help="the default preset's tempered APGD-CE on hard / weighted votes, one per T "
        "(default 0.5 0.25; none given: off)",
    )
    p.add_argument(
        "--check-examples",
        type=count(0),
        default=None,
        help="cross-check the first N examples (default 100, capped by the examples; as in the Python "
        "API): AutoAttack (standard, or rand's APGD on randomised rows), black-box Square, doubled "
        "budget; 0: off, a choice the report states",
    )
    p.add_argument("--no-autoattack-check", dest="autoattack_check", action="store_false", default=None)
    p.add_argument("--no-blackbox-check", dest="blackbox_check", action="store_false", default=None)
    p.add_argument("--no-convergence-check", dest="convergence_check", action="store_false", default=None)
    p.add_argument("--square-queries", type=count(1), default=None, help="queries of the black-box check")
    p.add_argument(
        "--preset-square-queries",
        type=count(0),
        default=None,
        help="queries of the default preset's Square attack on deterministic rows (default 5000; 0: none)",
    )
    p.add_argument(
        "--judgements",
        type=count(1),
        default=None,
        help="judgements per point of a randomised defence (default 16): correctness = fraction right",
    )
    p.add_argument(
        "--crafting",
        choices=CRAFTING,
        default=None,
        help="shared (default): the attacks and cross-checks that do not depend on the vote or m run once "
        "per sigma and every vote and m is judged on their points; per-row: each row crafts its own",
    )
    p.add_argument(
        "--no-stop-decided",
        dest="stop_decided",
        action="store_false",
        default=None,
        help="judged attack runs take every step on every image (default: an image every judge already "
        "gets wrong in 16 fresh judgements leaves the run at an early checkpoint)",
    )
    p.add_argument("--runs", type=count(1), default=None)
    p.add_argument("--results", default=None, help="JSONL results file (appended; resumable)")
    p.add_argument("--report-dir", default=None, help="write report.md, tables and plots here")
    add_common_args(p)
    p.set_defaults(func=run_evaluate)

    r = subparsers.add_parser(
        "report", help="rebuild tables and plots from a results JSONL file (or the files of its slices)"
    )
    r.add_argument(
        "results",
        nargs="+",
        help="results file; several: slices of one evaluation (--first-example), merged per row",
    )
    r.add_argument("--out", default=None, help="report folder (default: next to the first results file)")
    r.set_defaults(func=run_report)

    w = subparsers.add_parser("sweep", help="attack-compute sweep: accuracy vs steps x draws")
    w.add_argument("kind", choices=["compute"])
    w.add_argument("--checkpoint", "-c", required=True)
    w.add_argument("--data", default=None)
    w.add_argument("--root", default=None)
    w.add_argument("--split", default="test")
    w.add_argument("--max-examples", type=count(1), default=200)
    w.add_argument("--sigma", type=float, default=0.25)
    w.add_argument("--m", type=count(1), default=64)
    w.add_argument("--vote", default="hard")
    w.add_argument("--eps", type=float, default=None, help="default: the data set's eps")
    w.add_argument("--steps", type=count(1), nargs="+", default=[5, 10, 20])
    w.add_argument("--draws", type=count(1), nargs="+", default=[1, 4, 16])
    w.add_argument("--attacks", nargs="+", default=["pgd", "epgd", "smoothadv"])
    w.add_argument("--runs", type=count(1), default=3)
    w.add_argument("--judgements", type=count(1), default=16, help="judgements per adversarial point")
    w.add_argument("--out", default=None, help="folder (default: next to the checkpoint)")
    add_common_args(w)
    w.set_defaults(func=run_sweep)

    q = subparsers.add_parser(
        "quickstart",
        help="MNIST in under 5 minutes: a zoo PGD-AT model, base vs smoothed under adaptive attacks, report",
    )
    q.add_argument("--out", default="runs/quickstart")
    q.add_argument("--model", default=None, help="zoo model to rate (default: mnist_cnn_small_pgd_at_6ep)")
    q.add_argument("--train", action="store_true", help="train the model first (6-epoch PGD-AT, resumable)")
    q.add_argument("--epochs", type=count(1), default=6, help="epochs of --train")
    q.add_argument(
        "--full", action="store_true", help="the long version: 200 images, 3 runs, 4 smoothed rows"
    )
    q.add_argument("--examples", type=count(1), default=None, help="test images (default: 100; --full 200)")
    q.add_argument(
        "--check-examples",
        type=count(0),
        default=None,
        help="images of the cross-checks (0: off; default: every image; --full 50)",
    )
    q.add_argument("--runs", type=count(1), default=None, help="repeated runs (default 1; --full 3)")
    add_common_args(q)
    q.set_defaults(func=run_quickstart_command)


def run_quickstart_command(a: argparse.Namespace) -> int:
    """``smoothinf quickstart``: ``run_quickstart`` with the flags (None: the mode's default)."""
    from smoothinf.quickstart import ZOO_MODEL

    qc = QuickstartConfig(
        out=a.out,
        model=a.model or ZOO_MODEL,
        train=a.train,
        full=a.full,
        epochs=a.epochs,
        examples=a.examples,
        check_examples=a.check_examples,
        runs=a.runs,
        seed=a.seed,
        device=a.device,
    )
    if a.model and a.train:
        raise SmoothinfError("--model names a zoo model and --train trains one: pass one of them")
    run_quickstart(qc)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    overrides = {
        "checkpoint": args.checkpoint,
        "data": args.data,
        "root": args.root,
        "split": args.split,
        "max_examples": args.max_examples,
        "first_example": args.first_example,
        "attacks": args.attacks,
        "eps": args.eps,
        "votes": args.votes,
        "sigmas": args.sigmas,
        "ms": args.ms,
        "steps": args.steps,
        "attack_m": args.attack_m,
        "apgd_steps": args.apgd_steps,
        "temperatures": args.temperatures,
        "check_examples": args.check_examples,
        "autoattack_check": args.autoattack_check,
        "blackbox_check": args.blackbox_check,
        "convergence_check": args.convergence_check,
        "square_queries": args.square_queries,
        "preset_square_queries": args.preset_square_queries,
        "judgements": args.judgements,
        "crafting": args.crafting,
        "stop_decided": args.stop_decided,
        "runs": args.runs,
        "seed": args.seed,
    }
    protocol = args.config is not None or args.attacks is not None
    if not protocol:
        if not args.checkpoint:
            raise SmoothinfError("pass --checkpoint (and --attacks or --config for the full protocol)")
        split = args.split or "test"
        got = load_checkpoint_and_examples(
            args.checkpoint, args.data, split, args.root, args.max_examples, device, args.first_example or 0
        )
        _note_short_slice(args.max_examples, args.first_example, got.x.shape[0], got.data, split)
        acc = accuracy(got.model, got.x, got.y)
        print(f"{got.data} {split}: clean accuracy {acc:.4f} on {got.x.shape[0]} examples")
        return 0
    if args.config:
        cfg = EvalConfig.from_yaml(args.config, **overrides)
    else:
        cfg = EvalConfig(**{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    check_finite_grid(cfg)
    results = check_output(args.results or Path(cfg.checkpoint).parent / "results.jsonl", "--results")
    report_dir = check_output(args.report_dir or results.parent / "report", "--report-dir", folder=True)
    with output_lock(results, "--results"):
        got, identity = protocol_inputs(cfg, device)
        _note_short_slice(cfg.max_examples, cfg.first_example, got.x.shape[0], got.data, cfg.split)
        store = ResultsStore(results, identity=identity)
        evaluate(got.model, got.x, got.y, config=cfg, results=store, progress=True)
        if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 writes the report
            return 0
        with output_lock(report_dir, "--report-dir"):
            report = write_report(store.records, report_dir)
    print((report.parent / "results.md").read_text())
    print(f"results: {results}; report: {report}")
    return 0


def check_finite_grid(cfg: EvalConfig) -> None:
    """Every sigma and eps of the grid is a finite number (``inf`` / ``nan`` pass ``>= 0`` tests)."""
    for flag, values in (("--sigmas", cfg.sigmas), ("--eps", cfg.eps)):
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise SmoothinfError(f"{flag} must be finite numbers (pixel units), got {bad[0]}")


def _note_short_slice(max_examples, first_example, got: int, data: str, split: str) -> None:
    """A notice on stderr when the split ends before ``max_examples`` examples were taken."""
    if max_examples is not None and got < max_examples:
        start = f" from example {first_example}" if first_example else ""
        print(
            f"note: --max-examples {max_examples}{start}: {data}'s {split} split ends after {got} of them;"
            f" evaluating those {got}",
            file=sys.stderr,
        )


def run_sweep(args: argparse.Namespace) -> int:
    from smoothinf.evaluation.sweeps import ComputeSweepConfig, compute_sweep, write_compute_report

    device = resolve_device(args.device)
    out = check_output(args.out or Path(args.checkpoint).parent / "compute_sweep", "--out", folder=True)
    got = load_checkpoint_and_examples(
        args.checkpoint, args.data, args.split, args.root, args.max_examples, device
    )
    cfg = ComputeSweepConfig(
        sigma=args.sigma,
        m=args.m,
        vote=args.vote,
        eps=args.eps if args.eps is not None else got.info.eps_linf,
        steps=args.steps,
        draws=args.draws,
        attacks=args.attacks,
        runs=args.runs,
        seed=args.seed,
        judgements=args.judgements,
    )
    with output_lock(out / "compute_sweep.jsonl", "--out"):
        records = compute_sweep(
            got.model,
            got.x,
            got.y,
            cfg,
            out / "compute_sweep.jsonl",
            weights_sha256=got.meta.get("weights_sha256"),
        )
        report = write_compute_report(records, out)
    print(report.read_text())
    return 0


def run_report(args: argparse.Namespace) -> int:
    out = check_output(args.out or Path(args.results[0]).parent / "report", "--out", folder=True)
    records = []
    for path in args.results:
        got = read_results(path)
        if not got:
            raise SmoothinfError(f"{path} holds no results")
        records += got
    if len(args.results) > 1:
        records, left_out = merge_slices(records)
        if left_out:
            print(f"note: {left_out} records left out: slices that not every run of their setting has")
    with output_lock(out, "--out"):
        report = write_report(records, out)
    print((report.parent / "results.md").read_text())
    print(f"report: {report}")
    return 0
