"""Reruns: a torn last line is recomputed exactly, allowed changes are recorded, stale runs replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smoothinf.cli import main
from smoothinf.training.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "run"
    train(TrainConfig(data="synthetic", epochs=1, lr=3e-3, device="cpu", out=str(out)))
    return out / "model.safetensors"


def _rows(path: Path) -> list[list[str]]:
    """Certify rows without the timing column, sorted by example index."""
    lines = path.read_text().splitlines()[1:]
    return sorted((line.split("\t")[:5] for line in lines), key=lambda r: int(r[0]))


def test_certify_torn_and_lost_rows_are_recomputed_exactly(ckpt, tmp_path, capsys):
    args = ["certify", "-c", str(ckpt), "--sigma", "0.25", "--n0", "10", "--n", "60", "--device", "cpu"]
    args += ["--max-examples", "10", "--examples-per-step", "3"]
    full = tmp_path / "full.tsv"
    assert main([*args, "--out", str(full)]) == 0
    cut = tmp_path / "cut.tsv"
    lines = full.read_text().splitlines(keepends=True)
    # rows 4 and 5 lost, the last row cut mid-write (its radius half written, no newline)
    cut.write_text("".join(lines[:5] + lines[7:-1]) + lines[-1][:8])
    Path(str(cut) + ".json").write_text(Path(str(full) + ".json").read_text())
    assert main([*args, "--out", str(cut)]) == 0
    assert _rows(cut) == _rows(full)
    assert len(cut.read_text().splitlines()) == 11  # header + 10 rows, none glued or duplicated


def test_certify_table_grows_with_max_examples(ckpt, tmp_path):
    args = ["certify", "-c", str(ckpt), "--sigma", "0.25", "--n0", "10", "--n", "60", "--device", "cpu"]
    args += ["--examples-per-step", "4"]
    grown, fresh = tmp_path / "grown.tsv", tmp_path / "fresh.tsv"
    assert main([*args, "--max-examples", "8", "--out", str(grown)]) == 0
    assert main([*args, "--max-examples", "12", "--out", str(grown)]) == 0
    assert main([*args, "--max-examples", "12", "--out", str(fresh)]) == 0
    assert _rows(grown) == _rows(fresh)  # whole steps of 4: the same streams, the same rows


def test_evaluate_torn_jsonl_line_is_recomputed_and_runs_may_grow(ckpt, tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    grid = ["evaluate", "-c", str(ckpt), "--attacks", "pgd", "epgd", "--steps", "2", "--votes", "hard"]
    grid += ["--sigmas", "0.1", "--ms", "2", "--eps", "0.1", "--max-examples", "8", "--device", "cpu"]
    grid += ["--check-examples", "0"]  # cross-checks off: this test is about resuming
    grid += ["--results", str(results), "--report-dir", str(tmp_path / "rep")]
    assert main([*grid, "--runs", "1"]) == 0
    original = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(original) == 2  # base model + one smoothed setting
    text = results.read_text()
    results.write_text(text[: len(text) - 40])  # the last record cut mid-write
    assert main([*grid, "--runs", "2"]) == 0
    records = [json.loads(line) for line in results.read_text().splitlines()]
    keys = [(r["run"], r["vote"]) for r in records]
    assert sorted(keys) == [(0, "hard"), (0, "none"), (1, "hard"), (1, "none")]
    redo = next(r for r in records if (r["run"], r["vote"]) == (original[-1]["run"], original[-1]["vote"]))
    for key in ("clean", "attacks", "worst_case", "fingerprint", "identity"):
        assert redo[key] == original[-1][key]
    assert len({r["fingerprint"] for r in records}) == 1


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_train_resume_allows_and_records_more_epochs(tmp_path, capsys):
    common = ["train", "--data", "synthetic", "--lr", "3e-3", "--device", "cpu"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*common, "--epochs", "2", "--out", str(straight)]) == 0
    assert main([*common, "--epochs", "1", "--out", str(resumed)]) == 0
    assert main([*common, "--epochs", "2", "--out", str(resumed), "--resume"]) == 0
    a, b = _weights(straight / "model.safetensors"), _weights(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    events = [json.loads(line) for line in (resumed / "resume.jsonl").read_text().splitlines()]
    assert events[0]["resumed_at_epoch"] == 1 and events[0]["changes"] == {"epochs": [1, 2]}
    assert "epochs: 2" in (resumed / "config.yaml").read_text()
    epochs = [json.loads(line)["epoch"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_train_overwrite_starts_clean(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["train", "--data", "synthetic", "--lr", "3e-3", "--device", "cpu", "--out", str(out)]
    assert main([*common, "--epochs", "2", "--select-by", "clean"]) == 0
    assert (out / "best.safetensors").exists()
    assert main([*common, "--epochs", "1", "--select-by", "last", "--overwrite"]) == 0
    assert not (out / "best.safetensors").exists()  # no file of the replaced run survives
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1]


def test_standard_objective_selects_best_by_clean_accuracy(tmp_path, capsys):
    out = tmp_path / "std"
    cfg = TrainConfig(data="synthetic", epochs=3, lr=1e-3, eval_examples=200, device="cpu", out=str(out))
    assert cfg.select_by == "robust"
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = json.loads((out / "best.safetensors.json").read_text())
    assert best["selected_by"] == "clean"
    assert best["metrics"]["val_clean"] == max(r["val_clean"] for r in rows)
    assert max(r["val_clean"] for r in rows) > rows[0]["val_clean"]  # epoch 1 is not the best


def test_compute_sweep_refuses_another_setting_or_model(tmp_path):
    from smoothinf.data import load_dataset
    from smoothinf.errors import ConfigError
    from smoothinf.evaluation.sweeps import ComputeSweepConfig, compute_sweep
    from smoothinf.models import create_model_for

    data, info = load_dataset("synthetic", "test")
    x, y = data.tensors(6)
    torch.manual_seed(0)
    model = create_model_for("mnist_cnn_small", info).eval()
    path = tmp_path / "sweep.jsonl"
    cfg = dict(sigma=0.1, m=2, eps=0.1, steps=[1], draws=[1], attacks=["pgd"], runs=1)
    first = compute_sweep(model, x, y, ComputeSweepConfig(**cfg), path, progress=False)
    kept = path.read_bytes()
    with pytest.raises(ConfigError, match="settings.sigma"):
        compute_sweep(model, x, y, ComputeSweepConfig(**{**cfg, "sigma": 0.2}), path, progress=False)
    with pytest.raises(ConfigError, match="settings.judgements"):  # a file judged another way
        compute_sweep(model, x, y, ComputeSweepConfig(**{**cfg, "judgements": 4}), path, progress=False)
    weight = next(model.parameters())
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(0.1)
    with pytest.raises(ConfigError, match="weights_sha256"):
        compute_sweep(model, x, y, ComputeSweepConfig(**cfg), path, progress=False)
    assert path.read_bytes() == kept
    with torch.no_grad():
        weight.copy_(saved)
    grown = compute_sweep(model, x, y, ComputeSweepConfig(**{**cfg, "runs": 2}), path, progress=False)
    assert [r["run"] for r in grown] == [0, 1] and grown[0]["accuracy"] == first[0]["accuracy"]


def test_results_are_keyed_on_the_tensors_not_the_files_bytes(ckpt, tmp_path, capsys):
    """The same weights in other file bytes (the metadata in another order) resume the same results
    file; other weights are refused naming weights_sha256 (issue 39 item 8)."""
    import hashlib

    from smoothinf.models import load_checkpoint, save_checkpoint

    model, _ = load_checkpoint(ckpt)
    again = save_checkpoint(tmp_path / "again.safetensors", model, {"dataset": "synthetic"})
    # the same tensors in other file bytes: the safetensors metadata in another order
    data = again.read_bytes()
    a = b'"format":"pt","smoothinf_arch":"mnist_cnn_small"'
    b = b'"smoothinf_arch":"mnist_cnn_small","format":"pt"'
    assert a in data
    again.write_bytes(data.replace(a, b, 1))
    sidecar = Path(str(again) + ".json")
    meta = json.loads(sidecar.read_text())
    meta["weights_sha256"] = hashlib.sha256(again.read_bytes()).hexdigest()
    sidecar.write_text(json.dumps(meta))
    assert again.read_bytes() != Path(ckpt).read_bytes()
    results = tmp_path / "r.jsonl"
    grid = ["evaluate", "--attacks", "pgd", "--steps", "2", "--eps", "0.1", "--max-examples", "4"]
    grid += ["--device", "cpu", "--check-examples", "0", "--results", str(results)]
    assert main([*grid, "-c", str(ckpt)]) == 0
    kept = results.read_bytes()
    assert main([*grid, "-c", str(again)]) == 0  # nothing to do: the rows are these weights'
    assert results.read_bytes() == kept
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    other = save_checkpoint(tmp_path / "other.safetensors", model, {"dataset": "synthetic"})
    capsys.readouterr()
    assert main([*grid, "-c", str(other)]) == 2
    assert "weights_sha256" in capsys.readouterr().err
