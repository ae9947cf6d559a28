"""``smoothinf data``: list data sets, describe one (with its split sizes), download CIFAR archives."""

from __future__ import annotations

import argparse
import json
import time

from smoothinf.data import default_data_root, get_dataset_info, list_datasets, load_splits
from smoothinf.data.cifar import CIFAR_SPECS, download_cifar
from smoothinf.errors import DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data list``, ``data info NAME`` and ``data download NAME``."""
    parser = subparsers.add_parser("data", help="list, describe and download data sets")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: _help(parser))

    p_list = sub.add_parser("list", help="names of the available data sets")
    p_list.set_defaults(func=run_list)

    p_info = sub.add_parser("info", help="DatasetInfo and split sizes of a data set (reads its files)")
    p_info.add_argument("name", help=f"one of {', '.join(list_datasets())}")
    p_info.add_argument("--root", default=None, help="folder (or file) holding the data set's files")
    p_info.add_argument("--val-size", type=int, default=None, help="size of the validation hold-out")
    p_info.add_argument("--seed", type=int, default=0, help="seed of the validation hold-out")
    p_info.add_argument("--no-verify", action="store_true", help="skip the published checksum")
    p_info.add_argument("--json", action="store_true", help="print one JSON object")
    p_info.set_defaults(func=run_info)

    p_down = sub.add_parser("download", help="fetch an official CIFAR archive (md5-checked)")
    p_down.add_argument("name", choices=sorted(CIFAR_SPECS))
    p_down.add_argument("--root", default=None, help=f"target folder (default {default_data_root()})")
    p_down.add_argument("--timeout", type=float, default=15.0, help="network timeout in seconds")
    p_down.set_defaults(func=run_download)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def run_list(args: argparse.Namespace) -> int:
    for name in list_datasets():
        info = get_dataset_info(name)
        print(
            f"{name:10s} classes={info.num_classes:<4d} shape={info.input_shape} eps_linf={info.eps_linf:.4g}"
        )
    return 0


def run_info(args: argparse.Namespace) -> int:
    info = get_dataset_info(args.name)
    start = time.perf_counter()
    try:
        splits, _ = load_splits(
            args.name, root=args.root, val_size=args.val_size, seed=args.seed, verify=not args.no_verify
        )
    except DataError:
        if not args.json:
            _print_info(info)
        raise
    seconds = time.perf_counter() - start
    sizes = {name: len(ds) for name, ds in splits.items()}
    if args.json:
        print(json.dumps({**info.to_dict(), "splits": sizes, "load_seconds": round(seconds, 3)}))
        return 0
    _print_info(info)
    print("splits:      " + ", ".join(f"{name} {n}" for name, n in sizes.items()))
    print(f"loaded in:   {seconds:.2f} s")
    return 0


def _print_info(info) -> None:
    print(f"name:        {info.name}")
    print(f"classes:     {info.num_classes}")
    print(f"input shape: {info.input_shape}")
    print(f"mean:        {info.mean}")
    print(f"std:         {info.std}")
    print(f"eps_linf:    {info.eps_linf:.6g}")


def run_download(args: argparse.Namespace) -> int:
    root = args.root if args.root is not None else default_data_root()
    path = download_cifar(args.name, root, timeout=args.timeout)
    print(f"{args.name}: {path} (md5 verified)")
    return 0
