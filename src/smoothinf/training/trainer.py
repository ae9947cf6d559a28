"""The training loop: config, objective, per-epoch atomic checkpoints, exact resume, metrics JSONL."""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from smoothinf.data import load_splits
from smoothinf.distributed import all_reduce_sum, barrier, init_distributed
from smoothinf.errors import CheckpointError, ConfigError, TrainingDiverged
from smoothinf.models import create_model_for, list_models, load_checkpoint, save_checkpoint
from smoothinf.models.inputs import check_model_input
from smoothinf.models.state import apply_state_dict
from smoothinf.noise import NOISE_KINDS, inject_noise, input_noise_std, mean_noise_level, param_groups
from smoothinf.recipes import resolve_config
from smoothinf.training.co_guard import COGuard, COGuardConfig
from smoothinf.training.objectives import (
    INPUT_NOISE_OBJECTIVES,
    OBJECTIVES,
    build_objective,
    check_input_noise,
)
from smoothinf.training.single_step import SINGLE_STEP_OBJECTIVES
from smoothinf.utils import (
    check_dataclass_types,
    check_output,
    dataclass_from_yaml,
    output_lock,
    resolve_device,
    seed_everything,
)


@dataclass
class TrainConfig:
    """Everything a training run needs; ``validate()`` runs before any work starts.

    ``sigma`` (pixel units) is the one input-noise std: of the objective's Gaussian noise
    (gaussian / cni-iw / epgd / smoothadv) or of the ``noise: cni-i`` layer, never both.
    ``noise_init`` initialises the PNI noise scales only (CNI-W's d and F start at 0.0625 and
    0.01). ``noise_weight_decay``: weight decay of the noise parameters (0 as in PNI; the paper's
    reference code uses ``weight_decay`` for them too, see docs/training-fidelity.md).
    A NaN or infinite loss, gradient or weight stops the run (``TrainingDiverged``) before the
    update that would save it.
    """

    data: str = "mnist"
    root: str | None = None
    model: str = "mnist_cnn_small"
    noise: str | None = None
    noise_rank: int = 5
    noise_init: float = 0.25
    objective: str = "standard"
    eps: float = 0.3
    alpha: float | None = None
    attack_steps: int = 10
    adv_weight: float = 0.5
    beta: float = 6.0
    sigma: float = 0.0
    m_train: int = 8
    start_noise: float | None = None
    grad_align: float = 0.0
    # certified-robustness training (smoothinf.training.certified_objectives; build_objective)
    attack_norm: str = "linf"
    attack_noise: str = "fresh"
    warmup_epochs: int = 0
    consistency_lambda: float = 10.0
    consistency_eta: float = 0.5
    smoothmix_eta: float = 1.0
    smoothmix_mix_step: int = 0
    macer_lambda: float = 16.0
    macer_gamma: float = 8.0
    macer_beta: float = 16.0
    macer_deferred_epochs: int = 0
    co_guard: str | None = None
    co_guard_every: int = 100
    co_guard_examples: int = 256
    co_guard_drop: float = 0.2
    co_guard_gap: float = 0.5
    co_guard_pgd_steps: int = 10
    co_guard_shrink: float = 0.5
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    sgd_momentum: str = "nesterov"
    train_split: str = "train"
    weight_decay: float = 0.0
    noise_weight_decay: float = 0.0
    schedule: str = "constant"
    milestones: list[int] = field(default_factory=list)
    epochs: int = 1
    batch_size: int = 128
    max_train_examples: int | None = None
    eval_examples: int = 1000
    eval_every: int = 1
    amp: bool = False
    grad_clip: float | None = None
    eval_pgd_steps: int = 10
    select_by: str = "robust"
    init: str | None = None
    out: str = "runs/train"
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        check_dataclass_types(self, "train config")
        for name in ("epochs", "batch_size", "eval_examples", "eval_every", "eval_pgd_steps", "attack_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("m_train", "noise_rank", "max_train_examples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.model not in list_models():
            raise ConfigError(f"unknown model {self.model!r}; see `smoothinf models list`")
        if self.noise is not None and self.noise not in NOISE_KINDS:
            raise ConfigError(f"unknown noise {self.noise!r}; choose one of {', '.join(NOISE_KINDS)}")
        if self.sgd_momentum not in ("nesterov", "plain"):
            raise ConfigError(f"unknown sgd_momentum {self.sgd_momentum!r}; use nesterov or plain")
        if self.train_split not in ("train", "train+val"):
            raise ConfigError(
                f"unknown train_split {self.train_split!r}; use train, or train+val (the whole"
                " training set; model selection then has no held-out split: use select_by last)"
            )
        if self.train_split == "train+val" and self.select_by != "last":
            raise ConfigError("train_split train+val trains on the validation images: set select_by last")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; use sgd or adam")
        if self.schedule not in ("constant", "multistep", "cosine", "cyclic"):
            raise ConfigError(
                f"unknown schedule {self.schedule!r}; use constant, multistep, cosine or cyclic"
            )
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.select_by not in ("clean", "robust", "last"):
            raise ConfigError(f"unknown select_by {self.select_by!r}; use clean, robust or last")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.eps < 0 or self.sigma < 0:
            raise ConfigError("eps and sigma must be >= 0 (pixel units)")
        if self.weight_decay < 0 or self.noise_weight_decay < 0:
            raise ConfigError("weight_decay and noise_weight_decay must be >= 0")
        if self.objective in INPUT_NOISE_OBJECTIVES and self.sigma <= 0:
            raise ConfigError(
                f"the {self.objective} objective trains on Gaussian input noise: it needs --sigma > 0"
                " (pixel units)"
            )
        if self.noise == "cni-i" and self.objective in INPUT_NOISE_OBJECTIVES:
            raise ConfigError(
                f"--noise cni-i and --objective {self.objective} would both add input noise of std"
                " --sigma; use the cni-i layer with --objective adversarial / standard / trades, or"
                f" --objective {self.objective} without --noise cni-i"
            )
        if self.noise == "cni-i" and self.init is None and self.sigma <= 0:
            raise ConfigError("--noise cni-i takes its input-noise std from --sigma: pass --sigma > 0")
        single = self.objective in SINGLE_STEP_OBJECTIVES
        if not single and (self.start_noise is not None or self.grad_align or self.co_guard):
            raise ConfigError(
                "start_noise, grad_align and co_guard apply to the single-step objectives only "
                f"({', '.join(SINGLE_STEP_OBJECTIVES)}), not {self.objective!r}"
            )
        if self.start_noise is not None and self.start_noise < 0:
            raise ConfigError(f"start_noise must be >= 0 (multiples of eps), got {self.start_noise}")
        if self.grad_align < 0:
            raise ConfigError(f"grad_align must be >= 0, got {self.grad_align}")
        if self.co_guard is not None:
            self.guard_config().validate()
        if self.init is not None and not Path(self.init).exists():
            raise ConfigError(f"--init checkpoint {self.init} not found")

    def guard_config(self) -> COGuardConfig:
        """The CO guard's settings (``co_guard`` is its action: stop | shrink)."""
        return COGuardConfig(
            action=self.co_guard or "stop",
            every=self.co_guard_every,
            examples=self.co_guard_examples,
            pgd_steps=self.co_guard_pgd_steps,
            drop=self.co_guard_drop,
            gap=self.co_guard_gap,
            shrink=self.co_guard_shrink,
            seed=self.seed,
        )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides) -> TrainConfig:
        """Load from a YAML file or a packaged recipe's name (``"mnist_pgd_at"``, see
        ``smoothinf.recipes``); non-None ``overrides`` (CLI flags) win; unknown keys are errors."""
        return dataclass_from_yaml(cls, resolve_config(path), **overrides)

    def to_yaml(self, path: str | os.PathLike) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(asdict(self), sort_keys=False))


# Files of a training run in ``out`` (what --overwrite removes; their presence means "a run is here").
RUN_FILES = (
    "last.pt",
    "metrics.jsonl",
    "config.yaml",
    "resume.jsonl",
    "model.safetensors",
    "model.safetensors.json",
    "best.safetensors",
    "best.safetensors.json",
)
# The lock a training run holds on its folder (``smoothinf.utils.output_lock``) while it writes.
LOCK_NAME = "train.lock"
# Settings that may change on --resume: they do not alter the epochs already trained. (epochs may
# grow, except with the cosine schedule, whose learning-rate curve depends on it.)
RESUME_MAY_CHANGE = ("epochs", "eval_every", "out", "root", "device")
# Objectives without an attack: their validation PGD accuracy says nothing, select by clean accuracy.
NON_ADVERSARIAL = ("standard", "gaussian", "consistency", "macer")


def selection_metric(cfg: TrainConfig) -> str:
    """What picks ``best.safetensors``: ``cfg.select_by``, except that ``robust`` means ``clean`` for a
    non-adversarial objective (a standard model's PGD accuracy is ~0 every epoch, so robust
    selection would keep epoch 1)."""
    if cfg.select_by == "robust" and cfg.objective in NON_ADVERSARIAL:
        return "clean"
    return cfg.select_by


def _torch_error_detail(exc: Exception) -> str:
    """The informative part of a ``torch.load`` error, whole words only: the line after
    "WeightsUnpickler error:" (which object was refused), else the first sentence."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        after = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        text = after[0] if after else text
    first = " ".join(text.split()).split(". ")[0].rstrip(".")
    return textwrap.shorten(first, width=160, placeholder=" ...")


def _read_state(path: Path) -> dict:
    """``last.pt`` (weights_only); a file that holds code-running objects, or that is truncated or
    corrupt, is a one-line CheckpointError saying which and what to do."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:  # weights_only refused an object: not a file of ours
        raise CheckpointError(
            f"{path}: refused to load: it holds Python objects other than tensors and plain data, which"
            f" could run code ({_torch_error_detail(exc)}); smoothinf train never writes such a file:"
            " delete it, or pass --overwrite to start over"
        ) from None
    except Exception as exc:  # torch raises RuntimeError / EOFError for cut files
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(exc).__name__}: {_torch_error_detail(exc)}); pass"
            " --overwrite to start over or restore the file"
        ) from None
    if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "epoch"} <= set(state):
        raise CheckpointError(f"{path} is not a smoothinf training state; pass --overwrite to start over")
    return state


def resume_changes(old: dict, cfg: TrainConfig, trained_epochs: int) -> dict[str, list]:
    """The settings that differ from the run being resumed, as ``{field: [old, new]}``; refuses
    (ConfigError naming the field) a change that alters what was trained (seed, lr, objective,
    model, data, ...), fewer epochs than already trained, or new epochs under a cosine schedule."""
    new = asdict(cfg)
    changes = {k: [old.get(k), v] for k, v in new.items() if k in old and old[k] != v}
    for key, (before, after) in changes.items():
        if key not in RESUME_MAY_CHANGE:
            raise ConfigError(
                f"--resume: {key} was {before!r} for the {trained_epochs} epoch(s) already trained, now"
                f" {after!r}; only {', '.join(RESUME_MAY_CHANGE)} may change (use a new --out for a new run)"
            )
    if cfg.epochs < trained_epochs:
        raise ConfigError(
            f"--resume: {trained_epochs} epochs are already trained, --epochs {cfg.epochs} is fewer"
        )
    if "epochs" in changes and cfg.schedule == "cosine":
        raise ConfigError(
            "--resume: epochs cannot change under the cosine schedule (its lr curve depends on it)"
        )
    return changes


def _prepare_out(cfg: TrainConfig, resume: bool, overwrite: bool) -> dict | None:
    """Check ``cfg.out`` before anything is written; returns the state to resume from (or None).

    Without ``resume`` or ``overwrite`` a folder holding another run is refused; with ``resume``
    the saved state must be readable and trained with the same settings (``resume_changes``)."""
    import yaml

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    # a lone config.yaml may be the user's own config for this folder: not a run by itself
    present = [name for name in RUN_FILES if name != "config.yaml" and (out / name).exists()]
    if not resume:
        if present and not overwrite:
            raise ConfigError(
                f"{out} already holds a training run ({present[0]}); pass --resume to continue it,"
                " --overwrite to replace it, or choose a new --out"
            )
        return None
    state_path = out / "last.pt"
    if not state_path.exists():
        if (out / "model.safetensors").exists():
            raise ConfigError(f"--resume: {out} has a model but no last.pt to resume from; pass --overwrite")
        return None  # nothing finished yet: start from epoch 0
    state = _read_state(state_path)
    old = state.get("config")
    if old is None and (out / "config.yaml").exists():
        old = yaml.safe_load((out / "config.yaml").read_text())
    if not isinstance(old, dict):
        raise ConfigError(f"--resume: {out} records no training config; pass --overwrite to start over")
    state["changes"] = resume_changes(old, cfg, int(state["epoch"]))
    return state


def _atomic_torch_save(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _trim_metrics(log_path: Path, epochs: int) -> None:
    """Keep only the metric rows of the first ``epochs`` epochs (rows past the resumed state, or a
    torn last line, are dropped so every epoch appears once)."""
    if not log_path.exists():
        return
    keep = []
    for line in log_path.read_text().splitlines():
        try:
            if int(json.loads(line)["epoch"]) <= epochs:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    tmp = log_path.with_name(log_path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, log_path)


def _scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer):
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones, 0.1)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    if cfg.schedule == "cyclic":  # triangle over the run, peak lr at its middle (stepped per epoch)
        half = cfg.epochs / 2
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: max(0.0, 1 - abs(e + 0.5 - half) / half))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on pixels ``x`` (N, C, H, W) in [0, 1]."""
    device = next(model.parameters()).device
    correct = sum(
        int((model(x[i : i + batch_size].to(device)).argmax(1).cpu() == y[i : i + batch_size]).sum())
        for i in range(0, x.shape[0], batch_size)
    )
    return correct / max(1, x.shape[0])


def robust_accuracy_pgd(model, x, y, eps, steps, seed, batch_size=500) -> float:
    """Accuracy under L_inf PGD-``steps`` (step 2.5 eps / steps, random start)."""
    from smoothinf.attacks import PGD

    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        x_adv = PGD(model, eps, steps=steps)(xb, yb, generator=gen)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == yb).sum())
    return correct / max(1, x.shape[0])


def _keep_best(cfg: TrainConfig, out: Path, model: torch.nn.Module, record: dict) -> None:
    """Save ``best.safetensors`` when the validation metric chosen by ``select_by`` improves
    (selection on the val split, never on test)."""
    selected_by = selection_metric(cfg)
    key = {"clean": "val_clean", "robust": "val_pgd"}.get(selected_by)
    if key is None or key not in record:
        return
    best_path = out / "best.safetensors"
    previous = -1.0
    if best_path.exists():
        previous = json.loads(Path(str(best_path) + ".json").read_text())["metrics"].get(key, -1.0)
    if record[key] > previous:
        meta = {"dataset": cfg.data, "training": asdict(cfg), "metrics": record, "selected_by": selected_by}
        save_checkpoint(best_path, model, meta)


def _inject(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Add ``cfg.noise`` layers: weight noise initialised at ``noise_init``, cni-i of std ``sigma``."""
    if cfg.noise == "cni-i" and cfg.sigma <= 0:
        raise ConfigError("--noise cni-i takes its input-noise std from --sigma: pass --sigma > 0")
    inject_noise(model, cfg.noise, rank=cfg.noise_rank, init=cfg.noise_init, sigma=cfg.sigma)


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train per ``cfg``; checkpoints ``out/last.pt`` + ``out/model.safetensors`` every epoch.

    With ``resume`` the run continues after the last finished epoch and ends with the same weights
    as an uninterrupted run (CPU): batches and attack draws are seeded by (seed, epoch). Settings
    that alter what was trained may not change on resume; ``RESUME_MAY_CHANGE`` may, and the
    changes are logged to ``out/resume.jsonl``. A folder holding another run is refused unless
    ``overwrite`` (which deletes that run's files, ``RUN_FILES``, first).
    Returns the final metrics (val clean / PGD accuracy, test clean accuracy, wall time).
    """
    cfg.validate()
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    out = check_output(cfg.out, "--out", folder=True)
    with output_lock(out, "--out", lock=out / LOCK_NAME):
        return _train(cfg, resume, overwrite)


# Noise kinds whose scale ``noise_init`` sets (CNI-W starts its d and F at fixed values, 0.0625 / 0.01).
NOISE_INIT_KINDS = ("pni-w", "pni-a", "pni-wa")


def _diverged(
    cfg: TrainConfig, step: int, epoch: int, what: str, first: tuple[int, float] | None, kept: str
) -> str:
    """One line: where training diverged (``first``: this run's first step and its loss), the
    objective, what was kept and what to try."""
    hints = [f"a lower --lr (now {cfg.lr:g})"]
    if cfg.noise in NOISE_INIT_KINDS:
        hints.append(f"a smaller --noise-init (now {cfg.noise_init:g})")
    if cfg.init is None:
        hints.append("starting from an adversarially trained model with --init (as the paper does for CNI)")
    began = f" ({first[1]:.4g} at step {first[0]})" if first is not None and step > first[0] else ""
    tried = ", ".join(hints[:-1]) + (" or " if len(hints) > 1 else "") + hints[-1]
    return (
        f"training diverged at step {step} (epoch {epoch}, objective {cfg.objective}): {what}{began};"
        f" {kept}; try {tried}"
    )


def _finite_weights(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _train(cfg: TrainConfig, resume: bool, overwrite: bool) -> dict:
    state = _prepare_out(cfg, resume, overwrite)
    device = resolve_device(cfg.device)
    info_dist = init_distributed(device)
    if cfg.batch_size % info_dist.world_size:
        raise ConfigError(
            f"batch_size {cfg.batch_size} must be divisible by the {info_dist.world_size} ranks"
        )
    splits, info = load_splits(cfg.data, ("train", "val", "test"), cfg.root)
    x, y = splits["train"].tensors(cfg.max_train_examples)
    if cfg.train_split == "train+val":  # e.g. MNIST's 60,000 training images (the certified recipes)
        xv_all, yv_all = splits["val"].tensors()
        x, y = torch.cat([x, xv_all]), torch.cat([y, yv_all])
        x, y = x[: cfg.max_train_examples], y[: cfg.max_train_examples]  # None keeps all
    seed_everything(cfg.seed)
    if cfg.init:  # fine-tune; --noise adds noise layers to a checkpoint that has none of that kind
        model, _ = load_checkpoint(cfg.init, device=device)
        recorded = getattr(model, "smoothinf_noise", None) or {}
        kinds = {c["kind"] for c in recorded.get("stack", [recorded])} if recorded else set()
        if cfg.noise and cfg.noise not in kinds:
            _inject(model, cfg)
    else:
        model = create_model_for(cfg.model, info)
        if cfg.noise:
            _inject(model, cfg)
    check_model_input(model, x[:2], y[:2], name=f"--data {cfg.data}", check_device=False)  # e.g. --init
    objective_sigma = check_input_noise(cfg.objective, cfg.sigma, input_noise_std(model))
    model = model.to(device)
    base_model = model
    if info_dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model)
    groups = param_groups(base_model, cfg.weight_decay, cfg.noise_weight_decay)
    if cfg.optimizer == "sgd":
        nesterov = cfg.sgd_momentum == "nesterov"
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov)
    else:
        opt = torch.optim.Adam(groups, lr=cfg.lr)
    sched = _scheduler(cfg, opt)
    objective = build_objective(
        cfg.objective,
        cfg.eps,
        cfg.alpha,
        cfg.attack_steps,
        cfg.adv_weight,
        cfg.beta,
        objective_sigma,
        cfg.m_train,
        start_noise=cfg.start_noise,
        grad_align=cfg.grad_align,
        norm=cfg.attack_norm,
        attack_noise=cfg.attack_noise,
        warmup=cfg.warmup_epochs,
        consistency_lambda=cfg.consistency_lambda,
        consistency_eta=cfg.consistency_eta,
        smoothmix_eta=cfg.smoothmix_eta,
        smoothmix_mix_step=cfg.smoothmix_mix_step,
        macer_lambda=cfg.macer_lambda,
        macer_gamma=cfg.macer_gamma,
        macer_beta=cfg.macer_beta,
        macer_deferred_epochs=cfg.macer_deferred_epochs,
    )
    out = Path(cfg.out)
    state_path, log_path = out / "last.pt", out / "metrics.jsonl"
    start_epoch = 0
    if state is not None:
        apply_state_dict(base_model, state["model"], state_path)
        try:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{state_path}: optimizer state does not fit this run ({exc})") from None
        torch.set_rng_state(state["torch_rng"])
        start_epoch = int(state["epoch"])
        threads = state.get("threads")
        if device.type == "cpu" and threads is not None and threads != torch.get_num_threads():
            state["changes"]["threads"] = [threads, torch.get_num_threads()]
            if info_dist.is_main:
                print(
                    f"note: --resume: epochs 1-{start_epoch} ran on {threads} CPU thread(s), this run on"
                    f" {torch.get_num_threads()}: sums may round differently, so the weights can differ"
                    f" slightly from an uninterrupted run (pass --threads {threads} to match)",
                    file=sys.stderr,
                )
    if info_dist.is_main:
        if overwrite or state is None:  # a fresh run: no file of an earlier one may survive
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        _trim_metrics(log_path, start_epoch)
        if state is not None:
            event = {"resumed_at_epoch": start_epoch, "changes": state["changes"], "time": time.time()}
            with (out / "resume.jsonl").open("a") as f:
                f.write(json.dumps(event) + "\n")
        cfg.to_yaml(out / "config.yaml")
        if selection_metric(cfg) != cfg.select_by:
            print(
                f"select_by robust: objective {cfg.objective!r} is not adversarial;"
                " best.safetensors is chosen by clean accuracy"
            )
    barrier(info_dist)
    start = time.time()
    guard, stopped = None, False
    batches = -(-x.shape[0] // cfg.batch_size)
    global_step = start_epoch * batches
    if cfg.co_guard:  # every rank runs the same deterministic checks on the same weights
        xg, yg = splits["val"].tensors(cfg.co_guard_examples)
        perturbation = getattr(objective, "perturbation", None)
        guard = COGuard(cfg.guard_config(), xg, yg, cfg.eps, perturbation)
        guard.check(base_model, opt, global_step)  # the first restore point
    first_loss = None
    for epoch in range(start_epoch, cfg.epochs):
        kept = (
            f"{out}/model.safetensors and last.pt of epoch {epoch} are kept"
            if epoch
            else "no checkpoint was written"
        )
        guard_start = guard.seconds if guard else 0.0
        checks_start = len(guard.history) if guard else 0
        model.train()
        if hasattr(objective, "set_epoch"):  # warm-ups and deferred terms (certified_objectives)
            objective.set_epoch(epoch)
        batch_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        attack_gen = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + epoch + 7)
        perm = torch.randperm(x.shape[0], generator=batch_gen)
        epoch_start = time.time()
        totals = {"loss": 0.0, "clean": 0, "adv": 0, "n": 0}
        bar = tqdm(
            range(0, x.shape[0], cfg.batch_size),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not info_dist.is_main,
        )
        for i in bar:
            idx = perm[i : i + cfg.batch_size][info_dist.rank :: info_dist.world_size]  # this rank's share
            xb, yb = x[idx].to(device), y[idx].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                step = objective(model, xb, yb, attack_gen)
            loss = step.loss.item()
            if not math.isfinite(loss):  # stop before a NaN / inf update reaches the weights
                bar.close()
                raise TrainingDiverged(
                    _diverged(cfg, global_step + 1, epoch + 1, f"the loss is {loss}", first_loss, kept)
                )
            first_loss = (global_step + 1, loss) if first_loss is None else first_loss
            opt.zero_grad(set_to_none=True)
            step.loss.float().backward()
            # the gradients' norm (clipped to grad_clip when set; x1.0 otherwise): a NaN / inf one
            # would turn every weight NaN at this update
            norm = torch.nn.utils.clip_grad_norm_(base_model.parameters(), cfg.grad_clip or math.inf)
            if not math.isfinite(norm.item()):
                bar.close()
                what = f"the gradient norm is {norm.item()} at a loss of {loss:.4g}"
                raise TrainingDiverged(_diverged(cfg, global_step + 1, epoch + 1, what, first_loss, kept))
            opt.step()
            totals["loss"] += loss * len(idx)
            totals["clean"] += step.clean_correct
            totals["adv"] += step.adv_correct or 0
            totals["n"] += len(idx)
            post = {
                "loss": f"{totals['loss'] / totals['n']:.3f}",
                "acc": f"{totals['clean'] / totals['n']:.3f}",
            }
            if step.adv_correct is not None:
                post["adv"] = f"{totals['adv'] / totals['n']:.3f}"
            post.update({k: f"{v:.3g}" for k, v in mean_noise_level(base_model).items()})
            bar.set_postfix(post)
            global_step += 1
            if guard is not None and guard.due(global_step):
                stopped = guard.check(base_model, opt, global_step).collapsed and cfg.co_guard == "stop"
                if stopped:
                    break
        if guard is not None and not stopped and not guard.due(global_step):  # epoch-end check
            stopped = guard.check(base_model, opt, global_step).collapsed and cfg.co_guard == "stop"
        loop_seconds = time.time() - epoch_start
        if not _finite_weights(base_model):  # the last update overflowed: save nothing of it
            raise TrainingDiverged(
                _diverged(cfg, global_step, epoch + 1, "a weight is NaN or infinite", first_loss, kept)
            )
        sched.step()
        model.eval()
        summed = all_reduce_sum(
            [totals["loss"], totals["clean"], totals["adv"], totals["n"]], info_dist, device
        )
        totals = dict(zip(("loss", "clean", "adv", "n"), summed, strict=True))
        n = totals["n"]
        record = {
            "epoch": epoch + 1,
            "loss": totals["loss"] / n,
            "train_clean": totals["clean"] / n,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.time() - start,
            "epoch_loop_seconds": loop_seconds,
        }
        if cfg.objective not in ("standard", "gaussian"):
            record["train_adv"] = totals["adv"] / n
        xv, yv = splits["val"].tensors(cfg.eval_examples)
        record["val_clean"] = accuracy(base_model, xv, yv)
        evaluate_now = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        if evaluate_now and cfg.eps > 0:
            record["val_pgd"] = robust_accuracy_pgd(base_model, xv, yv, cfg.eps, cfg.eval_pgd_steps, cfg.seed)
        record.update(mean_noise_level(base_model))
        if guard is not None:
            record["co_guard_seconds"] = guard.seconds - guard_start
            record["co_guard_checks"] = len(guard.history) - checks_start
            record["co_guard_collapses"] = [asdict(c) for c in guard.history[checks_start:] if c.collapsed]
            record["co_guard_stopped"] = stopped
        if not info_dist.is_main:
            barrier(info_dist)
            if stopped:
                break
            continue
        save_checkpoint(
            out / "model.safetensors",
            base_model,
            {"dataset": cfg.data, "training": asdict(cfg), "metrics": record},
        )
        _atomic_torch_save(
            {
                "model": base_model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch + 1,
                "config": asdict(cfg),
                "threads": torch.get_num_threads(),
            },
            state_path,
        )
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        _keep_best(cfg, out, base_model, record)
        print(
            f"epoch {epoch + 1}/{cfg.epochs}: "
            + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()),
            flush=True,
        )
        barrier(info_dist)
        if stopped:
            break
    xt, yt = splits["test"].tensors(cfg.eval_examples)
    metrics = {
        "test_clean": accuracy(base_model, xt, yt),
        "train_seconds": time.time() - start,
        "checkpoint": str(out / "model.safetensors"),
    }
    if guard is not None:
        metrics["co_guard"] = guard.records()
        metrics["co_guard_seconds"] = guard.seconds
        metrics["co_guard_stopped"] = stopped
        if info_dist.is_main:
            (out / "co_guard.jsonl").write_text("".join(json.dumps(r) + "\n" for r in guard.records()))
    return metrics
