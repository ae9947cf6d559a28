"""SmoothedClassifier: a base classifier's votes averaged over m noise draws around the input.

All m draws of many examples run as batched forwards: a chunk of d whole draws is a
(N * d, C, H, W) batch, example-major (row i*d + j is draw j of example i), evaluated inside
``per_draw_noise(model, d)`` so that weight-noise (PNI/CNI) layers give each draw its own weight
noise. ``batch_size`` bounds d * N. Counting is a sum over the draw axis, never a Python loop over
draws or examples. With a fixed generator the input-noise draws do not depend on the chunk size
(on the CPU); noisy inputs are not clipped (Cohen et al.'s convention).

Two sources of draws. A ``generator`` (or torch's global one) is consumed in chunk order, so an
example's draws depend on the examples batched with it and on ``batch_size``. ``certify``,
``predict`` and ``vote_counts`` also take ``index`` (each example's index in its data split) and a
``seed``: the draws then come from ``smoothinf.noise.keyed.KeyedNoise``, keyed by (seed, stage,
example index, draw index), and an example's result depends only on the model, the example, its
index, the noise, the draw counts and the seed, not on batch size, grouping, order or count of the
other examples (exactly for hard votes; float sums of soft votes may differ in the last bits).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from scipy.stats import norm
from torch import nn

from smoothinf.errors import SmoothinfError
from smoothinf.models.inputs import check_model_input
from smoothinf.noise.distributions import NoiseDistribution, as_noise
from smoothinf.noise.draws import chunk_rows, draw_major, noise_layers, per_draw_noise, rows_for_draws
from smoothinf.noise.keyed import ESTIMATE, LAYER_SLOT, PREDICT, SELECT, KeyedNoise, as_index
from smoothinf.smoothing.statistics import (
    ABSTAIN,
    binomial_two_sided_pvalue,
    check_abstain_vote,
    check_alpha,
    check_certifiable,
    clopper_pearson_lower,
)
from smoothinf.smoothing.votes import VOTES, RankWeight, accumulate_votes

MIN_FREQUENCY = 1e-12  # log vote frequencies are clamped here, away from -inf


def _check_count(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SmoothinfError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _keyed(
    noise: NoiseDistribution,
    x: torch.Tensor,
    generator: torch.Generator | None,
    index: torch.Tensor | Sequence[int] | None,
    seed: int,
) -> tuple[KeyedNoise, torch.Tensor] | None:
    """The keyed sampler and the (N,) int64 indices when ``index`` is given, else None."""
    if index is None:
        return None
    if generator is not None:
        raise SmoothinfError(
            "give either generator (draws in batch order) or index and seed (draws keyed by example)"
        )
    return KeyedNoise(noise, seed), as_index(index, x.shape[0])


def _check_k(k: int, num_classes: int) -> None:
    if k > num_classes:
        raise SmoothinfError(f"k = {k} exceeds the number of classes {num_classes}")


class SmoothedClassifier(nn.Module):
    """g(x) = argmax_k sum_i v_k(f(x + n_i)), n_i ~ noise with per-pixel std sigma (pixel units).

    ``forward(x)`` (N, C, H, W) in [0, 1] -> (N, K) class scores usable as logits by attack
    libraries: soft -> log mean softmax (differentiable), logits -> mean logits (differentiable),
    hard / weighted -> log vote frequencies (clamped away from -inf; no gradient).
    """

    def __init__(
        self,
        model: nn.Module,
        sigma: float = 0.0,
        m: int = 1,
        vote: str = "hard",
        noise: str | NoiseDistribution = "gaussian",
        weights: RankWeight | None = None,
        batch_size: int | None = None,
    ):
        super().__init__()
        if vote not in VOTES:
            raise SmoothinfError(f"unknown vote {vote!r}; choose one of {', '.join(VOTES)}")
        self.model = model
        self.noise = (
            NoiseDistribution(noise.family, float(sigma))
            if isinstance(noise, NoiseDistribution)
            else as_noise(noise, sigma)
        )
        self.m = _check_count("m", m)
        self.vote = vote
        self.weights = weights
        self.batch_size = None if batch_size is None else _check_count("batch_size", batch_size)

    @property
    def sigma(self) -> float:
        return self.noise.sigma

    def extra_repr(self) -> str:
        return f"noise={self.noise.family}, sigma={self.sigma}, m={self.m}, vote={self.vote}"

    def rows_per_forward(self, x: torch.Tensor) -> int:
        """Rows of one forward: ``batch_size`` when given, else a bound on a chunk's input values
        (``smoothinf.noise.draws.chunk_rows``)."""
        return chunk_rows(x, self.model, self.batch_size)

    def _check(self, x: torch.Tensor) -> None:
        check_model_input(self.model, x)

    def _noise(
        self, x: torch.Tensor, draws: int, generator: torch.Generator | None, out: torch.Tensor | None
    ) -> torch.Tensor:
        """Noise (draws, N, C, H, W), draw by draw in stream order, sampled into ``out`` (a reusable
        buffer of at least ``draws`` draws) when given."""
        device = generator.device if generator is not None else x.device
        # torch.Generator(device="cuda").device has no index: compare the index only when set.
        if out is None or out.device.type != device.type or device.index not in (None, out.device.index):
            out = torch.empty((draws,) + tuple(x.shape), device=device, dtype=x.dtype)
        noise = out[:draws]
        if self.noise.family != "gaussian" or x.numel() % 16 == 0 or draws == 1:
            # torch's CPU normal sampler fills blocks of 16: whole draws of a multiple of 16 values
            # consume the stream identically however they are chunked (uniform always does).
            self.noise.sample_into(noise, generator)
        else:
            for draw in noise:
                self.noise.sample_into(draw, generator)
        return noise.to(x.device)

    def draw_logits(
        self, x: torch.Tensor, m: int, generator: torch.Generator | None = None
    ) -> Iterator[torch.Tensor]:
        """Yield logits (d, N, K) of the base model for successive chunks of d noise draws (sum d = m).

        A chunk's forward sees example-major rows (``smoothinf.noise.draws``). Without autograd
        the chunks reuse one noise and one input buffer (fresh large allocations are page-faulted
        on the CPU), unless the model's outputs alias its inputs.
        """
        n = x.shape[0]
        per_chunk = max(1, self.rows_per_forward(x) // max(n, 1))
        layers = noise_layers(self.model)
        reuse = self.sigma > 0 and not torch.is_grad_enabled()
        noise_buf = rows_buf = None
        done = 0
        while done < m:
            d = min(per_chunk, m - done)
            noise = self._noise(x, d, generator, noise_buf) if self.sigma > 0 else None
            out = rows_buf[: n * d] if rows_buf is not None else None
            batch = rows_for_draws(x, d, noise, out)
            with per_draw_noise(self.model, d, generator, layers):
                logits = self.model(batch)
            if reuse and rows_buf is None:
                if logits.untyped_storage().data_ptr() == batch.untyped_storage().data_ptr():
                    reuse = False  # the caller may hold logits that are views of the inputs
                else:
                    noise_buf = noise
                    rows_buf = torch.empty_like(batch)
            yield draw_major(logits, d)
            done += d

    def _example_chunks(self, x: torch.Tensor) -> Iterator[slice]:
        rows = self.rows_per_forward(x)
        for start in range(0, x.shape[0], rows):
            yield slice(start, min(start + rows, x.shape[0]))

    def _accumulate(
        self, x: torch.Tensor, m: int, vote: str, generator: torch.Generator | None, grad: bool
    ) -> torch.Tensor:
        """Sum over m draws of the votes, (N, K)."""
        outs = []
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            for rows in self._example_chunks(x):
                total = None
                for logits in self.draw_logits(x[rows], m, generator):
                    total = accumulate_votes(total, logits, vote, self.weights)
                outs.append(total)
        return torch.cat(outs)

    def _keyed_votes(
        self, x: torch.Tensor, m: int, vote: str, keyed: KeyedNoise, index: torch.Tensor, stage: int
    ) -> torch.Tensor:
        """Sum over draws [0, m) of ``stage`` of the votes (N, K), the draws of example ``index[i]``
        taken from ``keyed`` (whole blocks of ``keyed.block`` draws, each from its own generator).

        Groups of examples and spans of whole blocks bound a forward by ``rows_per_forward``; when
        fewer rows than a block fit, a block is drawn once and forwarded in equal pieces. A model
        with noise layers forwards one block of one example at a time (``keyed.block`` rows,
        whatever ``batch_size``), its layers drawing from that block's own generator, so their
        weight noise and batch statistics do not depend on the other examples either."""
        if not 0 <= stage < LAYER_SLOT:
            raise SmoothinfError(f"stage must lie in [0, {LAYER_SLOT}), got {stage}")
        n, block = x.shape[0], keyed.block
        layers = noise_layers(self.model)
        if layers:
            group, span, piece = 1, block, block
        else:
            rows = self.rows_per_forward(x)
            group = min(max(n, 1), max(1, rows // block))
            per = rows // group
            if per >= block:
                span = min(per // block, math.ceil(m / block)) * block
                piece = span
            else:  # rows < block: one example, a block in equal pieces
                span, piece = block, math.ceil(block / math.ceil(block / per))
        shape = tuple(x.shape[1:])
        totals = []
        for start in range(0, n, group):
            xs, idx = x[start : start + group], index[start : start + group]
            buf = None
            if self.sigma > 0:
                buf = torch.empty((xs.shape[0], span) + shape, device=x.device, dtype=x.dtype)
            total = None
            for a in range(0, m, span):
                b = min(a + span, m)
                if buf is not None:
                    keyed.fill(buf[:, : math.ceil((b - a) / block) * block], idx, stage, a // block)
                for c in range(a, b, piece):
                    d = min(c + piece, b) - c
                    noise = None if buf is None else buf[:, c - a : c - a + d].transpose(0, 1)
                    batch = rows_for_draws(xs, d, noise)
                    gen = None
                    if layers:
                        gen = keyed.generator(int(idx[0]), stage + LAYER_SLOT, c // block, x.device)
                    with per_draw_noise(self.model, d, gen, layers):
                        logits = self.model(batch)
                    total = accumulate_votes(total, draw_major(logits, d), vote, self.weights)
            totals.append(total)
        return torch.cat(totals)

    def vote_counts(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        m: int | None = None,
        *,
        index: torch.Tensor | Sequence[int] | None = None,
        seed: int = 0,
        stage: int = PREDICT,
    ) -> torch.Tensor:
        """(N, K) vote counts (hard), rank-weight sums (weighted) or summed scores (soft/logits).

        ``index`` (N,) int64, each example's index in its data split: draws keyed by (``seed``,
        ``stage``, index, draw) instead of taken from ``generator`` (see the module doc)."""
        self._check(x)
        m = self.m if m is None else _check_count("m", m)
        keyed = _keyed(self.noise, x, generator, index, seed)
        with torch.no_grad():
            if keyed is not None:
                return self._keyed_votes(x, m, self.vote, keyed[0], keyed[1], stage)
            return self._accumulate(x, m, self.vote, generator, grad=False)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self._check(x)
        differentiable = self.vote in ("soft", "logits")
        total = self._accumulate(x, self.m, self.vote, generator, grad=differentiable)
        mean = total / self.m
        if self.vote == "logits":
            return mean
        if self.vote == "soft":
            return torch.log(mean.clamp_min(1e-30))
        return torch.log(mean.clamp_min(MIN_FREQUENCY))

    def predict(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        alpha: float | None = None,
        n: int | None = None,
        index: torch.Tensor | Sequence[int] | None = None,
        seed: int = 0,
    ) -> torch.Tensor:
        """Smoothed prediction (N,) int64 of x (N, C, H, W) in [0, 1] from n draws (default m).

        alpha None: argmax of the vote counts, ties to the lowest class. alpha given: Cohen et al.'s
        PREDICT (hard vote only): -1 (abstain) where the top two counts of the n draws do not
        differ at level alpha (two-sided binomial test). With ``index`` (N,) int64 (each example's
        index in its data split) the draws are keyed by (``seed``, example, draw), so an example's
        prediction does not depend on the others; else they come from ``generator`` in batch order.
        """
        keys = {"index": index, "seed": seed}
        if alpha is None:
            return self.vote_counts(x, generator, m=n, **keys).argmax(1)
        check_abstain_vote(self.vote)
        check_alpha(alpha)
        counts = self.vote_counts(x, generator, m=self.m if n is None else _check_count("n", n), **keys)
        top2 = counts.topk(2, dim=1)
        n_a = top2.values[:, 0].round().long().cpu().numpy()
        n_b = top2.values[:, 1].round().long().cpu().numpy()
        pvalue = torch.from_numpy(binomial_two_sided_pvalue(n_a, n_b))
        pred = top2.indices[:, 0].clone()
        pred[(pvalue > alpha).to(pred.device)] = ABSTAIN
        return pred

    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        *,
        index: torch.Tensor | Sequence[int] | None = None,
        seed: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cohen et al.'s CERTIFY of x (N, C, H, W) in [0, 1]: n0 draws select c_A, n fresh draws
        count n_A, p_A_lower is the one-sided Clopper-Pearson bound at level 1 - alpha; returns
        (pred (N,) int64, -1 = abstain where p_A_lower < 1/2; L2 radius sigma * Phi^-1(p_A_lower)
        (N,) float64, pixel units, 0 on abstain). Hard vote and Gaussian noise only; the
        classifier's m is not used; ``batch_size`` bounds the rows of a forward (default: its own).
        With probability >= 1 - alpha the hard-vote smoothed classifier returns c_A everywhere within
        the radius (Cohen, Rosenfeld, Kolter 2019, Theorem 1).

        Draws: with ``index`` (N,) int64, each example's index in its data split, the n0 and the n
        draws are independent keyed streams (``smoothinf.noise.keyed``, stages SELECT and ESTIMATE)
        of (``seed``, index, draw), so an example's row depends only on the model, the example, its
        index, sigma, n0, n, alpha and the seed: not on ``batch_size``, nor on which or how many
        other examples are certified with it, nor their order. Without ``index`` both stages draw
        from ``generator`` in batch order, and a row depends on its batch."""
        check_abstain_vote(self.vote)
        check_certifiable(self.noise)
        if self.sigma <= 0:
            raise SmoothinfError(f"certification needs sigma > 0, got {self.sigma}")
        for name, value in (("n0", n0), ("n", n)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SmoothinfError(f"{name} must be an integer >= 1, got {value!r}")
        check_alpha(alpha)
        saved, self.batch_size = self.batch_size, self.batch_size if batch_size is None else batch_size
        try:
            keys = {"index": index, "seed": seed}
            c_a = self.vote_counts(x, generator, m=n0, stage=SELECT, **keys).argmax(1)
            counts = self.vote_counts(x, generator, m=n, stage=ESTIMATE, **keys)
        finally:
            self.batch_size = saved
        n_a = counts.gather(1, c_a[:, None])[:, 0].round().cpu().numpy()
        p_lower = clopper_pearson_lower(n_a, n, alpha)
        radius = np.where(p_lower >= 0.5, self.sigma * norm.ppf(np.clip(p_lower, 0.5, 1.0)), 0.0)
        pred = c_a.cpu().clone()
        pred[torch.from_numpy(p_lower < 0.5)] = ABSTAIN
        return pred, torch.from_numpy(radius)

    def predict_topk(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Top-k classes (N, k) int64, answer 0 = ``predict(x)`` for every vote (same generator state).

        hard: rank-wise (the reference code's top-k): answer j is the class most often at rank j
        among the draws, excluding classes already chosen. weighted / soft / logits: the k best
        classes of the summed rank-weighted votes / probabilities / logits (each pick excludes the
        classes already chosen). Ties break to the lowest class.
        """
        self._check(x)
        _check_count("k", k)
        if self.vote != "hard":
            scores = self.vote_counts(x, generator)
            _check_k(k, scores.shape[1])
            return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        counts = []
        with torch.no_grad():
            for rows in self._example_chunks(x):
                total = None
                for logits in self.draw_logits(x[rows], self.m, generator):
                    _check_k(k, logits.shape[-1])
                    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices
                    top = order[..., :k]  # (d, n, k)
                    onehot = torch.nn.functional.one_hot(top, logits.shape[-1]).float().sum(0)  # (n, k, K)
                    total = onehot if total is None else total + onehot
                counts.append(total)
        counts = torch.cat(counts)
        chosen = torch.zeros(counts.shape[0], counts.shape[2], dtype=torch.bool, device=counts.device)
        answers = []
        for j in range(k):  # k is small; the loop is over ranks, not draws or examples
            c = counts[:, j].masked_fill(chosen, -1.0)
            pick = c.argmax(1)
            answers.append(pick)
            chosen[torch.arange(pick.shape[0], device=pick.device), pick] = True
        return torch.stack(answers, 1)


__all__ = ["SmoothedClassifier"]
