"""Data parallel training: 2 CPU processes (gloo) under torchrun match one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from smoothinf.distributed import shard_indices
from smoothinf.models import load_checkpoint
from smoothinf.training.trainer import TrainConfig, train


def run_torchrun(args: list[str]) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node 2 -m smoothinf ARGS`` (2 CPU ranks, gloo)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "smoothinf",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_shard_indices_cover_everything_once():
    shards = [shard_indices(10, r, 3) for r in range(3)]
    assert [list(range(10))[s] for s in shards] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_two_process_ddp_matches_single_process(tmp_path):
    args = [
        "--data",
        "synthetic",
        "--model",
        "mnist_cnn_small",
        "--epochs",
        "2",
        "--lr",
        "3e-3",
        "--batch-size",
        "100",
        "--max-train-examples",
        "1000",
        "--device",
        "cpu",
    ]
    ddp = tmp_path / "ddp"
    run_torchrun(["train", *args, "--out", str(ddp)])
    single = tmp_path / "single"
    train(
        TrainConfig(
            data="synthetic",
            model="mnist_cnn_small",
            epochs=2,
            lr=3e-3,
            batch_size=100,
            max_train_examples=1000,
            device="cpu",
            out=str(single),
        )
    )
    log_d = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    log_s = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert len(log_d) == len(log_s) == 2
    for a, b in zip(log_d, log_s, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
        assert a["train_clean"] == pytest.approx(b["train_clean"], abs=1e-3)
        assert a["val_clean"] == pytest.approx(b["val_clean"], abs=2e-3)
    wd, _ = load_checkpoint(ddp / "model.safetensors")
    ws, _ = load_checkpoint(single / "model.safetensors")
    sd = ws.state_dict()
    for k, v in wd.state_dict().items():
        assert torch.allclose(v, sd[k], atol=1e-4), k


def test_two_process_evaluation_equals_single_process(tmp_path):
    ckpt = train(
        TrainConfig(
            data="synthetic",
            model="mnist_cnn_small",
            epochs=2,
            lr=3e-3,
            device="cpu",
            out=str(tmp_path / "model"),
        )
    )["checkpoint"]
    grid = [
        "evaluate",
        "-c",
        ckpt,
        "--check-examples",
        "0",  # cross-checks off: this test is about splitting jobs
        "--attacks",
        "fgsm",
        "pgd",
        "epgd",
        "--eps",
        "0.1",
        "--votes",
        "hard",
        "--sigmas",
        "0.05",
        "0.1",
        "--ms",
        "4",
        "--runs",
        "2",
        "--steps",
        "3",
        "--attack-m",
        "2",
        "--max-examples",
        "40",
        "--device",
        "cpu",
    ]
    two = tmp_path / "two.jsonl"
    run_torchrun([*grid, "--results", str(two), "--report-dir", str(tmp_path / "rep2")])
    from smoothinf.cli import main

    one = tmp_path / "one.jsonl"
    assert main([*grid, "--results", str(one), "--report-dir", str(tmp_path / "rep1")]) == 0

    def strip(r):
        """Wall times differ between processes; everything else, attacked counts included, may not."""
        if isinstance(r, dict):
            return {k: strip(v) for k, v in r.items() if not k.endswith("seconds")}
        return r

    rows_two = [strip(json.loads(line)) for line in two.read_text().splitlines()]
    rows_one = [strip(json.loads(line)) for line in one.read_text().splitlines()]
    assert len(rows_one) == 6 and rows_two == rows_one
