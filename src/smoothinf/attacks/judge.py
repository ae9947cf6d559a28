"""Honest success judging: the *defended* classifier judges every adversarial example.

An example is robust only if the defended classifier is correct on it clean and on the output of
every attack (AutoAttack's worst case); the mean over attacks is reported too.

A randomised defence (a smoothed classifier with sigma > 0, a model with noise layers, or any model
whose two forwards of one input differ) is judged ``judgements`` times per point, each judgement
independent of the others: a smoothed classifier's J judgements are J votes over disjoint sets of m
fresh draws (J * m draws per example, each with its own input noise and weight noise), a noisy
model's own forward gets one fresh weight-noise draw per judgement (``per_draw_noise``), all from the
protocol's generator. An example's correctness is the fraction of judgements that were right.

The worst case is not the minimum of those estimates (a minimum of noisy estimates is biased low:
at a true P(correct) of 0.5, 16 judgements and six points it is 0.34 in expectation). ``WorstCase``
keeps, per example, the point with the lowest estimate (the *selection* judgements) and values that
point with a second, independent set of judgements (*fresh*): an unbiased estimate of the chosen
point's P(correct). A cascade passes an example on to the next attack while any judgement of its
chosen point was right.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from smoothinf.errors import SmoothinfError
from smoothinf.noise import noise_layers
from smoothinf.smoothing import SmoothedClassifier
from smoothinf.smoothing.votes import accumulate_votes
from smoothinf.utils import model_device

AttackFn = Callable[..., torch.Tensor]
CLEAN = "clean"  # the source name of an example whose chosen point is the clean image
# Attribute that marks a model as randomised: set by ``detect_randomised`` or by the user.
RANDOMISED_ATTR = "smoothinf_randomised"


@torch.no_grad()
def defended_predict(
    defended: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None, batch_size: int = 1024
) -> torch.Tensor:
    """Class predictions (N,) of the defended classifier: ``.predict(x, generator)`` when it has one
    (a SmoothedClassifier with its own fresh noise and m), else argmax of its forward; a model with
    the library's noise layers draws its noise from ``generator`` (one draw per forward of a chunk,
    as m = 1 smoothing does)."""
    if isinstance(defended, nn.Module) and noise_layers(defended) and not _nested_smoothing(defended):
        defended = SmoothedClassifier(defended, 0.0, 1)
    predict = getattr(defended, "predict", None)
    out = []
    for xb in x.split(batch_size):
        if callable(predict):
            out.append(predict(xb, generator=generator))
        else:
            out.append(defended(xb).argmax(1))
    return torch.cat(out).to(x.device)


def is_randomised(defended: object) -> bool:
    """Whether the defended classifier's prediction is random: it contains a smoothed classifier
    with sigma > 0 or noise layers, or it is marked ``smoothinf_randomised = True`` (by the user or
    by ``detect_randomised``). A callable that is not an ``nn.Module`` counts as random."""
    if not isinstance(defended, nn.Module):
        return True
    if any(getattr(mod, RANDOMISED_ATTR, False) for mod in defended.modules()):
        return True
    return bool(noise_layers(defended)) or any(
        isinstance(mod, SmoothedClassifier) and mod.sigma > 0 for mod in defended.modules()
    )


@torch.no_grad()
def detect_randomised(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model`` is randomised (``is_randomised``) or, for a model built elsewhere, whether
    two forwards of the same inputs ``x[:8]`` (N, C, H, W) in eval mode differ; a model found random
    that way is marked ``smoothinf_randomised = True`` so that it is judged with independent
    judgements and attacked with draws (EOT) like the library's noisy models. Declare a model's
    randomness up front with ``model.smoothinf_randomised = True`` (or False to skip the probe)."""
    if not isinstance(model, nn.Module):
        return True
    declared = getattr(model, RANDOMISED_ATTR, None)
    if declared is not None:
        return bool(declared) or is_randomised(model)
    if is_randomised(model) or x.shape[0] == 0:
        return is_randomised(model)
    modes = [(m, m.training) for m in model.modules()]
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        model.eval()
        with torch.random.fork_rng(devices=devices):
            probe = x[:8]
            first, second = model(probe), model(probe)
    finally:
        for m, t in modes:
            m.training = t
    random = not torch.equal(first, second)
    if random:
        setattr(model, RANDOMISED_ATTR, True)
    return random


def _check_judgements(judgements: int) -> int:
    if isinstance(judgements, bool) or not isinstance(judgements, int) or judgements < 1:
        raise SmoothinfError(f"judgements must be an integer >= 1, not {judgements!r}")
    return judgements


def _smoothed_votes(
    smoothed: SmoothedClassifier, x: torch.Tensor, judgements: int, generator: torch.Generator | None
) -> Iterator[torch.Tensor]:
    """For successive chunks of examples, the vote totals (J, n, K) of J independent votes of m
    draws each: the J * m draws of an example run in chunks of ``SmoothedClassifier.draw_logits``
    (each draw its own input noise and weight noise) and draw i counts for judgement i // m."""
    m = smoothed.m
    for rows in smoothed._example_chunks(x):
        xs = x[rows]
        totals: list[torch.Tensor | None] = [None] * judgements
        done = 0
        for logits in smoothed.draw_logits(xs, judgements * m, generator):
            start = 0
            while start < logits.shape[0]:  # split the chunk at judgement boundaries
                j = (done + start) // m
                stop = min(logits.shape[0], (j + 1) * m - done)
                totals[j] = accumulate_votes(totals[j], logits[start:stop], smoothed.vote, smoothed.weights)
                start = stop
            done += logits.shape[0]
        yield torch.stack(totals)


@contextmanager
def _seeded_global_rng(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Within the context torch's global RNG is seeded from ``generator`` (restored afterwards), so
    a model that draws its own noise from it gives equal numbers for equal seeds."""
    if generator is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def judged_correct(
    defended: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator | None = None,
    judgements: int = 1,
    batch_size: int | None = None,
) -> torch.Tensor:
    """(N,) float in [0, 1]: the fraction of ``judgements`` independent judgements in which the
    defended classifier predicts y on x (N, C, H, W); one prediction for a deterministic defence.

    A SmoothedClassifier casts J votes over J * m fresh draws per example; a model with the library's
    noise layers gets one weight-noise draw per judgement (``per_draw_noise``, example-major rows);
    both draw from ``generator``, in chunks that never change the distribution. Another randomised
    model is called J times on the batch, its global RNG seeded from ``generator``.
    ``batch_size`` bounds the rows of one forward of a noisy model's own judgements (default:
    ``smoothinf.noise.draws.chunk_rows``); a SmoothedClassifier chunks by its own ``batch_size``."""
    j = _check_judgements(judgements) if is_randomised(defended) else 1
    if x.shape[0] == 0:
        return torch.zeros(0, device=x.device)
    y = y.to(x.device)
    if j == 1:
        return (defended_predict(defended, x, generator) == y).float()
    if isinstance(defended, SmoothedClassifier):
        totals = torch.cat(list(_smoothed_votes(defended, x, j, generator)), dim=1)  # (J, N, K)
        return (totals.argmax(-1) == y).float().mean(0).to(x.device)
    if isinstance(defended, nn.Module) and noise_layers(defended) and not _nested_smoothing(defended):
        own = SmoothedClassifier(defended, 0.0, 1, batch_size=batch_size)  # its own noise only
        right = torch.cat(
            [(logits.argmax(-1) == y[rows]).float().sum(0) for rows, logits in _draws(own, x, j, generator)]
        )
        return (right / j).to(x.device)
    device = model_device(defended) if isinstance(defended, nn.Module) else x.device
    with _seeded_global_rng(generator, device):
        right = sum((defended_predict(defended, x, generator) == y).float() for _ in range(j))
    return (right / j).to(x.device)


def _nested_smoothing(model: nn.Module) -> bool:
    return any(isinstance(m, SmoothedClassifier) for m in model.modules())


def _draws(
    smoothed: SmoothedClassifier, x: torch.Tensor, draws: int, generator: torch.Generator | None
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(example rows, logits (draws, n, K)) per chunk of examples, ``draws`` draws each."""
    for rows in smoothed._example_chunks(x):
        yield rows, torch.cat(list(smoothed.draw_logits(x[rows], draws, generator)))


class WorstCase:
    """Per example, the strongest point found so far, chosen on one set of judgements and valued on
    another (see the module docstring).

    Attributes (N examples): ``points`` (N, C, H, W) the chosen points (the clean image until an
    attack does better); ``selection`` (N,) the judgements the choice was made on (biased low as a
    value); ``value`` (N,) an independent estimate of each chosen point's P(correct) (unbiased);
    ``source`` (N,) int64, the index in ``names`` of the attack that produced the point (0: clean);
    ``judged`` name -> (N,) selection estimates of that attack's points (NaN where it did not run).
    """

    def __init__(
        self,
        defended: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None,
        judgements: int,
        clean: torch.Tensor,
    ) -> None:
        self.defended, self.y, self.generator, self.judgements = defended, y, generator, judgements
        self.randomised = is_randomised(defended)
        self.points = x.clone()
        self.selection = clean.clone()
        self.value = self._fresh(x, y) if self.randomised else clean.clone()
        self.source = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self.names = [CLEAN]
        self.judged: dict[str, torch.Tensor] = {CLEAN: clean.clone()}

    def _fresh(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return judged_correct(self.defended, x, y, self.generator, self.judgements)

    def alive(self) -> torch.Tensor:
        """Indices (k,) of the examples some judgement of their chosen point got right."""
        return ((self.selection > 0) | (self.value > 0)).nonzero().squeeze(1)

    def offer(self, name: str, idx: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Judge ``x_adv`` (len(idx), C, H, W), new points of examples ``idx``, once; keep each where
        its estimate is below the chosen point's, and value the changed points afresh. Returns the
        selection estimates (len(idx),) of ``x_adv``."""
        if name not in self.names:
            self.names.append(name)
            self.judged[name] = torch.full_like(self.value, float("nan"))
        x_adv = x_adv.to(self.points.device)
        sel = judged_correct(self.defended, x_adv, self.y[idx], self.generator, self.judgements)
        self.judged[name][idx] = sel
        lower = sel < self.selection[idx]
        changed = idx[lower]
        if changed.numel():
            self.points[changed] = x_adv[lower]
            self.selection[changed] = sel[lower]
            self.source[changed] = self.names.index(name)
            self.value[changed] = (
                self._fresh(x_adv[lower], self.y[changed]) if self.randomised else sel[lower]
            )
        return sel

    def without(self) -> dict[str, float]:
        """Per attack, the worst case (mean over examples, selection estimates) of every point judged
        except that attack's: how far the worst case would rise without it."""
        stacked = torch.stack([v.nan_to_num(float("inf")) for v in self.judged.values()])
        out = {}
        for i, name in enumerate(self.names):
            if name == CLEAN:
                continue
            rest = torch.cat([stacked[:i], stacked[i + 1 :]])
            out[name] = float(rest.min(0).values.mean()) if rest.numel() else 0.0
        return out
