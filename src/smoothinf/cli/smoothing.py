"""``smoothinf predict`` and ``smoothinf certify``.

Both draw their noise keyed by example (``smoothinf.noise.keyed``): the draws of example i are a
function of (--seed, stage, i = its index in the data split, draw index), so a row depends only on
the model, the example, sigma, the draw counts, alpha, the noise and the seed, never on
--batch-size, --examples-per-step, --max-examples, --skip or the order of the examples.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from smoothinf.cli import add_common_args, count
from smoothinf.errors import SmoothinfError, naming
from smoothinf.evaluation.loading import load_checkpoint_and_examples
from smoothinf.evaluation.report import plot_certified
from smoothinf.evaluation.results import (
    mismatch_message,
    read_lines,
    tensor_digest,
    truncate_to,
    weights_digest,
)
from smoothinf.noise import KEYED_STREAM, NOISE_FAMILIES
from smoothinf.smoothing import (
    VOTES,
    SmoothedClassifier,
    average_certified_radius,
    certified_accuracy,
    certify,
    check_abstain_vote,
    check_certifiable,
    predict_with_abstain,
)
from smoothinf.utils import check_output, output_lock, resolve_device

TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
PROVENANCE = "smoothinf-certify"
RADII = tuple(np.round(np.arange(0.0, 4.01, 0.25), 2))


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", required=True, help="model checkpoint (.safetensors)")
    p.add_argument("--data", default=None, help="data set (default: the checkpoint's)")
    p.add_argument("--root", default=None, help="folder of the data set files (CIFAR)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--max-examples", type=count(1), default=None)
    p.add_argument(
        "--batch-size", type=count(1), default=None, help="rows per forward (default: by input size)"
    )
    p.add_argument("--noise", default="gaussian", choices=NOISE_FAMILIES)
    add_common_args(p)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="accuracy of the smoothed classifier")
    _add_data_args(p)
    p.add_argument("--sigma", type=float, required=True, help="noise std (pixel units)")
    p.add_argument("--m", type=count(1), default=32, help="noise draws per example")
    p.add_argument("--vote", default="hard", choices=VOTES)
    p.add_argument("--alpha", type=float, default=None, help="abstain unless significant at level alpha")
    p.add_argument(
        "--examples-per-step", type=count(1), default=256, help="examples per call (does not change a result)"
    )
    p.set_defaults(func=run_predict)

    c = subparsers.add_parser("certify", help="L2 certificates of the hard-vote smoothed classifier")
    _add_data_args(c)
    c.add_argument("--sigma", type=float, required=True)
    c.add_argument("--n0", type=count(1), default=100)
    c.add_argument("--n", type=count(1), default=100_000)
    c.add_argument("--alpha", type=float, default=0.001)
    c.add_argument("--skip", type=count(1), default=1, help="certify every k-th example")
    c.add_argument(
        "--out",
        required=True,
        help="TSV path; resumable: OUT.json records what produced it and a rerun with other settings"
        " is refused",
    )
    c.add_argument(
        "--examples-per-step",
        type=count(1),
        default=16,
        help="examples per certify call and table write (does not change a row)",
    )
    c.set_defaults(func=run_certify)


def _check_sigma_alpha(args: argparse.Namespace, certifying: bool) -> None:
    if not args.sigma >= 0 or (certifying and args.sigma == 0):
        raise SmoothinfError(f"--sigma must be {'> 0' if certifying else '>= 0'}, got {args.sigma}")
    if args.alpha is not None and not 0.0 < args.alpha < 1.0:
        raise SmoothinfError(f"--alpha must lie in (0, 1), got {args.alpha}")


def _load(args: argparse.Namespace):
    device = resolve_device(args.device)
    got = load_checkpoint_and_examples(
        args.checkpoint, args.data, args.split, args.root, args.max_examples, device
    )
    return got.model, got.meta, got.data, got.dataset, got.x, got.y, device


def run_predict(args: argparse.Namespace) -> int:
    _check_sigma_alpha(args, certifying=False)
    if args.alpha is not None:
        check_abstain_vote(args.vote)
    model, _, _, _, x, y, device = _load(args)
    smoothed = SmoothedClassifier(
        model, args.sigma, args.m, args.vote, args.noise, batch_size=args.batch_size
    )
    preds = []
    step = args.examples_per_step
    for i in tqdm(range(0, x.shape[0], step), desc="predict", unit="batch"):
        xb = x[i : i + step].to(device)
        keys = {"index": torch.arange(i, i + xb.shape[0]), "seed": args.seed}  # split indices
        if args.alpha is None:
            preds.append(smoothed.predict(xb, **keys).cpu())
        else:
            preds.append(predict_with_abstain(smoothed, xb, args.m, args.alpha, **keys).cpu())
    pred = torch.cat(preds)
    acc = (pred == y).float().mean().item()
    line = f"smoothed accuracy {acc:.4f} (sigma {args.sigma}, m {args.m}, vote {args.vote}, n {len(y)})"
    if args.alpha is not None:
        line += f"; abstain rate {(pred == -1).float().mean().item():.4f}"
    print(line)
    return 0


def certify_identity(args: argparse.Namespace, meta: dict, model, name: str, data, device) -> dict:
    """Everything that changes a certify row: weights, data (name, split, a hash of the whole
    split), sigma, n0, n, alpha, noise, seed, the noise stream scheme (``KEYED_STREAM``: draws keyed
    by example) and device type (the draws are generated there); plus skip, which selects the
    examples the table holds. ``--batch-size`` and ``--examples-per-step`` change no draw and are
    left out, so a resume may change them; ``--max-examples`` may grow on resume: the table then
    holds more examples of the same split."""
    return {
        "format": PROVENANCE,
        "weights_sha256": weights_digest(model),  # the tensors' digest, not the file's bytes
        "data": {"name": name, "split": args.split, "sha256": tensor_digest(data.images, data.labels)},
        "sigma": float(args.sigma),
        "n0": args.n0,
        "n": args.n,
        "alpha": float(args.alpha),
        "noise": args.noise,
        "seed": args.seed,
        "skip": args.skip,
        "noise_stream": KEYED_STREAM,
        "device": device.type,
    }


def provenance_path(out: Path) -> Path:
    """The sidecar of a certify TSV: ``OUT.json``."""
    return Path(str(out) + ".json")


def _read_rows(path: Path) -> tuple[list[list[str]], int | None]:
    """Rows (lists of 6 fields) of a certify TSV and the offset of a torn last line (None: intact;
    -1: a complete last row without its newline). An example index met twice is refused: two
    writers at once would count it twice."""
    lines, torn_at = read_lines(path, "not a certify table: choose another --out")
    if not lines:
        return [], None
    if tuple(lines[0].split("\t")) != TSV_COLUMNS:
        raise SmoothinfError(f"{path} is not a certify TSV (header {lines[0][:60]!r}); choose another --out")
    rows: list[list[str]] = []
    seen: dict[int, int] = {}
    for i, line in enumerate(lines[1:], 2):
        fields = line.rstrip("\r").split("\t")
        try:
            ok = len(fields) == len(TSV_COLUMNS) and [int(fields[0]), int(fields[2]), float(fields[3])]
            ok = ok and fields[-1] != "" and float(fields[-1]) >= 0
        except ValueError:
            ok = False
        if not ok:
            if torn_at is not None and i == len(lines):
                print(
                    f"smoothinf: {path}:{i}: the last row was cut by an interrupted write; it is dropped"
                    " and its example certified again",
                    file=sys.stderr,
                )
                return rows, torn_at  # cut mid-write: recompute that example
            raise SmoothinfError(f"{path}:{i}: malformed certify row {line[:60]!r}; remove that line")
        index = int(fields[0])
        if index in seen:
            raise SmoothinfError(
                f"{path}:{i}: example {index} again (first on line {seen[index]}): two runs wrote to this"
                " table at once; keep one of the two rows (or delete the table and rerun)"
            )
        seen[index] = i
        rows.append(fields)
    return rows, (None if torn_at is None else -1)


def _resume_state(out: Path, identity: dict) -> tuple[set[int], int | None]:
    """Indices already certified in ``out`` under ``identity`` and the torn-line offset; refuses a
    file produced by anything else with one line naming the differing field."""
    side = provenance_path(out)
    if not out.exists() or out.stat().st_size == 0:
        return set(), None
    try:
        recorded = json.loads(side.read_text(encoding="utf-8")) if side.exists() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SmoothinfError(
            f"{side}: corrupt provenance JSON; delete {out} and {side.name} to restart"
        ) from None
    stream = recorded.get("noise_stream") if isinstance(recorded, dict) else None
    if isinstance(recorded, dict) and recorded.get("format") == PROVENANCE and stream != KEYED_STREAM:
        how = f"noise stream {stream!r}" if stream else "noise drawn per block of examples (older smoothinf)"
        raise SmoothinfError(
            f"{out} was certified with {how}, this run draws noise {KEYED_STREAM!r}: its rows cannot be"
            " extended; start a new --out (or delete it)"
        )
    if recorded != identity:
        raise SmoothinfError(mismatch_message(out, recorded, identity, "--out"))
    rows, torn_at = _read_rows(out)
    return {int(r[0]) for r in rows}, torn_at


def _start_table(out: Path, identity: dict) -> None:
    """A new table: provenance first, then the header; a failed write (a full disk) leaves neither."""
    side = provenance_path(out)
    tmp = side.with_name(side.name + ".tmp")
    try:
        with naming(tmp):
            tmp.write_text(json.dumps(identity, indent=1) + "\n")
            os.replace(tmp, side)
        with naming(out):
            out.write_text("\t".join(TSV_COLUMNS) + "\n")
    except OSError:
        for path in (tmp, side, out):
            path.unlink(missing_ok=True)
        raise


def run_certify(args: argparse.Namespace) -> int:
    _check_sigma_alpha(args, certifying=True)
    check_certifiable(args.noise)
    out = check_output(args.out, "--out")
    png = check_output(out.with_suffix(".png"), "--out (its plot)")
    check_output(provenance_path(out), "--out (its provenance)")
    model, meta, name, data, x, y, device = _load(args)
    identity = certify_identity(args, meta, model, name, data, device)
    with output_lock(out, "--out"):
        rows = _certify_rows(args, out, identity, model, x, y, device)
    radius = np.array([float(r[3]) for r in rows])
    correct = np.array([r[4] == "1" for r in rows])
    acc = certified_accuracy(radius, correct, RADII)
    print("| radius | " + " | ".join(f"{r:g}" for r in RADII if r <= 1.5 * args.sigma * 4) + " |")
    shown = [a for r, a in zip(RADII, acc, strict=True) if r <= 1.5 * args.sigma * 4]
    print("| certified accuracy | " + " | ".join(f"{a:.3f}" for a in shown) + " |")
    acr = average_certified_radius(radius, correct)
    print(f"ACR {acr:.3f} (average certified radius, abstentions and errors 0)")
    print(f"{len(radius)} examples in {out} (provenance {provenance_path(out).name})", flush=True)
    plot_certified(radius, correct, args.sigma, png)  # optional: after the numbers are out
    print(f"plot {png}")
    return 0


def _certify_rows(args, out: Path, identity: dict, model, x, y, device) -> list[list[str]]:
    """Certify the examples ``out`` does not hold yet (appending a row each) and return every row."""
    done, torn_at = _resume_state(out, identity)
    selected = list(range(0, x.shape[0], args.skip))
    stray = sorted(done - set(selected))
    if stray:
        raise SmoothinfError(
            f"{out} holds example {stray[-1]}, beyond this run's {x.shape[0]} examples; pass"
            f" --max-examples {stray[-1] + 1} or more, or another --out"
        )
    with naming(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    if not done and torn_at is None:
        _start_table(out, identity)
    elif torn_at is not None and torn_at >= 0:
        with naming(out):
            truncate_to(out, torn_at)
    elif torn_at == -1:
        with naming(out), out.open("a") as f:
            f.write("\n")
    todo = [i for i in selected if i not in done]
    step = args.examples_per_step
    with naming(out), out.open("a") as f:
        for block in tqdm(
            [todo[s : s + step] for s in range(0, len(todo), step)], desc="certify", unit="batch"
        ):
            start = time.time()
            # draws keyed by each example's index in the split: a row depends on no other example
            pred, radius = certify(
                model,
                x[block].to(device),
                args.sigma,
                args.n0,
                args.n,
                args.alpha,
                args.batch_size,
                noise=args.noise,
                index=torch.tensor(block, dtype=torch.int64),
                seed=args.seed,
            )
            per = (time.time() - start) / len(block)
            for k, i in enumerate(block):
                correct = int(pred[k].item() == y[i].item())
                f.write(
                    f"{i}\t{y[i].item()}\t{pred[k].item()}\t{radius[k].item():.4f}\t{correct}\t{per:.3f}\n"
                )
            f.flush()
            os.fsync(f.fileno())
    return _read_rows(out)[0]
