"""Small shared helpers: devices, seeds, generators, input validation and output files.

Output files and folders are checked before the work starts and written by one process at a time:
``check_output`` refuses, with one line naming the flag, an output that cannot be written (a folder
where a file is expected or the reverse, a device such as ``/dev/full``, a path under a file, a
folder without write permission), so a long run never fails at its end; ``output_lock`` holds an
exclusive ``fcntl.flock`` on ``OUTPUT.lock`` (which records the holder's pid) while a command writes
``OUTPUT``, so a second writer gets one line naming that pid instead of interleaving its rows with
the first's. The operating system drops the lock when its process ends: a lock file left by a
killed process blocks nobody.
"""

from __future__ import annotations

import fcntl
import os
import random
import time
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from smoothinf.errors import ConfigError, OutputBusyError, SmoothinfError, naming


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N`` to a device; ``auto`` picks CUDA when present."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SmoothinfError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise SmoothinfError(f"unknown device {name!r}; use auto, cpu or cuda") from exc
    if device.type not in ("cpu", "cuda", "mps"):
        raise SmoothinfError(f"device {name!r} cannot run a model; use auto, cpu or cuda")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SmoothinfError(f"device {name!r} requested but MPS is not available; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator | None:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``; ``None`` when seed is None."""
    if seed is None:
        return None
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(seed))
    return gen


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def check_images(x: torch.Tensor, name: str = "x", device: torch.device | None = None) -> None:
    """Raise a one-line ValueError unless ``x`` is a finite (N, C, H, W) float batch in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise SmoothinfError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise SmoothinfError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise SmoothinfError(f"{name} must be a float tensor with pixels in [0, 1], got {x.dtype}")
    if device is not None and x.device.type != device.type:
        raise SmoothinfError(f"{name} is on {x.device} but the model is on {device}; move it with .to()")
    if x.numel() and not torch.isfinite(x).all():
        raise SmoothinfError(f"{name} contains NaN or infinite values")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise SmoothinfError(
            f"{name} has pixels outside [0, 1] (min {x.min().item():.3g}, max {x.max().item():.3g});"
            " pass unnormalised images, normalisation is a layer inside the model"
        )


def check_labels(y: torch.Tensor, n: int, num_classes: int | None = None) -> None:
    """Raise unless ``y`` is an integer (n,) label vector with values in [0, num_classes)."""
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point():
        raise SmoothinfError("labels must be a 1-D integer tensor")
    if y.shape[0] != n:
        raise SmoothinfError(f"batch size mismatch: {n} inputs but {y.shape[0]} labels")
    if num_classes is not None and y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise SmoothinfError(f"labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")


def _type_name(tp) -> str:
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        plural = {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}
        return f"a list of {plural.get(args[0], _type_name(args[0]))}" if args else "a list"
    if args:
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else ""
        )
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value, tp):
    """``value`` checked against annotation ``tp`` (int, float, bool, str, X | None, list[X]);
    ints are accepted as floats. Raises TypeError when it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg)
            except TypeError:
                continue
        raise TypeError
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return [_coerce(v, args[0]) for v in value] if args else list(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise TypeError from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    return value  # other annotations are not checked here


def check_config_types(cls, values: dict, source: str = "config") -> dict:
    """``values`` (field -> value) checked against dataclass ``cls``'s annotations; returns them with
    ints widened to floats where a float is expected. A wrong type is a one-line ConfigError naming
    the field, e.g. ``epochs: "two"`` -> ``config: epochs must be an integer, got 'two'``."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        tp = hints.get(key)
        if tp is None:
            out[key] = value
            continue
        try:
            out[key] = _coerce(value, tp)
        except TypeError:
            hint = " (write it as a YAML list, e.g. [x])" if typing.get_origin(tp) in (list, tuple) else ""
            raise ConfigError(f"{source}: {key} must be {_type_name(tp)}, got {value!r}{hint}") from None
    return out


def check_dataclass_types(obj, source: str = "config") -> None:
    """``check_config_types`` on a dataclass instance, writing the widened values back."""
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    for key, value in check_config_types(type(obj), values, source).items():
        setattr(obj, key, value)


def dataclass_from_yaml(cls, path: str | os.PathLike, **overrides):
    """Build dataclass ``cls`` from a YAML file; non-None ``overrides`` win; unknown keys and values
    of the wrong type are one-line ConfigErrors (checked before anything is built or written)."""
    import yaml

    if Path(path).is_dir():
        raise ConfigError(f"config {path} is a folder; pass a YAML file")
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a YAML text file (byte {exc.start + 1} is not UTF-8: a binary file?);"
            " pass a YAML config"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    unknown = sorted(set(raw) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"{path}: unknown config key(s) {', '.join(unknown)}")
    raw = check_config_types(cls, raw, str(path))
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**raw)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_cpu_allocator(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 2**30) -> bool:
    """Make glibc's malloc keep and reuse freed memory for large CPU tensors. Returns whether applied.

    PyTorch's CPU tensors come straight from malloc. By default glibc serves blocks above a dynamic
    threshold with fresh mmap pages and trims freed heap memory back to the OS, so the activations
    of every forward of a 100-row batch are page-faulted afresh; fixing the mmap threshold at 32 MB
    and trimming only above 1 GB halved the time of such forwards on the CPU machine (PyTorch's
    tuning guide suggests jemalloc/tcmalloc for the same reason). Process-wide and irreversible:
    the command-line tool calls it at start (set SMOOTHINF_MALLOC_TUNING=0 to skip); Python users
    may call it themselves. A no-op (False) where the C library is not glibc.
    """
    import ctypes
    import platform

    if mmap_threshold < 0 or trim_threshold < 0:
        raise SmoothinfError(
            f"malloc thresholds must be >= 0 bytes, got mmap {mmap_threshold}, trim {trim_threshold}"
        )
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


def _nearest_existing(path: Path) -> Path:
    parent = path.parent
    while not (parent.exists() or parent.is_symlink()) and parent != parent.parent:
        parent = parent.parent
    return parent


def check_output(path: str | os.PathLike, flag: str, folder: bool = False) -> Path:
    """``path`` as a ``Path`` when it can be written as a file (``folder``: as a folder); else a
    one-line ConfigError naming ``flag``, the path and what to do. Creates nothing."""
    path = Path(path)
    want = "folder" if folder else "file"
    if path.exists():
        if folder and not path.is_dir():
            raise ConfigError(f"{flag} {path} is a file, not a folder; pass a folder path")
        if not folder and path.is_dir():
            raise ConfigError(f"{flag} {path} is a folder; pass a file path (e.g. {path / 'NAME'})")
        if not folder and not path.is_file():
            raise ConfigError(f"{flag} {path} is not a regular file (a device or a pipe); pass a file path")
        if not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
            raise ConfigError(f"{flag} {path} is not writable; fix its permissions or choose another {want}")
        return path
    parent = _nearest_existing(path)
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: folder {parent} is not writable; choose another location")
    return path


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of an output: ``OUTPUT.lock`` beside it."""
    return Path(str(output) + ".lock")


def _holder(fd: int) -> str:
    """The pid written in a lock file (its holder may not have written it yet: wait a little)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return text
        time.sleep(0.05)
    return "unknown"


def _acquire(path: Path, output: Path, flag: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise OutputBusyError(
                f"{output} is being written by another smoothinf process (pid {pid}, lock {path.name});"
                f" wait for it to finish or choose another {flag}"
            ) from None
        # the previous holder removes the file before unlocking: a lock taken on a removed file
        # guards nothing, so take the one now at the path
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        mine = os.fstat(fd)
        if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


@contextmanager
def output_lock(
    output: str | os.PathLike, flag: str = "--out", lock: str | os.PathLike | None = None
) -> Iterator[Path | None]:
    """Hold the exclusive lock of ``output`` (file ``lock``, default ``OUTPUT.lock``) for the block;
    OutputBusyError (one line naming the holder's pid and ``flag``) when another process holds it.

    Folders created for the lock file are removed again when left empty, and so is the lock file,
    so a refused or finished command leaves no trace. Under torchrun only rank 0 writes outputs:
    the other ranks take no lock."""
    if int(os.environ.get("RANK", "0") or 0) != 0:
        yield None
        return
    output = Path(output)
    path = Path(lock) if lock is not None else lock_path(output)
    created = []
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    with naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, output, flag)
    try:
        yield path
    finally:
        with suppress(OSError):  # already gone, or its folder turned read-only: the lock ends below
            path.unlink()
        os.close(fd)
        for folder in created:  # innermost first; stop at the first that is not empty
            try:
                folder.rmdir()
            except OSError:
                break
