"""Single-step adversarial training vs PGD-AT on MNIST (mnist_cnn_small, eps 0.3), and the CO guard.

1. PGD-AT (k = 10), FGSM-RS and N-FGSM (and N-FGSM with k = 1) trained for the same number of
   epochs in one process, epoch by epoch in turn (exact resume), so machine load hits all alike;
   epoch time = the training loop's seconds (validation, checkpoints excluded), median over epochs.
2. Robust accuracy of each final model on the first ``--eval`` test images: PGD-40 (5 restarts),
   PGD-100 (2 restarts), step 0.01, and AutoAttack ``standard``; worst case per example over all.
3. The CO guard on induced collapses (action stop, checks every 50 steps): plain FGSM from scratch,
   and plain FGSM fine-tuning of the PGD-AT model; the step at which it fired, and the PGD accuracy
   of the restored weights vs the last good check's. Guard cost = one check's time x checks per
   epoch (every 100 steps + the epoch end) / the N-FGSM epoch time.
4. Cost of one training step (batch 128) of N-FGSM, N-FGSM + GradAlign and PGD-AT.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_single_step.py \
         --out benchmarks/results/single_step.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch

from smoothinf import PGD, AutoAttackAdapter, load_checkpoint
from smoothinf.data import load_splits
from smoothinf.training import build_objective
from smoothinf.training.co_guard import COGuard
from smoothinf.training.trainer import TrainConfig, train
from timing import emit


def robust_eval(model, x, y, eps: float, seed: int) -> dict[str, float]:
    """Accuracies (clean, PGD-40 x5, PGD-100 x2, AutoAttack standard, worst case) and AA seconds."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    out = {"clean": ok.float().mean().item()}
    robust = ok.clone()
    for name, steps, restarts in (("pgd40", 40, 5), ("pgd100", 100, 2)):
        hit = torch.zeros_like(ok)
        for i in range(0, x.shape[0], 500):
            xb, yb = x[i : i + 500], y[i : i + 500]
            x_adv = PGD(model, eps, alpha=0.01, steps=steps, restarts=restarts)(xb, yb, generator=gen)
            with torch.no_grad():
                hit[i : i + 500] = model(x_adv).argmax(1) == yb
        out[name] = hit.float().mean().item()
        robust &= hit
    start = time.perf_counter()
    x_aa = AutoAttackAdapter(model, "linf", eps, "standard", seed=seed, batch_size=500)(x, y)
    out["aa_seconds"] = time.perf_counter() - start
    with torch.no_grad():
        hit = model(x_aa).argmax(1) == y
    out["autoattack"] = hit.float().mean().item()
    out["worst"] = (robust & hit).float().mean().item()
    return out


def step_seconds(objective, model, x, y, repeats: int = 10) -> float:
    """Median seconds of objective + backward on one batch."""
    times = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        objective(model, x, y, torch.Generator().manual_seed(r)).loss.backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--eval", type=int, default=1000)
    parser.add_argument("--adv-weight", type=float, default=0.5, help="w of eq. 6 (1: Madry / the papers)")
    parser.add_argument("--workdir", default="/tmp/bench_single_step")
    parser.add_argument("--train-examples", type=int, default=None, help="smoke runs only")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    common = dict(
        data="mnist",
        model="mnist_cnn_small",
        eps=0.3,
        adv_weight=args.adv_weight,
        optimizer="adam",
        lr=1e-3,
        batch_size=128,
        eval_examples=500,
        device="cpu",
        seed=0,
        max_train_examples=args.train_examples,
    )
    runs = {
        "PGD-AT (k = 10, step 0.05)": dict(objective="adversarial", attack_steps=10, alpha=0.05),
        "FGSM-RS (step 1.25 eps)": dict(objective="fgsm-rs"),
        "N-FGSM (k = 2, step eps)": dict(objective="n-fgsm"),
        "N-FGSM (k = 1, step eps)": dict(objective="n-fgsm", start_noise=1.0),
    }
    cfgs = {
        name: TrainConfig(out=str(work / f"run{i}"), **common, **kw)
        for i, (name, kw) in enumerate(runs.items())
    }
    for epoch in range(1, args.epochs + 1):  # interleaved: each run one epoch in turn
        for name, cfg in cfgs.items():
            print(f"== {name}: epoch {epoch}", flush=True)
            train(dataclasses.replace(cfg, epochs=epoch), resume=epoch > 1)
    splits, _ = load_splits("mnist", ("test",))
    x, y = splits["test"].tensors(args.eval)
    rows = {}
    for name, cfg in cfgs.items():
        records = [json.loads(s) for s in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
        model, _ = load_checkpoint(Path(cfg.out) / "model.safetensors")
        print(f"== evaluating {name}", flush=True)
        rows[name] = {
            "epoch_s": statistics.median(r["epoch_loop_seconds"] for r in records),
            "val_pgd10": records[-1]["val_pgd"],
            **robust_eval(model, x, y, 0.3, seed=0),
        }
        print(name, rows[name], flush=True)

    # CO guard on induced collapses.
    guard_kw = dict(co_guard="stop", co_guard_every=50, epochs=2)
    co_runs = {
        "plain FGSM from scratch": TrainConfig(
            out=str(work / "co_scratch"), **{**common, "objective": "fgsm"}, **guard_kw
        ),
        "plain FGSM fine-tuning the PGD-AT model": TrainConfig(
            out=str(work / "co_finetune"),
            init=str(Path(cfgs["PGD-AT (k = 10, step 0.05)"].out) / "model.safetensors"),
            **{**common, "objective": "fgsm"},
            **guard_kw,
        ),
    }
    splits_val, _ = load_splits("mnist", ("val",))
    co_rows = {}
    for name, cfg in co_runs.items():
        print(f"== CO run: {name}", flush=True)
        metrics = train(cfg)
        checks = metrics["co_guard"]
        fired = next((c for c in checks if c["collapsed"]), None)
        xv, yv = splits_val["val"].tensors(cfg.co_guard_examples)
        model, _ = load_checkpoint(metrics["checkpoint"])
        guard = COGuard(cfg.guard_config(), xv, yv, cfg.eps)
        restored_pgd, _ = guard.accuracies(model)
        good = next((c for c in checks if fired and c["step"] == fired["restored_to"]), None)
        co_rows[name] = {
            "fired_step": fired["step"] if fired else None,
            "fired": fired,
            "last_good": good,
            "restored_pgd": restored_pgd,
            "check_seconds": metrics["co_guard_seconds"] / len(checks),
            "checks": checks,
        }
        print(name, json.dumps(co_rows[name]["fired"]), restored_pgd, flush=True)

    # One training step of each objective (batch 128).
    xs, ys = splits["test"].tensors(128)
    model, _ = load_checkpoint(Path(cfgs["N-FGSM (k = 2, step eps)"].out) / "model.safetensors")
    model.train()
    step_s = {
        "N-FGSM": step_seconds(build_objective("n-fgsm", eps=0.3, weight=1.0), model, xs, ys),
        "N-FGSM + GradAlign": step_seconds(
            build_objective("n-fgsm", eps=0.3, weight=1.0, grad_align=0.2), model, xs, ys
        ),
        "PGD-AT k = 10": step_seconds(
            build_objective("adversarial", eps=0.3, steps=10, weight=1.0), model, xs, ys
        ),
    }

    pgd_name = "PGD-AT (k = 10, step 0.05)"
    t_pgd = rows[pgd_name]["epoch_s"]
    a_pgd = rows[pgd_name]["worst"]
    lines = [
        f"Machine: {platform.machine()}, {torch.get_num_threads()} thread, torch {torch.__version__}, "
        "shared CPU; "
        f"MNIST train 50000, mnist_cnn_small, eps 0.3, w = {args.adv_weight}, Adam lr 1e-3, batch 128, "
        f"{args.epochs} epochs "
        "each, the runs interleaved epoch by epoch in one process. Epoch time: median over epochs of the "
        f"training loop. Robust accuracy on the first {args.eval} test images: PGD-40 (5 restarts) and "
        "PGD-100 (2 restarts) with step 0.01, AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square); "
        "worst = robust to all of them.",
        "",
        "| objective | epoch (s) | / PGD-AT time | clean | PGD-40 | PGD-100 | AutoAttack | worst "
        "| worst - PGD-AT (points) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['epoch_s']:.1f} | {r['epoch_s'] / t_pgd:.2f} | {100 * r['clean']:.1f} | "
            f"{100 * r['pgd40']:.1f} | {100 * r['pgd100']:.1f} | {100 * r['autoattack']:.1f} | "
            f"{100 * r['worst']:.1f} | {100 * (r['worst'] - a_pgd):+.1f} |"
        )
    nf = rows["N-FGSM (k = 2, step eps)"]
    met = nf["worst"] >= a_pgd - 0.02 and nf["epoch_s"] <= t_pgd / 3
    lines += [
        "",
        "Target (N-FGSM, k = 2, within 2 points of PGD-AT at <= 1/3 of its time): "
        f"{'met' if met else 'NOT met'} "
        f"(worst-case {100 * nf['worst']:.1f}% vs {100 * a_pgd:.1f}%, time {nf['epoch_s'] / t_pgd:.2f}x).",
        "",
        "CO guard (action stop, PGD-10 and FGSM on 256 fixed validation images, every 50 steps and at "
        "epoch ends; collapse = PGD accuracy down > 0.2 from the last good check with FGSM accuracy not "
        "down, or FGSM - PGD accuracy > 0.5):",
        "",
        "| induced CO run | fired at step (of 391 per epoch) | check then: PGD / FGSM acc "
        "| last good check: step, PGD / FGSM acc | PGD acc of the restored weights | one check (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in co_rows.items():
        f, g = r["fired"], r["last_good"]
        lines.append(
            f"| {name} | {f['step'] if f else 'never'} | "
            + (f"{f['pgd_acc']:.3f} / {f['fgsm_acc']:.3f}" if f else "-")
            + " | "
            + (f"{g['step']}, {g['pgd_acc']:.3f} / {g['fgsm_acc']:.3f}" if g else "-")
            + f" | {r['restored_pgd']:.3f} | {r['check_seconds']:.2f} |"
        )
    check_s = statistics.mean(r["check_seconds"] for r in co_rows.values())
    per_epoch = 391 // 100 + 1
    lines += [
        "",
        f"Guard cost at the default every = 100: {per_epoch} checks per epoch x {check_s:.2f} s = "
        f"{per_epoch * check_s:.1f} s, {100 * per_epoch * check_s / nf['epoch_s']:.0f}% of an N-FGSM epoch "
        f"({nf['epoch_s']:.1f} s).",
        "",
        "One training step (batch 128, objective + backward, median of 10):",
        "",
        "| objective | step (ms) | / N-FGSM |",
        "|---|---|---|",
    ]
    for name, s in step_s.items():
        lines.append(f"| {name} | {1000 * s:.1f} | {s / step_s['N-FGSM']:.2f}x |")
    emit("\n".join(lines), args.out)
    (work / "raw.json").write_text(json.dumps({"rows": rows, "co": co_rows, "step_s": step_s}, indent=1))


if __name__ == "__main__":
    main()
