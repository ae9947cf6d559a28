"""Smoothed inference: analytic checks on a linear classifier, chunking, votes, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm

from smoothinf.errors import SmoothinfError
from smoothinf.models import create_model
from smoothinf.noise import NoiseDistribution
from smoothinf.smoothing import (
    SmoothedClassifier,
    binomial_two_sided_pvalue,
    certified_accuracy,
    certify,
    class_ranks,
    clopper_pearson_lower,
    predict_with_abstain,
    reciprocal_rank,
    top_k,
)
from support import Linear2


def make_linear(seed=0, shape=(1, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(int(np.prod(shape)), generator=g)
    return Linear2(w, 0.0), w, shape


def margin(model, x):
    return (x.flatten(1) @ model.w.detach() + model.b).double()


def test_hard_vote_frequency_matches_closed_form():
    model, w, shape = make_linear()
    x = torch.rand((6,) + shape, generator=torch.Generator().manual_seed(1))
    model.b = -float(margin(model, x).mean())
    sigma, m = 0.25, 20000
    smoothed = SmoothedClassifier(model, sigma, m, "hard", batch_size=6 * 2000)
    counts = smoothed.vote_counts(x, torch.Generator().manual_seed(2))
    assert torch.allclose(counts.sum(1), torch.full((6,), float(m)))
    p = norm.cdf((margin(model, x) / (sigma * w.norm())).numpy())
    freq = counts[:, 1].numpy() / m
    tol = 4.5 * np.sqrt(p * (1 - p) / m) + 1e-9
    assert np.all(np.abs(freq - p) <= tol), (freq, p)
    assert p.min() < 0.5 < p.max()  # both classes are exercised


def test_soft_and_weighted_votes_match_closed_forms():
    model, w, shape = make_linear(3)
    x = torch.rand((4,) + shape, generator=torch.Generator().manual_seed(4))
    model.b = -float(margin(model, x).mean())
    sigma, m = 0.3, 40000
    s = sigma * float(w.norm())
    mu = margin(model, x).numpy()
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    sig = 1 / (1 + np.exp(-(mu[:, None] + s * nodes[None])))
    soft = (sig * weights[None]).sum(1) / np.sqrt(2 * np.pi)
    smoothed = SmoothedClassifier(model, sigma, m, "soft", batch_size=4 * 4000)
    probs = smoothed(x, torch.Generator().manual_seed(5)).detach().exp()[:, 1].double().numpy()
    assert np.allclose(probs, soft, atol=4e-3)
    # Weighted vote with w(r) = 2^-r: class 1 gets 1 when on top, 1/2 otherwise.
    p1 = norm.cdf(mu / s)
    weighted = SmoothedClassifier(model, sigma, m, "weighted", batch_size=4 * 4000)
    sums = weighted.vote_counts(x, torch.Generator().manual_seed(6)).double().numpy() / m
    assert np.allclose(sums[:, 1], p1 + 0.5 * (1 - p1), atol=0.01)
    assert np.allclose(sums.sum(1), 1.5)


def test_rank_weights_by_exact_enumeration():
    logits = torch.tensor([[0.1, 3.0, -1.0, 3.0], [2.0, 1.0, 0.0, -1.0]])
    ranks = class_ranks(logits)
    assert ranks.tolist() == [[2, 0, 3, 1], [0, 1, 2, 3]]  # tie between classes 1 and 3 -> lower first
    assert top_k(2)(ranks).tolist() == [[0, 1, 0, 1], [1, 1, 0, 0]]
    assert torch.allclose(reciprocal_rank()(ranks)[1], torch.tensor([1, 1 / 2, 1 / 3, 1 / 4]))

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits.repeat_interleave(x.shape[0] // 2, 0)  # rows are example-major

    smoothed = SmoothedClassifier(Fixed(), 0.0, 5, "weighted", weights=reciprocal_rank())
    counts = smoothed.vote_counts(torch.zeros(2, 1, 2, 2))
    assert torch.allclose(counts, 5 * reciprocal_rank()(ranks))
    assert smoothed.predict(torch.zeros(2, 1, 2, 2)).tolist() == [1, 0]


def test_m1_sigma0_reproduces_base_model(mnist_small_model):
    model, x, _ = mnist_small_model
    x = x[:64]
    base = model(x)
    for vote in ("hard", "weighted", "soft", "logits"):
        smoothed = SmoothedClassifier(model, 0.0, 1, vote)
        assert torch.equal(smoothed.predict(x), base.argmax(1))
    assert torch.equal(SmoothedClassifier(model, 0.0, 1, "logits")(x), base)
    assert torch.allclose(SmoothedClassifier(model, 0.0, 1, "soft")(x), base.log_softmax(1), atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 4, 4), (1, 5, 5)])
def test_results_independent_of_chunk_size(shape):
    model, _, _ = make_linear(7, shape)
    x = torch.rand((5,) + shape, generator=torch.Generator().manual_seed(8))
    model.b = -float(margin(model, x).mean())
    ref = None
    for bs in (5, 15, 40, 5 * 64):
        smoothed = SmoothedClassifier(model, 0.5, 64, "soft", batch_size=bs)
        out = smoothed.vote_counts(x, torch.Generator().manual_seed(9))
        if ref is None:
            ref = out
        assert torch.allclose(out, ref, atol=1e-5)


def test_batched_equals_one_example_at_a_time_with_same_draws():
    model, _, shape = make_linear(10)
    x = torch.rand((3,) + shape, generator=torch.Generator().manual_seed(11))
    smoothed = SmoothedClassifier(model, 0.4, 16, "logits", batch_size=1000)
    chunks = list(smoothed.draw_logits(x, 16, torch.Generator().manual_seed(12)))
    batched = torch.cat(chunks)  # (16, 3, 2)
    noise = torch.randn((16,) + tuple(x.shape), generator=torch.Generator().manual_seed(12)) * 0.4
    for i in range(3):
        for j in range(16):
            one = model((x[i] + noise[j, i])[None])[0]
            assert torch.allclose(batched[j, i], one, atol=1e-5)


def test_predict_topk_rankwise():
    logits = torch.tensor([[1.0, 3.0, 2.0]])

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits.repeat(x.shape[0], 1)

    smoothed = SmoothedClassifier(Fixed(), 0.0, 3, "hard")
    assert smoothed.predict_topk(torch.zeros(1, 1, 2, 2), 3).tolist() == [[1, 2, 0]]


def test_certified_radius_bounded_by_distance_and_converges():
    model, w, shape = make_linear(13)
    x = torch.rand((8,) + shape, generator=torch.Generator().manual_seed(14))
    model.b = -float(margin(model, x).median())
    sigma = 0.25
    dist = (margin(model, x).abs() / w.norm()).numpy()
    label = (margin(model, x) > 0).long()
    radii = []
    for n in (1000, 100_000):
        pred, radius = certify(
            model,
            x,
            sigma,
            n0=100,
            n=n,
            alpha=0.001,
            batch_size=8 * 5000,
            generator=torch.Generator().manual_seed(15),
        )
        certified = pred >= 0
        assert torch.all(pred[certified] == label[certified])
        assert np.all(radius.numpy() <= dist + 1e-6)
        radii.append(radius.numpy())
    assert radii[1].sum() > radii[0].sum()
    # Large n: the certified radius approaches min(distance, the n-limited cap 3.8 sigma).
    exact = np.minimum(dist, 3.8 * sigma)
    assert np.all(exact - radii[1] < 0.35 * sigma)


def test_radius_at_all_successes_is_381_sigma():
    p = clopper_pearson_lower(np.array([100_000]), 100_000, 0.001)[0]
    assert round(float(norm.ppf(p)), 2) == 3.81


def test_clopper_pearson_coverage():
    rng = np.random.default_rng(0)
    for p_true, n in ((0.7, 50), (0.95, 200), (0.5, 20)):
        k = rng.binomial(n, p_true, size=20000)
        lower = clopper_pearson_lower(k, n, 0.05)
        assert (lower <= p_true).mean() >= 0.95 - 0.006


def test_vectorised_pvalue_matches_binomtest():
    for a, b in ((10, 10), (30, 12), (0, 5), (57, 43), (99, 1)):
        ours = binomial_two_sided_pvalue(np.array([a]), np.array([b]))[0]
        assert ours == pytest.approx(binomtest(a, a + b, 0.5).pvalue, rel=1e-9, abs=1e-12)


def test_abstain_on_tie_not_on_clear_winner():
    model, w, shape = make_linear(16)
    x = torch.rand((2,) + shape, generator=torch.Generator().manual_seed(17))
    # Example 0 on the boundary (50/50 votes), example 1 far on the positive side.
    model.b = -float(margin(model, x[:1])[0])
    x1_margin = float(margin(model, x[1:])[0])
    if x1_margin < 0:
        model.w.data = -model.w.data
        model.b = -model.b
    x = torch.cat([x[:1], x[1:]])
    smoothed = SmoothedClassifier(model, 0.01, 1, "hard")
    pred = predict_with_abstain(smoothed, x, n=2000, alpha=0.001, generator=torch.Generator().manual_seed(18))
    assert pred[0].item() == -1
    assert pred[1].item() == 1


def test_certified_accuracy_curve():
    acc = certified_accuracy(
        torch.tensor([0.0, 0.3, 0.6, 1.0]), torch.tensor([False, True, True, True]), [0.0, 0.5, 1.0, 1.5]
    )
    assert acc.tolist() == [0.75, 0.5, 0.25, 0.0]


def test_bad_input_is_a_clear_value_error():
    model, _, shape = make_linear()
    x = torch.rand((2,) + shape)
    with pytest.raises(ValueError, match="sigma"):
        SmoothedClassifier(model, -0.1, 4)
    with pytest.raises(ValueError, match="m must be"):
        SmoothedClassifier(model, 0.1, 0)
    with pytest.raises(ValueError, match="vote"):
        SmoothedClassifier(model, 0.1, 4, vote="majority")
    with pytest.raises(ValueError, match="noise"):
        SmoothedClassifier(model, 0.1, 4, noise="cauchy")
    smoothed = SmoothedClassifier(model, 0.1, 4)
    with pytest.raises(ValueError, match="4-D"):
        smoothed.predict(x[0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        smoothed.predict(x + 2)
    with pytest.raises(ValueError, match="NaN"):
        smoothed.predict(torch.full_like(x, math.nan))
    with pytest.raises(ValueError, match="n0"):
        certify(model, x, 0.1, n0=0, n=10)
    with pytest.raises(ValueError, match="n must"):
        certify(model, x, 0.1, n0=10, n=0)
    with pytest.raises(ValueError, match="alpha"):
        certify(model, x, 0.1, n0=10, n=10, alpha=1.5)
    with pytest.raises(ValueError, match="alpha"):
        predict_with_abstain(smoothed, x, 10, alpha=0.0)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            smoothed.predict(x.cuda())


def test_reused_noise_buffer_gives_the_same_draws():
    """Without autograd the chunks' noisy inputs share one buffer; the logits must not change."""
    model, _, shape = make_linear(12)
    x = torch.rand((4,) + shape, generator=torch.Generator().manual_seed(13))
    smoothed = SmoothedClassifier(model, 0.3, 24, "logits", batch_size=8)  # 2 draws per chunk
    with torch.no_grad():
        reused = torch.cat(list(smoothed.draw_logits(x, 24, torch.Generator().manual_seed(14))))
    with torch.enable_grad():  # fresh tensors per chunk
        fresh = torch.cat(
            [c.detach() for c in smoothed.draw_logits(x, 24, torch.Generator().manual_seed(14))]
        )
    assert torch.equal(reused, fresh)
    identity = SmoothedClassifier(torch.nn.Flatten(), 0.3, 6, "logits", batch_size=8)
    with torch.no_grad():  # logits that alias the inputs: the buffer is not reused
        views = torch.cat(list(identity.draw_logits(x, 6, torch.Generator().manual_seed(15))))
    noise = torch.randn((6,) + tuple(x.shape), generator=torch.Generator().manual_seed(15)) * 0.3
    assert torch.allclose(views, (x + noise).flatten(2), atol=1e-6)


def test_chunk_rows_rule():
    from smoothinf.noise import chunk_rows, inject_noise
    from smoothinf.noise.draws import CPU_CHUNK_VALUES, CPU_WEIGHT_NOISE_CHUNK_VALUES, CPU_WEIGHT_NOISE_VALUES

    x = torch.rand(3, 1, 28, 28)
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    assert chunk_rows(x, plain) == CPU_CHUNK_VALUES // 784
    assert chunk_rows(x, plain, batch_size=7) == 7
    with pytest.raises(SmoothinfError, match="batch_size must be an integer >= 1"):
        chunk_rows(x, plain, batch_size=0)
    assert chunk_rows(x[:0], plain) == CPU_CHUNK_VALUES // 784  # empty input: still a bound
    noisy = inject_noise(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), "pni-w")
    assert chunk_rows(x, noisy) == CPU_WEIGHT_NOISE_CHUNK_VALUES // 784
    # many noisy weights: the draws per chunk are bounded by the noisy weight copies they hold
    wide = inject_noise(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 2**20 // 784 * 4)), "pni-w"
    )
    n_weights = wide[1].layer.weight.numel()
    assert chunk_rows(x, wide) == 3 * (CPU_WEIGHT_NOISE_VALUES // n_weights)
    model = create_model("mnist_cnn_small", 10, 1, (0.1307,), (0.3081,))
    noisy_input = inject_noise(model, "cni-i")
    assert chunk_rows(x, noisy_input) == CPU_CHUNK_VALUES // 784  # input noise is not weight noise


class _QuartileTable(torch.nn.Module):
    """Logits chosen by the quartile of the noisy first pixel (x = 0.5, sigma = 1): in each quartile
    a different class 0..3 is on top and class 4 is always second, so the hard vote picks one of
    0..3 (about 1/4 of the votes each) while the weighted vote 2^-rank picks class 4 (0.5 per draw)."""

    def __init__(self) -> None:
        super().__init__()
        table = torch.zeros(4, 5)
        for q in range(4):
            table[q, q], table[q, 4] = 2.0, 1.0
        self.register_buffer("table", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(1)[:, 0] - 0.5
        q = (v > -0.6745).long() + (v > 0).long() + (v > 0.6745).long()
        return self.table[q]


@pytest.mark.parametrize("vote", ["hard", "weighted", "soft", "logits"])
def test_predict_topk_first_answer_is_predict(vote):
    """predict_topk(x, 1) == predict(x) for every vote; the weighted top-k uses the rank weights
    (the old weighted top-k took rank-wise hard counts: one of classes 0..3, not 4)."""
    smoothed = SmoothedClassifier(_QuartileTable(), 1.0, 200, vote)
    x = torch.full((6, 1, 2, 2), 0.5)
    pred = smoothed.predict(x, torch.Generator().manual_seed(3))
    top = smoothed.predict_topk(x, 3, torch.Generator().manual_seed(3))
    assert torch.equal(top[:, 0], pred)
    assert torch.equal(smoothed.predict_topk(x, 1, torch.Generator().manual_seed(3))[:, 0], pred)
    assert all(len(set(row)) == 3 for row in top.tolist())  # chosen classes are excluded
    if vote == "weighted":
        assert (pred == 4).all()
    if vote == "hard":
        assert (pred < 4).all() and (top[:, 1] == 4).all()  # class 4: always at rank 1
    with pytest.raises(SmoothinfError, match="exceeds"):
        smoothed.predict_topk(x, 6)


def test_weighted_topk_ties_break_to_the_lowest_class():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits.repeat(x.shape[0], 1)

    smoothed = SmoothedClassifier(Fixed(), 0.0, 4, "weighted", weights=top_k(2))  # classes 1, 2 tie
    assert smoothed.predict_topk(torch.zeros(1, 1, 2, 2), 4).tolist() == [[1, 2, 0, 3]]
    assert smoothed.predict(torch.zeros(1, 1, 2, 2)).tolist() == [1]


@pytest.mark.parametrize("vote", ["weighted", "soft", "logits"])
def test_predict_with_abstain_needs_hard_votes(vote):
    model, _, shape = make_linear()
    x = torch.rand((2,) + shape)
    with pytest.raises(SmoothinfError, match="hard-vote counts"):
        predict_with_abstain(SmoothedClassifier(model, 0.1, 4, vote), x, 10, alpha=0.01)


@pytest.mark.parametrize("noise", ["uniform", "laplace"])
def test_certify_refuses_non_gaussian_noise(noise):
    model, _, shape = make_linear()
    x = torch.rand((2,) + shape)
    with pytest.raises(SmoothinfError, match="Gaussian noise only"):
        certify(model, x, 0.1, n0=10, n=10, noise=noise)
    with pytest.raises(SmoothinfError, match="Gaussian noise only"):
        certify(model, x, 0.1, n0=10, n=10, noise=NoiseDistribution(noise, 0.1))
    pred, radius = certify(model, x, 0.1, n0=10, n=10, noise=NoiseDistribution("gaussian", 0.1))
    assert pred.shape == radius.shape == (2,)


@pytest.mark.parametrize(
    "args,message",
    [
        (["predict", "--sigma", "0.1", "--vote", "soft", "--alpha", "0.01"], "hard-vote counts"),
        (["certify", "--sigma", "0.1", "--noise", "laplace", "--out", "unused.tsv"], "Gaussian noise only"),
    ],
)
def test_cli_refuses_statistics_that_do_not_hold(args, message, tmp_path, capsys):
    """One-line error, exit 2, before any checkpoint or data is read."""
    from smoothinf.cli import main

    assert main([*args, "-c", str(tmp_path / "never_read.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
