"""Training objectives as the paper's reference code and Salman et al. train: noisy inputs for
EPGD-AT / SmoothAdv-AT, an attack that sees the input noise (CNI-I+W), batch-norm statistics only
from trained batches, and one source of truth for the input-noise std."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smoothinf.errors import ConfigError
from smoothinf.models import create_model, load_checkpoint
from smoothinf.noise import NoiseDistribution
from smoothinf.training import adversarial, build_objective, check_input_noise
from smoothinf.training.trainer import TrainConfig, train

SIGMA, EPS = 0.5, 0.05


class Recorder(nn.Module):
    """Wraps a model and records (rows it saw, training flag) for every forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.seen: list[tuple[torch.Tensor, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.detach().clone(), self.training))
        return self.inner(x)


def batch(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.6 * torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % 3


def offset_std(rows: torch.Tensor, x: torch.Tensor) -> float:
    """std of rows - x, with x repeated draw-major to the number of rows."""
    reps = rows.shape[0] // x.shape[0]
    return float((rows - x.repeat(reps, 1, 1, 1)).std())


def recorded_step(name: str, **kw) -> tuple[Recorder, torch.Tensor]:
    torch.manual_seed(0)
    model = Recorder(create_model("linear", 3, 1, (0.5,), (0.25,), input_size=4)).train()
    x, y = batch()
    build_objective(name, eps=EPS, steps=2, **kw)(model, x, y, torch.Generator().manual_seed(5))
    return model, x


@pytest.mark.parametrize("name", ["epgd", "smoothadv"])
def test_epgd_and_smoothadv_training_loss_is_on_noisy_inputs(name):
    """Both trained forwards (adversarial and clean term) see m_train noisy copies of std sigma;
    before, they saw x_adv and x without noise (offsets <= eps)."""
    model, x = recorded_step(name, sigma=SIGMA, m_train=4)
    trained = [rows for rows, training in model.seen if training]
    assert len(trained) == 2
    for rows in trained:
        assert rows.shape[0] == 4 * x.shape[0]
        assert offset_std(rows, x) == pytest.approx(SIGMA, rel=0.1)


@pytest.mark.parametrize("name", ["epgd", "smoothadv", "cni-iw", "gaussian"])
def test_input_noise_objectives_need_sigma(name):
    with pytest.raises(ConfigError, match="sigma > 0"):
        build_objective(name, sigma=0.0)
    with pytest.raises(ConfigError, match="sigma > 0"):
        TrainConfig(data="synthetic", objective=name, sigma=0.0).validate()


@pytest.mark.parametrize("name", ["cni-iw", "adversarial"])
def test_cni_iw_attack_sees_the_same_input_noise_as_the_loss(name):
    """The attack's forwards (eval mode) carry noise of std sigma like the loss's (train mode);
    before, the PGD ran on the noise-free model (offsets <= eps)."""
    model, x = recorded_step(name, sigma=SIGMA)
    # (the attack's first forward, of one example, only counts the classes)
    attack = [rows for rows, training in model.seen if not training and rows.shape[0] == x.shape[0]]
    trained = [rows for rows, training in model.seen if training]
    assert len(attack) >= 2 and len(trained) == 2
    for rows in attack + trained:
        assert offset_std(rows, x) == pytest.approx(SIGMA, rel=0.15)


def test_adversarial_loss_with_draws_matches_its_formula():
    torch.manual_seed(0)
    model = create_model("linear", 3, 1, (0.5,), (0.25,), input_size=4)
    x, y = batch(6)
    x_adv = (x + 0.1).clamp(0, 1)
    stub = lambda *_: lambda xb, yb, generator=None: x_adv  # noqa: E731
    step = adversarial(stub, weight=0.3, sigma=0.2, draws=3)(model, x, y, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    noise = NoiseDistribution("gaussian", 0.2)
    n_adv, n_clean = (noise.sample((18, 1, 4, 4), g) for _ in range(2))
    expected = 0.3 * F.cross_entropy(model(x_adv.repeat(3, 1, 1, 1) + n_adv), y.repeat(3))
    expected += 0.7 * F.cross_entropy(model(x.repeat(3, 1, 1, 1) + n_clean), y.repeat(3))
    assert torch.allclose(step.loss, expected)
    with pytest.raises(ConfigError, match="draws"):
        adversarial(stub, draws=0)


def test_madry_weight_one_keeps_batchnorm_statistics_of_trained_batches_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    reference = copy.deepcopy(model)
    x, y = batch()
    x_adv = (x + 0.1).clamp(0, 1)
    stub = lambda *_: lambda xb, yb, generator=None: x_adv  # noqa: E731
    step = adversarial(stub, weight=1.0)(model, x, y)
    with torch.no_grad():
        reference(x_adv)  # the one batch the loss trains on
    bn, ref_bn = model[2], reference[2]
    assert torch.allclose(bn.running_mean, ref_bn.running_mean)
    assert torch.allclose(bn.running_var, ref_bn.running_var)
    assert int(bn.num_batches_tracked) == 1
    assert model.training and bn.training  # modes restored
    with torch.no_grad():
        clean_eval = model.eval()(x).argmax(1)
    assert step.clean_correct == int((clean_eval == y).sum())


def test_one_source_of_truth_for_the_input_noise_std():
    assert check_input_noise("cni-iw", 0.2, None) == 0.2
    assert check_input_noise("adversarial", 0.07, 0.07) == 0.0  # the layer adds it, once
    assert check_input_noise("standard", 0.0, 0.07) == 0.0
    for objective in ("cni-iw", "gaussian", "epgd", "smoothadv"):
        with pytest.raises(ConfigError, match="stack"):
            check_input_noise(objective, 0.07, 0.07)
    with pytest.raises(ConfigError, match="differs"):
        check_input_noise("adversarial", 0.1, 0.07)
    with pytest.raises(ConfigError, match="both add input noise"):
        TrainConfig(data="synthetic", noise="cni-i", objective="cni-iw", sigma=0.1).validate()
    with pytest.raises(ConfigError, match="from --sigma"):
        TrainConfig(data="synthetic", noise="cni-i", objective="adversarial").validate()
    with pytest.raises(ConfigError, match="noise_weight_decay"):
        TrainConfig(data="synthetic", noise_weight_decay=-1.0).validate()


def test_cni_i_layer_takes_its_std_from_sigma(tmp_path):
    """The cni-i layer's std is --sigma (it was noise_init = 0.25 before)."""
    metrics = train(
        TrainConfig(
            data="synthetic",
            noise="cni-i",
            sigma=0.07,
            epochs=1,
            eps=0.0,
            max_train_examples=128,
            eval_examples=64,
            device="cpu",
            out=str(tmp_path / "cnii"),
        )
    )
    model, meta = load_checkpoint(metrics["checkpoint"])
    assert meta["noise"]["kind"] == "cni-i" and meta["noise"]["sigma"] == pytest.approx(0.07)
    assert float(model.normalize.sigma) == pytest.approx(0.07)
