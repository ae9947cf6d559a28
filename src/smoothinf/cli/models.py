"""``smoothinf models list`` (the zoo, parameter counts, noise kinds) and ``models info`` (a checkpoint)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from smoothinf.errors import CheckpointError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``models list`` and ``models info``."""
    parser = subparsers.add_parser("models", help="list architectures, inspect checkpoints")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p_list = sub.add_parser("list", help="registered architectures with parameter counts")
    p_list.add_argument("--noise", action="store_true", help="also list the noise-injection kinds")
    p_list.set_defaults(func=run_list)
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
    p_conv.set_defaults(func=run_convert)


def _noise_kinds() -> dict[str, str] | None:
    try:
        from smoothinf.noise import NOISE_KINDS
    except ImportError:
        return None
    return dict(NOISE_KINDS)


def run_list(args: argparse.Namespace) -> int:
    from smoothinf.models import get_model_spec, list_models, parameter_count

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
    from smoothinf.models.checkpoint import load_checkpoint, save_checkpoint

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
