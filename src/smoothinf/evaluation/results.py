"""Append-only JSONL results: one object per (run, setting, eps); resumable; never mixed.

A results file belongs to one *identity*: everything that changes a number (the weights' sha256,
the data name / split / examples, every attack and smoothing setting that is not a grid axis, the
seed, batch sizes, the device type). Each record carries that identity and its fingerprint; a rerun
whose identity differs is refused with one line naming the differing field, so two models (or two
data slices) are never averaged into one row. Grid values and the run count may grow on resume.
A last line cut by a crash (no trailing newline, not valid JSON) after records of this tool is
dropped (with a note on stderr) and recomputed; a row met twice is refused (two writers at once:
the command line holds ``smoothinf.utils.output_lock`` on the file while it writes).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

import torch

from smoothinf.errors import ConfigError, naming

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


MAX_LINE_BYTES = 8 * 2**20
"""The longest line a reader accepts (a record is a few kB): a file of endless bytes, such as
``/dev/full`` or a binary file without newlines, is refused at this size instead of filling memory."""


def read_lines(path: Path, hint: str) -> tuple[list[str], int | None]:
    """Lines of a text file, read one at a time, and, when the last one has no trailing newline (a
    write cut by a crash or a full disk), the byte offset where it starts; else None. The caller
    decides whether that line is complete (a JSON line that parses, a TSV row with every column)
    or torn. A line over ``MAX_LINE_BYTES`` or not UTF-8 (a binary file) is a ConfigError naming
    the file and line, ending with ``hint`` (what to do)."""
    lines: list[str] = []
    offset, torn_at = 0, None
    with naming(path), path.open("rb") as handle:
        while raw := handle.readline(MAX_LINE_BYTES + 1):
            i = len(lines) + 1
            complete = raw.endswith(b"\n")
            if len(raw) > MAX_LINE_BYTES and not complete:
                raise ConfigError(
                    f"{path}:{i}: a line longer than {MAX_LINE_BYTES // 2**20} MiB, not a text file of"
                    f" records; {hint}"
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                if complete:
                    raise ConfigError(
                        f"{path}:{i}: not UTF-8 text (byte {error.start + 1} of the line: a binary file?);"
                        f" {hint}"
                    ) from None
                text = raw.decode("utf-8", errors="replace")  # a torn last line may end mid-character
            if not complete:
                torn_at = offset
            lines.append(text[:-1] if complete else text)
            offset += len(raw)
    return lines, torn_at


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
    """sha256 of a model's state dict (names, dtypes, shapes, values): what results are keyed on."""
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
    """What makes an evaluation's numbers what they are: the weights (``weights_digest``: a digest of
    the tensors, so the same weights in another file are the same; records written before this held
    the checkpoint file's sha256 under the same key), the data (name, split, count and a hash of the
    examples), every setting of ``cfg`` but the grid axes, the transfer source's weights and the
    device type.
    Pass it as ``ResultsStore(path, identity=...)``."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IDENTITY}
    if not settings.get("first_example"):  # absent at 0: files from before slices keep their identity
        settings.pop("first_example", None)
    if settings.get("crafting", "per-row") == "per-row":  # absent: files from before shared crafting
        settings.pop("crafting", None)
    if not settings.get("stop_decided", False):  # absent when off: files from before it
        settings.pop("stop_decided", None)
    if not settings.get("preset_square_queries", 0):  # absent at 0: files from before it
        settings.pop("preset_square_queries", None)
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
        if self.path.is_dir():
            raise ConfigError(f"{flag} {self.path} is a folder; pass a file path inside it")
        if self.path.exists():
            self.records, self._torn_at = _read(self.path, True, required, key, flag)
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
        if self._torn_at is not None:
            print(
                f"smoothinf: {self.path}: its last line was cut by an interrupted write; it is dropped"
                " and its row computed again",
                file=sys.stderr,
            )

    def done(self) -> set[tuple]:
        return {self.key(r) for r in self.records}

    def append(self, record: dict) -> None:
        with naming(self.path):
            self._append(record)
        self.records.append(record)

    def _append(self, record: dict) -> None:
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


def _is_count(value: object, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_fraction(value: object) -> bool:
    return _is_number(value) and 0.0 <= value <= 1.0


def value_problem(record: dict) -> str | None:
    """What is wrong with the values of a result record's keys (``RECORD_KEYS``), or None: run and
    n are counts, m a count >= 1, sigma and eps finite numbers >= 0, vote a string, clean,
    worst_case and every attack's accuracy fractions in [0, 1], and ``robust`` (when present) n
    fractions."""
    for name, ok, want in (
        ("run", _is_count(record.get("run")), "an integer >= 0"),
        ("n", _is_count(record.get("n")), "an integer >= 0 (examples)"),
        ("m", _is_count(record.get("m"), 1), "an integer >= 1 (noise draws)"),
        ("vote", isinstance(record.get("vote"), str), "a string"),
        ("clean", _is_fraction(record.get("clean")), "an accuracy in [0, 1]"),
        ("worst_case", _is_fraction(record.get("worst_case")), "an accuracy in [0, 1]"),
    ):
        if name in record and not ok:
            return f"{name!r} must be {want}, got {record[name]!r}"
    for name in ("sigma", "eps"):
        value = record.get(name)
        if name in record and not (_is_number(value) and math.isfinite(value) and value >= 0):
            return f"{name!r} must be a finite number >= 0 (pixel units), got {value!r}"
    robust = record.get("robust")
    if "robust" in record and not (
        isinstance(robust, list) and len(robust) == record.get("n") and all(_is_fraction(v) for v in robust)
    ):
        return "'robust' must list each example's P(correct) in [0, 1], one per example (n)"
    attacks = record.get("attacks")
    if isinstance(attacks, dict):
        for attack, value in attacks.items():
            if not _is_fraction(value):
                return f"'attacks.{attack}' must be an accuracy in [0, 1], got {value!r}"
    return None


def _read(
    path: Path,
    allow_torn_tail: bool,
    required: tuple[str, ...] = RECORD_KEYS,
    key: Callable[[dict], tuple] | None = row_key,
    flag: str = "--results",
) -> tuple[list[dict], int | None]:
    """Records of a results file and the offset of a cut last line (None: none). A cut last line
    is only taken for one when the lines before it are records (else the file is not a results
    file of this tool and is refused); without ``allow_torn_tail`` it is an error. Values are
    checked (``value_problem``) and a row ``key`` met twice is refused: two writers, or a file
    appended twice, would count it twice."""
    hint = f"not a smoothinf results file: choose another {flag}"
    lines, torn_at = read_lines(path, hint)
    records: list[dict] = []
    seen: dict[tuple, int] = {}
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if not records:  # no record before it: not a file of this tool, even if it lacks a newline
                raise ConfigError(
                    f"{path}:{i}: not a JSON record, {hint} (or delete it if it is a results file cut"
                    " in its first record)"
                ) from None
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
        problem = value_problem(record) if "clean" in required else None
        if problem:
            raise ConfigError(f"{path}:{i}: {problem}; remove that line and rerun evaluate to recompute it")
        if not _timing_ok(record):
            raise ConfigError(
                f"{path}:{i}: 'seconds' must be a number and 'attack_time' an object of attack -> "
                "{examples, seconds}; remove that line and rerun evaluate to recompute it"
            )
        try:
            records.append(count_every_check(record))
        except ValueError as error:
            raise ConfigError(f"{path}:{i}: {error}") from None
        if key is not None:
            try:
                row = key(record)
                hash(row)
            except (KeyError, TypeError, ValueError):
                raise ConfigError(
                    f"{path}:{i}: the fields that identify a row ({', '.join(required[:4])}) are malformed;"
                    " remove that line"
                ) from None
            if row in seen:
                raise ConfigError(
                    f"{path}:{i}: repeats the row of line {seen[row]} ({', '.join(map(str, row))}): two runs"
                    " wrote to this file at once, or it was appended twice; keep one of the two lines"
                    " (or delete the file and rerun)"
                )
            seen[row] = i
    return records, None


def read_results(path: str | os.PathLike, key: Callable[[dict], tuple] | None = row_key) -> list[dict]:
    """All records of a results file; a malformed line or record, or a row met twice (``key``;
    None: not checked), is an error naming its line."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"results file {path} not found")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; pass a results file (e.g. {path / 'results.jsonl'})")
    records = _read(path, allow_torn_tail=False, key=key, flag="results file")[0]
    prints = sorted({str(r.get("fingerprint")) for r in records})
    if len(prints) > 1:  # files written before identities existed could mix two models
        raise ConfigError(
            f"{path} mixes results of {len(prints)} configurations (fingerprints {', '.join(prints[:3])});"
            " a report would average them: split the file by fingerprint"
        )
    return records


def read_jsonl(path: str | os.PathLike, missing_ok: bool = True) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-blank line ([] when absent and ``missing_ok``).

    The one reader of the library's JSONL files (results, metrics, step states), line by line with
    a size limit per line (``MAX_LINE_BYTES``); a line that is not JSON, or not UTF-8 text, is an
    error naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return []
        raise ConfigError(f"{path} not found")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a JSONL file")
    hint = "not a JSONL file of smoothinf: remove that line or the file"
    lines, torn_at = read_lines(path, hint)
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            cut = " (cut by an interrupted write)" if torn_at is not None and i == len(lines) else ""
            raise ConfigError(f"{path}:{i}: not a JSON line{cut}; remove that line or the file") from None
    return records
