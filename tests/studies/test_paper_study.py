"""The paper study (issue 14): configs step, judging grid, resumable pipeline, verdict rules."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from paper_mnist import judge_grid, run_study
from paper_mnist.pipeline import CASCADED, _schedule, load_study, unbits
from paper_mnist.report import (
    aggregate,
    autoattack_lines,
    build_page,
    claim1,
    claim3,
    masking_lines,
    square_lines,
)
from paper_mnist.study import correct_fraction, encode_correct, min_estimate_bias

from smoothinf.data import get_dataset_info
from smoothinf.errors import ConfigError
from smoothinf.models import create_model_for
from smoothinf.noise import inject_noise
from smoothinf.recipes import recipe_names, recipe_path
from smoothinf.smoothing import SmoothedClassifier
from smoothinf.training.step_timing import load_train_config, time_train_step, train_configs

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "studies" / "paper_mnist"
CONFIGS = [recipe_path(n) for n in recipe_names() if n.startswith("paper_")] + train_configs(
    STUDY / "configs"
)
WIDE = ("wide_resnet34_10",)


def test_config_folders_hold_every_model():
    names = {p.stem for p in CONFIGS}
    assert {
        "paper_cifar10_resnet20_cniw",
        "paper_cifar10_resnet20_cniw_ft_epgd",
        "paper_cifar100_wrn34_10_pniw",
    } <= names
    study = load_study(STUDY / "configs")
    for name in study.models + study.finetunes + [study.transfer_source]:
        assert (STUDY / "configs" / f"{name}.yaml").exists()
    assert 0.0 in study.sigmas and 0.1 in study.sigmas and study.runs >= 2 and study.examples >= 500
    big = study.for_model("mnist_cnn_pni_w_pgd_at")
    assert big.runs == 1 and not big.certify and study.for_model("pgd_at") is study
    assert max(study.ms) >= 64 and max(study.headline_ms) == 256


def test_model_eval_overrides_are_checked(tmp_path):
    (tmp_path / "study.yaml").write_text("models: [a]\nmodel_eval:\n  b: {runs: 1}\n")
    with pytest.raises(ConfigError, match="not among the study's models"):
        load_study(tmp_path)
    (tmp_path / "study.yaml").write_text("models: [a]\nmodel_eval:\n  a: {eps: 0.1}\n")
    with pytest.raises(ConfigError, match="may only set"):
        load_study(tmp_path)


def test_gpu_profile_is_the_issues_full_specification():
    """`--profile gpu`: 1000 images x 3 runs, the issue's sigma grid and m, every model on every run
    and sigma, budgets at least the ones measured to converge (200 x 64; plateau on every image)."""
    cpu = load_study(STUDY / "configs")
    gpu = load_study(STUDY / "configs", profile="gpu")
    assert not gpu.quick and gpu.examples >= 1000 and gpu.runs >= 3
    assert {0.0, 0.02, 0.05, 0.1, 0.15, 0.25} <= set(gpu.sigmas) and {1, 8, 64, 256} <= set(gpu.ms)
    assert gpu.judged_draws() >= 256 and gpu.votes == ["hard", "weighted", "soft"]
    assert all(gpu.for_model(n) is gpu for n in gpu.models + gpu.finetunes)
    assert gpu.apgd_steps * gpu.draws >= 200 * 64 and gpu.convergence_scales[-1] >= 2
    assert (gpu.autoattack_examples, gpu.autoattack_runs) == (gpu.examples, gpu.runs)
    assert gpu.plateau_examples == gpu.examples and gpu.plateau_restarts >= 4 and gpu.plateau_steps >= 400
    assert gpu.plateau_temperatures() == cpu.plateau_temperatures() == [0.5, 0.25]
    # every model trained longer than on the CPU, nothing else about its recipe changed
    for name in gpu.models + gpu.finetunes + [gpu.transfer_source]:
        base = load_train_config(STUDY / "configs" / f"{name}.yaml")
        over = gpu.train_overrides(name)
        assert over["epochs"] >= 3 * base.epochs and set(over) <= {
            "epochs",
            "milestones",
            "max_train_examples",
        }
        assert all(m < over["epochs"] for m in over.get("milestones", []))
    assert cpu.train_overrides("pgd_at") == {} and load_study(STUDY / "configs", True).quick


@pytest.mark.parametrize("name", ["mnist_cnn_pni_w_pgd_at", "ft_epgd", "trades"])
def test_gpu_profile_configs_take_a_training_step(tmp_path, name):
    """The pipeline's own TrainConfig under the gpu profile (its overrides applied, None included)
    takes one optimizer step on random MNIST-shaped data."""
    from smoothinf.evaluation.steps import train_config

    study = load_study(STUDY / "configs", profile="gpu")
    refs = {"best_noise": str(tmp_path / "noise.safetensors"), "pgd_at": str(tmp_path / "at.safetensors")}
    cfg = train_config(STUDY / "configs", name, tmp_path, refs, study.train_overrides(name), study.device)
    assert cfg.epochs == study.train_overrides(name)["epochs"]
    if name == "ft_epgd":
        assert cfg.max_train_examples is None and cfg.init == refs["best_noise"]
    timing = time_train_step(cfg, batch_size=2)
    assert math.isfinite(timing.loss) and timing.loss > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"profile": "cpu"}, "^unknown study profile 'cpu'; choose one of quick, gpu$"),
        ({"quick": True, "profile": "gpu"}, "exclude each other"),
        (
            {"model_train": {"nope": {"epochs": 1}}},
            "^model_train names nope, which the study does not train$",
        ),
        ({"model_train": {"pgd_at": {"epoch": 1}}}, r"^model_train\['pgd_at'\]: epoch is not a TrainConfig"),
        ({"model_train": {"pgd_at": {"epochs": "ten"}}}, "epochs must be an integer, got 'ten'"),
        ({"model_train": {"pgd_at": 3}}, "must be a mapping of TrainConfig fields"),
        ({"train": {"lr": [1]}}, "^train: lr must be"),
    ],
)
def test_profile_and_training_overrides_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        load_study(STUDY / "configs", **kwargs)


def test_profile_blocks_reject_unknown_keys(tmp_path):
    (tmp_path / "study.yaml").write_text("models: [a]\ngpu:\n  exampels: 5\n")
    with pytest.raises(ConfigError, match="gpu: unknown key"):
        load_study(tmp_path)
    (tmp_path / "study.yaml").write_text("models: [a]\ngpu:\n  examples: 5\n  runs: 4\n")
    assert (load_study(tmp_path).examples, load_study(tmp_path, profile="gpu").examples) == (1000, 5)
    assert load_study(tmp_path, profile="gpu", runs=2).runs == 2  # explicit overrides win


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_runs_one_training_step(path):
    """Every train YAML loads and takes one optimizer step on random data of its shape (the wide
    ResNets step on resnet20 here, with their own objective/noise/optimizer; see the slow test)."""
    cfg = load_train_config(path)
    info = get_dataset_info(cfg.data)
    if cfg.data.startswith("cifar"):
        assert math.isclose(cfg.eps, 8 / 255, rel_tol=1e-4) and math.isclose(
            cfg.alpha, cfg.eps / 4, rel_tol=1e-3
        )
        assert cfg.optimizer == "sgd" and cfg.lr in (0.1, 0.01) and cfg.weight_decay == 1e-4
        assert cfg.batch_size == 256 and cfg.grad_clip == 0.05
    else:
        assert cfg.eps == 0.3 and info.input_shape == (1, 28, 28)
    if cfg.model in WIDE:
        cfg.model = "resnet20"
    if cfg.objective in ("epgd", "cni-iw"):
        assert cfg.sigma > 0  # noise inside the forward
    cfg.attack_steps = min(cfg.attack_steps, 2)
    timing = time_train_step(cfg, batch_size=2, steps=0)
    assert math.isfinite(timing.loss) and timing.loss > 0


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in CONFIGS if "wrn34" in p.name], ids=lambda p: p.stem)
def test_wide_resnet_config_full_step(path):
    timing = time_train_step(load_train_config(path), batch_size=2, steps=0)
    assert math.isfinite(timing.loss) and timing.parameters > 40_000_000


def _tiny_model(noise: str | None = None):
    info = get_dataset_info("synthetic")
    torch.manual_seed(0)
    model = create_model_for("mnist_cnn_small", info)
    if noise:
        inject_noise(model, noise)
    return model.eval()


@pytest.mark.parametrize("noise", [None, "pni-w"])
def test_judge_grid_equals_each_smoothed_classifier(noise):
    """Every vote@m of judge_grid equals SmoothedClassifier(m, vote).predict with the same seed:
    the first m of the shared draws are the m draws a separate classifier would take (with weight
    noise, whose draws are sampled per chunk of draws, only at the largest m, chunked alike)."""
    model = _tiny_model(noise)
    x = torch.rand(7, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    y = torch.arange(7) % 4
    grid = judge_grid(
        model, 0.3, x, y, ["hard", "weighted", "soft"], [1, 3, 8], torch.Generator().manual_seed(5)
    )
    assert set(grid) == {f"{v}@{m}" for v in ("hard", "weighted", "soft") for m in (1, 3, 8)}
    for key, correct in grid.items():
        vote, m = key.split("@")
        if noise and m != "8":
            continue
        pred = SmoothedClassifier(model, 0.3, int(m), vote).predict(x, torch.Generator().manual_seed(5))
        assert torch.equal(correct, pred == y), key


class _Margin(torch.nn.Module):
    """Two classes; logit of class 1 minus class 0 = w.x + b with ||w|| = 1 (x 1x4x4)."""

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1).sum(1) / 4 - 2.0 + self.margin  # 0 at x = 0.5 everywhere, plus the margin
        return torch.stack([torch.zeros_like(z), z], 1)


def test_judge_grid_estimates_the_probability_of_a_right_vote():
    """Gaussian input noise sigma on a linear margin a: one draw is right with p = Phi(a / sigma),
    a hard vote of 5 draws with P(Binomial(5, p) >= 3). The subset estimate matches both, and
    its per-example minimum over repeated judgements of the same inputs stays near the mean (low by
    about one sd of the estimate), while the minimum over single judgements (the old judging)
    falls to p^k."""
    sigma, a, n = 0.5, 0.25, 200
    model = _Margin(a)
    x, y = torch.full((n, 1, 4, 4), 0.5), torch.ones(n, dtype=torch.long)
    p1 = 0.5 * (1 + math.erf(a / sigma / math.sqrt(2)))
    p5 = sum(math.comb(5, k) * p1**k * (1 - p1) ** (5 - k) for k in (3, 4, 5))
    gen = torch.Generator().manual_seed(0)
    got = judge_grid(model, sigma, x, y, ["hard", "soft"], [1, 5], gen, draws=100, subsets=20)
    assert abs(float(got["hard@1"].mean()) - p1) < 0.02  # 100 single draws per example
    assert abs(float(got["hard@5"].mean()) - p5) < 0.03
    assert got["hard@5"].mean() > got["hard@1"].mean() + 0.05  # the vote helps on the right side
    assert {float(v) for v in got["hard@5"][:20] * 20} <= set(map(float, range(21)))  # counts of 20
    judged = [judge_grid(model, sigma, x, y, ["hard"], [5], gen, draws=100, subsets=20) for _ in range(4)]
    once = [judge_grid(model, sigma, x, y, ["hard"], [5], gen)["hard@5"] for _ in range(4)]
    assert set(torch.cat(once).tolist()) == {0.0, 1.0}  # subsets 0: one judgement, as before
    worst = torch.stack([j["hard@5"] for j in judged]).min(0).values.mean()
    worst_once = torch.stack(once).min(0).values.mean()
    # min of 4 single judgements ~ p5^4; min of 4 estimates (20 votes each, sd ~0.085) ~1 sd low
    assert abs(float(worst_once) - p5**4) < 0.1 and float(worst) > float(worst_once) + 0.15
    assert p5 - 0.14 < float(worst) <= p5 + 0.02


def test_judge_grid_deterministic_rows_are_zero_or_one():
    model = _Margin(0.0)
    x = torch.rand(30, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    y = torch.ones(30, dtype=torch.long)
    got = judge_grid(model, 0.0, x, y, ["hard", "soft"], [1, 8], torch.Generator(), draws=64, subsets=16)
    expected = (model(x).argmax(1) == y).double()
    for v in got.values():
        assert torch.equal(v.double(), expected)


def test_probability_rows_aggregate_to_the_mean_of_the_per_example_minimum():
    """Two attacks judged with 4 subsets: the worst case is mean_i min(clean_i, a_i, b_i)."""
    clean, a, b = (
        torch.tensor([1.0, 1.0, 0.5, 0.0]),
        torch.tensor([0.75, 0.25, 1.0, 0.0]),
        torch.tensor([1.0, 0.5, 0.25, 0.0]),
    )
    rows = [
        {
            "model": "m",
            "setting": "smoothed",
            "sigma": 0.1,
            "run": 0,
            "attack": name,
            "n": 4,
            "judgements": 4,
            "correct": {"hard@8": encode_correct(v, 4)},
        }
        for name, v in (("clean", clean), ("apgd-ce", a), ("pgd", b))
    ]
    assert np.allclose(correct_fraction(rows[1], "hard@8"), a.numpy())
    (row,) = aggregate(rows)
    assert row["worst"][0] == pytest.approx((0.75 + 0.25 + 0.25 + 0.0) / 4)
    assert row["paper"][0] == pytest.approx((1.0 + 0.5 + 0.25 + 0.0) / 4)  # pgd is the paper's
    assert row["attacks"]["apgd-ce"][0] == pytest.approx((0.75 + 0.25 + 0.5) / 4)


def test_cross_check_tables_count_what_only_that_attack_found():
    """AutoAttack's count excludes Square's finds (Square runs after it); Square's counts what
    every attack before it left robust: expected counts with probability rows."""
    a, aa, sq = torch.tensor([1.0, 1.0, 0.5, 1.0]), torch.tensor([1.0, 0.0, 0.5, 1.0]), torch.zeros(4)
    budgets = {"apgd-ce": "APGD()", "autoattack": "AutoAttackAdapter(version='standard')"}
    budgets["square"] = "AutoAttackAdapter(version='custom', attacks=['square'], square_queries=50)"
    rows = [
        {
            "model": "m",
            "setting": "base",
            "sigma": 0.0,
            "run": 0,
            "attack": name,
            "n": 4,
            "judgements": 2,
            "budget": budgets[name],
            "correct": {"none@1": encode_correct(v, 2)},
        }
        for name, v in (("apgd-ce", a), ("autoattack", aa), ("square", sq))
    ]
    study = load_study(STUDY / "configs")
    study.autoattack_examples = 2
    aa_line = [line for line in autoattack_lines(rows, study) if line.startswith("| m |")]
    assert aa_line == ["| m | base | 0.0 | 0 | standard | 2.0 of 2 | 1.0 |"]  # its subset: the first 2
    sq_text = square_lines(rows, study)
    assert "| m | base | 0.0 | 0 | 50 queries | 2.5 of 4 | 2.5 |" in sq_text  # min(apgd-ce, AutoAttack)
    assert "it found at least half an image more on 1 of 1 rows" in " ".join(sq_text)
    assert "on m base (-62.5 points) (see" in masking_lines(rows)[0]  # 2.5 of its 4 images
    rows[2]["correct"]["none@1"] = encode_correct(torch.tensor([1.0, 0.0, 0.5, 1.0]), 2)  # found none
    assert masking_lines(rows) == []


STUDY_YAML = """
models: [plain, noisy]
noise_models: [noisy]
finetunes: [tuned]
transfer_source: source
data: synthetic
eps: 0.1
examples: 6
runs: 2
sigmas: [0.0, 0.2]
ms: [1, 2]
votes: [hard, soft]
apgd_steps: 2
draws: 2
paper_steps: 1
transfer_steps: 2
convergence_examples: 4
convergence_scales: [1, 2]
compute_pairs: [[1, 2]]
square_queries: 4
grid_square_queries: 4
grid_square_queries_randomised: 2
autoattack_examples: 3
headline_scales: [1, 2]
plateau_steps: 3
plateau_draws: 2
plateau_examples: 4
judging_m: 4
judgements: 2
cert_sigmas: [0.25]
cert_examples: 4
cert_n0: 4
cert_n: 16
batch_size: 4
"""
MODEL = """
data: synthetic
model: {model}
objective: {objective}
eps: 0.1
attack_steps: 1
epochs: 1
max_train_examples: 64
eval_examples: 16
eval_pgd_steps: 1
batch_size: 32
seed: {seed}
"""


def _write_study(folder: Path) -> None:
    folder.mkdir()
    (folder / "study.yaml").write_text(STUDY_YAML)
    (folder / "plain.yaml").write_text(MODEL.format(model="mnist_cnn_small", objective="adversarial", seed=0))
    (folder / "noisy.yaml").write_text(
        MODEL.format(model="mnist_cnn_small", objective="adversarial", seed=0) + "noise: pni-w\n"
    )
    (folder / "source.yaml").write_text(MODEL.format(model="mnist_cnn_small", objective="standard", seed=3))
    (folder / "tuned.yaml").write_text(
        MODEL.format(model="mnist_cnn_small", objective="cni-iw", seed=0)
        + 'init: "@best_noise"\nsigma: 0.2\n'
    )


def test_pipeline_runs_skips_and_resumes(tmp_path):
    """A tiny study on synthetic data: all stages write their files; a rerun trains nothing; a
    torn evaluation resumes to the same rows; a changed config retrains that model and its
    dependants only."""
    configs, out = tmp_path / "configs", tmp_path / "out"
    _write_study(configs)
    logs: list[str] = []
    page = run_study(out, configs, log=logs.append)
    assert page.exists()
    assert (
        out / "started.json"
    ).exists() and "Wall time of the whole study on this machine" in page.read_text()
    for name in ("plain", "noisy", "tuned"):
        assert (out / "eval" / f"{name}.jsonl").exists() and (out / "certify" / f"{name}.json").exists()
    assert json.loads((out / "selection.json").read_text())["best_noise"] == "noisy"
    rows = [json.loads(line) for line in (out / "eval" / "plain.jsonl").read_text().splitlines()]
    attacks = {r["attack"] for r in rows if r["setting"] == "smoothed"}
    assert {"clean", "pgd", "apgd-ce", "apgd-dlr", "epgd", "pgd-km", "transfer", "square"} <= attacks
    squares = {(r["setting"], r["budget"].split("queries=")[1]) for r in rows if r["attack"] == "square"}
    assert squares == {("base", "4)"), ("smoothed", "2)")}  # deterministic model; smoothed: randomised
    for r in rows:  # Square on every image and run of a deterministic row, else AutoAttack's subset
        if r["attack"] in ("square", "autoattack"):
            assert r["subset"] == (6 if r["attack"] == "square" and r["setting"] == "base" else 3)
            assert r["run"] == 0 or (r["attack"], r["setting"]) == ("square", "base")
    assert {r["sigma"] for r in rows if r["setting"] == "smoothed"} == {
        0.2
    }  # sigma 0 = base for a plain model
    noisy = [json.loads(line) for line in (out / "eval" / "noisy.jsonl").read_text().splitlines()]
    assert {r["sigma"] for r in noisy if r["setting"] == "smoothed"} == {0.0, 0.2}  # weight noise votes at 0
    transfer = [r for r in rows if r["attack"] == "transfer" and r["run"] == 0]
    assert [r["transfer_reused"] for r in transfer] == [False, True]  # crafted once per run
    for r in rows:  # judged with every vote x m (smoothed) or the base model alone
        keys = {"none@1"} if r["setting"] == "base" else {"hard@1", "hard@2", "soft@1", "soft@2"}
        assert set(r["correct"]) == keys
    conv = [json.loads(line) for line in (out / "convergence.jsonl").read_text().splitlines()]
    assert {(r["kind"], r["attack"]) for r in conv} >= {("convergence", "apgd-ce"), ("compute", "pgd-km")}
    square = [json.loads(line) for line in (out / "blackbox.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["attack"], r["queries"]) for r in square] == [("blackbox", "square", 4)]

    # the adaptive attacks ran as a cascade: only on images some vote@m still got right, and the
    # images they skipped are stored as lost under every vote@m
    for rows_ in (rows, noisy):
        by_setting: dict = {}
        for r in rows_:
            by_setting.setdefault((r["run"], r["setting"], r["sigma"]), []).append(r)
        for group in by_setting.values():
            names = [r["attack"] for r in group]
            assert names.index("apgd-ce") > max(names.index(a) for a in names if a not in CASCADED)
            alive = None
            for r in group:
                ok = np.stack([correct_fraction(r, k) for k in r["correct"]]) > 0
                if r["attack"] in CASCADED:
                    assert r["cascaded"] and r["attacked"] == int(alive.any(0).sum())
                    assert not (ok & ~alive.any(0)).any()
                alive = ok if alive is None else alive & ok

    # the headline ladder: both headline rows (and the best input-noise row when the headline is
    # a weight-noise vote), every run; the doubling check (x2) on run 0 of the headline rows only;
    # each ladder attack cascaded on the survivors of the grid's attacks and the earlier levels
    from paper_mnist.pipeline import headline_rows

    checked = dict(headline_rows(out, load_study(configs)))
    assert list(checked.values())[:2] == [True, True] and len(checked) in (2, 3, 4)
    ladder = {
        p.name: [json.loads(line) for line in p.read_text().splitlines()]
        for p in (out / "headline").iterdir()
    }
    assert len(ladder) == 2 * len(checked)
    for rows_ in ladder.values():
        model, run, setting, sigma = (rows_[0][k] for k in ("model", "run", "setting", "sigma"))
        names = [r["attack"] for r in rows_]
        check = checked[(model, setting, sigma)] and run == 0
        assert names[-1] == ("apgd-dlr@x2" if check else "autoattack") and "apgd-ce@x1" in names
        assert all(r["cascaded"] for r in rows_)
        grid = [json.loads(line) for line in (out / "eval" / f"{model}.jsonl").read_text().splitlines()]
        alive = None
        for r in [g for g in grid if (g["run"], g["setting"], g["sigma"]) == (run, setting, sigma)] + rows_:
            ok = np.stack([correct_fraction(r, k) for k in r["correct"]]) > 0
            if r in rows_:
                assert r["attacked"] == int(alive.any(0).sum()) and not (ok & ~alive.any(0)).any()
            alive = ok if alive is None else alive & ok
    assert "## The headline under stronger attacks" in page.read_text()

    # the plateau stage: every model's best smoothed row (sigma > 0) and its base, every run, on
    # the first plateau_examples images, cascaded after the grid's and the headline's attacks
    from paper_mnist.pipeline import plateau_rows

    wanted = plateau_rows(out, load_study(configs))
    assert {(m, st) for m, st, _ in wanted} == {
        (m, st) for m in ("plain", "noisy", "tuned") for st in ("base", "smoothed")
    }
    assert all(sg > 0 for _, st, sg in wanted if st == "smoothed")
    for model, setting, sigma in wanted:
        earlier = [json.loads(line) for line in (out / "eval" / f"{model}.jsonl").read_text().splitlines()]
        for p in (out / "headline").glob(f"{model}-{setting}-{sigma}-*.jsonl"):
            earlier += [json.loads(line) for line in p.read_text().splitlines()]
        for run in (0, 1):
            rows_ = [
                json.loads(line)
                for line in (out / "plateau" / f"{model}-{setting}-{sigma}-run{run}.jsonl")
                .read_text()
                .splitlines()
            ]
            assert [r["attack"].split("@")[1] for r in rows_] == ["plateau", "plateau"]
            assert all(r["n"] == 4 and r["gradients"] in (3 * 2, 3, 3 * 9) for r in rows_)
            alive = None
            for r in [
                e for e in earlier if (e["run"], e["setting"], e["sigma"]) == (run, setting, sigma)
            ] + rows_:
                ok = np.stack([correct_fraction(r, k)[:4] for k in r["correct"]]) > 0
                if r in rows_:
                    assert r["attacked"] == int(alive.any(0).sum()) and not (ok & ~alive.any(0)).any()
                alive = ok if alive is None else alive & ok
    assert "## Claims 1, 3, 4 and 6 under a converged budget (first 4 images)" in page.read_text()

    # rerun: every step skipped, also by a parallel pass (steps in spawned processes)
    logs.clear()
    run_study(out, configs, log=logs.append)
    assert not any(line.startswith("[run ]") for line in logs), logs
    states = {p.name: p.read_text() for p in (out / "state").iterdir()}
    run_study(out, configs, log=logs.append, jobs=2)
    assert {p.name: p.read_text() for p in (out / "state").iterdir()} == states

    # torn evaluation: drop the last 3 rows and the done mark; the rerun recomputes them identically
    path = out / "eval" / "noisy.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-3]) + "\n")
    state = out / "state" / "eval__noisy.json"
    rec = json.loads(state.read_text())
    state.write_text(json.dumps({**rec, "status": "running"}))
    logs.clear()
    run_study(out, configs, log=logs.append)
    assert [line for line in logs if line.startswith("[run ]")] == ["[run ] eval/noisy"]
    redone = path.read_text().splitlines()

    def strip(line):
        r = json.loads(line)
        return {k: v for k, v in r.items() if not k.endswith("seconds") and k != "transfer_reused"}

    assert [strip(a) for a in redone] == [strip(b) for b in lines]

    # a changed Square budget: its rows alone are redone (last in the cascade), the old ones set aside
    study_yaml = configs / "study.yaml"
    study_yaml.write_text(study_yaml.read_text().replace("grid_square_queries: 4", "grid_square_queries: 3"))
    before = path.read_text().splitlines()
    logs.clear()
    run_study(out, configs, log=logs.append, stop_after="eval")
    after = path.read_text().splitlines()
    stale = path.with_suffix(".stale.jsonl")
    stale = stale.read_text().splitlines() if stale.exists() else []
    plain = [json.loads(line) for line in (out / "eval" / "plain.jsonl").read_text().splitlines()]
    plain_stale = (out / "eval" / "plain.stale.jsonl").read_text().splitlines()
    assert [strip(a) for a in after] == [strip(b) for b in before] and stale == []  # noisy: all randomised
    redone = [r for r in plain if r["attack"] == "square" and r["setting"] == "base"]
    assert len(redone) == 2 and all("square_queries=3" in r["budget"] for r in redone)
    assert len(plain_stale) == 2 and all("square_queries=4" in line for line in plain_stale)
    assert len(plain) == len(rows)
    study_yaml.write_text(study_yaml.read_text().replace("grid_square_queries: 3", "grid_square_queries: 4"))

    # a changed config: that model, the selection input, the fine-tuning and their evaluations rerun
    (configs / "noisy.yaml").write_text((configs / "noisy.yaml").read_text().replace("seed: 0", "seed: 1"))
    logs.clear()
    run_study(out, configs, log=logs.append, stop_after="train")
    ran = {line.split()[-1] for line in logs if line.startswith("[run ]")}
    assert ran == {"train/noisy", "select", "train/tuned"}, logs


def _eval_rows(model: str, base_ok: list[int], smooth_ok: list[int], paper_ok: list[int]) -> list[dict]:
    """Rows for one model: base (pgd + apgd) and smoothed sigma 0.1 hard@1 (pgd-km + apgd-ce)."""
    import numpy as np

    def bits(v):
        return np.packbits(np.array(v, dtype=bool)).tobytes().hex()

    common = {"model": model, "run": 0, "n": len(base_ok), "eps": 0.3}
    all_ok = bits([1] * len(base_ok))
    return [
        {**common, "setting": "base", "sigma": 0.0, "attack": "clean", "correct": {"none@1": all_ok}},
        {**common, "setting": "base", "sigma": 0.0, "attack": "pgd", "correct": {"none@1": bits(base_ok)}},
        {**common, "setting": "smoothed", "sigma": 0.1, "attack": "clean", "correct": {"hard@1": all_ok}},
        {
            **common,
            "setting": "smoothed",
            "sigma": 0.1,
            "attack": "pgd-km",
            "correct": {"hard@1": bits(paper_ok)},
        },
        {
            **common,
            "setting": "smoothed",
            "sigma": 0.1,
            "attack": "apgd-ce",
            "correct": {"hard@1": bits(smooth_ok)},
        },
    ]


@pytest.mark.parametrize(
    "smooth_ok,paper_ok,verdict",
    [
        ([1] * 8 + [0] * 2, [1] * 10, "holds"),  # base 50% -> smoothed 80% worst case
        ([1] * 3 + [0] * 7, [1] * 10, "holds only under the paper's attack"),  # 30% adaptive, 100% paper
        ([1] * 3 + [0] * 7, [1] * 3 + [0] * 7, "does not hold"),
    ],
)
def test_claim1_verdict_rule(smooth_ok, paper_ok, verdict):
    table = aggregate(_eval_rows("m", [1] * 5 + [0] * 5, smooth_ok, paper_ok))
    smoothed = [r for r in table if r["setting"] == "smoothed"][0]
    assert smoothed["worst"][0] == pytest.approx(min(sum(smooth_ok), sum(paper_ok)) / 10)
    assert smoothed["paper"][0] == pytest.approx(sum(paper_ok) / 10)  # apgd-ce is not the paper's
    assert claim1(table)[0] == verdict


def test_claim3_not_measurable_with_one_m():
    from paper_mnist.pipeline import StudyConfig

    table = aggregate(_eval_rows("m", [1] * 10, [1] * 10, [1] * 10))
    assert claim3(table, StudyConfig(models=["m"], ms=[1]))[0] == "not measurable here"


def test_unbits_roundtrip():
    import numpy as np

    v = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1], dtype=bool)
    assert (unbits(np.packbits(v).tobytes().hex(), 11) == v).all()


def test_report_marks_quick_runs(tmp_path):
    from dataclasses import asdict

    from paper_mnist.pipeline import StudyConfig

    (tmp_path / "study.json").write_text(json.dumps(asdict(StudyConfig(models=["m"], quick=True))))
    page = build_page(tmp_path)
    assert "QUICK RUN" in page and page.count("not measurable here") >= 7


def test_quick_study_end_to_end_cli(tmp_path):
    """`python studies/paper_mnist/run.py --quick` on the real configs, in the default suite (about
    2 min on 2 cores): every stage, all seven claims on the page, and --report-only rebuilds it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "paper"
    cmd = [
        sys.executable,
        str(STUDY / "run.py"),
        "--quick",
        "--out",
        str(out),
        "--configs",
        str(STUDY / "configs"),
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (out / "paper-reproduction.md").read_text()
    assert "QUICK RUN" in page
    machine = f"{os.cpu_count()} CPU cores"
    assert [p["machine"] for p in map(json.loads, (out / "passes.jsonl").read_text().splitlines())] == [
        machine
    ]
    assert f"the machine that ran them ({machine})" in page
    assert "logits / T for T = 0.25, 0.5 in turn" in page  # both tempered plateau attacks ran
    for claim in range(1, 8):
        assert f"## Claim {claim}." in page
    assert "## Longer training: pni_w_pgd_at at 2 epochs" in page  # the stage ran last
    assert len((out / "long" / "eval" / "pni_w_pgd_at.jsonl").read_text().splitlines()) == 6
    proc = subprocess.run(cmd + ["--report-only"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and (out / "paper-reproduction.md").read_text() == page


def test_best_noise_selection_skips_collapsed_models():
    from paper_mnist.pipeline import select_best_noise

    # "c" predicts one class: high val PGD, clean far below the others
    assert select_best_noise({"a": (0.60, 0.95), "b": (0.70, 0.90), "c": (0.11, 0.11)}) == "b"
    assert select_best_noise({"a": (0.60, 0.95), "b": (0.70, 0.80), "c": (0.10, 0.11)}) == "a"


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    from paper_mnist.run import main

    assert main(["--report-only", "--out", str(tmp_path / "none")]) == 2
    assert main(["--configs", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert main(["--quick", "--profile", "gpu", "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "no study" in err[0] and "study.yaml not found" in err[1]
    assert "exclude each other" in err[2]
    assert not (tmp_path / "o").exists() and not (tmp_path / "q").exists()
    with pytest.raises(SystemExit):
        main(["--profile", "cpu"])
    assert "invalid choice: 'cpu'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text,words",
    [
        ("- pgd_at\n- trades\n", "must be a mapping of study settings, not list"),
        ("models: [pgd_at]\nruns: two\n", "runs must be an integer, got 'two'"),
        ('models: [pgd_at]\nsigmas: "0.1"\n', "sigmas must be"),
        ("models: [pgd_at\nruns: 2\n", "not valid YAML"),
        ("models: [pgd_at]\nquick: {runs: two}\n", "runs must be an integer, got 'two'"),
        ("models: [pgd_at]\njudge_subsets: 4\njudgements: 4\n", "give judgements only"),
    ],
)
def test_a_bad_study_config_is_one_line_exit_2(tmp_path, capsys, text, words):
    """Issue 43: a study.yaml that is a list, has a value of the wrong type or is not YAML at all is
    a one-line error (exit 2) before anything is written, never a traceback or a silent default."""
    from paper_mnist.run import main

    (tmp_path / "study.yaml").write_text(text)
    assert main(["--configs", str(tmp_path), "--out", str(tmp_path / "out"), "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["{}", "[]", "not json", '{"models": ["m"], "colour": 1}'])
def test_report_only_refuses_a_study_json_that_holds_no_study(tmp_path, capsys, text):
    from paper_mnist.run import main

    (tmp_path / "study.json").write_text(text)
    assert main(["--report-only", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study.json" in err[0], err


def test_out_and_doc_of_the_wrong_kind_are_one_line(tmp_path, capsys):
    from paper_mnist.run import main

    (tmp_path / "file").write_text("")
    assert main(["--report-only", "--out", str(tmp_path / "file")]) == 2
    assert main(["--report-only", "--out", str(tmp_path / "x"), "--doc", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "is a file" in err[0] and "is a folder" in err[1], err


def test_former_spellings_of_the_judging_counts_are_still_read(tmp_path):
    """Records and study.json written before the rename hold judge_subsets / judge_draws."""
    from dataclasses import asdict

    from paper_mnist.study import StudyConfig, study_from_json

    p = torch.tensor([1.0, 0.25, 0.5])
    new = {"n": 3, "judgements": 4, "correct": {"hard@1": encode_correct(p, 4)}}
    old = {"n": 3, "judge_subsets": 4, "correct": new["correct"]}
    assert np.array_equal(correct_fraction(old, "hard@1"), correct_fraction(new, "hard@1"))
    raw = asdict(StudyConfig(models=["m"], judging_m=64, judgements=8))
    raw["judge_draws"], raw["judge_subsets"] = raw.pop("judging_m"), raw.pop("judgements")
    (tmp_path / "study.json").write_text(json.dumps(raw))
    study = study_from_json(tmp_path / "study.json")
    assert (study.judging_m, study.judgements) == (64, 8)


def _job(value: int, results: dict, log) -> int:
    """A step for ``_schedule``: its value plus its finished dependencies' results."""
    return value + sum(results.values())


def _failing_job(results: dict, log) -> int:
    raise ValueError("step failed")


@pytest.mark.parametrize("jobs", [1, 2])
def test_schedule_runs_steps_after_their_dependencies(jobs):
    tasks = {
        "c": (["a", "b"], _job, (100,)),  # listed first, runs last
        "a": ([], _job, (1,)),
        "b": (["a"], _job, (10,)),
    }
    results = _schedule(tasks, jobs, print)
    assert results["a"] == 1 and results["b"] == 11  # b saw a
    assert results["c"] == 100 + 1 + 11  # c saw a and b
    with pytest.raises(ValueError, match="step failed"):
        _schedule({"x": ([], _failing_job, ())}, jobs, print)
    with pytest.raises(ConfigError, match="never run"):
        _schedule({"y": (["missing"], _job, (1,))}, jobs, print)


def test_committed_page_is_rebuilt_from_the_committed_results(monkeypatch):
    """studies/paper_mnist/paper-reproduction.md is exactly what the report makes of the study's
    results: no number on the page that the committed results files do not hold."""
    monkeypatch.chdir(ROOT)
    page = build_page("studies/paper_mnist/results")
    assert page == (STUDY / "paper-reproduction.md").read_text()
    assert "QUICK RUN" not in page and "## Claim 7." in page


def test_headline_ladder_levels_are_cumulative_and_the_check_is_reported():
    """Synthetic grid and ladder rows with known per-image bits: each level's accuracy is the
    per-image worst case so far; the reported level is the one before the doubling check; the
    check's and AutoAttack's increments are what they removed."""
    from paper_mnist.report import (
        headline_ladder,
        headline_ladder_lines,
        headline_ladder_summary,
    )
    from paper_mnist.study import StudyConfig

    def bits(ok):
        return np.packbits(np.array(ok, dtype=bool)).tobytes().hex()

    def row(setting, run, attack, ok):
        key = "soft@8" if setting == "smoothed" else "none@1"
        sigma = 0.0
        return {
            "model": "m",
            "setting": setting,
            "sigma": sigma,
            "run": run,
            "attack": attack,
            "n": 10,
            "correct": {key: bits(ok)},
        }

    first = lambda k: [1] * k + [0] * (10 - k)  # noqa: E731
    grid = [row(s, r, "clean", [1] * 10) for s in ("smoothed", "base") for r in (0, 1)]
    grid += [row("smoothed", r, "apgd-ce", first(8)) for r in (0, 1)]
    grid += [row("base", r, "apgd-ce", first(6)) for r in (0, 1)]
    ladder = [
        row("smoothed", 0, "apgd-ce@x2", first(7)),
        row("smoothed", 0, "autoattack", first(7)),
        row("smoothed", 0, "apgd-ce@x4", first(6)),  # the check finds one more: not converged
        row("smoothed", 1, "apgd-ce@x2", first(8)),
        row("smoothed", 1, "autoattack", first(6)),  # AutoAttack finds two more on run 1
        row("base", 0, "apgd-ce@x2", first(6)),
        row("base", 0, "autoattack", first(6)),
        row("base", 0, "apgd-ce@x4", first(6)),
    ]
    best = {"model": "m", "key": "soft@8", "sigma": 0.0}
    lad = headline_ladder({"rows": grid, "headline": ladder}, best)
    assert lad["levels"] == ["grid", "x2", "autoattack", "x4"] and lad["check"] == "x4"
    assert lad["acc"]["smoothed"][0] == pytest.approx({"grid": 0.8, "x2": 0.7, "autoattack": 0.7, "x4": 0.6})
    assert lad["acc"]["smoothed"][1] == pytest.approx({"grid": 0.8, "x2": 0.8, "autoattack": 0.6})
    summ = headline_ladder_summary(lad)
    assert summ["smoothed"][0] == pytest.approx(0.65) and summ["base"][0] == pytest.approx(0.6)
    assert summ["delta"] == pytest.approx({"smoothed": 0.1, "base": 0.0})
    assert summ["aa"] == pytest.approx({"smoothed": 0.2, "base": 0.0})
    only = headline_ladder({"rows": grid, "headline": ladder}, best, settings=("smoothed",))
    assert list(only["acc"]) == ["smoothed"] and only["acc"]["smoothed"] == lad["acc"]["smoothed"]
    text = "\n".join(headline_ladder_lines(lad, best, StudyConfig(models=["m"], apgd_steps=50, draws=8)))
    assert "+ APGD-CE/DLR 200 x 32 (the doubling check)" in text and "NOT converged" in text


@pytest.mark.parametrize("sigma", [None, 0.0, 0.1])
def test_headline_ladder_attacks_scale_the_grid_budget(sigma):
    """The ladder's APGD attacks are the grid's at k x the steps and k x the draws; AutoAttack
    comes after the lower levels (rand on a randomised row); the largest scale only with check."""
    from paper_mnist.pipeline import AutoAttackAdapter, StudyConfig, headline_attacks

    model = _tiny_model("pni-w")
    study = StudyConfig(models=["m"], apgd_steps=5, draws=3, ms=[1, 4], headline_scales=[2, 4])
    checked = headline_attacks(model, study, sigma, check=True)
    assert list(checked) == ["apgd-ce@x2", "apgd-dlr@x2", "autoattack", "apgd-ce@x4", "apgd-dlr@x4"]
    assert list(headline_attacks(model, study, sigma, check=False)) == list(checked)[:3]
    for name, attack in checked.items():
        if name.startswith("apgd"):
            k = int(name.split("@x")[1])
            assert (attack.steps, attack.m) == (5 * k, 3 * k)
    aa = checked["autoattack"]
    assert isinstance(aa, AutoAttackAdapter) and "rand" in repr(aa)


@pytest.mark.parametrize(
    "over",
    [
        {"headline_scales": 2},
        {"headline_scales": [0, 2]},
        {"headline_check_runs": -1},
        {"judgements": 300},
        {"judgements": 2.5},
        {"judging_m": 0},
        {"grid_square_queries": -1},
        {"grid_square_queries_randomised": 1.5},
        {"plateau_steps": -1},
        {"plateau_draws": 2.0},
    ],
)
def test_headline_ladder_and_judging_settings_are_checked(over):
    with pytest.raises(ConfigError, match=f"^{next(iter(over))} must be an integer|^headline_scales must"):
        load_study(STUDY / "configs", **over)


@pytest.mark.parametrize("over", [{"plateau_draws": 0}, {"plateau_examples": 0}, {"plateau_examples": 5000}])
def test_plateau_stage_needs_draws_and_examples_within_the_grid(over):
    with pytest.raises(ConfigError, match="^the plateau stage needs"):
        load_study(STUDY / "configs", **over)


@pytest.mark.parametrize("sigma", [None, 0.1])
def test_plateau_attacks_use_the_plateau_budget(sigma):
    """The plateau stage's APGD attacks run plateau_steps x plateau_draws whatever the grid's budget."""
    from paper_mnist.pipeline import StudyConfig, plateau_attacks

    from smoothinf.attacks import is_randomised

    study = StudyConfig(models=["m"], apgd_steps=5, draws=3, plateau_steps=7, plateau_draws=4)
    attacks = plateau_attacks(_tiny_model("pni-w"), study, sigma)
    assert list(attacks) == ["apgd-ce@plateau", "apgd-dlr@plateau"]
    assert all((a.steps, a.m, a.restarts) == (7, 4, 1) for a in attacks.values())
    study.plateau_restarts = 3
    assert all(a.restarts == 3 for a in plateau_attacks(_tiny_model("pni-w"), study, sigma).values())
    assert all(a.restarts == 3 for a in plateau_attacks(_tiny_model(), study, None).values())
    study.plateau_temperature = 0.25  # a third attack: tempered APGD-CE, same budget and restarts
    for model, sigma_ in ((_tiny_model("pni-w"), sigma), (_tiny_model(), None)):
        attacks = plateau_attacks(model, study, sigma_)
        tempered = attacks["apgd-ce-t@plateau"]
        assert list(attacks)[-1] == "apgd-ce-t@plateau" and len(attacks) == 3
        assert (tempered.temperature, tempered.reduce, tempered.steps, tempered.m) == (
            0.25,
            "softmax",
            7,
            4 if sigma_ or is_randomised(model) else 1,
        )
        assert tempered.restarts == 3 and "temperature=0.25" in repr(tempered)
        assert all(a.temperature == 1.0 for name, a in attacks.items() if name != "apgd-ce-t@plateau")
    study.plateau_temperature = [0.5, 0.25, 1.5]  # one tempered attack per T, in order
    attacks = plateau_attacks(_tiny_model("pni-w"), study, sigma)
    tempered = ["apgd-ce-t@plateau", "apgd-ce-t0.25@plateau", "apgd-ce-t1.5@plateau"]
    assert list(attacks) == ["apgd-ce@plateau", "apgd-dlr@plateau", *tempered]
    assert [attacks[name].temperature for name in tempered] == [0.5, 0.25, 1.5]


def test_plateau_restarts_join_the_key_only_above_one(tmp_path):
    """Rows run before plateau_restarts existed keep their fingerprint at 1; 2 re-keys the stage."""
    from paper_mnist.pipeline import StudyConfig, _plateau_key

    study = StudyConfig(models=["m"], plateau_steps=7, plateau_draws=4, plateau_examples=5, examples=10)
    from smoothinf.models import save_checkpoint

    row, weights = ("m", "smoothed", 0.1), save_checkpoint(tmp_path / "w.safetensors", _tiny_model())
    one = _plateau_key(tmp_path, weights, row, 0, study)[0]
    study.plateau_restarts = 2
    two = _plateau_key(tmp_path, weights, row, 0, study)[0]
    study.plateau_restarts = 1
    assert _plateau_key(tmp_path, weights, row, 0, study)[0] == one != two
    with pytest.raises(ConfigError, match="^plateau_restarts must be an integer >= 1, not 0$"):
        StudyConfig(models=["m"], plateau_restarts=0).validate()
    for bad in (-1.0, float("nan"), float("inf"), True, "0.5", [0.5, 0.0], [0.5, 0.5], [0.5, "x"]):
        with pytest.raises(ConfigError, match="^plateau_temperature must be a number >= 0"):
            StudyConfig(models=["m"], plateau_temperature=bad).validate()
    for good, temperatures in ((0, []), (0.0, []), ([], []), (0.5, [0.5]), ([0.5, 0.25], [0.5, 0.25])):
        study = StudyConfig(models=["m"], plateau_temperature=good)
        study.validate()
        assert study.plateau_temperatures() == temperatures


def test_first_examples_keeps_the_first_n_of_either_encoding():
    from paper_mnist.report import first_examples
    from paper_mnist.study import encode_correct

    p = torch.tensor([0.0, 0.5, 1.0, 0.25, 0.75, 1.0, 0.0, 0.5, 1.0, 0.0, 1.0])
    for subsets in (0, 4):
        row = {"n": 11, "judgements": subsets, "correct": {"hard@1": encode_correct(p, subsets)}}
        cut = first_examples(row, 9)
        assert cut["n"] == 9 and row["n"] == 11
        np.testing.assert_allclose(correct_fraction(cut, "hard@1"), correct_fraction(row, "hard@1")[:9])


def test_plateau_tables_add_the_stage_to_the_worst_case_on_its_examples():
    """Synthetic grid, headline and plateau rows with known per-image bits: on the stage's first
    n images, 'grid' is the worst case over the earlier attacks (the headline's autoattack kept
    apart from the grid's) and 'converged' adds the stage's; a model the stage has not finished
    for every run is left out."""
    from paper_mnist.report import plateau_headline, plateau_tables
    from paper_mnist.study import StudyConfig

    def row(model, setting, run, attack, ok):
        key = "hard@8" if setting == "smoothed" else "none@1"
        return {
            "model": model,
            "setting": setting,
            "sigma": 0.1 if setting == "smoothed" else 0.0,
            "run": run,
            "attack": attack,
            "n": len(ok),
            "gradients": 12,
            "craft_seconds": 1.0,
            "judge_seconds": 0.5,
            "correct": {key: np.packbits(np.array(ok, dtype=bool)).tobytes().hex()},
        }

    first = lambda k, n=10: [1] * k + [0] * (n - k)  # noqa: E731
    rows, plateau = [], []
    for model in ("m", "late"):
        for run in (0, 1):
            for setting in ("base", "smoothed"):
                rows += [
                    row(model, setting, run, "clean", [1] * 10),
                    row(model, setting, run, "autoattack", first(5)),
                ]
    headline = [row("m", "smoothed", 0, "autoattack", [0, 1, 1, 1, 1, 1, 1, 1, 1, 1])]
    for run in (0, 1):  # on the first 4 images: smoothed 4 -> 2 / 3, base 4 -> 4
        plateau += [row("m", "smoothed", run, "apgd-ce@plateau", first(2 + run, 4))]
        plateau += [row("m", "base", run, "apgd-ce@plateau", first(4, 4))]
    plateau += [row("late", "smoothed", 0, "apgd-ce@plateau", first(0, 4))]  # run 1 not done yet
    res = {"rows": rows, "headline": headline, "plateau": plateau, "study": StudyConfig(models=["m"], runs=2)}
    pt = plateau_tables(res)
    assert pt["n"] == 4 and pt["measured"] == {("m", "smoothed"), ("m", "base")}
    assert {r["model"] for r in pt["grid"]} == {"m"} == {r["model"] for r in pt["converged"]}
    grid = {r["setting"]: r for r in pt["grid"]}
    conv = {r["setting"]: r for r in pt["converged"]}
    # grid, first 4: run 0 the headline's autoattack takes image 0 (3 of 4), run 1 none (4 of 4)
    assert grid["smoothed"]["worst"][0] == pytest.approx((0.75 + 1.0) / 2)
    assert conv["smoothed"]["worst"][0] == pytest.approx((0.25 + 0.75) / 2)  # run 0: image 0 and 2, 3
    assert grid["base"]["worst"][0] == pytest.approx(1.0) == conv["base"]["worst"][0]
    assert (
        "autoattack (headline)" in conv["smoothed"]["attacks"] and "autoattack" in conv["smoothed"]["attacks"]
    )
    assert pt["seconds"] == pytest.approx(1.5 * 5) and pt["gradients"] == 12
    assert plateau_tables({**res, "plateau": []}) is None
    line = plateau_headline(pt)[0]
    assert (
        "first 4 images" in line
        and "m, hard@8, sigma 0.1: 50.0 ± 35.4 worst case (its base model: 100.0 ± 0.0)" in line
    )
    assert plateau_headline(None) == []


def test_cascaded_stage_names_are_checked(tmp_path):
    from paper_mnist.pipeline import StudyConfig, _cascade_job

    with pytest.raises(ConfigError, match="^unknown cascaded stage 'ladder'; choose headline or plateau$"):
        _cascade_job(
            tmp_path,
            "w.safetensors",
            ("m", "base", 0.0),
            0,
            StudyConfig(models=["m"]),
            "ladder",
            False,
            {},
            print,
        )


def test_min_estimate_bias_matches_the_exact_expected_minimum():
    """A examples' worth of A identical estimates p = 0.5 from 32 judgements: the expected minimum of
    A Binomial(32, 0.5) / 32 is sum_k P(X >= k)^A / 32; exact estimates (0/1) carry no bias."""
    s, a = 32, 4
    tail = [sum(math.comb(s, j) for j in range(k, s + 1)) / 2**s for k in range(1, s + 1)]
    exact = sum(t**a for t in tail) / s - 0.5
    rng = np.random.default_rng(0)
    got = min_estimate_bias(np.full((a, 200), 0.5), s, rng, draws=500)
    assert exact < -0.08  # about -0.093: four estimates of a coin undershoot it by 9 points
    assert got == pytest.approx(exact, abs=0.004)
    assert min_estimate_bias(np.full((1, 200), 0.5), s, rng) == pytest.approx(0.0, abs=0.004)
    exact_rows = rng.integers(0, 2, size=(5, 50)).astype(float)
    assert min_estimate_bias(exact_rows, [1, 32, 32, 8, 1], rng) == 0.0
    with pytest.raises(ValueError, match="attacks, examples"):
        min_estimate_bias(np.ones(5), s, rng)
    with pytest.raises(ValueError, match=">= 1"):
        min_estimate_bias(np.ones((2, 5)), 0, rng)


def test_worst_case_noise_of_a_row_averages_its_runs_and_ignores_other_rows():
    """Four attacks each estimating P(correct) = 0.5 from 32 judgements on every image of a row: the
    worst case's undershoot is the exact -0.093 of four coin estimates (see above); rows judged
    once with 0/1 results, other keys and other rows add nothing."""
    from paper_mnist.report import worst_case_noise

    def row(run, attack, p, subsets=32, key="hard@8", model="m"):
        frac = torch.full((300,), p)
        return {
            "model": model,
            "setting": "smoothed",
            "sigma": 0.1,
            "run": run,
            "attack": attack,
            "n": 300,
            "judgements": subsets,
            "correct": {key: encode_correct(frac, subsets)},
        }

    rows = [row(run, a, 0.5) for run in (0, 1) for a in ("apgd-ce", "apgd-dlr", "square", "pgd")]
    rows += [row(0, "clean", 1.0, subsets=0), row(0, "other", 0.0, key="hard@1"), row(0, "x", 0.0, model="z")]
    assert worst_case_noise(rows, "m", "smoothed", 0.1, "hard@8") == pytest.approx(-0.0929, abs=0.004)
    assert worst_case_noise(rows, "m", "smoothed", 0.1, "soft@8") == 0.0
    exact = [row(r, a, 1.0, subsets=0) for r in (0, 1) for a in ("clean", "apgd-ce")]
    assert worst_case_noise(exact, "m", "smoothed", 0.1, "hard@8") == 0.0


@pytest.mark.parametrize("discard", [True, False])
def test_a_step_that_keeps_its_outputs_keeps_their_time(tmp_path, discard):
    """A step redone under a new fingerprint: when it keeps and extends its outputs (discard False,
    the cascaded stages) the earlier attempt's seconds carry on; when it discards them they do not."""
    from smoothinf.evaluation.steps import StepState, run_step

    out, logs = tmp_path, []
    state = StepState(out, "plateau/row", "old")
    state.begin()
    state.finish()
    record = json.loads(state.path.read_text())
    state.path.write_text(json.dumps({**record, "seconds": 100.0}))
    output = tmp_path / "rows.jsonl"
    output.write_text("{}\n")
    assert run_step(out, "plateau/row", "new", [output], lambda: None, logs.append, discard=discard)
    seconds = json.loads(state.path.read_text())["seconds"]
    assert (100.0 <= seconds < 105.0) if not discard else seconds < 5.0
    assert output.exists() != discard and any(line.startswith("[redo]") for line in logs)
