"""Where a smoothed row's time goes: attack steps (forward, backward, noise), picking, judging, the rest.

Profiles ``smoothinf.evaluate`` on one zoo model's hard and soft votes at one sigma (the default
preset, cross-checks off) with ``torch.profiler`` and splits the wall time into:

- attack steps: ``expected_loss`` calls (each step's forward and backward through m noise draws),
  with the backward's operators apart;
- picking: scoring an attack's candidate points with the defended classifier (``select_strongest``);
- judging: the defended classifier's judgements of clean and adversarial points (``judged_correct``);
- the rest: Python, bookkeeping and everything outside those calls (wall time minus the above);
- noise sampling: the sampling operators' own time, wherever they ran (steps and judging).

    python benchmarks/bench_profile.py --model mnist_cnn_small_pgd_at_30ep --sigma 0.25 \
        --examples 50 --threads 1 --out benchmarks/results/profile.md
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import platform
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import smoothinf.attacks.best as best_module
import smoothinf.attacks.judge as judge_module
import smoothinf.attacks.pgd as pgd_module
import smoothinf.attacks.robustness as robustness_module
import smoothinf.evaluation.protocol as protocol_module
from smoothinf import zoo
from smoothinf.data import load_dataset
from smoothinf.evaluation import EvalConfig, evaluate
from timing import emit

LABELS = {"attack steps": "si::attack_steps", "picking": "si::picking", "judging": "si::judging"}


def _labelled(fn, label: str):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def labelled_calls():
    """Wrap the library's step, picking and judging functions in profiler labels (restored after)."""
    patches = [
        (pgd_module, "expected_loss", LABELS["attack steps"]),
        (pgd_module, "select_strongest", LABELS["picking"]),
        (best_module, "select_strongest", LABELS["picking"]),
        (judge_module, "judged_correct", LABELS["judging"]),
        (robustness_module, "judged_correct", LABELS["judging"]),
        (protocol_module, "judged_correct", LABELS["judging"]),
    ]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    try:
        for mod, name, label in patches:
            setattr(mod, name, _labelled(getattr(mod, name), label))
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


def _is_backward(name: str) -> bool:
    return "backward" in name.lower() or name.startswith("autograd::")


def _is_noise(name: str) -> bool:
    return any(k in name for k in ("normal_", "randn", "uniform_", "rand_like", "bernoulli"))


def row(part: str, seconds: float, wall: float) -> str:
    return f"| {part} | {seconds:.1f} | {seconds / wall:.0%} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist_cnn_small_pgd_at_30ep")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--m", type=int, default=64)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--examples", type=int, default=50)
    p.add_argument("--apgd-steps", type=int, default=200)
    p.add_argument("--attack-m", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", "test")[0]
    x, y = data.images[: args.examples], data.labels[: args.examples]
    model = zoo.load(args.model)
    cfg = EvalConfig(
        checkpoint=args.model,
        max_examples=args.examples,
        eps=[args.eps],
        votes=["hard", "soft"],
        sigmas=[args.sigma],
        ms=[args.m],
        apgd_steps=args.apgd_steps,
        attack_m=args.attack_m,
        runs=1,
        check_examples=0,
        device="cpu",
    )
    with labelled_calls(), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        records = evaluate(model, x, y, config=cfg).records
        wall = time.perf_counter() - start
    totals = {e.key: (e.cpu_time_total, e.self_cpu_time_total) for e in prof.key_averages()}
    seconds = {k: totals.get(v, (0.0, 0.0))[0] / 1e6 for k, v in LABELS.items()}
    # operators by self time: the backward's (attack steps only: judging runs without gradients)
    # and noise sampling (attack steps and judging)
    backward = sum(t[1] for k, t in totals.items() if _is_backward(k)) / 1e6
    noise = sum(t[1] for k, t in totals.items() if _is_noise(k)) / 1e6
    rest = max(0.0, wall - sum(seconds.values()))
    smoothed = [r for r in records if r["vote"] != "none"]
    lines = [
        f"## Profile of one sigma's two votes (cpu: {platform.processor() or platform.machine()},"
        f" torch {torch.__version__}, {args.threads} thread(s))",
        "",
        f"{args.model}, first {args.examples} MNIST test images, eps {args.eps}, hard and soft votes at"
        f" sigma {args.sigma:g}, m = {args.m}, default preset (APGD {args.apgd_steps} steps x"
        f" {args.attack_m} draws,"
        " crafted once for both votes), cross-checks off, with the base model's row; under torch.profiler"
        " (which slows Python-heavy code), so shares matter more than seconds.",
        "",
        "| part | seconds | share of wall |",
        "|---|---|---|",
        row("attack steps (expected_loss)", seconds["attack steps"], wall),
        row("- of which backward operators", backward, wall),
        row("picking candidates (select_strongest)", seconds["picking"], wall),
        row("judging (judged_correct)", seconds["judging"], wall),
        row("everything else", rest, wall),
        row("noise sampling operators (in steps and judging)", noise, wall),
        row("wall", wall, wall),
        "",
        "Worst cases (%): "
        + ", ".join(f"{r['vote']} {100 * r['worst_case']:.1f}" for r in smoothed)
        + f"; base row {100 * records[0]['worst_case']:.1f}.",
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
