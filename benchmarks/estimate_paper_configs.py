"""GPU-hour estimates for the paper's CIFAR recipes (paper_*): FLOPs per step, optional timing.

    python benchmarks/estimate_paper_configs.py --out docs/paper-cifar-configs.md            # FLOP estimate
    python benchmarks/estimate_paper_configs.py --device cuda --measure --out results/paper.md

Per config: forward FLOPs of one image (torch's FlopCounterMode, noise layers included), training
passes per example (inner attack gradients + the clean and adversarial losses; EPGD-AT x m_train),
step FLOPs = 3 x forward x passes x batch (a backward ~ 2 forwards). Without ``--measure`` a step
takes max(step FLOPs / ``--tflops``, passes x ``--pass-ms``): an assumed sustained throughput
(default 100 TFLOP/s, TF32/bf16 convolutions on an H100) or, for small networks like ResNet-20
whose kernels are too small to fill a GPU, an assumed floor per forward-backward pass (default
2 ms: ~200 kernel launches); both are assumptions, so the hours are estimates. With
``--measure`` one step at the config's batch size is timed on ``--device`` (after a warm-up) and
the hours use that time.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from smoothinf.data import get_dataset_info
from smoothinf.models import create_model_for
from smoothinf.noise import inject_noise
from smoothinf.recipes import recipe_names, recipe_path
from smoothinf.training.step_timing import load_train_config, time_train_step, train_configs, train_passes

TRAIN_SIZE = {"cifar10": 45_000, "cifar100": 45_000, "mnist": 50_000}


def forward_flops(cfg) -> int:
    """FLOPs of one forward of one image through the config's model (noise on)."""
    info = get_dataset_info(cfg.data)
    model = create_model_for(cfg.model, info)
    if cfg.noise:
        inject_noise(model, cfg.noise, rank=cfg.noise_rank, init=cfg.noise_init, sigma=cfg.noise_init)
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.rand(1, *info.input_shape))
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=None, help="folder of train YAMLs (default: the paper_* recipes)")
    p.add_argument("--tflops", type=float, default=100.0, help="assumed sustained TFLOP/s")
    p.add_argument("--pass-ms", type=float, default=2.0, help="assumed floor per forward-backward pass")
    p.add_argument("--measure", action="store_true", help="time one step at the config's batch size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    head = "| config | model | epochs | passes | GFLOP/step | est. GPU h | measured s/step | h (measured) |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    paper = [recipe_path(n) for n in recipe_names() if n.startswith("paper_")]
    for path in train_configs(args.configs) if args.configs else paper:
        cfg = load_train_config(path)
        passes = train_passes(cfg) + (1 if cfg.objective == "trades" else 0)
        step_flops = 3 * forward_flops(cfg) * passes * cfg.batch_size
        steps = cfg.epochs * math.ceil(TRAIN_SIZE[cfg.data] / cfg.batch_size)
        step_s = max(step_flops / (args.tflops * 1e12), passes * args.pass_ms / 1000)
        est_h = steps * step_s / 3600
        measured = hours = "-"
        if args.measure:
            t = time_train_step(cfg, batch_size=cfg.batch_size, steps=2, device=args.device).seconds
            measured, hours = f"{t:.3f}", f"{steps * t / 3600:.2f}"
        lines.append(
            f"| {path.stem} | {cfg.model} | {cfg.epochs} | {passes} | {step_flops / 1e9:.0f} | {est_h:.2f} | "
            f"{measured} | {hours} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
