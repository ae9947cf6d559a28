"""End-to-end CLI: train a tiny model on the synthetic set, then evaluate its checkpoint."""

from __future__ import annotations

import json

import pytest

from smoothinf.cli import main


def test_train_then_evaluate_synthetic(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", "synthetic", "--model", "mnist_cnn_small", "--epochs", "3",
               "--lr", "3e-3", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    meta = json.loads((out / "model.safetensors.json").read_text())
    assert meta["metrics"]["test_accuracy"] > 0.9
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "model.safetensors"), "--data", "synthetic"]) == 0
    line = capsys.readouterr().out
    acc = float(line.split("clean accuracy")[1].split()[0])
    assert acc == pytest.approx(meta["metrics"]["test_accuracy"])


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]
    assert main(["train", "--data", "synthetic", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "epochs" in capsys.readouterr().err
