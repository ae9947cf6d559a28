"""The study's longer-training stage: its config checks, its resume keyed by the weights' tensor
digest, and its section of the page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from paper_mnist import run_study
from paper_mnist.long_training import load_long, long_lines, results_path
from paper_mnist.study import load_study

from smoothinf.errors import ConfigError
from smoothinf.evaluation.report import aggregate
from smoothinf.evaluation.results import fingerprint_of, read_jsonl
from smoothinf.evaluation.steps import checkpoint_digest, torch_threads
from smoothinf.models import read_sidecar

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "studies" / "paper_mnist"
CONFIGS = STUDY / "configs"
PNI = "pni_w_pgd_at"
CPU_THREADS = torch.get_num_threads()
# the stage's evaluation at its smallest: 4 images, one run, 2-step PGD, no cross-checks
TINY_EVALUATE = {"attacks": ["pgd"], "max_examples": 4, "runs": 1, "ms": [2], "steps": 2, "check_examples": 0}


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"models": {"nope": {}}}, r"long_training.models names nope, not among the study's models"),
        ({"models": {PNI: {"eps": [0.1]}}}, r"models\['pni_w_pgd_at'\]: eps is not an EvalConfig field"),
        ({"models": {PNI: {"votes": ["majority"]}}}, "model pni_w_pgd_at: unknown vote 'majority'"),
        ({"models": {PNI: {}}, "evaluate": {"runs": 0}}, "model pni_w_pgd_at: m, runs, steps"),
        ({"models": {PNI: {}}, "train": {"epoch": 3}}, "long_training.train: epoch is not a TrainConfig"),
        ({"models": {PNI: {}}, "train": {"epochs": "ten"}}, "epochs must be an integer"),
        ({"models": {PNI: {}}, "extra": 1}, "long_training may only set models, train and evaluate"),
        ({"models": []}, "long_training.models must map model names"),
        (
            {"models": {PNI: {"train": {"epoch": 3}}}},
            r"models\['pni_w_pgd_at'\].train: epoch is not a TrainConfig",
        ),
        ({"models": {PNI: {"train": [1]}}}, r"models\['pni_w_pgd_at'\].train must be a mapping"),
        ({"models": {PNI: {"extend": [1]}}}, "model pni_w_pgd_at: extend must be a mapping of examples"),
        (
            {"models": {PNI: {"extend": {"examples": 100}}}, "evaluate": {"max_examples": 100}},
            r"extend.examples must be an integer above max_examples \(100\), got 100",
        ),
        (
            {"models": {PNI: {"sigmas": [0.1], "extend": {"examples": 300, "sigmas": [0.2]}}}},
            r"extend.sigmas names 0.2, not one of the model's sigmas \[0.1\]",
        ),
        ({"models": {PNI: {"first_example": 100}}}, "first_example is not an EvalConfig field the stage"),
    ],
)
def test_long_training_config_is_checked(block, message):
    with pytest.raises(ConfigError, match=message):
        load_study(CONFIGS, long_training=block)


def test_committed_long_stage_matches_evaluates_defaults():
    """The committed stage evaluates at `smoothinf evaluate`'s converged budget on the study's data."""
    study = load_study(CONFIGS)
    long = study.long()
    assert set(long.models) <= set(study.models) and long.train == {"epochs": 30, "milestones": [25]}
    cfg = long.eval_config(PNI, "ckpt", study)
    assert (cfg.apgd_steps, cfg.attack_m, cfg.check_examples, cfg.runs) == (200, 64, 100, 3)
    assert cfg.eps == [study.eps] and cfg.data == study.data and cfg.seed == study.seed
    assert load_study(CONFIGS, profile="gpu").long() is None  # the GPU profile trains long already


def test_committed_long_models_record_how_to_train_them_again():
    """A fresh clone retrains each long model on its recorded threads and checks the result against
    the recorded digest. The committed states and records predate tensor digests: both hold the
    checkpoint file's sha256, under names that say so (``weights_file_sha256`` in the state,
    the identity's ``weights_sha256``), and it must be the one every record of the model is keyed on."""
    study = load_study(CONFIGS)
    long = study.long()
    results = STUDY / "results"
    for name in long.models:
        state = json.loads((results / "state" / f"long__train__{name}.json").read_text())
        assert state["status"] == "done" and state["threads"] in (1, 2), name
        starts = [0, *long.slice_starts(name, study)]  # its first images and every slice of extend
        records = [r for start in starts for r in read_jsonl(results_path(results, name, start))]
        assert len(records) >= 6 * len(starts), name  # base and smoothed rows of 3 runs per slice
        assert "weights_digest" not in state and "weights_sha256" not in state, name
        assert {r["identity"]["weights_sha256"] for r in records} == {state["weights_file_sha256"]}, name


def test_only_long_needs_the_stage(tmp_path):
    (tmp_path / "study.yaml").write_text("models: [a]\n")
    with pytest.raises(ConfigError, match="gives no long_training stage"):
        run_study(tmp_path / "out", tmp_path, only="long")
    with pytest.raises(ConfigError, match="only must be 'long'"):
        run_study(tmp_path / "out", tmp_path, only="certify")
    with pytest.raises(ConfigError, match="only and stop_after exclude each other"):
        run_study(tmp_path / "out", tmp_path, only="long", stop_after="eval")
    assert not (tmp_path / "out").exists()  # refused before anything is written
    with pytest.raises(
        ConfigError,
        match=r"cni_w_pgd_at starts from another step's checkpoint \(init '@pgd_at'\), which the stage "
        "does not train: list pgd_at in long_training.models too",
    ):
        run_study(
            tmp_path / "out", CONFIGS, quick=True, only="long", long_training={"models": {"cni_w_pgd_at": {}}}
        )
    assert not (tmp_path / "out").exists()


def test_a_cycle_of_starts_is_refused_before_anything_is_written(tmp_path):
    import shutil

    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    pgd_at = yaml.safe_load((configs / "pgd_at.yaml").read_text())
    (configs / "pgd_at.yaml").write_text(yaml.safe_dump({**pgd_at, "init": "@cni_w_pgd_at"}))
    block = {"models": {"pgd_at": {}, "cni_w_pgd_at": {}}}
    with pytest.raises(
        ConfigError, match="pgd_at -> cni_w_pgd_at -> pgd_at start from one another in a cycle"
    ):
        run_study(tmp_path / "out", configs, quick=True, only="long", long_training=block)
    assert not (tmp_path / "out").exists()


def test_long_stage_runs_resumes_and_sets_aside_records_of_other_weights(tmp_path):
    """The quick profile's stage alone: it trains, evaluates every run and setting, and the page's
    section shows the records' numbers; a rerun skips both steps; a results file whose records were
    made with other weights is set aside (kept, never mixed in) and the stage evaluates again."""
    out = tmp_path / "out"
    logs: list[str] = []
    run_study(out, CONFIGS, quick=True, only="long", device="cpu", log=logs.append)
    study = load_study(CONFIGS, quick=True, device="cpu")
    cfg = study.long().eval_config(PNI, "-", study)
    path = results_path(out, PNI)
    records = read_jsonl(path)
    keys = {(r["run"], r["vote"], r["sigma"], r["m"]) for r in records}
    assert keys == {(run, v, s, m) for run in range(cfg.runs) for v, s, m in cfg.settings()}
    assert len(records) == len(keys) == 6
    digest = checkpoint_digest(out / "long" / "models" / PNI / "best.safetensors")
    assert {r["identity"]["weights_digest"] for r in records} == {digest}
    assert not any("weights_sha256" in r["identity"] for r in records)  # never the file's bytes
    assert {r["identity"]["data"]["examples"] for r in records} == {cfg.max_examples}
    for r in records:
        assert 0 <= r["worst_case"] <= r["clean"] and set(r["checks"]) >= {"autoattack", "blackbox"}

    # `extend`: the base model and sigma 0 on images 6-9 too, a slice of its own file and step
    assert study.long().slice_starts(PNI, study) == [6]
    more = read_jsonl(results_path(out, PNI, 6))
    assert {(r["run"], r["vote"], r["sigma"]) for r in more} == {
        (run, v, 0.0) for run in range(cfg.runs) for v in ("none", "hard")
    }
    assert {(r["config"]["first_example"], r["n"]) for r in more} == {(6, 4)}
    assert {r["identity"]["weights_digest"] for r in more} == {digest}

    page = (out / "paper-reproduction.md").read_text()
    assert "## Longer training: pni_w_pgd_at at 2 epochs" in page and "**After longer training**" in page
    rows = aggregate(records)
    hard = rows[("hard", 0.1, 2, 0.3)]["worst_case"]
    assert f"| {PNI} | hard sigma=0.1 m=2 | 6 | 2 | " in page
    assert f"**{100 * hard[0]:.1f} ± {100 * hard[1]:.1f}**" in page
    # the base row over both slices: per run the example-weighted mean of its two records
    merged = load_long(out, study)[PNI]["rows"][("none", 0.0, 1, 0.3)]
    per_run = [
        (6 * a["worst_case"] + 4 * b["worst_case"]) / 10
        for a, b in zip(
            sorted((r for r in records if r["vote"] == "none"), key=lambda r: r["run"]),
            sorted((r for r in more if r["vote"] == "none"), key=lambda r: r["run"]),
            strict=True,
        )
    ]
    assert merged["n"] == 10 and merged["worst_case"][0] == pytest.approx(sum(per_run) / 2)
    assert f"| {PNI} | base (no smoothing) | 10 | 2 | " in page
    assert "pni_w_pgd_at: its base model and its rows at sigma 0, toward the first 10 in slices of 6" in page
    base6 = rows[("none", 0.0, 1, 0.3)]["worst_case"]  # the base on the sigma 0.1 row's 6 images
    assert (
        f"against its base model on the same 6 images ({100 * base6[0]:.1f} ± {100 * base6[1]:.1f} to" in page
    )
    assert "\n".join(long_lines(out, study)) in page

    logs.clear()
    run_study(out, CONFIGS, quick=True, only="long", device="cpu", log=logs.append)
    assert f"[skip] long/train/{PNI}" in "\n".join(logs) and f"[skip] long/eval/{PNI}" in "\n".join(logs)
    assert f"[skip] long/eval/{PNI}.from6" in "\n".join(logs)
    assert read_jsonl(path) == records

    # the same file, as if written for other weights: set aside whole, then evaluated afresh
    foreign = []
    for r in records:
        identity = {**r["identity"], "weights_digest": "0" * 64}
        foreign.append({**r, "identity": identity, "fingerprint": fingerprint_of(identity)})
    path.write_text("".join(json.dumps(r) + "\n" for r in foreign))
    (out / "state" / "long__eval__pni_w_pgd_at.json").unlink()
    run_study(out, CONFIGS, quick=True, only="long", device="cpu", log=logs.append)
    assert read_jsonl(path.with_suffix(".stale.jsonl")) == foreign
    again = read_jsonl(path)
    assert {r["identity"]["weights_digest"] for r in again} == {digest} and len(again) == 6
    assert [r["worst_case"] for r in again] == [r["worst_case"] for r in records]  # same seeds
    assert set(load_long(out, study)) == {PNI}
    assert load_long(out, study)[PNI]["rows"][("none", 0.0, 1, 0.3)]["n"] == 10
    # a later slice of other weights (its step not run again yet) is left out of the page's rows
    stale = [{**r, "identity": {**r["identity"], "weights_digest": "0" * 64}} for r in more]
    results_path(out, PNI, 6).write_text("".join(json.dumps(r) + "\n" for r in stale))
    assert load_long(out, study)[PNI]["rows"][("none", 0.0, 1, 0.3)]["n"] == 6


def test_long_stage_fine_tune_starts_from_the_stages_own_checkpoint(tmp_path):
    """A model whose config starts from ``@pgd_at`` (CNI-W) starts from the stage's own long-trained
    pgd_at, trains with its own overrides over the stage's, and the page says so; a retrained
    pgd_at (other weights) retrains the fine-tune too."""
    out = tmp_path / "out"
    block = {
        "train": {"epochs": 2, "max_train_examples": 256, "eval_examples": 32},
        "evaluate": TINY_EVALUATE,
        "models": {
            "cni_w_pgd_at": {"votes": ["hard"], "sigmas": [0.1], "train": {"epochs": 1}},
            "pgd_at": {},
        },
    }
    logs: list[str] = []
    run_study(out, CONFIGS, quick=True, only="long", device="cpu", long_training=block, log=logs.append)
    models = out / "long" / "models"
    start = Path(yaml.safe_load((models / "cni_w_pgd_at" / "config.yaml").read_text())["init"])
    assert start.parent == models / "pgd_at" and start.name in ("best.safetensors", "model.safetensors")
    assert [r["epoch"] for r in read_jsonl(models / "cni_w_pgd_at" / "metrics.jsonl")] == [1]
    assert [r["epoch"] for r in read_jsonl(models / "pgd_at" / "metrics.jsonl")] == [1, 2]
    assert "\n".join(logs).index("[run ] long/train/pgd_at") < "\n".join(logs).index(
        "[run ] long/train/cni_w"
    )
    page = (out / "paper-reproduction.md").read_text()
    assert "; cni_w_pgd_at starts from the stage's own pgd_at, with epochs 1, max_train_examples 256" in page
    assert "| cni_w_pgd_at | hard sigma=0.1 m=2 | 4 | 1 | " in page

    # pgd_at trained again at another learning rate: other weights, so the fine-tune trains again
    # (a change that left pgd_at's selected checkpoint as it was would leave the fine-tune done)
    block["models"]["pgd_at"] = {"train": {"lr": 0.002}}
    logs.clear()
    run_study(out, CONFIGS, quick=True, only="long", device="cpu", long_training=block, log=logs.append)
    assert "[redo] long/train/pgd_at" in "\n".join(logs) and "[redo] long/train/cni_w_pgd_at" in "\n".join(
        logs
    )
    assert [r["lr"] for r in read_jsonl(models / "pgd_at" / "metrics.jsonl")] == [0.002, 0.002]


def test_a_broken_line_in_a_long_stage_file_is_refused_with_its_file_and_line(tmp_path):
    import shutil

    out = tmp_path / "study"
    shutil.copytree(STUDY / "results" / "long", out / "long")
    path = results_path(out, PNI, 100)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", *lines[2:]]) + "\n")
    with pytest.raises(ConfigError, match=r"pni_w_pgd_at\.from100\.jsonl:2: not a JSON line"):
        load_long(out, load_study(CONFIGS))


def test_a_done_model_whose_checkpoint_is_gone_trains_again_on_its_recorded_threads(tmp_path):
    """A clone keeps results, never checkpoints: a done training step whose checkpoint is missing
    trains again on the torch threads its state recorded, into the same weights, so the evaluation
    records keyed on them are kept; weights that come out otherwise are said. ``models`` runs one
    model's steps alone and refuses a name the stage lacks before anything is written."""
    out = tmp_path / "out"
    block = {
        "train": {"epochs": 1, "max_train_examples": 256, "eval_examples": 32},
        "evaluate": TINY_EVALUATE,
        "models": {PNI: {"votes": ["hard"], "sigmas": [0.1]}, "pgd_at": {}},
    }
    with pytest.raises(ConfigError, match="--models names nope, not one of the stage's pni_w_pgd_at, pgd_at"):
        run_study(out, CONFIGS, quick=True, only="long", models=["nope"], long_training=block)
    with pytest.raises(ConfigError, match="models only applies to the longer-training stage run alone"):
        run_study(out, CONFIGS, quick=True, models=["pgd_at"], long_training=block)
    assert not out.exists()

    def run(threads: int) -> str:
        logs: list[str] = []
        with torch_threads(threads):
            run_study(
                out,
                CONFIGS,
                quick=True,
                only="long",
                models=["pgd_at"],
                device="cpu",
                long_training=block,
                log=logs.append,
            )
        return "\n".join(logs)

    run(1)
    models, state = out / "long" / "models", out / "state" / "long__train__pgd_at.json"
    assert not (models / PNI).exists() and not results_path(out, PNI).exists()  # only pgd_at's steps
    digest = checkpoint_digest(models / "pgd_at" / "best.safetensors")
    sha = read_sidecar(models / "pgd_at" / "best.safetensors")["weights_sha256"]
    assert {k: json.loads(state.read_text())[k] for k in ("threads", "weights_digest")} == {
        "threads": 1,
        "weights_digest": digest,
    }
    records = read_jsonl(results_path(out, "pgd_at"))

    def lose_checkpoint() -> None:
        for path in (models / "pgd_at").iterdir():
            if path.name.startswith(("best.", "model.", "last.")):
                path.unlink()

    lose_checkpoint()
    logs = run(2)
    assert (
        "[note] long/train/pgd_at: done, but its checkpoint is missing; training it again on 1 thread(s)"
        in logs
    )
    assert "[run ] long/train/pgd_at" in logs and "[skip] long/eval/pgd_at" in logs
    assert checkpoint_digest(models / "pgd_at" / "best.safetensors") == digest
    assert json.loads(state.read_text())["threads"] == 1 and torch.get_num_threads() == CPU_THREADS
    assert read_jsonl(results_path(out, "pgd_at")) == records  # kept: the same weights
    assert not results_path(out, "pgd_at").with_suffix(".stale.jsonl").exists()

    # a state written before tensor digests holds the file's sha256 under its own name: compared
    # with the new file's, then replaced by the tensor digest
    lose_checkpoint()
    old = {k: v for k, v in json.loads(state.read_text()).items() if k != "weights_digest"}
    state.write_text(json.dumps({**old, "weights_file_sha256": sha}))
    logs = run(1)
    assert "[run ] long/train/pgd_at" in logs and "other than recorded" not in logs
    assert json.loads(state.read_text())["weights_digest"] == digest

    # a recorded digest that the retrained weights do not match is said
    lose_checkpoint()
    state.write_text(json.dumps({**json.loads(state.read_text()), "weights_digest": "0" * 64}))
    logs = run(1)
    assert "[note] long/train/pgd_at: the weights came out other than recorded (tensor digest" in logs
    assert json.loads(state.read_text())["weights_digest"] == digest
