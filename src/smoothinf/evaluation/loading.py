"""What an evaluation runs on: a checkpoint, the examples it is judged on, and for the protocol the
identity that keys its records. Shared by the CLI's commands and the study's stages, so that a
record one of them writes is matched by the other."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from smoothinf.data import DatasetInfo, ImageDataset, load_dataset
from smoothinf.errors import SmoothinfError
from smoothinf.evaluation.config import EvalConfig
from smoothinf.evaluation.results import evaluation_identity, weights_digest
from smoothinf.models import load_checkpoint, read_sidecar
from smoothinf.models.inputs import check_model_input


def dataset_name(requested: str | None, meta: dict) -> str:
    """The data set to use: ``requested`` (``--data``) when given, else the one the checkpoint was
    trained on."""
    name = requested or meta.get("dataset")
    if isinstance(name, dict):
        name = name.get("name")
    if not name:
        raise SmoothinfError("the checkpoint names no data set; pass --data (in Python: data=...)")
    return name


@dataclass
class CheckpointExamples:
    """A loaded checkpoint and the examples to judge it on: ``x`` (N, C, H, W) pixels in [0, 1] and
    ``y`` (N,) labels, on the CPU; ``data`` is the data set's name."""

    model: torch.nn.Module
    meta: dict
    data: str
    dataset: ImageDataset
    info: DatasetInfo
    x: torch.Tensor
    y: torch.Tensor


def load_checkpoint_and_examples(
    checkpoint: str | os.PathLike,
    data: str | None,
    split: str,
    root: str | os.PathLike | None = None,
    max_examples: int | None = None,
    device: str | torch.device = "cpu",
    first_example: int = 0,
) -> CheckpointExamples:
    """Load ``checkpoint`` onto ``device`` and ``max_examples`` (None: all the rest) examples of
    ``split`` of data set ``data`` (None: the checkpoint's), from example ``first_example`` on.
    One-line error unless the examples fit the checkpoint's recorded input shape, dtype and classes."""
    model, meta = load_checkpoint(checkpoint, device=device)
    name = dataset_name(data, meta)
    dataset, info = load_dataset(name, split, root)
    if first_example >= len(dataset):
        raise SmoothinfError(
            f"first example {first_example} is past the end of {name}'s {split} split "
            f"({len(dataset)} examples); pass a smaller --first-example"
        )
    x, y = dataset.tensors(None if max_examples is None else first_example + max_examples)
    x, y = x[first_example:], y[first_example:]
    check_model_input(model, x, y, name=f"--data {name} ({split} split)", check_device=False)
    return CheckpointExamples(model, meta, name, dataset, info, x, y)


def protocol_inputs(cfg: EvalConfig, device: str | torch.device) -> tuple[CheckpointExamples, dict]:
    """``cfg``'s checkpoint and examples (``cfg.data`` is filled in from the checkpoint when None)
    and the identity of its records (``results.evaluation_identity``): the weights' sha256, the
    examples' hash, every setting but the grid axes, the transfer source's weights."""
    loaded = load_checkpoint_and_examples(
        cfg.checkpoint, cfg.data, cfg.split, cfg.root, cfg.max_examples, device, cfg.first_example
    )
    cfg.data = loaded.data
    source_sha = read_sidecar(cfg.transfer_source).get("weights_sha256") if cfg.transfer_source else None
    # keyed on the tensors, not the file's bytes: a re-saved checkpoint of the same weights resumes
    identity = evaluation_identity(cfg, weights_digest(loaded.model), loaded.x, loaded.y, device, source_sha)
    return loaded, identity


__all__ = ["CheckpointExamples", "dataset_name", "load_checkpoint_and_examples", "protocol_inputs"]
