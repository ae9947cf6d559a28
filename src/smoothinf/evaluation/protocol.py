"""The evaluation protocol: defended classifiers x attacks x R seeded runs, judged per example."""

from __future__ import annotations

import time

import torch
from torch import nn
from tqdm import tqdm

from smoothinf import __version__
from smoothinf.attacks import (
    EPGD,
    FGSM,
    PGD,
    AutoAttackAdapter,
    NAttack,
    SmoothAdv,
    TransferAttack,
    robust_accuracy,
)
from smoothinf.distributed import gather_json, init_distributed
from smoothinf.evaluation.config import EvalConfig
from smoothinf.evaluation.results import ResultsStore
from smoothinf.noise import NoiseDistribution
from smoothinf.smoothing import SmoothedClassifier


def build_defended(model: nn.Module, vote: str, sigma: float, m: int, noise: str = "gaussian") -> nn.Module:
    """The classifier under evaluation: the base model ("none") or its smoothed version."""
    if vote == "none":
        return model
    return SmoothedClassifier(model, sigma, m, vote, noise)


def build_attacks(
    model: nn.Module,
    cfg: EvalConfig,
    vote: str,
    sigma: float,
    eps: float,
    defended: nn.Module | None = None,
    source: nn.Module | None = None,
) -> dict[str, object]:
    """Adaptive attacks for one setting: PGD on the base model; EPGD / SmoothAdv through the noise;
    optionally transfer from ``source``, NAttack on ``defended``'s scores, AutoAttack."""
    noise = NoiseDistribution(cfg.noise, sigma)
    defended = model if defended is None else defended
    attacks: dict[str, object] = {}
    for name in cfg.attacks:
        if name == "fgsm":
            attacks[name] = FGSM(model, eps)
        elif name == "pgd":
            attacks[name] = PGD(model, eps, steps=cfg.steps, restarts=cfg.restarts)
        elif name == "transfer":
            attacks[name] = TransferAttack(PGD(source, eps, steps=cfg.steps, restarts=cfg.restarts))
        elif name == "nattack":
            attacks[name] = NAttack(
                defended, eps, population=cfg.nattack_population, max_queries=cfg.nattack_queries
            )
        elif name == "autoattack":
            if vote == "none":
                attacks[name] = AutoAttackAdapter(model, "linf", eps, "standard", seed=cfg.seed)
            else:
                surrogate = SmoothedClassifier(model, sigma, cfg.attack_m, "soft", cfg.noise)
                attacks[name] = AutoAttackAdapter(surrogate, "linf", eps, "rand", seed=cfg.seed)
        elif vote != "none":  # expectation attacks coincide with PGD on the unsmoothed model
            cls = EPGD if name == "epgd" else SmoothAdv
            attacks[name] = cls(model, noise, cfg.attack_m, eps, steps=cfg.steps, restarts=cfg.restarts)
    return attacks


def evaluate(
    cfg: EvalConfig,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    store: ResultsStore | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run the protocol on (x, y) and return one record per (run, setting, eps).

    Records already in ``store`` are skipped (resume); new ones are appended as they finish. Each
    record holds clean accuracy, per-attack and worst-case robust accuracy of the defended
    classifier (smoothed with fresh noise for its own judging), the strongest attack and timings.
    """
    cfg.validate()
    done = store.done() if store is not None else set()
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    jobs = [(r, s, e) for r in range(cfg.runs) for s in cfg.settings() for e in cfg.eps]
    jobs = [j for j in jobs if (j[0], j[1][0], float(j[1][1]), int(j[1][2]), float(j[2])) not in done]
    # Under torchrun each rank takes every world-th (run, setting, eps) job on all examples, so every
    # record is computed exactly as one process would (same seed, same data, same draws).
    source = None
    if "transfer" in cfg.attacks:
        from smoothinf.models import load_checkpoint

        source, _ = load_checkpoint(cfg.transfer_source, device=device)
    dist_info = init_distributed(device)
    mine = jobs[dist_info.rank :: dist_info.world_size]
    records = []
    for run, (vote, sigma, m), eps in tqdm(
        mine, desc="evaluate", disable=not progress or not dist_info.is_main
    ):
        seed = cfg.seed + run
        gen = torch.Generator(device=device).manual_seed(seed)
        start = time.time()
        defended = build_defended(model, vote, sigma, m, cfg.noise)
        result = robust_accuracy(
            defended,
            x,
            y,
            build_attacks(model, cfg, vote, sigma, eps, defended, source),
            gen,
            batch_size=cfg.batch_size,
        )
        acc = result.accuracy
        records.append(
            {
                "run": run,
                "seed": seed,
                "vote": vote,
                "sigma": float(sigma),
                "m": int(m),
                "eps": float(eps),
                "n": int(x.shape[0]),
                "clean": result.clean_accuracy,
                "attacks": acc,
                "worst_case": result.worst_case_accuracy,
                "strongest": min(acc, key=acc.get) if acc else None,
                "seconds": time.time() - start,
                "fingerprint": cfg.fingerprint(),
                "config": cfg.to_dict(),
                "version": __version__,
            }
        )
        if store is not None and not dist_info.enabled:
            store.append(records[-1])
    if dist_info.enabled:
        records = sorted(
            gather_json(records, dist_info),
            key=lambda r: jobs.index((r["run"], (r["vote"], r["sigma"], r["m"]), r["eps"])),
        )
        if not dist_info.is_main:
            return records
        if store is not None:
            for r in records:
                store.append(r)
    return records
