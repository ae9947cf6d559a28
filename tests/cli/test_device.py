"""Device-agnostic checks of the paths that run on a GPU: smoothing, certification, per-draw weight
noise, attacks and a training step with and without bf16 autocast.

Every test takes the ``device`` fixture (tests/conftest.py): ``pytest --device cuda tests/test_device.py``
runs them on CUDA, the default on the CPU. Values are checked against closed forms (a linear
classifier), exact identities (zero weight noise, one-step attacks) or a float32 reference; noise
streams are only compared within one device (CUDA's Philox and the CPU's generator differ).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm

from smoothinf.attacks import EPGD, PGD, SmoothAdv
from smoothinf.errors import SmoothinfError
from smoothinf.models import create_model
from smoothinf.noise import (
    NoiseDistribution,
    NoisyLayer,
    grad_chunk_rows,
    inject_noise,
    per_draw_noise,
    saved_bytes_per_row,
)
from smoothinf.smoothing import SmoothedClassifier, certify, predict_with_abstain, top_k
from smoothinf.training.objectives import build_objective
from smoothinf.training.trainer import TrainConfig, train
from support import Linear2  # the binary linear classifier of the smoothing tests

CIFAR = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))


@pytest.fixture
def exact_float32():
    """cuDNN convolutions and matmuls in float32, not TF32 (cuDNN's default on Ampere and later),
    for tight comparisons."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def linear_at_margins(device, margins_in_sigma, sigma, shape=(3, 8, 8)):
    """A Linear2 on ``device`` and inputs x_i (in [0, 1]) whose margins w.x_i + b are k_i sigma ||w||
    (k = ``margins_in_sigma``): the Gaussian-smoothed classifier's true p_A is Phi(|k_i|) and the
    certified L2 radius with the true p_A is |k_i| sigma."""
    w = torch.randn(math.prod(shape), generator=torch.Generator().manual_seed(0))
    k = torch.tensor(margins_in_sigma, dtype=torch.float32)
    t = k * sigma * w.norm()
    x = 0.5 + t[:, None] * w[None] / w.norm() ** 2
    assert x.min() >= 0 and x.max() <= 1
    model = Linear2(w, -0.5 * float(w.sum())).to(device)
    return model, x.view(-1, *shape).to(device), k


def gen(device, seed=0):
    return torch.Generator(device=device).manual_seed(seed)


# ------------------------------------------------------------------------------------- smoothing
def test_hard_vote_frequency_matches_closed_form(device):
    sigma, m = 0.25, 20000
    model, x, k = linear_at_margins(device, [-1.0, -0.3, 0.0, 0.5, 1.5], sigma)
    counts = SmoothedClassifier(model, sigma, m, "hard").vote_counts(x, gen(device, 1))
    assert counts.device.type == device.type
    assert torch.equal(counts.sum(1).cpu(), torch.full((5,), float(m)))
    p = norm.cdf(k.double().numpy())
    freq = counts[:, 1].double().cpu().numpy() / m
    assert np.all(np.abs(freq - p) <= 4.5 * np.sqrt(p * (1 - p) / m) + 1e-9), (freq, p)


def test_m1_sigma0_is_the_base_model(device):
    torch.manual_seed(0)
    model = create_model("resnet20", 10, 3, *CIFAR).eval().to(device)
    x = torch.rand(8, 3, 32, 32, device=device)
    with torch.no_grad():
        logits = model(x)
    assert torch.equal(SmoothedClassifier(model, 0.0, 1, "hard").predict(x), logits.argmax(1))
    soft = SmoothedClassifier(model, 0.0, 1, "soft")(x)
    assert torch.allclose(soft, logits.log_softmax(1), atol=1e-5)


def test_same_seed_same_votes_other_seed_other_votes(device):
    model, x, _ = linear_at_margins(device, [0.0, 0.1, -0.1], 0.25)
    smoothed = SmoothedClassifier(model, 0.25, 500, "hard", batch_size=300)  # several chunks
    a = smoothed.vote_counts(x, gen(device, 3))
    assert torch.equal(a, smoothed.vote_counts(x, gen(device, 3)))
    assert not torch.equal(a, smoothed.vote_counts(x, gen(device, 4)))


def test_weighted_soft_and_topk_votes_on_device(device):
    model, x, _ = linear_at_margins(device, [1.0, -1.0], 0.25)
    weighted = SmoothedClassifier(model, 0.25, 64, "weighted").vote_counts(x, gen(device))
    assert torch.allclose(weighted.sum(1), torch.full((2,), 64 * 1.5, device=device))  # 2^0 + 2^-1 per draw
    topk = SmoothedClassifier(model, 0.25, 64, "weighted", weights=top_k(1)).predict_topk(x, 2, gen(device))
    assert topk.tolist() == [[1, 0], [0, 1]]
    xs = x.clone().requires_grad_(True)
    out = SmoothedClassifier(model, 0.25, 64, "soft")(xs, gen(device))
    (grad,) = torch.autograd.grad(out[:, 1].sum(), xs)
    # d/dx of the mean p_1 is a positive multiple of w for every example
    w = model.w.detach()
    assert torch.all(grad.flatten(1) @ w > 0)


def test_cpu_generator_drives_a_device_model(device):
    """A CPU generator samples on the CPU and its noise moves to the model's device: the same
    numbers as on the CPU (NoiseDistribution.sample used to fill a device tensor from a CPU
    generator, an error on CUDA)."""
    noise = NoiseDistribution.gaussian(0.5)
    got = noise.sample((3, 5), torch.Generator().manual_seed(0), device=device)
    assert got.device.type == device.type
    assert torch.equal(got.cpu(), torch.randn((3, 5), generator=torch.Generator().manual_seed(0)) * 0.5)
    model, x, _ = linear_at_margins(device, [0.0, 1.0], 0.25)
    counts = SmoothedClassifier(model, 0.25, 100, "hard").vote_counts(x, torch.Generator().manual_seed(0))
    assert counts.sum().item() == 200
    step = build_objective("gaussian", sigma=0.1)(
        model, x, torch.tensor([0, 1], device=device), torch.Generator()
    )
    assert torch.isfinite(step.loss)


def test_noise_buffer_reused_with_an_indexless_generator(device, monkeypatch):
    """``torch.Generator(device="cuda").device`` has no index; the noise buffer must still be reused
    across chunks (it was reallocated for every chunk on CUDA)."""
    model, x, _ = linear_at_margins(device, [0.0, 1.0], 0.25)
    smoothed = SmoothedClassifier(model, 0.25, 40, "hard", batch_size=20)  # 4 chunks of 10 draws
    seen = []
    original = SmoothedClassifier._noise

    def spy(self, x, draws, generator, out):
        noise = original(self, x, draws, generator, out)
        seen.append(noise.untyped_storage().data_ptr())
        return noise

    monkeypatch.setattr(SmoothedClassifier, "_noise", spy)
    with torch.no_grad():
        smoothed.vote_counts(x, torch.Generator(device=device.type).manual_seed(0))
    assert len(seen) == 4 and len(set(seen)) == 1


def test_input_on_another_device_is_a_clear_error(device):
    if device.type == "cpu":
        pytest.skip("needs a second device: run with --device cuda")
    model, x, _ = linear_at_margins(device, [0.0], 0.25)
    with pytest.raises(SmoothinfError, match="move it with"):
        SmoothedClassifier(model, 0.25, 4).predict(x.cpu())


# --------------------------------------------------------------------------------- certification
def test_certified_radius_matches_linear_closed_form(device):
    """For a linear classifier the radius with the true p_A is |k| sigma; with n = 100000 the
    Clopper-Pearson bound costs about 1-3% of it."""
    sigma = 0.25
    model, x, k = linear_at_margins(device, [0.5, 1.0, 2.0, -1.0], sigma)
    pred, radius = certify(model, x, sigma, n0=100, n=100_000, alpha=0.001, generator=gen(device, 1))
    assert pred.device.type == "cpu" and radius.dtype == torch.float64
    assert pred.tolist() == [1, 1, 1, 0]
    ratio = radius.numpy() / (k.abs().double().numpy() * sigma)
    assert np.all((ratio > 0.95) & (ratio < 1.003)), ratio
    abstain = predict_with_abstain(SmoothedClassifier(model, sigma), x, 1000, 0.001, gen(device, 2))
    assert abstain.tolist() == [1, 1, 1, 0]


# ------------------------------------------------------------------------- per-draw weight noise
@pytest.mark.parametrize("layer", ["conv", "linear"])
@pytest.mark.parametrize("weight_noise", ["pni", "cni"])
def test_per_draw_weight_noise_equals_loop_with_same_noise(device, exact_float32, layer, weight_noise):
    module = torch.nn.Conv2d(3, 5, 3, padding=1) if layer == "conv" else torch.nn.Linear(6, 4)
    noisy = NoisyLayer(module, weight_noise, rank=3).to(device)
    d, n = 8, 3
    x = torch.rand((d * n, 3, 6, 6) if layer == "conv" else (d * n, 6), device=device)
    g = gen(device, 5)
    noisy.num_draws, noisy.noise_generator = d, g
    state = g.get_state()
    batched = noisy(x)
    g.set_state(state)
    eta = noisy.sample_weight_noise(d)  # the same numbers the forward drew
    for j in range(d):  # example-major rows: row i*d + j is draw j of example i
        w = module.weight + eta[j]
        xj = x[j::d]
        ref = module._conv_forward(xj, w, module.bias) if layer == "conv" else F.linear(xj, w, module.bias)
        assert torch.allclose(batched[j::d], ref, atol=1e-5)


@pytest.mark.parametrize("kind", ["pni-w", "cni-w"])
def test_per_draw_forward_of_resnet20_with_zero_noise_is_the_plain_forward(device, exact_float32, kind):
    """With the noise scales at zero every draw's weights are W: the grouped per-draw forward of
    d draws must equal d copies of the plain forward."""
    torch.manual_seed(0)
    model = create_model("resnet20", 10, 3, *CIFAR).eval()
    inject_noise(model, kind)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha_w", "diag", "factor")):
                p.zero_()
    model.to(device)
    x = torch.rand(4, 3, 32, 32, device=device)
    d = 6
    with torch.no_grad():
        plain = model(x)
        with per_draw_noise(model, d, gen(device)):
            batched = model(x.repeat_interleave(d, 0))
    assert torch.allclose(batched.view(4, d, 10), plain[:, None].expand(4, d, 10), atol=1e-4)


def test_smoothed_draws_get_their_own_weight_noise(device):
    torch.manual_seed(0)
    model = create_model("resnet20", 10, 3, *CIFAR).eval()
    inject_noise(model, "pni-w", init=0.5)
    model.to(device)
    logits = torch.cat(
        list(
            SmoothedClassifier(model, 0.0, 6, "logits").draw_logits(
                torch.rand(2, 3, 32, 32, device=device), 6, gen(device)
            )
        )
    )
    assert logits.shape == (6, 2, 10)
    assert all(not torch.allclose(logits[0], logits[j]) for j in range(1, 6))
    # one draw's noise is shared by the examples: example 0 twice in a batch gets equal logits
    x1 = torch.rand(1, 3, 32, 32, device=device).expand(2, 3, 32, 32).contiguous()
    same = next(SmoothedClassifier(model, 0.0, 3, "logits").draw_logits(x1, 3, gen(device)))
    assert torch.allclose(same[:, 0], same[:, 1], atol=1e-5)


def test_checkpoint_round_trip_on_device(device, tmp_path):
    from smoothinf.models import load_checkpoint, save_checkpoint
    from smoothinf.noise import noise_disabled

    torch.manual_seed(0)
    model = create_model("resnet20", 10, 3, *CIFAR).eval()
    inject_noise(model, "cni-w")
    model.to(device)
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"dataset": "cifar10"})
    loaded, _ = load_checkpoint(path, device=device)
    assert next(loaded.parameters()).device.type == device.type
    x = torch.rand(3, 3, 32, 32, device=device)
    with torch.no_grad(), noise_disabled(model), noise_disabled(loaded):
        assert torch.allclose(loaded(x), model(x), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------ attacks
@pytest.mark.parametrize("attack", ["pgd", "epgd", "smoothadv", "smoothadv-chunked"])
def test_attacks_reach_the_linear_optimum(device, attack):
    """For a linear binary classifier every (expected) loss gradient is a positive multiple of -w
    for class 1 (+w for class 0), so a full step from x reaches x -/+ eps sign(w), clipped."""
    model, x, k = linear_at_margins(device, [0.5, 1.0, -0.5, -1.0], 0.1)
    y = (k > 0).long().to(device)
    eps = 0.05
    kw = dict(eps=eps, alpha=eps, steps=2, random_start=False)
    if attack == "pgd":
        adv = PGD(model, **kw)
    elif attack == "epgd":
        adv = EPGD(model, 0.1, 8, **kw)
    else:
        adv = SmoothAdv(model, 0.1, 8, batch_size=8 if attack.endswith("chunked") else None, **kw)
    x_adv = adv(x, y, gen(device))
    direction = torch.where(y[:, None] == 1, -1.0, 1.0) * model.w.detach().sign()[None]
    expected = (x.flatten(1) + eps * direction).clamp(0, 1)
    assert torch.allclose(x_adv.flatten(1), expected, atol=1e-6)


def test_attacks_with_restarts_and_weight_noise_stay_in_threat_model(device):
    torch.manual_seed(0)
    model = create_model("resnet20", 10, 3, *CIFAR).eval()
    inject_noise(model, "pni-w")
    model.to(device)
    x = torch.rand(6, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (6,), device=device)
    eps = 8 / 255
    for attack in (PGD(model, eps, steps=2, restarts=2), EPGD(model, 0.1, 4, eps, steps=2)):
        x_adv = attack(x, y, gen(device))
        assert x_adv.device.type == device.type
        assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        assert (x_adv != x).any()


def test_attack_without_generator_uses_the_device(device):
    model, x, k = linear_at_margins(device, [0.5, -0.5], 0.1)
    torch.manual_seed(1)
    a = EPGD(model, 0.1, 4, eps=0.05, steps=2)(x, (k > 0).long().to(device))
    torch.manual_seed(1)
    b = EPGD(model, 0.1, 4, eps=0.05, steps=2)(x, (k > 0).long().to(device))
    assert torch.equal(a, b)  # the global seed reproduces the run through ensure_generator


def test_saved_activation_bytes_by_hand(device):
    """Linear saves its input (12 floats), ReLU its output (5 floats); weights are not counted.
    The probe leaves training flags and the global RNG as they were, and runs once per shape."""
    model = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(12, 5),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(5, 3),
    ).to(device)
    calls = []
    model[1].register_forward_hook(lambda *_: calls.append(1))
    x = torch.rand(7, 3, 2, 2, device=device)
    state = torch.get_rng_state()
    assert saved_bytes_per_row(model, x) == 4 * (12 + 5)
    assert saved_bytes_per_row(model, x[:2]) == 4 * (12 + 5) and len(calls) == 1  # cached
    assert model.training and model[3].training and torch.equal(torch.get_rng_state(), state)
    assert grad_chunk_rows(model, x, budget_bytes=68 * 10 + 67) == 10
    assert saved_bytes_per_row(model, torch.rand(7, 3, 4, 1, device=device)) == 4 * (12 + 5)
    rows = grad_chunk_rows(model, x)
    assert rows is None if device.type == "cpu" else rows > 1000


def test_gradient_chunks_bounded_by_saved_activations(monkeypatch):
    """The attack's gradient chunks take the memory bound (CUDA's default; forced here on the CPU),
    its no-grad evaluations do not."""
    import smoothinf.attacks.pgd as pgd

    sizes = []
    real = pgd.expected_loss

    def spy(*args, **kwargs):
        sizes.append((kwargs["need_grad"], kwargs["batch_size"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(pgd, "expected_loss", spy)
    monkeypatch.setattr(pgd, "grad_chunk_rows", lambda model, x: 3 * x.shape[0])
    model, x, k = linear_at_margins("cpu", [0.5, -0.5], 0.1)
    EPGD(model, 0.1, 8, eps=0.05, steps=2, restarts=2)(x, (k > 0).long(), gen("cpu"))
    assert {s for g, s in sizes if g} == {6}
    assert {s for g, s in sizes if not g} == {pgd.chunk_rows(x)}


# ---------------------------------------------------------------------------------------- training
def test_bf16_autocast_step_close_to_float32(device):
    """One PGD-AT step under bf16 autocast: finite gradients on every weight, and the loss of the
    standard objective within bf16 precision of the float32 loss."""
    torch.manual_seed(0)
    model = create_model("mnist_cnn_small", 10, 1, (0.1307,), (0.3081,)).to(device).train()
    x = torch.rand(16, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (16,), device=device)
    standard = build_objective("standard")
    loss32 = standard(model, x, y, gen(device)).loss
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss16 = standard(model, x, y, gen(device)).loss
    assert loss16.dtype == torch.float32  # cross_entropy runs in float32 under autocast
    assert abs(loss16.item() - loss32.item()) < 0.03 * loss32.item()
    pgd_at = build_objective("adversarial", eps=8 / 255, steps=2, weight=1.0)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        step = pgd_at(model, x, y, gen(device))
    model.zero_grad()
    step.loss.float().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert 0 <= step.adv_correct <= 16


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16"])
def test_training_learns_on_device(device, tmp_path, amp):
    metrics = train(
        TrainConfig(
            data="synthetic",
            model="mnist_cnn_small",
            objective="adversarial",
            epochs=2,
            max_train_examples=1000,
            lr=3e-3,
            eps=0.05,
            attack_steps=2,
            amp=amp,
            eval_examples=200,
            eval_pgd_steps=2,
            device=device.type,
            out=str(tmp_path / "run"),
        )
    )
    assert metrics["test_clean"] > 0.7
