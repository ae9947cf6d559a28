"""Both votes of one sigma: the protocol (crafted once, stopping on decided images), the protocol
as it was (crafted per row, every step), and AutoAttack rand.

For each zoo model and sigma, on the first N MNIST test images at eps 0.3, the hard and soft votes
at m draws are evaluated three ways, each timed in the same process:

1. ``smoothinf.evaluate`` with its defaults: ``crafting: shared`` (the default preset's attacks that
   do not depend on the vote run once; every vote is judged on their points) and ``stop_decided``
   (judged APGD runs stop spending steps on images both votes already get wrong), cross-checks off;
2. the same with ``crafting: per-row`` and ``stop_decided`` off (each vote's row crafts its own
   attacks, every step on every image: the protocol before either);
3. the official AutoAttack ``rand`` (APGD-CE + APGD-DLR, 100 steps, EOT 20, on the one-draw soft
   surrogate of sigma, the surrogate picking each image's point) crafted once and judged by both
   votes (``robust_accuracies``, shared points).

Seconds are each way's wall time for the two smoothed rows together (clean judging included; the
base model's row is left out). Worst cases are mean P(correct) over images with the protocol's
judging (16 judgements), so a ratio of times is only a win where the protocol's worst case is at
or below AutoAttack's (one image = 1/N).

    python benchmarks/bench_shared_crafting.py --models mnist_cnn_small_pgd_at_30ep \
        --sigmas 0.1 0.25 --examples 100 --threads 1 --out benchmarks/results/shared_crafting.md
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from smoothinf import zoo
from smoothinf.attacks import robust_accuracies
from smoothinf.data import load_dataset
from smoothinf.evaluation import EvalConfig, evaluate
from smoothinf.evaluation.protocol import autoattack_for, build_defended
from timing import emit

VOTES = ("hard", "soft")


def protocol_row(model, x, y, sigma: float, m: int, new: bool, args) -> tuple[float, dict[str, float]]:
    """(seconds of the two smoothed rows, vote -> worst case) of ``evaluate``: ``new`` with shared
    crafting and the stop on decided images, else per row and every step."""
    cfg = EvalConfig(
        checkpoint="zoo",
        max_examples=int(x.shape[0]),
        eps=[args.eps],
        votes=list(VOTES),
        sigmas=[sigma],
        ms=[m],
        runs=1,
        seed=args.seed,
        check_examples=0,
        apgd_steps=args.apgd_steps,
        attack_m=args.attack_m,
        crafting="shared" if new else "per-row",
        stop_decided=new,
        device="cpu",
    )
    records = evaluate(model, x, y, config=cfg).records
    rows = [r for r in records if r["vote"] != "none"]
    return sum(r["seconds"] for r in rows), {r["vote"]: r["worst_case"] for r in rows}


def autoattack_row(model, x, y, sigma: float, m: int, args) -> tuple[float, dict[str, float]]:
    """(seconds, vote -> worst case) of AutoAttack rand crafted once and judged by both votes."""
    cfg = EvalConfig(checkpoint="zoo", seed=args.seed, device="cpu")
    aa = autoattack_for(model, "hard", sigma, args.eps, cfg)
    defended = [build_defended(model, v, sigma, m) for v in VOTES]
    gens = [torch.Generator().manual_seed(args.seed + i) for i in range(len(VOTES))]
    start = time.perf_counter()
    results = robust_accuracies(defended, x, y, [{"autoattack": aa}] * len(VOTES), gens, batch_size=500)
    seconds = time.perf_counter() - start
    return seconds, {v: r.worst_case_accuracy for v, r in zip(VOTES, results, strict=True)}


def base_rows(models: list[str], x, y, args) -> list[str]:
    """The unsmoothed row of each model: the protocol's (cross-checks off) against the official
    AutoAttack for it (``standard`` on a deterministic model, ``rand`` on a weight-noise one),
    judged by the model itself; a table."""
    lines = [
        "",
        "### The base model's row",
        "",
        "| model | protocol (s) | AutoAttack (s) | version | protocol / AA | worst: protocol / AA |"
        " protocol's attacks, cumulative |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in models:
        model = zoo.load(name)
        cfg = EvalConfig(
            checkpoint="zoo",
            max_examples=int(x.shape[0]),
            eps=[args.eps],
            votes=[],
            runs=1,
            seed=args.seed,
            check_examples=0,
            apgd_steps=args.apgd_steps,
            attack_m=args.attack_m,
            device="cpu",
        )
        (record,) = evaluate(model, x, y, config=cfg).records
        aa = autoattack_for(model, "none", 0.0, args.eps, cfg)
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(args.seed)
        result = robust_accuracies([model], x, y, [{"autoattack": aa}], [gen], batch_size=500)[0]
        seconds = time.perf_counter() - start
        lines.append(
            f"| {name} | {record['seconds']:.1f} | {seconds:.1f} | {aa.version} |"
            f" {record['seconds'] / seconds:.2f}x | {100 * record['worst_case']:.1f} /"
            f" {100 * result.worst_case_accuracy:.1f} |"
            f" {', '.join(f'{k} {100 * v:.1f}' for k, v in record['attacks'].items())} |"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mnist_cnn_small_pgd_at_30ep"])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--m", type=int, default=64)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--examples", type=int, default=100)
    p.add_argument("--apgd-steps", type=int, default=200)
    p.add_argument("--attack-m", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--base-rows", action="store_true", help="only the base models' rows against AutoAttack")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", "test")[0]
    x, y = data.images[: args.examples], data.labels[: args.examples]
    if args.base_rows:
        emit("\n".join(base_rows(args.models, x, y, args)), args.out)
        return
    lines = [
        f"## Both votes of one sigma (cpu: {platform.processor() or platform.machine()},"
        f" torch {torch.__version__}, {args.threads} thread(s))",
        "",
        f"First {args.examples} MNIST test images, eps {args.eps}, hard and soft votes at m = {args.m},"
        f" default preset (APGD {args.apgd_steps} steps x {args.attack_m} draws), cross-checks off;"
        " worst cases in %, 16 judgements per point.",
        "",
        "| model | sigma | protocol (s) | as it was (s) | AutoAttack rand (s) | protocol / AA |"
        " protocol / as it was | worst hard: protocol / as it was / AA |"
        " worst soft: protocol / as it was / AA |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.models:
        model = zoo.load(name)
        for sigma in args.sigmas:
            shared_s, shared_w = protocol_row(model, x, y, sigma, args.m, True, args)
            per_row_s, per_row_w = protocol_row(model, x, y, sigma, args.m, False, args)
            aa_s, aa_w = autoattack_row(model, x, y, sigma, args.m, args)
            worst = [" / ".join(f"{100 * w[v]:.1f}" for w in (shared_w, per_row_w, aa_w)) for v in VOTES]
            lines.append(
                f"| {name} | {sigma:g} | {shared_s:.1f} | {per_row_s:.1f} | {aa_s:.1f}"
                f" | {shared_s / aa_s:.2f}x | {shared_s / per_row_s:.2f}x | {worst[0]} | {worst[1]} |"
            )
            print(lines[-1], flush=True)
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
