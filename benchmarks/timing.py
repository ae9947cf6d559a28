"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best of ``repeats`` wall times (s) of ``fn()`` after one warm-up call."""
    return best_times({"fn": fn}, repeats)["fn"]


def best_times(fns: dict[str, Callable[[], object]], repeats: int = 3) -> dict[str, float]:
    """Best wall time (s) of each function over ``repeats`` interleaved rounds, after one warm-up
    call each: the functions take turns, so load from other jobs on a shared machine hits all of
    them alike instead of whichever ran during a busy spell."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def add_allocator_option(parser) -> None:
    """``--default-malloc``: keep glibc's default malloc settings (the CLI tunes them)."""
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's default malloc settings instead of tuning them as the CLI does",
    )


def apply_allocator_option(args) -> str:
    """Tune malloc as the CLI does unless ``--default-malloc``; a phrase for the results header."""
    from smoothinf.utils import tune_cpu_allocator

    if args.default_malloc:
        return "glibc default malloc"
    return "malloc tuned as the CLI does" if tune_cpu_allocator() else "default malloc (tuning unavailable)"


def emit(text: str, out: str | None) -> None:
    """Print a results table and, when ``out`` is given, write it there."""
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
