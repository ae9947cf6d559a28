"""One training step of any ``smoothinf train`` config on random data of the config's input shape.

Used by the tests (every recipe and study config builds and steps) and to time a step for GPU-hour
estimates. The model is built as the trainer builds it (``create_model_for`` + ``inject_noise``
with the config's noise; a fine-tuning config's ``init`` checkpoint is not read: its noise is given
in the config), the objective by ``build_objective``; the optimizer is the trainer's (SGD Nesterov
or Adam over ``param_groups``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from smoothinf.data import get_dataset_info
from smoothinf.models import create_model_for
from smoothinf.noise import inject_noise, param_groups
from smoothinf.training.objectives import build_objective
from smoothinf.training.trainer import TrainConfig
from smoothinf.utils import dataclass_from_yaml, resolve_device


@dataclass
class StepTiming:
    """Seconds per optimizer step (mean over ``steps`` timed steps after one warm-up) and the loss."""

    config: str
    batch_size: int
    seconds: float
    loss: float
    parameters: int


def load_train_config(path: str | os.PathLike, **overrides) -> TrainConfig:
    """A TrainConfig from YAML without ``validate`` (a fine-tuning's ``init`` may not exist yet)."""
    return dataclass_from_yaml(TrainConfig, path, **overrides)


def time_train_step(
    cfg: TrainConfig, batch_size: int = 2, steps: int = 1, device: str = "cpu", seed: int = 0
) -> StepTiming:
    """Run 1 warm-up + ``steps`` timed training steps of ``cfg`` on uniform random images."""
    dev = resolve_device(device)
    info = get_dataset_info(cfg.data)
    torch.manual_seed(seed)
    model = create_model_for(cfg.model, info)
    if cfg.noise:
        inject_noise(model, cfg.noise, rank=cfg.noise_rank, init=cfg.noise_init, sigma=cfg.noise_init)
    model = model.to(dev).train()
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    else:
        opt = torch.optim.Adam(groups, lr=cfg.lr)
    objective = build_objective(
        cfg.objective, cfg.eps, cfg.alpha, cfg.attack_steps, cfg.adv_weight, cfg.beta, cfg.sigma, cfg.m_train
    )
    gen = torch.Generator(device=dev).manual_seed(seed)
    x = torch.rand((batch_size, *info.input_shape), generator=gen, device=dev)
    y = torch.randint(0, info.num_classes, (batch_size,), generator=gen, device=dev)
    loss = float("nan")
    elapsed = 0.0
    for i in range(steps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        step = objective(model, x, y, gen)
        opt.zero_grad(set_to_none=True)
        step.loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        loss = float(step.loss.detach())
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i > 0:
            elapsed += time.perf_counter() - t0
    return StepTiming(
        config=str(getattr(cfg, "out", "")),
        batch_size=batch_size,
        seconds=elapsed / max(steps, 1),
        loss=loss,
        parameters=sum(p.numel() for p in model.parameters()),
    )


def train_configs(folder: str | os.PathLike) -> list[Path]:
    """The ``smoothinf train`` YAMLs of a folder (``study.yaml`` and ``eval_*.yaml`` are not)."""
    return sorted(
        p for p in Path(folder).glob("*.yaml") if p.name != "study.yaml" and not p.name.startswith("eval_")
    )


def train_passes(cfg: TrainConfig) -> int:
    """Forward-backward passes per training example and epoch: the inner attack's gradients plus
    the clean and adversarial losses (EPGD-AT: steps x m_train draws)."""
    inner = cfg.attack_steps * (cfg.m_train if cfg.objective in ("epgd", "smoothadv") else 1)
    return 1 if cfg.objective in ("standard", "gaussian") else inner + 2
