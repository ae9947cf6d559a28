"""The study's page (``paper-reproduction.md``) from its files: per claim a table, the compute, a
verdict.

Everything here reads the files that ``paper_mnist.pipeline`` writes (``study.json``,
``state/*.json``, ``selection.json``, ``eval/*.jsonl``, ``convergence.jsonl``, ``certify/*.json``,
``models/*/metrics.jsonl``; the longer-training stage's ``long/eval/*.jsonl`` and
``long/models/*/metrics.jsonl``) and nothing else, so the page is rebuilt by one command
(``python studies/paper_mnist/run.py --report-only``); every number on the page comes from them.

Accuracy of a row (model, setting, sigma, vote@m, run): an example is robust when the defence is
correct on it clean and on every attack's x_adv; ``worst`` is over all attacks run (adaptive
protocol), ``paper`` over the paper's attacks only (PGD on the base model, PGD with k*m steps
through one noise draw per step, EPGD k x m). Mean and std over runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from paper_mnist.long_training import load_long, long_headline, long_lines, rejudged_lines
from paper_mnist.study import (
    CASCADED,
    CERT_RADII,
    MADRY_MNIST_ROW,
    PAPER_ATTACKS,
    StudyConfig,
    correct_fraction,
    judgements_of,
    min_estimate_bias,
    renamed,
    row_estimates,
    study_from_json,
    tempered_attack_name,
)
from smoothinf.errors import ConfigError
from smoothinf.evaluation import report as library_report
from smoothinf.evaluation.report import mean_std, pm
from smoothinf.evaluation.results import read_jsonl

TARGET = 0.90
VERDICTS = ("holds", "holds only under the paper's attack", "does not hold", "not measurable here")
RULE_THRESHOLD = (
    "A difference counts when it exceeds max(1 point, std_a + std_b) (std over runs; 0 with one run)."
)


def _beats(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a exceeds b by more than the threshold (``RULE_THRESHOLD``)."""
    return a[0] - b[0] > max(0.01, a[1] + b[1])


def expected_found(before: np.ndarray, after: np.ndarray) -> float:
    """The expected number of examples an extra attack breaks beyond ``before`` (per-example
    P(correct) so far, (N,)), given its own ``after``: sum of max(before - after, 0) (the count of
    examples right before and wrong after, for examples judged once)."""
    return float(np.clip(before - after, 0.0, None).sum())


def run_records(rows: list[dict]) -> dict[tuple, list[dict]]:
    """The study's evaluation rows (one per run, setting, sigma and attack, with per-example
    correctness) as the library's result records (``evaluation.results``), grouped by (model,
    setting, sigma): per run and vote@m one record of clean, each attack's accuracy (an example
    counts when right clean and under the attack), ``worst_case`` over every attack and ``paper``
    over the paper's attacks only (see the module docstring)."""
    groups: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        groups[(r["model"], r["setting"], r["sigma"], r["run"])][r["attack"]] = r
    records: dict[tuple, list[dict]] = defaultdict(list)
    for (model, setting, sigma, run), attacks in groups.items():
        if "clean" not in attacks:
            continue
        n = attacks["clean"]["n"]
        for key in attacks["clean"]["correct"]:
            clean = correct_fraction(attacks["clean"], key, n)
            worst, paper = clean.copy(), clean.copy()
            accuracy = {}
            for name, r in attacks.items():
                if name == "clean" or key not in r["correct"]:
                    continue
                ok = np.minimum(clean, correct_fraction(r, key, n))
                accuracy[name] = float(ok.mean())
                worst = np.minimum(worst, ok)
                if name in PAPER_ATTACKS:
                    paper = np.minimum(paper, ok)
            vote, m = key.split("@")
            records[(model, setting, sigma)].append(
                {
                    "run": run,
                    "vote": vote,
                    "sigma": sigma,
                    "m": int(m),
                    "eps": attacks["clean"].get("eps", 0.0),
                    "n": n,
                    "clean": float(clean.mean()),
                    "attacks": accuracy,
                    "worst_case": float(worst.mean()),
                    "paper": float(paper.mean()),
                }
            )
    return records


def aggregate(rows: list[dict]) -> list[dict]:
    """Table rows {model, setting, sigma, key, vote, m, clean, worst, paper, attacks{a: (mean, std)},
    runs, n} from evaluation rows: ``run_records`` aggregated over runs by the library's
    ``evaluation.report.aggregate`` (mean and std), per model, setting and sigma."""
    table = []
    for (model, setting, sigma), records in run_records(rows).items():
        for (vote, _, m, _), row in library_report.aggregate(records, metrics=("paper",)).items():
            table.append(
                {
                    "model": model,
                    "setting": setting,
                    "sigma": sigma,
                    "key": f"{vote}@{m}",
                    "vote": vote,
                    "m": m,
                    "runs": row["runs"],
                    "n": int(row["n"]),
                    "clean": row["clean"],
                    "worst": row["worst_case"],
                    "paper": row["paper"],
                    "attacks": row["attacks"],
                }
            )
    return sorted(table, key=lambda r: str((r["model"], r["setting"], r["sigma"], r["key"])))


def _rows(table, model=None, setting=None, sigma=None, key=None, vote=None, m=None):
    return [
        r
        for r in table
        if (model is None or r["model"] == model)
        and (setting is None or r["setting"] == setting)
        and (sigma is None or r["sigma"] == sigma)
        and (key is None or r["key"] == key)
        and (vote is None or r["vote"] == vote)
        and (m is None or r["m"] == m)
    ]


def best_smoothed(
    table: list[dict],
    study: StudyConfig | None = None,
    model: str | None = None,
    metric: str = "worst",
    positive_sigma: bool = True,
) -> dict | None:
    """The smoothed row with the highest mean ``metric`` (over sigma, vote, m; sigma > 0 unless
    ``positive_sigma`` is False). Selected on the test images: biased upward (see the page)."""
    cands = [r for r in _rows(table, model=model, setting="smoothed") if r["sigma"] > 0 or not positive_sigma]
    return max(cands, key=lambda r: (r[metric][0], -r["sigma"]), default=None)


def base_row(table: list[dict], model: str) -> dict | None:
    rows = _rows(table, model=model, setting="base")
    return rows[0] if rows else None


def _models(table: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in table))


def _sigma_curve(table, model, vote, m, metric):
    """{sigma: (mean, std)} for a vote at m; sigma 0 of a deterministic model is its base row."""
    curve = {r["sigma"]: r[metric] for r in _rows(table, model=model, setting="smoothed", vote=vote, m=m)}
    if 0.0 not in curve and (b := base_row(table, model)):
        curve[0.0] = b[metric]
    return dict(sorted(curve.items()))


# ---------------------------------------------------------------------------------------------
# Verdicts: each returns (verdict, rule, markdown lines)


def _majority(flags: list[bool]) -> bool:
    return bool(flags) and sum(flags) * 2 >= len(flags)


def _worst_paper_header(labels: list[str]) -> list[str]:
    """Header lines of a per-model table with a worst-case and a paper-attack column per label."""
    cells = [f"{x} worst" for x in labels] + [f"{x} paper" for x in labels]
    return ["| model | sigma | " + " | ".join(cells) + " |", "|---" * (2 + 2 * len(labels)) + "|"]


def _worst_paper_line(model: str, sigma: float, rows: dict, keys: list) -> str:
    """One table line: the worst case, then the paper-attack accuracy, of ``rows[k]`` for each key."""
    cells = [pm(rows[k]["worst"]) for k in keys] + [pm(rows[k]["paper"]) for k in keys]
    return f"| {model} | {sigma} | " + " | ".join(cells) + " |"


def _claim_verdict(flags: list[bool], flags_p: list[bool]) -> str:
    """holds (majority under the adaptive worst case) / holds only under the paper's attack /
    does not hold / not measurable (no model measured)."""
    if not flags:
        return VERDICTS[3]
    return VERDICTS[0] if _majority(flags) else VERDICTS[1] if _majority(flags_p) else VERDICTS[2]


def claim1(table):
    rule = (
        "holds if, for at least half of the models, the best smoothed classifier (sigma > 0) has a "
        "worst-case accuracy above its base model's; 'only under the paper's attack' if that is "
        "true only with the paper's attacks. " + RULE_THRESHOLD
    )
    lines = [
        "| model | base clean | base worst | best smoothed | its clean | its worst | "
        "base paper-attack | best smoothed paper-attack |",
        "|---|---|---|---|---|---|---|---|",
    ]
    adaptive, paper = [], []
    gains: dict[bool, list[float]] = {True: [], False: []}  # weight-noise model -> worst-case gains
    for model in _models(table):
        b, s, sp = (
            base_row(table, model),
            best_smoothed(table, model=model),
            best_smoothed(table, model=model, metric="paper"),
        )
        if b is None or s is None:
            continue
        adaptive.append(_beats(s["worst"], b["worst"]))
        paper.append(_beats(sp["paper"], b["paper"]))
        weight_noise = bool(_rows(table, model=model, setting="smoothed", sigma=0.0))
        gains[weight_noise].append(s["worst"][0] - b["worst"][0])
        lines.append(
            f"| {model} | {pm(b['clean'])} | {pm(b['worst'])} | {s['key']} sigma {s['sigma']} | "
            f"{pm(s['clean'])} | {pm(s['worst'])} | {pm(b['paper'])} | {pm(sp['paper'])} |"
        )
    verdict = _claim_verdict(adaptive, paper)
    if not adaptive:
        return verdict, rule, lines
    lines.append(
        f"\nSmoothing raised the worst case for {sum(adaptive)} of {len(adaptive)} models "
        f"(paper's attacks: {sum(paper)} of {len(paper)}). Mean worst-case gain (best smoothed minus "
        "base, points): weight-noise (PNI-W / CNI-W) models "
        + (f"{100 * statistics.fmean(gains[True]):+.1f}" if gains[True] else "-")
        + ", the others "
        + (f"{100 * statistics.fmean(gains[False]):+.1f}" if gains[False] else "-")
        + "."
    )
    return verdict, rule, lines


def _sigma_claim(table, study, metric):
    m = max(study.ms)
    agree, lines = [], []
    for model in _models(table):
        best = {}
        curves = {v: _sigma_curve(table, model, v, m, metric) for v in study.votes}
        if any(len(c) < 2 for c in curves.values()):
            continue
        for v, c in curves.items():
            best[v] = max(c, key=lambda s: c[s][0])
        # the same optimum: every vote's accuracy at the other votes' optimum is within the threshold
        same = all(not _beats(curves[v][best[v]], curves[v][best[w]]) for v in best for w in best)
        agree.append(same)
        lines.append(
            f"| {model} ({metric}) | "
            + " | ".join(f"{best[v]}" for v in study.votes)
            + f" | {'yes' if same else 'no'} |"
        )
    return agree, lines


def claim2(table, study):
    rule = (
        "holds if, for every model, each vote's accuracy (largest m) at the other votes' best sigma is "
        "within the threshold of its own maximum (a single optimal sigma). " + RULE_THRESHOLD
    )
    head = [
        "| model | " + " | ".join(f"best sigma ({v})" for v in study.votes) + " | single optimum |",
        "|---" * (len(study.votes) + 2) + "|",
    ]
    agree, lines = _sigma_claim(table, study, "worst")
    agree_p, lines_p = _sigma_claim(table, study, "paper")
    lines = head + lines + lines_p
    m = max(study.ms)
    lines += [
        "",
        f"Worst-case accuracy vs sigma (vote hard, m {m}):",
        "",
        "| model | " + " | ".join(str(s) for s in study.sigmas) + " |",
        "|---" * (len(study.sigmas) + 1) + "|",
    ]
    for model in _models(table):
        c = _sigma_curve(table, model, "hard", m, "worst")
        lines.append(f"| {model} | " + " | ".join(pm(c.get(float(s))) for s in study.sigmas) + " |")
    if not agree:
        return VERDICTS[3], rule, lines
    verdict = VERDICTS[0] if all(agree) else VERDICTS[1] if agree_p and all(agree_p) else VERDICTS[2]
    return verdict, rule, lines


def claim3(table, study):
    rule = (
        "holds if, for at least half of the models, the worst case at the largest m exceeds that at "
        "the smallest m and never drops by more than the threshold as m grows (hard vote, each "
        "model's best sigma > 0). " + RULE_THRESHOLD
    )
    ms = sorted(study.ms)
    lines = _worst_paper_header([f"m={m}" for m in ms])
    flags, flags_p = [], []
    for model in _models(table):
        s = best_smoothed(table, model=model)
        if s is None or len(ms) < 2:
            continue
        rows = {
            r["m"]: r for r in _rows(table, model=model, setting="smoothed", sigma=s["sigma"], vote="hard")
        }
        if len(rows) < len(ms):
            continue
        for metric, out in (("worst", flags), ("paper", flags_p)):
            seq = [rows[m][metric] for m in ms]
            out.append(
                _beats(seq[-1], seq[0]) and not any(_beats(a, b) for a, b in zip(seq, seq[1:], strict=False))
            )
        lines.append(_worst_paper_line(model, s["sigma"], rows, ms))
    return _claim_verdict(flags, flags_p), rule, lines


def claim4(table, study):
    rule = (
        "holds if, for at least half of the models, the hard (prediction) vote has the highest worst "
        "case of all votes by more than the threshold (each model's best sigma > 0, largest m). "
        + RULE_THRESHOLD
    )
    m = max(study.ms)
    lines = _worst_paper_header(list(study.votes))
    flags, flags_p = [], []
    if "hard" not in study.votes or len(study.votes) < 2:
        return VERDICTS[3], rule, lines
    for model in _models(table):
        s = best_smoothed(table, model=model)
        if s is None:
            continue
        rows = {r["vote"]: r for r in _rows(table, model=model, setting="smoothed", sigma=s["sigma"], m=m)}
        for metric, out in (("worst", flags), ("paper", flags_p)):
            out.append(all(_beats(rows["hard"][metric], rows[v][metric]) for v in rows if v != "hard"))
        lines.append(_worst_paper_line(model, s["sigma"], rows, list(study.votes)))
    return _claim_verdict(flags, flags_p), rule, lines


def claim5(conv, study):
    rule = (
        "holds if, at every (k, m) measured, EPGD with k steps x m draws and PGD with k*m steps (one "
        "draw per step) leave accuracies within 2 points of each other (hard vote, largest m, on the "
        "convergence step's examples and setting)."
    )
    m_max = max(study.ms)
    pairs = defaultdict(dict)
    for r in conv:
        if r.get("kind") == "compute":
            pairs[(r["k"], r["m"])][r["attack"]] = r
    lines = ["| k | m | EPGD k x m | PGD k*m | EPGD s | PGD s |", "|---|---|---|---|---|---|"]
    flags = []
    for (k, m), d in sorted(pairs.items()):
        if "epgd" not in d or "pgd-km" not in d:
            continue
        a, b = d["epgd"]["accuracy"][f"hard@{m_max}"], d["pgd-km"]["accuracy"][f"hard@{m_max}"]
        flags.append(abs(a - b) <= 0.02)
        lines.append(
            f"| {k} | {m} | {100 * a:.1f} | {100 * b:.1f} | {d['epgd']['craft_seconds']:.1f} | "
            f"{d['pgd-km']['craft_seconds']:.1f} |"
        )
    if not flags:
        return VERDICTS[3], rule, lines
    return (VERDICTS[0] if all(flags) else VERDICTS[2]), rule, lines


def claim6(table, study, selection):
    rule = (
        "holds if every fine-tuning's best smoothed worst case exceeds that of the model it was "
        "fine-tuned from; 'only under the paper's attack' if that is true only with the paper's "
        "attacks. " + RULE_THRESHOLD
    )
    parent = (selection or {}).get("best_noise")
    lines = [
        f"Fine-tuned from: **{parent}** (best val PGD accuracy among the noise models).",
        "",
        "| model | best smoothed | worst | paper-attack worst |",
        "|---|---|---|---|",
    ]
    p = best_smoothed(table, model=parent) if parent else None
    pp = best_smoothed(table, model=parent, metric="paper") if parent else None
    if p is None:
        return VERDICTS[3], rule, lines
    lines.append(
        f"| {parent} (parent) | {p['key']} sigma {p['sigma']} | {pm(p['worst'])} | {pm(pp['paper'])} |"
    )
    flags, flags_p = [], []
    for name in study.finetunes:
        s, sp = best_smoothed(table, model=name), best_smoothed(table, model=name, metric="paper")
        if s is None:
            continue
        flags.append(_beats(s["worst"], p["worst"]))
        flags_p.append(_beats(sp["paper"], pp["paper"]))
        lines.append(f"| {name} | {s['key']} sigma {s['sigma']} | {pm(s['worst'])} | {pm(sp['paper'])} |")
    if not flags:
        return VERDICTS[3], rule, lines
    verdict = VERDICTS[0] if all(flags) else VERDICTS[1] if all(flags_p) else VERDICTS[2]
    lines.append(f"\n{sum(flags)} of {len(flags)} fine-tunings improved the worst case.")
    return verdict, rule, lines


def claim7(table):
    rule = (
        "holds if, for at least half of the models, the smoothed classifier (the model's best sigma > 0, "
        "vote and m) is more accurate on examples transferred from the independent source than the "
        "base model. " + RULE_THRESHOLD
    )
    lines = ["| model | base under transfer | smoothed under transfer | setting |", "|---|---|---|---|"]
    flags = []
    for model in _models(table):
        b, s = base_row(table, model), best_smoothed(table, model=model)
        if b is None or s is None or "transfer" not in b["attacks"] or "transfer" not in s["attacks"]:
            continue
        flags.append(_beats(s["attacks"]["transfer"], b["attacks"]["transfer"]))
        lines.append(
            f"| {model} | {pm(b['attacks']['transfer'])} | {pm(s['attacks']['transfer'])} | "
            f"{s['key']} sigma {s['sigma']} |"
        )
    if not flags:
        return VERDICTS[3], rule, lines
    return (VERDICTS[0] if _majority(flags) else VERDICTS[2]), rule, lines


# ---------------------------------------------------------------------------------------------
# The page


def _in_grid(row: dict, study: StudyConfig) -> bool:
    """A row of the study's current grid (rows of runs or sigmas since dropped stay on disk)."""
    return row["run"] < study.runs and (row["setting"] == "base" or row["sigma"] in study.sigmas)


def load_results(out: Path) -> dict:
    """Everything the page needs, read from the study's folder."""
    rows = []
    for path in sorted((out / "eval").glob("*.jsonl")) if (out / "eval").exists() else []:
        if not path.name.endswith(".stale.jsonl"):
            rows += read_jsonl(path)
    states = (
        [json.loads(p.read_text()) for p in sorted((out / "state").glob("*.json"))]
        if (out / "state").exists()
        else []
    )
    certs = (
        [json.loads(p.read_text()) for p in sorted((out / "certify").glob("*.json"))]
        if (out / "certify").exists()
        else []
    )
    selection = (
        json.loads((out / "selection.json").read_text()) if (out / "selection.json").exists() else None
    )
    has_study = (out / "study.json").exists()
    study = study_from_json(out / "study.json") if has_study else StudyConfig(models=["?"])
    rows = [r for r in rows if _in_grid(r, study.for_model(r["model"]))]
    calibration = {}
    for p in sorted((out / "calibration").glob("*.json")) if (out / "calibration").exists() else []:
        calibration[p.stem] = json.loads(p.read_text())
    training = {}
    for p in sorted((out / "models").glob("*/metrics.jsonl")) if (out / "models").exists() else []:
        recs = read_jsonl(p)
        if recs:
            training[p.parent.name] = recs
    return {
        "rows": rows,
        "states": states,
        "certs": certs,
        "selection": selection,
        "study": study,
        "convergence": [r for r in read_jsonl(out / "convergence.jsonl") if r.get("kind") != "blackbox"],
        "blackbox": read_jsonl(out / "blackbox.jsonl"),
        "headline": [
            r
            for path in sorted((out / "headline").glob("*.jsonl"))
            if (out / "headline").exists()
            if not path.name.endswith(".stale.jsonl")
            for r in read_jsonl(path)
        ],
        "plateau": [
            r
            for path in sorted((out / "plateau").glob("*.jsonl"))
            if (out / "plateau").exists()
            if not path.name.endswith(".stale.jsonl")
            for r in read_jsonl(path)
        ],
        "training": training,
        "calibration": calibration,
    }


def first_examples(row: dict, n: int) -> dict:
    """A copy of an evaluation row restricted to its first ``n`` examples."""
    keep = 2 * n if judgements_of(row) else 2 * ((n + 7) // 8)  # hex digits
    return {**row, "n": n, "correct": {k: v[:keep] for k, v in row["correct"].items()}}


def plateau_tables(res: dict) -> dict | None:
    """The plateau stage's rows merged with everything before them, on its first N examples:
    ``grid`` (the evaluation's and the headline ladder's attacks only) and ``converged`` (with the
    plateau attacks), both ``aggregate`` tables of the models whose best smoothed row the stage
    finished for every run; ``measured`` {(model, setting)} the stage ran on for every run; None
    before it ran."""
    plateau = res.get("plateau") or []
    if not plateau:
        return None
    n = min(int(r["n"]) for r in plateau)
    runs: dict[tuple, set] = defaultdict(set)
    attacks: dict[tuple, set] = defaultdict(set)
    for r in plateau:
        attacks[(r["model"], r["setting"], r["sigma"], r["run"])].add(r["attack"])
    full = max(len(a) for a in attacks.values())
    for (model, setting, sigma, run), names in attacks.items():
        if len(names) == full:  # every attack of the stage ran on this row and run
            runs[(model, setting, sigma)].add(run)
    study = res["study"]
    models = {
        m
        for (m, setting, _), rr in runs.items()
        if setting == "smoothed" and len(rr) == study.for_model(m).runs
    }
    # a row of the headline ladder keeps its name apart from the grid's attack of the same name
    earlier = [first_examples(r, n) for r in res["rows"] if r["model"] in models] + [
        {**first_examples(r, n), "attack": f"{r['attack']} (headline)"}
        for r in res.get("headline", [])
        if r["model"] in models
    ]
    keys = {k for k, rr in runs.items() if k[0] in models and len(rr) == study.for_model(k[0]).runs}
    # base rows for claim 1, sigma-0 votes so that claim 1 knows a weight-noise model
    earlier = [
        r
        for r in earlier
        if r["setting"] == "base" or not r["sigma"] or (r["model"], r["setting"], r["sigma"]) in keys
    ]
    added = [first_examples(r, n) for r in plateau if (r["model"], r["setting"], r["sigma"]) in keys]
    return {
        "n": n,
        "grid": aggregate(earlier),
        "converged": aggregate(earlier + added),
        "measured": {(m, st) for m, st, _ in keys},
        "rows": earlier + added,
        "attacks": {r["attack"] for r in added},
        "seconds": sum(r["craft_seconds"] + r["judge_seconds"] for r in plateau),
        "gradients": max(int(r["gradients"]) for r in plateau),
    }


def worst_case_noise(rows: list[dict], model: str, setting: str, sigma: float, key: str) -> float:
    """The judging noise in a row's worst case: ``min_estimate_bias`` over its clean pass and
    every attack judged with ``key``, per run, averaged over runs (negative: the reported worst
    case is that much below the minimum of the true probabilities). Seeded: the page is stable."""
    runs: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        if (r["model"], r["setting"], r["sigma"]) == (model, setting, sigma) and key in r["correct"]:
            runs[r["run"]].append(r)
    biases = []
    for run, rs in sorted(runs.items()):
        biases.append(min_estimate_bias(*row_estimates(rs, key), np.random.default_rng(run)))
    return statistics.fmean(biases) if biases else 0.0


def plateau_headline(pt: dict | None) -> list[str]:
    """One sentence for the headline: the best smoothed row with input noise and its base model on
    the plateau stage's images, with its attacks; [] before the stage ran."""
    if pt is None or (best := best_smoothed(pt["converged"])) is None:
        return []
    base = base_row(pt["converged"], best["model"])
    return [
        f"With the plateau attacks (APGD at a budget converged in steps and draws, first {pt['n']} images) "
        "the best row "
        f"with input noise is {best['model']}, {best['key']}, sigma {best['sigma']}: "
        f"{pm(best['worst'])} worst case"
        + (f" (its base model: {pm(base['worst'])})." if base else ".")
        + " Independent runs still find a little more on the hard vote (docs/attack-strength.md, "
        "'Restarts on the headline row'), so these are upper bounds too. "
        "See 'Claims 1, 3, 4 and 6 under a converged budget'."
    ]


def plateau_lines(res: dict, pt: dict, claims_grid: dict, claims_conv: dict) -> list[str]:
    """The page section of the plateau stage: per model the worst cases of its base and best
    smoothed row on the stage's examples before and after it, and the claims re-judged there."""
    study = res["study"]
    n, grid, conv = pt["n"], pt["grid"], pt["converged"]
    ran = [
        f"{t:g}"
        for i, t in enumerate(study.plateau_temperatures())
        if tempered_attack_name(i, t) in pt.get("attacks", ())
    ]
    tempered = (
        ", then APGD-CE on the expected softmax of logits / "
        + (ran[0] if len(ran) == 1 else f"T for T = {', '.join(ran)} in turn")
        + " (a surrogate of the hard vote's tally: 'Tempered APGD-CE' in docs/attack-strength.md)"
        if ran
        else ""
    )
    L = [
        f"## Claims 1, 3, 4 and 6 under a converged budget (first {n} images)",
        "",
        f"The grid's APGD budget ({study.apgd_steps} x {study.draws}) is not converged once input noise is "
        "added (see 'Attack convergence' and docs/attack-strength.md). The plateau stage attacked every "
        "model's best smoothed row with input noise (sigma > 0) and its base model with APGD-CE and "
        f"APGD-DLR at {study.plateau_steps} steps x {study.plateau_draws} draws{tempered} "
        f"({pt['gradients']} gradients per image and attack), cascaded after every other attack of the "
        f"same row and run, on the first {n} test images of every run: {pt['seconds'] / 3600:.2f} "
        "CPU-hours of crafting and judging. Every number below is on those images; 'grid' is the worst "
        "case over all the study's other attacks (AutoAttack and Square included), '+ plateau' adds the "
        "stage's. How far these budgets are from converged (doubling their steps and draws, the tempered "
        "attack on its own, more restarts, more runs of AutoAttack) is measured in "
        "docs/attack-strength.md ('Tempered APGD-CE', 'Restarts on the headline row', 'Does AutoAttack "
        "find more after the study?'): the smoothed columns are upper bounds.",
        "",
        "| model | base: grid | base: + plateau | best smoothed (+ plateau) | smoothed: grid "
        "| smoothed: + plateau | judging noise in the '+ plateau' columns (base / smoothed) |",
        "|---|---|---|---|---|---|---|",
    ]
    undershoot = [0.0]
    for model in _models(conv):
        s, b, bg = best_smoothed(conv, model=model), base_row(conv, model), base_row(grid, model)
        if s is None or b is None:
            continue
        sg = _rows(grid, model=model, setting="smoothed", sigma=s["sigma"], key=s["key"])
        base_conv = pm(b["worst"]) if (model, "base") in pt["measured"] else "not run"
        noise = [worst_case_noise(pt["rows"], model, r["setting"], r["sigma"], r["key"]) for r in (b, s)]
        undershoot += [-v for v in noise]
        L.append(
            f"| {model} | {pm(bg['worst'])} | {base_conv} | {s['key']} sigma {s['sigma']} | "
            f"{pm(sg[0]['worst']) if sg else '-'} | {pm(s['worst'])} | "
            f"{100 * noise[0]:+.1f} / {100 * noise[1]:+.1f} |"
        )
    missing = [m for m in _models(aggregate(res["rows"])) if m not in _models(conv)]
    L += [
        "",
        "A worst case over attacks takes, per image, the smallest of several estimated probabilities "
        f"of being right (each from {study.judgements} independent judgements), and the smallest of "
        "noisy estimates undershoots the smallest true one. The last column estimates that undershoot "
        "by a parametric bootstrap (each estimate redrawn as Binomial(judgements, p) / judgements, "
        "`min_estimate_bias`), in points: the part of each worst case that is judging noise, not attack "
        f"strength: at most {100 * max(undershoot):.1f} points here.",
        "",
    ]
    if missing:
        L += [f"Not measured by the stage yet: {', '.join(missing)}.", ""]
    L += [
        "| claim | verdict, grid budget (all images) | verdict, + plateau (these images and models) |",
        "|---|---|---|",
    ]
    L += [f"| {c} | {claims_grid[c][0]} | {claims_conv[c][0]} |" for c in sorted(claims_conv)]
    L += [""]
    for c in sorted(claims_conv):
        L += [f"Claim {c} with the plateau attacks:", ""] + claims_conv[c][2] + [""]
    return L


def _convergence_lines(conv, study):
    """The convergence step's tables: APGD's worst case per budget scale, the black-box check and
    the headline setting's accuracy at every m judged there. Returns (lines, change on doubling)."""
    m = max(study.ms)
    by_scale = defaultdict(dict)
    for r in conv:
        if r.get("kind") == "convergence":
            by_scale[r["scale"]][r["attack"]] = r
    if not by_scale:
        return ["Not measured."], None
    first = next(iter(conv))
    lines = [
        f"Setting: {first['model']} smoothed at sigma {first['sigma']}, first {first['n']} test images, "
        f"judged by the hard vote at m {m}. Worst case over APGD-CE and APGD-DLR, each run on every "
        "image (no cascade):",
        "",
        "| scale | steps x draws | APGD-CE | APGD-DLR | worst of the two | craft s |",
        "|---|---|---|---|---|---|",
    ]
    worst, masks = {}, {}
    for scale, d in sorted(by_scale.items()):
        n = next(iter(d.values()))["n"]
        ok = np.ones(n)
        for r in d.values():
            ok = np.minimum(ok, correct_fraction(r, f"hard@{m}", n))
        worst[scale], masks[scale] = float(ok.mean()), ok
        any_r = next(iter(d.values()))
        lines.append(
            f"| {scale} | {any_r['steps']} x {any_r['draws']} | "
            + " | ".join(
                f"{100 * d[a]['accuracy'][f'hard@{m}']:.1f}" if a in d else "-"
                for a in ("apgd-ce", "apgd-dlr")
            )
            + f" | {100 * worst[scale]:.1f} | {sum(r['craft_seconds'] for r in d.values()):.1f} |"
        )
    scales = sorted(worst)
    delta = abs(worst[scales[1]] - worst[scales[0]]) if len(scales) > 1 else None
    if len(scales) > 2:
        lines += [
            "",
            f"From scale {scales[0]} to {scales[-1]} ({scales[-1]}x the steps and the draws) the worst case "
            f"moved {100 * (worst[scales[-1]] - worst[scales[0]]):+.1f} points.",
        ]
    square = [r for r in conv if r.get("kind") == "blackbox"]
    if square:
        r = square[0]
        beyond = expected_found(masks[scales[0]], correct_fraction(r, f"hard@{m}"))
        lines += [
            "",
            f"Black-box check: Square ({r['queries']} queries, on the soft smoothed scores over "
            f"{study.draws} draws) leaves {100 * r['accuracy'][f'hard@{m}']:.1f}% "
            f"({r['craft_seconds']:.0f} s); it fools {beyond:.1f} image(s) that APGD at scale {scales[0]} "
            "left robust (expected count)"
            + (
                " — more than none: gradient masking suspected on this setting."
                if beyond >= 0.5
                else ", so no sign of gradient masking on this setting (weak evidence: Square follows "
                "score changes, which the noise in randomised scores hides)."
            ),
        ]
    ms_all = sorted(int(k.split("@")[1]) for k in first["accuracy"] if k.startswith("hard@"))
    if len(ms_all) > len(study.ms):
        row = by_scale[scales[0]]
        n = next(iter(row.values()))["n"]
        cells = []
        for mm in ms_all:
            ok = np.ones(n)
            for r in row.values():
                ok = np.minimum(ok, correct_fraction(r, f"hard@{mm}", n))
            cells.append(f"{100 * ok.mean():.1f}")
        lines += [
            "",
            f"Claim 3 beyond the grid, on this setting (APGD worst case at scale {scales[0]}, hard vote):",
            "",
            "| " + " | ".join(f"m={mm}" for mm in ms_all) + " |",
            "|---" * len(ms_all) + "|",
            "| " + " | ".join(cells) + " |",
        ]
    return lines, delta


def _headline_with_stronger_attacks(res: dict, best: dict | None) -> list[str]:
    """The headline row's worst case on the convergence images (first run), alone and with the
    points of each convergence scale's APGD attacks added per image: what a stronger budget costs it."""
    conv = [r for r in res["convergence"] if r.get("kind") == "convergence"]
    if best is None or not conv or conv[0]["model"] != best["model"] or conv[0]["sigma"] != best["sigma"]:
        return []
    key, n = best["key"], conv[0]["n"]
    rows = [
        r
        for r in res["rows"]
        if r["model"] == best["model"]
        and r["setting"] == "smoothed"
        and r["sigma"] == best["sigma"]
        and r["run"] == 0
    ]
    worst = np.ones(n)
    for r in rows:
        worst = np.minimum(worst, correct_fraction(r, key)[:n])
    cells, acc = [], worst.copy()
    for scale in sorted({r["scale"] for r in conv}):
        for r in conv:
            if r["scale"] == scale and key in r["correct"]:
                acc = np.minimum(acc, correct_fraction(r, key, n))
        cells.append(f"with scale {scale} added: {100 * acc.mean():.1f}%")
    return [
        f"The headline row ({best['model']}, {key}, sigma {best['sigma']}) on these {n} images, first "
        f"run: {100 * worst.mean():.1f}% under the study's attacks; "
        + "; ".join(cells)
        + " (cumulative, per image). The drop is what the study's budget leaves unfound.",
        "",
    ]


def _ladder_level(attack: str) -> str:
    """The budget level a headline-ladder attack belongs to: ``apgd-ce@x4`` -> ``x4``."""
    return attack.split("@")[1] if "@" in attack else attack


def headline_ladder(
    res: dict, best: dict | None, settings: tuple[str, ...] = ("smoothed", "base")
) -> dict | None:
    """The headline rows under the ladder (``out/headline``): per setting ("smoothed" judged by the
    headline's vote@m, "base" by ``none@1``) and run, the worst case per image after the grid's
    attacks, then cumulatively after each ladder level in the order run (``x2``, ``x4``,
    ``autoattack``, then the check level). Returns {"levels": [...], "check": level or None,
    "acc": {setting: {run: {level: accuracy}}}, "n": n} or None when there is no ladder."""
    if best is None:
        return None
    ladder = [r for r in res.get("headline", []) if r["model"] == best["model"]]
    if not ladder:
        return None
    keys = {k: v for k, v in {"smoothed": best["key"], "base": "none@1"}.items() if k in settings}
    sigmas = {"smoothed": best["sigma"], "base": 0.0}
    acc: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    levels: list[str] = ["grid"]
    n = ladder[0]["n"]
    for setting, key in keys.items():
        for run in sorted({r["run"] for r in ladder if r["setting"] == setting}):
            grid = [
                r
                for r in res["rows"]
                if (r["model"], r["setting"], r["sigma"], r["run"])
                == (best["model"], setting, sigmas[setting], run)
            ]
            ok = np.ones(n)
            for r in grid:
                ok = np.minimum(ok, correct_fraction(r, key, n))
            cells = {"grid": float(ok.mean())}
            for r in ladder:
                if (r["setting"], r["sigma"], r["run"]) != (setting, sigmas[setting], run):
                    continue
                ok = np.minimum(ok, correct_fraction(r, key, n))
                level = _ladder_level(r["attack"])
                cells[level] = float(ok.mean())
                if level not in levels:
                    levels.append(level)
            acc[setting][run] = cells
    scaled = [lv for lv in levels if lv.startswith("x")]
    check = scaled[-1] if scaled and levels[-1] == scaled[-1] and len(scaled) > 1 else None
    aa = sorted({int(r["gradients"]) for r in ladder if r["attack"] == "autoattack" and "gradients" in r})
    return {"levels": levels, "check": check, "acc": dict(acc), "n": n, "autoattack_gradients": aa}


def _ladder_ran(lad: dict | None) -> bool:
    """Whether the smoothed row of a ladder has levels beyond the grid's (in some run)."""
    return lad is not None and any(len(c) > 1 for c in lad["acc"].get("smoothed", {}).values())


def _reported_level(lad: dict) -> str:
    """The ladder level the headline reports: the last before the doubling check."""
    levels = [lv for lv in lad["levels"] if lv != lad["check"]]
    return levels[-1]


def headline_ladder_summary(lad: dict) -> dict:
    """{setting: (mean, std) at the reported level over runs; "delta": {setting: largest change the
    check level made on the runs it ran}; "aa": {setting: largest AutoAttack increment}}."""
    rep = _reported_level(lad)
    out: dict = {"delta": {}, "aa": {}}
    for setting, runs in lad["acc"].items():
        values = [c[rep] for c in runs.values() if rep in c]
        out[setting] = mean_std(values) if values else None
        checks = [c[rep] - c[lad["check"]] for c in runs.values() if lad["check"] and lad["check"] in c]
        out["delta"][setting] = max(checks) if checks else None
        before_aa = [lv for lv in lad["levels"] if lv not in ("autoattack", lad["check"])]
        aa = [c[before_aa[-1]] - c["autoattack"] for c in runs.values() if "autoattack" in c]
        out["aa"][setting] = max(aa) if aa else None
    return out


def headline_ladder_lines(
    lad: dict | None, best: dict | None, study: StudyConfig, intro: str | None = None
) -> list[str]:
    """The page section of the headline ladder: accuracy per level, run and row; the verdict on
    convergence (doubling the reported budget moved it < 1 point and AutoAttack found no more).
    ``intro`` replaces the section's title and first paragraph (a further row's table)."""
    if lad is None or best is None or not lad["acc"]:
        return []
    names = {
        "grid": f"the grid's attacks ({study.apgd_steps} x {study.draws})",
        "autoattack": "+ AutoAttack (every survivor)",
    }
    for lv in lad["levels"]:
        if lv.startswith("x"):
            k = int(lv[1:])
            names[lv] = f"+ APGD-CE/DLR {k * study.apgd_steps} x {k * study.draws}" + (
                " (the doubling check)" if lv == lad["check"] else ""
            )
    runs = sorted({run for r in lad["acc"].values() for run in r})
    L = (
        [
            "## The headline under stronger attacks",
            "",
            f"The headline row ({best['model']}, {best['key']}, sigma {best['sigma']}) and its base model on "
            f"all {lad['n']} images of every run: the grid's attacks, then APGD-CE and APGD-DLR at larger "
            "budgets and AutoAttack on every image still robust, cascaded (the accuracy after each level is "
            "cumulative, per image). The last level doubles the steps and the draws of the one before it.",
        ]
        if intro is None
        else [intro]
    )
    L += [
        "",
        "| level | gradients per image and attack | "
        + " | ".join(f"{s} run {run}" for s in lad["acc"] for run in runs)
        + " |",
        "|---" * (2 + len(lad["acc"]) * len(runs)) + "|",
    ]
    for lv in lad["levels"]:
        cells = [
            f"{100 * lad['acc'][s][run][lv]:.1f}" if lv in lad["acc"][s].get(run, {}) else "-"
            for s in lad["acc"]
            for run in runs
        ]
        k = 1 if lv == "grid" else int(lv[1:]) if lv.startswith("x") else None
        aa = "/".join(str(g) for g in lad.get("autoattack_gradients", [])) or "-"
        grads = f"{k * k * study.apgd_steps * study.draws}" if k else f"{aa} (AutoAttack's own budget)"
        L.append(f"| {names.get(lv, lv)} | {grads} | " + " | ".join(cells) + " |")
    summ = headline_ladder_summary(lad)
    L.append("")
    for setting in lad["acc"]:
        d, aa = summ["delta"][setting], summ["aa"][setting]
        parts = []
        if aa is not None:
            parts.append(f"AutoAttack lowered it by up to {100 * aa:.1f} points")
        if d is not None:
            parts.append(
                f"doubling the budget before it moved it by up to {100 * d:.1f} points "
                + ("(converged: < 1 point)" if d < 0.01 else "(NOT converged: >= 1 point)")
            )
        if parts:
            L.append(f"- {setting}: " + "; ".join(parts) + ".")
    L.append("")
    return L


def _found_only(rows: list[dict], attack: str, subset_of) -> tuple[list[str], list[tuple], int]:
    """Table lines (model, setting, sigma, run, budget, robust before, found) of every row group with
    an ``attack`` row: the expected count of images of its subset (``subset_of(attack_row)``, the
    first N) that ``attack`` fooled although every attack before it in the cascade had left them
    robust, judged by the hard vote at the largest m (``none@1`` unsmoothed). Returns (lines,
    (model, setting, sigma, run, found, subset) of the rows where it found at least half an image,
    the number of rows)."""
    groups: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        groups[(r["model"], r["setting"], r["sigma"], r["run"])][r["attack"]] = r
    later = CASCADED[CASCADED.index(attack) :] if attack in CASCADED else (attack,)
    lines, flagged, total = [], [], 0
    for (model, setting, sigma, run), attacks in sorted(groups.items(), key=lambda kv: str(kv[0])):
        row = attacks.get(attack)
        if row is None:
            continue
        key = max(
            (k for k in row["correct"] if k.startswith(("hard@", "none@"))),
            key=lambda k: int(k.split("@")[1]),
        )
        n = row["n"]
        subset = np.zeros(n)
        subset[: min(subset_of(row), n)] = 1.0
        before = subset.copy()
        for name, r in attacks.items():
            if name not in later and key in r["correct"]:
                before = np.minimum(before, correct_fraction(r, key, n))
        only = expected_found(before, correct_fraction(row, key, n))
        total += 1
        if only >= 0.5:
            flagged.append((model, setting, sigma, run, only, int(subset.sum())))
        queries = re.search(r"square_queries=(\d+)", row["budget"])
        budget = "rand" if "rand" in row["budget"] else "standard"
        if attack == "square":
            budget = f"{queries.group(1)} queries" if queries else row["budget"]
        lines.append(
            f"| {model} | {setting} | {sigma} | {run} | {budget} | "
            f"{before.sum():.1f} of {int(subset.sum())} | {only:.1f} |"
        )
    return lines, flagged, total


def autoattack_lines(rows: list[dict], study: StudyConfig) -> list[str]:
    """Per row with an AutoAttack run (the first ``autoattack_runs`` runs): the images of its subset
    (the first ``autoattack_examples``) that AutoAttack fooled although the study's attacks before
    it had left them robust."""
    lines, flagged, total = _found_only(rows, "autoattack", lambda r: study.autoattack_examples)
    if total == 0:
        return []
    return [
        "## AutoAttack cross-check",
        "",
        f"The official AutoAttack (`rand` for randomised rows, `standard` otherwise) ran after the "
        f"study's white-box attacks on the images of its subset they left robust; it found more on "
        f"{len(flagged)} of {total} rows. Its successes count in those rows' worst case.",
        "",
        "| model | setting | sigma | run | version | robust before (of subset) | found by AutoAttack only |",
        "|---|---|---|---|---|---|---|",
        *lines,
        "",
    ]


def _square_subset(row: dict) -> int:
    return int(row.get("subset", row["n"]))


def masking_lines(rows: list[dict]) -> list[str]:
    """One sentence for the headline: the rows on which Square found more than 1% of its images
    beyond every gradient-based attack (masked gradients), with the points it took off."""
    _, flagged, _ = _found_only(rows, "square", _square_subset)
    worst: dict[tuple, list[float]] = defaultdict(list)
    for model, setting, sigma, _run, found, subset in flagged:
        if found / subset > 0.01:
            worst[(model, setting, sigma)].append(100 * found / subset)
    if not worst:
        return []
    cells = [
        f"{m} {st}" + (f" sigma {sg}" if st == "smoothed" else "") + f" (-{max(v):.1f} points)"
        for (m, st, sg), v in sorted(worst.items())
    ]
    return [
        "**Masked gradients:** the black-box Square attack fooled more than 1% of the images that "
        "every gradient-based attack (AutoAttack included) had left robust on "
        + ", ".join(cells)
        + " (see 'Black-box check'); those rows' worst cases include Square's finds."
    ]


def square_lines(rows: list[dict], study: StudyConfig) -> list[str]:
    """Per row: the images that the black-box Square attack fooled although every white-box attack
    (and AutoAttack) had left them robust: masked gradients where it is more than a few."""
    lines, flagged, total = _found_only(rows, "square", _square_subset)
    if total == 0:
        return []
    return [
        "## Black-box check: Square on every row",
        "",
        f"The official Square attack ran last on the images each row's other attacks left robust "
        f"({study.grid_square_queries} queries on the scores of a deterministic model, every image "
        f"of every run; {study.grid_square_queries_randomised} on the soft vote over {study.draws} "
        f"draws for a randomised row, on AutoAttack's subset). A black-box attack that finds what "
        "every gradient-based attack missed "
        f"means masked gradients: it found at least half an image more on {len(flagged)} of {total} rows. "
        "Its successes count in the worst case. On randomised scores Square is weak by construction "
        "(the noise hides the small score changes it follows), so finding nothing there is weak "
        "evidence.",
        "",
        "| model | setting | sigma | run | queries | robust before (of all) | found by Square only |",
        "|---|---|---|---|---|---|---|",
        *lines,
        "",
    ]


def estimate_full_study(out: Path, res: dict) -> list[str]:
    """Markdown: the full study's wall time extrapolated from this run's unit costs (seconds per
    example-gradient for crafting, per example-forward for judging and certifying, per
    example-pass for training, each measured per model). A rough estimate, not a measurement."""
    plan_path = out / "study_full.json"
    if not plan_path.exists():
        return []
    plan = json.loads(plan_path.read_text())
    full = StudyConfig(**renamed(plan["study"]))
    rows_by_model = defaultdict(list)
    for r in res["rows"]:
        rows_by_model[r["model"]].append(r)
    lines = [
        "| model | train h | eval h | certify h | us/gradient | us/forward |",
        "|---|---|---|---|---|---|",
    ]
    totals = [0.0, 0.0, 0.0]
    S, D, P, T = full.apgd_steps, full.draws, full.paper_steps, full.transfer_steps
    for name, spec in plan["train"].items():
        train_h = eval_h = cert_h = 0.0
        recs = res["training"].get(name)
        cfg_path = out / "models" / name / "config.yaml"
        if recs and cfg_path.exists():
            import yaml

            from smoothinf.training.step_timing import train_passes
            from smoothinf.training.trainer import TrainConfig

            quick_cfg = TrainConfig(**yaml.safe_load(cfg_path.read_text()))
            per = statistics.fmean(r["epoch_loop_seconds"] for r in recs)
            unit = per / ((quick_cfg.max_train_examples or 50_000) * train_passes(quick_cfg))
            train_h = unit * spec["examples"] * spec["epochs"] * spec["passes"] / 3600
        rows = rows_by_model.get(name, [])
        calib = res["calibration"].get(name)
        if rows and calib:
            craft_unit, judge_unit = calib["gradient_s"], calib["forward_s"]
            noisy = any(r["setting"] == "smoothed" and r["sigma"] == 0 for r in rows)
            n_sig = len(full.sigmas) if noisy else len([x for x in full.sigmas if x > 0])
            base_g = 20 + (2 * S * D if noisy else 10 * S) + T
            smooth_g = n_sig * (20 + 2 * S * D + 2 * P * D)
            aa = full.autoattack_examples * (1 + n_sig) * 4000
            grads = full.runs * (full.examples * (base_g + smooth_g) + aa)
            fwd = full.runs * full.examples * (5 + n_sig * 7 * max(full.ms))
            eval_h = (craft_unit * grads + judge_unit * fwd) / 3600
            cert_h = (
                judge_unit * len(full.cert_sigmas) * full.cert_examples * (full.cert_n0 + full.cert_n) / 3600
            )
        totals = [a + b for a, b in zip(totals, (train_h, eval_h, cert_h), strict=True)]
        units = res["calibration"].get(name, {})
        lines.append(
            f"| {name} | {train_h:.2f} | {eval_h:.2f} | {cert_h:.2f} | "
            f"{1e6 * units.get('gradient_s', float('nan')):.0f} | "
            f"{1e6 * units.get('forward_s', float('nan')):.0f} |"
        )
    lines.append(f"| **total** | **{totals[0]:.2f}** | **{totals[1]:.2f}** | **{totals[2]:.2f}** | | |")
    return [
        "## Estimated wall time of the full study (an extrapolation)",
        "",
        f"The full study of `study.yaml` ({full.examples} images, {full.runs} runs, "
        f"{len(full.sigmas)} sigmas, "
        f"m up to {max(full.ms)}, APGD {S} steps x {D} draws) extrapolated from unit costs measured in "
        "this run: seconds per example-gradient (PGD on a batch of the study's batch_size) and per "
        "example-forward (8 smoothing draws), both per model (`calibration/`), and seconds per "
        "example-pass of its training epochs. Gradient and forward counts follow the study's attack "
        "budgets; fixed overheads and machine load are not modelled, so treat this as an order of "
        f"magnitude: **{sum(totals):.1f} h** in all (convergence step not included).",
        "",
        *lines,
        "",
    ]


def _smallest_sigma_for_radius(radius: float, n: int, alpha: float) -> float:
    """The smallest sigma at which Cohen et al.'s certificate can reach ``radius`` with ``n`` draws
    at level ``alpha``: every draw on the top class gives the largest lower bound p_A."""
    from scipy.stats import norm

    from smoothinf.smoothing.statistics import clopper_pearson_lower

    return radius / float(norm.ppf(clopper_pearson_lower(np.array([n]), n, alpha)[0]))


def _study_span_seconds(out: Path) -> tuple[float | None, str | None]:
    """Seconds from the study's first pass (``started.json``) to its newest output file, or
    ``wall.json``'s record in a copy of the results with how it was measured; (None, None) when
    neither is there."""
    if (out / "wall.json").exists():  # recorded when the results were copied out of the run folder
        wall = json.loads((out / "wall.json").read_text())
        return float(wall["seconds"]), wall.get("measured")
    if not (out / "started.json").exists():
        return None, None
    start = float(json.loads((out / "started.json").read_text())["time"])
    skip = ("study.json", "study_full.json", "started.json")
    outputs = [
        p for p in out.rglob("*") if p.suffix in (".jsonl", ".json", ".safetensors") and p.name not in skip
    ]
    return max((p.stat().st_mtime for p in outputs), default=start) - start, None


def _judging_lines(study: StudyConfig) -> list[str]:
    """How a row's per-image correctness was judged (the page's method paragraph)."""
    if not study.judgements:
        return [
            "Judging: each attack's images judged once (one set of draws); a randomised row's "
            "per-image worst case over attacks is then a minimum over independent judgements, biased "
            "low.",
            "",
        ]
    return [
        "Judging: a randomised classifier is right on an image with some probability, so every "
        f"attack's images are judged with {study.judged_draws()} fresh draws per image, and each vote@m's "
        f"P(correct) is the mean over {study.judgements} random m-subsets of them (the unsmoothed "
        f"base model: {study.judgements} independent forwards, each with its own weight noise). A "
        "row's accuracy is the mean over images of the smallest P(correct) over its attacks (an "
        "expected accuracy, per image the attacker's best attack); deterministic rows are 0 or 1 "
        "per image as usual. The cascade attacks every image with P(correct) > 0.",
        "",
    ]


def build_page(out: str | os.PathLike) -> str:
    """The markdown of the reproduction page from the study in ``out``."""
    out = Path(out)
    res = load_results(out)
    study: StudyConfig = res["study"]
    table = aggregate(res["rows"])
    seconds = defaultdict(float)
    for s in res["states"]:
        seconds[s["step"].split("/")[0]] += s.get("seconds", 0.0)
    total = sum(seconds.values())
    craft = sum(r["craft_seconds"] for r in res["rows"])
    judge = sum(r["judge_seconds"] for r in res["rows"])
    L = ["# Does smoothed inference help? The paper's claims re-measured on MNIST", ""]
    if study.quick:
        L += [
            "> **QUICK RUN — NOT THE STUDY.** These numbers come from `python studies/paper_mnist/run.py "
            "--quick`: a short training on a subset of the images, a handful of test images, a few attack "
            "steps. They prove that the pipeline runs end to end and how this page is built; they say "
            "nothing about the paper's claims. Run `python studies/paper_mnist/run.py --out "
            "runs/paper_mnist` (hours on a CPU) and rebuild this page for the real numbers.",
            "",
        ]
    L += [
        f"Rebuilt by `python studies/paper_mnist/run.py --out {out} --report-only` from the files in "
        f"`{out}`. eps {study.eps} L_inf, the first {study.examples} MNIST test images, {study.runs} runs "
        f"(mean ± std), sigma grid {study.sigmas} (pixel units), m {study.ms}, votes {study.votes}.",
        "",
    ]
    if study.model_eval:
        L += [
            "Costly models evaluated on less: "
            + "; ".join(
                f"{name}: " + ", ".join(f"{k} {v}" for k, v in over.items())
                for name, over in study.model_eval.items()
            )
            + ".",
            "",
        ]
    L += [
        "Attacks per row: the clean images; PGD-20 on the base model, the paper's EPGD "
        f"({study.paper_steps} steps x {study.draws} draws) and PGD with {study.paper_steps * study.draws} "
        "one-draw steps (the paper's attacks); "
        f"PGD-{study.transfer_steps} examples transferred from an independently "
        f"trained model; then the adaptive preset, APGD-CE on the expected softmax and APGD-DLR on the "
        f"expected loss through the noise ({study.apgd_steps} steps x {study.draws} draws; unsmoothed "
        "deterministic rows: APGD-CE and APGD-T)"
        + (
            ", as a cascade: on the images that at least one vote and m still got right after the "
            "earlier attacks (AutoAttack's practice; exact for the worst case, so these columns are "
            "cumulative)"
            if study.cascade
            else ""
        )
        + f"; AutoAttack on the first {study.autoattack_examples} images of the first "
        f"{study.autoattack_runs} run(s)"
        + (
            f"; last, the black-box Square attack on the images still robust ({study.grid_square_queries} "
            "queries on a deterministic model's scores, every image and run; "
            f"{study.grid_square_queries_randomised} on the soft vote over {study.draws} draws of a "
            "randomised row, AutoAttack's subset; see 'Black-box check')"
            if study.grid_square_queries or study.grid_square_queries_randomised
            else ""
        )
        + ". A row's worst case is per image over all of them; its "
        "'paper' column over the paper's attacks only.",
        "",
        *_judging_lines(study),
    ]
    pt = plateau_tables(res)
    # headline
    best = best_smoothed(table, study, positive_sigma=False)
    L += ["## Headline", ""]
    if best is None:
        L += ["Not measured yet (no evaluation rows).", ""]
    else:
        b = base_row(table, best["model"])
        lad = headline_ladder(res, best)
        summ = headline_ladder_summary(lad) if lad else {}
        strong_s, strong_b = summ.get("smoothed"), summ.get("base")
        if lad:
            rep = _reported_level(lad)
            k = int(rep[1:]) if rep.startswith("x") else None
            strong = (
                f"; every image and run: up to APGD {k * study.apgd_steps} x {k * study.draws}" if k else ""
            )
            head = f"worst case, grid budget | worst case, stronger budget{strong} + AutoAttack"
        else:
            head = "worst case (adaptive protocol, eps 0.3)"
        cols = 3 if lad else 2
        L += [
            f"| classifier | clean | {head} |",
            "|---" * (cols + 1) + "|",
            f"| best smoothed: {best['model']}, {best['key']}, sigma {best['sigma']} | "
            f"{pm(best['clean'])} | {pm(best['worst'])} |" + (f" {pm(strong_s)} |" if lad else ""),
            f"| its base model, unsmoothed, same attack budget | {pm(b['clean'])} | {pm(b['worst'])} |"
            + (f" {pm(strong_b)} |" if lad else ""),
            MADRY_MNIST_ROW + (" |" if lad else ""),
            "",
        ]
        if lad:
            checked = [d for d in summ["delta"].values() if d is not None]
            L += [
                "The last column is the headline's number (see 'The headline under stronger attacks'): "
                + (
                    f"doubling its budget moved it by at most {100 * max(checked):.1f} points "
                    + ("(converged)." if max(checked) < 0.01 else "(**not converged**: an upper bound).")
                    if checked
                    else "its doubling check has not run."
                ),
                "",
            ]
        lowered = all(
            (s := best_smoothed(table, model=mm)) is None
            or not _beats(s["worst"], base_row(table, mm)["worst"])
            for mm in _models(table)
            if base_row(table, mm)
        )
        reach = "reaches" if (strong_s or best["worst"])[0] >= TARGET else "does not reach"
        if best["sigma"] == 0:
            pos = best_smoothed(table, study)
            L += [
                "Its sigma is 0: the vote is over the model's own weight noise only, no input noise. "
                + (
                    f"The best row with Gaussian input noise (sigma > 0) is {pos['model']}, {pos['key']}, "
                    f"sigma {pos['sigma']}: {pm(pos['clean'])} clean, {pm(pos['worst'])} worst case "
                    "at the grid budget "
                    f"(its base model: {pm(base_row(table, pos['model'])['worst'])})"
                    + (
                        f"; {pm(headline_ladder_summary(lad_pos)['smoothed'])} under the stronger budget "
                        f"(its base model: {pm(headline_ladder_summary(lad_pos)['base'])})."
                        if _ladder_ran(lad_pos := headline_ladder(res, pos))
                        else "."
                    )
                    if pos is not None and base_row(table, pos["model"])
                    else ""
                ),
                "",
            ]
        L += [
            f"The best smoothed classifier {reach} the {100 * TARGET:.0f}% target. "
            + (
                "**Smoothing did not raise the worst case of any recipe tried** (no model's best smoothed "
                "row beats its base model by the threshold)."
                if lowered
                else "Smoothing raised the worst case of at least one recipe."
            ),
            *(
                [
                    f"**The grid's attack budget is not converged:** doubling APGD's steps and draws moved "
                    f"the headline setting's worst case by {100 * delta:.1f} points (see 'Attack "
                    "convergence'), so every grid worst case here is an upper bound."
                ]
                if (delta := _convergence_lines(res["convergence"], study)[1]) is not None and delta >= 0.01
                else []
            ),
            *plateau_headline(pt),
            *masking_lines(res["rows"]),
            "The best row is a maximum over the grid on the test images (sigma, vote and m were not "
            "selected on a validation split), so it is biased upward; the per-claim tables give every row.",
            "",
        ]
    grid_best = (strong_s or best["worst"])[0] if best is not None else None
    L += long_headline(out, study, TARGET, grid_best)
    # claims
    claims = [
        (
            "1. Smoothing raises clean and adversarial accuracy of adversarially trained models, more with "
            "noise injection",
            claim1(table),
        ),
        ("2. One optimal noise std per base model, the same for every vote", claim2(table, study)),
        ("3. Accuracy grows with the number of draws m", claim3(table, study)),
        ("4. Prediction (hard) voting is best", claim4(table, study)),
        ("5. EPGD k x m is comparable to PGD with k*m steps", claim5(res["convergence"], study)),
        (
            "6. Fine-tuning (CNI-I+W, EPGD-AT, high-k PGD) improves the smoothed classifier",
            claim6(table, study, res["selection"]),
        ),
        ("7. Smoothing defends against transferred (black-box) examples", claim7(table)),
    ]
    claims_conv = {}
    if pt is not None:
        ct = pt["converged"]
        claims_conv = {1: claim1(ct), 3: claim3(ct, study), 4: claim4(ct, study)}
        claims_conv[6] = claim6(ct, study, res["selection"])
    L += ["## Verdicts", ""]
    if claims_conv:
        L += [
            f"| claim | verdict (grid budget) | with the plateau attacks (first {pt['n']} images; see "
            "'Claims 1, 3, 4 and 6 under a converged budget') |",
            "|---|---|---|",
        ]
    else:
        L += ["| claim | verdict |", "|---|---|"]
    for title, (verdict, _, _) in claims:
        c = int(title.split(".")[0])
        conv = f" {claims_conv[c][0] if c in claims_conv else '-'} |" if claims_conv else ""
        L += [f"| {c} | {verdict} |" + conv]
    L += [""]
    for title, (verdict, rule, lines) in claims:
        L += [f"## Claim {title}", "", f"**Verdict: {verdict}.** Rule: {rule}", ""] + lines + [""]
    if pt is not None:
        grid_claims = {int(t.split(".")[0]): c for t, c in claims}
        L += plateau_lines(res, pt, grid_claims, claims_conv)
    # convergence
    conv_lines, delta = _convergence_lines(res["convergence"] + res["blackbox"], study)
    L += ["## Attack convergence", ""] + conv_lines + [""]
    if delta is not None:
        L += [
            f"Doubling steps and draws (scale 1 to 2) changed the worst case by {100 * delta:.1f} points "
            + (
                "(converged: < 1 point)."
                if delta < 0.01
                else "(NOT converged: >= 1 point; raise apgd_steps/draws)."
            ),
            "",
        ]
    L += _headline_with_stronger_attacks(res, best)
    L += autoattack_lines(res["rows"], study)
    L += square_lines(res["rows"], study)
    L += headline_ladder_lines(headline_ladder(res, best), best, study)
    if best is not None and best["sigma"] == 0 and (pos := best_smoothed(table, study)) is not None:
        lad_pos = headline_ladder(res, pos, settings=("smoothed",))
        if _ladder_ran(lad_pos):
            L += headline_ladder_lines(
                lad_pos,
                pos,
                study,
                intro=f"The best row with input noise ({pos['model']}, {pos['key']}, sigma {pos['sigma']}) "
                "under the same ladder, without the doubling check:",
            )
    L += long_lines(out, study)
    L += rejudged_lines(out, study)
    # certification
    L += ["## Certified L2 accuracy (Cohen et al.)", ""]
    if res["certs"]:
        c0 = res["certs"][0]
        L += [
            f"n0 {c0['n0']}, n {c0['n_draws']}, alpha {c0['alpha']}; hard vote; "
            f"the first {c0['rows'][0]['n']} test images.",
            "",
            "| model | sigma | " + " | ".join(f"r = {r}" for r in CERT_RADII) + " | s |",
            "|---" * (len(CERT_RADII) + 3) + "|",
        ]
        for c in res["certs"]:
            for r in c["rows"]:
                L.append(
                    f"| {c['model']} | {r['sigma']} | "
                    + " | ".join(f"{100 * r['certified'][str(rad)]:.1f}" for rad in CERT_RADII)
                    + f" | {r['seconds']:.1f} |"
                )
        L += [
            "",
            f"A radius of 1.0 needs sigma * Phi^-1(p_A) >= 1: out of reach below sigma "
            f"~{_smallest_sigma_for_radius(1.0, c0['n_draws'], c0['alpha']):.2f} with these n and alpha.",
            "",
        ]
    else:
        L += ["Not measured yet.", ""]
    # training
    L += [
        "## Models",
        "",
        "| model | epochs | train s | val clean | val PGD | test-free selection |",
        "|---|---|---|---|---|---|",
    ]
    for name, recs in res["training"].items():
        last = recs[-1]
        L.append(
            f"| {name} | {last['epoch']} | {last['seconds']:.0f} | {100 * last['val_clean']:.1f} | "
            f"{100 * last.get('val_pgd', float('nan')):.1f} | best.safetensors by val PGD |"
        )
    L += [""]
    # compute
    passes = read_jsonl(out / "passes.jsonl")
    # passes before the machine was recorded ran on this project's 2-core CPU machine
    machines = "; ".join(sorted({r.get("machine", "2 CPU cores") for r in passes})) or "not recorded"
    span, how = _study_span_seconds(out)
    # eval, headline and plateau steps resume row by row: a pass that adds rows times only itself, so their
    # rows' own crafting + judging seconds (every row the files hold) are given beside
    row_seconds = {
        stage: sum(r["craft_seconds"] + r["judge_seconds"] for r in res[key])
        for stage, key in (("eval", "rows"), ("headline", "headline"), ("plateau", "plateau"))
    }
    row_seconds["long"] = sum(r["seconds"] for f in load_long(out, study).values() for r in f["records"])
    L += ["## Compute", "", "| stage | step seconds (last pass) | rows' crafting + judging seconds |"]
    L += ["|---|---|---|"]
    L += [
        f"| {k} | {v:.0f} | " + (f"{row_seconds[k]:.0f} |" if k in row_seconds else "- |")
        for k, v in sorted(seconds.items())
    ]
    L += [
        f"| **total** | **{total:.0f}** ({total / 3600:.2f} h) | |",
        "",
        "Step seconds time the last pass that ran each step: a step resumed to add rows (a new attack) "
        "counts only that pass, so the rows' own seconds are the measure of the evaluation's compute.",
        "",
        (
            f"Wall time of the whole study on this machine: **{span / 3600:.2f} h**: {how} "
            if how
            else f"Wall time of the whole study on this machine: **{span / 3600:.2f} h** from the creation "
            "of its first file to its last output, interrupted passes and restarts included "
            if span is not None
            else "Wall time of the whole study: not recorded (no started.json) "
        )
        + f"(up to {max((r['jobs'] for r in passes), default=study.jobs)} steps at once; step seconds "
        "add up the parallel steps, so they can exceed the wall time).",
        "",
        f"Evaluation: crafting {craft:.0f} s, judging {judge:.0f} s (each adversarial batch crafted once per "
        f"(run, sigma, eps, attack) and judged with all {len(study.votes)} votes x {len(study.ms)} m "
        "from one set of "
        f"{study.judged_draws()} draws per "
        "image). Wall times are those of finished steps on the machine that ran them "
        f"({machines}).",
        "",
    ]
    if study.quick:
        L += estimate_full_study(out, res)
    elif study.examples < 1000 or study.runs < 3:
        L += [
            f"This run is cut to fit its machine ({study.examples} images x {study.runs} runs). The "
            "issue's full specification (more images and runs at the converged budgets, every model on "
            "every sigma) is study.yaml's `gpu:` block: `python studies/paper_mnist/run.py --profile gpu "
            "--device cuda --out runs/paper_mnist_gpu` (`make paper-gpu`).",
            "",
        ]
    L += [
        "## CIFAR configurations",
        "",
        "The `paper_*` recipes (`smoothinf train --list-configs`) hold the paper's CIFAR-10 ResNet-20 "
        "(CNI-W and its three fine-tunings) "
        "and CIFAR-10/100 WRN-34-10 (PNI-W, PNI-W+TRADES) setups; see "
        "[docs/paper-cifar-configs.md](../../docs/paper-cifar-configs.md) for the commands and GPU-hour "
        "estimates.",
        "",
    ]
    return "\n".join(L) + "\n"


def write_paper_report(out: str | os.PathLike, doc: str | os.PathLike | None = None) -> Path:
    """Write ``out/paper-reproduction.md`` (and a copy at ``doc``); returns its path."""
    out = Path(out)
    if not (out / "study.json").exists():
        raise ConfigError(f"{out} holds no study (no study.json); run studies/paper_mnist/run.py first")
    path = out / "paper-reproduction.md"
    path.write_text(build_page(out))
    if doc is not None:
        Path(doc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, doc)
    return path
