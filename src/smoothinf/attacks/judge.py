"""Honest success judging: the *defended* classifier judges every adversarial example.

An example is robust only if the defended classifier is correct on it clean and on the output of
every attack (AutoAttack's worst case); the mean over attacks is reported too ("average or minimum?").

A randomised defence (a smoothed classifier with sigma > 0, or a model with noise layers) is judged
``judgements`` times with fresh noise per point: an example's correctness is then the estimated
probability that the defence is right, and its worst case the minimum of those probabilities over
the clean point and every attack's point. Judging once and taking the per-example minimum would
count an example as broken whenever any single noisy judgement failed, which biases a randomised
defence's robust accuracy low by an amount that grows with the number of attacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from smoothinf.errors import SmoothinfError
from smoothinf.models.inputs import check_model_input
from smoothinf.noise import noise_layers
from smoothinf.smoothing import SmoothedClassifier
from smoothinf.utils import check_images, check_labels, model_device

AttackFn = Callable[..., torch.Tensor]


@dataclass
class RobustResult:
    """Per-example and aggregate results of ``robust_accuracy`` (accuracies are fractions in [0, 1]).

    Per-example tensors are float (N,) in [0, 1]: the fraction of ``judgements`` judgements that
    were right (exactly 0 or 1 for a deterministic defence or one judgement)."""

    clean_correct: torch.Tensor  # (N,) float: P(defended correct on x)
    robust: torch.Tensor  # (N,) float: min of clean_correct and every attack's correct
    correct: dict[str, torch.Tensor] = field(default_factory=dict)  # attack -> (N,) float
    clean_accuracy: float = 0.0
    accuracy: dict[str, float] = field(default_factory=dict)  # attack -> robust accuracy
    worst_case_accuracy: float = 0.0
    mean_accuracy: float = 0.0  # mean over attacks of their robust accuracies
    adversarial: dict[str, torch.Tensor] = field(default_factory=dict)  # attack -> x_adv (N,C,H,W)
    attacked: dict[str, int] = field(default_factory=dict)  # attack -> examples it ran on
    seconds: dict[str, float] = field(default_factory=dict)  # attack -> wall seconds, crafting + judging

    def to_dict(self) -> dict[str, float | dict[str, float] | int]:
        """JSON-friendly summary (no tensors)."""
        return {
            "n": int(self.robust.numel()),
            "clean_accuracy": self.clean_accuracy,
            "accuracy": dict(self.accuracy),
            "worst_case_accuracy": self.worst_case_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "attacked": dict(self.attacked),
            "seconds": dict(self.seconds),
        }


@torch.no_grad()
def defended_predict(
    defended: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None, batch_size: int = 1024
) -> torch.Tensor:
    """Class predictions (N,) of the defended classifier: ``.predict(x, generator)`` when it has one
    (a SmoothedClassifier with its own fresh noise and m), else argmax of its forward."""
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
    with sigma > 0 or noise layers. A callable that is not an ``nn.Module`` counts as random."""
    if not isinstance(defended, nn.Module):
        return True
    return bool(noise_layers(defended)) or any(
        isinstance(mod, SmoothedClassifier) and mod.sigma > 0 for mod in defended.modules()
    )


@torch.no_grad()
def judged_correct(
    defended: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator | None = None,
    judgements: int = 1,
) -> torch.Tensor:
    """(N,) float in [0, 1]: the fraction of ``judgements`` independent judgements (fresh noise each)
    in which the defended classifier predicts y on x (N, C, H, W); one forward for a deterministic
    defence. All judgements run as one batch of judgements * N rows (chunked by ``defended_predict``)."""
    if isinstance(judgements, bool) or not isinstance(judgements, int) or judgements < 1:
        raise SmoothinfError(f"judgements must be an integer >= 1, not {judgements!r}")
    j = judgements if is_randomised(defended) else 1
    if x.shape[0] == 0:
        return torch.zeros(0, device=x.device)
    pred = defended_predict(defended, x.repeat(j, *([1] * (x.dim() - 1))), generator)
    return (pred.view(j, x.shape[0]) == y.to(pred.device)).float().mean(0).to(x.device)


def robust_accuracy(
    defended: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Mapping[str, AttackFn],
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    keep_adversarial: bool = False,
    cascade: bool = False,
    judgements: int = 16,
    on_attack: Callable[[str], None] | None = None,
) -> RobustResult:
    """Run every attack on the examples the defended classifier gets right and judge with it.

    Args:
        defended: the classifier under evaluation (judge), e.g. a SmoothedClassifier.
        x: (N, C, H, W) in [0, 1]; y: (N,) labels.
        attacks: name -> attack callable ``(x, y, generator) -> x_adv``; attacks may use a surrogate
            (base model, EPGD on the noise, a transfer source): success is never judged by it.
        batch_size: examples per attack call.
        keep_adversarial: also return each attack's x_adv (x where it was not run).
        cascade: run each attack only on the examples every earlier attack failed on (AutoAttack's
            practice): the worst case is the same, the cost lower, and ``accuracy[name]`` becomes the
            robust accuracy after the attacks up to ``name`` (cumulative, non-increasing).
        judgements: judgements per point of a randomised defence (``is_randomised``): each
            example's correctness is the fraction right (see the module docstring); a deterministic
            defence is judged once. The cascade attacks every example still right in some judgement.
        on_attack: called with each attack's name as it starts (e.g. to show it in a progress bar).
    """
    if not isinstance(attacks, Mapping):
        raise SmoothinfError("attacks must be a mapping name -> attack")
    device = model_device(defended) if isinstance(defended, nn.Module) else x.device
    check_model_input(defended, x, y) if isinstance(defended, nn.Module) else check_images(x, "x", device)
    check_labels(y, x.shape[0])
    modes = [(m, m.training) for m in defended.modules()] if isinstance(defended, nn.Module) else []
    if isinstance(defended, nn.Module):
        defended.eval()
    try:
        clean = judged_correct(defended, x, y, generator, judgements)
        robust = clean.clone()
        correct: dict[str, torch.Tensor] = {}
        adversarial: dict[str, torch.Tensor] = {}
        attacked: dict[str, int] = {}
        seconds: dict[str, float] = {}
        idx = clean.nonzero().squeeze(1)  # attack only what the defence classifies correctly
        for name, attack in attacks.items():
            if cascade:
                idx = robust.nonzero().squeeze(1)
            start = time.perf_counter()
            if on_attack is not None:
                on_attack(name)
            ok = robust.clone() if cascade else torch.zeros_like(clean)
            x_adv_all = x.clone() if keep_adversarial else None
            # (split() of an empty index yields one empty batch: skip it)
            for ib in idx.split(batch_size) if idx.numel() else ():
                xb, yb = x[ib], y[ib]
                x_adv = attack(xb, yb, generator)
                if x_adv.shape != xb.shape:
                    raise SmoothinfError(f"attack {name!r} returned shape {tuple(x_adv.shape)}")
                judged = judged_correct(defended, x_adv.to(x.device), yb, generator, judgements)
                ok[ib] = torch.minimum(judged, (robust if cascade else clean)[ib])
                if x_adv_all is not None:
                    x_adv_all[ib] = x_adv.to(x.device)
            correct[name] = ok
            robust = torch.minimum(robust, ok)
            if robust.is_cuda:  # time the kernels, not their launch
                torch.cuda.synchronize(robust.device)
            attacked[name] = int(idx.numel())
            seconds[name] = time.perf_counter() - start
            if x_adv_all is not None:
                adversarial[name] = x_adv_all
    finally:
        for m, t in modes:
            m.training = t
    n = max(int(x.shape[0]), 1)
    accuracy = {k: v.sum().item() / n for k, v in correct.items()}
    return RobustResult(
        clean_correct=clean,
        robust=robust,
        correct=correct,
        clean_accuracy=clean.sum().item() / n,
        accuracy=accuracy,
        worst_case_accuracy=robust.sum().item() / n,
        mean_accuracy=sum(accuracy.values()) / len(accuracy) if accuracy else clean.sum().item() / n,
        adversarial=adversarial,
        attacked=attacked,
        seconds=seconds,
    )
