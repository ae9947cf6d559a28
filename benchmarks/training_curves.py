"""Validation accuracy per epoch of training runs, side by side (from their ``metrics.jsonl``).

Each run is ``LABEL=FOLDER``, a ``smoothinf train --out`` folder. The table gives, per epoch, each
run's clean and PGD accuracy on the validation images the trainer checks (``eval_examples``,
PGD with ``eval_pgd_steps`` steps at the training eps) and the training seconds up to that epoch:
how much a longer schedule buys over the paper study's.

    python benchmarks/training_curves.py pgd_at=runs/longtrain/pgd_at \\
        pni_w=runs/longtrain/pni_w_pgd_at [--out benchmarks/results/training_length.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from timing import emit


def read_run(folder: Path) -> tuple[dict, list[dict]]:
    """(config, per-epoch records) of a training run folder."""
    config = yaml.safe_load((folder / "config.yaml").read_text())
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return config, [r for r in map(json.loads, lines) if "epoch" in r and "val_pgd" in r]


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="LABEL=FOLDER of a training run")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    runs = {}
    for spec in args.runs:
        label, sep, folder = spec.partition("=")
        if not sep or not label or not folder:
            raise SystemExit(f"expected LABEL=FOLDER, got {spec!r}")
        runs[label] = read_run(Path(folder))
    lines = ["Validation accuracy (%) per epoch: clean / PGD at the training eps.", ""]
    for label, (cfg, recs) in runs.items():
        lines.append(
            f"- {label}: {cfg['model']}, objective {cfg['objective']}, noise {cfg.get('noise')}, "
            f"eps {cfg['eps']}, {cfg['attack_steps']} attack steps, {cfg['optimizer']} lr {cfg['lr']}, "
            f"milestones {cfg.get('milestones')}, {cfg['epochs']} epochs; validation: "
            f"{cfg['eval_examples']} images, PGD-{cfg['eval_pgd_steps']}; {len(recs)} epochs done"
        )
    lines += [
        "",
        "| epoch | " + " | ".join(f"{label} clean | {label} PGD | {label} s" for label in runs) + " |",
        "|---|" + "---|---|---|" * len(runs),
    ]
    epochs = max(len(recs) for _, recs in runs.values())
    for e in range(epochs):
        cells = []
        for _, recs in runs.values():
            r = recs[e] if e < len(recs) else {}
            cells += [_cell(r.get("val_clean")), _cell(r.get("val_pgd")), f"{r['seconds']:.0f}" if r else "-"]
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    best = {label: max(recs, key=lambda r: r["val_pgd"]) for label, (_, recs) in runs.items() if recs}
    lines += [""] + [
        f"- {label}: best PGD accuracy {_cell(r['val_pgd'])}% at epoch {r['epoch']} "
        f"(clean {_cell(r['val_clean'])}%)"
        for label, r in best.items()
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
