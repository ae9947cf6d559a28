"""The MNIST quickstart: the library's whole promise on a zoo model in under 5 minutes on 2 CPU cores.

Default (``smoothinf quickstart``, ``make demo``): load the zoo's PGD-AT CNN
(``mnist_cnn_small_pgd_at_6ep``, no training), show a few smoothed predictions (Cohen's PREDICT
with abstention), rate the base model and its smoothed version (hard vote, sigma 0.25, m 64) side
by side under the ``default`` attack preset with every cross-check (official AutoAttack, Square,
twice the budget), certify the smoothed classifier (L2), and write ``report.md`` with tables and
plots. Attacks keep their full budget (APGD 200 steps x 16 draws); to fit the time it evaluates
``QUICK_EXAMPLES`` images, one run, and the report says so with the 95% interval that gives.

``--full``: the long version (200 images, 3 runs, hard and soft votes at sigma 0.1 and 0.25,
cross-checks on the first 50). ``--train``: train the model first (6-epoch PGD-AT into
``out/model``; a finished training there is reused, an interrupted one is resumed, never taken as
finished).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from smoothinf.data import load_dataset
from smoothinf.evaluation.config import EvalConfig
from smoothinf.evaluation.report import aggregate, setting_name, write_report
from smoothinf.evaluation.results import ResultsStore, evaluation_identity, fingerprint_of, weights_digest
from smoothinf.evaluation.sanity import run_sanity_checks
from smoothinf.evaluation.verdict import evaluate
from smoothinf.models import load_checkpoint, read_sidecar
from smoothinf.smoothing import SmoothedClassifier, certified_accuracy, certify
from smoothinf.smoothing.statistics import wilson
from smoothinf.training.trainer import TrainConfig, train
from smoothinf.utils import resolve_device

ZOO_MODEL = "mnist_cnn_small_pgd_at_6ep"
QUICK_EXAMPLES = 100
"""Images of the default quickstart: as many as finish in under 5 minutes on 2 CPU cores with every
cross-check and the full attack budget (its measured time is in the README)."""
FULL_EXAMPLES, FULL_RUNS, FULL_CHECK_EXAMPLES = 200, 3, 50
QUICK_SIGMA = 0.25
"""The smoothed row of the default quickstart, and the sigma it certifies at (the same classifier)."""
PREDICT_IMAGES, PREDICT_N, ALPHA = 8, 1000, 0.001


@dataclass
class QuickstartConfig:
    """``examples``, ``runs``, ``check_examples``: None picks the mode's (quick: ``QUICK_EXAMPLES``,
    1 run, cross-checks on every image; ``full``: 200, 3 runs, 50)."""

    out: str = "runs/quickstart"
    model: str = ZOO_MODEL
    train: bool = False
    full: bool = False
    epochs: int = 6
    examples: int | None = None
    runs: int | None = None
    check_examples: int | None = None
    certify_examples: int = 200
    certify_n: int = 1000
    apgd_steps: int = 200
    attack_m: int = 16
    seed: int = 0
    device: str = "auto"


def training_finished(path: str | Path) -> bool:
    """Whether the checkpoint at ``path`` ends a finished training: its sidecar's last epoch is the
    training's last (``model.safetensors`` is written after every epoch, so its presence alone
    says nothing)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        meta = read_sidecar(path)
    except ValueError:
        return False
    epoch = (meta.get("metrics") or {}).get("epoch")
    epochs = (meta.get("training") or {}).get("epochs")
    return isinstance(epoch, int) and isinstance(epochs, int) and epoch >= epochs


def trained_model(qc: QuickstartConfig, device: torch.device) -> Path:
    """``out/model/model.safetensors`` of a finished 6-epoch PGD-AT: reused when finished with
    ``qc.epochs``, else trained, resuming an interrupted run from its ``last.pt``."""
    folder = Path(qc.out) / "model"
    ckpt = folder / "model.safetensors"
    if training_finished(ckpt) and read_sidecar(ckpt)["training"]["epochs"] == qc.epochs:
        print(f"reusing the finished training {ckpt} (delete {folder} to retrain)")
        return ckpt
    resumed = (folder / "last.pt").exists()
    print(
        f"{'resuming' if resumed else 'training'} mnist_cnn_small with PGD-AT (eps 0.3, {qc.epochs} epochs)"
        f" -> {ckpt}"
    )
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
            out=str(folder),
        ),
        resume=True,  # continues an interrupted run; starts one when there is none
    )
    return ckpt


def _predictions(model, x, y, sigma: float, seed: int) -> list[str]:
    """A markdown table of the first images: label, base prediction, smoothed prediction (PREDICT
    with abstention, hard vote, ``PREDICT_N`` draws, alpha ``ALPHA``) and its vote share."""
    smoothed = SmoothedClassifier(model, sigma, PREDICT_N, "hard")
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad():
        base = model(x).argmax(1)
        counts = smoothed.vote_counts(x, gen)
        pred = smoothed.predict(x, gen, alpha=ALPHA, n=PREDICT_N)
    rows = [
        f'Smoothed prediction (`SmoothedClassifier(model, sigma={sigma:g}, m={PREDICT_N}, vote="hard")'
        f".predict(x, alpha={ALPHA})`: -1 abstains) of the first {x.shape[0]} test images:",
        "",
        "| image | label | base | smoothed | top vote share |",
        "|---|---|---|---|---|",
    ]
    share = counts.max(1).values / counts.sum(1)
    for i in range(x.shape[0]):
        rows.append(f"| {i} | {int(y[i])} | {int(base[i])} | {int(pred[i])} | {float(share[i]):.3f} |")
    return rows


def run_quickstart(qc: QuickstartConfig) -> Path:
    """Load the zoo model (or train it with ``qc.train``), evaluate, certify, report; returns the
    path of ``report.md``."""
    start = time.time()
    device = resolve_device(qc.device)
    out = Path(qc.out)
    if qc.train:
        ckpt = trained_model(qc, device)
        model, _ = load_checkpoint(ckpt, device=device)
        source = f"`{ckpt}` (trained here: PGD-AT, eps 0.3, w = 0.5, {qc.epochs} epochs)"
        checkpoint = str(ckpt)
    else:
        import smoothinf.zoo as zoo

        model = zoo.load(qc.model, device=str(device))
        about = zoo.card(qc.model)["description"]
        source = f"the zoo's `{qc.model}` ({about}; `smoothinf models show {qc.model}`)"
        checkpoint = f"zoo:{qc.model}"
    train_seconds = time.time() - start
    n = qc.examples or (FULL_EXAMPLES if qc.full else QUICK_EXAMPLES)
    runs = qc.runs or (FULL_RUNS if qc.full else 1)
    checks = qc.check_examples if qc.check_examples is not None else (FULL_CHECK_EXAMPLES if qc.full else n)
    test, _ = load_dataset("mnist", "test")
    x, y = test.tensors(n)
    cfg = EvalConfig(
        checkpoint=checkpoint,
        data="mnist",
        split="test",
        max_examples=x.shape[0],
        eps=[0.3],
        votes=["hard", "soft"] if qc.full else ["hard"],
        sigmas=[0.1, 0.25] if qc.full else [QUICK_SIGMA],
        ms=[64],
        attacks=["default"],
        apgd_steps=qc.apgd_steps,
        attack_m=qc.attack_m,
        check_examples=min(checks, x.shape[0]),
        runs=runs,
        seed=qc.seed,
        device=str(device),
    )
    identity = evaluation_identity(cfg, weights_digest(model), x, y, device)
    # one file per identity: a rerun resumes its own rows, never mixes with another model's or mode's
    store = ResultsStore(out / "records" / f"{fingerprint_of(identity)}.jsonl", identity=identity)
    predictions = _predictions(model, x[:PREDICT_IMAGES].to(device), y[:PREDICT_IMAGES], QUICK_SIGMA, qc.seed)
    eval_start = time.time()
    evaluate(model, x, y, config=cfg, results=store, progress=True)
    eval_seconds = time.time() - eval_start
    sanity = [c.line() for c in run_sanity_checks(model, x.to(device), y.to(device), 0.3)]
    xc, yc = test.tensors(qc.certify_examples)
    pred, radius = certify(
        model,
        xc.to(device),
        QUICK_SIGMA,
        n0=100,
        n=qc.certify_n,
        alpha=ALPHA,
        generator=torch.Generator(device=device).manual_seed(qc.seed),
    )
    correct = (pred == yc).numpy()
    wall = time.time() - start
    rows = aggregate(store.records)
    intervals = []
    for (vote, sigma, m, eps), row in rows.items():
        mean = row["worst_case"][0]
        lo, hi = wilson(mean * row["n"], row["n"])
        intervals.append(
            f"- {setting_name(vote, sigma, m)}, eps {eps:g}: worst case {100 * mean:.1f}%, 95% interval"
            f" [{100 * lo:.1f}, {100 * hi:.1f}] over its {row['n']} images (Wilson)"
        )
    mode = (
        f"the long version (--full): {x.shape[0]} images x {runs} runs"
        if qc.full
        else f"{x.shape[0]} images x {runs} run, to fit 5 minutes on 2 CPU cores without weakening any attack"
        " (`smoothinf quickstart --full` evaluates 200 images x 3 runs)"
    )
    preamble = "\n".join(
        [
            f"MNIST quickstart on {source}, evaluated on the first {x.shape[0]} test images: {mode}.",
            f"Wall time {wall:.0f} s on {torch.get_num_threads()} CPU threads ({device}): model"
            f" {train_seconds:.0f} s, protocol {eval_seconds:.0f} s.",
            "",
            *predictions,
            "",
            f"How many images, and what that buys: {x.shape[0]} images give the worst cases below a 95%"
            " interval this wide (the spread over the images dominates; the runs' std below covers the"
            " attacks' and the judge's randomness only):",
            "",
            *intervals,
        ]
    )
    report = write_report(
        store.records,
        out,
        sanity,
        {
            "radius": radius.numpy(),
            "correct": correct,
            "sigma": QUICK_SIGMA,
            "n0": 100,
            "n": qc.certify_n,
            "alpha": ALPHA,
        },
        preamble,
    )
    print((out / "results.md").read_text())
    for line in intervals + sanity:
        print(line)
    cert = certified_accuracy(radius.numpy(), correct, [0.25, 0.5])
    print(
        f"certified accuracy (L2, sigma {QUICK_SIGMA:g}, {len(correct)} images, n {qc.certify_n}):"
        f" {100 * cert[0]:.1f}% at radius 0.25, {100 * cert[1]:.1f}% at 0.5"
    )
    print(f"report: {report} ({x.shape[0]} images, {runs} run{'s' if runs != 1 else ''}, {wall:.0f} s)")
    return report
