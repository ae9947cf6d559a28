"""The certified-MNIST page (issue 42): smoothinf's LeNets against the SmoothMix authors' logs.

    python studies/certified_mnist/page.py [--results results/certified_mnist] [--out docs/certified-mnist.md]

Reads, and nothing else: ``RESULTS/<method>_sigma<sigma>.tsv`` (``smoothinf certify`` tables) with
their provenance ``.tsv.json``; the training ``config.yaml`` and ``metrics.jsonl`` of each run,
copied to ``RESULTS/models/<recipe>/``; the packaged recipes; ``reference_rows.json`` beside this
file (``reference.py`` writes it from the released logs); the checkpoint a fine-tuned run started
from (its config's ``init``), when it is in this checkout, to check it against the Gaussian table's
weights. Each run is compared with the reference on exactly the test images it certified.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import yaml
from scipy.stats import beta, norm

from smoothinf.errors import SmoothinfError
from smoothinf.evaluation.results import weights_digest
from smoothinf.models import load_checkpoint
from smoothinf.recipes import recipe_path
from smoothinf.smoothing import average_certified_radius, certified_accuracy, read_certify_log
from smoothinf.smoothing.statistics import clopper_pearson_lower, wilson
from smoothinf.training.trainer import TrainConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RADII = (0.0, 0.5, 1.0, 1.5, 2.0)
# The targets, on the same images: ACR within ACR_TOLERANCE[method] of the reference,
# certified accuracy within ACCURACY_TOLERANCE at every radius up to 2 sigma.
ACR_TOLERANCE = {
    "gaussian": 0.03,
    "consistency": 0.03,
    "macer": 0.05,
    "smoothadv": 0.03,
    "smoothmix": 0.05,
    "smoothmix_eta5": 0.05,  # SmoothMix with eta 5: the SmoothMix target
}
TRIMMED = "trimmed"
"""Folder (under the results) of trimmed runs a full-recipe run replaced: the page sets them side by side."""
ACCURACY_TOLERANCE = 0.02
METHODS = ("gaussian", "consistency", "macer", "smoothadv", "smoothmix", "smoothmix_eta5")
TSV_NAME = re.compile(r"(?P<method>[a-z_0-9]+?)_sigma(?P<sigma>[0-9.]+)\.tsv")


def within(gap: float, tolerance: float) -> bool:
    """Whether a gap meets a target of ``tolerance`` (fractions; 1e-12 absorbs float rounding of
    differences such as 0.97 - 0.99)."""
    return abs(gap) <= tolerance + 1e-12


def certify_cap(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can give with ``n`` draws: sigma * Phi^-1 of the one-sided
    Clopper-Pearson lower bound when all n draws agree, which is alpha^(1/n)."""
    return float(sigma * norm.ppf(clopper_pearson_lower(n, n, alpha)))


def rebound(radius: np.ndarray, sigma: float, n_from: int, n_to: int, alpha: float) -> np.ndarray:
    """Radii certified with ``n_from`` draws, re-bounded as if certified with ``n_to`` (an
    approximation): the vote fraction whose Clopper-Pearson lower bound gives each radius is found,
    assumed to hold with ``n_to`` draws, and bounded again; 0 where the new bound is <= 1/2 (an
    abstention). A radius at or above the ``n_from`` cap is taken as all draws agreeing."""
    radius = np.asarray(radius, dtype=np.float64)
    target = norm.cdf(radius / sigma)
    lo, hi = np.full(radius.shape, 0.5 * n_from), np.full(radius.shape, float(n_from))
    for _ in range(80):  # bisection on the (continuous) count: the bound grows with it
        mid = (lo + hi) / 2
        below = beta.ppf(alpha, mid, n_from - mid + 1) < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    share = np.where(target >= alpha ** (1 / n_from), 1.0, hi / n_from)
    k = share * n_to
    bound = beta.ppf(alpha, k, n_to - k + 1)
    out = np.where(bound > 0.5, sigma * norm.ppf(np.clip(bound, 0.5, 1.0)), 0.0)
    return np.where(radius > 0, out, 0.0)


def recipe_name(method: str, sigma: float) -> str:
    return f"mnist_lenet_{method}_sigma{round(sigma * 100):03d}"


def setting_key(method: str, sigma: float) -> str:
    return f"{method}/sigma_{sigma:.2f}"


def compared_radii(sigma: float) -> list[float]:
    return [r for r in RADII if r <= 2 * sigma + 1e-9]


def summary(radius: np.ndarray, correct: np.ndarray) -> dict:
    acc = certified_accuracy(radius, correct, RADII)
    accuracy = dict(zip(RADII, acc.tolist(), strict=True))
    return {"acr": average_certified_radius(radius, correct), "accuracy": accuracy}


def _spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def training(models: Path, method: str, sigma: float) -> dict:
    """What the run's copied config.yaml / metrics.jsonl and the packaged recipe say (None where a
    file is missing)."""
    name = recipe_name(method, sigma)
    try:
        recipe = _yaml(recipe_path(name))
    except SmoothinfError:
        recipe = None
    out = {"recipe": name, "recipe_cfg": recipe, "config": None, "metrics": []}
    cfg = models / name / "config.yaml"
    if cfg.exists():
        out["config"] = _yaml(cfg)
    log = models / name / "metrics.jsonl"
    if log.exists():
        out["metrics"] = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return out


def compare(rows: list, provenance: dict, ref: dict, ref_n: int, ref_alpha: float) -> dict:
    """Our rows against every reference run on the same test images: ACR and certified accuracy,
    the reference capped at our largest certifiable radius and re-bounded to our N."""
    sigma, n, alpha = provenance["sigma"], provenance["n"], provenance["alpha"]
    idx = [r.idx for r in rows]
    where = {i: k for k, i in enumerate(ref["idx"])}
    missing = [i for i in idx if i not in where]
    if missing:
        raise SystemExit(f"test images {missing[:5]} are not in the reference rows (idx % 20 == 0 only)")
    pick = np.asarray([where[i] for i in idx])
    labels = np.asarray(ref["label"])[pick]
    if any(r.label != lab for r, lab in zip(rows, labels, strict=True)):
        raise SystemExit("labels differ from the reference rows on the same test images")
    radius = np.asarray([r.radius for r in rows])
    correct = np.asarray([r.correct for r in rows], dtype=bool)
    ours = summary(radius, correct)
    cap = certify_cap(sigma, n, alpha)
    plain, capped, rebounded, per_image = [], [], [], []
    for run in ref["runs"]:
        r = np.asarray(run["radius"], dtype=np.float64)[pick]
        c = np.asarray(run["correct"], dtype=bool)[pick]
        plain.append(summary(r, c))
        capped.append(summary(np.minimum(r, cap), c))
        rb = rebound(r, sigma, ref_n, n, ref_alpha)
        rebounded.append(summary(rb, c & (rb > 0)))
        per_image.append(np.minimum(r, cap) * c)
    # paired over images: ours minus the capped reference's mean over runs
    diff = radius * correct - np.mean(per_image, axis=0)
    half = 1.959964 * float(np.std(diff, ddof=1)) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")

    def spread(runs: list[dict]) -> dict:
        return {
            "acr": _spread([s["acr"] for s in runs]),
            "accuracy": {r: _spread([s["accuracy"][r] for s in runs]) for r in RADII},
        }

    m = len(rows)
    return {
        "images": m,
        "runs": len(ref["runs"]),
        "cap": cap,
        "ref_cap": certify_cap(sigma, ref_n, ref_alpha),
        "ref_max_radius": float(max(np.max(np.asarray(run["radius"])[pick]) for run in ref["runs"])),
        "ref_above_cap": float(
            np.mean([np.mean(np.asarray(run["radius"])[pick] > cap) for run in ref["runs"]])
        ),
        "ours": ours,
        "wilson": {r: wilson(ours["accuracy"][r] * m, m) for r in RADII},
        "ref": spread(plain),
        "ref_capped": spread(capped),
        "ref_rebounded": spread(rebounded),
        "acr_gap_half_width": half,
        "raw": (radius, correct),
        "idx": idx,
        "ref_n": ref_n,
    }


def read_runs(results: Path, reference: dict) -> tuple[dict, dict]:
    """(complete runs, incomplete ones) keyed by setting: each a dict of what the page needs."""
    done, partial = {}, {}
    found = []
    for tsv in results.glob("*_sigma*.tsv"):
        match = TSV_NAME.fullmatch(tsv.name)
        if match and match["method"] in METHODS:
            found.append((METHODS.index(match["method"]), float(match["sigma"]), match["method"], tsv))
    for _, sigma, method, tsv in sorted(found):
        side = Path(str(tsv) + ".json")
        if not side.exists():
            raise SystemExit(f"{tsv}: no provenance {side.name}")
        prov = json.loads(side.read_text())
        if abs(prov["sigma"] - sigma) > 1e-12 or prov.get("noise", "gaussian") != "gaussian":
            raise SystemExit(f"{tsv}: its provenance says sigma {prov['sigma']}, noise {prov.get('noise')}")
        key = setting_key(method, sigma)
        if key not in reference["settings"]:
            raise SystemExit(f"{tsv}: no reference rows for {key}")
        expected = len(range(0, reference["test_images"], prov["skip"]))
        try:
            rows = read_certify_log(tsv)
        except SmoothinfError:  # a row being written
            partial[key] = {"images": None, "expected": expected}
            continue
        if len(rows) < expected:
            partial[key] = {"images": len(rows), "expected": expected}
            continue
        done[key] = {
            "method": method,
            "sigma": sigma,
            "tsv": tsv,
            "provenance": prov,
            "training": training(results / "models", method, sigma),
            "result": compare(rows, prov, reference["settings"][key], reference["n"], reference["alpha"]),
        }
    return done, partial


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _range(s: dict, fmt) -> str:
    return f"{fmt(s['mean'])} ({fmt(s['min'])}–{fmt(s['max'])})"


def _points(x: float) -> str:
    return f"{x:.1f}"


def _signed(x: float, fmt) -> str:
    """``fmt(x)`` with its sign: "−" (minus) when negative after rounding, else "+"."""
    text = fmt(abs(x))
    return ("−" if x < 0 and float(text) != 0 else "+") + text


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _tolerance_groups() -> list[tuple[str, str]]:
    """The ACR targets, one per tolerance: ("0.03", "gaussian, consistency and smoothadv"), ..."""
    groups: dict[float, list[str]] = {}
    for method in METHODS:
        groups.setdefault(ACR_TOLERANCE[method], []).append(method)
    return [(f"{tol:g}", _and(names)) for tol, names in sorted(groups.items())]


def _init(t: dict) -> str | None:
    """The checkpoint a run was fine-tuned from, as its config.yaml records it (None: from scratch)."""
    return (t["config"] or {}).get("init") or None


def _trained(t: dict) -> int:
    return max((m["epoch"] for m in t["metrics"]), default=0)


def _milestones(cfg: dict) -> str:
    return ", ".join(str(m) for m in cfg.get("milestones") or []) or "none"


def _lr(cfg: dict) -> str:
    return f"{cfg['lr']:g}" if isinstance(cfg.get("lr"), int | float) else "?"


def _epochs(t: dict) -> tuple[str, str, str]:
    """(epochs trained / set, milestones, mean seconds per epoch) from the copied files."""
    cfg, rec, log = t["config"], t["recipe_cfg"], t["metrics"]
    if cfg is None:
        return "? (no config.yaml)", "?", "?"
    trained = _trained(t)
    if _init(t):
        epochs = (
            f"{trained}" if trained == cfg["epochs"] else f"{trained} of {cfg['epochs']}"
        ) + " (fine-tune)"
    else:
        epochs = f"{trained} of {cfg['epochs']}" + (f" (recipe {rec['epochs']})" if rec else "")
    miles = _milestones(cfg)
    if rec:
        miles += " (recipe " + (", ".join(str(m) for m in rec.get("milestones") or []) or "none") + ")"
    secs = [m["epoch_loop_seconds"] for m in log if "epoch_loop_seconds" in m]
    return epochs, miles, (f"{np.mean(secs):.0f}" if secs else "?")


def overrides(cfg: dict, recipe: dict | None) -> dict:
    """The settings of a run's ``config.yaml`` that differ from its recipe (a setting the recipe
    leaves out: from TrainConfig's default); ``out``, ``root`` and ``device`` are where and on what
    it ran, not what it trains."""
    defaults = {
        f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
        for f in dataclasses.fields(TrainConfig)
    }
    recipe = recipe or {}
    return {
        k: v
        for k, v in cfg.items()
        if k not in ("out", "root", "device") and v != recipe.get(k, defaults.get(k))
    }


def _flags(changed: dict) -> str:
    flags = []
    for k, v in changed.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, list):
            flags.append(" ".join([flag, *map(str, v)]))
        elif v is True:
            flags.append(flag)
        else:
            flags.append(f"{flag} {v}")
    return " ".join(flags)


def _commands(run: dict) -> list[str]:
    t, prov = run["training"], run["provenance"]
    name = t["recipe"]
    if t["config"] is None:
        train = f"# no results/certified_mnist/models/{name}/config.yaml: the training is not recorded"
    else:
        changed = _flags(overrides(t["config"], t["recipe_cfg"]))
        device = t["config"].get("device", prov["device"])
        train = f"python -m smoothinf train --config {name} {changed} --out runs/{name} --device {device}"
    certify = (
        f"python -m smoothinf certify -c runs/{name}/model.safetensors --split {prov['data']['split']}"
        f" --sigma {prov['sigma']:g} --n0 {prov['n0']} --n {prov['n']} --alpha {prov['alpha']:g}"
        f" --skip {prov['skip']} --seed {prov['seed']}"
        + (f" --examples-per-step {prov['examples_per_step']}" if "examples_per_step" in prov else "")
        + f" --device {prov['device']} --out results/certified_mnist/{run['tsv'].name}"
    )
    return [train.replace("  ", " "), certify]


def build_page(results: Path, reference: dict) -> str:
    done, partial = read_runs(results, reference)
    trimmed = read_runs(results / TRIMMED, reference)[0] if (results / TRIMMED).is_dir() else {}
    ref_n, ref_alpha = reference["n"], reference["alpha"]
    out = [
        "# Certified robustness on MNIST: smoothinf's LeNets and the SmoothMix authors' logs",
        "",
        "<!-- generated by studies/certified_mnist/page.py; do not edit by hand -->",
        "",
        "Each row compares a `smoothinf certify` table in `results/certified_mnist/` with the per-image",
        "certification logs the SmoothMix authors released ([jh-jeong/smoothmix]"
        f"({reference['source']}) at commit `{reference['commit'][:12]}`, `data/certify/mnist/`:",
        f"N0 {reference['n0']}, N {ref_n:,}, alpha {ref_alpha:g}, all {reference['test_images']:,}"
        " test images),",
        "restricted to exactly the test images the smoothinf run certified. The reference is the mean",
        "over its released runs, with their min–max in brackets. ACR is the mean of radius x 1[correct];",
        "certified accuracy at r is the share of images correct with radius >= r. Only radii up to",
        '2 sigma are compared ("-" elsewhere). Targets (issue 42): ACR within '
        + ", within ".join(
            f"{tol}{' of the reference' if i == 0 else ''} for {names}"
            for i, (tol, names) in enumerate(_tolerance_groups())
        )
        + ";",
        f"certified accuracy within {100 * ACCURACY_TOLERANCE:g} points at every compared radius.",
        "",
    ]
    if not done:
        out += ["No complete certify table in `results/certified_mnist/` yet.", ""]
    else:
        out += _main_table(done) + _reading(done) + _trim_section(done, trimmed)
        out += _fine_tune_section(done, reference)
        out += _differences(done, reference)
        out += _cap_section(done, ref_n, ref_alpha)
        out += _acr_table(done) + _accuracy_table(done)
    out += _not_run(done, partial, reference)
    if done:
        out += ["## Commands", ""]
        out += [
            "Each row's training (recipe and overrides, from its `config.yaml`) and certification",
            "(from the table's provenance `.tsv.json`):",
            "",
        ]
        for run in done.values():
            out += [f"{run['method']}, sigma {run['sigma']:g}:", "", "```"] + _commands(run) + ["```", ""]
    return "\n".join(out).rstrip() + "\n"


def _main_table(done: dict) -> list[str]:
    head = "| method | sigma | images | ACR ours | ACR ref, capped | ACR gap | ACR target |"
    head += "".join(f" CA gap r={r:g} |" for r in RADII) + " CA target |"
    lines = [
        "## Summary",
        "",
        "Gaps are ours minus the reference on the same images; certified-accuracy (CA) gaps in points.",
        "The ACR is judged against the reference capped at our largest certifiable radius (see",
        "[The N cap](#the-n-cap)); the CA targets against the reference itself.",
        "",
        head,
        "|---" * (7 + len(RADII) + 1) + "|",
    ]
    for run in done.values():
        res, sigma = run["result"], run["sigma"]
        gap = res["ours"]["acr"] - res["ref_capped"]["acr"]["mean"]
        cells, ok = [], True
        for r in RADII:
            if r in compared_radii(sigma):
                g = res["ours"]["accuracy"][r] - res["ref"]["accuracy"][r]["mean"]
                ok &= within(g, ACCURACY_TOLERANCE)
                cells.append(_signed(100 * g, _points))
            else:
                cells.append("-")
        lines.append(
            f"| {run['method']} | {sigma:g} | {res['images']} | {_f(res['ours']['acr'])} |"
            f" {_f(res['ref_capped']['acr']['mean'])} | {_signed(gap, _f)} |"
            f" {_met(within(gap, ACR_TOLERANCE[run['method']]))} | " + " | ".join(cells) + f" | {_met(ok)} |"
        )
    return lines + [""]


def _reading(done: dict) -> list[str]:
    """What the compared rows can and cannot show, from their own files: the training length
    against the recipe's (for a fine-tune: its epochs, lr and starting checkpoint), the shortfall in
    certified accuracy at r = 0 and at the largest compared radius, and the CPU time the full recipe
    would take at the measured seconds per epoch."""
    lines = ["## Reading the gaps", ""]
    paired = {id(tuned) for tuned, _ in _fine_tune_pairs(done)}
    for run in done.values():
        t, res, sigma = run["training"], run["result"], run["sigma"]
        cfg, rec, log = t["config"] or {}, t["recipe_cfg"] or {}, t["metrics"]
        trained = _trained(t)
        radii = [r for r in RADII if r in compared_radii(sigma)]
        gap = {r: 100 * (res["ours"]["accuracy"][r] - res["ref"]["accuracy"][r]["mean"]) for r in radii}
        gaps = (
            f"certified accuracy {_signed(gap[radii[0]], _points)} points at r = {radii[0]:g} and"
            f" {_signed(gap[radii[-1]], _points)} at r = {radii[-1]:g}"
        )
        secs = [m["epoch_loop_seconds"] for m in log if "epoch_loop_seconds" in m]
        full = rec.get("epochs")
        hours = f"{np.mean(secs) * full / 3600:.1f} h" if secs and full else "?"
        if _init(t):
            epochs = (
                f"{trained}" if trained == cfg.get("epochs") else f"{trained} of {cfg.get('epochs', '?')}"
            )
            lines.append(
                f"- {run['method']}, sigma {sigma:g}: fine-tuned for {epochs} epochs (lr {_lr(cfg)},"
                f" lr milestones {_milestones(cfg)}) from the checkpoint `{_init(t)}`; {gaps}."
                + (
                    " Against its starting point: [Fine-tunes from the Gaussian model]"
                    "(#fine-tunes-from-the-gaussian-model)."
                    if id(run) in paired
                    else ""
                )
            )
        elif secs:
            lines.append(
                f"- {run['method']}, sigma {sigma:g}: trained {trained} of the recipe's {full or '?'} epochs"
                f" (lr milestones {_milestones(cfg)}); {gaps}. The full recipe at this run's"
                f" {np.mean(secs):.0f} s per epoch (wall clock on CPU cores other jobs shared) would take"
                f" {hours}."
            )
        else:
            lines.append(
                f"- {run['method']}, sigma {sigma:g}: trained {trained} epochs (no epoch times recorded)."
            )
    full = [run for run in done.values() if _full_recipe(run)]
    tuned = [run for run in done.values() if _init(run["training"])]
    scratch = [run for run in done.values() if not _full_recipe(run) and not _init(run["training"])]
    named = (
        " "
        + "; ".join(f"{run['method']} at sigma {run['sigma']:g}" for run in full)
        + " (section [What the trims cost](#what-the-trims-cost))."
        if full
        else " none of these rows is one."
    )
    lines += [
        "",
        "A gap that grows with the radius is what a base classifier less confident under noise gives;",
        "training for a fraction of the recipe's epochs is one cause of that and the smaller N",
        "another (section [The N cap](#the-n-cap)).",
    ]
    if scratch:
        lines[-1] += (
            " The trimmed rows"
            + (" trained from scratch" if tuned else "")
            + " do not separate the two, and so"
        )
        lines += [
            "do not test the objectives' implementation against the published numbers; a run of the full",
            "recipe with the reference's N on the same images does:" + named,
        ]
    else:
        lines += ["A run of the full recipe with the reference's N on the same images tests the objectives'"]
        lines += ["implementation against the published numbers:" + named]
    if tuned:
        lines += [
            "The fine-tuned rows ("
            + "; ".join(f"{run['method']} at sigma {run['sigma']:g}" for run in tuned)
            + ") start from the trained checkpoint their config names, not from",
            "scratch: their gaps carry the starting model's as well as the objective's, and a fine-tune of a",
            "few epochs is a trim of the method's recipe."
            + (
                " [Fine-tunes from the Gaussian model](#fine-tunes-from-the-gaussian-model) sets each"
                " beside its start."
                if paired
                else ""
            ),
        ]
    return lines + [""]


def _full_recipe(run: dict) -> bool:
    """Whether a run trained every epoch of its recipe from scratch and certified with the reference's N."""
    t = run["training"]
    recipe = (t["recipe_cfg"] or {}).get("epochs")
    return (
        bool(recipe)
        and not _init(t)
        and _trained(t) >= recipe
        and run["provenance"]["n"] >= run["result"]["ref_n"]
    )


def _trim_section(done: dict, trimmed: dict) -> list[str]:
    """Trimmed and full runs of one setting on the same images: what the trims cost, with the full
    run's radii re-bounded to the trimmed N to separate the two trims (epochs and N)."""
    pairs = [(key, trimmed[key], done[key]) for key in trimmed if key in done and _full_recipe(done[key])]
    if not pairs:
        return []
    lines = [
        "## What the trims cost",
        "",
        "The same setting trained and certified twice on the same images: trimmed (a fraction of the",
        "recipe's epochs, a smaller N; its files under `results/certified_mnist/trimmed/`) and in full.",
        "*Full, re-bounded* takes the full run's radii to the trimmed N (as for the reference in",
        "[The N cap](#the-n-cap)): against the trimmed row it isolates the training epochs; against the",
        "full row, N. Certified accuracy in %, up to 2 sigma; the reference is the mean over its runs.",
        "",
    ]
    for _, short, long in pairs:
        sigma = long["sigma"]
        radii = compared_radii(sigma)
        n_short, n_long = short["provenance"]["n"], long["provenance"]["n"]
        radius, correct = long["result"]["raw"]
        rb = rebound(radius, sigma, n_long, n_short, long["provenance"]["alpha"])
        rebounded = summary(rb, correct & (rb > 0))
        rows = [
            (f"trimmed ({_epochs(short['training'])[0]} epochs, N {n_short:,})", short["result"]["ours"]),
            (f"full, re-bounded to N {n_short:,}", rebounded),
            (f"full ({_epochs(long['training'])[0]} epochs, N {n_long:,})", long["result"]["ours"]),
            (
                "reference",
                {
                    "acr": long["result"]["ref"]["acr"]["mean"],
                    "accuracy": {r: v["mean"] for r, v in long["result"]["ref"]["accuracy"].items()},
                },
            ),
        ]
        lines += [
            f"{long['method']}, sigma {sigma:g}, {long['result']['images']} images:",
            "",
            "| run | ACR |" + "".join(f" CA r={r:g} |" for r in radii),
            "|---" * (2 + len(radii)) + "|",
        ]
        for label, res in rows:
            cells = "".join(f" {_pct(res['accuracy'][r])} |" for r in radii)
            lines.append(f"| {label} | {_f(res['acr'])} |{cells}")
        lines.append("")
    return lines


def _at_n(
    radius: np.ndarray, correct: np.ndarray, sigma: float, n_from: int, n_to: int, alpha: float
) -> dict:
    """``summary`` of radii certified with ``n_from`` draws, re-bounded to ``n_to`` when that is fewer."""
    if n_from <= n_to:
        return summary(radius, correct)
    rb = rebound(radius, sigma, n_from, n_to, alpha)
    return summary(rb, correct & (rb > 0))


def _fine_tune_pairs(done: dict) -> list[tuple[dict, dict]]:
    """(fine-tuned run, the complete Gaussian run at its sigma on the same test images), in page order."""
    pairs = []
    for run in done.values():
        start = done.get(setting_key("gaussian", run["sigma"]))
        if (
            _init(run["training"])
            and start is not None
            and start is not run
            and not _init(start["training"])
            and start["result"]["idx"] == run["result"]["idx"]
        ):
            pairs.append((run, start))
    return pairs


def _start_check(init: str, certified: str) -> str:
    """Whether the checkpoint ``init`` (relative paths: to the repository) holds the weights a certify
    table's provenance names (``weights_sha256``, the tensors' digest), as a sentence."""
    path = Path(init) if Path(init).is_absolute() else ROOT / init
    if not path.is_file():
        return "It is not in this checkout, so its weights are not checked against the Gaussian table's."
    try:
        digest = weights_digest(load_checkpoint(path)[0])
    except SmoothinfError as exc:
        return f"It could not be read ({exc}), so its weights are not checked against the Gaussian table's."
    if digest == certified:
        return f"It holds the weights the Gaussian table certified (tensor sha256 {digest[:12]})."
    return (
        f"Its weights (tensor sha256 {digest[:12]}) are not those the Gaussian table certified"
        f" ({certified[:12]}): the start row is that table's model, not this fine-tune's start."
    )


def _fine_tune_section(done: dict, reference: dict) -> list[str]:
    """Each fine-tune beside the Gaussian run at its sigma and the reference's Gaussian and method
    runs, all at the fine-tune's N on the same images: its gain over its start against the
    reference's gain from Gaussian training to the method."""
    pairs = _fine_tune_pairs(done)
    if not pairs:
        return []
    lines = [
        "## Fine-tunes from the Gaussian model",
        "",
        "A fine-tuned run starts from a trained Gaussian model and trains its method's objective for the",
        "epochs its config sets. Set beside the Gaussian run at its sigma, certified on the same images and",
        "re-bounded to the fine-tune's N where that run had more draws (as in [The N cap](#the-n-cap)), it",
        "isolates the objective's gain over its starting point at equal N. The reference's gain is",
        "between its own Gaussian and method runs, each trained from scratch for the whole recipe, at",
        "the same N on the same images (mean over runs). A fine-tune of a few epochs is a trim of the",
        "method's recipe: a gain short of the reference's need not be the objective's. ACR, and",
        "certified accuracy in % (gains in points) up to 2 sigma.",
        "",
    ]
    for tuned, start in pairs:
        lines += _fine_tune_table(tuned, start, reference)
    return lines


def _reference_at(reference: dict, key: str, idx: list[int], n_to: int) -> dict:
    """The reference runs of ``key`` on the test images ``idx``, re-bounded to ``n_to`` draws when
    they had more: ACR and certified accuracy, mean over runs."""
    spec = reference["settings"][key]
    where = {i: k for k, i in enumerate(spec["idx"])}
    pick = np.asarray([where[i] for i in idx])
    runs = [
        _at_n(
            np.asarray(run["radius"], dtype=np.float64)[pick],
            np.asarray(run["correct"], dtype=bool)[pick],
            spec["sigma"],
            reference["n"],
            n_to,
            reference["alpha"],
        )
        for run in spec["runs"]
    ]
    return {
        "acr": float(np.mean([s["acr"] for s in runs])),
        "accuracy": {r: float(np.mean([s["accuracy"][r] for s in runs])) for r in RADII},
    }


def _fine_tune_table(tuned: dict, start: dict, reference: dict) -> list[str]:
    """One fine-tune's table: its start, itself and the gain; the reference's Gaussian, method and gain."""
    method, sigma, t = tuned["method"], tuned["sigma"], tuned["training"]
    radii = compared_radii(sigma)
    n_tuned, n_start, ref_n = tuned["provenance"]["n"], start["provenance"]["n"], reference["n"]
    radius, correct = start["result"]["raw"]
    ours_start = _at_n(radius, correct, sigma, n_start, n_tuned, start["provenance"]["alpha"])
    ours = tuned["result"]["ours"]
    idx = tuned["result"]["idx"]
    ref_start = _reference_at(reference, setting_key("gaussian", sigma), idx, n_tuned)
    ref_method = _reference_at(reference, setting_key(method, sigma), idx, n_tuned)

    def at_n(n: int) -> str:
        return f"N {n:,}" + (f", re-bounded to N {n_tuned:,}" if n > n_tuned else "")

    def scratch(run: dict) -> str:
        return f"recipe's {(run['training']['recipe_cfg'] or {}).get('epochs', '?')} epochs from scratch"

    rows = [
        (f"Gaussian start ({_trained(start['training'])} epochs, {at_n(n_start)})", ours_start, False),
        (f"{method} fine-tune ({_trained(t)} epochs from the start, N {n_tuned:,})", ours, False),
        ("gain (fine-tune − start)", _minus(ours, ours_start), True),
        (f"reference gaussian ({scratch(start)}, {at_n(ref_n)})", ref_start, False),
        (f"reference {method} ({scratch(tuned)}, {at_n(ref_n)})", ref_method, False),
        (f"reference gain ({method} − gaussian)", _minus(ref_method, ref_start), True),
    ]
    lines = [
        f"{method}, sigma {sigma:g}, {tuned['result']['images']} images: fine-tuned {_trained(t)} epochs"
        f" (lr {_lr(t['config'])}, lr milestones {_milestones(t['config'])}) from `{_init(t)}`."
        f" {_start_check(_init(t), start['provenance']['weights_sha256'])}",
        "",
        "| run | ACR |" + "".join(f" CA r={r:g} |" for r in radii),
        "|---" * (2 + len(radii)) + "|",
    ]
    for label, res, gain in rows:
        if gain:
            cells = "".join(f" {_signed(100 * res['accuracy'][r], _points)} |" for r in radii)
            lines.append(f"| {label} | {_signed(res['acr'], _f)} |{cells}")
        else:
            cells = "".join(f" {_pct(res['accuracy'][r])} |" for r in radii)
            lines.append(f"| {label} | {_f(res['acr'])} |{cells}")
    return lines + [""]


def _minus(a: dict, b: dict) -> dict:
    """ACR and certified accuracy of ``a`` minus those of ``b``."""
    return {"acr": a["acr"] - b["acr"], "accuracy": {r: a["accuracy"][r] - b["accuracy"][r] for r in RADII}}


def _differences(done: dict, reference: dict) -> list[str]:
    ref_n = reference["n"]
    first = next(iter(reference["settings"].values()))
    subset = f"{len(first['idx'])}, {reference['subset']}"
    lines = [
        "## What the smoothinf runs differ in",
        "",
        "Read from each run's copied `config.yaml` / `metrics.jsonl` (`results/certified_mnist/models/`),",
        "the packaged recipe, and the certify provenance.",
        "",
        "| method | sigma | recipe | epochs trained (of set; recipe) | lr milestones (recipe) | s / epoch |"
        " other settings changed from the recipe | N (reference) | N0 | alpha | images (reference subset) |"
        " certify seed |",
        "|---" * 12 + "|",
    ]
    for run in done.values():
        prov, res = run["provenance"], run["result"]
        t = run["training"]
        epochs, miles, secs = _epochs(t)
        other = "?"
        if t["config"] is not None:
            changed = overrides(t["config"], t["recipe_cfg"])
            other = _flags({k: v for k, v in changed.items() if k not in ("epochs", "milestones")}) or "none"
        lines.append(
            f"| {run['method']} | {run['sigma']:g} | `{t['recipe']}` | {epochs} | {miles} | {secs} |"
            f" {other} |"
            f" {prov['n']:,} ({ref_n:,}) | {prov['n0']} | {prov['alpha']:g} |"
            f" {res['images']}, idx % {prov['skip']} == 0 ({subset}) | {prov['seed']} |"
        )
    return lines + [""]


def _cap_section(done: dict, ref_n: int, ref_alpha: float) -> list[str]:
    lines = [
        "## The N cap",
        "",
        "CERTIFY's radius is sigma Phi^-1(pA_lower), with pA_lower the one-sided Clopper-Pearson lower",
        "bound on the top class's share of N draws at level alpha. When all N draws agree the bound is",
        "alpha^(1/N), so no radius can exceed sigma Phi^-1(alpha^(1/N)) (computed here with",
        "`smoothinf.smoothing.statistics.clopper_pearson_lower`). The reference, with more draws, certifies",
        "larger radii on confidently classified images; ACR counts those radii in full. Two closer",
        "comparators, both approximations: *capped* takes each reference radius down to our cap (it",
        "removes the ceiling only, so it still favours the reference: a smaller N lowers every bound, not",
        "only the top one); *re-bounded* finds the vote share behind each reference radius, assumes the",
        "same share with our N and bounds it again (an abstention where the bound falls to 1/2). The",
        "released logs print radii to 3 significant digits, so their largest can exceed their cap.",
        "",
        "| method | sigma | our N, alpha | our cap | reference cap |"
        " largest reference radius on these images | reference images above our cap |",
        "|---" * 7 + "|",
    ]
    for run in done.values():
        prov, res = run["provenance"], run["result"]
        lines.append(
            f"| {run['method']} | {run['sigma']:g} | {prov['n']:,}, {prov['alpha']:g} | {_f(res['cap'])} |"
            f" {_f(res['ref_cap'])} (N {ref_n:,}, alpha {ref_alpha:g}) | {res['ref_max_radius']:g} |"
            f" {_pct(res['ref_above_cap'])}% |"
        )
    return lines + [""]


def _acr_table(done: dict) -> list[str]:
    lines = [
        "## Average certified radius",
        "",
        "The 95% interval of the gap is paired over the images (ours minus the capped reference's mean",
        "over runs, normal approximation): it measures how far the gap on these images can be from the",
        "gap on the whole test set. A target is met when |gap| <= the method's tolerance: "
        + "; ".join(f"{tol} for {names}" for tol, names in _tolerance_groups())
        + ".",
        "",
        "| method | sigma | images | ours | reference | ref, capped | ref, re-bounded | gap vs capped"
        " (95% interval) | target vs capped | gap vs re-bounded | target vs re-bounded |",
        "|---" * 11 + "|",
    ]
    for run in done.values():
        res = run["result"]
        ours = res["ours"]["acr"]
        gap = ours - res["ref_capped"]["acr"]["mean"]
        gap_rb = ours - res["ref_rebounded"]["acr"]["mean"]
        h = res["acr_gap_half_width"]
        lines.append(
            f"| {run['method']} | {run['sigma']:g} | {res['images']} | {_f(ours)} |"
            f" {_range(res['ref']['acr'], _f)} | {_range(res['ref_capped']['acr'], _f)} |"
            f" {_range(res['ref_rebounded']['acr'], _f)} |"
            f" {_signed(gap, _f)} ({_signed(gap - h, _f)}, {_signed(gap + h, _f)}) |"
            f" {_met(within(gap, ACR_TOLERANCE[run['method']]))} | {_signed(gap_rb, _f)} |"
            f" {_met(within(gap_rb, ACR_TOLERANCE[run['method']]))} |"
        )
    return lines + [""]


def _accuracy_table(done: dict) -> list[str]:
    lines = [
        "## Certified accuracy",
        "",
        "In percent. Ours with its 95% Wilson interval on the run's images (`statistics.wilson`): where",
        "the reference mean lies inside it, the gap is within what that many images can show. A target",
        f"is met when |gap| <= {100 * ACCURACY_TOLERANCE:g} points. The re-bounded reference is for",
        "reading only.",
        "",
        "| method | sigma | r | ours (95% interval) | reference | ref, re-bounded | gap (points) | target |"
        " reference inside our interval |",
        "|---" * 9 + "|",
    ]
    for run in done.values():
        res = run["result"]
        for r in compared_radii(run["sigma"]):
            ours = res["ours"]["accuracy"][r]
            lo, hi = res["wilson"][r]
            ref = res["ref"]["accuracy"][r]
            gap = ours - ref["mean"]
            lines.append(
                f"| {run['method']} | {run['sigma']:g} | {r:g} | {_pct(ours)} ({_pct(lo)}, {_pct(hi)}) |"
                f" {_range(ref, _pct)} | {_range(res['ref_rebounded']['accuracy'][r], _pct)} |"
                f" {_signed(100 * gap, _points)} | {_met(within(gap, ACCURACY_TOLERANCE))} |"
                f" {'yes' if lo <= ref['mean'] <= hi else '**no**'} |"
            )
    return lines + [""]


def _not_run(done: dict, partial: dict, reference: dict) -> list[str]:
    lines = [
        "## Not run",
        "",
        "Settings with released reference logs but no complete table in `results/certified_mnist/`: not",
        "run in this CPU budget. Noisy copies per image: the packaged recipe's `m_train` (1 for",
        f"Gaussian augmentation). The reference ACR is on its {reference['subset']} images, mean over runs.",
        "",
        "| method | sigma | packaged recipe | noisy copies per image | status | reference ACR (images) |",
        "|---|---|---|---|---|---|",
    ]
    for key, spec in reference["settings"].items():
        if key in done:
            continue
        name = recipe_name(spec["method"], spec["sigma"])
        try:
            cfg = _yaml(recipe_path(name))
            recipe = f"`{name}`"
            copies = "1" if cfg.get("objective") == "gaussian" else str(cfg.get("m_train", "?"))
        except SmoothinfError:
            recipe, copies = "none", "-"
        status = "not run"
        if key in partial:
            p = partial[key]
            got = "?" if p["images"] is None else p["images"]
            status = f"incomplete: {got} of {p['expected']} images"
        acr = np.mean([average_certified_radius(run["radius"], run["correct"]) for run in spec["runs"]])
        lines.append(
            f"| {spec['method']} | {spec['sigma']:g} | {recipe} | {copies} | {status} |"
            f" {_f(float(acr))} ({len(spec['idx'])}) |"
        )
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "results" / "certified_mnist"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "certified-mnist.md"))
    parser.add_argument("--reference", default=str(HERE / "reference_rows.json"))
    args = parser.parse_args(argv)
    reference = json.loads(Path(args.reference).read_text())
    page = build_page(Path(args.results), reference)
    Path(args.out).write_text(page)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
