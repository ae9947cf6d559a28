"""The paper-MNIST study's shared description: its config (``configs/study.yaml``), constants, and
the helpers that both the pipeline (``paper_mnist.pipeline``) and the page (``paper_mnist.report``)
read."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from smoothinf.attacks.presets import check_temperatures
from smoothinf.errors import ConfigError
from smoothinf.training.trainer import TrainConfig
from smoothinf.utils import check_config_types

STUDY_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIGS = STUDY_DIR / "configs"
DEFAULT_RESULTS = STUDY_DIR / "results"
# The study's former spellings of its counts, still read from study.yaml, study.json and records
RENAMED = {"judge_draws": "judging_m", "judge_subsets": "judgements"}
PAPER_ATTACKS = ("pgd", "pgd-km", "epgd")  # the paper's attacks (a row's "paper" worst case)
# The adaptive and cross-check attacks, run last in this order on the examples still alive
CASCADED = ("apgd-ce", "apgd-dlr", "apgd-t", "autoattack", "square")
CERT_RADII = (0.0, 0.25, 0.5, 1.0)
# Named blocks of study.yaml that override its top level: "quick" (minutes on 2 CPU cores, the test
# suite's run) and "gpu" (the full specification, a GPU machine's job)
PROFILES = ("quick", "gpu")
MADRY_MNIST = 0.89  # Madry et al. (2018), MNIST, PGD at eps 0.3 (about 89%)
MADRY_MNIST_CLEAN = 98.8  # the same model's clean accuracy, %
# its line in the pages' headline tables (classifier | clean | robust)
MADRY_MNIST_ROW = (
    f"| Madry et al. (2018), published MNIST model, PGD | {MADRY_MNIST_CLEAN} | ~{100 * MADRY_MNIST:.0f} |"
)


def check_train_overrides(over: object, where: str) -> None:
    """One-line ConfigError unless ``over`` maps TrainConfig fields to values of their types; ints
    are widened in place where floats go."""
    if not isinstance(over, dict):
        raise ConfigError(f"{where} must be a mapping of TrainConfig fields, not {over!r}")
    unknown = sorted(set(over) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"{where}: {', '.join(unknown)} is not a TrainConfig field")
    over.update(check_config_types(TrainConfig, over, where))


# EvalConfig fields the longer-training stage sets itself (first_example from a model's extend)
LONG_FROM_STUDY = ("checkpoint", "data", "root", "eps", "seed", "device", "first_example")


@dataclass
class LongTrainingConfig:
    """The longer-training stage (study.yaml's ``long_training``; empty: off). The study's recipes
    ``models`` train again (from scratch, or from one another) with ``train`` (TrainConfig fields
    over the study's own overrides, e.g. 30 epochs) into ``out/long/models``, and each is evaluated
    with ``smoothinf evaluate``'s protocol: ``evaluate`` (EvalConfig fields shared by every model), then
    ``models[name]`` (that model's own, e.g. votes and sigmas, and under its key ``train`` its own
    TrainConfig fields over ``train``, and under ``extend`` more images for some of its rows);
    data, eps, seed and device are the study's. A model whose config starts from ``@other`` starts
    from the stage's own ``other``, which must be listed too.

    ``extend: {examples: N, sigmas: [...], votes: [...]}`` evaluates the base model and those rows
    (default: all of the model's votes and sigmas) on the first N images, in slices of the model's
    ``max_examples`` past the first, each its own results file and step (``first_example``); the
    page merges a row's slices that every run has (``evaluation.slices``)."""

    models: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)

    def eval_config(self, name: str, checkpoint: str, study: StudyConfig, first_example: int = 0):
        """The EvalConfig of model ``name`` (checkpoint path ``checkpoint``), validated; with
        ``first_example`` > 0, that of its slice of ``extend`` starting there."""
        from smoothinf.evaluation.config import EvalConfig

        fixed = {"data": study.data, "eps": [float(study.eps)], "seed": study.seed, "device": study.device}
        block = self.models.get(name) or {}
        own = {k: v for k, v in block.items() if k not in ("train", "extend")}
        cfg = EvalConfig(**{**self.evaluate, **own}, checkpoint=checkpoint, **fixed)
        if first_example:
            extend = block.get("extend") or {}
            cfg.votes = list(extend.get("votes", cfg.votes))
            cfg.sigmas = list(extend.get("sigmas", cfg.sigmas))
            cfg.max_examples = min(cfg.max_examples, int(extend["examples"]) - first_example)
            cfg.first_example = first_example
        cfg.validate()
        return cfg

    def slice_starts(self, name: str, study: StudyConfig) -> list[int]:
        """The first examples of model ``name``'s slices past its first ``max_examples`` ([] without
        ``extend``)."""
        extend = (self.models.get(name) or {}).get("extend")
        if not extend:
            return []
        size = self.eval_config(name, "-", study).max_examples
        return list(range(size, int(extend["examples"]), size))

    def train_overrides(self, name: str) -> dict:
        """Model ``name``'s TrainConfig overrides: the stage's ``train``, then its own."""
        return {**self.train, **((self.models.get(name) or {}).get("train") or {})}

    def validate(self, study: StudyConfig) -> None:
        from smoothinf.evaluation.config import EvalConfig

        where = "long_training"
        if not isinstance(self.models, dict) or not self.models:
            raise ConfigError(f"{where}.models must map model names to their evaluate settings")
        strangers = sorted(set(self.models) - set(study.models))
        if strangers:
            raise ConfigError(f"{where}.models names {', '.join(strangers)}, not among the study's models")
        check_train_overrides(self.train, f"{where}.train")
        eval_fields = {f.name for f in fields(EvalConfig)} - set(LONG_FROM_STUDY)
        for label, block in [("evaluate", self.evaluate)] + [
            (f"models[{n!r}]", b or {}) for n, b in self.models.items()
        ]:
            if not isinstance(block, dict):
                raise ConfigError(f"{where}.{label} must be a mapping of EvalConfig fields, not {block!r}")
            if label != "evaluate" and "train" in block:
                check_train_overrides(block["train"], f"{where}.{label}.train")
            own_keys = {"train", "extend"} if label != "evaluate" else set()
            unknown = sorted(set(block) - eval_fields - own_keys)
            if unknown:
                raise ConfigError(
                    f"{where}.{label}: {', '.join(unknown)} is not an EvalConfig field the stage takes "
                    f"(the stage sets {', '.join(LONG_FROM_STUDY)})"
                )
        for name in self.models:
            try:
                self._check_extend(name, self.eval_config(name, "<checkpoint>", study))
                for start in self.slice_starts(name, study):
                    self.eval_config(name, "<checkpoint>", study, start)
            except ConfigError as exc:
                raise ConfigError(f"{where}, model {name}: {exc}") from None

    def _check_extend(self, name: str, cfg) -> None:
        """One-line ConfigError unless model ``name``'s ``extend`` is well formed for ``cfg``."""
        extend = (self.models.get(name) or {}).get("extend")
        if extend is None:
            return
        if not isinstance(extend, dict) or set(extend) - {"examples", "sigmas", "votes"}:
            raise ConfigError("extend must be a mapping of examples, sigmas and votes")
        examples = extend.get("examples")
        if isinstance(examples, bool) or not isinstance(examples, int) or examples <= cfg.max_examples:
            raise ConfigError(
                f"extend.examples must be an integer above max_examples ({cfg.max_examples}), "
                f"got {examples!r}"
            )
        for axis in ("sigmas", "votes"):
            strangers = [v for v in extend.get(axis, []) if v not in getattr(cfg, axis)]
            if strangers:
                raise ConfigError(
                    f"extend.{axis} names {strangers[0]!r}, not one of the model's {axis} "
                    f"{getattr(cfg, axis)}: a slice only adds images to a row the first images have"
                )


@dataclass
class StudyConfig:
    """What the study trains and how it evaluates (``studies/paper_mnist/configs/study.yaml``)."""

    models: list[str] = field(default_factory=list)
    noise_models: list[str] = field(default_factory=list)
    finetunes: list[str] = field(default_factory=list)
    transfer_source: str | None = None
    data: str = "mnist"
    eps: float = 0.3
    examples: int = 1000
    runs: int = 3
    sigmas: list[float] = field(default_factory=lambda: [0.0, 0.1])
    ms: list[int] = field(default_factory=lambda: [1, 8])
    headline_ms: list[int] = field(default_factory=list)  # the convergence step's m (default: ms)
    votes: list[str] = field(default_factory=lambda: ["hard", "weighted", "soft"])
    # A randomised classifier's correctness on one input is a probability: each attack's batch is
    # judged with judging_m fresh smoothing draws per example (at least max(ms)), and each vote@m's
    # P(correct) is estimated over `judgements` random m-subsets of them (0: one judgement, the
    # first m draws; a per-example worst case over attacks of single judgements is biased low).
    # Formerly judge_draws and judge_subsets.
    judging_m: int = 128
    judgements: int = 32
    apgd_steps: int = 50
    draws: int = 8
    paper_steps: int = 20
    transfer_steps: int = 40
    autoattack_examples: int = 0
    autoattack_runs: int = 1  # AutoAttack on the first autoattack_examples of the first N runs only
    cascade: bool = True  # adaptive attacks only craft on examples some vote@m still gets right
    model_eval: dict = field(default_factory=dict)  # per-model overrides: {name: {runs:, sigmas:}}
    convergence_examples: int = 200
    convergence_scales: list[int] = field(default_factory=lambda: [1, 2])
    compute_pairs: list[list[int]] = field(default_factory=list)
    square_queries: int = 0  # black-box Square on the convergence step's setting (0: off)
    # Black-box Square, cascaded last (0: off): on a deterministic row's scores, every survivor of
    # every run; on a randomised row, the soft vote over `draws` draws, AutoAttack's subset (the
    # first autoattack_examples of the first autoattack_runs runs). Square beating every
    # white-box attack on a row means masked gradients; its successes count.
    grid_square_queries: int = 0
    grid_square_queries_randomised: int = 0
    # the headline rows (best smoothed and its base) on every example and run: the adaptive preset
    # at each scale (x apgd_steps and x draws), then AutoAttack, cascaded after the evaluation's
    # attacks; the largest scale (the doubling check) only on the first headline_check_runs runs
    headline_scales: list[int] = field(default_factory=list)
    headline_check_runs: int = 1
    # The plateau stage (0 steps: off): every model's best smoothed row (sigma > 0) and its base on
    # the first plateau_examples examples of every run, under APGD-CE / APGD-DLR at plateau_steps x
    # plateau_draws (a budget whose doubling was measured to move the worst case < 1 point),
    # cascaded after the grid's and the headline's attacks of the same row and run; each attack
    # runs plateau_restarts times from fresh random starts on the examples it has not yet fooled
    # (steps and draws converge at 200 x 64, restarts not on the hard vote: docs/attack-strength.md)
    plateau_steps: int = 0
    plateau_draws: int = 0
    plateau_examples: int = 100
    plateau_restarts: int = 1
    # > 0, or a list of them: after the pair, APGD-CE on the expected softmax of logits / T per T
    # (the hard vote's tally as T -> 0), cascaded in order: "apgd-ce-t@plateau" for the first T,
    # "apgd-ce-t<T>@plateau" for the others (0 or []: off; tempered_attack_name); a row whose T
    # changed is redone (the attack's repr, its recorded budget, names T)
    plateau_temperature: float | list[float] = 0.0
    cert_sigmas: list[float] = field(default_factory=lambda: [0.25])
    cert_examples: int = 500
    cert_n0: int = 100
    cert_n: int = 10000
    cert_alpha: float = 0.001
    certify: bool = True  # False (in model_eval): no certification step for that model
    train: dict = field(default_factory=dict)  # overrides applied to every TrainConfig
    # per-model TrainConfig overrides, applied after ``train``: {name: {field: value}}
    model_train: dict = field(default_factory=dict)
    # the longer-training stage (LongTrainingConfig's fields; {}: off)
    long_training: dict = field(default_factory=dict)
    batch_size: int = 250
    seed: int = 0
    device: str = "auto"
    jobs: int = 1  # steps run in parallel, each in its own process (threads split between them)
    quick: bool = False

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("the study names no models")
        missing = [n for n in self.noise_models if n not in self.models]
        if missing:
            raise ConfigError(f"noise_models {missing} are not among the study's models")
        if self.finetunes and not self.noise_models:
            raise ConfigError("fine-tunings need noise_models to pick @best_noise from")
        if self.examples < 1 or self.runs < 1 or not self.ms or min(self.ms) < 1 or not self.votes:
            raise ConfigError("examples, runs and every m must be >= 1; give at least one vote")
        if any(s < 0 for s in self.sigmas) or not self.sigmas:
            raise ConfigError("sigmas must be >= 0 (pixel units) and not empty")
        if self.jobs < 1:
            raise ConfigError("jobs must be >= 1")
        if type(self.judgements) is not int or not 0 <= self.judgements <= 255:
            raise ConfigError(f"judgements must be an integer in [0, 255], not {self.judgements!r}")
        if type(self.judging_m) is not int or self.judging_m < 1:
            raise ConfigError(f"judging_m must be an integer >= 1, not {self.judging_m!r}")
        for key in ("grid_square_queries", "grid_square_queries_randomised"):
            if type(getattr(self, key)) is not int or getattr(self, key) < 0:
                raise ConfigError(f"{key} must be an integer >= 0 (0: off), not {getattr(self, key)!r}")
        scales = self.headline_scales
        if not isinstance(scales, list) or not all(type(k) is int and k >= 1 for k in scales):
            raise ConfigError(
                f"headline_scales must be a list of integers >= 1 (e.g. [2, 4, 8]), not {scales!r}"
            )
        if type(self.headline_check_runs) is not int or self.headline_check_runs < 0:
            raise ConfigError(
                f"headline_check_runs must be an integer >= 0, not {self.headline_check_runs!r}"
            )
        for key in ("plateau_steps", "plateau_draws", "plateau_examples"):
            if type(getattr(self, key)) is not int or getattr(self, key) < 0:
                raise ConfigError(f"{key} must be an integer >= 0, not {getattr(self, key)!r}")
        try:
            check_temperatures(self._temperature_values())
        except ConfigError:
            raise ConfigError(
                "plateau_temperature must be a number >= 0 (0: off) or a list of distinct numbers "
                f"> 0, not {self.plateau_temperature!r}"
            ) from None
        if type(self.plateau_restarts) is not int or self.plateau_restarts < 1:
            raise ConfigError(f"plateau_restarts must be an integer >= 1, not {self.plateau_restarts!r}")
        if self.plateau_steps and (self.plateau_draws < 1 or not 1 <= self.plateau_examples <= self.examples):
            raise ConfigError(
                "the plateau stage needs plateau_draws >= 1 and 1 <= plateau_examples <= examples "
                f"(got {self.plateau_draws} draws, {self.plateau_examples} of {self.examples} examples)"
            )
        trained = self.models + self.finetunes + ([self.transfer_source] if self.transfer_source else [])
        for where, over in [("train", self.train)] + [
            (f"model_train[{n!r}]", o) for n, o in self.model_train.items()
        ]:
            check_train_overrides(over, where)
        strangers = sorted(set(self.model_train) - set(trained))
        if strangers:
            raise ConfigError(f"model_train names {', '.join(strangers)}, which the study does not train")
        allowed = {"runs", "sigmas", "certify"}
        for name, over in self.model_eval.items():
            if name not in self.models + self.finetunes:
                raise ConfigError(f"model_eval names {name!r}, which is not among the study's models")
            if not isinstance(over, dict) or set(over) - allowed:
                raise ConfigError(f"model_eval[{name!r}] may only set {', '.join(sorted(allowed))}")
        long = self.long()
        if long is not None:
            long.validate(self)

    def long(self) -> LongTrainingConfig | None:
        """The longer-training stage, or None when study.yaml gives none."""
        if not self.long_training:
            return None
        keys = {"models", "train", "evaluate"}
        if not isinstance(self.long_training, dict) or set(self.long_training) - keys:
            raise ConfigError("long_training may only set models, train and evaluate")
        return LongTrainingConfig(**self.long_training)

    def for_model(self, name: str) -> StudyConfig:
        """This study with ``model_eval[name]``'s overrides (fewer runs or sigmas for a costly model)."""
        from dataclasses import replace

        over = self.model_eval.get(name, {})
        return replace(self, **over) if over else self

    def train_overrides(self, name: str) -> dict:
        """The TrainConfig fields this study sets on model ``name``: ``train``, then ``model_train[name]``."""
        return {**self.train, **self.model_train.get(name, {})}

    def judged_draws(self) -> int:
        """Draws per example that judge an attack's batch on the grid (0 judgements: max(ms))."""
        return max(max(self.ms), self.judging_m) if self.judgements else max(self.ms)

    def _temperature_values(self) -> list:
        """plateau_temperature as a list, unchecked: a list as is, a scalar 0 as [], else [it]."""
        t = self.plateau_temperature
        off = type(t) in (int, float) and t == 0
        return list(t) if isinstance(t, list) else [] if off else [t]

    def plateau_temperatures(self) -> list[float]:
        """The plateau stage's tempered APGD-CE temperatures, in the order they run ([]: none)."""
        return [float(v) for v in self._temperature_values()]

    def eval_identity(self) -> dict:
        """The fields that define what an evaluation row means."""
        keys = ("eps", "examples", "apgd_steps", "draws", "paper_steps", "transfer_steps")
        keys += ("autoattack_examples", "autoattack_runs", "cascade", "seed", "votes", "ms", "data")
        keys += ("judging_m", "judgements")
        return {k: getattr(self, k) for k in keys}


def tempered_attack_name(position: int, temperature: float) -> str:
    """The plateau stage's name of its ``position``-th (from 0) tempered APGD-CE:
    ``apgd-ce-t@plateau`` for the first, ``apgd-ce-t<T>@plateau`` for the others."""
    return "apgd-ce-t@plateau" if position == 0 else f"apgd-ce-t{temperature:g}@plateau"


def renamed(raw: dict) -> dict:
    """``raw`` (a study.yaml block or study.json) with its former spellings of a count renamed
    (``RENAMED``); both spellings of one count are a one-line ConfigError."""
    out = dict(raw)
    for old, new in RENAMED.items():
        if old in out:
            if new in out:
                raise ConfigError(f"{old} and {new} are one count: give {new} only")
            out[new] = out.pop(old)
    return out


def _checked(block: object, where: str, allowed: set[str]) -> dict:
    """``block`` as a dict of StudyConfig fields of the right types, else a one-line ConfigError."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ConfigError(f"{where} must be a mapping of study settings, not {type(block).__name__}")
    block = renamed(block)
    unknown = sorted(set(block) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    return check_config_types(StudyConfig, block, str(where))


def load_study(
    configs: str | os.PathLike = DEFAULT_CONFIGS,
    quick: bool = False,
    profile: str | None = None,
    **overrides,
) -> StudyConfig:
    """The study of ``configs/study.yaml``; ``profile`` (one of ``PROFILES``) applies that block of
    it over the top level (``quick=True`` is ``profile="quick"``); then ``overrides`` (None: kept).
    A file that is not a mapping, is not YAML, or gives a key of the wrong type is a one-line
    ConfigError."""
    import yaml

    if quick and profile not in (None, "quick"):
        raise ConfigError(f"quick and profile {profile!r} exclude each other: give one")
    profile = "quick" if quick else profile
    if profile is not None and profile not in PROFILES:
        raise ConfigError(f"unknown study profile {profile!r}; choose one of {', '.join(PROFILES)}")
    path = Path(configs) / "study.yaml"
    if not path.exists():
        raise ConfigError(f"{path} not found (the study's description)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict | None):
        raise ConfigError(f"{path} must be a mapping of study settings, not {type(raw).__name__}")
    raw = dict(raw or {})
    names = {f.name for f in fields(StudyConfig)} - {"quick"}
    blocks = {name: _checked(raw.pop(name, None), f"{path} {name}", names) for name in PROFILES}
    raw = _checked(raw, path, names)
    if profile is not None:
        raw.update(blocks[profile])
    raw.update({k: v for k, v in overrides.items() if v is not None})
    study = StudyConfig(**raw, quick=profile == "quick")
    study.validate()
    return study


def study_from_json(path: Path) -> StudyConfig:
    """The StudyConfig a run wrote to ``path`` (``study.json``), as written (its former spellings
    renamed); a file that is not a non-empty mapping of study settings is a one-line ConfigError."""
    import json

    try:
        raw = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path} must hold the study's settings (a non-empty mapping), not {raw!r}")
    raw = renamed(raw)
    unknown = sorted(set(raw) - {f.name for f in fields(StudyConfig)})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}")
    return StudyConfig(**raw)


def judgements_of(row: dict) -> int:
    """The independent judgements behind a record's per-example correctness (0: judged once);
    records written before the rename hold them as ``judge_subsets``."""
    return int(row.get("judgements", row.get("judge_subsets", 0)) or 0)


def _bits(mask: torch.Tensor) -> str:
    return np.packbits(mask.cpu().numpy().astype(bool)).tobytes().hex()


def encode_correct(fraction: torch.Tensor, subsets: int) -> str:
    """Hex of the per-example correctness (N,) in [0, 1]: packed bits when ``subsets`` is 0 (one
    judgement), else the count of right judgements out of ``subsets`` as one byte each."""
    if not subsets:
        return _bits(fraction > 0.5)
    counts = torch.round(fraction.detach().cpu().double() * subsets).to(torch.uint8)
    return counts.numpy().tobytes().hex()


def correct_fraction(row: dict, key: str, n: int | None = None) -> np.ndarray:
    """(n,) float64 in [0, 1]: the estimated probability that ``row``'s classifier ``key``
    ("vote@m") is right on each example (0 or 1 for rows judged once)."""
    n = int(row["n"]) if n is None else n
    subsets = judgements_of(row)
    if not subsets:
        return unbits(row["correct"][key], n).astype(np.float64)
    counts = np.frombuffer(bytes.fromhex(row["correct"][key]), dtype=np.uint8)[:n]
    return counts.astype(np.float64) / subsets


def row_estimates(rows: list[dict], key: str, n: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Per result row its estimated P(correct) of ``key`` on the first n examples (default: the
    fewest any row has), (A, N), and the judgements behind each estimate (1 for rows judged once):
    the input of ``min_estimate_bias``."""
    n = min(int(r["n"]) for r in rows) if n is None else n
    judgements = [max(1, judgements_of(r)) for r in rows]
    return np.stack([correct_fraction(r, key, n) for r in rows]), judgements


def min_estimate_bias(
    estimates: np.ndarray, subsets: int | np.ndarray, rng: np.random.Generator, draws: int = 400
) -> float:
    """The judging noise in a worst case over attacks: a plug-in parametric bootstrap of
    mean_n(E[min_a p_hat_a] - min_a p_a), negative when the per-example minimum is biased low.

    ``estimates`` (A, N): per attack and example the estimated P(correct), each the mean of
    ``subsets`` (an int, or (A,) per attack) independent 0/1 judgements; each is redrawn ``draws``
    times as Binomial(subsets, p_hat) / subsets. Estimates in {0, 1} (deterministic rows) add no
    noise; a single judgement of a randomised classifier (subsets 1, p_hat 0 or 1) is taken as
    exact, so its noise is not counted.
    """
    p = np.clip(np.asarray(estimates, dtype=np.float64), 0.0, 1.0)
    if p.ndim != 2 or not p.size:
        raise ValueError(f"estimates must be (attacks, examples) and non-empty, got shape {p.shape}")
    s = np.broadcast_to(np.asarray(subsets, dtype=np.int64).reshape(-1, 1), p.shape)
    if (s < 1).any():
        raise ValueError("subsets must be >= 1")
    resampled = rng.binomial(s, p, size=(draws, *p.shape)) / s
    return float(resampled.min(1).mean() - p.min(0).mean())


def unbits(hexstr: str, n: int) -> np.ndarray:
    """(n,) bool from the hex of ``np.packbits`` (the per-example correctness stored in results)."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(hexstr), dtype=np.uint8))[:n].astype(bool)
