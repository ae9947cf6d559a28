"""End-to-end CLI: train a tiny model on the synthetic set, then evaluate its checkpoint."""

from __future__ import annotations

import json

import pytest

from smoothinf.cli import main
from smoothinf.errors import SmoothinfError


@pytest.fixture(scope="module")
def synthetic_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    assert (
        main(
            [
                "train",
                "--data",
                "synthetic",
                "--model",
                "mnist_cnn_small",
                "--epochs",
                "3",
                "--lr",
                "3e-3",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return out / "model.safetensors"


def test_train_then_evaluate_synthetic(synthetic_checkpoint, capsys):
    out = synthetic_checkpoint.parent
    meta = json.loads((out / "model.safetensors.json").read_text())
    assert meta["metrics"]["val_clean"] > 0.9 and meta["metrics"]["epoch"] == 3
    capsys.readouterr()
    ckpt = str(out / "model.safetensors")
    assert main(["evaluate", "--checkpoint", ckpt, "--data", "synthetic", "--split", "val"]) == 0
    line = capsys.readouterr().out
    acc = float(line.split("clean accuracy")[1].split()[0])
    assert acc == pytest.approx(meta["metrics"]["val_clean"])
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]
    assert main(["train", "--data", "synthetic", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "epochs" in capsys.readouterr().err


def test_predict_cli_reports_accuracy_and_abstain(synthetic_checkpoint, capsys):
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                "-c",
                str(synthetic_checkpoint),
                "--sigma",
                "0.05",
                "--m",
                "16",
                "--max-examples",
                "200",
                "--alpha",
                "0.01",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    acc = float(out.split("smoothed accuracy")[1].split()[0])
    abstain = float(out.split("abstain rate")[1].split()[0])
    assert acc > 0.8 and 0.0 <= abstain < 0.2


def test_certify_cli_writes_tsv_and_resumes(synthetic_checkpoint, tmp_path, capsys):
    tsv = tmp_path / "cert.tsv"
    args = [
        "certify",
        "-c",
        str(synthetic_checkpoint),
        "--sigma",
        "0.1",
        "--n0",
        "20",
        "--n",
        "500",
        "--alpha",
        "0.01",
        "--out",
        str(tsv),
    ]
    assert main(args + ["--max-examples", "10"]) == 0
    rows = tsv.read_text().strip().splitlines()
    assert rows[0].split("\t") == ["idx", "label", "predict", "radius", "correct", "time"]
    assert len(rows) == 11
    assert main(args + ["--max-examples", "14"]) == 0  # resumes: only 4 new rows
    rows = tsv.read_text().strip().splitlines()
    assert [int(r.split("\t")[0]) for r in rows[1:]] == list(range(14))
    radii = [float(r.split("\t")[3]) for r in rows[1:]]
    # n = 500, alpha = 0.01: p_lower <= 0.01^(1/500), so the radius is at most 0.1 * Phi^-1(that).
    assert max(radii) <= 0.1 * 2.359 and max(radii) > 0
    assert tsv.with_suffix(".png").exists()
    # ACR: the mean of radius x correct over the 14 rows the TSV holds, as printed
    correct = [r.split("\t")[4] == "1" for r in rows[1:]]
    expected = sum(r for r, c in zip(radii, correct, strict=True) if c) / 14
    printed = float(capsys.readouterr().out.rsplit("ACR ", 1)[1].split()[0])
    assert abs(printed - expected) < 1e-3 and printed > 0


def test_malloc_tuning_applies_on_glibc():
    """The CLI's allocator tuning takes effect on glibc Linux and is a no-op elsewhere."""
    import platform

    from smoothinf.utils import tune_cpu_allocator

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert tune_cpu_allocator() is glibc
    with pytest.raises(SmoothinfError, match="malloc thresholds must be >= 0"):
        tune_cpu_allocator(mmap_threshold=-1)
