"""The evaluation protocol: defended classifiers x attacks x R seeded runs, judged per example.

``evaluate_row`` evaluates one (run, setting, eps) row; ``smoothinf.evaluate``
(``smoothinf.evaluation.verdict``) runs a model's rows, or an ``EvalConfig``'s grid of them
(resumable, distributed), and returns a ``Report``."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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
    Square,
    TransferAttack,
    is_randomised,
    judged_correct,
    robust_accuracies,
)
from smoothinf.attacks.judge import detect_randomised
from smoothinf.attacks.presets import preset_attacks
from smoothinf.attacks.robustness import (
    OWN,
    POINTS,
    RobustResult,
    craft_and_offer,
    crafting_share,
)
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
                    stop_decided=cfg.stop_decided,
                    square_queries=cfg.preset_square_queries,
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
                stop_decided=cfg.stop_decided,
            )
        elif name == "transfer":
            attacks[name] = TransferAttack(PGD(source, eps, steps=steps, restarts=cfg.restarts))
        elif name == "nattack":
            attacks[name] = NAttack(
                defended, eps, population=cfg.nattack_population, max_queries=cfg.nattack_queries
            )
        elif name == "square":
            target = SmoothedClassifier(model, sigma, draws, "soft", cfg.noise) if smoothed else model
            queries = (cfg.preset_square_queries or cfg.square_queries) * scale
            attacks[name] = Square(target, eps, queries=queries)
        elif name == "autoattack":
            attacks[name] = autoattack_for(model, vote, sigma, eps, cfg)
        elif vote != "none":  # expectation attacks coincide with PGD on the unsmoothed model
            cls = EPGD if name == "epgd" else SmoothAdv
            attacks[name] = cls(
                model,
                noise,
                draws,
                eps,
                steps=steps,
                restarts=cfg.restarts,
                judge=judge,
                stop_decided=cfg.stop_decided,
            )
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


@dataclass
class _Row:
    """One row of a group in ``evaluate_rows``: its setting, defended classifier, judging generator,
    attacks (name -> attack, judged by ``defended``) and, once attacked, the robust result."""

    setting: Setting
    defended: nn.Module
    generator: torch.Generator
    judge_seed: int
    attacks: dict[str, object]
    result: RobustResult | None = None
    checks: dict = field(default_factory=dict)


def _checks(
    cfg: EvalConfig,
    model: nn.Module,
    rows: list[_Row],
    eps: float,
    x: torch.Tensor,
    y: torch.Tensor,
) -> None:
    """The cross-checks of each row on its first ``k = min(cfg.check_examples, N)`` examples, run
    only on those some judgement of their chosen point still got right (``WorstCase.alive``): the
    official AutoAttack (``autoattack_for``; flag: it finds more), a black-box Square attack (flag:
    gradient masking suspected) and, for randomised rows (smoothed with input noise, or a weight-noise
    model's votes and own forward), ``result.strongest`` with twice the steps and draws, for a
    deterministic row whose attacks include Square, Square with twice the queries (flag: not
    converged). A group's rows (one sigma, several votes and m) share each check's crafting as their
    attacks do (``craft_and_offer``): AutoAttack and Square attack the same surrogate for every vote.

    Each check's points are offered to ``result.worst`` (``WorstCase.offer``: judged once to
    choose, the chosen ones valued with fresh judgements), so the worst case stays an unbiased
    estimate; a check's ``extra`` is how much it lowered ``worst.value`` summed over the examples it
    ran on (in examples: a sum of probabilities for a randomised defence), and ``own_robust`` is the
    sum of its points' selection estimates (what its points alone leave). A check flags when
    ``extra`` exceeds the judge's Monte Carlo error: 0 for a deterministic defence; else how far two
    fresh judgements of the strongest attack's points differ, summed over the examples, at least
    one example. Every check's finds count (``COUNTED_CHECKS``); fills each row's ``checks``."""
    k = min(cfg.check_examples, x.shape[0])
    if k == 0:
        return
    idx, tolerance = [], []
    for row in rows:
        alive = row.result.worst.alive()
        i = alive[alive < k]
        idx.append(i)
        t = 0.0
        if is_randomised(row.defended) and i.numel():
            t = 1.0
            if row.result.strongest in row.result.adversarial:  # two fresh judgements of the same points
                points, yi = row.result.adversarial[row.result.strongest][i], y[i]
                judge = [
                    judged_correct(row.defended, points, yi, row.generator, cfg.judgements) for _ in (0, 1)
                ]
                t = max(1.0, float((judge[0] - judge[1]).abs().sum()))
        tolerance.append(t)

    def run(name: str, members: list[int], attacks: list, share: str, **fields) -> None:
        """Check ``name`` for rows ``members``: ``attacks`` (one per member; each returns points or a
        dict label -> points) crafted as ``share`` says, each point folded into its row's worst case."""
        start = time.time()
        worst = [rows[i].result.worst for i in members]
        before = [float(w.value[idx[i]].sum()) for w, i in zip(worst, members, strict=True)]
        robust_before = [float(w.value[:k].sum()) for w in worst]
        own = [torch.ones(idx[i].numel(), device=x.device) for i in members]
        position = [torch.full((k,), -1, dtype=torch.long, device=x.device) for _ in members]
        for j, i in enumerate(members):
            position[j][idx[i]] = torch.arange(idx[i].numel(), device=x.device)

        def offer(j: int, rows_j: torch.Tensor, points) -> None:
            found = points if isinstance(points, dict) else {name: points}
            for label, x_adv in found.items():
                where = position[j][rows_j]
                own[j][where] = torch.minimum(own[j][where], worst[j].offer(label, rows_j, x_adv))

        gens = [rows[i].generator for i in members]
        craft_and_offer(share, attacks, [idx[i] for i in members], x, y, gens, offer)
        seconds = (time.time() - start) / len(members)
        for j, i in enumerate(members):
            found = before[j] - float(worst[j].value[idx[i]].sum())
            rows[i].checks[name] = {
                **fields,
                "n": k,
                "attacked": int(idx[i].numel()),
                "robust_before": round(robust_before[j], 4),
                "extra": round(found, 4),
                "own_robust": round(float(own[j].sum()), 4),
                "tolerance": round(tolerance[i], 4),
                "flag": found > tolerance[i],
                "seconds": seconds,
                "shared": len(members),
            }

    everyone = list(range(len(rows)))
    share = POINTS if len(rows) > 1 else OWN  # AutoAttack and Square do not depend on the vote or m
    vote, sigma, _ = rows[0].setting
    if cfg.autoattack_check:
        aa = autoattack_for(model, vote, sigma, eps, cfg)

        def aa_points(xa: torch.Tensor, ya: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
            if aa.best_loss:  # each of rand's attacks offers its best-loss points to the judge
                found = aa.best_loss_points(xa, ya, gen)
                return {f"autoattack:{name}": points for name, points in found.items()}
            return {"autoattack": aa(xa, ya, gen)}

        run("autoattack", everyone, [aa_points] * len(rows), share, version=aa.description())
    if cfg.blackbox_check:
        own = [i for i, row in enumerate(rows) if _own_square(row)]
        for i in own:
            rows[i].checks["blackbox"] = _square_finds(rows[i])
        others = [i for i in everyone if i not in own]
        if others:
            square = autoattack_for(model, vote, sigma, eps, cfg, attacks=["square"])
            run(
                "blackbox",
                others,
                [square] * len(others),
                share if len(others) > 1 else OWN,
                attack=f"square ({cfg.square_queries} queries)",
            )
    if cfg.convergence_check:
        doubled: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            if is_randomised(row.defended) and row.result.strongest is not None and idx[i].numel():
                doubled.setdefault(row.result.strongest, []).append(i)
            elif _own_square(row) and idx[i].numel():  # a deterministic row: its Square doubled
                doubled.setdefault("square", []).append(i)
        for strongest, members in doubled.items():
            attacks = [
                build_attacks(model, cfg, *rows[i].setting[:2], eps, rows[i].defended, None, scale=2).get(
                    strongest
                )
                for i in members
            ]
            if any(a is None for a in attacks):
                continue
            run("convergence", members, attacks, crafting_share(attacks), attack=strongest)


def _own_square(row: _Row) -> bool:
    """Whether a deterministic row's own attacks include the Square attack (the ``default`` preset's,
    or the named one): its black-box check is then read from Square's finds (``_square_finds``)."""
    return isinstance(row.attacks.get("square"), Square) and not is_randomised(row.defended)


def _square_finds(row: _Row) -> dict:
    """The black-box check of a deterministic row whose attacks include Square, from its result:
    ``extra`` is the examples whose worst case only Square's points reach (the worst case without
    its points minus with them, over all N examples), so the flag (gradient masking suspected) fires
    as when the check runs Square after the white-box attacks."""
    result, square = row.result, row.attacks["square"]
    n = int(result.robust.numel())
    without = result.without.get("square", result.worst_case_accuracy)
    found = round((without - result.worst_case_accuracy) * n, 4)
    return {
        "attack": f"square ({square.queries} queries, one of the row's attacks)",
        "n": n,
        "attacked": int(result.attacked.get("square", 0)),
        "robust_before": round(without * n, 4),
        "extra": found,
        "own_robust": round(float(result.correct["square"].sum()), 4) if "square" in result.correct else n,
        "tolerance": 0.0,
        "flag": found > 0,
        "seconds": 0.0,  # read from the row's own Square (its time is the attack's)
        "shared": 1,
    }


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


def judge_seed(seed: int, setting: Setting, first: bool) -> int:
    """The seed of a row's judging generator: ``seed`` (= cfg.seed + run, which also drives the
    crafting) for the first row of a group, else a 62-bit hash of (seed, setting), so the other rows
    of a group judge with noise independent of the crafting's and of each other's."""
    if first:
        return seed
    vote, sigma, m = setting
    digest = hashlib.sha256(f"{seed}/{vote}/{float(sigma)!r}/{int(m)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


def row_groups(cfg: EvalConfig, settings: list[Setting]) -> list[list[Setting]]:
    """``settings`` (in order) grouped into the rows that share crafting: with ``cfg.crafting``
    "shared", the smoothed settings of one sigma (every vote and m); the base model's row and, with
    "per-row", every row alone."""
    groups: dict[object, list[Setting]] = {}
    for i, setting in enumerate(settings):
        vote, sigma, _ = setting
        key = ("sigma", float(sigma)) if cfg.crafting == "shared" and vote != "none" else ("row", i)
        groups.setdefault(key, []).append(setting)
    return list(groups.values())


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
    """One row of the protocol alone: ``evaluate_rows`` with one setting."""
    return evaluate_rows(cfg, model, x, y, run, [setting], eps, source=source, on_step=on_step)[0]


def evaluate_rows(
    cfg: EvalConfig,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    run: int,
    settings: list[Setting],
    eps: float,
    *,
    source: nn.Module | None = None,
    on_step: Callable[[str], None] | None = None,
) -> list[RowResult]:
    """Evaluate rows of the protocol that share their crafting (``row_groups``: one sigma's votes and
    m, or one row): base ``model`` defended by each setting (``build_defended``), attacked under
    ``cfg``'s attacks at ``eps`` (pixel units, L_inf) on (x, y) ((N, C, H, W) in [0, 1] and (N,)
    labels, on the model's device: ``prepare_inputs``), judged by each defended classifier, then
    cross-checked (``_checks``). Attacks that do not depend on the vote or m run once for the group
    (``smoothinf.attacks.robust_accuracies``); every row is judged on its own examples with its own
    generator (``judge_seed``; the first row's, seeded ``cfg.seed + run``, also drives the crafting),
    so one row alone gives exactly what it gave before rows shared crafting.
    Each record's ``seconds`` is its share of the group's wall time (shared work split evenly, so
    the records of a group sum to its wall time). ``source``: the transfer attack's source model;
    ``on_step`` is called with each attack's name as it starts, then with "cross-checks"."""
    seed = cfg.seed + run
    start = time.time()
    rows = []
    for i, setting in enumerate(settings):
        vote, sigma, m = setting
        jseed = judge_seed(seed, setting, i == 0)
        defended = build_defended(model, vote, sigma, m, cfg.noise)
        rows.append(
            _Row(
                setting,
                defended,
                torch.Generator(device=x.device).manual_seed(jseed),
                jseed,
                build_attacks(model, cfg, vote, sigma, eps, defended, source),
            )
        )
    results = robust_accuracies(
        [r.defended for r in rows],
        x,
        y,
        [r.attacks for r in rows],
        [r.generator for r in rows],
        batch_size=cfg.batch_size,
        keep_adversarial=cfg.check_examples > 0 and any(is_randomised(r.defended) for r in rows),
        cascade=cfg.cascades(),
        judgements=cfg.judgements,
        on_attack=on_step,
    )
    for row, result in zip(rows, results, strict=True):
        row.result = result
    attack_seconds = (time.time() - start) / len(rows)
    if on_step is not None:
        on_step("cross-checks")
    _checks(cfg, model, rows, eps, x, y)
    seconds = (time.time() - start) / len(rows)
    shared_with = [setting_label(r.setting) for r in rows]
    return [_record(cfg, run, seed, r, eps, x, shared_with, seconds, attack_seconds) for r in rows]


def setting_label(setting: Setting) -> str:
    """A setting as "vote/sigma/m", e.g. "hard/0.25/32" (records' ``crafted_with``)."""
    vote, sigma, m = setting
    return f"{vote}/{float(sigma):g}/{int(m)}"


def _record(
    cfg: EvalConfig,
    run: int,
    seed: int,
    row: _Row,
    eps: float,
    x: torch.Tensor,
    shared_with: list[str],
    seconds: float,
    attack_seconds: float,
) -> RowResult:
    vote, sigma, m = row.setting
    result = row.result
    robust = result.worst.value.clone()
    record = {
        "run": run,
        "seed": seed,
        "judge_seed": row.judge_seed,
        "crafted_with": shared_with,
        "vote": vote,
        "sigma": float(sigma),
        "m": int(m),
        "eps": float(eps),
        "n": int(x.shape[0]),
        "clean": result.clean_accuracy,
        "attacks": result.accuracy,
        "worst_case": robust.sum().item() / max(int(x.shape[0]), 1),
        "robust": [round(v, 6) for v in robust.tolist()],
        "worst_case_attacks": result.worst_case_accuracy,
        "counted_checks": list(COUNTED_CHECKS),
        "strongest": result.strongest,
        "strongest_rule": result.strongest_rule,
        "without": {name: round(v, 6) for name, v in result.without.items()},
        "cascade": cfg.cascades(),
        "budget": _budgets(row.attacks),
        "checks": row.checks,
        "checks_off": cfg.checks_off(),
        "judging": cfg.judging,
        "seconds": seconds,
        "attack_seconds": attack_seconds,
        "attack_time": {
            name: {
                "examples": result.attacked[name],
                "seconds": round(result.seconds[name], 3),
                "shared": result.shared[name],
            }
            for name in result.seconds
        },
        "fingerprint": cfg.fingerprint(),
        "config": cfg.to_dict(),
        "version": __version__,
    }
    return RowResult(record, robust)
