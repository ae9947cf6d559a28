"""Robust accuracy: run attacks, judge their points with the defended classifier, keep the worst case.

``robust_accuracy`` rates one defended classifier. ``robust_accuracies`` rates several defences of
one model at one noise level together (e.g. the hard and soft votes and every m of one sigma) and
crafts once what they can share (``crafting_share``):

- ``POINTS``: an attack that never consults the defended classifier (PGD on the base model without
  a judge, FGSM, a transfer attack, AutoAttack on its surrogate) gives every defence the same
  points: it runs once, on the union of the examples the defences still need attacked;
- ``CANDIDATES``: an attack whose judge only picks each example's strongest visited point among one
  run's candidates (APGD / EPGD / SmoothAdv / PGD with a judge and a single run: ``PGD.single_run``)
  runs its steps once, and each defence picks among the candidates with its own fresh judgement
  (``PGD.craft`` / ``PGD.pick``);
- ``OWN``: everything else (restarts and APGD-T targets, which stop on the judge's verdict, and
  black-box attacks that query the defended classifier) runs once per defence.

The steps, which are the cost, run once; judging still runs per defence, on each one's own
examples, so every defence's cascade and worst case mean what they mean for ``robust_accuracy``.
The first defence's generator drives the shared crafting (alone, a defence's numbers equal
``robust_accuracy``'s: same draws in the same order); every other defence judges with its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from smoothinf.attacks.autoattack import AutoAttackAdapter
from smoothinf.attacks.judge import AttackFn, WorstCase, detect_randomised, judged_correct
from smoothinf.attacks.pgd import PGD
from smoothinf.attacks.transfer import TransferAttack
from smoothinf.errors import SmoothinfError
from smoothinf.models.inputs import check_model_input
from smoothinf.utils import check_images, check_labels

POINTS, CANDIDATES, OWN = "points", "candidates", "own"
"""How the defences' instances of one attack share its crafting (module docstring)."""


def crafting_share(attacks: Sequence[AttackFn]) -> str:
    """How instances of one attack, one per defence of the same model at the same noise level and
    eps (each judged by its own defence), share one crafting: ``POINTS``, ``CANDIDATES`` or ``OWN``
    (see the module docstring). Instances of different types or configurations (``repr``) never
    share."""
    first = attacks[0]
    if len(attacks) < 2 or any(type(a) is not type(first) or repr(a) != repr(first) for a in attacks):
        return OWN
    if isinstance(first, PGD):
        if any(a.model is not first.model for a in attacks):
            return OWN
        if first.judge is None:
            return POINTS
        return CANDIDATES if first.single_run() else OWN
    if isinstance(first, (TransferAttack, AutoAttackAdapter)):
        return POINTS
    return OWN


@dataclass
class RobustResult:
    """Per-example and aggregate results of ``robust_accuracy`` (accuracies are fractions in [0, 1]).

    Per-example tensors are float (N,) in [0, 1]: the fraction of ``judgements`` judgements that
    were right (exactly 0 or 1 for a deterministic defence or one judgement)."""

    clean_correct: torch.Tensor  # (N,) float: P(defended correct on x)
    robust: torch.Tensor  # (N,) float: P(correct) at each example's strongest point, fresh judgements
    correct: dict[str, torch.Tensor] = field(default_factory=dict)  # attack -> (N,) float
    clean_accuracy: float = 0.0
    accuracy: dict[str, float] = field(default_factory=dict)  # attack -> robust accuracy
    worst_case_accuracy: float = 0.0
    mean_accuracy: float = 0.0  # mean over attacks of their robust accuracies
    adversarial: dict[str, torch.Tensor] = field(default_factory=dict)  # attack -> x_adv (N,C,H,W)
    attacked: dict[str, int] = field(default_factory=dict)  # attack -> examples it ran on
    # attack -> wall seconds, judging + this defence's share of the crafting (shared: split evenly)
    seconds: dict[str, float] = field(default_factory=dict)
    shared: dict[str, int] = field(default_factory=dict)  # attack -> defences its crafting served (1: own)
    strongest: str | None = None  # see ``strongest_rule``
    strongest_rule: str = "alone"  # "alone": lowest accuracy on its own; "without": see ``without``
    without: dict[str, float] = field(default_factory=dict)  # attack -> worst case without its points
    worst: WorstCase | None = None  # the per-example chosen points and their estimates

    def to_dict(self) -> dict[str, float | dict[str, float] | int | str | None]:
        """JSON-friendly summary (no tensors)."""
        return {
            "n": int(self.robust.numel()),
            "clean_accuracy": self.clean_accuracy,
            "accuracy": dict(self.accuracy),
            "worst_case_accuracy": self.worst_case_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "strongest": self.strongest,
            "strongest_rule": self.strongest_rule,
            "attacked": dict(self.attacked),
            "seconds": dict(self.seconds),
            "shared": dict(self.shared),
        }


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
        cascade: run each attack only on the examples whose chosen point some judgement still got
            right (AutoAttack's practice): ``accuracy[name]`` is then the worst case after the attacks
            up to ``name`` (cumulative); otherwise each attack runs on every example some clean
            judgement got right and ``accuracy[name]`` is its own accuracy.
        judgements: independent judgements per point of a randomised defence (``is_randomised``;
            see ``smoothinf.attacks.judge``); a deterministic defence is judged once.
        on_attack: called with each attack's name as it starts (e.g. to show it in a progress bar).

    The worst case ``robust`` is each example's strongest point valued with fresh judgements
    (``WorstCase``). ``strongest`` names the attack that alone leaves the lowest accuracy
    (``strongest_rule = "alone"``) or, in a cascade, the one without whose points the worst case
    over the judged points rises most (``"without"``).
    """
    return robust_accuracies(
        [defended], x, y, [attacks], [generator], batch_size, keep_adversarial, cascade, judgements, on_attack
    )[0]


@dataclass
class _Defence:
    """One defence's state in ``robust_accuracies``."""

    defended: nn.Module
    attacks: Mapping[str, AttackFn]
    generator: torch.Generator | None
    clean: torch.Tensor
    worst: WorstCase
    correct: dict[str, torch.Tensor] = field(default_factory=dict)
    adversarial: dict[str, torch.Tensor] = field(default_factory=dict)
    attacked: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    shared: dict[str, int] = field(default_factory=dict)


def robust_accuracies(
    defended: Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[Mapping[str, AttackFn]],
    generators: Sequence[torch.Generator | None],
    batch_size: int = 256,
    keep_adversarial: bool = False,
    cascade: bool = False,
    judgements: int = 16,
    on_attack: Callable[[str], None] | None = None,
) -> list[RobustResult]:
    """``robust_accuracy`` for several defences of one model at one noise level and eps on the same
    (x, y): ``defended[i]`` is judged with ``generators[i]`` on its own attacks ``attacks[i]`` (name ->
    attack; one name is one attack but for its judge), and the attacks of one name are crafted once
    where ``crafting_share`` allows (module docstring). Attacks run in the order of their first
    appearance; each defence's cascade follows its own worst case. Returns one result per defence."""
    if not (len(defended) == len(attacks) == len(generators)) or not defended:
        raise SmoothinfError("robust_accuracies needs one attack mapping and one generator per defence")
    if any(not isinstance(a, Mapping) for a in attacks):
        raise SmoothinfError("attacks must be a mapping name -> attack")
    modules = [d for d in defended if isinstance(d, nn.Module)]
    for d in defended:
        if isinstance(d, nn.Module):
            check_model_input(d, x, y)
        else:
            check_images(x, "x", x.device)
    check_labels(y, x.shape[0])
    modes = [(m, m.training) for d in modules for m in d.modules()]
    for d in modules:
        detect_randomised(d, x)
        d.eval()
    try:
        states = []
        for d, a, g in zip(defended, attacks, generators, strict=True):
            clean = judged_correct(d, x, y, g, judgements)
            states.append(_Defence(d, a, g, clean, WorstCase(d, x, y, g, judgements, clean)))
        names = list(dict.fromkeys(name for a in attacks for name in a))
        for name in names:
            members = [s for s in states if name in s.attacks]
            share = crafting_share([s.attacks[name] for s in members])
            groups = [members] if share != OWN else [[s] for s in members]
            for group in groups:
                if on_attack is not None:
                    on_attack(name)
                _attack_group(name, share, group, x, y, batch_size, keep_adversarial, cascade)
    finally:
        for m, t in modes:
            m.training = t
    return [_result(s, x, cascade) for s in states]


def craft_and_offer(
    share: str,
    attacks: Sequence[AttackFn],
    idx: Sequence[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    generators: Sequence[torch.Generator | None],
    offer: Callable[[int, torch.Tensor, object], None],
    batch_size: int | None = None,
) -> list[float]:
    """Run ``attacks[i]`` (one attack, one instance per defence) on examples ``idx[i]`` (k_i,) of (x, y)
    and pass each batch's points to ``offer(i, rows, points)``. With ``share`` ``POINTS`` or
    ``CANDIDATES`` (``crafting_share``) and several defences the attack runs once per batch of the
    union of their examples with ``generators[0]`` and each defence gets its own rows of the points
    (``CANDIDATES``: picked by its own instance, ``PGD.pick``, with its own generator); otherwise each
    instance runs on its own examples with its own generator. An attack may return a dict label ->
    points (every entry is split the same way). ``batch_size``: examples per call (None: one call).
    Returns the seconds each defence spent in picking and ``offer``."""
    spent = [0.0] * len(attacks)

    def batches(rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # (split() of an empty index yields one empty batch: skip it)
        if not rows.numel():
            return ()
        return rows.split(batch_size) if batch_size else (rows,)

    if len(attacks) == 1 or share == OWN:
        for i, attack in enumerate(attacks):
            for ib in batches(idx[i]):
                points = attack(x[ib], y[ib], generators[i])
                tick = time.perf_counter()
                offer(i, ib, points)
                spent[i] += time.perf_counter() - tick
        return spent
    first = attacks[0]
    for ub in batches(torch.unique(torch.cat(list(idx)))):
        crafted = (
            first.craft(x[ub], y[ub], generators[0], judges=[a.judge for a in attacks])
            if share == CANDIDATES
            else first(x[ub], y[ub], generators[0])
        )
        for i, attack in enumerate(attacks):
            mask = torch.isin(ub, idx[i])
            if not bool(mask.any()):
                continue
            tick = time.perf_counter()
            rows = ub[mask]
            if share == CANDIDATES:
                points = attack.pick(x[rows], [c[mask] for c in crafted], y[rows], generators[i])
            elif isinstance(crafted, dict):
                points = {label: p[mask] for label, p in crafted.items()}
            else:
                points = crafted[mask]
            offer(i, rows, points)
            spent[i] += time.perf_counter() - tick
    return spent


def _attack_group(
    name: str,
    share: str,
    group: list[_Defence],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    keep_adversarial: bool,
    cascade: bool,
) -> None:
    """Attack ``name`` for the defences of ``group`` (``craft_and_offer``: one defence runs exactly as
    ``robust_accuracy`` alone), each point offered to its defence's worst case."""
    start = time.perf_counter()
    idx = [s.worst.alive() if cascade else s.clean.nonzero().squeeze(1) for s in group]
    own = [None if cascade else s.worst.value.clone() for s in group]
    kept = [x.clone() if keep_adversarial else None for _ in group]

    def offer(i: int, rows: torch.Tensor, x_adv: torch.Tensor) -> None:
        s = group[i]
        if x_adv.shape != x[rows].shape:
            raise SmoothinfError(f"attack {name!r} returned shape {tuple(x_adv.shape)}")
        sel = s.worst.offer(name, rows, x_adv)
        if own[i] is not None:
            own[i][rows] = sel
        if kept[i] is not None:
            kept[i][rows] = x_adv.to(x.device)

    attacks = [s.attacks[name] for s in group]
    judging = craft_and_offer(share, attacks, idx, x, y, [s.generator for s in group], offer, batch_size)
    if group[0].worst.value.is_cuda:  # time the kernels, not their launch
        torch.cuda.synchronize(group[0].worst.value.device)
    crafting = (time.perf_counter() - start - sum(judging)) / len(group)
    for i, s in enumerate(group):
        s.correct[name] = s.worst.value.clone() if cascade else own[i]
        s.attacked[name] = int(idx[i].numel())
        s.seconds[name] = crafting + judging[i]
        s.shared[name] = len(group)
        if kept[i] is not None:
            s.adversarial[name] = kept[i]


def _result(s: _Defence, x: torch.Tensor, cascade: bool) -> RobustResult:
    n = max(int(x.shape[0]), 1)
    accuracy = {k: v.sum().item() / n for k, v in s.correct.items()}
    without = s.worst.without()
    if not accuracy:
        strongest, rule = None, "alone"
    elif cascade and without:
        strongest, rule = max(without, key=lambda k: (without[k], -list(without).index(k))), "without"
    else:
        strongest, rule = min(accuracy, key=accuracy.get), "alone"
    clean = s.clean.sum().item() / n
    return RobustResult(
        clean_correct=s.clean,
        robust=s.worst.value,
        correct=s.correct,
        clean_accuracy=clean,
        accuracy=accuracy,
        worst_case_accuracy=s.worst.value.sum().item() / n,
        mean_accuracy=sum(accuracy.values()) / len(accuracy) if accuracy else clean,
        adversarial=s.adversarial,
        attacked=s.attacked,
        seconds=s.seconds,
        shared=s.shared,
        strongest=strongest,
        strongest_rule=rule,
        without=without,
        worst=s.worst,
    )
