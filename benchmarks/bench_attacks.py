"""Attack throughput against torchattacks, in one run on the same model, data and device.

1. our PGD vs torchattacks.PGD (same eps, alpha, steps, random start): target ratio >= 1.0x.
2. our EPGD with m draws per step (one batched forward of N*m rows) vs torchattacks.EOTPGD with
   eot_iter = m on a noise-wrapped model (m sequential forwards), the same number of gradients:
   target >= 1.0x on CPU, >= 2x on a GPU.
The first case is the reference setting (mnist_cnn_small, N = 64, PGD-20, EPGD-10 with m = 8 at
sigma 0.25). Ratios are torchattacks time / our time (> 1: ours faster), from the median time of
each over interleaved runs. Prints a markdown table and writes it to benchmarks/results/attacks.md
(``--out``).

    python benchmarks/bench_attacks.py [--device auto] [--repeats 9] [--threads T] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from smoothinf.attacks import EPGD, PGD
from smoothinf.models import create_model
from smoothinf.utils import resolve_device
from timing import add_allocator_option, apply_allocator_option


class InputNoise(nn.Module):
    """model(x + N(0, sigma^2)): one fresh noise draw per forward (what EOTPGD averages over)."""

    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.sigma * torch.randn_like(x))


def timeit_pair(ours, theirs, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median wall times (s) of ``ours()`` and ``theirs()`` over ``repeats`` rounds after one warm-up
    each, the two interleaved run by run (which goes first alternates), so load from other
    processes hits both alike."""

    def once(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    ours(), theirs()
    t_o, t_t = [], []
    for i in range(repeats):
        if i % 2:
            t_t.append(once(theirs))
            t_o.append(once(ours))
        else:
            t_o.append(once(ours))
            t_t.append(once(theirs))
    return statistics.median(t_o), statistics.median(t_t)


def _load() -> float:
    """The 1-minute load average (NaN where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main() -> None:
    import torchattacks

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attacks.md"))
    add_allocator_option(ap)
    args = ap.parse_args()
    malloc = apply_allocator_option(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    load = _load()  # other jobs, before ours
    torch.manual_seed(0)
    gen = torch.Generator(device=device).manual_seed(0)
    mnist, cifar = (
        ((1, 28, 28), (0.1307,), (0.3081,)),
        ((3, 32, 32), (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    )
    cases = [  # (model name, (data shape, mean, std), batch, PGD steps, EPGD steps, m, sigma)
        ("mnist_cnn_small", mnist, 64, 20, 10, 8, 0.25),  # the reference setting
        ("mnist_cnn_small", mnist, 256, 20, 20, 8, 0.1),
        ("resnet20", cifar, 64, 2, 2, 8, 0.1),
        ("mnist_cnn_small", mnist, 16, 10, 10, 32, 0.1),  # few examples, many draws
    ]
    if device.type == "cuda":
        cases = [(n, d, b * 4, k, ke, m, sd) for n, d, b, k, ke, m, sd in cases]
    rows = []
    for name, (shape, mean, std), batch, steps, epgd_steps, m, sigma in cases:
        model = create_model(name, 10, shape[0], mean, std).to(device).eval()
        x = torch.rand((batch, *shape), device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        eps, alpha = 8 / 255, 2 / 255
        ours_pgd = PGD(model, eps, alpha=alpha, steps=steps)
        ta_pgd = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
        t_ours, t_ta = timeit_pair(
            lambda a=ours_pgd, x=x, y=y: a(x, y, gen),
            lambda a=ta_pgd, x=x, y=y: a(x, y),
            args.repeats,
            device,
        )
        rows.append((f"PGD-{steps}", name, f"{batch}x{shape}", steps * batch, t_ours, t_ta))
        steps = epgd_steps
        ours_epgd = EPGD(model, sigma, m, eps, alpha=alpha, steps=steps)
        ta_eot = torchattacks.EOTPGD(InputNoise(model, sigma), eps=eps, alpha=alpha, steps=steps, eot_iter=m)
        t_ours, t_ta = timeit_pair(
            lambda a=ours_epgd, x=x, y=y: a(x, y, gen),
            lambda a=ta_eot, x=x, y=y: a(x, y),
            args.repeats,
            device,
        )
        label = f"EPGD-{steps} m={m} sigma={sigma} vs EOTPGD"
        rows.append((label, name, f"{batch}x{shape}", steps * m * batch, t_ours, t_ta))
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    lines = [
        f"## Attack throughput ({device.type}: {dev_name}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {malloc}, torchattacks {torchattacks.__version__})",
        "",
        f"Machine: {os.cpu_count()} CPU cores, load average {load:.1f} when the run started and "
        f"{_load():.1f} when it ended (a load above the {torch.get_num_threads()} threads used means "
        "other jobs shared the cores).",
        "",
        "| attack | model | batch x shape | example-gradients | ours (s) | torchattacks (s) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for what, name, shp, grads, t_o, t_t in rows:
        lines.append(f"| {what} | {name} | {shp} | {grads} | {t_o:.3f} | {t_t:.3f} | {t_t / t_o:.2f}x |")
    lines.append("")
    lines.append(
        f"ratio = torchattacks time / our time (median of {args.repeats} interleaved runs after a warm-up); "
        "EPGD batches its m draws into forwards of N*m rows (chunks by `smoothinf.noise.chunk_rows`: "
        "2^17 input values on CPU, 2^25 on GPU), EOTPGD runs m sequential forwards of a noise-wrapped model."
    )
    text = "\n".join(lines)
    print(text)
    write_section(Path(args.out), f"## Attack throughput ({device.type}:", text)


def write_section(path: Path, prefix: str, text: str) -> None:
    """Replace the section whose heading starts with ``prefix`` (or append it); keep the others."""
    sections = []
    if path.exists():
        for block in path.read_text().split("\n## ")[1:]:
            block = "## " + block.strip()
            if not block.startswith(prefix):
                sections.append(block)
    sections.append(text.strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Attack benchmarks\n\n" + "\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
