"""The MNIST quickstart: PGD-AT a small CNN, evaluate base vs smoothed under the ``default`` attack
preset (APGD through the noise, judged by the smoothed classifier) with the AutoAttack, black-box
and doubled-budget cross-checks on the first 50 examples, certify, and write ``report.md``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smoothinf.data import load_dataset
from smoothinf.evaluation.config import EvalConfig
from smoothinf.evaluation.protocol import evaluate_grid
from smoothinf.evaluation.report import write_report
from smoothinf.evaluation.results import ResultsStore, evaluation_identity
from smoothinf.evaluation.sanity import run_sanity_checks
from smoothinf.models import load_checkpoint
from smoothinf.smoothing import certify
from smoothinf.training.trainer import TrainConfig, train
from smoothinf.utils import resolve_device


@dataclass
class QuickstartConfig:
    out: str = "runs/quickstart"
    epochs: int = 6
    examples: int = 200
    certify_examples: int = 200
    certify_n: int = 1000
    runs: int = 3
    apgd_steps: int = 200
    attack_m: int = 16
    check_examples: int = 50
    full: bool = False
    seed: int = 0
    device: str = "auto"


def run_quickstart(qc: QuickstartConfig) -> Path:
    """Train (or reuse the cached checkpoint in ``out/model``), evaluate, certify, report."""
    start = time.time()
    device = resolve_device(qc.device)
    out = Path(qc.out)
    ckpt = out / "model" / "model.safetensors"
    if ckpt.exists():
        print(f"reusing the trained model {ckpt} (delete it to retrain)")
    else:
        print(f"training mnist_cnn_small with PGD-AT (eps 0.3, {qc.epochs} epochs) -> {ckpt}")
        train(
            TrainConfig(
                data="mnist",
                model="mnist_cnn_small",
                objective="adversarial",
                adv_weight=0.5,
                eps=0.3,
                alpha=0.05,
                attack_steps=10,
                epochs=qc.epochs,
                seed=qc.seed,
                device=str(device),
                out=str(out / "model"),
            ),
            resume=True,  # an interrupted quickstart continues its own run
        )
    train_seconds = time.time() - start
    model, meta = load_checkpoint(ckpt, device=device)
    test, _ = load_dataset("mnist", "test")
    n = None if qc.full else qc.examples
    x, y = test.tensors(n)
    cfg = EvalConfig(
        checkpoint=str(ckpt),
        data="mnist",
        split="test",
        max_examples=x.shape[0],
        eps=[0.3],
        votes=["hard", "soft"],
        sigmas=[0.1, 0.25],
        ms=[64],
        attacks=["default"],
        steps=20,
        apgd_steps=qc.apgd_steps,
        attack_m=qc.attack_m,
        check_examples=min(qc.check_examples, x.shape[0]),
        runs=qc.runs,
        seed=qc.seed,
        device=str(device),
    )
    identity = evaluation_identity(cfg, meta["weights_sha256"], x, y, device)  # a retrained model
    store = ResultsStore(out / "results.jsonl", identity=identity)  # never mixes with old rows
    evaluate_grid(cfg, model, x, y, store)
    sanity = [c.line() for c in run_sanity_checks(model, x[:200].to(device), y[:200].to(device), 0.3)]
    nc = x.shape[0] if qc.full else qc.certify_examples
    xc, yc = test.tensors(nc)
    sigma = 0.25
    pred, radius = certify(
        model,
        xc.to(device),
        sigma,
        n0=100,
        n=qc.certify_n,
        alpha=0.001,
        generator=torch.Generator(device=device).manual_seed(qc.seed),
    )
    correct = (pred == yc).numpy()
    wall = time.time() - start
    preamble = (
        f"MNIST quickstart: mnist_cnn_small trained with PGD-AT (eps 0.3, w = 0.5, {qc.epochs} epochs; "
        f"{train_seconds:.0f} s including any reuse), evaluated on the first {x.shape[0]} test images. "
        f"Total wall time {wall:.0f} s on {torch.get_num_threads()} CPU threads."
    )
    report = write_report(
        store.records,
        out,
        sanity,
        {
            "radius": radius.numpy(),
            "correct": correct,
            "sigma": sigma,
            "n0": 100,
            "n": qc.certify_n,
            "alpha": 0.001,
        },
        preamble,
    )
    print((out / "results.md").read_text())
    for line in sanity:
        print(line)
    print(f"certified accuracy at radius 0.5: {np.mean(correct & (radius.numpy() >= 0.5)):.3f}")
    print(f"report: {report} ({wall:.0f} s)")
    return report
