"""Attacks: analytic checks on linear models, threat-model properties, equalities, MNIST strength."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from smoothinf.attacks import (
    EPGD,
    FGSM,
    PGD,
    NAttack,
    SmoothAdv,
    TransferAttack,
    build_attack,
    cw_loss,
    dlr_loss,
    expected_loss,
    list_attacks,
    robust_accuracy,
)
from smoothinf.attacks.base import ce_loss
from smoothinf.errors import SmoothinfError
from smoothinf.noise.distributions import NoiseDistribution


def linear_model(d: int, k: int = 2, seed: int = 0) -> nn.Module:
    """flatten + Linear(d, k) with fixed random weights, eval mode."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, k))
    return model.eval()


def margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        z = model(x)
    return -cw_loss(z, y)  # z_y - max_{j != y} z_j


def interior_batch(n: int, shape: tuple[int, ...], eps: float, seed: int = 1) -> torch.Tensor:
    """Images with every pixel in [eps, 1 - eps] (no clipping at the optimum)."""
    g = torch.Generator().manual_seed(seed)
    return eps + (1 - 2 * eps) * torch.rand((n, *shape), generator=g)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class ToyNoisyLinear(nn.Module):
    """A stand-in weight-noise layer following the per-draw contract (rows example-major: row
    i*num_draws + j is draw j of example i; one weight noise per draw) with an ``enabled`` switch."""

    def __init__(self, d: int, k: int, alpha: float = 0.5) -> None:
        super().__init__()
        self.lin = nn.Linear(d, k)
        self.alpha = alpha
        self.num_draws = 1
        self.noise_generator: torch.Generator | None = None
        self.enabled = True
        self.seen_draws: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        self.seen_draws.append(self.num_draws)
        if not self.enabled:
            return self.lin(x)
        d = self.num_draws
        w = self.lin.weight
        eta = torch.randn((d, *w.shape), generator=self.noise_generator) * self.alpha * w.detach().std()
        xs = x.view(x.shape[0] // d, d, -1)
        return (torch.einsum("bdi,doi->bdo", xs, w + eta) + self.lin.bias).reshape(x.shape[0], -1)


# ------------------------------------------------------------------------- linear: analytic optima
@pytest.mark.parametrize("random_start", [True, False])
def test_linf_pgd_reaches_linear_optimum(random_start):
    eps, shape = 0.05, (1, 4, 4)
    model = linear_model(16)
    x = interior_batch(8, shape, eps)
    y = torch.randint(0, 2, (8,), generator=gen(3))
    v = model[1].weight[y] - model[1].weight[1 - y]  # margin = v.x + c
    pgd = PGD(model, eps, alpha=eps / 2, steps=10, random_start=random_start)
    x_adv = pgd(x, y, gen())
    drop = margins(model, x, y) - margins(model, x_adv, y)
    torch.testing.assert_close(drop, eps * v.abs().sum(1), rtol=1e-4, atol=1e-5)


def test_l2_pgd_reaches_linear_optimum():
    eps, shape = 0.3, (1, 4, 4)
    model = linear_model(16)
    x = 0.25 + 0.5 * torch.rand((8, *shape), generator=gen(2))  # ||delta||_inf <= 0.3 < 0.25? see below
    y = torch.randint(0, 2, (8,), generator=gen(3))
    v = model[1].weight[y] - model[1].weight[1 - y]
    # The optimum moves each pixel by eps * |v_i| / ||v||_2 <= 0.25 for these weights: no clipping.
    assert (eps * v.abs() / v.norm(dim=1, keepdim=True)).max() < 0.25
    exact = PGD(model, eps, alpha=eps, steps=3, norm="l2", random_start=False)(x, y, gen())
    drop = margins(model, x, y) - margins(model, exact, y)
    torch.testing.assert_close(drop, eps * v.norm(dim=1), rtol=1e-4, atol=1e-5)
    rand = PGD(model, eps, alpha=eps, steps=40, norm="l2", random_start=True)(x, y, gen())
    drop = margins(model, x, y) - margins(model, rand, y)
    torch.testing.assert_close(drop, eps * v.norm(dim=1), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_is_optimal_for_linear(norm):
    eps = 0.04
    model = linear_model(16)
    x = interior_batch(8, (1, 4, 4), 0.25)
    y = torch.randint(0, 2, (8,), generator=gen(3))
    v = model[1].weight[y] - model[1].weight[1 - y]
    x_adv = FGSM(model, eps, norm=norm)(x, y)
    drop = margins(model, x, y) - margins(model, x_adv, y)
    want = eps * (v.abs().sum(1) if norm == "linf" else v.norm(dim=1))
    torch.testing.assert_close(drop, want, rtol=1e-4, atol=1e-5)


def test_targeted_pgd_reaches_target_on_linear():
    model = linear_model(16, k=3)
    x = interior_batch(16, (1, 4, 4), 0.0)
    target = (model(x).argmax(1) + 1) % 3
    x_adv = PGD(model, 1.0, alpha=0.1, steps=20, targeted=True)(x, target, gen())
    assert (model(x_adv).argmax(1) == target).all()


def test_losses_match_closed_forms():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 5.0, 1.0]])
    y = torch.tensor([0, 1])
    torch.testing.assert_close(cw_loss(z, y), torch.tensor([1.0 - 3.0, 5.0 - 2.0]))
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-2.0 / 3.0, 3.0 / 4.0]))
    torch.testing.assert_close(ce_loss(z, y), -z.log_softmax(1)[[0, 1], [0, 1]])


# ----------------------------------------------------------------------------- threat-model property
ATTACK_KINDS = ["fgsm", "pgd", "pgd_l2", "pgd_cw_restarts", "epgd", "smoothadv", "nattack"]


def _make(kind: str, model: nn.Module, eps: float):
    if kind == "fgsm":
        return FGSM(model, eps)
    if kind == "pgd":
        return PGD(model, eps, steps=3)
    if kind == "pgd_l2":
        return PGD(model, eps, steps=3, norm="l2")
    if kind == "pgd_cw_restarts":
        return PGD(model, eps, steps=2, restarts=2, loss="cw")
    if kind == "epgd":
        return EPGD(model, 0.2, 3, eps, steps=2, batch_size=4)
    if kind == "smoothadv":
        return SmoothAdv(model, NoiseDistribution.laplace(0.3), 3, eps, steps=2, norm="l2", batch_size=4)
    return NAttack(model, eps, population=4, max_queries=15)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 2),
    hw=st.integers(2, 4),
    eps=st.floats(0.0, 0.6),
    kind=st.sampled_from(ATTACK_KINDS),
    seed=st.integers(0, 1000),
)
def test_every_attack_stays_in_threat_model(n, c, hw, eps, kind, seed):
    model = linear_model(c * hw * hw, k=3, seed=seed)
    x = torch.rand((n, c, hw, hw), generator=gen(seed))
    x[0, 0, 0, 0] = 0.0  # boundary pixels
    x[-1, -1, -1, -1] = 1.0
    y = torch.randint(0, 3, (n,), generator=gen(seed + 1))
    x0 = x.clone()
    attack = _make(kind, model, eps)
    x_adv = attack(x, y, gen(seed))
    assert torch.equal(x, x0)  # input untouched
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    norm = delta.norm(dim=1) if attack.norm == "l2" else delta.abs().max(1).values
    assert (norm <= eps * (1 + 1e-5) + 1e-6).all()


# ------------------------------------------------------------------------------------- equalities
@pytest.mark.parametrize("norm,restarts,noisy", [("linf", 1, False), ("l2", 2, False), ("linf", 2, True)])
def test_epgd_m1_sigma0_equals_pgd(norm, restarts, noisy):
    torch.manual_seed(0)
    if noisy:  # a weight-noise model drawing its noise from the attack's generator
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), ToyNoisyLinear(8, 3)).eval()
    else:
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = torch.rand((6, 1, 4, 4), generator=gen(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    kw = dict(alpha=0.03, steps=5, norm=norm, restarts=restarts)
    a = PGD(model, 0.1, **kw)(x, y, gen(7))
    b = EPGD(model, 0.0, 1, 0.1, **kw)(x, y, gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, x)


def test_expected_loss_is_independent_of_chunking():
    """Chunked draws (accumulated gradients; SmoothAdv's two-pass replay) equal one batch on the
    same noise draws: the reference recomputes the loss of the mean softmax with autograd."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand((2, 1, 4, 4), generator=gen(0))
    y = torch.tensor([0, 2])
    noise = NoiseDistribution.gaussian(0.3)
    m = 6
    cases = [("loss", 4, 3), ("softmax", 4, 3), ("loss", 100, 1), ("softmax", 100, 1)]
    for reduce, batch_size, chunks in cases:
        g_chunk, l_chunk, p_chunk = expected_loss(
            model, x, y, ce_loss, noise=noise, m=m, reduce=reduce, generator=gen(5), batch_size=batch_size
        )  # batch_size 4: 2 draws per chunk -> 3 chunks
        # Reference: the same draws (sampled chunk by chunk from the same seed), one autograd graph.
        g = gen(5)
        eta = torch.cat([noise.sample((m * 2 // chunks, 1, 4, 4), g) for _ in range(chunks)])
        eta = eta.view(m, 2, 1, 4, 4)
        xa = x.clone().requires_grad_(True)
        logits = model((xa[None] + eta).reshape(m * 2, 1, 4, 4)).view(m, 2, 3)
        if reduce == "loss":
            loss = ce_loss(logits.reshape(m * 2, 3), y.repeat(m)).view(m, 2).mean(0)
        else:
            loss = ce_loss(logits.softmax(-1).mean(0).log(), y)
        (g_ref,) = torch.autograd.grad(loss.sum(), xa)
        torch.testing.assert_close(g_chunk, g_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(l_chunk, loss.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p_chunk, logits.softmax(-1).mean(0).detach(), rtol=1e-5, atol=1e-6)


def test_epgd_gives_each_draw_its_own_weight_noise_and_restores_state():
    layer = ToyNoisyLinear(16, 3)
    model = nn.Sequential(layer)
    model.train()
    x = torch.rand((4, 1, 4, 4), generator=gen(0))
    y = torch.tensor([0, 1, 2, 0])
    x_adv = EPGD(model, 0.1, 8, 0.1, steps=2, batch_size=16)(x, y, gen(1))
    # 4 examples * 8 draws, 16 rows per forward -> chunks of 4 draws, each seen by the layer.
    assert 4 in layer.seen_draws and 8 not in layer.seen_draws
    assert layer.num_draws == 1 and layer.noise_generator is None and layer.enabled
    assert model.training and layer.training
    # Same generator -> same result (noise drawn from it); different generator -> different.
    layer.seen_draws.clear()
    again = EPGD(model, 0.1, 8, 0.1, steps=2, batch_size=16)(x, y, gen(1))
    assert torch.equal(x_adv, again)
    assert not torch.equal(x_adv, EPGD(model, 0.1, 8, 0.1, steps=2)(x, y, gen(2)))


def test_attack_runs_in_eval_mode_and_restores_training():
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, 3))
    model.train()
    x = torch.rand((5, 1, 4, 4), generator=gen(0))
    y = torch.zeros(5, dtype=torch.long)
    a = PGD(model, 0.1, steps=3)(x, y, gen(0))
    b = PGD(model, 0.1, steps=3)(x, y, gen(0))
    assert torch.equal(a, b)  # dropout off during the attack
    assert model.training and model[1].training


def test_transfer_equals_source_attack_and_registry():
    src, tgt = linear_model(16, 3, seed=1), linear_model(16, 3, seed=2)
    x = torch.rand((4, 1, 4, 4), generator=gen(0))
    y = torch.tensor([0, 1, 2, 0])
    direct = PGD(src, 0.1, steps=3)(x, y, gen(4))
    assert torch.equal(TransferAttack(PGD(src, 0.1, steps=3))(x, y, gen(4)), direct)
    built = build_attack("transfer", tgt, 0.1, source=src, source_attack="pgd", steps=3)
    assert torch.equal(built(x, y, gen(4)), direct)
    registered = {"fgsm", "pgd", "apgd", "epgd", "smoothadv", "nattack", "square", "transfer", "autoattack"}
    assert set(list_attacks()) == registered


class _ScoresOnly(nn.Module):
    """Wraps a model and fails if anyone asks for gradients (black-box check)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled(), "NAttack must use scores only"
        return self.inner(x)


def test_nattack_black_box_succeeds_exactly_where_possible():
    eps = 0.05
    inner = linear_model(16, 2, seed=0)
    model = _ScoresOnly(inner)
    v = (inner[1].weight[0] - inner[1].weight[1]).detach()  # y = 0: margin = v.x + c
    budget = eps * v.abs().sum()  # the optimal margin drop
    with torch.no_grad():  # margin `budget` at the grey image, so small shifts span the range
        inner[1].bias.copy_(torch.stack([budget - 0.5 * v.sum(), torch.zeros(())]))
    x = 0.5 + 0.02 * (2 * torch.rand((40, 16), generator=gen(5)) - 1)
    target = torch.linspace(0.1, 2.0, 40) * budget  # margins from easy to impossible
    with torch.no_grad():
        cur = margins(inner, x.view(40, 1, 4, 4), torch.zeros(40, dtype=torch.long))
    x = (x + (target - cur)[:, None] * v / v.pow(2).sum()).view(40, 1, 4, 4)
    assert x.min() >= eps and x.max() <= 1 - eps
    y = torch.zeros(40, dtype=torch.long)
    m0 = margins(inner, x, y)
    atk = NAttack(model, eps, population=50, sigma=0.1, lr=0.05, max_queries=2000)
    x_adv = atk(x, y, gen(0))
    fooled = inner(x_adv).argmax(1) != y
    assert not (fooled & (m0 > budget)).any()  # never beyond the threat model
    easy = m0 < 0.5 * budget
    assert easy.sum() >= 8 and fooled[easy].all()
    assert atk.queries.max() <= 2000


# ---------------------------------------------------------------------------------------- judging
class _LookupDefence(nn.Module):
    """predict: class 1 iff pixel (0,0) > 0.5; forward (the 'surrogate') says the opposite."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = (x[:, 0, 0, 0] > 0.5).float()
        return torch.stack([p, 1 - p], 1)

    def predict(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.calls += 1
        return (x[:, 0, 0, 0] > 0.5).long()


def test_robust_accuracy_worst_case_by_hand():
    x = torch.full((4, 1, 2, 2), 0.2)
    x[1, 0, 0, 0] = x[2, 0, 0, 0] = 0.8
    y = torch.tensor([0, 1, 1, 1])  # example 3 is wrong clean (pixel 0.2 -> class 0)
    seen: list[torch.Tensor] = []

    def flip(which: int):
        def attack(xb, yb, generator=None):
            seen.append(xb.clone())
            out = xb.clone()
            hit = (xb[:, 0, 0, 0] == x[which, 0, 0, 0]) & (yb == y[which])
            out[hit, 0, 0, 0] = 1.0 - out[hit, 0, 0, 0]
            return out

        return attack

    defence = _LookupDefence()
    res = robust_accuracy(defence, x, y, {"a": flip(0), "b": flip(1)}, keep_adversarial=True)
    assert res.clean_correct.tolist() == [True, True, True, False]
    # attack a flips example 0's pixel: -> class 1, wrong; examples 1, 2 share pixel 0.8 but label 1 != 0.
    assert res.correct["a"].tolist() == [False, True, True, False]
    assert res.correct["b"].tolist() == [True, False, False, False]  # 1 and 2 look alike: both flipped
    assert res.robust.tolist() == [False, False, False, False]
    assert res.accuracy == {"a": 0.5, "b": 0.25}
    assert res.clean_accuracy == 0.75 and res.worst_case_accuracy == 0.0
    assert res.mean_accuracy == pytest.approx(0.375)
    assert all(s.shape[0] == 3 for s in seen)  # only clean-correct examples are attacked
    assert torch.equal(res.adversarial["a"][3], x[3])


def test_robust_accuracy_uses_predict_not_forward():
    x = torch.full((2, 1, 2, 2), 0.2)
    y = torch.tensor([0, 0])
    res = robust_accuracy(_LookupDefence(), x, y, {"none": lambda xb, yb, generator=None: xb})
    assert res.robust.all() and res.worst_case_accuracy == 1.0  # forward's argmax would say class 1


class _MiniSmoothed(nn.Module):
    """A local stand-in with SmoothedClassifier's interface (.model, .noise, .m, forward, predict)."""

    def __init__(self, model: nn.Module, sigma: float, m: int) -> None:
        super().__init__()
        self.model, self.noise, self.m = model, NoiseDistribution.gaussian(sigma), m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eta = self.noise.sample((self.m, *x.shape))
        logits = self.model((x[None] + eta).flatten(0, 1)).view(self.m, x.shape[0], -1)
        return logits.softmax(-1).mean(0).log()

    def predict(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        eta = self.noise.sample((self.m, *x.shape), generator)
        votes = self.model((x[None] + eta).flatten(0, 1)).argmax(-1).view(self.m, -1)
        return torch.nn.functional.one_hot(votes, 3).sum(0).argmax(1)


def test_expectation_attacks_unwrap_a_smoothed_classifier():
    base = linear_model(16, 3)
    smoothed = _MiniSmoothed(base, 0.2, 6)
    x = torch.rand((5, 1, 4, 4), generator=gen(0))
    y = base(x).argmax(1)
    for cls in (EPGD, SmoothAdv):
        atk = cls(smoothed, eps=0.1, steps=3)
        assert atk.model is base and atk.m == 6 and atk.noise.sigma == 0.2 and atk.judge is smoothed
        assert cls(smoothed, 0.0, 2, eps=0.1).m == 2  # explicit values win
        same = cls(base, 0.2, 6, 0.1, steps=3, judge=smoothed)
        torch.manual_seed(0)  # the judge's forward draws from the global generator
        first = atk(x, y, gen(3))
        torch.manual_seed(0)
        assert torch.equal(first, same(x, y, gen(3)))
    res = robust_accuracy(smoothed, x, y, {"epgd": EPGD(smoothed, eps=0.3, steps=5)}, generator=gen(1))
    assert res.worst_case_accuracy < res.clean_accuracy
    # PGD straight through the (soft, differentiable) smoothed forward also works.
    assert (PGD(smoothed, 0.1, steps=2)(x, y, gen(0)) - x).abs().max() <= 0.1 + 1e-6


# ------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    model = linear_model(16, 2)
    x = torch.rand((3, 1, 4, 4), generator=gen(0))
    y = torch.tensor([0, 1, 0])
    for make, msg in [
        (lambda: PGD(model, -0.1), "eps"),
        (lambda: PGD(model, 0.1, steps=0), "steps"),
        (lambda: PGD(model, 0.1, steps=2.5), "steps"),
        (lambda: PGD(model, 0.1, norm="l3"), "norm"),
        (lambda: PGD(model, 0.1, loss="hinge"), "loss"),
        (lambda: PGD(model, 0.1, restarts=0), "restarts"),
        (lambda: EPGD(model, 0.1, 0, 0.1), "m"),
        (lambda: EPGD(model, 0.1, 2), "eps"),
        (lambda: NAttack(model, 0.1, population=10, max_queries=5), "max_queries"),
        (lambda: build_attack("deepfool", model, 0.1), "unknown attack"),
        (lambda: build_attack("pgd", model, 0.1, stepz=3), "bad options"),
        (lambda: build_attack("transfer", model, 0.1), "source"),
    ]:
        with pytest.raises(SmoothinfError, match=msg):
            make()
    pgd = PGD(model, 0.1, steps=1)
    with pytest.raises(SmoothinfError, match="labels must lie"):
        pgd(x, torch.tensor([0, 1, 2]))
    with pytest.raises(SmoothinfError, match="mismatch"):
        pgd(x, torch.tensor([0, 1]))
    with pytest.raises(SmoothinfError, match=r"\[0, 1\]"):
        pgd(x * 2, y)
    with pytest.raises(SmoothinfError, match="4-D"):
        pgd(x[0], y)
    with pytest.raises(SmoothinfError, match="dlr"):
        PGD(model, 0.1, loss="dlr", steps=1)(x, y)


# ----------------------------------------------------------------------------- trained MNIST model
@pytest.fixture(scope="module")
def mnist200(mnist_small_model):
    model, x, y = mnist_small_model
    return model, x[:200], y[:200]


def _acc(model, x_adv, y) -> float:
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


def test_mnist_accuracy_monotone_in_eps_and_zero_at_eps_one(mnist200):
    model, x, y = mnist200
    accs = [_acc(model, PGD(model, eps, steps=10)(x, y, gen(0)), y) for eps in (0.0, 0.05, 0.1, 0.2, 0.3)]
    assert accs[0] > 0.9
    assert all(a >= b for a, b in zip(accs, accs[1:], strict=False)), accs
    assert accs[-1] < accs[0] - 0.3
    assert _acc(model, PGD(model, 1.0, steps=10)(x, y, gen(0)), y) == 0.0


def test_mnist_pgd_stronger_than_fgsm(mnist200):
    model, x, y = mnist200
    eps = 0.1
    fgsm = _acc(model, FGSM(model, eps)(x, y), y)
    pgd1 = _acc(model, PGD(model, eps, alpha=0.02, steps=10)(x, y, gen(0)), y)
    assert pgd1 <= fgsm


class _Threshold(nn.Module):
    """Logits (0, 100 (x_0 - 0.5)): class 1 iff the first pixel exceeds 0.5; the CE loss of label 0
    grows with that pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 100.0 * (x.flatten(1)[:, 0] - 0.5)
        return torch.stack([torch.zeros_like(z), z], 1)


def test_pgd_second_restart_succeeds_where_the_first_failed():
    """Hand-built restarts: with step 0 each restart returns its random start, which fools the model
    iff it moves pixel 0 above 0.5. Restart 1 is the single-restart run: its successes are kept,
    examples only restart 2 fools take restart 2's point, and failures keep the higher loss."""
    model, x, y = _Threshold(), torch.full((64, 1, 1, 2), 0.5), torch.zeros(64, dtype=torch.long)
    one = PGD(model, 0.25, alpha=0.0, steps=1)(x, y, gen(4))
    two = PGD(model, 0.25, alpha=0.0, steps=1, restarts=2)(x, y, gen(4))
    fooled1, fooled2 = one[:, 0, 0, 0] > 0.5, two[:, 0, 0, 0] > 0.5
    assert torch.equal(two[fooled1], one[fooled1])
    second_only = fooled2 & ~fooled1
    assert second_only.sum() >= 8  # about 1/4 of the examples
    assert (two[second_only, 0, 0, 0] != one[second_only, 0, 0, 0]).all()
    assert (two[~fooled2, 0, 0, 0] >= one[~fooled2, 0, 0, 0]).all()  # higher loss kept


def test_mnist_robust_accuracy_worst_case_below_each_attack(mnist200):
    model, x, y = mnist200
    # CE and CW losses fool overlapping but different sets (32.5% and 34.5% robust to each, 31% to both)
    attacks = {"pgd_ce": PGD(model, 0.1, steps=5), "pgd_cw": PGD(model, 0.1, steps=5, loss="cw")}
    res = robust_accuracy(model, x, y, attacks, generator=gen(0), keep_adversarial=True)
    with torch.no_grad():  # judge every kept x_adv independently: robust = clean and every attack failed
        robust = model(x).argmax(1) == y
        for x_adv in res.adversarial.values():
            robust &= model(x_adv).argmax(1) == y
    assert torch.equal(res.robust, robust)
    assert res.worst_case_accuracy == pytest.approx(robust.float().mean().item())
    assert res.worst_case_accuracy < min(res.accuracy.values())  # the attacks fool different examples
    assert res.accuracy["pgd_cw"] == pytest.approx(_acc(model, attacks["pgd_cw"](x, y, gen(0)), y), abs=0.06)


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def synthetic_checkpoints(tmp_path_factory):
    """Two linear classifiers trained briefly on the synthetic data set, saved as checkpoints."""
    from smoothinf.data import load_dataset
    from smoothinf.models import create_model_for
    from smoothinf.models.checkpoint import save_checkpoint

    train, info = load_dataset("synthetic", "train")
    x, y = train.tensors()
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model_for("linear", info, input_size=12)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(60):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        path = tmp_path_factory.mktemp("ckpt") / f"lin{seed}.safetensors"
        save_checkpoint(path, model.eval(), {"dataset": "synthetic"})
        paths.append(path)
    return paths


def _cli_json(capsys, argv: list[str]) -> dict:
    import json

    from smoothinf.cli import main

    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_attack_pgd_saves_adv_and_grid(synthetic_checkpoints, tmp_path, capsys):
    from safetensors.torch import load_file

    ckpt, source = synthetic_checkpoints
    base = ["attack", "--checkpoint", str(ckpt), "--max-examples", "100", "--device", "cpu", "--json"]
    saves = ["--save-adv", str(tmp_path / "adv.safetensors"), "--save-grid", str(tmp_path / "g.png")]
    out = _cli_json(capsys, [*base, "--attack", "pgd", "--steps", "10", "--eps", "0.1", *saves])
    assert out["n"] == 100 and out["clean_accuracy"] > 0.8
    assert out["robust_accuracy"] < out["clean_accuracy"]
    saved = load_file(str(tmp_path / "adv.safetensors"))
    assert (saved["x_adv"] - saved["x"]).abs().max() <= 0.1 + 1e-6
    assert saved["robust"].float().mean().item() == pytest.approx(out["robust_accuracy"])
    assert (tmp_path / "g.png").stat().st_size > 1000
    fgsm = _cli_json(capsys, [*base, "--attack", "fgsm", "--eps", "0.1"])
    assert out["robust_accuracy"] <= fgsm["robust_accuracy"]
    weak = _cli_json(
        capsys,
        [*base, "--attack", "transfer", "--source-checkpoint", str(source), "--steps", "10", "--eps", "0.1"],
    )
    assert out["robust_accuracy"] <= weak["robust_accuracy"] <= out["clean_accuracy"]
    eps0 = _cli_json(capsys, [*base, "--attack", "epgd", "--eps", "0", "--steps", "2"])
    assert eps0["robust_accuracy"] == eps0["clean_accuracy"]


def test_cli_attack_errors_exit_2(synthetic_checkpoints, capsys):
    from smoothinf.cli import main

    ckpt = str(synthetic_checkpoints[0])
    assert main(["attack", "--checkpoint", ckpt, "--attack", "pgd", "--eps", "-1", "--device", "cpu"]) == 2
    assert "eps" in capsys.readouterr().err
    assert main(["attack", "--checkpoint", ckpt, "--attack", "transfer", "--device", "cpu"]) == 2
    assert "source" in capsys.readouterr().err


def test_cli_attack_smoothed(synthetic_checkpoints, capsys):
    pytest.importorskip("smoothinf.smoothing")
    try:
        from smoothinf.smoothing import SmoothedClassifier  # noqa: F401
    except ImportError:
        pytest.skip("smoothing area missing")
    ckpt = str(synthetic_checkpoints[0])
    base = [
        "attack",
        "--checkpoint",
        ckpt,
        "--max-examples",
        "50",
        "--device",
        "cpu",
        "--json",
        "--smooth",
        "--sigma",
        "0.1",
        "--m",
        "16",
        "--eps",
        "0.1",
        "--steps",
        "5",
        "--m-attack",
        "4",
    ]
    for name in ("epgd", "smoothadv", "pgd"):
        out = _cli_json(capsys, [*base, "--attack", name])
        assert out["defended"].startswith("SmoothedClassifier(sigma=0.1, m=16")
        assert out["robust_accuracy"] < out["clean_accuracy"]
        assert out["judgements"] == 16  # the default for a randomised defence
    # 3 judgements of 50 images: the accuracy is a multiple of 1/150; the base model is judged once
    three = _cli_json(capsys, [*base, "--attack", "epgd", "--judgements", "3"])
    assert three["judgements"] == 3 and 150 * three["robust_accuracy"] == pytest.approx(
        round(150 * three["robust_accuracy"])
    )
    plain = base[:8] + base[13:]  # without --smooth --sigma 0.1 --m 16
    assert "--smooth" not in plain and plain[8:10] == ["--eps", "0.1"]
    assert _cli_json(capsys, [*plain, "--attack", "pgd", "--judgements", "3"])["judgements"] == 1


def test_tempered_expected_softmax_tends_to_the_hard_vote_tally():
    """With reduce="softmax" and a small temperature the mean probabilities are the share of the
    same draws whose argmax is each class (the hard vote's tally), chunked or not; T = 1 is the
    plain expected softmax; a bad temperature is a clear error."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand((5, 1, 4, 4), generator=gen(0))
    y = torch.tensor([0, 2, 1, 1, 0])
    noise = NoiseDistribution.gaussian(0.8)
    m, seen = 64, []

    def record(logits, labels):
        seen.append(logits.detach())
        return ce_loss(logits, labels)

    expected_loss(model, x, y, record, noise=noise, m=m, reduce="loss", generator=gen(5), batch_size=10**6)
    tally = torch.nn.functional.one_hot(seen[0].view(m, 5, 3).argmax(-1), 3).float().mean(0)
    assert 0.05 < tally.max(1).values.min() < 0.95  # the draws disagree: a real test of the tally
    for batch_size in (10**6, 20):  # one batch; 4 draws per chunk (the two-pass replay)
        grad, _, probs = expected_loss(
            model,
            x,
            y,
            ce_loss,
            noise=noise,
            m=m,
            reduce="softmax",
            generator=gen(5),
            batch_size=batch_size,
            temperature=1e-4,
        )
        torch.testing.assert_close(probs, tally, atol=1e-3, rtol=0)
        assert grad.shape == x.shape and torch.isfinite(grad).all()
    _, _, plain = expected_loss(
        model, x, y, ce_loss, noise=noise, m=m, reduce="softmax", generator=gen(5), batch_size=10**6
    )
    torch.testing.assert_close(plain, seen[0].view(m, 5, 3).softmax(-1).mean(0), atol=1e-6, rtol=0)
    with pytest.raises(SmoothinfError, match="temperature must be a number > 0"):
        EPGD(model, 0.1, 8, 0.1, temperature=0)
    for bad in (float("inf"), float("nan"), True, "0.5"):
        with pytest.raises(SmoothinfError, match="temperature must be a number > 0"):
            EPGD(model, 0.1, 8, 0.1, temperature=bad)
