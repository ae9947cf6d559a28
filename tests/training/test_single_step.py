"""Single-step adversarial training (FGSM, FGSM-RS, N-FGSM, GradAlign) and the CO guard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smoothinf import PGD, TrainConfig, create_model, train
from smoothinf.errors import ConfigError
from smoothinf.training import build_objective
from smoothinf.training.co_guard import COGuard, COGuardConfig
from smoothinf.training.single_step import SingleStep, grad_align_penalty, single_step_perturbation

ROOT = Path(__file__).resolve().parents[2]


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("linear", num_classes=10, in_channels=1, mean=(0.5,), std=(0.25,))


def _batch(n: int = 64, value: float | None = 0.5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 1, 28, 28), value) if value is not None else torch.rand((n, 1, 28, 28), generator=g)
    return x, torch.randint(0, 10, (n,), generator=g)


# --------------------------------------------------------------------------- perturbation bounds
def test_presets_follow_the_papers():
    rs, nf, fg = (single_step_perturbation(n, 0.3) for n in ("fgsm-rs", "n-fgsm", "fgsm"))
    assert (rs.alpha, rs.start, rs.project) == (pytest.approx(0.375), 1.0, True)
    assert (nf.alpha, nf.start, nf.project) == (pytest.approx(0.3), 2.0, False)
    assert (fg.alpha, fg.start, fg.project) == (pytest.approx(0.3), 0.0, True)
    assert nf.bound == pytest.approx(0.9) and rs.bound == pytest.approx(0.3)
    assert single_step_perturbation("n-fgsm", 0.1, alpha=0.05, start=3).bound == pytest.approx(0.35)
    with pytest.raises(ConfigError):
        single_step_perturbation("pgd", 0.3)
    with pytest.raises(ConfigError):
        SingleStep(0.3, -1.0)


def test_fgsm_rs_within_eps_and_its_boundary_fraction():
    """x = 0.5, eps = 0.1 (no pixel clamping): delta = clamp(u + 1.25 eps s, -eps, eps), u ~ U[-eps, eps],
    so |delta| = eps exactly with probability 1.25 / 2 = 0.625; never beyond eps. The model's input
    gradient has a fixed sign pattern (independent of u), so the analytic fractions hold exactly."""
    model, (x, _) = _TwoClassLinear(), _batch(256)
    y = torch.zeros(256, dtype=torch.long)
    eps = 0.1
    delta = single_step_perturbation("fgsm-rs", eps)(model, x, y, torch.Generator().manual_seed(0)) - x
    assert delta.abs().max().item() <= eps + 1e-6
    at_boundary = (delta.abs() > eps - 1e-6).float().mean().item()
    assert at_boundary == pytest.approx(0.625, abs=0.01)


def test_n_fgsm_exceeds_eps_within_k_plus_one_eps():
    """x = 0.5, eps = 0.1, k = 2: delta = u + eps s, u ~ U[-2 eps, 2 eps]: |delta| > eps iff u s > 0
    (probability 1/2), |delta| <= 3 eps, and its largest value comes close to 3 eps."""
    model, (x, _) = _TwoClassLinear(), _batch(256)
    y = torch.zeros(256, dtype=torch.long)
    eps = 0.1
    delta = single_step_perturbation("n-fgsm", eps)(model, x, y, torch.Generator().manual_seed(0)) - x
    assert delta.abs().max().item() <= 3 * eps + 1e-6
    assert delta.abs().max().item() > 2.9 * eps
    assert (delta.abs() > eps + 1e-6).float().mean().item() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("name", ["fgsm", "fgsm-rs", "n-fgsm"])
def test_pixels_stay_in_unit_interval(name):
    model, (x, y) = _linear(), _batch(64, value=None)
    x = (x > 0.5).float()  # pixels at 0 and 1, where every start and step would leave [0, 1]
    eps = 0.3
    perturb = single_step_perturbation(name, eps)
    x_adv = perturb(model, x, y, torch.Generator().manual_seed(0))
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert (x_adv - x).abs().max().item() <= perturb.bound + 1e-6
    assert (x_adv != x).float().mean().item() > 0.4  # it did move the pixels it could


def test_plain_fgsm_is_eps_times_gradient_sign():
    model, (x, y) = _linear(), _batch(8)
    xr = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)[0]
    x_adv = single_step_perturbation("fgsm", 0.1)(model, x, y)
    torch.testing.assert_close(x_adv, (x + 0.1 * grad.sign()).clamp(0, 1))


def test_fgsm_rs_is_one_step_pgd():
    """FGSM-RS is PGD with one step of 1.25 eps from a random start: same generator, same x_adv."""
    model, (x, y) = _linear(), _batch(32, value=None)
    ours = single_step_perturbation("fgsm-rs", 0.2)(model, x, y, torch.Generator().manual_seed(3))
    pgd = PGD(model, 0.2, alpha=0.25, steps=1)(x, y, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, pgd)


# -------------------------------------------------------------------------------- objectives
@pytest.mark.parametrize("weight", [0.5, 1.0])
def test_single_step_objective_is_eq6(weight):
    model, (x, y) = _linear(), _batch(16, value=None)
    objective = build_objective("n-fgsm", eps=0.1, weight=weight)
    assert objective.perturbation.alpha == pytest.approx(0.1) and objective.perturbation.start == 2.0
    step = objective(model, x, y, torch.Generator().manual_seed(5))
    x_adv = objective.perturbation(model, x, y, torch.Generator().manual_seed(5))
    expected = weight * F.cross_entropy(model(x_adv), y) + (1 - weight) * F.cross_entropy(model(x), y)
    assert step.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert step.adv_correct == int((model(x_adv).argmax(1) == y).sum())


class _TwoClassLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, 784))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.flatten(1) @ self.w
        return torch.stack([torch.zeros_like(d), d], 1)


def test_grad_align_penalty_values():
    """Two classes, logits (0, w.x), label 0: grad_x CE = p_1(x) w, always parallel -> penalty 0.
    For a nonlinear CNN it lies in (0, 2] and has gradients for the weights (double backward)."""
    x, _ = _batch(8, value=None)
    y0 = torch.zeros(8, dtype=torch.long)
    assert grad_align_penalty(_TwoClassLinear(), x, y0, 0.3).item() == pytest.approx(0.0, abs=1e-5)
    torch.manual_seed(0)
    cnn = create_model("mnist_cnn_small", num_classes=10, in_channels=1, mean=(0.5,), std=(0.25,))
    x, y = _batch(8, value=None)
    penalty = grad_align_penalty(cnn, x, y, 0.3, torch.Generator().manual_seed(0))
    assert 0.0 < penalty.item() <= 2.0
    penalty.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cnn.parameters())
    objective = build_objective("fgsm-rs", eps=0.3, weight=1.0, grad_align=0.5)
    plain = build_objective("fgsm-rs", eps=0.3, weight=1.0)
    with_ga = objective(cnn, x, y, torch.Generator().manual_seed(0)).loss
    gen = torch.Generator().manual_seed(0)
    base = plain(cnn, x, y, gen).loss
    assert with_ga.item() == pytest.approx(
        (base + 0.5 * grad_align_penalty(cnn, x, y, 0.3, gen)).item(), rel=1e-5
    )


def test_config_rejects_single_step_options_elsewhere():
    with pytest.raises(ConfigError, match="single-step"):
        TrainConfig(objective="adversarial", co_guard="stop").validate()
    with pytest.raises(ConfigError, match="single-step"):
        TrainConfig(objective="trades", grad_align=0.2).validate()
    with pytest.raises(ConfigError, match="guard action"):
        TrainConfig(objective="n-fgsm", co_guard="restart").validate()
    with pytest.raises(ConfigError, match="co_guard_drop"):
        TrainConfig(objective="n-fgsm", co_guard="stop", co_guard_drop=0.0).validate()
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(objective="n-fgsm", schedule="onecycle").validate()
    TrainConfig(objective="n-fgsm", co_guard="shrink", start_noise=3.0, grad_align=0.1).validate()


# ----------------------------------------------------------------------------------- CO guard
class _Masked(nn.Module):
    """Two classes told apart by the image mean (0.2 vs 0.8): logit difference
    d(x) = (mean(x) - 0.5) * (1 - c var(x)). With c = 0 no eps = 0.1 attack flips it (margin 0.3).
    With c = 1000 it has *collapsed* like a catastrophically overfitted net: the variance term has a
    zero gradient at the constant clean images, so FGSM moves every pixel alike, keeps var = 0 and
    fails, while PGD's random start alone makes var ~ eps^2 / 3 and c var > 1 flips the class."""

    def __init__(self, c: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.c = nn.Parameter(torch.tensor(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        d = self.scale * (flat.mean(1) - 0.5) * (1 - self.c * flat.var(1, unbiased=False))
        return torch.stack([torch.zeros_like(d), d], 1)


def _masked_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(n) % 2
    return (0.2 + 0.6 * y.float()).view(n, 1, 1, 1).expand(n, 1, 8, 8).contiguous(), y


def _sgd_step(model: nn.Module, opt: torch.optim.Optimizer, x, y) -> None:
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("action", ["stop", "shrink"])
def test_guard_detects_synthetic_collapse_and_restores(action):
    x, y = _masked_data()
    model = _Masked()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    perturb = SingleStep(0.1, 0.125, 1.0)
    guard = COGuard(COGuardConfig(action=action, every=1, examples=32), x, y, 0.1, perturb)
    assert guard.accuracies(model) == (1.0, 1.0)
    _sgd_step(model, opt, x, y)
    good = guard.check(model, opt, 1)
    assert not good.collapsed and (good.pgd_acc, good.fgsm_acc) == (1.0, 1.0)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_momentum = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]

    with torch.no_grad():  # the collapse: weights move to the masked solution, optimizer moves on
        model.c.fill_(1000.0)
    _sgd_step(model, opt, x, y)
    assert guard.accuracies(model) == (0.0, 1.0)  # PGD collapsed, FGSM did not fall
    event = guard.check(model, opt, 2)
    assert event.collapsed and event.restored_to == 1
    assert (event.pgd_acc, event.fgsm_acc) == (0.0, 1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved_model[k])
    for p, m in zip(model.parameters(), saved_momentum, strict=True):
        assert torch.equal(opt.state[p]["momentum_buffer"], m)
    assert guard.accuracies(model)[0] == good.pgd_acc  # restored weights' PGD accuracy = last good's
    assert perturb.alpha == pytest.approx(0.125 * (0.5 if action == "shrink" else 1.0))
    assert guard.last_good_step == 1 and [c.collapsed for c in guard.history] == [False, True]


def test_guard_ignores_a_drop_when_fgsm_also_falls():
    """A PGD drop with a falling FGSM accuracy is a weaker model, not CO: no restore."""
    x, y = _masked_data()
    model = _Masked()
    guard = COGuard(COGuardConfig(every=1, examples=32), x, y, 0.1)
    guard.check(model, None, 0)
    with torch.no_grad():
        model.scale.fill_(-10.0)  # every example misclassified: both accuracies 0
    event = guard.check(model, None, 1)
    assert not event.collapsed and (event.pgd_acc, event.fgsm_acc) == (0.0, 0.0)
    assert guard.last_good_step == 1
    assert guard.due(3) and not COGuard(COGuardConfig(every=0), x, y, 0.1).due(3)


def test_trainer_stops_on_collapse_with_last_good_weights(tmp_path, monkeypatch):
    """In train(): scripted accuracies collapse at the third check; the run stops there and the
    saved checkpoint holds the weights of the last good check (step 2)."""
    from smoothinf.models import load_checkpoint

    script = iter([(0.5, 0.5), (0.6, 0.6), (0.7, 0.6), (0.1, 0.9)])
    seen: dict[int, dict[str, torch.Tensor]] = {}
    original_check = COGuard.check

    def accuracies(self, model):
        return next(script)

    def check(self, model, optimizer, step):
        seen[step] = {k: v.clone() for k, v in model.state_dict().items()}
        return original_check(self, model, optimizer, step)

    monkeypatch.setattr(COGuard, "accuracies", accuracies)
    monkeypatch.setattr(COGuard, "check", check)
    cfg = TrainConfig(
        data="synthetic",
        model="linear",
        objective="fgsm",
        eps=0.1,
        epochs=2,
        batch_size=16,
        max_train_examples=128,
        eval_examples=32,
        co_guard="stop",
        co_guard_every=1,
        out=str(tmp_path / "run"),
        device="cpu",
    )
    metrics = train(cfg)
    assert metrics["co_guard_stopped"] is True
    assert [c["step"] for c in metrics["co_guard"]] == [0, 1, 2, 3]
    assert [c["collapsed"] for c in metrics["co_guard"]] == [False, False, False, True]
    assert metrics["co_guard"][-1]["restored_to"] == 2
    model, _ = load_checkpoint(tmp_path / "run" / "model.safetensors")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, seen[2][k])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["co_guard_stopped"] is True  # stopped inside epoch 1
    assert records[0]["co_guard_collapses"][0]["step"] == 3


# ---------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    "objective, extra",
    [
        ("fgsm-rs", ["--co-guard", "shrink", "--co-guard-every", "2"]),
        ("n-fgsm", ["--grad-align", "0.2", "--start-noise", "1.5"]),
    ],
)
def test_cli_trains_single_step(tmp_path, objective, extra):
    out = tmp_path / objective
    cmd = [
        sys.executable,
        "-m",
        "smoothinf",
        "train",
        "--data",
        "synthetic",
        "--model",
        "linear",
        "--objective",
        objective,
        "--eps",
        "0.1",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-train-examples",
        "64",
        "--eval-examples",
        "32",
        "--out",
        str(out),
        "--device",
        "cpu",
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and 0.0 <= record["train_adv"] <= 1.0
    saved = json.loads((out / "model.safetensors.json").read_text())["training"]
    assert saved["objective"] == objective
    if objective == "fgsm-rs":
        assert record["co_guard_checks"] == 2  # steps 2 and 4 of the 4 (64 / 16)
        assert len((out / "co_guard.jsonl").read_text().splitlines()) == 3  # + the first restore point
    else:
        assert saved["grad_align"] == 0.2 and saved["start_noise"] == 1.5


def test_cli_rejects_guard_on_multi_step_objective(tmp_path):
    cmd = [sys.executable, "-m", "smoothinf", "train", "--objective", "adversarial", "--co-guard", "stop"]
    proc = subprocess.run(
        cmd + ["--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 2 and "single-step" in proc.stderr


@pytest.mark.parametrize(
    "name", ["mnist_n_fgsm", "mnist_fgsm_rs", "cifar10_preact18_n_fgsm", "cifar10_preact18_fgsm_rs"]
)
def test_single_step_configs_validate(name):
    cfg = TrainConfig.from_yaml(name)
    cfg.validate()
    assert cfg.objective in ("n-fgsm", "fgsm-rs")
    if name.startswith("cifar10"):
        assert cfg.eps == pytest.approx(8 / 255, abs=1e-6)


def test_guard_gap_criterion_catches_co_from_the_start(monkeypatch):
    """FGSM accuracy climbing while PGD accuracy never left 0 (CO before any robustness)."""
    script = iter([(0.0, 0.1), (0.0, 0.45), (0.0, 0.6)])
    monkeypatch.setattr(COGuard, "accuracies", lambda self, model: next(script))
    x, y = _masked_data()
    guard = COGuard(COGuardConfig(every=1, examples=8, gap=0.5), x, y, 0.1)
    verdicts = [guard.check(_Masked(), None, s) for s in range(3)]
    assert [v.collapsed for v in verdicts] == [False, False, True]
    assert verdicts[-1].restored_to == 1


def test_cyclic_schedule_is_a_triangle_over_epochs():
    """lr factor 1 - |e + 0.5 - E/2| / (E/2) per epoch e: 0.25, 0.75, 0.75, 0.25 for E = 4."""
    from smoothinf.training.trainer import _scheduler

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = _scheduler(TrainConfig(schedule="cyclic", epochs=4), opt)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.05, 0.15, 0.15, 0.05])
