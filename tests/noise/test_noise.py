"""Noise injection: PNI / CNI statistics, switch, gradients, per-draw batching, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smoothinf.models import create_model, load_checkpoint, save_checkpoint
from smoothinf.noise import (
    NOISE_KINDS,
    NoisyLayer,
    inject_noise,
    noise_disabled,
    noise_parameters,
    noise_summary,
    param_groups,
    per_draw_noise,
    set_noise,
)
from smoothinf.smoothing import SmoothedClassifier


def small_cnn():
    torch.manual_seed(0)
    return create_model("mnist_cnn_small", 10, 1, (0.1307,), (0.3081,)).eval()


@pytest.mark.parametrize("kind", sorted(NOISE_KINDS))
def test_noise_disabled_equals_original(kind):
    model = small_cnn()
    x = torch.rand(4, 1, 28, 28)
    ref = model(x)
    inject_noise(model, kind)
    model.eval()
    assert not torch.equal(model(x), ref)  # noise stays on in eval()
    with noise_disabled(model):
        assert torch.equal(model(x), ref)
    assert not torch.equal(model(x), ref)  # switch restored
    set_noise(model, False)
    assert torch.equal(model(x), ref)


@pytest.mark.parametrize("name", ["mnist_cnn", "resnet20", "preact_resnet18", "linear"])
def test_works_on_registered_architectures(name):
    shape = (1, 28, 28) if name in ("mnist_cnn", "linear") else (3, 32, 32)
    model = create_model(name, 10, shape[0], (0.5,) * shape[0], (0.25,) * shape[0]).eval()
    inject_noise(model, "cni-w", rank=2)
    out = model(torch.rand(2, *shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_pni_noise_std_matches_alpha_times_std_w():
    layer = NoisyLayer(torch.nn.Conv2d(3, 8, 3), "pni", init=0.3)
    gen = torch.Generator().manual_seed(0)
    layer.noise_generator = gen
    eta = layer.sample_weight_noise(4000).detach()
    std_w = layer.layer.weight.detach().std()
    assert eta.std().item() == pytest.approx(0.3 * std_w.item(), rel=0.01)
    assert eta.mean().abs().item() < 0.01 * std_w.item()
    # Channel granularity: each output channel has its own alpha.
    layer = NoisyLayer(torch.nn.Linear(20, 4), "pni", granularity="channel", init=0.0)
    layer.alpha_w.data = torch.tensor([[0.1], [0.2], [0.4], [0.8]])
    eta = layer.sample_weight_noise(5000).detach()
    ratio = eta.std(dim=(0, 2)) / layer.layer.weight.detach().std()
    assert torch.allclose(ratio, torch.tensor([0.1, 0.2, 0.4, 0.8]), rtol=0.03)


def test_cni_covariance_is_diag_plus_low_rank():
    torch.manual_seed(1)
    layer = NoisyLayer(torch.nn.Linear(4, 3), "cni", rank=2)
    layer.diag.data = torch.rand(12) * 0.2
    layer.factor.data = torch.randn(12, 2) * 0.1
    layer.noise_generator = torch.Generator().manual_seed(2)
    eta = layer.sample_weight_noise(200_000).detach().reshape(200_000, 12).double()
    emp = torch.cov(eta.T)
    w = layer.layer.weight.detach().double()
    expected = torch.diag((w.std() * layer.diag.detach().double()).abs()) + (
        layer.factor.detach().double() @ layer.factor.detach().double().T
    )
    assert torch.allclose(emp, expected, atol=4e-3 * expected.abs().max().item() + 1e-4)
    # rank 0 is diagonal-only noise
    layer0 = NoisyLayer(torch.nn.Linear(4, 3), "cni", rank=0)
    assert layer0.sample_weight_noise(3).shape == (3, 3, 4)


@pytest.mark.parametrize("kind", ["pni-w", "pni-wa", "cni-w", "cni-i"])
def test_gradients_reach_noise_parameters_and_training_changes_them(kind):
    model = small_cnn()
    inject_noise(model, kind, learn_sigma=True)
    params = noise_parameters(model)
    assert params
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
        opt.step()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params, strict=True))


@pytest.mark.parametrize("module", [torch.nn.Conv2d(3, 5, 3, padding=1, groups=1), torch.nn.Linear(6, 4)])
@pytest.mark.parametrize("weight_noise", ["pni", "cni"])
def test_batched_per_draw_equals_loop_with_same_noise(module, weight_noise):
    layer = NoisyLayer(module, weight_noise, rank=3)
    d, n = 8, 3
    x = torch.rand(d * n, 3, 6, 6) if isinstance(module, torch.nn.Conv2d) else torch.rand(d * n, 6)
    layer.num_draws = d
    layer.noise_generator = torch.Generator().manual_seed(5)
    batched = layer(x)
    gen = torch.Generator().manual_seed(5)
    layer.noise_generator = gen
    eta = layer.sample_weight_noise(d)
    for j in range(d):  # rows are example-major: row i*d + j is draw j of example i
        w = module.weight + eta[j]
        xj = x[j::d]
        ref = (
            module._conv_forward(xj, w, module.bias)
            if isinstance(module, torch.nn.Conv2d)
            else F.linear(xj, w, module.bias)
        )
        assert torch.allclose(batched[j::d], ref, atol=1e-5)


def test_model_level_per_draw_moments_match_separate_forwards():
    model = small_cnn()
    inject_noise(model, "pni-w", init=0.5)
    x = torch.rand(1, 1, 28, 28)
    d = 400
    with torch.no_grad(), per_draw_noise(model, d, torch.Generator().manual_seed(0)):
        batched = model(x.repeat(d, 1, 1, 1))
    with torch.no_grad():
        looped = torch.cat([model(x) for _ in range(d)])
    assert batched.std(0).mean() > 0.01  # draws differ
    assert torch.allclose(batched.mean(0), looped.mean(0), atol=4 * looped.std(0).max().item() / d**0.5)
    assert torch.allclose(batched.std(0), looped.std(0), rtol=0.25)


def test_smoothed_classifier_gives_each_draw_its_own_weight_noise():
    model = small_cnn()
    inject_noise(model, "cni-w")
    smoothed = SmoothedClassifier(model, 0.0, 6, "logits", batch_size=64)
    logits = next(smoothed.draw_logits(torch.rand(2, 1, 28, 28), 6, torch.Generator().manual_seed(0)))
    assert logits.shape == (6, 2, 10)
    assert not torch.allclose(logits[0], logits[1])


def test_checkpoint_round_trip_of_injected_model(tmp_path):
    model = small_cnn()
    inject_noise(model, "cni-w", rank=3, layers=["features.0", "fc2"])
    inject_noise(model, "cni-i", sigma=0.1, learn_sigma=True)
    for p in noise_parameters(model):
        p.data.add_(0.01 * torch.randn_like(p))
    path = save_checkpoint(tmp_path / "noisy.safetensors", model, {"dataset": "mnist"})
    loaded, meta = load_checkpoint(path)
    assert meta["noise"]["stack"][0]["kind"] == "cni-w" and meta["noise"]["stack"][0]["rank"] == 3
    assert noise_summary(loaded) == noise_summary(model)
    x = torch.rand(3, 1, 28, 28)
    with noise_disabled(model), noise_disabled(loaded):
        assert torch.equal(model(x), loaded(x))
    a = dict(model.named_parameters())
    for name, p in loaded.named_parameters():
        assert torch.equal(p, a[name])


def test_param_groups_exclude_noise_from_weight_decay():
    model = small_cnn()
    inject_noise(model, "pni-w")
    groups = param_groups(model, weight_decay=5e-4)
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in noise_parameters(model)}


def test_bad_input_errors():
    model = small_cnn()
    with pytest.raises(ValueError, match="unknown noise kind"):
        inject_noise(model, "gaussian-w")
    with pytest.raises(ValueError, match="rank"):
        inject_noise(model, "cni-w", rank=-1)
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        inject_noise(torch.nn.Sequential(torch.nn.ReLU()), "pni-w")
    with pytest.raises(ValueError, match="no Conv2d/Linear layer named"):
        inject_noise(model, "pni-w", layers=["nope"])
    with pytest.raises(ValueError, match="granularity"):
        inject_noise(model, "pni-w", granularity="row")
    with pytest.raises(ValueError, match="normalize"):
        inject_noise(torch.nn.Sequential(torch.nn.Linear(2, 2)), "cni-i")


def test_smoothed_draws_share_weight_noise_across_examples():
    """Through SmoothedClassifier (example-major chunks of 3 draws): identical examples get identical
    logits within a draw (one weight noise per draw, shared) and different ones across draws."""
    model = torch.nn.Sequential(torch.nn.Flatten(), NoisyLayer(torch.nn.Linear(4, 3), "pni", init=1.0))
    smoothed = SmoothedClassifier(model, 0.0, 7, "logits", batch_size=6)  # 2 examples -> 3 draws/chunk
    x = torch.rand(1, 1, 2, 2).repeat(2, 1, 1, 1)
    with torch.no_grad():
        logits = torch.cat(list(smoothed.draw_logits(x, 7, torch.Generator().manual_seed(3))))  # (7, 2, 3)
    assert logits.shape == (7, 2, 3)
    assert torch.equal(logits[:, 0], logits[:, 1])
    assert (logits[1:, 0] - logits[:-1, 0]).abs().amax(-1).min() > 1e-4


def test_rows_for_draws_layout_and_draw_major_inverse():
    from smoothinf.noise.draws import draw_major, rows_for_draws

    x = torch.arange(3 * 4, dtype=torch.float32).view(3, 1, 2, 2)  # 3 examples
    noise = torch.randn(5, 3, 1, 2, 2, generator=torch.Generator().manual_seed(0))  # 5 draws, draw-major
    rows = rows_for_draws(x, 5, noise)
    assert rows.shape == (15, 1, 2, 2)
    for i in range(3):
        for j in range(5):
            assert torch.equal(rows[i * 5 + j], x[i] + noise[j, i])  # example-major rows
    out = torch.empty(15, 1, 2, 2)
    assert torch.equal(rows_for_draws(x, 5, noise, out=out), rows) and torch.equal(out, rows)
    assert torch.equal(rows_for_draws(x, 5), x.repeat_interleave(5, 0))
    assert rows_for_draws(x, 1) is x
    outputs = rows.flatten(1)[:, :2]  # (15, 2) per-row outputs
    back = draw_major(outputs, 5)  # (5, 3, 2)
    assert back.shape == (5, 3, 2)
    assert torch.equal(back[4, 2], outputs[2 * 5 + 4])
