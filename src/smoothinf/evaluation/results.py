"""Append-only JSONL results: one object per (run, setting, eps); resumable; never mixed.

A results file belongs to one *identity*: everything that changes a number (the weights' sha256,
the data name / split / examples, every attack and smoothing setting that is not a grid axis, the
seed, batch sizes, the device type). Each record carries that identity and its fingerprint; a rerun
whose identity differs is refused with one line naming the differing field, so two models (or two
data slices) are never averaged into one row. Grid values and the run count may grow on resume.
A last line cut by a crash (no trailing newline, not valid JSON) is dropped and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

import torch

from smoothinf.errors import ConfigError

# Keys every result record must hold (what ``row_key`` and the report read).
RECORD_KEYS = ("run", "vote", "sigma", "m", "eps", "n", "clean", "attacks", "worst_case")
COUNTED_CHECKS = ("autoattack", "blackbox", "convergence")
"""The protocol's cross-checks, in the order they run; a record's ``worst_case`` counts all their finds."""


def row_key(record: dict) -> tuple:
    """What identifies a result row within one configuration."""
    return (
        int(record["run"]),
        record["vote"],
        float(record["sigma"]),
        int(record["m"]),
        float(record["eps"]),
    )


def fingerprint_of(identity: Mapping) -> str:
    """16 hex digits of the sha256 of ``identity`` as canonical JSON."""
    text = json.dumps(identity, sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def identity_diff(old: Mapping, new: Mapping) -> list[str]:
    """Dotted names of the fields whose values differ between two identities (sorted)."""
    a, b = (
        _flatten(json.loads(json.dumps(old, default=str))),
        _flatten(json.loads(json.dumps(new, default=str))),
    )
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def mismatch_message(path: Path, old: Mapping | None, new: Mapping, flag: str) -> str:
    """One line: which field differs between the file's identity and this run's, and what to do."""
    if old is None:
        return (
            f"{path} was written without a record of what produced it (older smoothinf or another"
            f" tool); use another {flag} or delete it"
        )
    diff = identity_diff(old, new)
    if not diff:
        return f"{path} holds results of a different configuration; use another {flag}"
    flat_old, flat_new = _flatten(old), _flatten(new)
    first = diff[0]
    more = f" (and {len(diff) - 1} more: {', '.join(diff[1:4])})" if len(diff) > 1 else ""
    return (
        f"{path} was produced with {first} = {flat_old.get(first, '<absent>')!r}, this run has"
        f" {flat_new.get(first, '<absent>')!r}{more}; use another {flag} (or the same settings to resume)"
    )


def split_torn_tail(path: Path) -> tuple[list[str], int | None]:
    """Lines of a text file and, when the last one has no trailing newline (a write cut by a crash
    or a full disk), the byte offset where it starts; else None. The caller decides whether that
    line is complete (a JSON line that parses, a TSV row with every column) or torn."""
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return data.decode().splitlines(), None
    cut = data.rfind(b"\n") + 1
    return data[:cut].decode().splitlines() + [data[cut:].decode(errors="replace")], cut


def truncate_to(path: Path, offset: int) -> None:
    """Cut ``path`` to ``offset`` bytes (drops a torn last line before appending)."""
    with path.open("rb+") as f:
        f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())


# EvalConfig fields that are not part of a result's identity: grid axes and the run count (they may
# grow on resume and are in each row's key), paths (replaced by content hashes), the device string.
_NOT_IDENTITY = frozenset({"checkpoint", "root", "device", "votes", "sigmas", "ms", "eps", "runs"})


def tensor_digest(*tensors) -> str:
    """sha256 of tensors' dtypes, shapes and bytes (CPU copies): what a computation actually saw."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's state dict (names, dtypes, shapes, values) for models without a sidecar."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor_digest(value).encode())
    return digest.hexdigest()


def evaluation_identity(
    cfg,
    weights_sha256: str,
    x: torch.Tensor,
    y: torch.Tensor,
    device: str | torch.device = "cpu",
    source_sha256: str | None = None,
) -> dict:
    """What makes an evaluation's numbers what they are: the weights (sha256 of the checkpoint file,
    checked against its sidecar on load), the data (name, split, count and a hash of the examples),
    every setting of ``cfg`` but the grid axes, the transfer source's weights and the device type.
    Pass it as ``ResultsStore(path, identity=...)``."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IDENTITY}
    if not settings.get("first_example"):  # absent at 0: files from before slices keep their identity
        settings.pop("first_example", None)
    if settings.get("transfer_source"):
        settings["transfer_source"] = source_sha256 or settings["transfer_source"]
    return {
        "weights_sha256": weights_sha256,
        "data": {
            "name": getattr(cfg, "data", None),
            "split": getattr(cfg, "split", None),
            "examples": int(x.shape[0]),
            "sha256": tensor_digest(x, y),
        },
        "settings": settings,
        "device": torch.device(device).type,
    }


class ResultsStore:
    """A JSONL file of results for one configuration fingerprint (or full ``identity``).

    Opening a file written under another fingerprint is a one-line error naming the differing
    field (the file is left untouched); rows are only ever appended, one flushed line at a time,
    so an interrupted run resumes. A torn last line is ignored here and cut at the first append.
    ``append`` stamps each record with this store's fingerprint and identity.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fingerprint: str | None = None,
        identity: Mapping | None = None,
        key: Callable[[dict], tuple] = row_key,
        required: tuple[str, ...] = RECORD_KEYS,
        flag: str = "--results",
    ):
        self.path = Path(path)
        self.key, self.required, self.flag = key, required, flag
        self.identity = None if identity is None else json.loads(json.dumps(identity, default=str))
        self.fingerprint = fingerprint_of(self.identity) if self.identity is not None else fingerprint
        self._torn_at: int | None = None
        self.records = []
        if self.path.exists():
            self.records, self._torn_at = _read(self.path, allow_torn_tail=True, required=required)
        if self.fingerprint is not None:
            other = [r for r in self.records if r.get("fingerprint") != self.fingerprint]
            if other:
                if self.identity is not None:
                    raise ConfigError(
                        mismatch_message(self.path, other[0].get("identity"), self.identity, flag)
                    )
                raise ConfigError(
                    f"{self.path} holds results of a different configuration (fingerprint "
                    f"{other[0].get('fingerprint')}); use another {flag} file"
                )

    def done(self) -> set[tuple]:
        return {self.key(r) for r in self.records}

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.fingerprint is not None:  # stamped in place: the caller's record matches the file
            record["fingerprint"] = self.fingerprint
        if self.identity is not None:
            record["identity"] = self.identity
        if self._torn_at is not None:
            truncate_to(self.path, self._torn_at)
            self._torn_at = None
        with self.path.open("a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:  # a complete last record that lost its newline
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write((json.dumps(record) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _timing_ok(record: dict) -> bool:
    """The optional wall times of a record, when present, have the shapes the report reads."""
    if "seconds" in record and not _is_number(record["seconds"]):
        return False
    timing = record.get("attack_time", {})
    return isinstance(timing, dict) and all(
        isinstance(t, dict) and _is_number(t.get("examples")) and _is_number(t.get("seconds"))
        for t in timing.values()
    )


def count_every_check(record: dict) -> dict:
    """``record`` with every cross-check's finds in its ``worst_case``. Records without
    ``counted_checks`` were written when the doubled-budget check (``convergence``, which runs
    last) only flagged: its ``extra`` was measured on the examples every earlier attack and check
    had left robust, so ``worst_case - extra / n`` is exactly the worst case that counts it.
    Raises ValueError when that ``extra`` is there but not a number."""
    checks = record.get("checks")
    if "counted_checks" in record or not isinstance(checks, dict) or "worst_case" not in record:
        return record
    doubled = checks.get("convergence")
    extra = doubled.get("extra", 0.0) if isinstance(doubled, dict) else 0.0
    if not _is_number(extra):
        raise ValueError(
            "'checks.convergence.extra' must be a number (the images the doubled attack fooled);"
            " remove that line and rerun evaluate to recompute it"
        )
    if _is_number(record.get("n")) and record["n"] > 0:
        record["worst_case"] = max(record["worst_case"] - extra / record["n"], 0.0)
    record["counted_checks"] = list(COUNTED_CHECKS)
    return record


def _read(
    path: Path, allow_torn_tail: bool, required: tuple[str, ...] = RECORD_KEYS
) -> tuple[list[dict], int | None]:
    lines, torn_at = split_torn_tail(path)
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if torn_at is not None and i == len(lines):
                if allow_torn_tail:
                    return records, torn_at
                raise ConfigError(
                    f"{path}:{i}: last line is cut (interrupted write); rerun evaluate with the same"
                    " flags to recompute it, or delete that line"
                ) from None
            raise ConfigError(f"{path}:{i}: not a JSON line (truncated write?); remove that line") from None
        missing = [k for k in required if not isinstance(record, dict) or k not in record]
        if missing:
            raise ConfigError(
                f"{path}:{i}: not a smoothinf results record (missing {', '.join(repr(k) for k in missing)})"
            )
        if "attacks" in required and not isinstance(record["attacks"], dict):
            raise ConfigError(f"{path}:{i}: 'attacks' must be an object of attack -> accuracy")
        if not _timing_ok(record):
            raise ConfigError(
                f"{path}:{i}: 'seconds' must be a number and 'attack_time' an object of attack -> "
                "{examples, seconds}; remove that line and rerun evaluate to recompute it"
            )
        try:
            records.append(count_every_check(record))
        except ValueError as error:
            raise ConfigError(f"{path}:{i}: {error}") from None
    return records, None


def read_results(path: str | os.PathLike) -> list[dict]:
    """All records of a results file; a malformed line or record is an error naming its number."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"results file {path} not found")
    records = _read(path, allow_torn_tail=False)[0]
    prints = sorted({str(r.get("fingerprint")) for r in records})
    if len(prints) > 1:  # files written before identities existed could mix two models
        raise ConfigError(
            f"{path} mixes results of {len(prints)} configurations (fingerprints {', '.join(prints[:3])});"
            " a report would average them: split the file by fingerprint"
        )
    return records


def read_jsonl(path: str | os.PathLike, missing_ok: bool = True) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-blank line ([] when absent and ``missing_ok``).

    The one reader of the library's JSONL files (results, metrics, step states); a line that is not
    JSON is an error naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return []
        raise ConfigError(f"{path} not found")
    records = []
    with path.open(encoding="utf-8", errors="strict") as handle:
        for i, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ConfigError(f"{path}:{i}: not a JSON line; remove that line or the file") from None
    return records
