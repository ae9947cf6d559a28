"""Append-only JSONL results: one object per (run, setting, eps); resumable; never truncated."""

from __future__ import annotations

import json
import os
from pathlib import Path

from smoothinf.errors import ConfigError


def row_key(record: dict) -> tuple:
    """What identifies a result row within one configuration."""
    return (
        int(record["run"]),
        record["vote"],
        float(record["sigma"]),
        int(record["m"]),
        float(record["eps"]),
    )


class ResultsStore:
    """A JSONL file of results for one configuration fingerprint.

    Opening a file written under another fingerprint is an error (the file is left untouched);
    rows are only ever appended, one flushed line at a time, so an interrupted run resumes.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: str | None = None):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.records = read_results(self.path) if self.path.exists() else []
        if fingerprint is not None:
            other = {r.get("fingerprint") for r in self.records} - {fingerprint}
            if other:
                raise ConfigError(
                    f"{self.path} holds results of a different configuration (fingerprint "
                    f"{sorted(other)[0]}); use another --results file"
                )

    def done(self) -> set[tuple]:
        return {row_key(r) for r in self.records}

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)


def read_results(path: str | os.PathLike) -> list[dict]:
    """All records of a results file; a malformed line is an error naming its number."""
    records = []
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"results file {path} not found")
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ConfigError(f"{path}:{i}: not a JSON line (truncated write?); remove that line") from None
    return records
