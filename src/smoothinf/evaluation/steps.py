"""Fingerprinted, resumable steps: a study runs as named steps, each skipped when its outputs exist
under the same fingerprint (its config and the digests of the weights it reads).

``out/state/<step>.json`` holds a step's fingerprint, status (running/done) and seconds spent;
``run_step`` runs one step unless it is done; ``train_step`` trains one model from a YAML recipe
as such a step. Weights are keyed by their tensor digest (``results.weights_digest``), never by
the bytes of the file that holds them, so the same weights saved again keep every key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from smoothinf.errors import ConfigError
from smoothinf.evaluation.results import read_jsonl, weights_digest
from smoothinf.training.trainer import TrainConfig, train


def checkpoint_digest(path: str | os.PathLike) -> str:
    """The tensor digest (``weights_digest``) of the weights in checkpoint ``path``."""
    from smoothinf.models import load_checkpoint

    return weights_digest(load_checkpoint(path, device="cpu")[0])


def fingerprint(config: Mapping, weights: Sequence[str | os.PathLike] = ()) -> str:
    """16 hex digits of the sha256 over ``config`` (canonical JSON) and the tensor digest of each
    checkpoint in ``weights`` (the weights a step reads)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for path in weights:
        digest.update(checkpoint_digest(path).encode())
    return digest.hexdigest()[:16]


class StepState:
    """``out/state/<name>.json``: a step's fingerprint, status (running/done) and seconds spent."""

    def __init__(self, out: Path, name: str, fp: str) -> None:
        self.path = Path(out) / "state" / (name.replace("/", "__") + ".json")
        self.name, self.fp = name, fp
        self.record = json.loads(self.path.read_text()) if self.path.exists() else None

    @property
    def done(self) -> bool:
        return bool(self.record) and self.record["fingerprint"] == self.fp and self.record["status"] == "done"

    @property
    def stale(self) -> bool:
        """Started or finished under another fingerprint: its outputs must be discarded."""
        return bool(self.record) and self.record["fingerprint"] != self.fp

    def _write(self, **kw) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.record = {"step": self.name, "fingerprint": self.fp, **kw}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record))
        os.replace(tmp, self.path)

    def begin(self, carried: float = 0.0) -> None:
        """Mark the step running; seconds of earlier attempts under this fingerprint carry on, and
        ``carried`` seconds of a stale attempt whose outputs the step keeps and extends."""
        self._start = time.time()
        self._before = float(self.record.get("seconds", 0.0)) if self.record and not self.stale else 0.0
        self._before += carried
        self._write(status="running", seconds=self._before)

    def finish(self, **extra) -> None:
        self._write(status="done", seconds=round(self._before + time.time() - self._start, 3), **extra)


def run_step(
    out: Path,
    name: str,
    fp: str,
    outputs: Sequence[Path],
    work: Callable[[], dict | None],
    log: Callable[[str], None],
    discard: bool = True,
) -> bool:
    """Run ``work`` unless the step is done under ``fp`` with its ``outputs`` present. A stale
    step's outputs are removed first when ``discard``. Returns True when work ran."""
    state = StepState(out, name, fp)
    if state.done and all(p.exists() for p in outputs):
        log(f"[skip] {name} (done, fingerprint {fp})")
        return False
    carried = 0.0
    if state.stale:
        # kept outputs (discard False) keep their time: rows the step then sets aside count too
        carried = 0.0 if discard else float(state.record.get("seconds", 0.0))
        log(f"[redo] {name}: its inputs or config changed")
        for p in outputs if discard else ():
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        state.record = None
    log(f"[run ] {name}")
    state.begin(carried)
    extra = work() or {}
    state.finish(**extra)
    return True


def set_aside_foreign_rows(results: Path, fp: str) -> None:
    """Move ``results`` to ``*.stale.jsonl`` when it holds rows of another configuration (never
    mixed in, never deleted), and make sure its folder exists."""
    if any(r.get("fingerprint") != fp for r in read_jsonl(results)):
        results.rename(results.with_suffix(".stale.jsonl"))
    results.parent.mkdir(parents=True, exist_ok=True)


def train_config(
    configs: Path,
    name: str,
    out: Path,
    refs: Mapping[str, str],
    overrides: Mapping | None = None,
    device: str = "auto",
) -> TrainConfig:
    """Model ``name``'s TrainConfig: ``configs/<name>.yaml``, then ``overrides`` (TrainConfig
    fields, checked by the caller); ``init: "@other"`` resolves to ``refs[other]``; trained into
    ``out/models/<name>`` on ``device``."""
    path = Path(configs) / f"{name}.yaml"
    cfg = TrainConfig.from_yaml(path)
    for k, v in (overrides or {}).items():
        setattr(cfg, k, v)
    if cfg.init and cfg.init.startswith("@"):
        ref = cfg.init[1:]
        if ref not in refs:
            raise ConfigError(f"{path}: init {cfg.init!r} names no earlier step")
        cfg.init = refs[ref]
    cfg.out = str(Path(out) / "models" / name)
    cfg.device = device
    return cfg


def init_refs(configs: Path, name: str) -> list[str]:
    """The step names that model ``name``'s config starts from (``init: "@other"``: [other]; else [])."""
    init = TrainConfig.from_yaml(Path(configs) / f"{name}.yaml").init
    return [init[1:]] if init and init.startswith("@") else []


def model_checkpoint(model_dir: Path) -> Path:
    """The checkpoint a trained model is used by: ``best.safetensors`` (selected on val) when
    present, else ``model.safetensors``."""
    best = Path(model_dir) / "best.safetensors"
    return best if best.exists() else Path(model_dir) / "model.safetensors"


def train_step(
    configs: Path,
    name: str,
    out: Path,
    refs: Mapping[str, str],
    log: Callable[[str], None],
    overrides: Mapping | None = None,
    device: str = "auto",
    stage: str = "",
) -> str:
    """Train model ``name`` as step ``train/<name>`` (under a ``stage`` such as "long", step
    ``<stage>/train/<name>`` into ``out/<stage>/models``); returns its checkpoint's path.

    Its state records the torch threads it trained on and the weights' tensor digest
    (``weights_digest``): a done step whose checkpoint is missing trains again on those threads
    (CPU sums depend on them), so that the weights, and what is keyed on them, come back the same;
    other weights are logged. A state written before tensor digests holds the checkpoint file's
    sha256 instead (``weights_file_sha256``), which is then what the new file is compared with."""
    cfg = train_config(configs, name, Path(out) / stage if stage else out, refs, overrides, device)
    ident = {k: v for k, v in asdict(cfg).items() if k not in ("out", "device", "init")}
    fp = fingerprint(ident, [cfg.init] if cfg.init else [])
    model_dir = Path(cfg.out)
    step = f"{stage}/train/{name}" if stage else f"train/{name}"
    before = StepState(out, step, fp)
    # done, but its checkpoint is gone (a clone keeps results, never checkpoints): train it again
    # on the recorded threads, the one setting beside the config that changes CPU float sums
    recorded = before.record if before.done else {}
    threads = recorded.get("threads")
    if recorded and not model_checkpoint(model_dir).exists():
        how = (
            f"on {threads} thread(s) as recorded"
            if threads
            else "(no thread count recorded: the current ones)"
        )
        log(f"[note] {step}: done, but its checkpoint is missing; training it again {how}")

    def work():
        from smoothinf.models import read_sidecar

        with torch_threads(threads):
            used = torch.get_num_threads()
            metrics = train(cfg, resume=True)
        ckpt = model_checkpoint(model_dir)
        digest = checkpoint_digest(ckpt)
        if "weights_digest" in recorded:
            was, now, kind = recorded["weights_digest"], digest, "tensor digest"
        else:
            was, now, kind = (
                recorded.get("weights_file_sha256"),
                read_sidecar(ckpt)["weights_sha256"],
                "file sha256",
            )
        if was and was != now:
            log(
                f"[note] {step}: the weights came out other than recorded ({kind} {now[:12]}, not "
                f"{was[:12]}): what was keyed on the old weights is set aside (*.stale.jsonl) and "
                "measured again"
            )
        return {"metrics": metrics, "threads": used, "weights_digest": digest}

    # the model folder is what a changed config discards; the checkpoint, what "done" needs
    outputs = [model_dir, model_dir / "model.safetensors"]
    run_step(out, step, fp, outputs, work, log)
    return str(model_checkpoint(model_dir))


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` (None: left as they are) inside the block."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
