"""The study's longer-training stage: some of its recipes trained again for longer, each evaluated
with ``smoothinf evaluate``'s protocol, and the page's section on them.

Files, all under ``out/long``: ``models/<name>/`` (the training run, resumable from its ``last.pt``)
and ``eval/<name>.jsonl`` (``smoothinf evaluate`` records, keyed by the weights' tensor digest
(``weights_digest``; records written before it: the checkpoint file's sha256, ``weights_sha256``),
the data's hash and every setting that changes a number: a file of other weights is set aside as
``<name>.stale.jsonl``, never mixed in), and for a model with ``extend`` one
``eval/<name>.from<first>.jsonl`` per further slice of images. Steps ``long/train/<name>``,
``long/eval/<name>`` and ``long/eval/<name>.from<first>``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import yaml

import smoothinf
from paper_mnist.study import MADRY_MNIST, MADRY_MNIST_CLEAN, StudyConfig
from smoothinf.errors import ConfigError
from smoothinf.evaluation.config import EvalConfig
from smoothinf.evaluation.loading import protocol_inputs
from smoothinf.evaluation.report import aggregate, pm, row_flags, setting_name
from smoothinf.evaluation.results import (
    ResultsStore,
    fingerprint_of,
    read_jsonl,
    read_results,
    weights_digest,
)
from smoothinf.evaluation.slices import merge_slices, same_evaluation
from smoothinf.evaluation.steps import (
    fingerprint,
    init_refs,
    run_step,
    set_aside_foreign_rows,
    train_step,
)
from smoothinf.utils import resolve_device

STAGE = "long"


def _train_task(name: str) -> str:
    return f"{STAGE}-train-{name}"


def check_long_inits(configs: Path, study: StudyConfig) -> None:
    """One-line ConfigError unless every model of the stage trains from scratch or starts from
    another model of the stage (``init: "@pgd_at"``: the stage's own long-trained pgd_at), with no
    cycle of such starts; checked before anything is written."""
    models = study.long().models
    for name in models:
        for ref in init_refs(configs, name):
            if ref == name:
                raise ConfigError(f"long_training.models: {name} starts from itself (init '@{ref}')")
            if ref not in models:
                raise ConfigError(
                    f"long_training.models: {name} starts from another step's checkpoint (init '@{ref}'), "
                    f"which the stage does not train: list {ref} in long_training.models too"
                )
    for name in models:  # each model starts from at most one other: follow the chain
        chain = [name]
        while refs := init_refs(configs, chain[-1]):
            if refs[0] in chain:
                raise ConfigError(
                    f"long_training.models: {' -> '.join([*chain, refs[0]])} start from one another in a "
                    "cycle; let one of them train from scratch (no '@' init)"
                )
            chain.append(refs[0])


def long_train_job(configs: Path, name: str, out: Path, study: StudyConfig, refs: dict, log) -> str:
    """Train model ``name`` with the stage's ``train`` overrides, then its own; an ``@other`` init is
    the stage's own checkpoint of ``other`` (``refs``: the finished tasks'). Returns its checkpoint."""
    starts = {ref: refs[_train_task(ref)] for ref in init_refs(configs, name)}
    overrides = {**study.train_overrides(name), **study.long().train_overrides(name)}
    return train_step(configs, name, out, starts, log, overrides, study.device, stage=STAGE)


def _slice_name(name: str, first_example: int) -> str:
    return f"{name}.from{first_example}" if first_example else name


def results_path(out: Path, name: str, first_example: int = 0) -> Path:
    """Model ``name``'s records of the slice of images from ``first_example`` on."""
    return Path(out) / STAGE / "eval" / f"{_slice_name(name, first_example)}.jsonl"


def keyed_on_tensors(identity: dict, model) -> dict:
    """An evaluation identity keyed by the weights' tensor digest (``weights_digest``) in place of
    the checkpoint file's sha256 (``weights_sha256``): the same weights saved again keep it."""
    rest = {k: v for k, v in identity.items() if k != "weights_sha256"}
    return {"weights_digest": weights_digest(model), **rest}


def weights_label(identity: dict) -> tuple[str, str]:
    """(what a record's weights are keyed by, its hex digits): the tensor digest, or for records
    written before it the checkpoint file's sha256."""
    if "weights_digest" in identity:
        return "tensor digest", identity["weights_digest"]
    return "checkpoint file's sha256", identity["weights_sha256"]


def long_eval_job(out: Path, name: str, study: StudyConfig, first_example: int, refs: dict, log) -> None:
    """Evaluate model ``name``'s long-trained checkpoint (``refs``: the finished training task's)
    with ``smoothinf evaluate``'s protocol on its slice of images from ``first_example`` on (0: its
    first ``max_examples``), resuming record by record."""
    ckpt = str(refs[_train_task(name)])
    cfg = study.long().eval_config(name, ckpt, study, first_example)
    got, identity = protocol_inputs(cfg, resolve_device(cfg.device))  # as `smoothinf evaluate`
    identity = keyed_on_tensors(identity, got.model)
    results = results_path(out, name, first_example)
    grid = {"votes": cfg.votes, "sigmas": cfg.sigmas, "ms": cfg.ms, "eps": cfg.eps, "runs": cfg.runs}

    def work():
        set_aside_foreign_rows(results, fingerprint_of(identity))  # other weights, data or settings
        store = ResultsStore(results, identity=identity)
        smoothinf.evaluate(got.model, got.x, got.y, config=cfg, results=store, progress=True)

    fp = fingerprint({"identity": identity, "grid": grid})
    run_step(out, f"{STAGE}/eval/{_slice_name(name, first_example)}", fp, [results], work, log, discard=False)


def long_tasks(configs: Path, out: Path, study: StudyConfig, models: Sequence[str] | None = None) -> dict:
    """The stage's tasks for ``paper_mnist._schedule``: per model its training, then its evaluation
    (its first images; the slices of ``extend`` after every model's first). ``models``: only those
    models' tasks, and the training of the models they start from (None: every model's)."""
    long = study.long()
    chosen = list(long.models if models is None else models)
    for name in chosen:
        if name not in long.models:
            raise ConfigError(f"--models names {name}, not one of the stage's {', '.join(long.models)}")
    trained, queue = [], list(chosen)
    while queue:  # the chosen models and, transitively, the models they start from
        name = queue.pop(0)
        if name not in trained:
            trained.append(name)
            queue += init_refs(configs, name)
    tasks = {}
    for name in [n for n in long.models if n in trained]:
        deps = [_train_task(ref) for ref in init_refs(configs, name)]
        tasks[_train_task(name)] = (deps, long_train_job, (configs, name, out, study))
    chosen = [n for n in long.models if n in chosen]
    for name in chosen:
        tasks[f"{STAGE}-eval-{name}"] = ([_train_task(name)], long_eval_job, (out, name, study, 0))
    for name in chosen:
        for start in long.slice_starts(name, study):
            task = f"{STAGE}-eval-{_slice_name(name, start)}"
            tasks[task] = ([_train_task(name)], long_eval_job, (out, name, study, start))
    return tasks


# ---------------------------------------------------------------------------------------------
# The page


def _in_grid(record: dict, cfg: EvalConfig) -> bool:
    """A record of the stage's current grid (records of runs or settings since dropped stay on disk)."""
    setting = (record["vote"], float(record["sigma"]), int(record["m"]))
    return record["run"] < cfg.runs and setting in cfg.settings() and float(record["eps"]) in cfg.eps


def _slice_records(out: Path, name: str, study: StudyConfig, below: int | None = None) -> list[dict]:
    """Model ``name``'s records of the current grid over its slices of images (those starting below
    ``below`` when given): its first images' records, then each later slice's that are slices of
    the same evaluation (a slice of other weights or settings, e.g. a model retrained and its
    later slices not evaluated again yet, is left out); none without the first images."""
    long = study.long()
    records: list[dict] = []
    for start in [0, *long.slice_starts(name, study)]:
        if below is not None and start >= below:
            break
        cfg = long.eval_config(name, "-", study, start)
        path = results_path(out, name, start)  # the shared reader: checked lines, every check counted
        got = [r for r in (read_results(path) if path.exists() else []) if _in_grid(r, cfg)]
        if not start and not got:
            return []  # later slices count only beside the first images
        records += same_evaluation(got, records[0]) if start else got
    return records


def _model_records(out: Path, name: str, study: StudyConfig) -> tuple[list[dict], list[dict]]:
    """Model ``name``'s records, one per (run, setting) over the slices of images that every run
    of its setting has (``evaluation.slices.merge_slices``), and those of its first images alone."""
    records = _slice_records(out, name, study)
    if not records:
        return [], []
    first = [r for r in records if not r.get("config", {}).get("first_example")]
    return merge_slices(records)[0], first


def load_long(out: str | os.PathLike, study: StudyConfig) -> dict:
    """model -> {"config": its EvalConfig, "rows": aggregated records (``evaluation.report.aggregate``),
    "records": the records, "first_rows": the rows of its first images alone (the rows a row on
    those images only is compared with), "training": its metrics.jsonl}, for the models that have
    records."""
    long = study.long()
    found = {}
    for name in long.models if long else []:
        cfg = long.eval_config(name, "-", study)
        records, first = _model_records(Path(out), name, study)
        if records:
            training = read_jsonl(Path(out) / STAGE / "models" / name / "metrics.jsonl")
            found[name] = {"config": cfg, "rows": aggregate(records), "records": records}
            found[name]["first_rows"] = aggregate(first)
            found[name]["training"] = training
    return found


def best_rows(found: dict) -> tuple[tuple | None, tuple | None]:
    """The best smoothed row over the models ((model, key, row) by mean worst case; any sigma) and
    the best with input noise (sigma > 0); None when there is none."""
    smoothed = [(n, k, r) for n, f in found.items() for k, r in f["rows"].items() if k[0] != "none"]
    best = max(smoothed, key=lambda t: t[2]["worst_case"][0], default=None)
    noisy = max((t for t in smoothed if t[1][1] > 0), key=lambda t: t[2]["worst_case"][0], default=None)
    return best, noisy


def _base(found: dict, name: str, n: int | None = None) -> dict | None:
    """Model ``name``'s base row (None: none); with ``n``, the one on the same ``n`` images (the
    base of all its slices, or of its first images alone), else None."""
    for rows in (found[name]["rows"], found[name].get("first_rows", {})):
        base = next((r for k, r in rows.items() if k[0] == "none"), None)
        if base is not None and (n is None or base["n"] == n):
            return base
    return None


def _epochs(out: Path, study: StudyConfig) -> str:
    """How long the stage trains, e.g. "30 epochs; cni_w_pgd_at 10 more from pgd_at"."""
    long = study.long()
    words = [f"{long.train.get('epochs', '?')} epochs"]
    for name in long.models:
        start = _init_model(out, name)
        if start:
            words.append(f"{name} {long.train_overrides(name).get('epochs', '?')} more from {start}")
    return "; ".join(words)


def _headline_row(label: str, row: tuple, found: dict) -> list[str]:
    name, (vote, sigma, m, _), r = row
    base = _base(found, name, r["n"])
    scores = f"{r['n']} | {pm(r['clean'])} | {pm(r['worst_case'])}"
    lines = [f"| {label}: {name}, {vote}@{m}, sigma {sigma:g} | {scores} |"]
    if base is not None:
        scores = f"{base['n']} | {pm(base['clean'])} | {pm(base['worst_case'])}"
        lines.append(f"| its base model, unsmoothed, same attacks | {scores} |")
    return lines


def _images(found: dict) -> str:
    """The rows' image counts: "100", or "100-300" when rows differ."""
    counts = sorted({r["n"] for f in found.values() for r in f["rows"].values()})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def long_headline(
    out: str | os.PathLike, study: StudyConfig, target: float, grid_best: float | None = None
) -> list[str]:
    """The headline's table of the long-trained models ([] when the stage has no records):
    the best smoothed row and its base, and the best with input noise (sigma > 0) and its base.
    ``grid_best``: the grid's best smoothed worst case (fraction), to say which is the better."""
    found = load_long(out, study)
    best, noisy = best_rows(found)
    if best is None:
        return []
    runs = sorted({r["runs"] for f in found.values() for r in f["rows"].values()})
    L = [
        f"**After longer training** ({_epochs(Path(out), study)}; `smoothinf evaluate`'s protocol on the "
        f"first {_images(found)} test images, {'/'.join(map(str, runs))} runs; see 'Longer training'):",
        "",
        "| classifier | images | clean | worst case |",
        "|---|---|---|---|",
        *_headline_row("best smoothed", best, found),
    ]
    if noisy is not None and noisy[:2] != best[:2]:
        L += _headline_row("best with input noise (sigma > 0)", noisy, found)
    L += [
        "| Madry et al. (2018), published MNIST model, PGD | 10000 | "
        f"{MADRY_MNIST_CLEAN} | ~{100 * MADRY_MNIST:.0f} |",
        "",
    ]
    worst = best[2]["worst_case"][0]
    words = [
        f"The best long-trained smoothed classifier {'reaches' if worst >= target else 'does not reach'} "
        f"the {100 * target:.0f}% target"
        + (
            f", and it is the best smoothed classifier on this page ({100 * worst:.1f} against the grid's "
            f"{100 * grid_best:.1f}, on {best[2]['n']} images against the grid's {study.examples}, and under "
            "its own protocol)."
            if grid_best is not None and worst > grid_best
            else "."
        )
    ]
    if best[1][1] == 0:
        words.append("Its sigma is 0: the vote is over the model's own weight noise, no input noise.")
    noisy_rows = [
        (r, base)
        for name in found
        for k, r in found[name]["rows"].items()
        if k[0] != "none" and k[1] > 0 and (base := _base(found, name, r["n"])) is not None
    ]
    if noisy_rows and all(r["worst_case"][0] < base["worst_case"][0] for r, base in noisy_rows):
        words.append("**Every long-trained row with input noise is below its base model's worst case.**")
    if any(rejudged_path(out, name).exists() for name in found):
        words.append(
            "These rows were measured under judging 1 (before issue 38); 'Rows evaluated again under "
            "judging 2' below measures the change on the first images."
        )
    return L + [" ".join(words), ""]


def _overrides(train: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in train.items())


def _init_model(out: Path, name: str) -> str | None:
    """The model whose checkpoint model ``name``'s training started from (its folder's name, read
    from the training's ``config.yaml``), or None (from scratch, or not trained yet)."""
    path = out / STAGE / "models" / name / "config.yaml"
    init = (yaml.safe_load(path.read_text()) or {}).get("init") if path.exists() else None
    return Path(init).parent.name if init else None


def _extended(long, study: StudyConfig) -> str:
    """The page's words on the models evaluated on more images (`extend`), or ""."""
    words = []
    for name, block in long.models.items():
        extend = (block or {}).get("extend")
        if extend:
            picked = [
                f"{key[:-1]} {', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in extend[key])}"
                for key in ("sigmas", "votes")
                if key in extend
            ]
            rows = "its base model and " + (f"its rows at {' and '.join(picked)}" if picked else "every row")
            size = long.eval_config(name, "-", study).max_examples
            words.append(f"{name}: {rows}, toward the first {extend['examples']} in slices of {size}")
    return (
        f" ({'; '.join(words)}: a row counts the slices every run has, the tables give its images)"
        if words
        else ""
    )


def long_lines(out: str | os.PathLike, study: StudyConfig) -> list[str]:
    """The page's section on the long-trained models ([] when the stage is off)."""
    long = study.long()
    if long is None:
        return []
    found, out = load_long(out, study), Path(out)
    starts = {name: _init_model(out, name) for name in long.models}
    title = f"## Longer training: {', '.join(long.models)} at {_epochs(out, study)}"
    if not found:
        return [title, "", "Not measured yet.", ""]
    cfg = next(iter(found.values()))["config"]
    temps = f", then APGD-CE at T {', '.join(f'{t:g}' for t in cfg.temperatures)}" if cfg.temperatures else ""
    L = [
        title,
        "",
        "The study's models train for the few epochs this machine allows (see 'Models'). This stage "
        "trains these recipes again, from the same configs, from scratch with "
        + _overrides(long.train)
        + "".join(
            f"; {name}"
            + (f" starts from the stage's own {starts[name]}," if starts[name] else "")
            + f" with {_overrides(long.train_overrides(name))}"
            for name in long.models
            if long.train_overrides(name) != long.train or starts[name]
        )
        + ", and evaluates each with `smoothinf evaluate`'s protocol (its records in "
        f"`{Path(out) / STAGE / 'eval'}`): attacks {', '.join(cfg.attacks)} (PGD-{cfg.steps} on the base "
        f"model, APGD-CE and APGD-DLR through the noise at {cfg.apgd_steps} steps x {cfg.attack_m} "
        f"draws{temps} on hard and weighted votes), cascaded; on the first {cfg.check_examples} images of "
        "every run the official AutoAttack (rand on randomised rows), the black-box Square attack "
        f"({cfg.square_queries} queries) and the strongest attack at twice its steps and draws, whose "
        f"finds count in the worst case. The first {cfg.max_examples} test images{_extended(long, study)}, "
        f"seed {cfg.seed} + run; "
        f"a randomised row is judged {cfg.judgements} times per image (its accuracy is the mean "
        "P(correct)). Mean ± std over runs.",
        "",
        "| model | epochs | train s | val clean | val PGD |",
        "|---|---|---|---|---|",
    ]
    for name, f in found.items():
        if f["training"]:
            last = f["training"][-1]
            best_pgd = max(r.get("val_pgd", float("nan")) for r in f["training"])
            L.append(
                f"| {name} | {last['epoch']} | {last['seconds']:.0f} | {100 * last['val_clean']:.1f} | "
                f"{100 * last.get('val_pgd', float('nan')):.1f} (best {100 * best_pgd:.1f}) |"
            )
    L += [
        "",
        "| model | setting | images | runs | clean | PGD on the base model | worst case | row seconds "
        "| flags |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in found.items():
        for (vote, sigma, m, _), r in sorted(f["rows"].items(), key=lambda kv: (kv[0][0] != "none", kv[0])):
            pgd = pm(r["attacks"]["pgd"]) if "pgd" in r["attacks"] else "-"
            secs = f"{r['seconds'][0]:.0f}" if r.get("seconds") else "-"
            L.append(
                f"| {name} | {setting_name(vote, sigma, m)} | {r['n']} | {r['runs']} | {pm(r['clean'])} | "
                f"{pgd} | "
                f"**{pm(r['worst_case'])}** | {secs} | {row_flags(r)} |"
            )
    L += [""]
    for name in found:
        noisy = [(k, r) for k, r in found[name]["rows"].items() if k[0] != "none" and k[1] > 0]
        if not noisy:
            continue
        k, r = max(noisy, key=lambda kr: kr[1]["worst_case"][0])
        base = _base(found, name, r["n"])
        if base is None:
            continue
        diff = 100 * (r["worst_case"][0] - base["worst_case"][0])
        L.append(
            f"- {name}: its best row with input noise ({setting_name(*k[:3])}) changes the worst case "
            f"by {diff:+.1f} points against its base model on the same {r['n']} images "
            f"({pm(base['worst_case'])} to {pm(r['worst_case'])})."
        )
    L += [
        "",
        "A flag means a cross-check found more than the white-box attacks on the checked images; its "
        "finds are in the worst case. Each row's seconds are per run (all its slices of images), on the "
        "machine that ran it.",
        "",
    ]
    return L


__all__ = ["check_long_inits", "long_headline", "long_lines", "long_tasks", "load_long"]


# ---------------------------------------------------------------------------------------------
# Rows evaluated again under judging 2 (issue 38)

REJUDGED = "rejudged"


def rejudged_path(out: str | os.PathLike, name: str, first_example: int = 0, judging: int = 2) -> Path:
    """Model ``name``'s records evaluated again for issue 38 (the stage's settings): under judging 2
    (independent judgements, the worst case valued afresh: ``smoothinf.attacks.judge``) in slices
    from ``first_example``, or under judging 1 on the same weights (``judging=1``)."""
    stem = _slice_name(name, first_example) + ("" if judging == 2 else ".judging1")
    return Path(out) / STAGE / REJUDGED / f"{stem}.jsonl"


def _old_records_of_first(out: Path, name: str, study: StudyConfig, n: int) -> list[dict]:
    """Model ``name``'s stage records (judging 1) merged per (run, setting) over its slices within
    the first ``n`` images, those on exactly ``n`` images."""
    records = _slice_records(out, name, study, below=n)
    return [r for r in merge_slices(records)[0] if r["n"] == n] if records else []


def _rejudged(path: Path) -> list[dict]:
    return read_results(path) if path.exists() else []


def _rejudged_sources(out: Path, name: str, study: StudyConfig) -> list[tuple[str, int, list[dict]]]:
    """(what, judging, records) of model ``name``: the stage's records and its re-measurements, on
    the first 100 images and, where measured, the first 200."""
    first = _rejudged(rejudged_path(out, name))
    second = _rejudged(rejudged_path(out, name, 100))
    again = _rejudged(rejudged_path(out, name, judging=1))
    sources = [(f"stage, first {n}", 1, _old_records_of_first(out, name, study, n)) for n in (100, 200)]
    sources += [("retrained, first 100", 1, again), ("retrained, first 100", 2, first)]
    if second:
        sources.append(("retrained, first 200", 2, merge_slices(first + second)[0]))
    return [(what, judging, records) for what, judging, records in sources if records]


def rejudged_lines(out: str | os.PathLike, study: StudyConfig) -> list[str]:
    """Per re-measured model: its rows under judging 1 and 2, each with the weights it measured,
    and the change judging 2 makes on the same weights and images ([] without re-measured rows)."""
    long = study.long()
    lines: list[str] = []
    for name in long.models if long else []:
        if not rejudged_path(out, name).exists():
            continue
        sources = _rejudged_sources(Path(out), name, study)
        labels = {(what, j): weights_label(records[0]["identity"]) for what, j, records in sources}
        kinds = " or ".join(sorted({kind for kind, _ in labels.values()}))
        if not lines:
            lines += [
                "### Rows evaluated again under judging 2",
                "",
                "Judging 1 (the stage's records above) judged a weight-noise model's own forward with one "
                "weight-noise draw shared by many rows, so the judgements of one image were not "
                "independent; a smoothed row's judgements shared their weight-noise draws; and each "
                "image's worst case was the minimum of its noisy estimates (biased low). Judging 2 "
                "gives every judgement its own draws and values each image's strongest point with "
                "fresh judgements; its AutoAttack cross-check judges rand's best-loss points. Same "
                "attacks, budgets and settings as the stage. Retrained: the stage's recipe trained "
                "again (its checkpoint is not kept), whose weights differ from the stage's (weights "
                f"column: the first 8 hex digits of their {kinds}), so judging 1 was measured again on "
                "them to compare like with like.",
                "",
                "| model | row | weights | what | judging | images | runs | clean | worst case | flags |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
        rows = {(what, judging): aggregate(records) for what, judging, records in sources}
        weights = {source: digits[:8] for source, (_, digits) in labels.items()}
        again = {k for (_, judging), agg in rows.items() if judging == 2 for k in agg}  # re-measured rows
        for key in sorted(again, key=lambda k: (k[0] != "none", k)):
            for (what, judging), agg in rows.items():
                r = agg.get(key)
                if r is not None:
                    lines.append(
                        f"| {name} | {setting_name(*key[:3])} | {weights[(what, judging)]} | {what} | "
                        f"{judging} | {r['n']} | {r['runs']} | {pm(r['clean'])} | "
                        f"**{pm(r['worst_case'])}** | {row_flags(r) or '-'} |"
                    )
        j1, j2 = rows.get(("retrained, first 100", 1), {}), rows.get(("retrained, first 100", 2), {})
        for key in [k for k in j2 if k in j1]:
            change = 100 * (j2[key]["worst_case"][0] - j1[key]["worst_case"][0])
            lines.append("")
            lines.append(
                f"{name}, {setting_name(*key[:3])}, same weights and first 100 images: judging 2 moves "
                f"the worst case by {change:+.1f} points ({pm(j1[key]['worst_case'])} to "
                f"{pm(j2[key]['worst_case'])})."
            )
    return lines + [""] if lines else []
