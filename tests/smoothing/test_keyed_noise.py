"""Draws keyed by example (issue 41): a certified or predicted row depends on the example, its index,
the settings and the seed, never on batch size, grouping, order or how many examples run with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from smoothinf.errors import SmoothinfError
from smoothinf.noise import KEYED_STREAM, KeyedNoise, NoiseDistribution, inject_noise
from smoothinf.noise.keyed import BLOCK_DRAWS, ESTIMATE, SELECT
from smoothinf.smoothing import SmoothedClassifier, certify, clopper_pearson_lower, predict_with_abstain
from support import Linear2, linear10

SIGMA = 0.5
N0, N, ALPHA = 20, 150, 0.05  # 150 draws: 3 blocks of 64, the last one cut


def six() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """linear10 and 6 inputs (1, 4, 4) with their split indices (not 0..5: any indices work)."""
    x = torch.rand((6, 1, 4, 4), generator=torch.Generator().manual_seed(3))
    return linear10(), x, torch.tensor([0, 3, 4, 10, 11, 500])


def _certify(model, x, index, batch_size=None, groups=None, seed=1):
    """Certify in groups of positions (default: one call for all), concatenated in input order."""
    groups = groups or [list(range(x.shape[0]))]
    smoothed = SmoothedClassifier(model, SIGMA, batch_size=batch_size)
    pred, radius = torch.empty(x.shape[0], dtype=torch.int64), torch.empty(x.shape[0], dtype=torch.float64)
    for g in groups:
        p, r = smoothed.certify(x[g], N0, N, ALPHA, index=index[g], seed=seed)
        pred[g], radius[g] = p, r
    return pred, radius


def test_a_block_is_the_same_however_many_blocks_are_drawn_with_it():
    # 9 values per draw: not a multiple of torch's 16-value normal fill, where chunking would show
    keyed = KeyedNoise(NoiseDistribution.gaussian(1.0), seed=5)
    shape = (1, 3, 3)
    many = keyed.sample([2, 7, 9], ESTIMATE, 0, 5 * BLOCK_DRAWS, shape)  # (320, 3, 1, 3, 3)
    assert many.shape == (5 * BLOCK_DRAWS, 3) + shape
    for k in range(5):
        one = keyed.sample([7], ESTIMATE, k * BLOCK_DRAWS, (k + 1) * BLOCK_DRAWS, shape)[:, 0]
        assert torch.equal(one, many[k * BLOCK_DRAWS : (k + 1) * BLOCK_DRAWS, 1])
    # draws [a, b) across a block boundary are slices of the same numbers
    assert torch.equal(keyed.sample([9], ESTIMATE, 50, 131, shape)[:, 0], many[50:131, 2])
    # a block is one generator's whole (block, *shape) draw: torch's randn with that seed
    seed = int(keyed.block_seeds(torch.tensor([7]), ESTIMATE, 2, 1)[0, 0])
    expect = torch.randn((BLOCK_DRAWS,) + shape, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(many[2 * BLOCK_DRAWS : 3 * BLOCK_DRAWS, 1], expect)


def test_streams_of_stages_examples_and_seeds_differ():
    keyed = KeyedNoise(NoiseDistribution.gaussian(1.0), seed=0)
    a = keyed.sample([4, 5], SELECT, 0, 256, (16,))
    b = keyed.sample([4], ESTIMATE, 0, 256, (16,))[:, 0]
    c = KeyedNoise(NoiseDistribution.gaussian(1.0), seed=1).sample([4], SELECT, 0, 256, (16,))[:, 0]
    for u, v in ((a[:, 0], a[:, 1]), (a[:, 0], b), (a[:, 0], c)):
        r = np.corrcoef(u.flatten().numpy(), v.flatten().numpy())[0, 1]
        assert abs(r) < 0.03  # 4096 pairs: independent streams, |r| ~ 1/64
    assert abs(float(a.std()) - 1.0) < 0.02
    # within one example, every (stage, block) has its own 32-bit seed (torch's CPU generator keeps 32)
    seeds = np.concatenate([keyed.block_seeds(torch.tensor([4]), s, 0, 1000)[0] for s in range(3)])
    assert len(np.unique(seeds & np.uint64(0xFFFFFFFF))) == 3000
    assert KEYED_STREAM == "keyed-by-example/1"


@pytest.mark.parametrize(
    ("batch_size", "groups"),
    [
        (1, None),  # one row per forward
        (7, [[0, 1], [2, 3, 4, 5]]),  # two calls
        (None, [[5], [3, 1], [4, 0, 2]]),  # default rows, three calls out of order
        (100, [[5, 4, 3, 2, 1, 0]]),  # reversed order
    ],
)
def test_certify_rows_do_not_depend_on_batch_size_grouping_or_order(batch_size, groups):
    model, x, index = six()
    ref_pred, ref_radius = _certify(model, x, index, batch_size=64)
    pred, radius = _certify(model, x, index, batch_size, groups)
    assert torch.equal(pred, ref_pred) and torch.equal(radius, ref_radius)
    # a mix of classes, abstentions and radii: the comparison means something
    assert len(set(ref_pred.tolist())) >= 2 and (ref_radius > 0).any()


def test_certify_function_matches_method_and_seed_matters():
    model, x, index = six()
    pred, radius = _certify(model, x, index)
    f_pred, f_radius = certify(model, x, SIGMA, N0, N, ALPHA, batch_size=9, index=index, seed=1)
    assert torch.equal(pred, f_pred) and torch.equal(radius, f_radius)
    other = certify(model, x, SIGMA, N0, N, ALPHA, index=index, seed=2)[1]
    assert not torch.equal(other, radius)


def test_certifying_more_examples_keeps_the_first_rows():
    model = linear10()
    x = torch.rand((10, 1, 4, 4), generator=torch.Generator().manual_seed(4))
    first = SmoothedClassifier(model, SIGMA).certify(x[:5], N0, N, ALPHA, index=torch.arange(5))
    more = SmoothedClassifier(model, SIGMA, batch_size=33).certify(x, N0, N, ALPHA, index=torch.arange(10))
    assert torch.equal(more[0][:5], first[0]) and torch.equal(more[1][:5], first[1])


@pytest.mark.parametrize("alpha", [None, 0.05])
def test_predict_rows_do_not_depend_on_batch_size_grouping_or_order(alpha):
    model, x, index = six()
    ref = SmoothedClassifier(model, SIGMA, m=90).predict(x, alpha=alpha, index=index, seed=3)
    perm = [3, 0, 5, 1, 4, 2]
    small = SmoothedClassifier(model, SIGMA, m=90, batch_size=5)
    got = torch.cat([small.predict(x[perm[:2]], alpha=alpha, index=index[perm[:2]], seed=3),
                     small.predict(x[perm[2:]], alpha=alpha, index=index[perm[2:]], seed=3)])  # fmt: skip
    assert torch.equal(got, ref[perm])
    if alpha is not None:
        fn = predict_with_abstain(small, x, 90, alpha, index=index, seed=3)
        assert torch.equal(fn, ref) and (ref >= 0).any()
    counts = small.vote_counts(x, m=90, index=index, seed=3)
    assert counts.sum(1).tolist() == [90.0] * 6


def test_weight_and_activation_noise_layers_are_keyed_too():
    """PNI weight + activation noise (activation std over the forward's rows): still per example."""
    torch.manual_seed(0)
    model = inject_noise(nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).eval(), "pni-wa")
    x = torch.rand((4, 1, 4, 4), generator=torch.Generator().manual_seed(5))
    index = torch.tensor([0, 1, 2, 3])
    ref = SmoothedClassifier(model, SIGMA).certify(x, N0, N, ALPHA, index=index)
    alone = SmoothedClassifier(model, SIGMA, batch_size=3).certify(x[2:3], N0, N, ALPHA, index=index[2:3])
    assert torch.equal(alone[0], ref[0][2:3]) and torch.equal(alone[1], ref[1][2:3])
    flipped = SmoothedClassifier(model, SIGMA, batch_size=500).certify(
        x.flip(0), N0, N, ALPHA, index=index.flip(0)
    )
    assert torch.equal(flipped[1].flip(0), ref[1])


def test_keyed_certify_matches_the_closed_form_of_a_linear_classifier():
    """Linear2 at L2 distance d from its boundary: p_A = Phi(d / sigma), exact radius d."""
    sigma, n, alpha = 0.25, 100_000, 0.001
    dist = np.array([0.05, -0.15, 0.3, -0.45])
    w = torch.randn(16, generator=torch.Generator().manual_seed(3))
    model = Linear2(w, -0.5 * float(w.sum()))  # boundary through x = 0.5
    x = (0.5 + torch.tensor(dist, dtype=torch.float32)[:, None] * w / w.norm()).reshape(4, 1, 4, 4)
    pred, radius = certify(model, x, sigma, n0=100, n=n, alpha=alpha, index=torch.arange(4), seed=4)
    assert pred.tolist() == [1, 0, 1, 0]
    p_a = norm.cdf(np.abs(dist) / sigma)  # 0.58 .. 0.96
    expected = sigma * norm.ppf(clopper_pearson_lower(np.round(n * p_a), n, alpha))
    tol = 5 * sigma * np.sqrt(p_a * (1 - p_a) / n) / norm.pdf(norm.ppf(p_a))  # 5 binomial sd
    assert np.all(np.abs(radius.numpy() - expected) <= tol), (radius, expected, tol)
    assert np.all(radius.numpy() < np.abs(dist))
    # the vote frequency of class 1 is Phi(signed d / sigma) within 5 sd
    m = 20_000
    counts = SmoothedClassifier(model, sigma).vote_counts(x, m=m, index=torch.arange(4), seed=9)
    p1 = norm.cdf(dist / sigma)
    assert np.all(np.abs(counts[:, 1].numpy() / m - p1) <= 5 * np.sqrt(p1 * (1 - p1) / m))


def test_keyed_arguments_are_checked():
    model, x, index = six()
    smoothed = SmoothedClassifier(model, SIGMA)
    with pytest.raises(SmoothinfError, match="either generator"):
        smoothed.certify(x, N0, N, ALPHA, torch.Generator().manual_seed(0), index=index)
    with pytest.raises(SmoothinfError, match="5 entries for 6 examples"):
        smoothed.certify(x, N0, N, ALPHA, index=index[:5])
    with pytest.raises(SmoothinfError, match="integer tensor"):
        smoothed.predict(x, index=index.float())
    with pytest.raises(SmoothinfError, match=">= 0"):
        smoothed.predict(x, index=index - 1)
    # without index, the generator path is unchanged (its draws follow batch order)
    a = smoothed.certify(x, N0, N, ALPHA, torch.Generator().manual_seed(0))
    b = smoothed.certify(x, N0, N, ALPHA, torch.Generator().manual_seed(0))
    assert torch.equal(a[1], b[1])
