"""The evaluation protocol: defended classifiers x attacks x R seeded runs, judged per example.

``evaluate_row`` evaluates one (run, setting, eps) row; ``smoothinf.evaluate``
(``smoothinf.evaluation.verdict``) runs a model's rows, or an ``EvalConfig``'s grid of them
(resumable, distributed), and returns a ``Report``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from smoothinf import __version__
from smoothinf.attacks import (
    APGD,
    EPGD,
    FGSM,
    PGD,
    AutoAttackAdapter,
    NAttack,
    SmoothAdv,
    TransferAttack,
    is_randomised,
    judged_correct,
    robust_accuracy,
)
from smoothinf.attacks.judge import detect_randomised
from smoothinf.attacks.presets import preset_attacks
from smoothinf.errors import ConfigError
from smoothinf.evaluation.config import JUDGING, EvalConfig
from smoothinf.evaluation.results import COUNTED_CHECKS
from smoothinf.noise import NoiseDistribution
from smoothinf.smoothing import SmoothedClassifier
from smoothinf.utils import model_device


def build_defended(model: nn.Module, vote: str, sigma: float, m: int, noise: str = "gaussian") -> nn.Module:
    """The classifier under evaluation: the base model ("none") or its smoothed version."""
    if vote == "none":
        return model
    return SmoothedClassifier(model, sigma, m, vote, noise)


def counts_argmaxes(model: nn.Module, vote: str, sigma: float) -> bool:
    """Whether a row is a randomised classifier judged by counting argmaxes (the rows that get the
    preset's tempered APGD-CE): a hard or weighted vote with input noise (sigma > 0) or weight
    noise, or a weight-noise model's own unsmoothed forward (vote "none")."""
    if vote == "none":
        return is_randomised(model)
    return vote in ("hard", "weighted") and (sigma > 0 or is_randomised(model))


def build_attacks(
    model: nn.Module,
    cfg: EvalConfig,
    vote: str,
    sigma: float,
    eps: float,
    defended: nn.Module | None = None,
    source: nn.Module | None = None,
    scale: int = 1,
) -> dict[str, object]:
    """Attacks for one setting: the ``default`` preset (``smoothinf.attacks.presets``) and any named
    ones: PGD on the base model; APGD / EPGD / SmoothAdv through the noise (judged by ``defended``);
    optionally transfer from ``source``, NAttack on ``defended``'s scores, AutoAttack.
    ``scale`` multiplies steps and draws (the convergence check's doubled budget)."""
    noise = NoiseDistribution(cfg.noise, sigma)
    smoothed = vote != "none" and sigma > 0
    defended = model if defended is None else defended
    judge = defended if vote != "none" else None
    steps, draws = cfg.steps * scale, cfg.attack_m * scale
    attacks: dict[str, object] = {}
    for name in cfg.attacks:
        if name == "default":
            attacks.update(
                preset_attacks(
                    "default",
                    model,
                    eps,
                    noise=noise if smoothed else None,
                    judge=judge,
                    steps=cfg.apgd_steps,
                    attack_m=cfg.attack_m,
                    scale=scale,
                    temperatures=cfg.temperatures if counts_argmaxes(model, vote, sigma) else (),
                )
            )
        elif name == "fgsm":
            attacks[name] = FGSM(model, eps)
        elif name == "pgd":
            attacks[name] = PGD(model, eps, steps=steps, restarts=cfg.restarts)
        elif name == "apgd":
            attacks[name] = APGD(
                model,
                eps,
                cfg.apgd_steps * scale,
                noise=noise if smoothed else None,
                m=draws if smoothed or is_randomised(model) else 1,
                reduce="softmax",
                restarts=cfg.restarts,
                judge=judge,
            )
        elif name == "transfer":
            attacks[name] = TransferAttack(PGD(source, eps, steps=steps, restarts=cfg.restarts))
        elif name == "nattack":
            attacks[name] = NAttack(
                defended, eps, population=cfg.nattack_population, max_queries=cfg.nattack_queries
            )
        elif name == "autoattack":
            attacks[name] = autoattack_for(model, vote, sigma, eps, cfg)
        elif vote != "none":  # expectation attacks coincide with PGD on the unsmoothed model
            cls = EPGD if name == "epgd" else SmoothAdv
            attacks[name] = cls(model, noise, draws, eps, steps=steps, restarts=cfg.restarts, judge=judge)
    return attacks


def autoattack_for(
    model: nn.Module, vote: str, sigma: float, eps: float, cfg: EvalConfig, attacks: list[str] | None = None
) -> AutoAttackAdapter:
    """The official AutoAttack for a row. A randomised row (input noise, weight noise, or a model
    ``detect_randomised`` found random): rand's APGD-CE and APGD-DLR (100 iterations, EOT 20) on an
    one-draw soft surrogate whose loss and gradient EOT averages over 20 draws per step (input and
    weight noise; rand's own budget), returning every example's best-loss point (``best_loss=True``)
    for the defended classifier to judge; a
    deterministic row: ``standard`` on the model. ``attacks`` (e.g. ["square"]) runs that custom
    subset instead, with ``cfg.square_queries`` Square queries, on the smoothed classifier's
    ``attack_m``-draw soft scores for a smoothed row, else on the model."""
    smoothed = vote != "none" and sigma > 0
    if attacks is not None:
        target = SmoothedClassifier(model, sigma, cfg.attack_m, "soft", cfg.noise) if smoothed else model
        return AutoAttackAdapter(
            target, "linf", eps, "custom", attacks=attacks, seed=cfg.seed, square_queries=cfg.square_queries
        )
    if smoothed or is_randomised(model):
        surrogate = SmoothedClassifier(model, sigma if smoothed else 0.0, 1, "soft", cfg.noise)
        return AutoAttackAdapter(surrogate, "linf", eps, "rand", seed=cfg.seed, best_loss=True)
    return AutoAttackAdapter(model, "linf", eps, "standard", seed=cfg.seed)


def strongest_attack(acc: dict[str, float], clean: float, cascade: bool) -> str | None:
    """The strongest attack from accuracies alone, for merged slices (``evaluation.slices``), whose
    records keep no per-example points: the lowest accuracy; in a cascade (cumulative accuracies),
    the attack that fooled the most examples the earlier attacks had left, which favours the
    first attacks. ``evaluate_row`` names ``RobustResult.strongest`` instead (``strongest_rule``)."""
    if not acc:
        return None
    if not cascade:
        return min(acc, key=acc.get)
    before, drops = clean, {}
    for name, a in acc.items():
        drops[name], before = before - a, a
    return max(drops, key=drops.get)


def _budgets(attacks: dict[str, object]) -> dict[str, dict]:
    return {k: a.budget() for k, a in attacks.items() if callable(getattr(a, "budget", None))}


def _checks(
    cfg: EvalConfig,
    model: nn.Module,
    defended: nn.Module,
    vote: str,
    sigma: float,
    eps: float,
    x: torch.Tensor,
    y: torch.Tensor,
    result,
    gen: torch.Generator,
) -> tuple[dict, torch.Tensor]:
    """The cross-checks of one row on its first ``k = min(cfg.check_examples, N)`` examples, run
    only on those some judgement of their chosen point still got right (``WorstCase.alive``): the
    official AutoAttack (``autoattack_for``; flag: it finds more), a black-box Square attack (flag:
    gradient masking suspected) and, for randomised rows (smoothed with input noise, or a weight-noise
    model's votes and own forward), ``result.strongest`` with twice the steps and draws (flag: not
    converged).

    Each check's points are offered to ``result.worst`` (``WorstCase.offer``: judged once to
    choose, the chosen ones valued with fresh judgements), so the worst case stays an unbiased
    estimate; a check's ``extra`` is how much it lowered ``worst.value`` summed over the examples it
    ran on (in examples: a sum of probabilities for a randomised defence), and ``own_robust`` is the
    sum of its points' selection estimates (what its points alone leave). A check flags when
    ``extra`` exceeds the judge's Monte Carlo error: 0 for a deterministic defence; else how far two
    fresh judgements of the strongest attack's points differ, summed over the examples, at least
    one example. Every check's finds count (``COUNTED_CHECKS``); returns
    ``(checks, worst case (N,) float)``."""
    worst = result.worst
    k = min(cfg.check_examples, x.shape[0])
    checks: dict = {}
    if k == 0:
        return checks, worst.value.clone()
    alive = worst.alive()
    idx = alive[alive < k]
    strongest = result.strongest

    def judge(points: torch.Tensor) -> torch.Tensor:
        return judged_correct(defended, points, y[idx], gen, cfg.judgements)

    tolerance = 0.0
    if is_randomised(defended) and idx.numel():
        tolerance = 1.0
        if strongest in result.adversarial:  # two fresh judgements of the same points
            points = result.adversarial[strongest][idx]
            tolerance = max(1.0, float((judge(points) - judge(points)).abs().sum()))

    def run(name: str, points: Callable[[], dict[str, torch.Tensor]], **fields) -> None:
        """Fold the points of check ``name`` (``points()``: label -> (len(idx), C, H, W), run only
        when some example is left) into the worst case and record its entry."""
        start = time.time()
        before, robust_before = float(worst.value[idx].sum()), float(worst.value[:k].sum())
        own = torch.ones(idx.numel(), device=worst.value.device)
        if idx.numel():
            for label, x_adv in points().items():
                own = torch.minimum(own, worst.offer(label, idx, x_adv))
        found = before - float(worst.value[idx].sum())
        checks[name] = {
            **fields,
            "n": k,
            "attacked": int(idx.numel()),
            "robust_before": round(robust_before, 4),
            "extra": round(found, 4),
            "own_robust": round(float(own.sum()), 4),
            "tolerance": round(tolerance, 4),
            "flag": found > tolerance,
            "seconds": time.time() - start,
        }

    if cfg.autoattack_check:
        aa = autoattack_for(model, vote, sigma, eps, cfg)

        def aa_points() -> dict[str, torch.Tensor]:
            if aa.best_loss:  # each of rand's attacks offers its best-loss points to the judge
                found = aa.best_loss_points(x[idx], y[idx], gen)
                return {f"autoattack:{name}": points for name, points in found.items()}
            return {"autoattack": aa(x[idx], y[idx], gen)}

        run("autoattack", aa_points, version=aa.description())
    if cfg.blackbox_check:
        square = autoattack_for(model, vote, sigma, eps, cfg, attacks=["square"])
        run(
            "blackbox",
            lambda: {"blackbox": square(x[idx], y[idx], gen)},
            attack=f"square ({cfg.square_queries} queries)",
        )
    if cfg.convergence_check and is_randomised(defended) and strongest is not None:
        doubled = build_attacks(model, cfg, vote, sigma, eps, defended, None, scale=2).get(strongest)
        if doubled is not None and idx.numel():
            run("convergence", lambda: {"convergence": doubled(x[idx], y[idx], gen)}, attack=strongest)
    return checks, worst.value.clone()


Setting = tuple[str, float, int]
"""A row's smoothing setting (vote, sigma in pixel units, m draws); ("none", 0.0, 1) is the base model."""


@dataclass
class RowResult:
    """One evaluated row (run, setting, eps): ``record``, the JSON-friendly dict a results file
    stores (its keys are the results files' schema; ``record["robust"]`` holds ``robust`` as a
    list), and ``robust``, each example's worst case (N,) float in [0, 1]: P(correct) at its
    strongest point, cross-checks' finds included."""

    record: dict
    robust: torch.Tensor


def grid_jobs(cfg: EvalConfig) -> list[tuple[int, Setting, float]]:
    """The (run, setting, eps) rows of ``cfg`` in the order they run: by run, then setting, then eps."""
    return [(r, s, e) for r in range(cfg.runs) for s in cfg.settings() for e in cfg.eps]


def prepare_inputs(
    cfg: EvalConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``cfg`` (and that it measures with ``JUDGING``), move (x, y) to the model's device
    and mark a model whose two forwards differ as randomised (``detect_randomised``)."""
    cfg.validate()
    if cfg.judging != JUDGING:
        raise ConfigError(
            f"judging {cfg.judging} names the old judging rules (kept to read old records); this"
            f" version measures with judging {JUDGING}"
        )
    device = model_device(model)
    x, y = x.to(device), y.to(device)
    detect_randomised(model, x)  # a stochastic model built elsewhere is judged and attacked as random
    return x, y


def evaluate_row(
    cfg: EvalConfig,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    run: int,
    setting: Setting,
    eps: float,
    *,
    source: nn.Module | None = None,
    on_step: Callable[[str], None] | None = None,
) -> RowResult:
    """Evaluate one row of the protocol: base ``model`` defended by ``setting`` (``build_defended``),
    attacked under ``cfg``'s attacks at ``eps`` (pixel units, L_inf) on (x, y) ((N, C, H, W) in
    [0, 1] and (N,) labels, on the model's device: ``prepare_inputs``), judged by the defended
    classifier, then cross-checked (``_checks``). The generator is seeded ``cfg.seed + run``.
    ``source``: the transfer attack's source model; ``on_step`` is called with each attack's name as
    it starts, then with "cross-checks"."""
    vote, sigma, m = setting
    seed = cfg.seed + run
    gen = torch.Generator(device=x.device).manual_seed(seed)
    start = time.time()
    defended = build_defended(model, vote, sigma, m, cfg.noise)
    attacks = build_attacks(model, cfg, vote, sigma, eps, defended, source)
    result = robust_accuracy(
        defended,
        x,
        y,
        attacks,
        gen,
        batch_size=cfg.batch_size,
        keep_adversarial=cfg.check_examples > 0 and is_randomised(defended),  # checks' tolerance
        cascade=cfg.cascades(),
        judgements=cfg.judgements,
        on_attack=on_step,
    )
    attack_seconds = time.time() - start
    if on_step is not None:
        on_step("cross-checks")
    checks, robust = _checks(cfg, model, defended, vote, sigma, eps, x, y, result, gen)
    acc = result.accuracy
    record = {
        "run": run,
        "seed": seed,
        "vote": vote,
        "sigma": float(sigma),
        "m": int(m),
        "eps": float(eps),
        "n": int(x.shape[0]),
        "clean": result.clean_accuracy,
        "attacks": acc,
        "worst_case": robust.sum().item() / max(int(x.shape[0]), 1),
        "robust": [round(v, 6) for v in robust.tolist()],
        "worst_case_attacks": result.worst_case_accuracy,
        "counted_checks": list(COUNTED_CHECKS),
        "strongest": result.strongest,
        "strongest_rule": result.strongest_rule,
        "without": {name: round(v, 6) for name, v in result.without.items()},
        "cascade": cfg.cascades(),
        "budget": _budgets(attacks),
        "checks": checks,
        "checks_off": cfg.checks_off(),
        "judging": cfg.judging,
        "seconds": time.time() - start,
        "attack_seconds": attack_seconds,
        "attack_time": {
            name: {"examples": result.attacked[name], "seconds": round(result.seconds[name], 3)}
            for name in result.seconds
        },
        "fingerprint": cfg.fingerprint(),
        "config": cfg.to_dict(),
        "version": __version__,
    }
    return RowResult(record, robust)
