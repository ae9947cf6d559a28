"""The evaluation protocol's default preset and cross-checks: AutoAttack, black-box masking, convergence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothinf.evaluation import EvalConfig, evaluate
from smoothinf.evaluation.report import aggregate, checks_table, markdown_table, row_flags
from support import argmax_data, linear10

EPS = 0.02


class Masked(nn.Module):
    """A 10-class linear model on 16x16 inputs whose backward pass reports a zero gradient: gradient
    attacks only keep their random starts (far too weak in 256 dimensions), while its outputs, all a
    black-box attack sees, are those of the linear model."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.lin(x.flatten(1))
        return z.detach() + 0.0 * z


def _masked_config(**changes) -> EvalConfig:
    fields = dict(
        checkpoint="unused",
        votes=[],
        eps=[EPS],
        attacks=["default"],
        apgd_steps=10,
        runs=1,
        check_examples=12,
        autoattack_check=False,
        convergence_check=False,
        square_queries=300,
        preset_square_queries=300,
    )
    return EvalConfig(**{**fields, **changes})


def test_preset_square_rates_a_masked_model_by_what_it_finds_and_flags_the_masking():
    """A deterministic row's preset ends with Square: on a model whose gradients are zero, the
    white-box attacks leave it robust, Square (300 queries) fools it, the worst case is Square's, and
    the black-box check, read from Square's finds beyond the white-box attacks, flags the masking."""
    model = Masked().eval()
    x, y = argmax_data(model, side=16)
    (rec,) = evaluate(model, x, y, config=_masked_config()).records
    bb = rec["checks"]["blackbox"]
    assert rec["clean"] == 1.0
    assert list(rec["attacks"]) == ["pgd", "apgd-ce", "apgd-t", "square"]
    # Zero gradients: the white-box attacks only fool where a random start happens to.
    assert rec["attacks"]["apgd-t"] >= 0.9
    found = round((rec["attacks"]["apgd-t"] - rec["attacks"]["square"]) * rec["n"])
    assert found >= 3 and bb["extra"] == found and bb["flag"] and bb["tolerance"] == 0
    assert bb["attack"] == "square (300 queries, one of the row's attacks)"
    assert rec["worst_case"] == rec["worst_case_attacks"] == rec["attacks"]["square"]
    assert rec["budget"]["square"] == {"queries": 300, "p_init": 0.8}
    assert rec["attack_time"]["square"]["examples"] == round(rec["attacks"]["apgd-t"] * rec["n"])
    row = next(iter(aggregate([rec]).values()))
    assert row_flags(row).startswith("gradient masking suspected (+")
    assert "square (300 queries, one of the row's attacks)" in checks_table(aggregate([rec]))


def test_a_deterministic_rows_square_is_doubled_by_the_convergence_check():
    """With the convergence check on, a deterministic row whose preset ends with Square runs Square
    again at twice the queries on the checked images still robust; its finds count and flag the row
    as not converged (tolerance 0)."""
    model = Masked().eval()
    x, y = argmax_data(model, side=16)
    cfg = _masked_config(convergence_check=True, preset_square_queries=50)
    (rec,) = evaluate(model, x, y, config=cfg).records
    conv = rec["checks"]["convergence"]
    assert conv["attack"] == "square" and conv["tolerance"] == 0
    assert conv["attacked"] == round(rec["attacks"]["square"] * rec["n"])  # what Square left robust
    assert conv["extra"] >= 3 and conv["flag"]  # 50 queries are far from converged in 256 pixels
    assert rec["worst_case"] == pytest.approx(rec["attacks"]["square"] - conv["extra"] / rec["n"])
    row = next(iter(aggregate([rec]).values()))
    assert "not converged (+" in row_flags(row)


def test_blackbox_check_flags_masked_gradients_and_counts_its_successes():
    """Without the preset's Square (preset_square_queries 0, as records before it), the black-box
    check runs AutoAttack's Square after the white-box attacks and counts its finds."""
    pytest.importorskip("pyautoattack")
    model = Masked().eval()
    x, y = argmax_data(model, side=16)
    (rec,) = evaluate(model, x, y, config=_masked_config(preset_square_queries=0)).records
    bb = rec["checks"]["blackbox"]
    assert rec["clean"] == 1.0
    # Zero gradients: the white-box attacks only fool where a random start happens to.
    assert rec["worst_case_attacks"] >= 0.9
    assert bb["flag"] and bb["extra"] >= 3
    assert rec["worst_case"] == pytest.approx(rec["worst_case_attacks"] - bb["extra"] / 12)
    assert set(rec["budget"]) == {"pgd", "apgd-ce", "apgd-t"}
    assert rec["budget"]["apgd-t"] == {"steps": 10, "draws": 1, "restarts": 9, "gradients": 90}
    # the cascade's first attack runs on every (clean-correct) example, the later ones on fewer
    timing = rec["attack_time"]
    assert list(timing) == ["pgd", "apgd-ce", "apgd-t"] and timing["pgd"]["examples"] == rec["n"]
    assert timing["apgd-t"]["examples"] <= timing["apgd-ce"]["examples"] <= rec["n"]
    # each attack's seconds are rounded to 1 ms and timed by another clock: a few ms of slack
    assert sum(t["seconds"] for t in timing.values()) <= rec["attack_seconds"] + 0.002 * len(timing)
    row = next(iter(aggregate([rec]).values()))
    assert row_flags(row).startswith("gradient masking suspected (+")
    assert "gradient masking suspected" in markdown_table(aggregate([rec]))
    assert "square (300 queries)" in checks_table(aggregate([rec]))


def _soft_vote_config(**changes) -> EvalConfig:
    """The base model and its soft@16 vote at sigma 0.05, the default preset at 20 x 4, 8 examples
    checked (no Square)."""
    fields = dict(votes=["soft"], sigmas=[0.05], ms=[16], eps=[0.05], attacks=["default"], apgd_steps=20)
    fields |= dict(attack_m=4, runs=1, check_examples=8, blackbox_check=False)
    return EvalConfig(checkpoint="unused", **(fields | changes))


def test_smoothed_rows_pass_autoattack_and_convergence_checks_on_a_linear_model():
    pytest.importorskip("pyautoattack")
    model = linear10()
    x, y = argmax_data(model, 8)
    # every step taken (stop_decided off): the attacks' own convergence, which the stop would mix
    # with the different draws of a run whose batch shrank (test_stopping_on_decided_examples_...)
    cfg = _soft_vote_config(stop_decided=False)
    base, smooth = evaluate(model, x, y, config=cfg).records
    assert base["checks"]["autoattack"]["version"] == "standard"
    assert smooth["checks"]["autoattack"]["version"].startswith("rand (official APGD-CE + APGD-DLR")
    assert "on a 1-draw soft surrogate" in smooth["checks"]["autoattack"]["version"]  # attack_m draws
    # APGD reaches the linear optimum: AutoAttack finds nothing more, doubling changes nothing.
    for rec in (base, smooth):
        assert rec["checks"]["autoattack"]["extra"] == 0 and not rec["checks"]["autoattack"]["flag"]
        assert 0 < rec["worst_case"] < 1
    conv = smooth["checks"]["convergence"]
    assert not conv["flag"] and conv["extra"] <= conv["tolerance"]
    # a randomised row's flags allow for the judge's Monte Carlo error; a deterministic row's do not
    assert smooth["checks"]["autoattack"]["tolerance"] >= 1 and base["checks"]["autoattack"]["tolerance"] == 0
    assert smooth["budget"]["apgd-ce"]["gradients"] == 20 * 4
    # a deterministic row's doubled check is its Square at twice the queries (nothing to find here)
    assert base["checks"]["convergence"]["attack"] == "square"
    assert base["checks"]["convergence"]["extra"] == 0 and not base["checks"]["convergence"]["flag"]


def test_stopping_on_decided_examples_leaves_no_image_for_the_checks_to_find():
    """With the default stop on decided examples, AutoAttack and the doubled budget find less than
    one image more than the preset on the linear model (within the judge's tolerance: no flag)."""
    pytest.importorskip("pyautoattack")
    model = linear10()
    x, y = argmax_data(model, 8)
    base, smooth = evaluate(model, x, y, config=_soft_vote_config()).records
    assert smooth["config"]["stop_decided"]
    for check in ("autoattack", "convergence"):
        assert smooth["checks"][check]["extra"] < 1 and not smooth["checks"][check]["flag"]
    assert base["checks"]["autoattack"]["extra"] == 0


def test_weight_noise_rows_get_the_convergence_check():
    """A weight-noise model is random without input noise: its own forward and its sigma-0 vote
    get the doubled-budget check too (each doubled attack has twice the steps and draws)."""
    from smoothinf.noise import inject_noise

    base = linear10()  # the labels' own model, with weight noise: most examples stay right
    x, y = argmax_data(base, 8)
    model = inject_noise(base, "pni-w", init=0.1).eval()
    cfg = EvalConfig(
        checkpoint="unused",
        votes=["hard"],
        sigmas=[0.0],
        ms=[4],
        eps=[0.05],
        attacks=["default"],
        apgd_steps=4,
        attack_m=2,
        judgements=4,
        runs=1,
        check_examples=8,
        autoattack_check=False,
        blackbox_check=False,
    )
    for rec in evaluate(model, x, y, config=cfg).records:
        conv = rec["checks"]["convergence"]
        assert conv["attack"] == rec["strongest"] and conv["attack"] in rec["attacks"] and conv["n"] == 8
        # fresh judgements value each chosen point (a cascade's columns need not decrease any more):
        # the worst case is the attacks' one less what every check took off
        extra = sum(c["extra"] for c in rec["checks"].values())
        assert rec["worst_case"] == pytest.approx(rec["worst_case_attacks"] - extra / rec["n"], abs=1e-4)


def test_cascade_runs_later_attacks_only_on_robust_examples_with_the_same_worst_case():
    from smoothinf.attacks import robust_accuracy

    model = linear10()
    x, y = argmax_data(model, 10)
    w = model[1].weight

    def push(rows: list[int]):
        """An 'attack' moving examples whose index is in rows to a point of another class."""
        seen = []

        def attack(xb, yb, generator=None):
            seen.append(xb.shape[0])
            out = xb.clone()
            for i in range(xb.shape[0]):
                idx = int(torch.nonzero((x == xb[i]).flatten(1).all(1))[0])
                if idx in rows:
                    other = (yb[i] + 1) % 10
                    out[i] = (xb[i] + 0.5 * (w[other] - w[yb[i]]).sign().view_as(xb[i])).clamp(0, 1)
            return out

        attack.seen = seen
        return attack

    a1, a2 = push([0, 1, 2]), push([2, 3])
    full = robust_accuracy(model, x, y, {"a1": a1, "a2": a2})
    b1, b2 = push([0, 1, 2]), push([2, 3])
    casc = robust_accuracy(model, x, y, {"a1": b1, "a2": b2}, cascade=True)
    fooled1 = int((full.correct["a1"] == 0).sum())
    assert fooled1 >= 2 and sum(a2.seen) == 10 and sum(b2.seen) == 10 - fooled1
    assert torch.equal(casc.robust, full.robust)
    assert casc.accuracy["a2"] == casc.worst_case_accuracy == full.worst_case_accuracy
    assert casc.accuracy["a1"] == full.accuracy["a1"]
    # each attack's cost is recorded with the examples it ran on
    assert full.attacked == {"a1": 10, "a2": 10} and casc.attacked == {"a1": 10, "a2": 10 - fooled1}
    assert set(casc.seconds) == {"a1", "a2"} and all(s >= 0 for s in casc.seconds.values())


def test_cascade_skips_an_attack_once_nothing_is_left_robust():
    from smoothinf.attacks import robust_accuracy

    class Half(nn.Module):  # class 1 iff the mean pixel exceeds 0.5
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = x.flatten(1).mean(1, keepdim=True)
            return torch.cat([0.5 - v, v - 0.5], 1)

    x, y = torch.full((6, 1, 4, 4), 0.25), torch.zeros(6, dtype=torch.long)
    calls = []

    def fool_all(xb, yb, generator=None):
        calls.append(xb.shape[0])
        return torch.full_like(xb, 0.75)

    def must_not_run(xb, yb, generator=None):
        raise AssertionError(f"called with {xb.shape[0]} examples")

    res = robust_accuracy(Half(), x, y, {"first": fool_all, "second": must_not_run}, cascade=True)
    assert calls == [6] and res.accuracy == {"first": 0.0, "second": 0.0} and res.worst_case_accuracy == 0.0


def test_the_doubled_attacks_finds_count_in_the_worst_case(monkeypatch):
    """A doubled-budget attack that fools more lowers the worst case by exactly its ``extra``."""
    from smoothinf.evaluation import protocol

    model = linear10()
    x, y = argmax_data(model, 8)
    real = protocol.build_attacks

    def build(*args, scale: int = 1, **kwargs):
        attacks = real(*args, scale=scale, **kwargs)
        if scale == 2:  # the 'doubled' attack swaps each example for one of another class

            def swap(xb, yb, generator=None):
                return x[torch.stack([(y != t).nonzero()[0, 0] for t in yb])]

            attacks = {name: swap for name in attacks}
        return attacks

    monkeypatch.setattr(protocol, "build_attacks", build)
    cfg = _soft_vote_config(autoattack_check=False)
    _, smooth = evaluate(model, x, y, config=cfg).records
    conv = smooth["checks"]["convergence"]
    assert conv["flag"] and conv["extra"] > 1
    assert smooth["worst_case"] == pytest.approx(smooth["worst_case_attacks"] - conv["extra"] / 8, abs=1e-4)
    assert smooth["counted_checks"] == ["autoattack", "blackbox", "convergence"]


def test_records_from_before_the_doubled_attack_counted_are_read_with_its_finds(tmp_path):
    import json

    from smoothinf.evaluation.results import ResultsStore, read_results

    old = {"run": 0, "vote": "hard", "sigma": 0.0, "m": 8, "eps": 0.3, "n": 100, "clean": 0.97}
    old |= {"attacks": {"apgd-ce": 0.8}, "worst_case": 0.78, "fingerprint": "f"}
    old["checks"] = {"blackbox": {"extra": 1.0}, "convergence": {"extra": 1.3438}}
    new = dict(old, run=1, worst_case=0.7, counted_checks=["autoattack", "blackbox", "convergence"])
    plain = {k: v for k, v in dict(old, run=2).items() if k != "checks"}  # no checks: nothing to add
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (old, new, plain)))
    for records in (read_results(path), ResultsStore(path, fingerprint="f").records):
        assert [r["worst_case"] for r in records] == pytest.approx([0.78 - 0.013438, 0.7, 0.78])
    assert json.loads(path.read_text().splitlines()[0])["worst_case"] == 0.78  # the file is untouched


def test_a_record_whose_doubled_attack_finds_are_not_a_number_is_refused_with_its_line(tmp_path):
    import json

    from smoothinf.errors import ConfigError
    from smoothinf.evaluation.results import read_results

    record = {"run": 0, "vote": "hard", "sigma": 0.0, "m": 8, "eps": 0.3, "n": 100, "clean": 0.97}
    record |= {"attacks": {"pgd": 0.8}, "worst_case": 0.8, "checks": {"convergence": {"extra": "2"}}}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(ConfigError, match=r"r\.jsonl:1: 'checks\.convergence\.extra' must be a number"):
        read_results(path)
