"""Reference certified numbers on MNIST from the SmoothMix authors' released certification logs.

The logs (github.com/jh-jeong/smoothmix, ``data/certify/mnist/``) are Cohen et al.'s per-image TSV
files (``idx label predict radius correct time``) of LeNet models certified with N0 = 100,
N = 100,000, alpha = 0.001 on all 10,000 MNIST test images. For each method and sigma this script
recomputes the average certified radius (ACR) and the certified accuracy at radius 0 / 0.5 / 1 /
1.5 / 2 on every 20th test image (idx % 20 == 0: 500 images, the subset this study certifies) and
on all 10,000, per run and as the mean over the released runs (five seeds per setting), and writes
``reference.json`` beside this file with the log files used and the commit they came from. It also
writes ``reference_rows.json``: every run's per-image rows (idx, label, predict, radius, correct) on
the idx % 20 == 0 subset, so that a comparison can be made on any subset of those images
(``page.py`` compares on exactly the images a smoothinf run certified).

    python studies/certified_mnist/reference.py --repo /path/to/smoothmix/.git   # a clone or mirror

``--repo`` is a git directory (``git show`` reads the files of ``--commit``, default HEAD).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from smoothinf.smoothing import read_certify_log, summarize_certification

HERE = Path(__file__).resolve().parent
RADII = (0.0, 0.5, 1.0, 1.5, 2.0)
EVERY = 20
ROOT = "data/certify/mnist"
TEST_IMAGES = 10_000
# The released logs' CERTIFY settings (the SmoothMix authors' certify.py defaults for MNIST).
N0, N, ALPHA = 100, 100_000, 0.001

# (method, sigma) -> (the recipe's settings, the log files of its released runs). Runs: the five
# seeds each setting was released with (consistency's "_0" and SmoothMix's "0" runs are single
# extra runs of a hyper-parameter sweep and are left out).
_CONS = "consistency/cohen/num_2"
_MACER = "macer_deferred30/num_16"
_SALMAN = "salman/pgd_255.0_10_10/num_4"
SETTINGS: dict[str, dict] = {}


def _add(method: str, sigma: float, settings: str, paths: list[str]) -> None:
    SETTINGS[f"{method}/sigma_{sigma:.2f}"] = {
        "method": method,
        "sigma": sigma,
        "settings": settings,
        "logs": [f"{ROOT}/{p}" for p in paths],
    }


_SEEDS = {
    "cohen": {
        0.25: (3870, 4067, 6298, 919, 9555),
        0.5: (1801, 393, 4490, 4608, 880),
        1.0: (2110, 5510, 5991, 8335, 9609),
    },
    "macer": {
        0.25: (12, 1576, 3256, 6753, 8651),
        0.5: (1221, 149, 2869, 4292, 4711),
        1.0: (1549, 4153, 505, 508, 7191),
    },
    "salman": {
        0.25: (3762, 4448, 4935, 7656, 9914),
        0.5: (3916, 4372, 5218, 5947, 647),
        1.0: (1099, 1316, 2083, 5533, 8071),
    },
}
for _s in (0.25, 0.5, 1.0):
    _add("gaussian", _s, "Gaussian augmentation", [f"cohen/noise_{_s:.2f}_{k}" for k in _SEEDS["cohen"][_s]])
    _lbd = 10.0 if _s == 0.25 else 5.0
    _add(
        "consistency",
        _s,
        f"m 2, lambda {_lbd:g}, eta 0.5",
        [f"{_CONS}/lbd_{_lbd}/eta_0.5/noise_{_s:.2f}_{k}" for k in range(1, 6)],
    )
    _ml = 16.0 if _s < 1 else 6.0
    _add(
        "macer",
        _s,
        f"m 16, lambda {_ml:g}, gamma 8, beta 16, deferred after the first lr drop",
        [f"{_MACER}/lbd_{_ml}/gamma_8.0/beta_16.0/noise_{_s:.2f}_{k}" for k in _SEEDS["macer"][_s]],
    )
    _add(
        "smoothadv",
        _s,
        "PGD L2 eps 255/256, 10 steps, m 4, warm-up 10 epochs",
        [f"{_SALMAN}/noise_{_s:.2f}_{k}" for k in _SEEDS["salman"][_s]],
    )
    _steps = {0.25: 3, 0.5: 4, 1.0: 8}[_s]
    _add(
        "smoothmix",
        _s,
        f"eta 1, m 4, {_steps} steps of alpha 1, mix_step 0",
        [f"smoothmix/smix_1.0_{_steps}_m0/tau_1.0/num_4/{k}/noise_{_s}" for k in range(21, 26)],
    )
    _steps5 = {0.25: 2, 0.5: 4, 1.0: 8}[_s]
    _add(
        "smoothmix_eta5",
        _s,
        f"eta 5, m 4, {_steps5} steps of alpha 1, mix_step 0",
        [f"smoothmix/smix_1.0_{_steps5}_m0/tau_5.0/num_4/{k}/noise_{_s}" for k in range(21, 26)],
    )


def _mean(summaries: list[dict]) -> dict:
    return {
        "acr": float(np.mean([s["acr"] for s in summaries])),
        "acr_std": float(np.std([s["acr"] for s in summaries])),
        "certified_accuracy": {
            r: float(np.mean([s["certified_accuracy"][r] for s in summaries]))
            for r in summaries[0]["certified_accuracy"]
        },
    }


def _read(log_dir: Path, path: str) -> list:
    rows = read_certify_log(log_dir / path)
    if [r.idx for r in rows] != list(range(TEST_IMAGES)):
        raise SystemExit(f"{path}: {len(rows)} rows, expected the {TEST_IMAGES:,} test images in order")
    return rows


def compute(log_dir: Path) -> dict:
    """Per setting: the mean over runs on every 20th image and on all images, plus each run's."""
    out = {}
    for key, spec in SETTINGS.items():
        runs, subset, full = [], [], []
        for path in spec["logs"]:
            rows = _read(log_dir, path)
            sub = summarize_certification([r for r in rows if r.idx % EVERY == 0], RADII)
            whole = summarize_certification(rows, RADII)
            subset.append(sub)
            full.append(whole)
            runs.append({"log": path, "every_20th": sub, "all": whole})
        out[key] = {
            "method": spec["method"],
            "sigma": spec["sigma"],
            "settings": spec["settings"],
            "runs": len(runs),
            "every_20th": {"examples": subset[0]["examples"], **_mean(subset)},
            "all": {"examples": full[0]["examples"], **_mean(full)},
            "per_run": runs,
        }
    return out


def subset_rows(log_dir: Path) -> dict:
    """Per setting: the idx and label of every 20th test image and, per released run, its predict,
    radius and correct on those images (lists aligned with idx)."""
    out = {}
    for key, spec in SETTINGS.items():
        runs, idx, label = [], None, None
        for path in spec["logs"]:
            rows = [r for r in _read(log_dir, path) if r.idx % EVERY == 0]
            if idx is None:
                idx, label = [r.idx for r in rows], [r.label for r in rows]
            elif [r.label for r in rows] != label:
                raise SystemExit(f"{path}: labels differ from {spec['logs'][0]}")
            runs.append(
                {
                    "log": path,
                    "predict": [r.predict for r in rows],
                    "radius": [r.radius for r in rows],
                    "correct": [r.correct for r in rows],
                }
            )
        out[key] = {
            "method": spec["method"],
            "sigma": spec["sigma"],
            "idx": idx,
            "label": label,
            "runs": runs,
        }
    return out


def rows_json(doc: dict) -> str:
    """``doc`` (with ``settings`` from ``subset_rows``) as JSON with one line per list: compact,
    and a regenerated file diffs line by line."""
    head = {k: v for k, v in doc.items() if k != "settings"}
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()] + [' "settings": {']
    settings = list(doc["settings"].items())
    for i, (key, s) in enumerate(settings):
        lines.append(f"  {json.dumps(key)}: {{")
        for field in ("method", "sigma", "idx", "label"):
            lines.append(f"   {json.dumps(field)}: {json.dumps(s[field], separators=(',', ':'))},")
        lines.append('   "runs": [')
        for j, run in enumerate(s["runs"]):
            body = json.dumps(run, separators=(",", ":"))
            lines.append(f"    {body}{',' if j < len(s['runs']) - 1 else ''}")
        lines.append("   ]")
        lines.append("  }" + ("," if i < len(settings) - 1 else ""))
    lines += [" }", "}"]
    return "\n".join(lines) + "\n"


def _export(repo: str, commit: str, dest: Path) -> str:
    """Write the logs of ``SETTINGS`` from git directory ``repo`` at ``commit`` under ``dest``;
    returns the full commit hash."""
    sha = subprocess.run(
        ["git", "--git-dir", repo, "rev-parse", commit], check=True, capture_output=True, text=True
    ).stdout.strip()
    for spec in SETTINGS.values():
        for path in spec["logs"]:
            text = subprocess.run(
                ["git", "--git-dir", repo, "show", f"{sha}:{path}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            (dest / path).parent.mkdir(parents=True, exist_ok=True)
            (dest / path).write_text(text)
    return sha


def table(results: dict) -> str:
    """A markdown table of the means: ACR and certified accuracy, every 20th image (all images)."""
    lines = [
        "| method | sigma | ACR 500 (10k) | " + " | ".join(f"r={r:g} 500 (10k)" for r in RADII) + " |",
        "|---" * (3 + len(RADII)) + "|",
    ]
    for v in results.values():
        sub, whole = v["every_20th"], v["all"]
        acc = [(sub["certified_accuracy"][f"{r:g}"], whole["certified_accuracy"][f"{r:g}"]) for r in RADII]
        cells = [f"{sub['acr']:.3f} ({whole['acr']:.3f})"] + [
            f"{100 * a:.1f} ({100 * b:.1f})" for a, b in acc
        ]
        lines.append(f"| {v['method']} | {v['sigma']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="git directory of jh-jeong/smoothmix (clone or mirror)")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--out", default=str(HERE / "reference.json"))
    parser.add_argument("--rows-out", default=str(HERE / "reference_rows.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sha = _export(args.repo, args.commit, Path(tmp))
        results = compute(Path(tmp))
        rows = subset_rows(Path(tmp))
    doc = {
        "source": "https://github.com/jh-jeong/smoothmix",
        "commit": sha,
        "protocol": f"Cohen et al. CERTIFY, N0 {N0}, N {N}, alpha {ALPHA:g}, LeNet, MNIST test set",
        "subset": f"idx % {EVERY} == 0",
        "radii": list(RADII),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    rows_doc = {
        "source": doc["source"],
        "commit": sha,
        "n0": N0,
        "n": N,
        "alpha": ALPHA,
        "test_images": TEST_IMAGES,
        "subset": doc["subset"],
        "columns": "per setting: idx, label; per run: log, predict (-1 abstains), radius, correct",
        "settings": rows,
    }
    Path(args.rows_out).write_text(rows_json(rows_doc))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
