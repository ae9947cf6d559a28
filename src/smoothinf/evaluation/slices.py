"""One evaluation computed on disjoint slices of the examples, merged into one record per row.

A long evaluation can run in slices (``EvalConfig.first_example`` / ``smoothinf evaluate
--first-example``), each into its own results file, on one machine over several sessions or on
several machines at once. ``merge_slices`` turns their records back into one record per (run,
setting, eps) over all the slices' examples: accuracies are means weighted by each slice's
example count (exact: every accuracy is a mean over examples, cumulative cascade columns
included), times and cross-check counts are sums, and a cross-check flags if it flagged on any
slice. Slices of other weights, data or settings are refused, as are overlapping ones.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

from smoothinf.errors import ConfigError
from smoothinf.evaluation.protocol import strongest_attack
from smoothinf.evaluation.results import fingerprint_of, identity_diff, row_key

# Identity fields that differ between slices of one evaluation.
_SLICE_DATA = ("examples", "sha256", "slices")
_SLICE_SETTINGS = ("max_examples", "first_example")
# EvalConfig fields that are not part of what a number means (see results._NOT_IDENTITY).
_NOT_MEANING = ("checkpoint", "root", "device", "votes", "sigmas", "ms", "eps", "runs")


def slice_of(record: dict) -> tuple[int, int]:
    """(first example, example count) of the examples a record was computed on."""
    return int((record.get("config") or {}).get("first_example") or 0), int(record["n"])


def _evaluation(record: dict) -> dict:
    """What a record's numbers mean apart from which examples: its identity (or, for records
    written without one, its config) without the slice's fields."""
    identity = record.get("identity")
    if identity is None:
        config = record.get("config") or {}
        return {k: v for k, v in config.items() if k not in _NOT_MEANING + _SLICE_SETTINGS}
    data = {k: v for k, v in identity.get("data", {}).items() if k not in _SLICE_DATA}
    settings = {k: v for k, v in identity.get("settings", {}).items() if k not in _SLICE_SETTINGS}
    return {**identity, "data": data, "settings": settings}


def check_one_evaluation(records: list[dict]) -> None:
    """One-line ConfigError unless all records are slices of one evaluation (same weights, data set
    and settings); it names the first field that differs."""
    if not records:
        return
    first = _evaluation(records[0])
    for r in records[1:]:
        diff = identity_diff(first, _evaluation(r))
        if diff:
            raise ConfigError(
                f"the results are not slices of one evaluation: {diff[0]} differs (run {r['run']}, "
                f"examples from {slice_of(r)[0]}); merge only files of the same checkpoint and settings"
            )


def same_evaluation(records: list[dict], reference: dict) -> list[dict]:
    """The records that are slices of ``reference``'s evaluation (the others are left out)."""
    wanted = _evaluation(reference)
    return [r for r in records if not identity_diff(wanted, _evaluation(r))]


def _weighted(parts: list[dict], get) -> float:
    return sum(get(p) * p["n"] for p in parts) / sum(p["n"] for p in parts)


def _merged_checks(parts: list[dict]) -> dict:
    merged: dict[str, dict] = {}
    for p in parts:
        for name, c in p.get("checks", {}).items():
            m = merged.setdefault(
                name,
                {**c, "n": 0, "robust_before": 0, "extra": 0, "tolerance": 0, "seconds": 0.0, "flag": False},
            )
            for key in ("n", "robust_before", "extra", "tolerance", "seconds"):
                m[key] += c.get(key, 0)
            m["flag"] |= bool(c["flag"])
    return merged


def _merged_attack_time(parts: list[dict]) -> dict:
    merged: dict[str, dict] = {}
    for p in parts:
        for name, t in p.get("attack_time", {}).items():
            m = merged.setdefault(name, {"examples": 0, "seconds": 0.0})
            m["examples"] += t["examples"]
            m["seconds"] += t["seconds"]
    return merged


def _overlap(a: dict, b: dict) -> ConfigError:
    return ConfigError(
        f"two results hold the same examples (from {slice_of(a)[0]} and from {slice_of(b)[0]}) "
        f"of run {a['run']}, {a['vote']} sigma {a['sigma']:g} m {a['m']}; merge disjoint slices only"
    )


def combine(parts: list[dict]) -> dict:
    """One record from the records of one (run, setting, eps) on disjoint slices (see the module)."""
    parts = sorted(parts, key=slice_of)
    for a, b in itertools.pairwise(parts):
        if sum(slice_of(a)) > slice_of(b)[0]:
            raise _overlap(a, b)
    head, n = parts[0], sum(p["n"] for p in parts)
    names = [a for a in head["attacks"] if all(a in p["attacks"] for p in parts)]
    attacks = {a: _weighted(parts, lambda p, a=a: p["attacks"][a]) for a in names}
    clean = _weighted(parts, lambda p: p["clean"])
    slices = [list(slice_of(p)) for p in parts]
    merged = {
        **head,
        "n": n,
        "clean": clean,
        "attacks": attacks,
        "worst_case": _weighted(parts, lambda p: p["worst_case"]),
        "strongest": strongest_attack(attacks, clean, bool(head.get("cascade"))) or head.get("strongest"),
        "checks": _merged_checks(parts),
        "attack_time": _merged_attack_time(parts),
        "slices": slices,
        "config": {**head.get("config", {}), "first_example": slices[0][0], "max_examples": n},
    }
    merged.pop("robust", None)
    if all(isinstance(p.get("robust"), list) for p in parts):  # per image, in slice order
        merged["robust"] = [v for p in parts for v in p["robust"]]
    if all("worst_case_attacks" in p for p in parts):
        merged["worst_case_attacks"] = _weighted(parts, lambda p: p["worst_case_attacks"])
    for key in ("seconds", "attack_seconds"):
        if all(key in p for p in parts):
            merged[key] = sum(p[key] for p in parts)
    if "identity" in head:
        data = {**head["identity"]["data"], "examples": n, "slices": slices}
        data["sha256"] = [p["identity"]["data"].get("sha256") for p in parts]
        merged["identity"] = {**head["identity"], "data": data}
        merged["fingerprint"] = fingerprint_of(merged["identity"])
    return merged


def merge_slices(records: list[dict]) -> tuple[list[dict], int]:
    """Records of one evaluation's slices -> one record per (run, setting, eps) over the slices
    that every run of its setting has (a slice that some run lacks is left out for all of that
    setting's runs, so a row's runs are judged on the same examples). Returns the merged records
    (grouped by setting, runs in order) and how many input records were left out."""
    check_one_evaluation(records)
    by_setting: dict[tuple, dict[int, dict[tuple, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        run, *setting = row_key(r)
        slices = by_setting[tuple(setting)][run]
        if slice_of(r) in slices:
            raise _overlap(slices[slice_of(r)], r)
        slices[slice_of(r)] = r
    merged, left_out = [], 0
    for runs in by_setting.values():
        common = set.intersection(*(set(slices) for slices in runs.values()))
        for run in sorted(runs):
            left_out += len(runs[run]) - len(common)
            if common:
                merged.append(combine([runs[run][s] for s in common]))
    return merged, left_out


__all__ = ["check_one_evaluation", "combine", "merge_slices", "same_evaluation", "slice_of"]
