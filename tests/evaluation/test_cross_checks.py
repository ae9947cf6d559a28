"""Cross-checks that can find something (issue 38, item 4): AutoAttack rand's best-loss points on
randomised rows, checks on by default, the strongest attack of a cascade, and unbiased folding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothinf.evaluation import EvalConfig, evaluate, protocol, write_report
from smoothinf.evaluation.report import aggregate, markdown_table
from support import at_distance, halfspace, phi

SIGMA = 0.25


def _linear10() -> nn.Module:
    """A 10-class linear model on 1x4x4 images (DLR needs 3 classes or more)."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).eval()


def _data(model: nn.Module, n: int):
    x = torch.rand((n, 1, 4, 4), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return x, model(x).argmax(1)


def test_the_rand_cross_check_returns_a_perturbed_point_for_every_example():
    """AutoAttack rand returns the clean image wherever no single surrogate forward was fooled, and
    skips the examples one forward already gets wrong: most came back unperturbed (old code: 13 of
    20 here). The cross-check now returns each example's best-loss point on a soft surrogate whose
    loss EOT averages over 20 draws, inside the eps-ball, for the defended classifier to judge."""
    pytest.importorskip("pyautoattack")
    model = _linear10()
    x, y = _data(model, 20)
    eps = 0.1
    cfg = EvalConfig(checkpoint="unused", attack_m=2)
    aa = protocol.autoattack_for(model, "soft", SIGMA, eps, cfg)
    x_adv = aa(x, y, torch.Generator().manual_seed(0))
    moved = (x_adv - x).flatten(1).abs().amax(1)
    assert int((moved > 0).sum()) >= 19
    assert float(moved.max()) <= eps + 1e-6 and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert aa.description() == (
        "rand (official APGD-CE + APGD-DLR, 100 iterations, EOT 20, best-loss points on a 1-draw soft "
        "surrogate)"
    )
    assert aa.budget() == {"steps": 100, "draws": 20, "restarts": 2, "gradients": 4000}
    # both attacks' points, for every example; the call picked one of them per example (same seed)
    points = aa.best_loss_points(x, y)
    assert set(points) == {"apgd-ce", "apgd-dlr"}
    assert all(int(((p - x).flatten(1).abs().amax(1) > 0).sum()) >= 19 for p in points.values())
    same = [(x_adv == p).flatten(1).all(1) for p in points.values()]
    assert bool((same[0] | same[1]).all())


def test_checks_run_by_default_on_a_deterministic_row_and_switching_them_off_is_stated(tmp_path, monkeypatch):
    """EvalConfig() and `smoothinf evaluate` both cross-check the first 100 examples (capped by the
    examples) with AutoAttack standard and Square (old code: 0, no checks); check_examples=0 is a
    choice the record carries and the report's text states."""
    pytest.importorskip("pyautoattack")
    from smoothinf.cli import build_parser
    from smoothinf.cli import evaluation as cli_evaluation

    model = _linear10()
    x, y = _data(model, 12)
    common = dict(
        checkpoint="unused",
        votes=[],
        eps=[0.05],
        apgd_steps=10,
        runs=1,
        square_queries=50,
        preset_square_queries=40,
    )
    (rec,) = evaluate(model, x, y, config=EvalConfig(**common)).records
    checks = rec["checks"]
    assert set(checks) == {"autoattack", "blackbox", "convergence"} and rec["checks_off"] == {}
    assert checks["convergence"]["attack"] == "square"  # the preset's Square at twice the queries
    assert checks["autoattack"]["version"] == "standard"
    # a deterministic row's preset ends with Square: the black-box check reads its finds
    assert checks["blackbox"]["attack"] == "square (40 queries, one of the row's attacks)"
    assert checks["autoattack"]["n"] == checks["blackbox"]["n"] == 12  # capped by the examples
    assert checks["autoattack"]["attacked"] > 0  # examples the preset left robust were checked
    assert checks["autoattack"]["tolerance"] == 0  # deterministic: any find flags

    seen = {}

    class Stop(Exception):
        pass

    def capture(cfg, device):
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr(cli_evaluation, "protocol_inputs", capture)
    with pytest.raises(Stop):
        cli_evaluation.run_evaluate(build_parser().parse_args(["evaluate", "-c", "m", "--attacks", "pgd"]))
    assert seen["cfg"].check_examples == EvalConfig().check_examples == 100

    (off,) = evaluate(model, x, y, config=EvalConfig(**common, check_examples=0)).records
    assert off["checks"] == {}
    assert off["checks_off"] == dict.fromkeys(("autoattack", "blackbox", "convergence"), "check_examples=0")
    assert off["worst_case"] == off["worst_case_attacks"]
    off["config"]["checkpoint"], off["config"]["data"] = "m", "toy"
    text = write_report([off], tmp_path).read_text()
    assert "Cross-checks off: autoattack, blackbox, convergence (check_examples=0)" in text
    rec["config"]["checkpoint"], rec["config"]["data"] = "m", "toy"
    assert "Cross-checks off" not in write_report([rec], tmp_path / "on").read_text()


def _moves_to(distance: float):
    """An 'attack' that moves every example of the half-space to signed distance ``distance``."""

    def attack(xb, yb, generator=None):
        return at_distance(torch.full((xb.shape[0],), distance))

    return attack


def test_the_strongest_attack_of_a_cascade_is_the_one_whose_points_matter(monkeypatch):
    """PGD runs first and takes P(correct) from 0.99 to 0.3; APGD then takes it to 0.001 on the same
    examples. Counting what each fooled of what the earlier attacks had left (old rule) names PGD
    (0.69 against 0.3 per example); without PGD's points the worst case barely moves, without APGD's
    it rises to 0.3: the strongest is apgd-ce under the rule "without"."""
    model = halfspace()
    x, y = at_distance(torch.full((40,), 2.4 * SIGMA)), torch.ones(40, dtype=torch.long)
    attacks = {"pgd": _moves_to(-0.52 * SIGMA), "apgd-ce": _moves_to(-3.0 * SIGMA)}  # Phi: 0.3, 0.001
    monkeypatch.setattr(protocol, "build_attacks", lambda *a, **k: dict(attacks))
    cfg = EvalConfig(checkpoint="unused", votes=["hard"], sigmas=[SIGMA], ms=[1], eps=[0.3], runs=1)
    cfg.check_examples = 0  # not about the cross-checks: off, as a stated choice
    base, smooth = evaluate(model, x, y, config=cfg).records
    assert smooth["cascade"] and list(smooth["attacks"]) == ["pgd", "apgd-ce"]
    assert smooth["attacks"]["pgd"] == pytest.approx(0.3, abs=0.06)
    assert smooth["attacks"]["apgd-ce"] < 0.02
    assert smooth["strongest"] == "apgd-ce" and smooth["strongest_rule"] == "without"
    assert smooth["without"]["pgd"] < 0.02 and smooth["without"]["apgd-ce"] == pytest.approx(0.3, abs=0.06)
    # the deterministic base row: PGD fools every example, APGD runs on none
    assert base["strongest"] == "pgd" and base["strongest_rule"] == "without"
    rows = aggregate([base, smooth])
    assert rows[("hard", SIGMA, 1, 0.3)]["strongest"] == "apgd-ce"
    assert "| apgd-ce |" in markdown_table(rows)


def test_folding_a_check_that_changes_nothing_keeps_the_worst_case_unbiased(monkeypatch):
    """The attacks and the doubled-budget check return the clean images, so every example's true
    worst case is its clean P(correct) = Phi(d / sigma), 0.834 on average. Folding the check as
    min(robust, p), a minimum of two noisy estimates, lowered it by 10.0 of 200 examples to 0.7825
    (old code); offered to ``WorstCase`` it moves by sampling error only (1.8 examples, 0.8234)."""
    model = halfspace()
    d = SIGMA * torch.linspace(0.2, 2.0, 200)
    x, y = at_distance(d), torch.ones(200, dtype=torch.long)
    truth = float(phi(d / SIGMA).mean())

    def unchanged(xb, yb, generator=None):
        return xb.clone()

    monkeypatch.setattr(protocol, "build_attacks", lambda *a, **k: {"pgd": unchanged})
    cfg = EvalConfig(checkpoint="unused", votes=["hard"], sigmas=[SIGMA], ms=[1], eps=[0.3], runs=1)
    cfg.attacks, cfg.judgements, cfg.check_examples = ["pgd"], 16, 200
    cfg.autoattack_check = cfg.blackbox_check = False
    _, smooth = evaluate(model, x, y, config=cfg).records
    conv = smooth["checks"]["convergence"]
    # the mean of 200 fresh 16-judgement estimates: sd about 0.007
    assert smooth["worst_case"] == pytest.approx(truth, abs=0.025)
    # sum over 200 examples of differences of two 16-judgement estimates: sd about 1.5 examples
    assert abs(conv["extra"]) <= 4.5 and not conv["flag"]
    assert conv["attack"] == "pgd" and conv["attacked"] == 200
    assert smooth["worst_case"] == pytest.approx(smooth["worst_case_attacks"] - conv["extra"] / 200, abs=1e-4)
    assert smooth["judging"] == 2


def test_judging_is_part_of_the_identity_and_old_records_are_marked(tmp_path):
    """judging 2 re-keys every configuration (records measured with the old judging are not resumed);
    judging 1 keeps the fingerprint such a configuration had before the field existed (here the one
    of the old EvalConfig(checkpoint="c"), whose check_examples was 0); the report marks rows whose
    records carry no judging as (old judging) and says which rule its strongest column follows."""
    from smoothinf.errors import ConfigError

    old = EvalConfig(
        checkpoint="c",
        check_examples=0,
        judging=1,
        crafting="per-row",
        stop_decided=False,
        preset_square_queries=0,
    )
    assert old.fingerprint() == "61745d43ad8629cd"
    assert EvalConfig(checkpoint="c", check_examples=0).fingerprint() != old.fingerprint()
    with pytest.raises(ConfigError, match="judging 1 names the old judging rules"):
        evaluate(_linear10(), *_data(_linear10(), 2), config=old)
    with pytest.raises(ConfigError, match="judging must be 1"):
        EvalConfig(checkpoint="c", judging=3).validate()

    def record(run: int, vote: str, **extra) -> dict:
        r = {"run": run, "vote": vote, "sigma": 0.1, "m": 8, "eps": 0.3, "n": 10, "clean": 0.9}
        r |= {"attacks": {"pgd": 0.6, "apgd-ce": 0.4}, "worst_case": 0.4, "cascade": True, "strongest": "pgd"}
        cfg = {"checkpoint": "c", "data": "d", "split": "test", "attacks": ["default"]}
        return r | {"config": cfg} | extra

    new = record(0, "soft", judging=2, strongest="apgd-ce", strongest_rule="without")
    text = write_report([record(0, "hard"), new], tmp_path).read_text()
    assert "| hard sigma=0.1 m=8 (old judging) | 0.3 |" in text and "| soft sigma=0.1 m=8 | 0.3 |" in text
    assert "Rows marked (old judging) were measured under judging 1" in text
    assert (
        'without whose points the worst case (over the points judged) would rise most (rule "without")'
        in text
    )
    assert 'favours the attacks that run first (rule "drop")' in text  # the old records' rule


class _NoisyLogits(nn.Module):
    """A model built elsewhere whose forward adds fresh Gaussian noise to its logits: random, but
    with none of the library's noise layers."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _linear10()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inner(x)
        return z + 0.5 * torch.randn_like(z)


def test_a_stochastic_model_built_elsewhere_is_attacked_as_a_randomised_row():
    """``evaluate(..., config=)`` probes the model before building the attacks: its unsmoothed row gets the
    randomised preset (APGD-CE and APGD-DLR with draws, tempered APGD-CE; old code: the deterministic
    one, APGD-CE and APGD-T with one draw)
    and the doubled-budget check, and is judged as a random classifier."""
    model = _NoisyLogits().eval()
    x, y = _data(model.inner, 8)
    cfg = EvalConfig(checkpoint="unused", votes=[], eps=[0.05], apgd_steps=5, attack_m=2, runs=1)
    cfg.judgements, cfg.check_examples, cfg.autoattack_check, cfg.blackbox_check = 4, 8, False, False
    (rec,) = evaluate(model, x, y, config=cfg).records
    # (a random model's own forward is judged by argmax counts: the tempered APGD-CE runs too)
    assert list(rec["attacks"]) == ["pgd", "apgd-ce", "apgd-dlr", "apgd-ce-t0.5", "apgd-ce-t0.25"]
    assert rec["budget"]["apgd-ce"] == {"steps": 5, "draws": 2, "restarts": 1, "gradients": 10}
    assert "convergence" in rec["checks"] and rec["checks"]["convergence"]["tolerance"] >= 1
