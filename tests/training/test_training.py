"""Training: objective formulas, adversarial training helps, exact resume after SIGKILL, configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from smoothinf.errors import ConfigError
from smoothinf.models import create_model, load_checkpoint
from smoothinf.training import adversarial, build_objective, standard, trades
from smoothinf.training.step import Step
from smoothinf.training.trainer import TrainConfig, accuracy, robust_accuracy_pgd, train


def tiny_model():
    torch.manual_seed(0)
    return create_model("linear", 3, 1, (0.5,), (0.25,), input_size=4)


def test_objectives_match_their_formulas():
    model = tiny_model()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    x_adv = (x + 0.1).clamp(0, 1)
    stub = lambda *_: lambda x, y, generator=None: x_adv  # noqa: E731
    step = standard()(model, x, y)
    assert torch.allclose(step.loss, F.cross_entropy(model(x), y))
    step = adversarial(stub, weight=0.3)(model, x, y)
    expected = 0.7 * F.cross_entropy(model(x), y) + 0.3 * F.cross_entropy(model(x_adv), y)
    assert torch.allclose(step.loss, expected)
    step = trades(0.1, 0.02, 3, beta=6.0, make_attack=stub)(model, x, y)
    p, q = F.softmax(model(x), 1), F.softmax(model(x_adv), 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    assert torch.allclose(step.loss, F.cross_entropy(model(x), y) + 6.0 * kl, atol=1e-6)
    # Gaussian augmentation: the loss is CE at the noisy input drawn from the generator.
    g = torch.Generator().manual_seed(3)
    step = build_objective("gaussian", sigma=0.2)(model, x, y, g)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)) * 0.2
    assert torch.allclose(step.loss, F.cross_entropy(model(x + noise), y))


def test_adversarial_training_improves_pgd_accuracy(tmp_path):
    common = dict(
        data="synthetic",
        model="mnist_cnn_small",
        epochs=4,
        lr=3e-3,
        eps=0.1,
        attack_steps=5,
        eval_examples=400,
        device="cpu",
    )
    plain = train(TrainConfig(objective="standard", out=str(tmp_path / "std"), **common))
    robust = train(TrainConfig(objective="adversarial", adv_weight=0.5, out=str(tmp_path / "at"), **common))
    from smoothinf.data import load_dataset

    test, _ = load_dataset("synthetic", "test")
    x, y = test.tensors(400)
    m_std, _ = load_checkpoint(plain["checkpoint"])
    m_at, _ = load_checkpoint(robust["checkpoint"])
    acc_std = robust_accuracy_pgd(m_std, x, y, 0.1, 10, seed=0)
    acc_at = robust_accuracy_pgd(m_at, x, y, 0.1, 10, seed=0)
    assert accuracy(m_at, x, y) > 0.85
    assert acc_at > acc_std + 0.2, (acc_std, acc_at)
    # Best-checkpoint selection by PGD accuracy on the val split (never on test).
    log = [json.loads(line) for line in (tmp_path / "at" / "metrics.jsonl").read_text().splitlines()]
    best = json.loads((tmp_path / "at" / "best.safetensors.json").read_text())["metrics"]
    assert best["val_pgd"] == max(r["val_pgd"] for r in log)


def _weights(path):
    model, _ = load_checkpoint(path)
    return model.state_dict()


def test_resume_after_sigkill_gives_identical_weights(tmp_path):
    args = [
        "--data",
        "synthetic",
        "--model",
        "mnist_cnn_small",
        "--epochs",
        "4",
        "--lr",
        "3e-3",
        "--objective",
        "adversarial",
        "--eps",
        "0.1",
        "--attack-steps",
        "2",
        "--device",
        "cpu",
    ]
    full = tmp_path / "full"
    train(
        TrainConfig(
            data="synthetic",
            model="mnist_cnn_small",
            epochs=4,
            lr=3e-3,
            objective="adversarial",
            eps=0.1,
            attack_steps=2,
            device="cpu",
            out=str(full),
        )
    )
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "smoothinf", "train", *args, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    log = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(log.read_text().splitlines())
    assert 1 <= done < 4, "the run should have been killed mid-way"
    from smoothinf.cli import main

    assert main(["train", *args, "--out", str(killed), "--resume"]) == 0
    epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    assert epochs[-1] == 4 and sorted(set(epochs)) == [1, 2, 3, 4]
    a, b = _weights(full / "model.safetensors"), _weights(killed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_yaml_round_trip(tmp_path):
    cfg = TrainConfig(data="synthetic", objective="trades", beta=3.0, milestones=[2, 4], noise="cni-w")
    cfg.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg
    assert TrainConfig.from_yaml(tmp_path / "c.yaml", lr=0.5).lr == 0.5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"objective": "mixup"}, "unknown objective"),
        ({"lr": -0.1}, "lr must be"),
        ({"epochs": 0}, "epochs"),
        ({"model": "vgg"}, "unknown model"),
        ({"noise": "dropout"}, "unknown noise"),
        ({"init": "/nonexistent.safetensors"}, "not found"),
        ({"train_split": "train+val"}, "select_by last"),
        ({"train_split": "all"}, "unknown train_split"),
        ({"sgd_momentum": "heavy"}, "unknown sgd_momentum"),
    ],
)
def test_bad_configs_fail_before_training(tmp_path, changes, message):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=message):
        train(TrainConfig(data="synthetic", out=str(out), **changes))
    assert not out.exists()


def test_missing_data_and_unknown_yaml_keys(tmp_path):
    with pytest.raises(ValueError, match="cifar"):
        train(TrainConfig(data="cifar10", root=str(tmp_path), out=str(tmp_path / "o")))
    (tmp_path / "bad.yaml").write_text("data: synthetic\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")


def test_amp_and_grad_clip_run_and_learn(tmp_path):
    metrics = train(
        TrainConfig(
            data="synthetic",
            model="mnist_cnn_small",
            epochs=2,
            lr=3e-3,
            amp=True,
            grad_clip=1.0,
            eps=0.0,
            device="cpu",
            out=str(tmp_path / "amp"),
        )
    )
    assert metrics["test_clean"] > 0.7
    with pytest.raises(ConfigError, match="grad_clip"):
        train(TrainConfig(data="synthetic", grad_clip=-1.0, out=str(tmp_path / "never")))


def test_finetune_from_checkpoint_adds_requested_noise(tmp_path):
    base = train(
        TrainConfig(data="synthetic", epochs=1, lr=3e-3, eps=0.0, device="cpu", out=str(tmp_path / "b"))
    )
    tuned = train(
        TrainConfig(
            data="synthetic",
            epochs=1,
            lr=1e-3,
            eps=0.0,
            device="cpu",
            init=base["checkpoint"],
            noise="cni-w",
            noise_rank=2,
            out=str(tmp_path / "t"),
        )
    )
    model, meta = load_checkpoint(tuned["checkpoint"])
    assert meta["noise"]["kind"] == "cni-w" and meta["noise"]["rank"] == 2
    assert tuned["test_clean"] > 0.5


@pytest.mark.parametrize("bad", ["loss", "gradient"])
def test_a_nonfinite_loss_or_gradient_stops_training_keeping_the_last_finite_checkpoint(
    tmp_path, capsys, monkeypatch, bad
):
    """Issue 43: CNI-W + TRADES from scratch went NaN at step 2 and trained three epochs of NaN,
    exit 0, NaN weights saved. Here the 3rd step of epoch 2 goes non-finite (a NaN loss, or a NaN
    gradient under a finite loss): one line naming the step and the objective, exit 2, epoch 1's
    files untouched."""
    import dataclasses

    from smoothinf.cli import main
    from smoothinf.training import trainer

    out = tmp_path / "run"
    argv = ["train", "--data", "synthetic", "--lr", "3e-3", "--device", "cpu", "--out", str(out)]
    assert main([*argv, "--epochs", "1"]) == 0
    kept = {name: (out / name).read_bytes() for name in ("model.safetensors", "last.pt", "metrics.jsonl")}
    real, calls = trainer.build_objective, []

    def poisoned(*args, **kwargs):
        objective = real(*args, **kwargs)

        def step(model, x, y, generator):
            result = objective(model, x, y, generator)
            calls.append(1)
            if len(calls) < 3:
                return result
            if bad == "loss":
                return dataclasses.replace(result, loss=result.loss * float("nan"))
            zero = 0.0 * sum(p.sum() for p in model.parameters())
            return dataclasses.replace(result, loss=result.loss + zero.abs().sqrt())  # d sqrt(0) = inf

        return step

    monkeypatch.setattr(trainer, "build_objective", poisoned)
    capsys.readouterr()
    assert main([*argv, "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("smoothinf train: error: training diverged at step 19 (epoch 2,")
    assert "objective standard" in err[-1]
    assert ("the loss is nan" if bad == "loss" else "the gradient norm is nan") in err[-1]
    assert "lower --lr" in err[-1] and "--init" in err[-1] and "last.pt of epoch 1 are kept" in err[-1]
    assert {name: (out / name).read_bytes() for name in kept} == kept


def test_epoch_dependent_objectives_see_every_epoch_and_train_val_uses_both_splits(tmp_path, monkeypatch):
    """The trainer tells a warm-up objective each epoch (0, 1, 2) before its batches, and
    ``train_split: train+val`` trains on the 2000 + 500 synthetic images (batches of 500: 5 a epoch)."""
    import smoothinf.training.trainer as trainer_mod

    seen: list[tuple[int, int]] = []
    epoch = {"now": None}

    def build(*args, **kwargs):
        def step(model, x, y, generator=None):
            seen.append((epoch["now"], x.shape[0]))
            logits = model(x)
            return Step(F.cross_entropy(logits, y), int((logits.argmax(1) == y).sum()))

        step.set_epoch = lambda e: epoch.update(now=e)
        return step

    monkeypatch.setattr(trainer_mod, "build_objective", build)
    cfg = TrainConfig(
        data="synthetic",
        epochs=3,
        batch_size=500,
        eps=0.0,
        optimizer="sgd",
        lr=0.01,
        sgd_momentum="plain",
        train_split="train+val",
        select_by="last",
        device="cpu",
        out=str(tmp_path / "tv"),
    )
    train(cfg)
    assert [e for e, _ in seen] == [0] * 5 + [1] * 5 + [2] * 5
    assert sum(n for e, n in seen if e == 0) == 2500
