"""Pretrained models that this library trained and measured, loaded by name, each with a model card.

>>> import smoothinf.zoo as zoo
>>> zoo.names()                                   # e.g. ['mnist_cnn_small_pgd_at_6ep', ...]
>>> model = zoo.load("mnist_cnn_small_pgd_at_6ep")  # an nn.Module taking [0, 1] pixels
>>> zoo.card("mnist_cnn_small_pgd_at_6ep")["worst_case"]["value"]

The zoo is a folder (the package's own by default; ``root`` points at another):

* ``weights/NAME.safetensors`` (+ its checkpoint sidecar ``NAME.safetensors.json``);
* ``cards/NAME.json``: the model card (``smoothinf.zoo.card`` documents its fields), written by
  ``smoothinf models card CKPT --name NAME``, never by hand;
* ``records/NAME/*.jsonl``: the result records each figure of the card came from (protocol records
  as ``smoothinf evaluate`` writes them, keyed on the same weights; ``clean.jsonl``;
  ``certify.jsonl``).

``load`` checks the file's sha256 against its sidecar and the tensors' digest
(``smoothinf.evaluation.results.weights_digest``) against the card, and refuses a mismatch with
one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from smoothinf.errors import CheckpointError, ConfigError

ZOO_DIR = Path(__file__).resolve().parent
CARD_FORMAT = "smoothinf-model-card/1"


def _root(root: str | os.PathLike | None) -> Path:
    return ZOO_DIR if root is None else Path(root)


def names(root: str | os.PathLike | None = None) -> list[str]:
    """The zoo's model names (sorted): one per card in ``cards/``."""
    folder = _root(root) / "cards"
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def _check_name(name: str, root: str | os.PathLike | None) -> None:
    known = names(root)
    if name not in known:
        raise ConfigError(
            f"no zoo model {name!r}; known: {', '.join(known) or 'none'} (`smoothinf models list --zoo`)"
        )


def card_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """``cards/NAME.json`` of the zoo (it need not exist)."""
    return _root(root) / "cards" / f"{name}.json"


def weights_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """``weights/NAME.safetensors`` of the zoo (it need not exist)."""
    return _root(root) / "weights" / f"{name}.safetensors"


def card(name: str, root: str | os.PathLike | None = None) -> dict:
    """The model card of ``name`` as a dict (``CARD_FORMAT``). Accuracies are fractions in [0, 1];
    each figure is ``{"value": ..., ...}`` with the images, runs, budget and ``records`` (paths
    relative to the zoo folder, with the fingerprint of the records used) it came from, or None
    with its reason under ``missing``. Fields: ``name``, ``description``, ``architecture``,
    ``data``, ``weights`` (file, sha256 of the file, ``tensor_sha256``, bytes), ``training``
    (command, config, epochs, wall seconds, machine), ``clean`` (full test set), ``clean_first_1000``,
    ``worst_case`` (the default protocol), ``autoattack`` (``standard``, or ``rand`` for a
    randomised model, on the worst case's images), ``best_smoothed`` (the smoothed row with the
    highest worst case, and its setting), ``certified`` (L2 radii 0.25 / 0.5 / 1.0, for models
    trained with input noise), ``missing`` and ``produced_by``."""
    _check_name(name, root)
    path = card_path(name, root)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable model card ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
        raise CheckpointError(f'{path}: not a smoothinf model card (no "format": "{CARD_FORMAT}")')
    return data


def load(name: str, device: str = "cpu", root: str | os.PathLike | None = None) -> nn.Module:
    """The zoo model ``name`` in eval mode on ``device``: inputs (N, C, H, W) in [0, 1], logits out
    (normalisation and any noise layers inside). Refuses, with one line, weights whose file sha256
    differs from the sidecar's or whose tensor digest differs from the card's."""
    from smoothinf.evaluation.results import weights_digest
    from smoothinf.models import load_checkpoint

    info = card(name, root)
    path = weights_path(name, root)
    model, _ = load_checkpoint(path, device=device, verify=True)
    expected = info["weights"]["tensor_sha256"]
    got = weights_digest(model)
    if got != expected:
        raise CheckpointError(
            f"{path}: tensor digest {got[:16]}... differs from the card's {expected[:16]}...; the"
            " weights were changed: reinstall smoothinf or rerun `smoothinf models card`"
        )
    return model


__all__ = ["CARD_FORMAT", "ZOO_DIR", "card", "card_path", "load", "names", "weights_path"]


def _percent(figure: dict | None, spread: bool = False) -> str:
    if not figure or figure.get("value") is None:
        return "-"
    text = f"{100 * figure['value']:.1f}"
    if spread and len(figure.get("runs") or []) > 1:
        text += f" ± {100 * figure['std_over_runs']:.1f}"
    return text


def _images(figure: dict | None) -> str:
    if not figure or figure.get("value") is None:
        return ""
    runs = len(figure.get("runs") or [0])
    return f"{figure['images']['count']} images x {runs} run{'s' if runs > 1 else ''}"


def _certified(figure: dict | None) -> str:
    """The certified accuracy at the largest of the card's radii that its sigma and n can certify
    at all (``max_certifiable_radius``), e.g. "99.0 (r 0.25, sigma 0.1)"; "-" without one."""
    if not figure or not figure.get("value"):
        return "-"
    cap = figure.get("max_certifiable_radius", float("inf"))
    radii = sorted((float(r), v) for r, v in figure["value"].items() if float(r) <= cap and v is not None)
    if not radii:
        return f"- (sigma {figure['sigma']:g} certifies at most {cap:.2f})"
    r, v = radii[-1]
    return f"{100 * v:.1f} (r {r:g}, sigma {figure['sigma']:g})"


def results_table(root: str | os.PathLike | None = None) -> str:
    """The zoo's cards as one Markdown table (accuracies in %, L_inf eps of each card; the README's
    results table is this text)."""
    lines = [
        "| model | clean | worst case, default protocol | AutoAttack, same images | best smoothed row"
        " (worst case) | certified, L2 |",
        "|---|---|---|---|---|---|",
    ]
    for name in names(root):
        c = card(name, root)
        worst, auto, best = c.get("worst_case"), c.get("autoattack"), c.get("best_smoothed")
        setting = (best or {}).get("setting") or {}
        smoothed = "-"
        if best:
            smoothed = f"{_percent(best)} ({setting['vote']} sigma {setting['sigma']:g}, m {setting['m']})"
        certified = _certified(c.get("certified"))
        lines.append(
            f"| [`{name}`](src/smoothinf/zoo/cards/{name}.json) | {_percent(c.get('clean'))} | "
            f"{_percent(worst, spread=True)} ({_images(worst)}, eps {worst['eps']:g}) | "
            f"{_percent(auto)} ({auto.get('version', '') if auto else ''}) | {smoothed} | "
            f"{certified} |"
        )
    return "\n".join(lines) + "\n"
