"""Evaluation protocol: aggregation, worst case, resume, sanity checks, reports, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from smoothinf.attacks import robust_accuracy
from smoothinf.cli import main
from smoothinf.data import load_dataset
from smoothinf.errors import ConfigError
from smoothinf.evaluation import (
    EvalConfig,
    ResultsStore,
    aggregate,
    evaluate,
    markdown_table,
    read_results,
    run_sanity_checks,
)
from smoothinf.evaluation.results import row_key
from smoothinf.models import load_checkpoint
from smoothinf.training.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def synthetic_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_model")
    metrics = train(
        TrainConfig(data="synthetic", model="mnist_cnn_small", epochs=3, lr=3e-3, device="cpu", out=str(out))
    )
    model, _ = load_checkpoint(metrics["checkpoint"])
    test, _ = load_dataset("synthetic", "test")
    x, y = test.tensors(60)
    return metrics["checkpoint"], model, x, y


def record(run, vote, sigma, clean, attacks, worst):
    return {
        "run": run,
        "vote": vote,
        "sigma": sigma,
        "m": 8,
        "eps": 0.1,
        "n": 10,
        "clean": clean,
        "attacks": attacks,
        "worst_case": worst,
        "config": {},
        "fingerprint": "f",
        "judging": 2,
    }


def test_mean_std_aggregation():
    recs = [
        record(0, "hard", 0.1, 0.9, {"pgd": 0.5, "epgd": 0.4}, 0.3),
        record(1, "hard", 0.1, 0.7, {"pgd": 0.7, "epgd": 0.2}, 0.1),
    ]
    row = aggregate(recs)[("hard", 0.1, 8, 0.1)]
    assert row["runs"] == 2
    assert row["clean"][0] == pytest.approx(0.8) and row["clean"][1] == pytest.approx(0.1414213, rel=1e-5)
    assert row["attacks"]["pgd"] == pytest.approx((0.6, 0.1414213), rel=1e-5)
    assert row["worst_case"][0] == pytest.approx(0.2)
    assert row["strongest"] == "epgd"
    table = markdown_table(aggregate(recs))
    assert "80.0 ± 14.1" in table and "| epgd |" in table


def test_worst_case_over_attacks_on_hand_built_case():
    class ByPixel(torch.nn.Module):  # predicts the class written in pixel 0 (times 3)
        def forward(self, x):
            z = (x[:, 0, 0, 0] * 3).round().long().clamp(0, 2)
            return torch.nn.functional.one_hot(z, 3).float()

    x = torch.zeros(6, 1, 2, 2)
    y = torch.tensor([0, 0, 0, 0, 0, 1])
    x[5, 0, 0, 0] = 1 / 3

    def flip(rows):
        def attack(xb, yb, generator=None):
            out = xb.clone()
            hit = torch.tensor([r in rows for r in range(6)])[: xb.shape[0]]
            out[hit, 0, 0, 0] = 2 / 3
            return out

        return attack

    res = robust_accuracy(ByPixel(), x, y, {"a": flip({0, 1}), "b": flip({2})})
    assert res.clean_accuracy == 1.0
    assert res.accuracy == {"a": pytest.approx(4 / 6), "b": pytest.approx(5 / 6)}
    assert res.worst_case_accuracy == pytest.approx(3 / 6)
    assert res.robust.tolist() == [False, False, False, True, True, True]


def test_protocol_resume_skips_finished_rows(synthetic_model, tmp_path):
    ckpt, model, x, y = synthetic_model
    cfg = EvalConfig(
        checkpoint=ckpt,
        data="synthetic",
        max_examples=60,
        eps=[0.1],
        votes=["soft"],
        sigmas=[0.05],
        ms=[4],
        attacks=["pgd", "epgd"],
        steps=3,
        attack_m=2,
        runs=1,
        check_examples=0,  # not about the cross-checks: off, as a stated choice
        device="cpu",
    )
    store = ResultsStore(tmp_path / "r.jsonl", cfg.fingerprint())
    first = evaluate(model, x, y, config=cfg, results=store).records
    assert len(first) == 2  # base + one smoothed setting
    assert set(first[1]["attacks"]) == {"pgd", "epgd"} and set(first[0]["attacks"]) == {"pgd"}
    for r in first:
        assert r["worst_case"] <= min(r["attacks"].values()) <= r["clean"]
    cfg.runs = 2
    store = ResultsStore(tmp_path / "r.jsonl", cfg.fingerprint())
    second = evaluate(model, x, y, config=cfg, results=store).records
    assert [r["run"] for r in second] == [0, 0, 1, 1]  # run 0 read back, run 1 new
    assert second[:2] == first
    assert len(read_results(tmp_path / "r.jsonl")) == 4
    again = evaluate(model, x, y, config=cfg, results=ResultsStore(tmp_path / "r.jsonl", cfg.fingerprint()))
    assert again.records == second and len(read_results(tmp_path / "r.jsonl")) == 4  # nothing run again
    assert torch.equal(again.base.robust, torch.tensor([r["robust"] for r in (second[0], second[2])]).mean(0))


def test_counts_argmaxes_picks_the_rows_of_the_tempered_attacks():
    from smoothinf.data import get_dataset_info
    from smoothinf.evaluation.protocol import counts_argmaxes
    from smoothinf.models import create_model_for
    from smoothinf.noise import inject_noise

    plain = create_model_for("mnist_cnn_small", get_dataset_info("synthetic"))
    noisy = inject_noise(create_model_for("mnist_cnn_small", get_dataset_info("synthetic")), "pni-w")
    cases = {
        (plain, "none", 0.0): False,
        (plain, "hard", 0.1): True,
        (plain, "weighted", 0.1): True,
        (plain, "soft", 0.1): False,
        (plain, "hard", 0.0): False,
        (noisy, "none", 0.0): True,
        (noisy, "hard", 0.0): True,
        (noisy, "soft", 0.0): False,
    }
    for (model, vote, sigma), expected in cases.items():
        assert counts_argmaxes(model, vote, sigma) is expected, (vote, sigma)


def test_default_preset_adds_tempered_attacks_to_hard_votes(synthetic_model):
    """The default preset's tempered APGD-CE runs on the hard vote only, last in the cascade: the
    attacks before it give the same numbers as a run without it (same seed), and the worst case
    can only fall. temperatures [] switches it off; a bad list is refused."""
    ckpt, model, x, y = synthetic_model
    common = dict(
        checkpoint=ckpt,
        data="synthetic",
        max_examples=40,
        eps=[0.3],
        votes=["hard", "soft"],
        sigmas=[0.1],
        ms=[4],
        attacks=["default"],
        apgd_steps=4,
        attack_m=2,
        judgements=4,
        runs=1,
        check_examples=0,  # not about the cross-checks: off, as a stated choice
        device="cpu",
    )
    with_t = evaluate(model, x[:40], y[:40], config=EvalConfig(**common)).records
    without = evaluate(model, x[:40], y[:40], config=EvalConfig(**common, temperatures=[])).records
    by_vote = {r["vote"]: r for r in with_t}
    assert set(by_vote["hard"]["attacks"]) == {"pgd", "apgd-ce", "apgd-dlr", "apgd-ce-t0.5", "apgd-ce-t0.25"}
    assert set(by_vote["soft"]["attacks"]) == {"pgd", "apgd-ce", "apgd-dlr"}
    assert set(by_vote["none"]["attacks"]) == {"pgd", "apgd-ce", "apgd-t", "square"}
    assert by_vote["hard"]["budget"]["apgd-ce-t0.25"] == by_vote["hard"]["budget"]["apgd-ce"]
    for a, b in zip(with_t, without, strict=True):
        assert {k: a["attacks"][k] for k in b["attacks"]} == b["attacks"]
        assert a["worst_case"] <= b["worst_case"]
    hard = by_vote["hard"]["attacks"]
    assert hard["apgd-ce-t0.25"] <= hard["apgd-ce-t0.5"] <= hard["apgd-dlr"]  # cumulative
    assert EvalConfig(**common).fingerprint() != EvalConfig(**common, temperatures=[]).fingerprint()
    with pytest.raises(ConfigError, match="^temperatures must be distinct numbers > 0"):
        EvalConfig(**common, temperatures=[0.5, 0.5]).validate()


def test_results_of_another_config_are_refused_and_kept(synthetic_model, tmp_path):
    ckpt, *_ = synthetic_model
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record(0, "hard", 0.1, 1, {}, 1) | {"fingerprint": "other"}) + "\n")
    before = path.read_bytes()
    cfg = EvalConfig(checkpoint=ckpt, data="synthetic")
    with pytest.raises(ConfigError, match="different configuration"):
        ResultsStore(path, cfg.fingerprint())
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attacks": ["deepfool"]}, "unknown attack"),
        ({"votes": ["median"]}, "unknown vote"),
        ({"eps": []}, "grid is empty"),
        ({"attacks": []}, "grid is empty"),
        ({"sigmas": []}, "grid is empty"),
    ],
)
def test_bad_eval_configs(changes, message):
    with pytest.raises(ConfigError, match=message):
        EvalConfig(checkpoint="x", **changes).validate()


def test_sanity_checks_fire_on_obfuscated_model_only(synthetic_model):
    _, model, x, y = synthetic_model

    class Rounding(torch.nn.Module):  # gradient-masking: rounds its input, so gradients vanish
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(torch.round(x * 4) / 4)

    normal = run_sanity_checks(model, x, y, eps=0.1, steps=10)
    assert all(c.passed for c in normal), [c.line() for c in normal]
    masked = run_sanity_checks(Rounding(model), x, y, eps=0.1, steps=10)
    failed = [c for c in masked if not c.passed]
    assert failed and all(c.line().startswith("WARNING: possible gradient obfuscation") for c in failed)


def test_cli_protocol_and_report_regeneration(synthetic_model, tmp_path, capsys):
    ckpt, *_ = synthetic_model
    results = tmp_path / "res.jsonl"
    args = [
        "evaluate",
        "-c",
        ckpt,
        "--attacks",
        "fgsm",
        "pgd",
        "--eps",
        "0.1",
        "--votes",
        "hard",
        "--sigmas",
        "0.05",
        "--ms",
        "4",
        "--runs",
        "2",
        "--steps",
        "3",
        "--max-examples",
        "40",
        "--results",
        str(results),
        "--report-dir",
        str(tmp_path / "rep"),
        "--device",
        "cpu",
        "--check-examples",
        "0",  # not about the cross-checks: off, as a stated choice
    ]
    assert main(args) == 0
    table = (tmp_path / "rep" / "results.md").read_text()
    assert (tmp_path / "rep" / "report.md").exists() and (tmp_path / "rep" / "sigma_sweep.png").exists()
    assert main(["report", str(results), "--out", str(tmp_path / "rep2")]) == 0
    assert (tmp_path / "rep2" / "results.md").read_text() == table
    assert "base (no smoothing)" in table and "hard sigma=0.05 m=4" in table
    capsys.readouterr()
    assert main(["evaluate", "-c", ckpt, "--attacks", "pgd", "--votes", "majority"]) == 2
    assert "unknown vote" in capsys.readouterr().err


def test_report_draws_m_and_eps_sweeps_from_records(tmp_path):
    from smoothinf.evaluation import write_report

    recs = []
    for run in range(2):
        for m in (4, 16):
            for eps in (0.1, 0.2):
                r = record(run, "soft", 0.1, 0.9, {"pgd": 0.5 - eps}, 0.4 - eps)
                recs.append(
                    r
                    | {
                        "m": m,
                        "eps": eps,
                        "config": {
                            "checkpoint": "c",
                            "data": "d",
                            "split": "test",
                            "runs": 2,
                            "seed": 0,
                            "attacks": ["pgd"],
                            "steps": 3,
                            "restarts": 1,
                            "attack_m": 2,
                        },
                    }
                )
        recs.append(record(run, "none", 0.0, 0.9, {"pgd": 0.3}, 0.3) | {"m": 1, "config": recs[0]["config"]})
    report = write_report(recs, tmp_path)
    text = report.read_text()
    assert (tmp_path / "m_sweep.png").exists() and (tmp_path / "eps_sweep.png").exists()
    assert "m_sweep.png" in text and "eps_sweep.png" in text
    assert "| soft sigma=0.1 m=16 | 0.2 | 2 | 90.0 ± 0.0 | 30.0 ± 0.0 | 20.0 ± 0.0 | pgd |" in text


def test_protocol_runs_transfer_and_nattack(synthetic_model, tmp_path):
    ckpt, model, x, y = synthetic_model
    cfg = EvalConfig(
        checkpoint=ckpt,
        data="synthetic",
        max_examples=30,
        eps=[0.1],
        votes=["soft"],
        sigmas=[0.05],
        ms=[4],
        attacks=["pgd", "transfer", "nattack"],
        steps=5,
        transfer_source=ckpt,
        nattack_population=10,
        nattack_queries=200,
        runs=1,
        check_examples=0,  # not about the cross-checks: off, as a stated choice
        device="cpu",
    )
    recs = evaluate(model, x[:30], y[:30], config=cfg).records
    base = recs[0]
    assert set(base["attacks"]) == {"pgd", "transfer", "nattack"}
    # The transfer source is the model itself, so on the base model transfer is white-box PGD with
    # other random starts (the generator has moved on): equal up to a few examples.
    assert base["attacks"]["transfer"] == pytest.approx(base["attacks"]["pgd"], abs=0.1)
    assert base["attacks"]["transfer"] < base["clean"] - 0.3
    for r in recs:
        assert r["worst_case"] <= min(r["attacks"].values()) <= r["clean"]
    with pytest.raises(ConfigError, match="transfer_source"):
        EvalConfig(checkpoint=ckpt, attacks=["transfer"]).validate()


def test_compute_sweep_cli_and_checks(synthetic_model, tmp_path, capsys):
    from smoothinf.evaluation.sweeps import compute_checks

    ckpt, *_ = synthetic_model
    args = [
        "sweep",
        "compute",
        "-c",
        ckpt,
        "--data",
        "synthetic",
        "--max-examples",
        "30",
        "--sigma",
        "0.05",
        "--m",
        "4",
        "--eps",
        "0.1",
        "--steps",
        "1",
        "4",
        "--draws",
        "1",
        "3",
        "--attacks",
        "pgd",
        "epgd",
        "--runs",
        "2",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "compute_sweep.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * (2 + 4)  # runs x (pgd: 2 steps; epgd: 2 steps x 2 draws)
    assert {r["compute"] for r in rows if r["attack"] == "epgd"} == {1, 3, 4, 12}
    assert (tmp_path / "compute_sweep.png").exists()
    assert main(args) == 0  # resumed: nothing new
    assert len((tmp_path / "compute_sweep.jsonl").read_text().splitlines()) == 12
    # The check fires when more steps raise accuracy, and stays silent otherwise.
    assert not compute_checks({("epgd", 1, 1): (0.5, 0), ("epgd", 4, 1): (0.7, 0)})[0].passed
    assert compute_checks({("epgd", 1, 1): (0.5, 0), ("epgd", 4, 1): (0.4, 0)})[0].passed


def test_a_compute_sweep_point_is_the_protocol_row_at_that_budget():
    """Each sweep point is ``evaluate`` with that attack alone at that steps x draws: its accuracy
    equals the smoothed row's of the same EvalConfig (same seed, same judgements)."""
    from smoothinf.evaluation import EvalConfig, evaluate
    from smoothinf.evaluation.sweeps import ComputeSweepConfig, compute_sweep
    from support import argmax_data, linear10

    model = linear10()
    x, y = argmax_data(model, 10)
    cfg = ComputeSweepConfig(
        sigma=0.1, m=4, vote="hard", eps=0.1, steps=[2], draws=[3], attacks=["epgd"], runs=1
    )
    cfg.judgements = 4
    (point,) = compute_sweep(model, x, y, cfg, progress=False)
    same = EvalConfig(
        checkpoint="c",
        max_examples=10,
        eps=[0.1],
        votes=["hard"],
        sigmas=[0.1],
        ms=[4],
        attacks=["epgd"],
        steps=2,
        attack_m=3,
        check_examples=0,
        cascade=False,
        judgements=4,
        runs=1,
        device="cpu",
    )
    row = evaluate(model, x, y, config=same).smoothed
    assert point["accuracy"] == row.attacks["epgd"] and point["clean"] == row.clean
    assert 0 <= point["accuracy"] <= point["clean"] <= 1


def test_report_compute_table_gives_mean_seconds_per_run_per_attack_and_check():
    from smoothinf.evaluation.report import compute_table

    recs = []
    for run, (sec, ex) in enumerate([(10.0, 40), (20.0, 60)]):
        r = record(run, "hard", 0.1, 0.9, {"pgd": 0.5, "apgd-ce": 0.4}, 0.4) | {"m": 8, "seconds": 3 * sec}
        r["attack_time"] = {
            "pgd": {"examples": 100, "seconds": 1.0},
            "apgd-ce": {"examples": ex, "seconds": sec},
        }
        check = {"version": "rand", "n": 50, "robust_before": 20, "extra": 0, "flag": False, "seconds": sec}
        r["checks"] = {"autoattack": check}
        recs.append(r)
    # a record written before per-attack timing gives its total only
    old = record(0, "none", 0.0, 0.9, {"pgd": 0.3}, 0.3) | {"m": 1, "seconds": 7.0}
    lines = compute_table(aggregate(recs + [old])).splitlines()
    assert lines[2:] == [
        "| base (no smoothing) eps 0.1 | **total** (clean judging included) | - | **7.0** |",
        "| hard sigma=0.1 m=8 eps 0.1 | pgd | 100.0 | 1.0 |",
        "| hard sigma=0.1 m=8 eps 0.1 | apgd-ce | 50.0 | 15.0 |",
        "| hard sigma=0.1 m=8 eps 0.1 | check: autoattack (rand) | of the first 50 | 15.0 |",
        "| hard sigma=0.1 m=8 eps 0.1 | **total** (clean judging included) | - | **45.0** |",
    ]
    assert compute_table(aggregate([record(0, "none", 0.0, 0.9, {"pgd": 0.3}, 0.3)])) == ""


def test_report_header_counts_the_runs_the_records_hold():
    from smoothinf.evaluation.report import runs_text

    recs = [record(r, "hard", 0.1, 0.9, {"pgd": 0.5}, 0.4) | {"seed": 5 + r} for r in range(3)]
    assert runs_text(recs) == "3 runs (seeds 5..7)"  # whatever the first record's config said
    assert runs_text(recs[:1]) == "1 run (seed 5)"
    assert runs_text([recs[0], recs[2]]) == "2 runs (seeds 5, 7)"


def test_dataset_name_is_the_request_else_the_checkpoints():
    from smoothinf.errors import SmoothinfError
    from smoothinf.evaluation.loading import dataset_name

    assert dataset_name("cifar10", {"dataset": "mnist"}) == "cifar10"
    assert dataset_name(None, {"dataset": {"name": "mnist"}}) == "mnist"
    with pytest.raises(SmoothinfError, match="the checkpoint names no data set; pass --data"):
        dataset_name(None, {})


def test_slices_of_an_evaluation_merge_to_the_whole(synthetic_model, tmp_path, capsys):
    """An evaluation in two slices (--first-example) merges, per row, into the evaluation of the
    whole: exactly so for a deterministic row (base model, FGSM); overlapping slices, slices of other
    settings and past-the-end slices are refused, and a slice that some run lacks is left out."""
    from smoothinf.evaluation.slices import merge_slices

    ckpt, *_ = synthetic_model

    def run(name, *extra):
        args = ["evaluate", "-c", ckpt, "--attacks", "fgsm", "--votes", "hard", "--sigmas", "0.05"]
        args += ["--ms", "4", "--steps", "3", "--results", str(tmp_path / name), "--device", "cpu"]
        args += ["--check-examples", "0"]  # not about the cross-checks: off, as a stated choice
        args += ["--report-dir", str(tmp_path / f"rep-{name}"), *extra]
        assert main(args) == 0
        return read_results(tmp_path / name)

    whole = run("whole.jsonl", "--max-examples", "40", "--runs", "2", "--eps", "0.1")
    a = run("a.jsonl", "--max-examples", "25", "--runs", "2", "--eps", "0.1")
    b = run("b.jsonl", "--max-examples", "15", "--first-example", "25", "--runs", "2", "--eps", "0.1")
    assert a[0]["identity"]["settings"].get("first_example") is None  # slice 0: as before slices
    assert b[0]["identity"]["settings"]["first_example"] == 25
    merged, left_out = merge_slices(a + b)
    assert left_out == 0 and len(merged) == len(whole) == 4
    for m, w in zip(sorted(merged, key=row_key), sorted(whole, key=row_key), strict=True):
        assert row_key(m) == row_key(w) and m["n"] == 40 and m["slices"] == [[0, 25], [25, 15]]
        assert m["clean"] == pytest.approx(w["clean"])  # a clean judgement of the same 40 images
        if m["vote"] == "none":  # deterministic model and attack: the same numbers
            assert m["attacks"] == pytest.approx(w["attacks"]) and m["worst_case"] == pytest.approx(
                w["worst_case"]
            )
    capsys.readouterr()
    assert (
        main(["report", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--out", str(tmp_path / "m")])
        == 0
    )
    base_line = next(
        line for line in (tmp_path / "m" / "results.md").read_text().splitlines() if "base" in line
    )
    assert base_line == next(
        line
        for line in (tmp_path / "rep-whole.jsonl" / "results.md").read_text().splitlines()
        if "base" in line
    )
    c = run("c.jsonl", "--max-examples", "5", "--first-example", "40", "--runs", "1", "--eps", "0.1")
    merged, left_out = merge_slices(a + b + c)  # run 1 lacks slice c: c is left out of both rows
    assert left_out == 2 and {m["n"] for m in merged} == {40}
    assert main(["report", str(tmp_path / "a.jsonl"), str(tmp_path / "a.jsonl")]) == 2
    assert "hold the same examples (from 0 and from 0)" in capsys.readouterr().err
    other = run("other.jsonl", "--max-examples", "15", "--first-example", "25", "--runs", "2", "--steps", "4")
    with pytest.raises(ConfigError, match="not slices of one evaluation: settings.steps differs"):
        merge_slices(a + other)
    capsys.readouterr()
    assert (
        main(["evaluate", "-c", ckpt, "--attacks", "fgsm", "--first-example", "1000000", "--device", "cpu"])
        == 2
    )
    assert "past the end" in capsys.readouterr().err


def test_combining_slices_weights_by_images_sums_checks_and_keeps_any_flag():
    """Two slices of one row: accuracies are means weighted by images, the strongest attack is
    recomputed from the merged cumulative (cascade) columns, cross-checks add up and flag if any did."""
    from smoothinf.evaluation.slices import combine

    def part(first, n, clean, attacks, worst, check):
        r = record(0, "hard", 0.1, clean, attacks, worst)
        r.update(n=n, cascade=True, seconds=10.0, config={"first_example": first})
        r["checks"] = {"blackbox": check}
        return r

    check = {"n": 4, "robust_before": 3, "extra": 0, "tolerance": 1, "flag": False, "seconds": 1.0}
    a = part(0, 4, 1.0, {"pgd": 0.5, "apgd": 0.5}, 0.5, check)  # pgd did all the work here
    flagged = {**check, "n": 12, "robust_before": 10, "extra": 2, "flag": True}
    b = part(4, 12, 0.75, {"pgd": 0.75, "apgd": 0.25}, 0.25, flagged)  # apgd did here
    m = combine([b, a])
    assert m["n"] == 16 and m["slices"] == [[0, 4], [4, 12]] and m["seconds"] == 20.0
    assert m["clean"] == pytest.approx(0.8125) and m["worst_case"] == pytest.approx(0.3125)
    assert m["attacks"] == pytest.approx({"pgd": 0.6875, "apgd": 0.3125})
    assert m["strongest"] == "apgd"  # 0.375 more fooled by apgd than pgd's 0.125
    got = m["checks"]["blackbox"]
    assert (got["n"], got["robust_before"], got["extra"], got["tolerance"], got["flag"]) == (
        16,
        13,
        2,
        2,
        True,
    )
    with pytest.raises(ConfigError, match=r"same examples \(from 0 and from 2\)"):
        combine([a, part(2, 4, 1.0, {"pgd": 1.0, "apgd": 1.0}, 1.0, check)])
