"""The paper's claims re-measured on MNIST: one resumable pipeline (``studies/paper_mnist/run.py``).

Steps, in order, each skipped when its output exists under the same fingerprint (the step's
config + the tensor digest of every checkpoint it reads: ``smoothinf.evaluation.steps``), so an
interrupted study continues where it stopped (training resumes from its ``last.pt``; evaluation
from its last appended row):

1. ``train/<name>``: every model of ``study.yaml`` (``configs/<name>.yaml``) and the
   transfer source; ``@other`` in a config's ``init`` is another step's checkpoint.
2. ``select``: the best noise model (highest val PGD accuracy of its selected checkpoint, the val
   split, never test), then ``train/<finetune>`` from it (``@best_noise``).
3. ``eval/<name>``: per run and sigma, each attack crafts its batch once and ``judge_grid`` judges
   it with every vote and m from one set of max(m) draws (cost attacks x sigmas, not x votes x ms).
4. ``convergence``: the best smoothed setting under doubled attack budgets, and claim 5's EPGD
   k x m against PGD with k*m steps.
5. ``certify/<name>``: Cohen et al.'s certified L2 accuracy.
6. ``long/train/<name>``, ``long/eval/<name>``: the longer-training stage (study.yaml's
   ``long_training``; ``paper_mnist.long_training``), some recipes trained again for longer
   and evaluated with ``smoothinf evaluate``'s protocol; it needs nothing of the stages above
   (``--only long`` runs it alone).
7. the page (``paper_mnist.report``), rebuilt from the files every time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from paper_mnist.long_training import check_long_inits, long_tasks
from paper_mnist.study import (  # noqa: F401  (re-exported)
    CASCADED,
    CERT_RADII,
    DEFAULT_CONFIGS,
    PAPER_ATTACKS,
    StudyConfig,
    correct_fraction,
    encode_correct,
    load_study,
    tempered_attack_name,
    unbits,
)
from smoothinf import __version__
from smoothinf.attacks import EPGD, PGD, AutoAttackAdapter, TransferAttack, is_randomised
from smoothinf.attacks.presets import preset_attacks, tempered_name
from smoothinf.data import load_splits
from smoothinf.errors import ConfigError
from smoothinf.evaluation.config import EvalConfig
from smoothinf.evaluation.protocol import autoattack_for
from smoothinf.evaluation.results import read_jsonl
from smoothinf.evaluation.steps import (
    fingerprint,
    init_refs,
    run_step,
    set_aside_foreign_rows,
    train_step,
)
from smoothinf.models import load_checkpoint
from smoothinf.smoothing import SmoothedClassifier, certify
from smoothinf.smoothing.votes import apply_vote
from smoothinf.training.step_timing import train_passes
from smoothinf.training.trainer import TrainConfig
from smoothinf.utils import resolve_device

# ---------------------------------------------------------------------------------------------
# Judging every vote and m from one set of draws


@torch.no_grad()
def judge_grid(
    model: nn.Module,
    sigma: float,
    x: torch.Tensor,
    y: torch.Tensor,
    votes: Sequence[str],
    ms: Sequence[int],
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    draws: int = 0,
    subsets: int = 0,
) -> dict[str, torch.Tensor]:
    """Correctness (N,) float in [0, 1] of the smoothed classifier for every ``"vote@m"``, x (N,C,H,W).

    ``subsets`` 0: one judgement, 0 or 1: the first m of one set of max(ms) draws per example
    (nested in m; every vote counts the same draws). ``subsets`` S > 0: the probability that the
    classifier is right, estimated as the mean correctness of its votes over S random m-subsets
    (without replacement) of max(draws, max(ms)) draws per example: unbiased, since an m-subset of
    independent draws is an m-draw judgement. A classifier without noise (sigma 0, no noise
    layers) is judged with one forward. Either way the cost is one forward per draw, shared by
    every vote and m.
    """
    ms = sorted(set(int(m) for m in ms))
    deterministic = not (sigma or is_randomised(model))
    total = 1 if deterministic else max(ms[-1], int(draws)) if subsets else ms[-1]
    smoothed = SmoothedClassifier(model, sigma, total, "hard", batch_size=batch_size)
    rows = smoothed.rows_per_forward(x)  # examples per chunk, as SmoothedClassifier chunks them
    masks = {}  # per m: (S, total) 0/1, which draws each judgement counts
    for m in ms:
        take = min(m, total)
        if subsets and take < total:
            if subsets * take == total:  # a partition: S independent judgements
                order = torch.randperm(total, generator=generator).view(subsets, take)
            else:
                order = torch.rand(subsets, total, generator=generator).argsort(1)[:, :take]
            mask = torch.zeros(subsets, total).scatter_(1, order, 1.0)
        else:
            mask = torch.zeros(1, total)
            mask[0, :take] = 1.0
        masks[m] = mask.to(x.device)
    out: dict[str, list[torch.Tensor]] = {f"{v}@{m}": [] for v in votes for m in ms}
    for start in range(0, x.shape[0], rows):
        xc, yc = x[start : start + rows], y[start : start + rows]
        tallies: dict[str, torch.Tensor] = {}  # per vote@m (S, n * K): each judgement's votes so far
        done = 0
        for logits in smoothed.draw_logits(xc, total, generator):  # (d, n, K) per chunk of draws
            d, n, k = logits.shape
            logits = logits.float()
            for v in votes:
                per_draw = apply_vote(logits, v).reshape(d, n * k)
                for m in ms:
                    part = masks[m][:, done : done + d] @ per_draw
                    key = f"{v}@{m}"
                    tallies[key] = part if key not in tallies else tallies[key] + part
            done += d
        for key, t in tallies.items():
            out[key].append((t.reshape(t.shape[0], -1, k).argmax(-1) == yc).float().mean(0))
    return {key: torch.cat(parts) for key, parts in out.items()}


def _seeded(*parts) -> torch.Generator:
    """A CPU generator seeded by a hash of ``parts``: a row's numbers do not depend on which rows
    ran before it (an interrupted evaluation resumes to the same numbers)."""
    seed = int(hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:15], 16)
    return torch.Generator().manual_seed(seed)


def attack_gradients(attack) -> int:
    """Gradient evaluations per example of an attack (steps x draws x restarts x targets); AutoAttack
    by its documented budget; 0 for the clean pseudo-attack."""
    if isinstance(attack, TransferAttack):
        attack = attack.source_attack
    if isinstance(attack, AutoAttackAdapter):
        return int(attack.budget().get("gradients", 0))
    if attack is None:
        return 0
    steps, m = int(getattr(attack, "steps", 0)), int(getattr(attack, "m", 1) or 1)
    return steps * m * int(getattr(attack, "restarts", 1)) * max(1, int(getattr(attack, "target_classes", 0)))


def _craft(attack, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, batch: int) -> torch.Tensor:
    return torch.cat([attack(x[i : i + batch], y[i : i + batch], gen) for i in range(0, len(x), batch)])


def adaptive_preset(
    model: nn.Module,
    study: StudyConfig,
    sigma: float | None,
    scale: int = 1,
    budget: tuple[int, int] | None = None,
    restarts: int = 1,
    temperatures: Sequence[float] = (),
) -> dict[str, Callable]:
    """The ``default`` preset of one row at ``scale`` x (apgd_steps, draws), or at ``budget`` =
    (steps, draws) when given, each APGD attack ``restarts`` times: PGD-20 on the base model,
    APGD-CE on the expected softmax and APGD-DLR on the expected loss through the noise, judged by
    a soft-vote smoothed classifier at the largest m, then per ``temperatures`` T a tempered
    APGD-CE. ``sigma`` None: the unsmoothed base model (its own weight noise only, no judge);
    sigma 0: the weight-noise vote."""
    steps, draws = budget if budget is not None else (study.apgd_steps, study.draws)
    judge = None if sigma is None else SmoothedClassifier(model, sigma, max(study.ms), "soft")
    noise = sigma if sigma else None
    return dict(
        preset_attacks(
            "default",
            model,
            study.eps,
            noise=noise,
            judge=judge,
            steps=steps,
            attack_m=draws,
            scale=scale,
            restarts=restarts,
            temperatures=temperatures,
            square_queries=0,  # the study runs its own Square on every row (``setting_attacks``)
        )
    )


def protocol_autoattack(
    model: nn.Module,
    study: StudyConfig,
    sigma: float | None,
    attacks: list[str] | None = None,
    queries: int = 0,
) -> AutoAttackAdapter:
    """The evaluation protocol's official AutoAttack of one row at the study's eps and seed
    (``evaluation.protocol.autoattack_for``): ``sigma`` None is the base model, else the row
    smoothed at sigma. ``attacks`` (["square"]): that custom subset with ``queries`` Square queries,
    on the soft vote over ``study.draws`` draws for a row with input noise, else on the model."""
    cfg = EvalConfig(eps=[study.eps], seed=study.seed, attack_m=study.draws, square_queries=queries)
    vote = "none" if sigma is None else "soft"
    return autoattack_for(model, vote, sigma or 0.0, study.eps, cfg, attacks)


def setting_attacks(
    model: nn.Module, study: StudyConfig, sigma: float | None, source: nn.Module | None
) -> dict[str, Callable]:
    """The attacks of one row. ``sigma`` None: the unsmoothed base model; else smoothed at sigma.

    Adaptive: ``adaptive_preset``. The paper's: ``epgd`` (k = paper_steps, m = draws) and
    ``pgd-km`` (one draw per step, k * draws steps), no best-point judge, as its code. Plus
    ``transfer`` from the source, AutoAttack on the first ``autoattack_examples`` and the black-box
    ``square`` (``protocol_autoattack``; grid_square_queries, or grid_square_queries_randomised for
    a randomised row; 0: none).
    """
    attacks = adaptive_preset(model, study, sigma)
    if sigma is not None:
        noise = sigma if sigma > 0 else None
        attacks["epgd"] = EPGD(model, noise, study.draws, study.eps, steps=study.paper_steps)
        attacks["pgd-km"] = EPGD(model, noise, 1, study.eps, steps=study.paper_steps * study.draws)
    if source is not None:
        attacks["transfer"] = TransferAttack(PGD(source, study.eps, steps=study.transfer_steps))
    if study.autoattack_examples > 0:
        attacks["autoattack"] = protocol_autoattack(model, study, sigma)
    randomised = bool(sigma) or is_randomised(model)
    queries = study.grid_square_queries_randomised if randomised else study.grid_square_queries
    if queries > 0:
        attacks["square"] = protocol_autoattack(model, study, sigma, ["square"], queries)
    return attacks


def headline_attacks(
    model: nn.Module, study: StudyConfig, sigma: float | None, check: bool
) -> dict[str, Callable]:
    """The headline ladder of one row (``sigma`` None: the base model): APGD-CE / APGD-DLR of the
    adaptive preset at each ``headline_scales`` below the largest (``apgd-ce@x2`` ...), AutoAttack,
    then with ``check`` the largest scale (the doubling check of the budget below it)."""
    scales = sorted(set(int(k) for k in study.headline_scales))

    def ladder(scale: int) -> dict[str, Callable]:
        presets = adaptive_preset(model, study, sigma, scale)
        return {f"{a}@x{scale}": fn for a, fn in presets.items() if a != "pgd"}

    attacks: dict[str, Callable] = {}
    for scale in scales[:-1]:
        attacks.update(ladder(scale))
    attacks["autoattack"] = protocol_autoattack(model, study, sigma)
    if check and scales:
        attacks.update(ladder(scales[-1]))
    return attacks


def _attack_order(names) -> list[str]:
    """The paper's and the cheap attacks first (on every example), then the cascaded ones."""
    names = list(names)
    return ["clean"] + [a for a in names if a not in CASCADED] + [a for a in CASCADED if a in names]


def _done_rows(results: Path, fp: str) -> dict[tuple, dict]:
    """The rows of ``results`` (JSONL) written under fingerprint ``fp``, keyed (run, setting, sigma,
    attack)."""
    return {
        (r["run"], r["setting"], r["sigma"], r["attack"]): r
        for r in read_jsonl(results)
        if r.get("fingerprint") == fp
    }


def _retire_row(results: Path, row: dict) -> None:
    """Move one row of ``results`` to ``*.stale.jsonl`` (kept, never counted), rewriting the file."""
    with results.with_suffix(".stale.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    keep = [r for r in read_jsonl(results) if r != row]
    tmp = results.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(tmp, results)


def _narrow(alive: dict[str, torch.Tensor], correct: dict[str, torch.Tensor]) -> None:
    """In place, per vote@m: keep only the examples with a chance of being right in ``correct``
    (P(correct) > 0; for rows judged once, the examples right)."""
    for k, v in correct.items():
        ok = v > 0
        alive[k] = ok if k not in alive else alive[k] & ok


def _alive_from(rows: Sequence[dict], n: int, device) -> dict[str, torch.Tensor]:
    """Per vote@m: the examples with a chance of being right on every row of ``rows`` (one (run,
    setting, sigma))."""
    alive: dict[str, torch.Tensor] = {}
    for r in rows:
        _narrow(alive, {k: torch.from_numpy(correct_fraction(r, k, n)).to(device) for k in r["correct"]})
    return alive


def judge_row(
    model: nn.Module,
    setting: str,
    sigma: float,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    study: StudyConfig,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Per-example correctness (N,) in [0, 1] of one row's classifiers on ``x_adv``: the base model
    ("none@1": ``judgements`` independent forwards, each with its own weight noise; one when it has
    none) or every vote@m smoothed at ``sigma`` (``judge_grid`` with the study's judging)."""
    if setting == "base":
        s = study.judgements
        got = judge_grid(model, 0.0, x_adv, y, ["hard"], [1], generator, draws=s, subsets=s)
        return {"none@1": got["hard@1"]}
    draws, subsets = study.judging_m, study.judgements
    return judge_grid(model, sigma, x_adv, y, study.votes, study.ms, generator, draws=draws, subsets=subsets)


def evaluate_setting(
    model: nn.Module,
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    study: StudyConfig,
    attacks: dict[str, Callable],
    key: tuple[int, str, float],
    results: Path,
    fp: str,
    done: dict[tuple, dict],
    alive: dict[str, torch.Tensor] | None = None,
    cascade: Sequence[str] = CASCADED,
    first: dict[str, int] | None = None,
    source_batches: dict[int, torch.Tensor] | None = None,
    log=print,
) -> dict[str, torch.Tensor]:
    """Run ``attacks`` (in order) on one ``key`` = (run, setting, sigma) and append a row per attack
    to ``results``, skipping those in ``done``; returns per vote@m the examples still right.

    ``alive`` starts the cascade from earlier attacks' survivors (e.g. the evaluation rows of the
    same key); with ``study.cascade`` the attacks named in ``cascade`` craft only on the examples
    that some vote@m still gets right (the others are stored as lost, exact for the worst case).
    ``first`` limits an attack to the first N examples (AutoAttack's subset). ``source_batches``
    caches the transfer batch per run (crafted on the source once, judged at every sigma).
    """
    run, setting, sigma = key
    n = int(x.shape[0])
    alive = dict(alive or {})
    first = first or {}
    redo = False  # a row crafted with another budget: it and every row cascaded after it are redone
    for attack_name in attacks:
        prior = done.get((run, setting, sigma, attack_name))
        if prior is not None:
            redo = redo or prior.get("budget") != repr(attacks.get(attack_name) or "clean")
            if not redo:
                _narrow(alive, _alive_from([prior], n, y.device))
                continue
            _retire_row(results, prior)
            log(f"  {name} run {run} {setting} sigma {sigma} {attack_name}: budget changed, redone")
        gen = _seeded(study.seed, run, setting, sigma, attack_name)
        cascaded = study.cascade and attack_name in cascade and bool(alive)
        target = torch.ones(n, dtype=torch.bool, device=y.device)
        if attack_name in first:
            target[first[attack_name] :] = False
        if cascaded:
            alive_any = torch.stack(list(alive.values())).any(0)
            target &= alive_any
        idx = target.nonzero().squeeze(1)
        t0 = time.time()
        reused = attack_name == "transfer" and source_batches is not None and run in source_batches
        if attack_name == "clean":
            x_adv = x
        elif attack_name == "transfer":
            if not reused:
                tgen = _seeded(study.seed, run, "transfer")
                batch = _craft(attacks[attack_name], x, y, tgen, study.batch_size)
                if source_batches is not None:
                    source_batches[run] = batch
            x_adv = source_batches[run] if source_batches is not None else batch
        else:
            x_adv = x.clone()
            if len(idx):
                x_adv[idx] = _craft(attacks[attack_name], x[idx], y[idx], gen, study.batch_size)
        craft = time.time() - t0
        t1 = time.time()
        jgen = _seeded(study.seed, run, setting, sigma, attack_name, "judge")
        correct = judge_row(model, setting, sigma, x_adv, y, study, jgen)
        judge_seconds = time.time() - t1
        if cascaded:  # the skipped examples are lost under every vote@m already
            correct = {k: v * alive_any for k, v in correct.items()}
        _narrow(alive, correct)
        row = {
            "fingerprint": fp,
            "model": name,
            "run": run,
            "setting": setting,
            "sigma": sigma,
            "eps": study.eps,
            "attack": attack_name,
            "budget": repr(attacks.get(attack_name) or "clean"),
            "gradients": attack_gradients(attacks.get(attack_name)),
            "forwards": 1 if setting == "base" else max(study.ms),
            "n": n,
            "attacked": int(len(idx)) if attack_name != "clean" else 0,
            "subset": min(first.get(attack_name, n), n),  # the first N examples it may attack
            "cascaded": cascaded,
            "craft_seconds": round(craft, 4),
            "judge_seconds": round(judge_seconds, 4),
            "transfer_reused": reused,
            "judgements": study.judgements,
            "correct": {k: encode_correct(v, study.judgements) for k, v in correct.items()},
            "version": __version__,
        }
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        acc = {k: round(float(v.mean()), 3) for k, v in list(correct.items())[:2]}
        log(
            f"  {name} run {run} {setting} sigma {sigma} {attack_name}: {acc} "
            f"({craft:.1f}+{judge_seconds:.1f} s, {len(idx)} attacked)"
        )
    return alive


def evaluate_model(
    model: nn.Module,
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    study: StudyConfig,
    results: Path,
    fp: str,
    source: nn.Module | None = None,
    log=print,
) -> None:
    """Append one row per (run, setting, sigma, attack) to ``results`` (JSONL), skipping rows done.

    A row holds the per-example correctness of every ``vote@m`` (hex bits; an example counts as
    correct only if the defence is right on it clean and on the attack's x_adv), the crafting and
    judging seconds. The transfer batch is crafted once per run and reused for every sigma.

    With ``study.cascade`` the adaptive attacks (``CASCADED``) craft only on the examples that at
    least one vote@m still gets right after every earlier attack (as AutoAttack does); the others
    are stored as not correct, which is exact for the worst case (they are already lost under
    every vote and m), so a cascaded attack's own column is cumulative. AutoAttack runs on the
    first ``autoattack_examples`` of the first ``autoattack_runs`` runs, and so does the black-box
    Square on a randomised row (on a deterministic one: every example of every run).
    """
    done = _done_rows(results, fp)
    deterministic = not is_randomised(model)
    settings: list[tuple[str, float]] = [("base", 0.0)]
    settings += [("smoothed", float(s)) for s in study.sigmas if s > 0 or not deterministic]
    transfer_cache: dict[int, torch.Tensor] = {}
    model.eval()
    for run in range(study.runs):
        for setting, sigma in settings:
            attacks = setting_attacks(model, study, None if setting == "base" else sigma, source)
            randomised = (setting != "base" and bool(sigma)) or is_randomised(model)
            first = {"autoattack": study.autoattack_examples}
            if randomised:  # Square through the noise costs draws x queries: AutoAttack's subset
                first["square"] = study.autoattack_examples
            if run >= study.autoattack_runs or not study.autoattack_examples:
                attacks.pop("autoattack", None)
                if randomised:
                    attacks.pop("square", None)
            ordered = {a: attacks.get(a) for a in _attack_order(attacks)}
            evaluate_setting(
                model,
                name,
                x,
                y,
                study,
                ordered,
                (run, setting, sigma),
                results,
                fp,
                done,
                first=first,
                source_batches=transfer_cache,
                log=log,
            )


# ---------------------------------------------------------------------------------------------
# The pipeline


def _plan(configs: Path, study: StudyConfig, out: Path) -> dict:
    """The full (non-quick) study and each model's training size, for the report's time estimate."""
    train = {}
    for name in study.models + study.finetunes + ([study.transfer_source] if study.transfer_source else []):
        cfg = TrainConfig.from_yaml(configs / f"{name}.yaml")
        train[name] = {
            "epochs": cfg.epochs,
            "passes": train_passes(cfg),
            "examples": cfg.max_train_examples or 50_000,
        }
    return {"study": asdict(study), "train": train}


SELECT_CLEAN_MARGIN = 0.10


def select_best_noise(scores: dict[str, tuple[float, float]]) -> str:
    """The noise model to fine-tune from: the highest val PGD accuracy among the candidates whose val
    clean accuracy is within ``SELECT_CLEAN_MARGIN`` of the best candidate's (a collapsed model
    that predicts one class can score well under PGD). ``scores``: name -> (val_pgd, val_clean)."""
    top_clean = max(clean for _, clean in scores.values())
    eligible = [n for n, (_, clean) in scores.items() if clean >= top_clean - SELECT_CLEAN_MARGIN]
    return max(eligible, key=lambda n: scores[n])


def _select_best_noise(out: Path, study: StudyConfig, refs: dict[str, str], log) -> str:
    """``select_best_noise`` on the metrics stored with each candidate's checkpoint (val split)."""
    scores = {}
    for name in study.noise_models:
        metrics = json.loads(Path(refs[name] + ".json").read_text()).get("metrics", {})
        scores[name] = (metrics.get("val_pgd", -1.0), metrics.get("val_clean", -1.0))
    best = select_best_noise(scores)
    path = out / "selection.json"
    rule = f"max val_pgd among val_clean >= best val_clean - {SELECT_CLEAN_MARGIN}"
    fp = fingerprint(
        {"noise_models": study.noise_models, "rule": rule}, [refs[n] for n in study.noise_models]
    )

    def work():
        path.write_text(json.dumps({"best_noise": best, "scores": scores, "rule": rule}))
        log(f"  best noise model: {best} (val PGD, val clean: {scores[best]})")

    run_step(out, "select", fp, [path], work, log)
    return best


def _eval_step(out: Path, name: str, ckpt: str, source: str | None, study: StudyConfig, x, y, log) -> None:
    results = out / "eval" / f"{name}.jsonl"
    inputs = [ckpt] + ([source] if source else [])
    blackbox = [study.grid_square_queries, study.grid_square_queries_randomised]
    fp = fingerprint(
        {"eval": study.eval_identity(), "sigmas": study.sigmas, "runs": study.runs, "square": blackbox},
        inputs,
    )
    # rows survive a larger grid or an added attack; a row whose attack's budget changed is redone
    row_fp = fingerprint({"eval": study.eval_identity()}, inputs)

    def work():
        device = resolve_device(study.device)
        model, _ = load_checkpoint(ckpt, device=device)
        src = load_checkpoint(source, device=device)[0] if source else None
        set_aside_foreign_rows(results, row_fp)
        evaluate_model(model, name, x.to(device), y.to(device), study, results, row_fp, src, log)

    run_step(out, f"eval/{name}", fp, [results], work, log, discard=False)


def _load_rows(out: Path) -> list[dict]:
    rows = []
    for path in sorted((out / "eval").glob("*.jsonl")):
        if path.name.endswith(".stale.jsonl"):
            continue
        rows += read_jsonl(path)
    return rows


def _headline_step(
    out: Path, study: StudyConfig, ckpts: dict[str, str], x, y, log, kind: str = "convergence"
) -> None:
    """The headline setting (the smoothed row with the best mean worst case over runs, any sigma,
    vote and m) on the first ``convergence_examples`` examples, judged with every vote and m of
    ``ms`` + ``headline_ms``, into ``out/<kind>.jsonl``. ``kind`` "convergence": the adaptive
    preset at each scale of ``convergence_scales`` and claim 5's pairs (EPGD k x m vs PGD k*m);
    "blackbox": Square (``square_queries``) on the soft smoothed scores over ``draws`` draws of
    the input and weight noise (beating APGD would mean masked gradients)."""
    from paper_mnist.report import aggregate, best_smoothed

    table = aggregate(_load_rows(out))
    best = best_smoothed(table, study, positive_sigma=False)  # the headline row
    if best is None:
        return
    name, sigma = best["model"], best["sigma"]
    path = out / f"{kind}.jsonl"
    ident = {
        "model": name,
        "sigma": sigma,
        "n": study.convergence_examples,
        "eval": study.eval_identity(),
        "headline_ms": study.headline_ms,
        "square_queries": study.square_queries,
    }
    if kind == "convergence":
        ident.update(scales=study.convergence_scales, pairs=study.compute_pairs)
    else:
        ident.update(kind=kind, surrogate=f"soft@{study.draws}")
    fp = fingerprint(ident, [ckpts[name]])

    def work():
        device = resolve_device(study.device)
        model, _ = load_checkpoint(ckpts[name], device=device)
        model.eval()
        n = study.convergence_examples
        xs, ys = x[:n].to(device), y[:n].to(device)
        jobs: list[tuple[str, dict, Callable]] = []
        noise = sigma if sigma > 0 else None
        for scale in study.convergence_scales if kind == "convergence" else ():
            presets = adaptive_preset(model, study, sigma, scale)
            for a in ("apgd-ce", "apgd-dlr"):
                steps, draws = study.apgd_steps * scale, study.draws * scale
                jobs.append(
                    (a, {"kind": "convergence", "scale": scale, "steps": steps, "draws": draws}, presets[a])
                )
        for k, m in study.compute_pairs if kind == "convergence" else ():
            jobs.append(
                ("epgd", {"kind": "compute", "k": k, "m": m}, EPGD(model, noise, m, study.eps, steps=k))
            )
            jobs.append(
                ("pgd-km", {"kind": "compute", "k": k, "m": m}, EPGD(model, noise, 1, study.eps, steps=k * m))
            )
        if kind == "blackbox" and study.square_queries > 0:
            square = protocol_autoattack(model, study, sigma, ["square"], study.square_queries)
            jobs.append(("square", {"kind": "blackbox", "queries": study.square_queries}, square))
        with path.open("w") as f:
            for attack, meta, fn in jobs:
                gen = _seeded(study.seed, "convergence", attack, meta)
                t0 = time.time()
                x_adv = _craft(fn, xs, ys, gen, study.batch_size)
                craft = time.time() - t0
                ms = sorted(set(study.ms) | set(study.headline_ms))
                correct = judge_grid(
                    model,
                    sigma,
                    x_adv,
                    ys,
                    study.votes,
                    ms,
                    _seeded(attack, meta, "judge"),
                    draws=max(study.judging_m, 2 * max(ms)),  # >= 2 disjoint judgements at every m
                    subsets=study.judgements,
                )
                row = {
                    "model": name,
                    "sigma": sigma,
                    "attack": attack,
                    **meta,
                    "n": n,
                    "craft_seconds": round(craft, 4),
                    "accuracy": {kk: float(v.mean()) for kk, v in correct.items()},
                    "judgements": study.judgements,
                    "correct": {kk: encode_correct(v, study.judgements) for kk, v in correct.items()},
                }
                f.write(json.dumps(row) + "\n")
                log(
                    f"  {kind} {attack} {meta}: hard@{max(study.ms)} "
                    f"{row['accuracy'][f'hard@{max(study.ms)}']:.3f}"
                )

    run_step(out, kind, fp, [path], work, log)


def headline_rows(out: Path, study: StudyConfig) -> list[tuple[tuple[str, str, float], bool]]:
    """The headline's ((model, setting, sigma), checked) rows: the best smoothed row (any sigma,
    vote and m) and its base model, with the doubling check; when that row's sigma is 0 (a
    weight-noise vote), also the best row with input noise (sigma > 0) and its base, without the
    check. [] before the evaluation has rows."""
    from paper_mnist.report import aggregate, best_smoothed

    table = aggregate(_load_rows(out))
    best = best_smoothed(table, study, positive_sigma=False)
    if best is None:
        return []
    rows = [((best["model"], "smoothed", float(best["sigma"])), True), ((best["model"], "base", 0.0), True)]
    pos = best_smoothed(table, study) if best["sigma"] == 0 else None
    if pos is not None:
        for row in ((pos["model"], "smoothed", float(pos["sigma"])), (pos["model"], "base", 0.0)):
            if row not in [r for r, _ in rows]:
                rows.append((row, False))
    return rows


def _ladder_key(
    out: Path, ckpt: str, row: tuple[str, str, float], check: bool, run: int, study: StudyConfig
) -> tuple[str, list[dict]]:
    """The fingerprint of one ladder row and run, and the grid rows it cascades from: keyed by
    the checkpoint's hash, the grid's identity, those rows' own fingerprints (weights, transfer
    source, budget), the row, the run, the scales and whether the check runs."""
    name, setting, sigma = row
    prior = [
        r
        for r in _load_rows(out)
        if (r["model"], r["run"], r["setting"], r["sigma"]) == (name, run, setting, sigma)
    ]
    ident = {
        "eval": study.eval_identity(),
        "grid_rows": sorted({r["fingerprint"] for r in prior}),
        "row": list(row),
        "run": run,
        "scales": study.headline_scales,
        "check": check,
    }
    return fingerprint(ident, [ckpt]), prior


def plateau_attacks(model: nn.Module, study: StudyConfig, sigma: float | None) -> dict[str, Callable]:
    """The plateau stage's attacks of one row (``sigma`` None: the base model): the adaptive
    preset's APGD attacks at (plateau_steps, plateau_draws), named ``apgd-ce@plateau`` ..., then
    per ``plateau_temperature`` T APGD-CE on the expected softmax of logits / T (a surrogate of
    the hard vote; ``tempered_attack_name``)."""
    budget = (study.plateau_steps, study.plateau_draws)
    temperatures = study.plateau_temperatures()
    presets = adaptive_preset(
        model, study, sigma, budget=budget, restarts=study.plateau_restarts, temperatures=temperatures
    )
    tempered = [tempered_name(t) for t in temperatures]
    attacks = {f"{a}@plateau": fn for a, fn in presets.items() if a != "pgd" and a not in tempered}
    for position, (temperature, name) in enumerate(zip(temperatures, tempered, strict=True)):
        attacks[tempered_attack_name(position, temperature)] = presets[name]
    return attacks


def plateau_rows(out: Path, study: StudyConfig) -> list[tuple[str, str, float]]:
    """The plateau stage's (model, setting, sigma) rows, most decisive first: every model's best
    smoothed row with input noise (sigma > 0, by the grid's worst case) and its base. The models
    whose best smoothed row beats its base on the grid come first (a stronger attack can overturn
    only those comparisons of claim 1), smoothed rows before base rows. [] before the evaluation."""
    from paper_mnist.report import aggregate, base_row, best_smoothed

    table = aggregate(_load_rows(out))
    tiers: list[list[tuple[str, str, float]]] = [[], [], [], []]
    for name in dict.fromkeys(r["model"] for r in table):
        best, base = best_smoothed(table, model=name), base_row(table, name)
        if best is None:
            continue
        raised = base is not None and best["worst"][0] > base["worst"][0]
        tiers[0 if raised else 2].append((name, "smoothed", float(best["sigma"])))
        if base is not None:
            tiers[1 if raised else 3].append((name, "base", 0.0))
    return [row for tier in tiers for row in tier]


def _prior_rows(out: Path, name: str, run: int, setting: str, sigma: float) -> list[dict]:
    """The grid's and the headline ladder's rows of one (model, run, setting, sigma)."""
    rows = _load_rows(out)
    if (out / "headline").exists():
        for path in sorted((out / "headline").glob("*.jsonl")):
            if not path.name.endswith(".stale.jsonl"):
                rows += read_jsonl(path)
    key = (name, run, setting, sigma)
    return [r for r in rows if (r["model"], r["run"], r["setting"], r["sigma"]) == key]


def _plateau_key(
    out: Path, ckpt: str, row: tuple[str, str, float], run: int, study: StudyConfig
) -> tuple[str, list[dict]]:
    """The fingerprint of one plateau row and run, and the rows it cascades from (the grid's and
    the headline ladder's): keyed by the checkpoint's hash, the grid's identity, those rows' own
    fingerprints, the row, the run and the plateau budget."""
    prior = _prior_rows(out, row[0], run, row[1], row[2])
    ident = {
        "eval": study.eval_identity(),
        "prior_rows": sorted({r["fingerprint"] for r in prior}),
        "row": list(row),
        "run": run,
        # restarts join the key only when > 1: rows run before the setting existed keep theirs
        "plateau": [study.plateau_steps, study.plateau_draws, study.plateau_examples]
        + ([study.plateau_restarts] if study.plateau_restarts > 1 else []),
    }
    return fingerprint(ident, [ckpt]), prior


def _cascade_job(
    out: Path,
    ckpt: str,
    row: tuple[str, str, float],
    run: int,
    study: StudyConfig,
    stage: str,
    checked: bool,
    _refs,
    log,
) -> None:
    """One row and run of a stage cascaded after the grid, into ``out/<stage>/<...>.jsonl`` (rows
    resume one attack at a time; rows of another configuration are moved aside):

    - "headline": ``headline_attacks`` on every example, on those that survived the evaluation's
      attacks of the same (run, setting, sigma); the doubling check on the first
      ``headline_check_runs`` runs of a ``checked`` row;
    - "plateau": ``plateau_attacks`` on the first ``plateau_examples`` examples, on those that
      survived the grid's and the headline's attacks (``checked`` unused).
    """
    name, setting, sigma = row
    study = study.for_model(name)
    target = None if setting == "base" else sigma
    if stage == "headline":
        check = checked and run < study.headline_check_runs
        fp, prior = _ladder_key(out, ckpt, row, check, run, study)
        n, attacks_of = study.examples, lambda model: headline_attacks(model, study, target, check)
        step_fp = fp
    elif stage == "plateau":
        fp, prior = _plateau_key(out, ckpt, row, run, study)
        n, attacks_of = study.plateau_examples, lambda model: plateau_attacks(model, study, target)
        # the tempered attack runs after the pair: their rows keep their key, the step gets a new one
        temperatures = study.plateau_temperatures()
        step_fp = fingerprint({"rows": fp, "temperature": temperatures}) if temperatures else fp
    else:
        raise ConfigError(f"unknown cascaded stage {stage!r}; choose headline or plateau")
    results = out / stage / f"{name}-{setting}-{sigma}-run{run}.jsonl"

    def work():
        device = resolve_device(study.device)
        x, y = (t[:n].to(device) for t in _test_data(study))
        model, _ = load_checkpoint(ckpt, device=device)
        model.eval()
        set_aside_foreign_rows(results, fp)
        alive = {k: v[:n] for k, v in _alive_from(prior, study.examples, device).items()}
        attacks = attacks_of(model)
        evaluate_setting(
            model,
            name,
            x,
            y,
            study,
            attacks,
            (run, setting, sigma),
            results,
            fp,
            _done_rows(results, fp),
            alive=alive,
            cascade=tuple(attacks),
            log=log,
        )

    run_step(out, f"{stage}/{results.stem}", step_fp, [results], work, log, discard=False)


def _calibrate_step(out: Path, name: str, ckpt: str, study: StudyConfig, x, y, log) -> None:
    """Unit costs of a model at a full batch (``batch_size`` examples), for the report's estimate of
    the full study's time: seconds per example-gradient (PGD-5) and per example-forward (8 draws)."""
    path = out / "calibration" / f"{name}.json"
    fp = fingerprint({"batch": study.batch_size, "device": study.device}, [ckpt])

    def work():
        device = resolve_device(study.device)
        model, _ = load_checkpoint(ckpt, device=device)
        model.eval()
        n = study.batch_size
        reps = -(-n // x.shape[0])
        xs, ys = x.repeat(reps, 1, 1, 1)[:n].to(device), y.repeat(reps)[:n].to(device)
        gen = _seeded(study.seed, "calibrate")
        PGD(model, study.eps, steps=1)(xs[:8], ys[:8], gen)  # warm-up
        t0 = time.time()
        PGD(model, study.eps, steps=5)(xs, ys, gen)
        grad_s = (time.time() - t0) / (n * (5 + 1))  # 5 steps + the best-point judging pass
        t0 = time.time()
        SmoothedClassifier(model, 0.1, 8, "hard").vote_counts(xs, gen)
        fwd_s = (time.time() - t0) / (n * 8)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"model": name, "batch": n, "gradient_s": grad_s, "forward_s": fwd_s}))

    run_step(out, f"calibrate/{name}", fp, [path], work, log)


def _certify_step(out: Path, name: str, ckpt: str, study: StudyConfig, x, y, log) -> None:
    path = out / "certify" / f"{name}.json"
    ident = {
        k: getattr(study, k)
        for k in ("cert_sigmas", "cert_examples", "cert_n0", "cert_n", "cert_alpha", "seed")
    }
    fp = fingerprint(ident, [ckpt])

    def work():
        device = resolve_device(study.device)
        model, _ = load_checkpoint(ckpt, device=device)
        model.eval()
        n = study.cert_examples
        xs, ys = x[:n].to(device), y[:n].to(device)
        rows = []
        for sigma in study.cert_sigmas:
            t0 = time.time()
            pred, radius = certify(
                model,
                xs,
                sigma,
                study.cert_n0,
                study.cert_n,
                study.cert_alpha,
                generator=_seeded(study.seed, "certify", sigma),
            )
            ok = (pred.cpu() == ys.cpu()).numpy()
            r = radius.cpu().numpy()
            rows.append(
                {
                    "sigma": sigma,
                    "n": n,
                    "seconds": round(time.time() - t0, 3),
                    "certified": {str(rad): float(np.mean(ok & (r >= rad))) for rad in CERT_RADII},
                }
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "model": name,
                    "n0": study.cert_n0,
                    "n_draws": study.cert_n,
                    "alpha": study.cert_alpha,
                    "rows": rows,
                }
            )
        )

    run_step(out, f"certify/{name}", fp, [path], work, log)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _schedule(tasks: dict[str, tuple[list[str], Callable, tuple]], jobs: int, log) -> dict[str, object]:
    """Run ``tasks`` (name -> (deps, fn, args)), each once every dep has finished, as
    ``fn(*args, results_so_far, log)``; returns name -> fn's result. ``jobs`` > 1 runs up to that
    many at once, each in a spawned process with the parent's torch threads split between them
    (``print`` is their log). Insertion order is the priority; a failure stops the schedule."""
    results: dict[str, object] = {}
    pending = dict(tasks)
    if jobs <= 1:
        while pending:
            ready = [n for n, (deps, _, _) in pending.items() if all(d in results for d in deps)]
            if not ready:
                raise ConfigError(f"steps {sorted(pending)} wait on steps that never run")
            name = ready[0]
            _, fn, args = pending.pop(name)
            results[name] = fn(*args, dict(results), log)
        return results
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, torch.get_num_threads() // jobs)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as pool:
        running: dict = {}
        while pending or running:
            for name in [n for n, (deps, _, _) in pending.items() if all(d in results for d in deps)]:
                if len(running) >= jobs:
                    break
                _, fn, args = pending.pop(name)
                running[pool.submit(fn, *args, dict(results), print)] = name
            if not running:
                raise ConfigError(f"steps {sorted(pending)} wait on steps that never run")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                results[running.pop(fut)] = fut.result()  # re-raises a worker's error
    return results


def _train_job(configs: Path, name: str, out: Path, study: StudyConfig, fixed: dict, refs: dict, log) -> str:
    """Train one model; its ``@name`` init resolves in ``fixed`` (e.g. ``best_noise``) or in the
    checkpoints of the steps finished before it (``refs``)."""
    return train_step(configs, name, out, {**refs, **fixed}, log, study.train_overrides(name), study.device)


def _test_data(study: StudyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    splits, _ = load_splits(study.data, ("test",))
    return splits["test"].tensors(max(study.examples, study.cert_examples))


def _eval_job(out: Path, name: str, ckpt: str, source: str | None, study: StudyConfig, _refs, log) -> None:
    x, y = _test_data(study)
    mine = study.for_model(name)
    n = mine.examples
    _calibrate_step(out, name, ckpt, mine, x[:n], y[:n], log)
    _eval_step(out, name, ckpt, source, mine, x[:n], y[:n], log)


def _certify_job(out: Path, name: str, ckpt: str, study: StudyConfig, _refs, log) -> None:
    x, y = _test_data(study)
    _certify_step(out, name, ckpt, study, x, y, log)


def _machine(study: StudyConfig) -> str:
    """The machine a pass ran on, in words (the page's wall times are its)."""
    device = resolve_device(study.device)
    cores = f"{os.cpu_count()} CPU cores"
    return f"{torch.cuda.get_device_name(device)}, {cores}" if device.type == "cuda" else cores


def _main_stages(out: Path, configs: Path, study: StudyConfig, stop_after: str | None, log) -> None:
    """Train, select, fine-tune, evaluate, then the convergence, headline, plateau and certify
    stages (up to ``stop_after``)."""
    base = study.models + ([study.transfer_source] if study.transfer_source else [])
    train_tasks = {n: (init_refs(configs, n), _train_job, (configs, n, out, study, {})) for n in base}
    refs: dict[str, str] = dict(_schedule(train_tasks, study.jobs, log))  # type: ignore[arg-type]
    if study.finetunes:
        best = _select_best_noise(out, study, refs, log)
        refs["best_noise"] = refs[best]
        ft_refs = {"best_noise": refs["best_noise"]}  # what a fine-tune's "@best_noise" names
        ft_tasks = {n: ([], _train_job, (configs, n, out, study, ft_refs)) for n in study.finetunes}
        refs.update(_schedule(ft_tasks, study.jobs, log))  # type: ignore[arg-type]
    evaluated = study.models + study.finetunes
    if stop_after != "train":
        source = refs.get(study.transfer_source) if study.transfer_source else None
        # the costliest models first (checkpoint size as the proxy), so parallel steps end together
        order = sorted(evaluated, key=lambda n: -os.path.getsize(refs[n]))
        _schedule({n: ([], _eval_job, (out, n, refs[n], source, study)) for n in order}, study.jobs, log)
        if stop_after != "eval":
            x, y = _test_data(study)
            for kind in ("convergence", "blackbox"):
                _headline_step(out, study, refs, x[: study.examples], y[: study.examples], log, kind)
            rows = headline_rows(out, study) if study.headline_scales else []
            if rows:
                check = study.headline_check_runs
                runs = sorted(range(study.for_model(rows[0][0][0]).runs), key=lambda r: r >= check)
                ladder = {  # the long doubling checks first, so the parallel jobs end together
                    f"{row}-{run}": (
                        [],
                        _cascade_job,
                        (out, refs[row[0]], row, run, study, "headline", checked),
                    )
                    for checked in (True, False)
                    for run in runs
                    for row, c in rows
                    if c == checked
                }
                _schedule(ladder, study.jobs, log)
            if study.plateau_steps:
                plateau = {  # most decisive rows first; a row's runs side by side
                    f"plateau-{row}-{run}": (
                        [],
                        _cascade_job,
                        (out, refs[row[0]], row, run, study, "plateau", False),
                    )
                    for row in plateau_rows(out, study)
                    for run in range(study.for_model(row[0]).runs)
                }
                _schedule(plateau, study.jobs, log)
            if stop_after != "convergence":
                certified = [n for n in order if study.for_model(n).certify]
                tasks = {n: ([], _certify_job, (out, n, refs[n], study)) for n in certified}
                _schedule(tasks, study.jobs, log)


def run_study(
    out: str | os.PathLike,
    configs: str | os.PathLike = DEFAULT_CONFIGS,
    quick: bool = False,
    doc: str | os.PathLike | None = None,
    stop_after: str | None = None,
    log: Callable[[str], None] = print,
    profile: str | None = None,
    only: str | None = None,
    models: Sequence[str] | None = None,
    **overrides,
) -> Path:
    """Run (or resume) the whole study into ``out``; returns the path of the report it writes.

    ``profile`` applies that block of study.yaml ("quick": minutes, the same as ``quick=True``;
    "gpu": the full specification). ``stop_after`` ("train", "eval", "convergence", "certify")
    ends the run after that stage (the report is still written from what exists); the longer-training
    stage (study.yaml's ``long_training``) runs last, and ``only="long"`` runs it alone (its models
    train from scratch or from one another: it needs nothing of the other stages), of only
    ``models`` when given (and the models they start from). ``doc`` also copies the report there.
    ``overrides`` replace study.yaml fields (``jobs=2``: two steps at once).
    """
    out, configs = Path(out), Path(configs)
    study = load_study(configs, quick, profile, **overrides)
    stages = ("train", "eval", "convergence", "certify")
    if stop_after is not None and stop_after not in stages:
        raise ConfigError(f"stop_after must be one of {', '.join(stages)}")
    if only is not None and stop_after is not None:
        raise ConfigError("only and stop_after exclude each other: give one")
    if only is not None and only != "long":
        raise ConfigError(f"only must be 'long' (the one stage that needs no other), not {only!r}")
    if only is not None and study.long() is None:
        raise ConfigError("only='long': study.yaml gives no long_training stage")
    if models is not None and only != "long":
        raise ConfigError(
            "models only applies to the longer-training stage run alone: add --only long (only='long')"
        )
    if study.long() is not None:
        check_long_inits(configs, study)
        long_stage = long_tasks(configs, out, study, models)  # checks the names before anything is written
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(asdict(study), indent=1))
    full = load_study(configs, False, None if study.quick else profile, **overrides)
    (out / "study_full.json").write_text(json.dumps(_plan(configs, full, out), indent=1))
    if not (out / "started.json").exists():  # the study's first pass: its wall time counts from here
        (out / "started.json").write_text(json.dumps({"time": time.time()}))
    t_start = time.time()
    if only is None:
        _main_stages(out, configs, study, stop_after, log)
    if study.long() is not None and stop_after is None:
        _schedule(long_stage, study.jobs, log)
    wall = time.time() - t_start
    log(f"pipeline pass: {wall:.1f} s")
    with (out / "passes.jsonl").open("a") as f:
        record = {
            "seconds": round(wall, 1),
            "jobs": study.jobs,
            "quick": study.quick,
            "machine": _machine(study),
        }
        f.write(json.dumps(record) + "\n")
    from paper_mnist.report import write_paper_report

    return write_paper_report(out, doc)


__all__ = [
    "StudyConfig",
    "judge_grid",
    "load_study",
    "run_study",
    "setting_attacks",
    "unbits",
]
