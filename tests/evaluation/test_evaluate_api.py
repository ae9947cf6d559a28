"""The one-call entry point ``evaluate(model, x, y, eps=...) -> Report`` and the protocol's row
function behind both it and the config-driven grid (``evaluate(..., config=)``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from smoothinf.errors import ConfigError
from smoothinf.evaluation import EvalConfig, Report
from smoothinf.evaluation.verdict import DEFAULT_M, evaluate
from smoothinf.smoothing import SmoothedClassifier
from support import argmax_data, linear10

SIGMA = 0.05
# Small budgets: the preset's APGD at 5 steps x 2 draws, 4 judgements, 8 images.
SMALL = dict(steps=5, attack_m=2, judgements=4, device="cpu")
FAST = dict(SMALL, steps=1, attack_m=1, judgements=1)
GRID = dict(eps=[0.1], attacks=["default"], apgd_steps=5, attack_m=2, judgements=4, device="cpu")
TIMING = ("seconds", "attack_seconds", "attack_time", "checks", "version")
RECORD_KEYS = sorted(
    [
        "run",
        "seed",
        "judge_seed",
        "crafted_with",
        "vote",
        "sigma",
        "m",
        "eps",
        "n",
        "clean",
        "attacks",
        "worst_case",
        "robust",
        "worst_case_attacks",
        "counted_checks",
        "strongest",
        "strongest_rule",
        "without",
        "cascade",
        "budget",
        "checks",
        "checks_off",
        "judging",
        "seconds",
        "attack_seconds",
        "attack_time",
        "fingerprint",
        "config",
        "version",
    ]
)  # the results files' schema


def _untimed(record: dict) -> dict:
    """A record without its wall-clock fields (and the checks, which carry seconds)."""
    return {k: v for k, v in record.items() if k not in TIMING}


def test_grid_records_are_pinned_to_those_before_the_row_refactor():
    """A tiny grid (base + hard-vote row, 2 runs, Square and doubled-budget checks) gives the
    records the protocol gave before its rows became ``evaluate_row`` (values computed with that
    code): same keys, seeds, accuracies, strongest attacks, checks and fingerprint. Every attack
    takes every step (``stop_decided`` off: the stop changes a run's draws once it retires an
    example) and the base row's preset has no Square (``preset_square_queries`` 0, as it was); one
    row alone is unchanged by shared crafting."""
    model = linear10()
    x, y = argmax_data(model, 8)
    setting = dict(votes=["hard"], sigmas=[SIGMA], ms=[4], runs=2)
    cfg = EvalConfig(
        checkpoint="unused",
        square_queries=20,
        autoattack_check=False,
        stop_decided=False,
        preset_square_queries=0,
        **setting,
        **GRID,
    )
    records = evaluate(model, x, y, config=cfg).records
    base_attacks = {"pgd": 0.5, "apgd-ce": 0.5, "apgd-t": 0.5}
    base_without = {"pgd": 1.0, "apgd-ce": 0.5, "apgd-t": 0.5}
    base_checks = {"blackbox": (4, 4.0, 0.0, 4.0, 0.0, False)}
    tempered = ("apgd-ce-t0.5", "apgd-ce-t0.25")
    expected = [
        (0, 0, "none", 1.0, 0.5, 0.5, base_attacks, base_without, base_checks, [8, 4, 4]),
        (
            0,
            0,
            "hard",
            0.9375,
            0.5625,
            0.5625,
            dict.fromkeys(("pgd", "apgd-ce", "apgd-dlr", *tempered), 0.5625),
            {"pgd": 0.5625, "apgd-ce": 0.53125, "apgd-dlr": 0.5, **dict.fromkeys(tempered, 0.5)},
            {"blackbox": (6, 4.5, 0.0, 6.0, 1.0, False), "convergence": (6, 4.5, 0.0, 4.0, 1.0, False)},
            [8, 7, 6, 6, 6],
        ),
        (1, 1, "none", 1.0, 0.5, 0.5, base_attacks, base_without, base_checks, [8, 4, 4]),
        (
            1,
            1,
            "hard",
            0.90625,
            0.5,
            0.5,
            {"pgd": 0.53125, "apgd-ce": 0.53125, "apgd-dlr": 0.5, **dict.fromkeys(tempered, 0.5)},
            {"pgd": 0.78125, "apgd-ce": 0.5, "apgd-dlr": 0.53125, **dict.fromkeys(tempered, 0.5)},
            {"blackbox": (4, 4.0, 0.0, 4.0, 1.0, False), "convergence": (4, 4.0, 0.0, 4.0, 1.0, False)},
            [8, 5, 5, 4, 4],
        ),
    ]
    for r, want in zip(records, expected, strict=True):
        assert sorted(r) == RECORD_KEYS
        got = (r["run"], r["seed"], r["vote"], r["clean"], r["worst_case"], r["worst_case_attacks"])
        assert got == want[:6]
        assert r["attacks"] == want[6] and list(r["attacks"]) == list(want[6])  # values and order
        assert r["without"] == want[7]
        checks = {
            k: (c["attacked"], c["robust_before"], c["extra"], c["own_robust"], c["tolerance"], c["flag"])
            for k, c in r["checks"].items()
        }
        assert checks == want[8]
        assert [t["examples"] for t in r["attack_time"].values()] == want[9]
        # crafting "shared" re-keys the configuration; "per-row" without the stop on decided
        # examples keeps the fingerprint it had before
        assert r["strongest"] == "pgd" and r["fingerprint"] == "991cd3a14769731d"
        old = dataclasses.replace(cfg, crafting="per-row", stop_decided=False)
        assert old.fingerprint() == "1730c0beecac3aec"
        assert r["config"] == cfg.to_dict()


def test_report_rows_equal_the_grid_records_of_the_equivalent_config_and_say_checks_are_off(tmp_path):
    """evaluate(..., sigma, m, checks=False, runs=2) runs the base and the smoothed row of each run,
    exactly as evaluate(config=) runs the EvalConfig with that one setting and check_examples=0; the
    report aggregates them (mean ± std), prints the table stating the checks are off, and saves
    and loads back to the same records and per-image values."""
    model = linear10()
    x, y = argmax_data(model, 8)
    report = evaluate(model, x, y, eps=0.1, sigma=SIGMA, m=4, checks=False, runs=2, **SMALL)
    setting = dict(votes=["hard"], sigmas=[SIGMA], ms=[4], runs=2)
    cfg = EvalConfig(checkpoint="in-memory Sequential", max_examples=8, check_examples=0, **setting, **GRID)
    assert report.config == cfg
    records = evaluate(model, x, y, config=cfg).records
    assert [_untimed(r) for r in report.records] == [_untimed(r) for r in records]
    assert all(r["checks"] == {} for r in report.records)

    assert [row.setting for row in report.rows] == ["base (no smoothing)", "hard sigma=0.05 m=4"]
    base, smoothed = report.base, report.smoothed
    assert (base.clean, base.clean_std, base.runs, base.n) == (1.0, 0.0, 2, 8)
    assert smoothed.clean == pytest.approx((records[1]["clean"] + records[3]["clean"]) / 2)
    assert smoothed.worst_case == pytest.approx((records[1]["worst_case"] + records[3]["worst_case"]) / 2)
    assert smoothed.worst_case_std > 0  # the two runs differ (0.5625 and 0.5 in the pinned grid)
    assert list(smoothed.attacks) == ["pgd", "apgd-ce", "apgd-dlr", "apgd-ce-t0.5", "apgd-ce-t0.25"]
    assert smoothed.budget["apgd-ce"] == {"steps": 5, "draws": 2, "restarts": 1, "gradients": 10}
    assert smoothed.checks_off == dict.fromkeys(("autoattack", "blackbox", "convergence"), "check_examples=0")
    assert smoothed.flags == "-" and smoothed.seconds > 0
    # per image: (N,) P(correct) in multiples of 1 / 4 judgements, mean over runs; their mean is the row's
    assert report.robust is smoothed.robust and report.robust.shape == (8,)
    assert report.robust.dtype == torch.float32
    assert float(report.robust.mean()) == pytest.approx(smoothed.worst_case)
    assert set((report.robust * 8).round().tolist()) <= set(range(9))
    assert float(base.robust.mean()) == base.worst_case == 0.5

    text = str(report)
    assert "| setting | eps | runs | clean | pgd |" in text
    assert "| hard sigma=0.05 m=4 | 0.1 | 2 |" in text
    assert "cross-checks off (checks=False)" in text
    assert "Cross-checks off: autoattack, blackbox, convergence (check_examples=0)" in text

    loaded = Report.load(report.save(tmp_path / "out" / "report.json"))
    assert loaded.records == report.records
    assert all(torch.equal(a, b) for a, b in zip(loaded.per_image, report.per_image, strict=True))
    assert torch.equal(loaded.robust, report.robust) and str(loaded) == text
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ConfigError, match="not a smoothinf report"):
        Report.load(tmp_path / "bad.json")


def test_a_smoothed_classifier_is_its_own_row_and_checks_run_by_default():
    """A SmoothedClassifier passed as the model gives the base row (its inner model) and its own
    smoothed row; checks=True (the default) cross-checks min(100, N) images, where some are left
    (at eps 0.2 the preset fools the base row on every image, the smoothed row not)."""
    pytest.importorskip("pyautoattack")
    model = linear10()
    x, y = argmax_data(model, 6)
    g = SmoothedClassifier(model, SIGMA, 4, "soft")
    report = evaluate(g, x, y, eps=0.2, sigma=SIGMA, **SMALL)  # an equal sigma is allowed
    assert [(r.vote, r.sigma, r.m) for r in report.rows] == [("none", 0.0, 1), ("soft", SIGMA, 4)]
    assert report.defended is report.smoothed and report.base.runs == 1
    assert report.base.worst_case == 0.0 and 0 < report.smoothed.worst_case < 1
    for record in report.records:
        assert record["checks_off"] == {} and record["config"]["check_examples"] == 100
        assert {c["n"] for c in record["checks"].values()} == {6}  # capped by the images
    base, smoothed = (r["checks"] for r in report.records)
    assert set(base) == {"autoattack", "blackbox"} and base["autoattack"]["attacked"] == 0
    assert set(smoothed) == {"autoattack", "blackbox", "convergence"}  # randomised: doubled budget too
    assert smoothed["autoattack"]["version"].startswith("rand") and smoothed["autoattack"]["attacked"] > 0
    assert "cross-checks on the first 6 images" in str(report)
    assert "| soft sigma=0.05 m=4 eps 0.2 | convergence: pgd | 6 |" in str(report)


def test_without_sigma_only_the_model_itself_is_evaluated():
    model = linear10()
    x, y = argmax_data(model, 4)
    report = evaluate(model, x, y, eps=0.1, checks=False, **SMALL)
    assert len(report.rows) == 1 and report.smoothed is None and report.defended is report.base
    assert report.robust.shape == (4,) and report.records[0]["config"]["votes"] == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "eps is required"),
        ({"eps": -0.1}, "eps must be a number in \\[0, 1\\]"),
        ({"eps": "0.3"}, "eps must be a number"),
        ({"eps": 0.1, "norm": "l2"}, "norm 'l2' is not run by the protocol"),
        ({"eps": 0.1, "preset": "strong"}, "unknown attack preset 'strong'"),
        ({"eps": 0.1, "sigma": 0.1, "vote": "majority"}, "unknown vote 'majority'"),
        ({"eps": 0.1, "sigma": 0.1, "m": 0}, "m must be an integer >= 1"),
        ({"eps": 0.1, "sigma": 2.0}, "sigma must be a number in \\[0, 1\\]"),
        ({"eps": 0.1, "runs": 0}, "runs must be an integer >= 1"),
    ],
)
def test_missing_or_invalid_arguments_are_one_line_config_errors(kwargs, message):
    model = linear10()
    x, y = argmax_data(model, 2)
    with pytest.raises(ConfigError, match=message) as err:
        evaluate(model, x, y, **kwargs)
    assert "\n" not in str(err.value)


def test_smoothed_classifier_settings_win_and_conflicts_are_errors():
    """A SmoothedClassifier's sigma, m and vote are the smoothed row's; other values given are
    errors (before any work); a plain model's smoothed row defaults to a hard vote over 64 draws."""
    model = linear10()
    x, y = argmax_data(model, 2)
    g = SmoothedClassifier(model, 0.1, 8, "weighted")
    for name, value in (("sigma", 0.2), ("m", 16), ("vote", "hard")):
        with pytest.raises(ConfigError, match=f"{name}={value!r} differs from the SmoothedClassifier's"):
            evaluate(g, x, y, eps=0.2, **{name: value})
    cfg = evaluate(g, x, y, eps=0.2, sigma=0.1, m=8, vote="weighted", checks=False, **FAST).config
    assert (cfg.votes, cfg.sigmas, cfg.ms, cfg.eps, cfg.runs) == (["weighted"], [0.1], [8], [0.2], 1)
    cfg = evaluate(model, x, y, eps=0.2, sigma=0.1, checks=False, **FAST).config
    assert (cfg.votes, cfg.ms, cfg.check_examples, cfg.attacks) == (["hard"], [DEFAULT_M], 0, ["default"])


def test_config_form_resumes_from_a_results_path_keyed_on_the_weights(tmp_path):
    """evaluate(config=, results=path): a second call reads every row back (nothing runs: the file
    does not grow) and returns the same report, per-image values included; the file is keyed on the
    weights' tensor digest, so another model's weights are refused with one line."""
    model = linear10()
    x, y = argmax_data(model, 6)
    cfg = EvalConfig(
        checkpoint="mem",
        max_examples=6,
        votes=["soft"],
        sigmas=[SIGMA],
        ms=[2],
        runs=1,
        check_examples=0,
        **GRID,
    )
    path = tmp_path / "results.jsonl"
    first = evaluate(model, x, y, config=cfg, results=path)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and [r["vote"] for r in first.records] == ["none", "soft"]
    assert first.records[1]["robust"] == [round(v, 6) for v in first.smoothed.robust.tolist()]
    again = evaluate(model, x, y, config=cfg, results=path)
    assert path.read_text().splitlines() == lines
    assert [_untimed(r) for r in again.records] == [_untimed(r) for r in first.records]
    assert torch.equal(again.robust, first.robust)
    other = linear10()
    with torch.no_grad():
        other[-1].bias += 1.0
    with pytest.raises(ConfigError, match="weights_sha256"):
        evaluate(other, x, y, config=cfg, results=path)


def test_config_form_refuses_keywords_that_it_would_ignore():
    model = linear10()
    x, y = argmax_data(model, 4)
    cfg = EvalConfig(checkpoint="mem", max_examples=4, votes=[], check_examples=0, **GRID)
    for kwargs, name in ((dict(eps=0.1), "eps"), (dict(runs=2), "runs"), (dict(sigma=0.1), "sigma")):
        with pytest.raises(ConfigError, match=f"set {name} in the EvalConfig"):
            evaluate(model, x, y, config=cfg, **kwargs)
    with pytest.raises(ConfigError, match="pass the base model"):
        evaluate(SmoothedClassifier(model, SIGMA, 2, "soft"), x, y, config=cfg)


def test_records_without_per_image_values_still_make_a_report():
    """Records written before records kept ``robust`` aggregate as before; their rows have no
    per-image values and asking for them is a one-line error."""
    model = linear10()
    x, y = argmax_data(model, 4)
    report = evaluate(model, x, y, eps=0.1, checks=False, **FAST)
    old = [{k: v for k, v in r.items() if k != "robust"} for r in report.records]
    rebuilt = Report(old)
    assert rebuilt.base.robust is None and rebuilt.base.worst_case == report.base.worst_case
    with pytest.raises(ConfigError, match="no per-image values"):
        _ = rebuilt.robust
