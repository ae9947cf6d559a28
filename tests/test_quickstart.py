"""The quickstart: an interrupted training is resumed, never reused as finished; the default path
rates the zoo model and its report states the images and the 95% interval."""

from __future__ import annotations

import pytest
import torch

from smoothinf import quickstart
from smoothinf.cli import main as cli_main
from smoothinf.models import create_model, save_checkpoint
from smoothinf.quickstart import QuickstartConfig, trained_model, training_finished
from smoothinf.smoothing.statistics import wilson


def _checkpoint(folder, epoch: int, epochs: int):
    folder.mkdir(parents=True, exist_ok=True)
    model = create_model("linear", 10, 1, (0.1307,), (0.3081,))
    meta = {"dataset": "mnist", "training": {"epochs": epochs}, "metrics": {"epoch": epoch}}
    return save_checkpoint(folder / "model.safetensors", model, meta)


def test_training_finished_reads_the_sidecar_not_the_file(tmp_path):
    assert not training_finished(tmp_path / "none.safetensors")
    assert not training_finished(_checkpoint(tmp_path / "a", epoch=2, epochs=6))
    assert training_finished(_checkpoint(tmp_path / "b", epoch=6, epochs=6))


@pytest.mark.parametrize("epoch", [2, 6])
def test_interrupted_training_is_resumed_finished_one_reused(tmp_path, monkeypatch, epoch):
    calls = []
    monkeypatch.setattr(quickstart, "train", lambda cfg, resume=False: calls.append((cfg.epochs, resume)))
    _checkpoint(tmp_path / "model", epoch=epoch, epochs=6)  # written after epoch `epoch` of 6
    ckpt = trained_model(QuickstartConfig(out=str(tmp_path), train=True), torch.device("cpu"))
    assert ckpt == tmp_path / "model" / "model.safetensors"
    assert calls == ([] if epoch == 6 else [(6, True)])


def test_wilson_interval():
    lo, hi = wilson(30, 50)
    assert lo < 0.6 < hi and round(lo, 3) == 0.462 and round(hi, 3) == 0.724
    assert wilson(0, 10)[0] == pytest.approx(0.0) and wilson(10, 10)[1] == pytest.approx(1.0)


def test_quickstart_flags_exclude_each_other(capsys):
    assert cli_main(["quickstart", "--train", "--model", "mnist_cnn_small_pgd_at_6ep"]) == 2
    assert "pass one of them" in capsys.readouterr().err


@pytest.mark.slow  # minutes on a loaded 2-core machine: the base row's AutoAttack check dominates
def test_quickstart_on_the_zoo_model_reports_images_and_interval(tmp_path):
    qc = QuickstartConfig(out=str(tmp_path), examples=2, certify_examples=4, certify_n=50, device="cpu")
    report = quickstart.run_quickstart(qc)
    text = report.read_text()
    assert "mnist_cnn_small_pgd_at_6ep" in text and "first 2 test images" in text
    assert "95% interval" in text and "Wilson" in text and "hard sigma=0.25 m=64" in text
    assert "Cross-checks" in text and "Certified accuracy" in text and "Smoothed prediction" in text
    assert (tmp_path / "certified.png").is_file() and (tmp_path / "sigma_sweep.png").is_file()
