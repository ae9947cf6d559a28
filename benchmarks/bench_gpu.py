"""The GPU figures of issue 16 in one run, each contender timed with CUDA synchronisation after a
warm-up, contenders interleaved round by round (best of each):

1. smoothing: smoothed prediction (hard votes, sigma 0.25) vs the limit, m plain forwards of the
   batch (and the limit + noise sampling), resnet20 and wide_resnet28_10, CIFAR-shaped inputs,
   m = 64, 256, 1000. Target: >= 0.9x the limit's speed.
2. certify: resnet110, n0 = 100, n = 100000, seconds per image vs the limit, the same (n0 + n)
   rows per image through plain forwards of the same chunk size. Target: >= 0.9x.
3. noise: per-draw weight noise (PNI-W, CNI-W on resnet20), m = 32: batched draws
   (``SmoothedClassifier.draw_logits``) vs m separate forwards. Target: >= 2x.
4. attacks: EPGD (m = 8, 10 steps, N = 64 and 256) vs torchattacks.EOTPGD (eot_iter = 8) on
   resnet20 (and PGD vs torchattacks.PGD for reference). Target: >= 2x. Skipped cleanly without
   torchattacks.
5. memory: EPGD (m = 8) on wide_resnet28_10, N = 100, default chunking: its gradient chunks must
   fit the GPU (saved activations bound them); time, peak memory and the rows per forward.
6. training: a PGD-AT (k = 7, Madry's w = 1) epoch of resnet20 on random CIFAR-shaped data (an
   extracted CIFAR-10 folder written to a temporary directory) through ``train()``, float32 and bf16
   autocast, vs (k + 1) standard epochs of the same precision. Target: <= 1.1x. Also the trainer's
   standard epoch vs a bare loop on device-resident data (the trainer's per-batch overhead).

Run on a GPU: ``python benchmarks/bench_gpu.py --out results/gpu.md`` (about 2-3 minutes on an
H100/H200; ``--budget-s`` skips what would start after that many seconds); on the CPU with
``--small`` (tiny sizes, about a minute) to check the script end to end. The markdown table is
rewritten after every section, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import pickle
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from smoothinf.data import get_dataset_info
from smoothinf.models import create_model_for
from smoothinf.noise import chunk_rows, grad_chunk_rows, inject_noise, saved_bytes_per_row
from smoothinf.smoothing import SmoothedClassifier, certify
from smoothinf.utils import resolve_device

SECTIONS = ("smoothing", "certify", "noise", "attacks", "memory", "training")


@dataclass
class Sizes:
    """Every size the script uses; ``full`` for a GPU, ``small`` for a one-minute CPU check."""

    smooth_models: tuple[tuple[str, dict, int], ...]  # (registry name, kwargs, examples N)
    smooth_ms: tuple[int, ...]
    cert_model: str
    cert_images: int
    cert_n0: int
    cert_n: int
    noise_batches: tuple[int, ...]
    noise_m: int
    attack_batches: tuple[int, ...]
    attack_steps: int
    attack_m: int
    memory_model: tuple[str, dict, int]
    train_model: str
    train_examples: int
    train_batch: int
    train_steps: int
    rounds: int
    label: str


FULL = Sizes(
    smooth_models=(("resnet20", {}, 100), ("wide_resnet28_10", {}, 50)),
    smooth_ms=(64, 256, 1000),
    cert_model="resnet110",
    cert_images=2,
    cert_n0=100,
    cert_n=100_000,
    noise_batches=(16, 128),
    noise_m=32,
    attack_batches=(64, 256),
    attack_steps=10,
    attack_m=8,
    memory_model=("wide_resnet28_10", {}, 100),
    train_model="resnet20",
    train_examples=45_000,
    train_batch=256,
    train_steps=7,
    rounds=2,
    label="full",
)
SMALL = Sizes(
    smooth_models=(("resnet20", {}, 2), ("wide_resnet", {"depth": 10, "widen_factor": 1}, 2)),
    smooth_ms=(2, 8),
    cert_model="resnet20",
    cert_images=1,
    cert_n0=4,
    cert_n=16,
    noise_batches=(2,),
    noise_m=4,
    attack_batches=(4,),
    attack_steps=1,
    attack_m=2,
    memory_model=("wide_resnet", {"depth": 10, "widen_factor": 1}, 2),
    train_model="mnist_cnn_small",
    train_examples=64,
    train_batch=32,
    train_steps=2,
    rounds=1,
    label="small (a CPU check of the script, not a measurement)",
)


@dataclass
class Row:
    """One line of the results table. ``ratio`` is oriented so that the target reads naturally:
    ours / limit speed, loop / batched, torchattacks / ours, PGD-AT / (k + 1) standard."""

    figure: str
    setting: str
    ours: float = math.nan
    reference: str = ""
    ref: float = math.nan
    ratio: float = math.nan
    target: tuple[str, float] | None = None
    note: str = ""

    def verdict(self) -> str:
        if self.target is None or math.isnan(self.ratio):
            return "-"
        op, bound = self.target
        ok = self.ratio >= bound if op == ">=" else self.ratio <= bound
        return "met" if ok else "not met"


@dataclass
class Bench:
    device: torch.device
    sizes: Sizes
    budget_s: float
    out: str | None
    rows: list[Row] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)
    header: str = ""

    # -------------------------------------------------------------------------------- helpers
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over_budget(self) -> bool:
        return self.elapsed() > self.budget_s

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def times(self, fns: dict[str, Callable[[], object]], rounds: int | None = None) -> dict[str, float]:
        """Best wall time (s) of each function over interleaved rounds after one warm-up call each,
        with the device synchronised after every call (so each timing holds its own GPU work)."""
        rounds = max(1, self.sizes.rounds if rounds is None else rounds)
        for fn in fns.values():
            fn()
            self.sync()
        best = dict.fromkeys(fns, math.inf)
        for _ in range(rounds):
            for name, fn in fns.items():
                self.sync()
                t = time.perf_counter()
                fn()
                self.sync()
                best[name] = min(best[name], time.perf_counter() - t)
        return best

    def peak_note(self) -> str:
        if self.device.type != "cuda":
            return ""
        return f"peak {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB"

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def generator(self, seed: int = 0) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def model(self, name: str, **kwargs) -> torch.nn.Module:
        """Registry model ``name`` for CIFAR-10-shaped inputs, seeded, in eval mode on the device."""
        torch.manual_seed(0)
        return create_model_for(name, get_dataset_info("cifar10"), **kwargs).eval().to(self.device)

    def images(self, n: int) -> torch.Tensor:
        return torch.rand(n, 3, 32, 32, device=self.device)

    # ------------------------------------------------------------------------------- sections
    def smoothing(self) -> None:
        sigma = 0.25
        for name, kwargs, n in self.sizes.smooth_models:
            model = self.model(name, **kwargs)
            label = name if not kwargs else f"{name}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
            x = self.images(n)
            for m in self.sizes.smooth_ms:
                if self.over_budget():
                    self.rows.append(
                        Row("smoothed prediction", f"{label} N={n} m={m}", note="skipped: budget")
                    )
                    continue
                self.reset_peak()
                smoothed = SmoothedClassifier(model, sigma, m, "hard")
                gen = self.generator()

                def limit(model=model, x=x, m=m):
                    with torch.no_grad():
                        for _ in range(m):
                            model(x)

                def noisy(model=model, x=x, m=m, gen=gen):
                    with torch.no_grad():
                        for _ in range(m):
                            model(torch.empty_like(x).normal_(0.0, sigma, generator=gen).add_(x))

                t = self.times(
                    {
                        "limit": limit,
                        "noise": noisy,
                        "ours": lambda s=smoothed, x=x, gen=gen: s.predict(x, gen),
                    },
                    rounds=self.sizes.rounds + (1 if 16 < m <= 256 else -1 if m > 256 else 0),
                )
                per_chunk = max(1, smoothed.rows_per_forward(x) // n)
                self.rows.append(
                    Row(
                        "smoothed prediction",
                        f"{label} N={n} m={m}",
                        t["ours"],
                        "limit: m plain forwards of N",
                        t["limit"],
                        t["limit"] / t["ours"],
                        (">=", 0.9),
                        f"limit + noise {t['noise']:.4f} s ({t['noise'] / t['ours']:.2f}x); "
                        f"{min(per_chunk, m)} draws per forward; {self.peak_note()}",
                    )
                )

    def certify(self) -> None:
        s = self.sizes
        self.reset_peak()
        model = self.model(s.cert_model)
        x = self.images(s.cert_images)
        rows = chunk_rows(x, model)
        total = s.cert_images * (s.cert_n0 + s.cert_n)
        plain = self.images(min(rows, total))

        def limit():
            with torch.no_grad():
                for start in range(0, total, rows):
                    model(plain[: min(rows, total - start)])

        gen = self.generator()
        t = self.times(
            {
                "limit": limit,
                "ours": lambda: certify(model, x, 0.25, s.cert_n0, s.cert_n, 0.001, generator=gen),
            },
            rounds=1,
        )
        k = s.cert_images
        self.rows.append(
            Row(
                "certification",
                f"{s.cert_model} n0={s.cert_n0} n={s.cert_n}, {k} image(s) per call",
                t["ours"] / k,
                "limit: n0 + n plain forwards per image",
                t["limit"] / k,
                t["limit"] / t["ours"],
                (">=", 0.9),
                f"seconds per image; {rows} rows per forward; {self.peak_note()}",
            )
        )

    def noise(self) -> None:
        s = self.sizes
        for kind in ("pni-w", "cni-w"):
            model = self.model("resnet20")
            inject_noise(model, kind)
            model.to(self.device)
            for n in s.noise_batches:
                if self.over_budget():
                    self.rows.append(
                        Row("per-draw weight noise", f"resnet20 {kind} N={n}", note="skipped: budget")
                    )
                    continue
                self.reset_peak()
                x = self.images(n)
                smoothed = SmoothedClassifier(model, 0.0, s.noise_m)
                m = s.noise_m

                def looped(model=model, x=x, m=m):
                    with torch.no_grad():
                        return torch.stack([model(x) for _ in range(m)])

                def batched(x=x, m=m, smoothed=smoothed):
                    with torch.no_grad():
                        return torch.cat(list(smoothed.draw_logits(x, m)))

                t = self.times({"loop": looped, "batched": batched}, rounds=s.rounds + (m >= 32))
                per_chunk = min(m, max(1, chunk_rows(x, model) // n))
                self.rows.append(
                    Row(
                        "per-draw weight noise",
                        f"resnet20 {kind} N={n} m={m}",
                        t["batched"],
                        "m separate forwards",
                        t["loop"],
                        t["loop"] / t["batched"],
                        (">=", 2.0),
                        f"{per_chunk} draws per forward; {self.peak_note()}",
                    )
                )

    def attacks(self) -> None:
        try:
            import torchattacks
        except ImportError:
            self.rows.append(Row("EPGD vs EOTPGD", "resnet20", note="skipped: torchattacks not installed"))
            return
        from bench_attacks import InputNoise
        from smoothinf.attacks import EPGD, PGD

        s = self.sizes
        model = self.model("resnet20")
        eps, alpha, sigma, k, m = 8 / 255, 2 / 255, 0.1, s.attack_steps, s.attack_m
        version = f"torchattacks {torchattacks.__version__}"
        for n in s.attack_batches:
            if self.over_budget():
                self.rows.append(Row("EPGD vs EOTPGD", f"resnet20 N={n}", note="skipped: budget"))
                continue
            self.reset_peak()
            x = self.images(n)
            y = torch.randint(0, 10, (n,), device=self.device)
            gen = self.generator()
            ours_pgd = PGD(model, eps, alpha=alpha, steps=k)
            ta_pgd = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=k, random_start=True)
            ours_epgd = EPGD(model, sigma, m, eps, alpha=alpha, steps=k)
            ta_eot = torchattacks.EOTPGD(InputNoise(model, sigma), eps=eps, alpha=alpha, steps=k, eot_iter=m)
            t = self.times(
                {
                    "epgd": lambda a=ours_epgd, x=x, y=y, gen=gen: a(x, y, gen),
                    "eot": lambda a=ta_eot, x=x, y=y: a(x, y),
                    "pgd": lambda a=ours_pgd, x=x, y=y, gen=gen: a(x, y, gen),
                    "ta_pgd": lambda a=ta_pgd, x=x, y=y: a(x, y),
                },
                rounds=s.rounds + (k >= 10),
            )
            self.rows.append(
                Row(
                    "EPGD vs EOTPGD",
                    f"resnet20 N={n} steps={k} m={m} sigma={sigma}",
                    t["epgd"],
                    "torchattacks.EOTPGD (m sequential forwards)",
                    t["eot"],
                    t["eot"] / t["epgd"],
                    (">=", 2.0),
                    f"{version}; {self.peak_note()}",
                )
            )
            self.rows.append(
                Row(
                    "PGD vs torchattacks.PGD",
                    f"resnet20 N={n} steps={k}",
                    t["pgd"],
                    "torchattacks.PGD",
                    t["ta_pgd"],
                    t["ta_pgd"] / t["pgd"],
                    None,
                    f"{version}; reference, no target",
                )
            )

    def memory(self) -> None:
        """EPGD on a wide model with the default chunking: the gradient chunks are bounded by the
        saved activations (``grad_chunk_rows``); the 2^25-value chunk alone would not fit."""
        from smoothinf.attacks import EPGD

        name, kwargs, n = self.sizes.memory_model
        model = self.model(name, **kwargs)
        x = self.images(n)
        y = torch.randint(0, 10, (n,), device=self.device)
        m = self.sizes.attack_m
        attack = EPGD(model, 0.1, m, 8 / 255, alpha=2 / 255, steps=2)
        gen = self.generator()
        self.reset_peak()
        t = self.times({"epgd": lambda: attack(x, y, gen)}, rounds=1)
        per_row = saved_bytes_per_row(model, x)
        default = min(n * m, chunk_rows(x))
        bound = grad_chunk_rows(model, x)
        chunk = default if bound is None else min(default, bound)
        self.rows.append(
            Row(
                "EPGD memory bound",
                f"{name} N={n} m={m} steps=2",
                t["epgd"],
                note=f"{per_row / 2**20:.1f} MiB saved per row; forwards of {max(1, chunk // n) * n} "
                f"rows (default chunk alone: {default} rows = {default * per_row / 2**30:.1f} GiB of "
                f"saved activations); {self.peak_note()}",
            )
        )

    def training(self) -> None:
        from bench_training import epoch_seconds
        from smoothinf.training.trainer import TrainConfig

        s = self.sizes
        k = s.train_steps
        with tempfile.TemporaryDirectory() as tmp:
            write_random_cifar10(Path(tmp) / "data", s.train_examples + 5000, 100)
            common = dict(
                data="cifar10",
                root=str(Path(tmp) / "data"),
                model=s.train_model,
                epochs=1,
                batch_size=s.train_batch,
                max_train_examples=s.train_examples,
                optimizer="sgd",
                lr=0.1,
                eps=8 / 255,
                eval_examples=100,
                eval_pgd_steps=1,
                device=self.device.type,
            )
            runs = iter(range(10**6))

            def epoch(objective: str, amp: bool) -> float:
                extra = dict(adv_weight=1.0, attack_steps=k) if objective == "adversarial" else {}
                cfg = TrainConfig(
                    objective=objective, amp=amp, out=f"{tmp}/run{next(runs)}", **common, **extra
                )
                with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                    return epoch_seconds(
                        cfg
                    )  # the trainer's progress bar and epoch lines kept out of the log

            epoch("standard", False)  # warm-up: CUDA context, cuDNN, allocator
            best: dict[tuple[str, bool], float] = {}
            for _ in range(s.rounds):
                for amp in (False, True):
                    for objective in ("standard", "adversarial"):
                        if self.over_budget():
                            continue
                        key = (objective, amp)
                        best[key] = min(best.get(key, math.inf), epoch(objective, amp))
            bare = self.bare_epoch(s.train_examples, s.train_batch)
        for amp, precision in ((False, "float32"), (True, "bf16 autocast")):
            std, at = best.get(("standard", amp), math.nan), best.get(("adversarial", amp), math.nan)
            self.rows.append(
                Row(
                    "PGD-AT epoch",
                    f"{s.train_model}, {s.train_examples} examples, batch {s.train_batch}, k={k}, "
                    f"{precision}",
                    at,
                    "(k + 1) standard epochs",
                    (k + 1) * std,
                    at / ((k + 1) * std),
                    ("<=", 1.1),
                    f"standard epoch {std:.3f} s",
                )
            )
        for objective in ("standard", "adversarial"):
            f32, bf16 = best.get((objective, False), math.nan), best.get((objective, True), math.nan)
            self.rows.append(
                Row(
                    "bf16 autocast speed-up",
                    f"{objective} epoch",
                    bf16,
                    "float32 epoch",
                    f32,
                    f32 / bf16,
                    None,
                    "reference, no target",
                )
            )
        std = best.get(("standard", False), math.nan)
        self.rows.append(
            Row(
                "trainer overhead",
                "standard epoch, float32",
                std,
                "bare loop: data on the device, no per-batch sync",
                bare,
                bare / std,
                None,
                "ratio < 1: the trainer's loop (host-to-device copies, .item() syncs, progress bar) "
                "costs time",
            )
        )

    def bare_epoch(self, examples: int, batch: int) -> float:
        """One standard epoch with the training data already on the device and no per-batch host
        sync: the floor of the trainer's standard epoch."""
        model = self.model(self.sizes.train_model).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        x = self.images(examples)
        y = torch.randint(0, 10, (examples,), device=self.device)

        def run():
            perm = torch.randperm(examples, device=self.device)
            for i in range(0, examples, batch):
                idx = perm[i : i + batch]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return self.times({"bare": run}, rounds=self.sizes.rounds)["bare"]

    # ------------------------------------------------------------------------------- report
    def table(self) -> str:
        lines = [
            "## GPU figures (`benchmarks/bench_gpu.py`)",
            "",
            self.header,
            "",
            "| figure | setting | ours (s) | reference | reference (s) | ratio | target | met | notes |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            target = "-" if r.target is None else f"{r.target[0]} {r.target[1]:g}x"
            lines.append(
                f"| {r.figure} | {r.setting} | {fmt(r.ours)} | {r.reference or '-'} | {fmt(r.ref)} | "
                f"{fmt(r.ratio, 'x', 2)} | {target} | {r.verdict()} | {r.note or '-'} |"
            )
        lines += [
            "",
            "ratio: limit / ours (smoothing, certification: >= 1 is faster than the limit), loop / "
            "batched (weight noise), torchattacks / ours (attacks), PGD-AT / ((k + 1) x standard) "
            "(training: <= 1 is at most the limit). Best of interleaved rounds after a warm-up, the "
            f"device synchronised after every call. Wall time of this run: {self.elapsed():.0f} s.",
        ]
        return "\n".join(lines)

    def write(self) -> None:
        if self.out:
            Path(self.out).parent.mkdir(parents=True, exist_ok=True)
            Path(self.out).write_text(self.table() + "\n")


def fmt(value: float, suffix: str = "", digits: int = 4) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}{suffix}"


def write_random_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """An extracted CIFAR-10 folder (``root/cifar-10-batches-py``) of uniform random images and
    labels: ``n_train`` images over the five training batches and ``n_test`` test images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    counts = [len(part) for part in np.array_split(np.arange(n_train), 5)] + [n_test]
    for name, n in zip(names, counts, strict=True):
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))


def describe(device: torch.device, sizes: Sizes) -> str:
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
        props = torch.cuda.get_device_properties(device)
        card += f" ({props.total_memory / 2**30:.0f} GiB)"
        cuda = f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        tf32 = (
            f"; TF32: cuDNN convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, "
            f"matmuls {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}; "
            f"cudnn.benchmark {'on' if torch.backends.cudnn.benchmark else 'off'}"
        )
        gen_dev = torch.Generator(device="cuda").device
        tf32 += f"; torch.Generator(device='cuda').device = {gen_dev}"
    else:
        card = f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
        cuda = tf32 = ""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Card: **{card}**; torch {torch.__version__}{cuda}, Python {platform.python_version()}{tf32}. "
        f"Sizes: {sizes.label}. Run {when}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda or cpu")
    parser.add_argument("--small", action="store_true", help="tiny sizes: a one-minute check on the CPU")
    parser.add_argument(
        "--budget-s", type=float, default=300.0, help="start nothing new after this many seconds"
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per figure (default by size)")
    parser.add_argument("--out", default=None, help="write the markdown table here (rewritten per section)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    sizes = SMALL if args.small else FULL
    if args.rounds is not None:
        sizes.rounds = max(1, args.rounds)
    bench = Bench(device, sizes, args.budget_s, args.out)
    bench.header = describe(device, sizes)
    print(bench.header, flush=True)
    failures = 0
    for name in args.sections:
        if bench.over_budget():
            bench.rows.append(Row(name, "-", note=f"skipped: over the {args.budget_s:.0f} s budget"))
            continue
        start = time.perf_counter()
        print(f"[{bench.elapsed():6.1f} s] {name} ...", flush=True)
        try:
            getattr(bench, name)()
        except Exception as exc:  # noqa: BLE001 - a failed section must not stop the others
            failures += 1
            traceback.print_exc()
            message = " ".join(f"{type(exc).__name__}: {exc}".split())[:300].replace("|", "/")
            bench.rows.append(Row(name, "-", note=f"error: {message}"))
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(f"[{bench.elapsed():6.1f} s] {name} done in {time.perf_counter() - start:.1f} s", flush=True)
        bench.write()
    text = bench.table()
    print(text)
    bench.write()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
