"""Model cards: every figure of a zoo model's card is produced by ``write_card`` (the command
``smoothinf models card CKPT --name NAME``), never typed by hand.

``write_card`` copies the checkpoint into the zoo (``weights/NAME.safetensors`` + sidecar, bytes
unchanged so its sha256 still keys its records), copies the result records of ``records`` files
that are keyed on the same weights into ``records/NAME/FINGERPRINT.jsonl``, and reads the card's
robustness figures from every record in ``records/NAME/``. What is missing it measures, on
``examples`` images, with the library's protocol (``smoothinf.evaluate``, the ``default`` preset,
cross-checks on), and appends those records there too, so a second call measures nothing:

* ``worst_case`` (and ``best_smoothed``): the default protocol on the first ``examples`` test
  images, one run, the base row and the ``votes`` x ``sigmas`` x ``ms`` grid;
* ``autoattack``: the official AutoAttack alone (``standard``; ``rand`` for a randomised model) on
  the worst case's images (its records' data digest is checked);
* ``clean`` / ``clean_first_1000``: forwards on the full test set / its first 1000 images; for a
  model with weight noise, the mean over ``clean_draws`` passes with fresh noise (``clean.jsonl``);
* ``certified``: for a model trained with Gaussian input noise (``training.sigma > 0``), Cohen et
  al.'s CERTIFY at that sigma (n0 100, ``certify_n`` draws, alpha 0.001) on ``examples`` images
  (``certify.jsonl``); other models get None with the reason under ``missing``.

A figure named in ``skip`` is not measured: it is None with its reason under ``missing``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from smoothinf._version import __version__
from smoothinf.errors import ConfigError
from smoothinf.evaluation.results import read_jsonl
from smoothinf.zoo import CARD_FORMAT, ZOO_DIR, card_path, weights_path
from smoothinf.zoo import card as read_card
from smoothinf.zoo import names as zoo_names

FIGURES = ("clean", "clean_first_1000", "worst_case", "autoattack", "best_smoothed", "certified")
"""The measured fields of a card; each is a dict with a ``value`` or None with a ``missing`` reason."""
CERTIFY_RADII = (0.25, 0.5, 1.0)
CERTIFY_N0, CERTIFY_ALPHA = 100, 0.001


def machine_description() -> str:
    """This machine in words: CPU model and cores, torch threads, and the GPU when there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def training_seconds(metrics_rows: list[dict]) -> float | None:
    """Wall seconds of a training from its ``metrics.jsonl`` rows: ``seconds`` counts from the
    start of each process, so a resumed run restarts it; the segments are summed."""
    total, last = 0.0, 0.0
    for row in metrics_rows:
        s = row.get("seconds")
        if not isinstance(s, (int, float)):
            return None
        total += s - last if s >= last else s
        last = s
    return round(total, 1) if metrics_rows else None


def _append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def _copy_checkpoint(checkpoint: Path, name: str, root: Path, overwrite: bool) -> Path:
    from smoothinf.models.checkpoint import read_sidecar, sidecar_path

    target = weights_path(name, root)
    if target.resolve() == checkpoint.resolve():
        return target
    if target.exists():
        old = read_sidecar(target).get("weights_sha256")
        if old != read_sidecar(checkpoint).get("weights_sha256") and not overwrite:
            raise ConfigError(
                f"{target} holds other weights (sha256 {str(old)[:16]}...); pass --overwrite to replace"
                " them (their card and records go too)"
            )
        if old != read_sidecar(checkpoint).get("weights_sha256"):
            shutil.rmtree(root / "records" / name, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, target)
    shutil.copyfile(sidecar_path(checkpoint), sidecar_path(target))
    return target


def _import_records(sources: list[str], keys: set[str], folder: Path) -> dict[str, str]:
    """Copy the records of ``sources`` keyed on weights ``keys`` into ``folder/FINGERPRINT.jsonl``;
    returns fingerprint -> the source file it came from. One line when a source has none."""
    from smoothinf.evaluation.results import read_results

    origin: dict[str, str] = {}
    for source in sources:
        path = Path(source)
        lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        read_results(path)  # a malformed file is a one-line error naming its line
        mine = [line for line in lines if json.loads(line).get("identity", {}).get("weights_sha256") in keys]
        if not mine:
            raise ConfigError(
                f"{path} holds no records of these weights (sha256 {sorted(keys)[0][:16]}...);"
                " pass records that `smoothinf evaluate` wrote for this checkpoint"
            )
        fp = json.loads(mine[0])["fingerprint"]
        target = folder / f"{fp}.jsonl"
        folder.mkdir(parents=True, exist_ok=True)
        have = set(target.read_text().splitlines()) if target.is_file() else set()
        with target.open("a") as fh:
            for line in mine:
                if line not in have:
                    fh.write(line + "\n")
        origin[fp] = str(source)
    return origin


def _protocol_groups(folder: Path, keys: set[str]) -> dict[Path, list[dict]]:
    """The protocol records of ``folder`` keyed on ``keys``, per file (one fingerprint each)."""
    from smoothinf.evaluation.results import read_results

    groups = {}
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        if path.name in ("clean.jsonl", "certify.jsonl"):
            continue
        records = [r for r in read_results(path) if r.get("identity", {}).get("weights_sha256") in keys]
        if records:
            groups[path] = records
    return groups


def _images(record: dict) -> dict:
    cfg = record["config"]
    return {
        "split": cfg.get("split", "test"),
        "first_example": int(cfg.get("first_example") or 0),
        "count": int(record["n"]),
        "sha256": record["identity"]["data"]["sha256"],
    }


def _key(record: dict) -> tuple:
    return (record["vote"], float(record["sigma"]), int(record["m"]), float(record["eps"]))


def _row_figure(records: list[dict], key: tuple, path: Path, root: Path, origin: dict) -> dict:
    from smoothinf.evaluation.report import aggregate

    row = aggregate(records)[key]
    first = next(r for r in records if _key(r) == key)
    cfg = first["config"]
    return {
        "value": round(row["worst_case"][0], 6),
        "std_over_runs": round(row["worst_case"][1], 6),
        "clean": round(row["clean"][0], 6),
        "setting": {"vote": key[0], "sigma": key[1], "m": key[2]},
        "eps": key[3],
        "norm": "linf",
        "images": _images(first),
        "runs": sorted({int(r["run"]) for r in records if _key(r) == key}),
        "preset": cfg["attacks"],
        "attacks": {a: round(v[0], 6) for a, v in row["attacks"].items()},
        "budget": row["budget"],
        "cross_checks": sorted(row["checks"]),
        "checks_off": row["checks_off"],
        "judging": row["judging"],
        "judgements": cfg.get("judgements"),
        "records": {
            "file": str(path.relative_to(root)),
            "fingerprint": first["fingerprint"],
            "source": origin.get(first["fingerprint"], "measured by `smoothinf models card`"),
        },
    }


def _measure_protocol(model, meta, ckpt_rel: str, x, y, first: int, folder: Path, **grid) -> Path:
    """Run the protocol (one run, cross-checks on when ``grid["checks"]``) on (x, y), the test
    images from ``first`` on; its records go to ``folder/FINGERPRINT.jsonl``."""
    from smoothinf.evaluation.config import EvalConfig
    from smoothinf.evaluation.results import ResultsStore, evaluation_identity, weights_digest
    from smoothinf.evaluation.verdict import evaluate

    cfg = EvalConfig(
        checkpoint=ckpt_rel,
        data=meta.get("dataset") or "mnist",
        split="test",
        first_example=first,
        max_examples=int(x.shape[0]),
        eps=[0.3],
        votes=list(grid["votes"]),
        sigmas=[float(s) for s in grid["sigmas"]] if grid["votes"] else [],
        ms=[int(m) for m in grid["ms"]] if grid["votes"] else [],
        attacks=list(grid["attacks"]),
        check_examples=min(100, int(x.shape[0])) if grid["checks"] else 0,
        runs=1,
        seed=grid["seed"],
        device=str(grid["device"]),
    )
    identity = evaluation_identity(cfg, weights_digest(model), x, y, grid["device"])
    from smoothinf.evaluation.results import fingerprint_of

    path = folder / f"{fingerprint_of(identity)}.jsonl"
    store = ResultsStore(path, identity=identity)
    evaluate(model, x, y, config=cfg, results=store)
    return path


def clean_accuracy(model, x, y, draws: int, seed: int, batch_size: int = 1000) -> list[float]:
    """Accuracy of ``model`` on (x, y) per pass: ``draws`` passes with fresh weight noise (one draw
    per batch of ``batch_size``, as the model's forward shares it) seeded ``seed``; one pass for
    a deterministic model."""
    from smoothinf.utils import model_device

    device = model_device(model)
    torch.manual_seed(seed)
    out = []
    with torch.no_grad():
        for _ in range(draws):
            right = 0
            for i in range(0, x.shape[0], batch_size):
                xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
                right += int((model(xb).argmax(1) == yb).sum())
            out.append(right / x.shape[0])
    return out


def _test_images(name: str, x: torch.Tensor, digest: str) -> dict:
    """The identity of the first ``len(x)`` test images of data set ``name`` (a record's ``data``)."""
    count = int(x.shape[0])
    return {"name": name, "split": "test", "first_example": 0, "count": count, "sha256": digest}


def _clean_figure(model, test, data_name, keys, tensor_sha, count, draws, seed, root, folder) -> dict:
    from smoothinf.evaluation.results import tensor_digest

    x, y = test.tensors(count)
    digest = tensor_digest(x, y)
    path = folder / "clean.jsonl"
    rows = [
        r
        for r in read_jsonl(path)
        if r["weights_sha256"] in keys and r["data"]["sha256"] == digest and r["draws"] == draws
    ]
    if not rows:
        start = time.time()
        per_draw = clean_accuracy(model, x, y, draws, seed)
        rows = [
            {
                "kind": "clean",
                "weights_sha256": tensor_sha,
                "data": _test_images(data_name, x, digest),
                "draws": draws,
                "seed": seed,
                "accuracy": sum(per_draw) / len(per_draw),
                "per_draw": per_draw,
                "seconds": round(time.time() - start, 2),
                "version": __version__,
            }
        ]
        _append(path, rows[0])
    r = rows[-1]
    return {
        "value": round(r["accuracy"], 6),
        "images": r["data"],
        "draws": r["draws"],
        "records": {"file": str(path.relative_to(root)), "weights_sha256": r["weights_sha256"]},
    }


def _certified_figure(
    model, test, data_name, tensor_sha, keys, sigma, count, n, seed, device, root, folder
) -> dict:
    from smoothinf.evaluation.results import tensor_digest
    from smoothinf.smoothing import certified_accuracy, certify

    x, y = test.tensors(count)
    digest = tensor_digest(x, y)
    path = folder / "certify.jsonl"
    rows = [
        r
        for r in read_jsonl(path)
        if r["weights_sha256"] in keys
        and r["data"]["sha256"] == digest
        and (r["n"], r["sigma"]) == (n, sigma)
    ]
    if not rows:
        start = time.time()
        gen = torch.Generator(device=device).manual_seed(seed)
        pred, radius = certify(
            model, x.to(device), sigma, n0=CERTIFY_N0, n=n, alpha=CERTIFY_ALPHA, generator=gen
        )
        rows = [
            {
                "kind": "certify",
                "weights_sha256": tensor_sha,
                "data": _test_images(data_name, x, digest),
                "sigma": sigma,
                "n0": CERTIFY_N0,
                "n": n,
                "alpha": CERTIFY_ALPHA,
                "seed": seed,
                "pred": pred.tolist(),
                "radius": [round(float(v), 6) for v in radius],
                "labels": y.tolist(),
                "seconds": round(time.time() - start, 2),
                "version": __version__,
            }
        ]
        _append(path, rows[0])
    r = rows[-1]
    correct = [p == t for p, t in zip(r["pred"], r["labels"], strict=True)]
    acc = certified_accuracy(r["radius"], correct, CERTIFY_RADII)
    from scipy.stats import norm

    return {
        "value": {f"{rad:g}": round(float(a), 6) for rad, a in zip(CERTIFY_RADII, acc, strict=True)},
        "norm": "l2",
        "sigma": sigma,
        "n0": r["n0"],
        "n": r["n"],
        "alpha": r["alpha"],
        "max_certifiable_radius": round(sigma * float(norm.ppf(CERTIFY_ALPHA ** (1 / r["n"]))), 4),
        "images": r["data"],
        "records": {"file": str(path.relative_to(root)), "weights_sha256": r["weights_sha256"]},
    }


def _describe(meta: dict, epochs: int) -> str:
    t = meta.get("training") or {}
    objective = {
        "adversarial": "PGD-AT",
        "trades": "TRADES",
        "cni-iw": "PGD-AT under Gaussian input noise",
        "gaussian": "Gaussian data augmentation",
        "standard": "standard training",
    }
    text = objective.get(t.get("objective"), str(t.get("objective")))
    if t.get("objective") == "cni-iw" or (t.get("sigma") or 0) > 0:
        text += f" (input noise sigma {t.get('sigma')})"
    noise = meta.get("noise")
    if noise:
        text = f"{str(noise.get('kind', noise)).upper()} weight noise + {text}"
    text = f"{meta['arch']['name']} on {meta.get('dataset')}, {text}, eps {t.get('eps')}, {epochs} epochs"
    selected = (meta.get("metrics") or {}).get("epoch")
    if selected and int(selected) != epochs:
        text += f" (the weights of epoch {selected}, selected by {t.get('select_by')})"
    return text


def _zoo_init(init: str | None, root: Path, device) -> dict | None:
    """The zoo model a fine-tuning started from (matched on the tensor digest of ``init``), as
    ``{"name", "file"}``; None when ``init`` is unset, absent here, or no zoo model."""
    from smoothinf.evaluation.results import weights_digest
    from smoothinf.models import load_checkpoint

    if not init or not Path(init).is_file():
        return None
    digest = weights_digest(load_checkpoint(init, device=device)[0])
    for other in zoo_names(root):
        other_card = read_card(other, root)
        if other_card["weights"]["tensor_sha256"] == digest:
            return {"name": other, "file": other_card["training"].get("output_file", "model.safetensors")}
    return None


def write_card(
    checkpoint: str | os.PathLike,
    name: str,
    *,
    root: str | os.PathLike | None = None,
    records: list[str] = (),
    examples: int = 200,
    clean_draws: int = 8,
    votes: list[str] = ("hard",),
    sigmas: list[float] = (0.1, 0.25),
    ms: list[int] = (64,),
    certify_n: int = 10_000,
    skip: list[str] = (),
    machine: str | None = None,
    overwrite: bool = False,
    command: str | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Write the zoo card of ``checkpoint`` as ``NAME`` (see the module docstring); returns its path."""
    from smoothinf.data import load_dataset
    from smoothinf.evaluation.results import weights_digest
    from smoothinf.models import load_checkpoint, parameter_count
    from smoothinf.models.checkpoint import read_sidecar
    from smoothinf.utils import resolve_device

    unknown = [s for s in skip if s not in FIGURES]
    if unknown:
        raise ConfigError(f"--skip {unknown[0]!r}: not a card figure; choose from {', '.join(FIGURES)}")
    if not name.replace("_", "").isalnum():
        raise ConfigError(f"zoo name {name!r}: use letters, digits and underscores")
    root = ZOO_DIR if root is None else Path(root)
    device = resolve_device(device)
    source = Path(checkpoint)
    read_sidecar(source)  # one line when it is not a smoothinf checkpoint
    target = _copy_checkpoint(source, name, root, overwrite)
    model, meta = load_checkpoint(target, device=device)
    tensor_sha = weights_digest(model)
    keys = {meta["weights_sha256"], tensor_sha}
    folder = root / "records" / name
    origin = _import_records(list(records), keys, folder)
    origin.update(_previous_origins(name, root))
    ckpt_rel = str(target.relative_to(root))
    data_name = meta.get("dataset") or "mnist"
    test, _ = load_dataset(data_name, "test")
    missing: dict[str, str] = {}
    card: dict = {"format": CARD_FORMAT, "name": name}

    from smoothinf.attacks import is_randomised

    randomised = is_randomised(model)
    draws = clean_draws if randomised else 1
    for field, count in (("clean", None), ("clean_first_1000", 1000)):
        if field in skip:
            card[field], missing[field] = None, "skipped (--skip)"
        else:
            card[field] = _clean_figure(
                model, test, data_name, keys, tensor_sha, count, draws, seed, root, folder
            )

    def base_group() -> tuple[Path, list[dict]] | None:
        groups = _protocol_groups(folder, keys)
        default = [(p, rs) for p, rs in groups.items() if "default" in rs[0]["config"]["attacks"]]
        with_base = [(p, rs) for p, rs in default if any(r["vote"] == "none" for r in rs)]
        if not with_base:
            return None
        return max(with_base, key=lambda g: (g[1][0]["n"], len({r["run"] for r in g[1]})))

    group = base_group()
    need_smoothed = "best_smoothed" not in skip and not any(
        r["vote"] != "none"
        for p, rs in _protocol_groups(folder, keys).items()
        if "default" in rs[0]["config"]["attacks"]
        for r in rs
    )
    if (group is None and "worst_case" not in skip) or need_smoothed:
        x, y = test.tensors(examples)
        grid = {"votes": votes if need_smoothed else [], "sigmas": sigmas, "ms": ms}
        _measure_protocol(
            model,
            meta,
            ckpt_rel,
            x,
            y,
            0,
            folder,
            **grid,
            attacks=["default"],
            checks=True,
            seed=seed,
            device=device,
        )
        group = base_group()
    if group is None or "worst_case" in skip:
        card["worst_case"], missing["worst_case"] = None, "skipped (--skip)"
    else:
        path, rs = group
        base = next(r for r in rs if r["vote"] == "none")
        card["worst_case"] = _row_figure(rs, ("none", 0.0, 1, float(base["eps"])), path, root, origin)

    smoothed = [
        (p, rs, r)
        for p, rs in _protocol_groups(folder, keys).items()
        if "default" in rs[0]["config"]["attacks"]
        for r in rs
        if r["vote"] != "none"
    ]
    if "best_smoothed" in skip or not smoothed:
        card["best_smoothed"], missing["best_smoothed"] = None, "skipped (--skip)"
    else:
        from smoothinf.evaluation.report import aggregate

        best = None
        for p, rs, r in smoothed:
            key = _key(r)
            value = aggregate(rs)[key]["worst_case"][0]
            if best is None or value > best[0]:
                best = (value, p, rs, key)
        _, p, rs, key = best
        card["best_smoothed"] = _row_figure(rs, key, p, root, origin)
        card["best_smoothed"]["selected"] = (
            f"the highest worst case of {len({(r['vote'], r['sigma'], r['m']) for _, _, r in smoothed})}"
            " smoothed rows on these test images (a max over rows: optimistic)"
        )

    if "autoattack" in skip or card["worst_case"] is None:
        card["autoattack"] = None
        missing["autoattack"] = "skipped (--skip)" if "autoattack" in skip else "no worst-case images to use"
    else:
        images = card["worst_case"]["images"]

        def aa_group():
            for p, rs in _protocol_groups(folder, keys).items():
                same = _images(rs[0])["sha256"] == images["sha256"]
                if rs[0]["config"]["attacks"] == ["autoattack"] and same:
                    return p, rs
            return None

        if aa_group() is None:
            first, count = images["first_example"], images["count"]
            x, y = test.tensors(first + count)
            x, y = x[first:], y[first:]
            grid = {"votes": [], "sigmas": [], "ms": [], "attacks": ["autoattack"], "checks": False}
            _measure_protocol(model, meta, ckpt_rel, x, y, first, folder, **grid, seed=seed, device=device)
        p, rs = aa_group()
        base = next(r for r in rs if r["vote"] == "none")
        figure = _row_figure(rs, ("none", 0.0, 1, float(base["eps"])), p, root, origin)
        figure["version"] = "rand" if randomised else "standard"
        card["autoattack"] = figure

    t = meta.get("training") or {}
    sigma = float(t.get("sigma") or 0.0)
    if "certified" in skip:
        card["certified"], missing["certified"] = None, "skipped (--skip)"
    elif sigma <= 0:
        card["certified"] = None
        missing["certified"] = "not trained for certification (no Gaussian input noise in training)"
    else:
        card["certified"] = _certified_figure(
            model, test, data_name, tensor_sha, keys, sigma, examples, certify_n, seed, device, root, folder
        )

    metrics_file = source.parent / "metrics.jsonl"
    seconds = training_seconds(read_jsonl(metrics_file)) if metrics_file.is_file() else None
    seconds_from = f"{metrics_file.name} next to the checkpoint (summed over resumed segments)"
    if seconds is None:
        seconds = (meta.get("metrics") or {}).get("seconds")
        seconds_from = "the sidecar's last epoch (one process)"
    epochs = int(t.get("epochs") or (meta.get("metrics") or {}).get("epoch") or 0)
    selected = (meta.get("metrics") or {}).get("epoch")  # the epoch whose weights these are
    retrain = f"smoothinf models show {name} --train-config > {name}.yaml && "
    retrain += f"smoothinf train --config {name}.yaml --out runs/{name}"
    start = _zoo_init(t.get("init"), root, device)
    if start:  # a fine-tuning: train its zoo starting point again first, then start from that
        t = {**t, "init": f"runs/{start['name']}/{start['file']}"}
        retrain = (
            f"smoothinf models show {start['name']} --train-config > {start['name']}.yaml && "
            f"smoothinf train --config {start['name']}.yaml --out runs/{start['name']} && {retrain}"
        )
    elif t.get("init"):
        missing["training.init"] = f"starts from {t['init']}, which is no zoo model"
    card = {
        "format": CARD_FORMAT,
        "name": name,
        "description": _describe(meta, epochs),
        "architecture": {
            "name": meta["arch"]["name"],
            "kwargs": meta["arch"]["kwargs"],
            "parameters": parameter_count(meta["arch"]["name"]),
            "noise": meta.get("noise"),
            "randomised": randomised,
        },
        "data": {"name": meta.get("dataset"), "threat_model": "linf", "eps": t.get("eps")},
        "weights": {
            "file": ckpt_rel,
            "sha256": meta["weights_sha256"],
            "tensor_sha256": tensor_sha,
            "bytes": target.stat().st_size,
        },
        "training": {
            "command": retrain,
            "output_file": source.name,
            "starts_from": start["name"] if start else None,
            "config": t,
            "epochs": epochs,
            "selected_epoch": selected,
            "wall_seconds": seconds,
            "wall_seconds_from": seconds_from,
            "machine": machine or f"{machine_description()} (the machine that wrote this card)",
        },
        **{k: v for k, v in card.items() if k in FIGURES},
        "missing": missing,
        "produced_by": {
            "command": command or f"smoothinf models card {checkpoint} --name {name}",
            "smoothinf_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "examples": examples,
            "clean_draws": draws,
        },
    }
    path = card_path(name, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def _previous_origins(name: str, root: Path) -> dict[str, str]:
    """fingerprint -> source of the records a previous card of ``name`` imported."""
    path = card_path(name, root)
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    out = {}
    for field in FIGURES:
        rec = (old.get(field) or {}).get("records") or {}
        if "fingerprint" in rec and not str(rec.get("source", "")).startswith("measured"):
            out[rec["fingerprint"]] = rec["source"]
    return out


def missing_fields(card: dict) -> list[str]:
    """Card fields that are neither measured nor explained: each of ``FIGURES`` must hold a dict
    with a ``value`` or be None with a reason under ``missing``."""
    out = []
    for field in FIGURES:
        value = card.get(field)
        explained = value is None and card.get("missing", {}).get(field)
        if not explained and (value is None or "value" not in value):
            out.append(field)
    return out
