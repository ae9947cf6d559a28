"""``smoothinf models``: ``list`` (the registered architectures, then the pretrained zoo; ``--zoo``:
the zoo alone), ``show NAME`` (a zoo model's card), ``card CKPT --name NAME`` (write a zoo card
from records and measurements), ``info`` (a checkpoint) and ``convert`` (a legacy state dict)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from smoothinf.errors import CheckpointError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``models list``, ``show``, ``card``, ``info`` and ``convert``."""
    from smoothinf.cli import add_common_args, count

    parser = subparsers.add_parser("models", help="list architectures and the zoo, inspect checkpoints")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p_list = sub.add_parser(
        "list", help="registered architectures with parameter counts, then the pretrained zoo"
    )
    p_list.add_argument("--noise", action="store_true", help="also list the noise-injection kinds")
    p_list.add_argument("--zoo", action="store_true", help="only the pretrained zoo (smoothinf.zoo)")
    p_list.set_defaults(func=run_list)
    p_show = sub.add_parser("show", help="a zoo model's card: what it is, how it was trained and measured")
    p_show.add_argument("name", help="zoo model (see `smoothinf models list --zoo`)")
    p_show.add_argument("--json", action="store_true", help="print the card's JSON")
    p_show.add_argument(
        "--train-config", action="store_true", help="print the YAML training config that trains it again"
    )
    p_show.set_defaults(func=run_show)
    p_card = sub.add_parser(
        "card",
        help="add a checkpoint to the zoo with its model card (figures from records, the rest measured)",
    )
    p_card.add_argument("checkpoint", help="weights file with its sidecar (.safetensors)")
    p_card.add_argument("--name", required=True, help="zoo name, e.g. mnist_cnn_small_pgd_at_30ep")
    p_card.add_argument(
        "--records",
        nargs="+",
        default=[],
        help="results files of `smoothinf evaluate` keyed on these weights (copied into the zoo)",
    )
    p_card.add_argument(
        "--examples", type=count(1), default=200, help="test images of what is measured (default 200)"
    )
    p_card.add_argument(
        "--clean-draws", type=count(1), default=8, help="passes with fresh weight noise (noisy models)"
    )
    p_card.add_argument("--votes", nargs="+", default=["hard"], help="smoothed rows to measure if missing")
    p_card.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.25])
    p_card.add_argument("--ms", type=count(1), nargs="+", default=[64])
    p_card.add_argument(
        "--certify-n", type=count(1), default=10_000, help="CERTIFY's draws n (models trained with noise)"
    )
    p_card.add_argument(
        "--skip",
        nargs="+",
        default=[],
        metavar="FIGURE",
        help="leave these figures unmeasured (null, with the reason under missing)",
    )
    p_card.add_argument(
        "--machine", default=None, help="the machine that trained it (default: this machine, marked so)"
    )
    p_card.add_argument("--zoo", default=None, help="zoo folder (default: the package's)")
    p_card.add_argument(
        "--overwrite", action="store_true", help="replace other weights already in the zoo under NAME"
    )
    add_common_args(p_card)
    p_card.set_defaults(func=run_card)
    p_info = sub.add_parser("info", help="summary of a checkpoint's sidecar (or of a legacy .pth file)")
    p_info.add_argument("--checkpoint", "-c", required=True, help="weights file (its sidecar is FILE.json)")
    p_info.add_argument("--json", action="store_true", help="print the raw sidecar JSON")
    p_info.set_defaults(func=run_info)
    p_conv = sub.add_parser("convert", help="convert a legacy .pth/.pth.tar state dict to a safe checkpoint")
    p_conv.add_argument("--checkpoint", "-c", required=True, help="legacy .pth / .pth.tar file")
    p_conv.add_argument("--arch", required=True, help="registered architecture (see `smoothinf models list`)")
    p_conv.add_argument("--dataset", help="take classes, channels, mean and std from this data set")
    p_conv.add_argument("--num-classes", type=int, help="number of classes (overrides --dataset)")
    p_conv.add_argument("--in-channels", type=int, help="input channels (overrides --dataset)")
    p_conv.add_argument("--mean", type=float, nargs="+", help="per-channel mean the legacy net expected")
    p_conv.add_argument("--std", type=float, nargs="+", help="per-channel std the legacy net expected")
    p_conv.add_argument(
        "--raw-pixels", action="store_true", help="the legacy net took raw [0,1] pixels (no normalisation)"
    )
    p_conv.add_argument("--out", "-o", required=True, help="output weights path (.safetensors)")
    p_conv.add_argument(
        "--overwrite", action="store_true", help="replace an existing checkpoint at --out (and its sidecar)"
    )
    p_conv.set_defaults(func=run_convert)


def _noise_kinds() -> dict[str, str] | None:
    try:
        from smoothinf.noise import NOISE_KINDS
    except ImportError:
        return None
    return dict(NOISE_KINDS)


def _zoo_rows() -> list[tuple[str, ...]]:
    import smoothinf.zoo as zoo

    def pct(figure: dict | None) -> str:
        return "-" if figure is None else f"{100 * figure['value']:.1f}"

    rows = []
    for name in zoo.names():
        card = zoo.card(name)
        worst = card.get("worst_case")
        images = "-" if worst is None else f"{worst['images']['count']} x {len(worst['runs'])}"
        rows.append((name, pct(card.get("clean")), pct(worst), images, card.get("description", "")))
    return rows


def print_zoo() -> None:
    """The zoo as a table: clean accuracy, worst case under the default protocol, images x runs."""
    head = ("name", "clean %", "worst case %", "images x runs", "description")
    rows = _zoo_rows()
    if not rows:
        print("pretrained zoo: empty")
        return
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for r in [head, *rows]:
        print("  ".join(f"{v:<{w}}" for v, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    print("(eps 0.3 L_inf; `smoothinf models show NAME` for the card; Python: smoothinf.zoo.load(NAME))")


def run_list(args: argparse.Namespace) -> int:
    from smoothinf.models import get_model_spec, list_models, parameter_count

    if args.zoo:
        print_zoo()
        return 0
    rows = []
    for name in list_models():
        spec = get_model_spec(name)
        shape = "x".join(str(v) for v in spec.input_shape)
        rows.append((name, f"{parameter_count(name):,}", shape, spec.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"{'model':<{widths[0]}}  {'params':>{widths[1]}}  {'input':<{widths[2]}}  description")
    for name, params, shape, desc in rows:
        print(f"{name:<{widths[0]}}  {params:>{widths[1]}}  {shape:<{widths[2]}}  {desc}")
    print("(parameter counts for 10 classes at the listed input shape)")
    if args.noise:
        kinds = _noise_kinds()
        print()
        if kinds is None:
            print("noise kinds: unavailable (smoothinf.noise.NOISE_KINDS not found in this install)")
        else:
            print("noise kinds (smoothinf train --noise KIND):")
            width = max((len(k) for k in kinds), default=0)
            for kind, desc in kinds.items():
                print(f"  {kind:<{width}}  {desc}")
    print()
    print("pretrained models (smoothinf.zoo):")
    print_zoo()
    return 0


def _figure_text(figure: dict | None, reason: str | None) -> str:
    if figure is None:
        return f"- ({reason})"
    if isinstance(figure["value"], dict):  # certified accuracy per radius
        radii = ", ".join(f"r {r}: {100 * v:.1f}%" for r, v in figure["value"].items())
        return (
            f"{radii} (L2, sigma {figure['sigma']}, n {figure['n']}, {figure['images']['count']} images,"
            f" max certifiable radius {figure['max_certifiable_radius']})"
        )
    text = f"{100 * figure['value']:.1f}%"
    images = figure.get("images", {})
    text += f" on {images.get('count')} images"
    if images.get("first_example"):
        text += f" from #{images['first_example']}"
    if "runs" in figure:
        text += f", {len(figure['runs'])} run{'s' if len(figure['runs']) != 1 else ''}"
        setting = figure.get("setting", {})
        if setting.get("vote", "none") != "none":
            text += f"; {setting['vote']} vote, sigma {setting['sigma']:g}, m {setting['m']}"
    if figure.get("draws", 1) > 1:
        text += f" (mean over {figure['draws']} weight-noise draws)"
    if figure.get("version"):
        text += f" (AutoAttack {figure['version']})"
    rec = figure.get("records", {})
    return text + f"  [{rec.get('file')}]"


def run_show(args: argparse.Namespace) -> int:
    import smoothinf.zoo as zoo

    card = zoo.card(args.name)
    if args.json:
        print(json.dumps(card, indent=2))
        return 0
    if args.train_config:
        import yaml

        print(yaml.safe_dump(card["training"]["config"], sort_keys=False), end="")
        return 0
    missing = card.get("missing", {})
    w, t = card["weights"], card["training"]
    print(f"{card['name']}: {card['description']}")
    print(f"  weights         {w['file']} ({w['bytes']:,} bytes, tensor sha256 {w['tensor_sha256'][:16]}...)")
    arch = card["architecture"]
    print(f"  architecture    {arch['name']} ({arch['parameters']:,} parameters), noise {arch['noise']}")
    wall = "?" if t.get("wall_seconds") is None else f"{t['wall_seconds'] / 60:.0f} min"
    print(f"  training        {t['epochs']} epochs, {wall} on {t['machine']}")
    print(f"  train again     {t['command']}")
    for field, label in (
        ("clean", "clean"),
        ("clean_first_1000", "clean (1000)"),
        ("worst_case", "worst case"),
        ("autoattack", "AutoAttack"),
        ("best_smoothed", "best smoothed"),
        ("certified", "certified"),
    ):
        print(f"  {label:<15} {_figure_text(card.get(field), missing.get(field))}")
    made = card["produced_by"]
    print(f"  produced by     {made['command']} (smoothinf {made['smoothinf_version']})")
    return 0


def run_card(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from smoothinf.zoo.cards import write_card

    command = "smoothinf " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    path = write_card(
        args.checkpoint,
        args.name,
        root=args.zoo,
        records=args.records,
        examples=args.examples,
        clean_draws=args.clean_draws,
        votes=args.votes,
        sigmas=args.sigmas,
        ms=args.ms,
        certify_n=args.certify_n,
        skip=args.skip,
        machine=args.machine,
        overwrite=args.overwrite,
        command=command if command and " card " in f" {command} " else None,
        seed=args.seed,
        device=args.device,
    )
    print(f"wrote {path}")
    return 0


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def run_info(args: argparse.Namespace) -> int:
    from smoothinf.models.checkpoint import _sha256, read_sidecar, sidecar_path
    from smoothinf.models.legacy import extract_state_dict, legacy_scalars, read_torch_file

    path = Path(args.checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not sidecar_path(path).is_file():
        obj = read_torch_file(path)
        state = extract_state_dict(obj, path)
        n = sum(t.numel() for t in state.values())
        print(
            f"{path}: legacy checkpoint (no sidecar); convert it with `smoothinf models convert -c"
            f" {path} --arch NAME --dataset DATA -o OUT.safetensors`"
        )
        print(f"  tensors     {len(state)} ({n:,} elements)")
        for key, value in legacy_scalars(obj).items():
            print(f"  {key:<11} {_fmt(value)}")
        return 0
    meta = read_sidecar(path)
    recorded = meta.get("weights_sha256")
    if recorded and _sha256(path) != recorded:
        raise CheckpointError(
            f"{path}: weights do not match the sidecar's sha256 (file changed, truncated or half-written)"
        )
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    arch = meta["arch"]
    kwargs = {k: v for k, v in arch["kwargs"].items() if k not in ("mean", "std")}
    print(
        f"{path}  ({path.stat().st_size:,} bytes, format v{meta.get('format_version')},"
        f" smoothinf {meta.get('smoothinf_version')}, {meta.get('created', '?')})"
    )
    print(f"  arch          {arch['name']} {_fmt(kwargs)}")
    norm = meta.get("normalization", {})
    print(f"  normalization mean {_fmt(norm.get('mean'))} std {_fmt(norm.get('std'))}")
    print(f"  noise         {_fmt(meta.get('noise')) if meta.get('noise') else 'none'}")
    skip = {
        "format",
        "format_version",
        "smoothinf_version",
        "created",
        "arch",
        "normalization",
        "noise",
        "weights_file",
        "weights_sha256",
    }
    for key, value in meta.items():
        if key not in skip:
            print(f"  {key:<13} {_fmt(value)}")
    print(f"  sha256        {meta.get('weights_sha256', '?')}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from smoothinf.models.checkpoint import load_checkpoint, save_checkpoint, sidecar_path

    out = Path(args.out) if Path(args.out).suffix else Path(args.out).with_suffix(".safetensors")
    if not args.overwrite and (out.exists() or sidecar_path(out).exists()):
        raise CheckpointError(f"{out} exists (a trained checkpoint?); pass --overwrite to replace it")
    overrides = {"input_normalized": not args.raw_pixels}
    for key in ("dataset", "num_classes", "in_channels", "mean", "std"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.raw_pixels:
        overrides.setdefault("mean", [0.0])
        overrides.setdefault("std", [1.0])
    model, meta = load_checkpoint(args.checkpoint, device="cpu", arch=args.arch, **overrides)
    extra = {"source": meta["source"], "legacy": meta["legacy"]}
    if args.dataset:
        extra["dataset"] = args.dataset
    path = save_checkpoint(args.out, model, extra)
    print(f"wrote {path} (+ {path.name}.json): {args.arch} from {args.checkpoint}")
    return 0
