"""Safe checkpoints: round trips, atomic writes, every bad-input case, legacy .pth import."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import smoothinf.noise
from smoothinf.cli import main as cli_main
from smoothinf.data.dataset import DatasetInfo
from smoothinf.errors import CheckpointError
from smoothinf.models import checkpoint as ckpt_mod
from smoothinf.models import create_model, load_checkpoint, load_legacy_checkpoint, save_checkpoint
from smoothinf.models.legacy import map_legacy_keys

SIAM = Path("/work/shared/data/siam_resnet20_cifar10_standard.pth.tar")
SIAM = SIAM if SIAM.is_file() else Path(__file__).resolve().parents[3] / "shared/data" / SIAM.name
CIFAR_MEAN, CIFAR_STD = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262)
needs_siam = pytest.mark.skipif(not SIAM.is_file(), reason="SIAM legacy checkpoint not present")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Batch-2 forwards gain nothing from intra-op threads, and on shared cores OpenMP spin-waits
    make them ~50x slower (see benchmarks/results/models.md); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _one_line_error(excinfo, path) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def _trained_like(name: str, **kw) -> nn.Module:
    """A model whose BN statistics and weights differ from a fresh init (so buffers matter)."""
    torch.manual_seed(1)
    model = create_model(name, **kw)
    model.train()
    with torch.no_grad():
        c = kw.get("in_channels", 3)
        size = kw.get("input_size", 16)  # global pooling: any size updates the BN statistics
        model(torch.rand(4, c, size, size))
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def saved(tmp_path):
    model = _trained_like("resnet20", num_classes=10, in_channels=3, mean=CIFAR_MEAN, std=CIFAR_STD)
    info = DatasetInfo("cifar10", 10, (3, 32, 32), CIFAR_MEAN, CIFAR_STD, 8 / 255)
    meta = {
        "dataset": info,
        "training": {"epochs": 3, "lr": 0.1, "milestones": (1, 2), "out": tmp_path},
        "metrics": {"clean_acc": 0.5, "per_epoch": [0.1, 0.2]},
    }
    path = save_checkpoint(tmp_path / "model.safetensors", model, meta)
    return model, path


def test_round_trip_identical_outputs_and_meta(saved, tmp_path):
    model, path = saved
    assert path == tmp_path / "model.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "model.safetensors.json"]
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    assert meta["arch"] == model.smoothinf_arch
    assert loaded.smoothinf_arch == model.smoothinf_arch
    assert meta["dataset"]["name"] == "cifar10" and meta["dataset"]["input_shape"] == [3, 32, 32]
    assert meta["training"] == {"epochs": 3, "lr": 0.1, "milestones": [1, 2], "out": str(tmp_path)}
    assert meta["metrics"] == {"clean_acc": 0.5, "per_epoch": [0.1, 0.2]}
    assert meta["normalization"] == {"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}
    assert meta["format_version"] == 1 and meta["smoothinf_version"] and meta["noise"] is None
    assert len(meta["weights_sha256"]) == 64


@pytest.mark.parametrize("name", ["mnist_cnn_small", "linear"])
def test_round_trip_mnist_models_and_suffix(tmp_path, name):
    model = _trained_like(name, num_classes=10, in_channels=1, mean=0.13, std=0.31, input_size=28)
    path = save_checkpoint(tmp_path / "net", model)  # no suffix: .safetensors appended
    assert path.name == "net.safetensors" and (tmp_path / "net.safetensors.json").is_file()
    loaded, _ = load_checkpoint(str(path), device="cpu")
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_overrides_and_arch_argument(saved):
    model, path = saved
    loaded, _ = load_checkpoint(path, arch="resnet20", mean=CIFAR_MEAN, std=CIFAR_STD)
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        assert torch.equal(model(x), loaded(x))


def test_noise_config_is_replayed_before_loading(tmp_path, monkeypatch):
    """Stand-in inject_noise: the sidecar's noise kwargs are replayed before the weights load."""
    calls = []

    def fake_inject(model, kind, layers="all", rank=5, init=0.25):
        calls.append({"kind": kind, "layers": layers, "rank": rank, "init": init})
        model.noise_alpha = nn.Parameter(torch.full((), float(init)))
        model.smoothinf_noise = {"kind": kind, "layers": layers, "rank": rank, "init": init}
        return model

    monkeypatch.setattr(smoothinf.noise, "inject_noise", fake_inject, raising=False)
    model = fake_inject(create_model("linear", 2, 1, input_size=4), "pni-w", rank=3)
    with torch.no_grad():
        model.noise_alpha.fill_(0.7)
    path = save_checkpoint(tmp_path / "noisy.safetensors", model)
    loaded, meta = load_checkpoint(path)
    assert meta["noise"] == {"kind": "pni-w", "layers": "all", "rank": 3, "init": 0.25}
    assert calls[-1] == meta["noise"] and len(calls) == 2
    assert loaded.noise_alpha.item() == pytest.approx(0.7)
    model.smoothinf_noise = {"kind": "pni-w", "layers": lambda name, module: True}
    with pytest.raises(CheckpointError, match="noise config cannot be saved"):
        save_checkpoint(tmp_path / "bad.safetensors", model)


def test_real_noise_injection_round_trip(tmp_path):
    inject = getattr(smoothinf.noise, "inject_noise", None)
    if inject is None:
        pytest.skip("smoothinf.noise.inject_noise not available yet")
    model = inject(create_model("mnist_cnn_small", 10, 1, 0.13, 0.31), "pni-w")
    path = save_checkpoint(tmp_path / "pni.safetensors", model)
    loaded, meta = load_checkpoint(path)
    assert meta["noise"] == json.loads(json.dumps(model.smoothinf_noise))
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


def test_atomic_write_leaves_no_temp_files_on_failure(saved, tmp_path, monkeypatch):
    model, path = saved
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_save(tensors, metadata):
        raise OSError("disk full")  # after the temporary file was made

    monkeypatch.setattr(ckpt_mod, "canonical_safetensors", broken_save)
    other = create_model("resnet20", 10, 3, CIFAR_MEAN, CIFAR_STD)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, other)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old pair intact, no temp
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="not JSON serialisable"):
        save_checkpoint(path, other, {"metrics": object()})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    save_checkpoint(path, other)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "model.safetensors.json"]
    assert all(not p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_equal_weights_save_to_equal_bytes(tmp_path):
    """The file's sha256 keys every result made with it: the same weights saved again (a model
    retrained bit for bit) must give the same bytes, whatever order the library keeps metadata in."""
    from safetensors.torch import load_file

    model = create_model("mnist_cnn_small", 10, 1, 0.13, 0.31)
    paths = [save_checkpoint(tmp_path / f"m{i}.safetensors", model) for i in range(8)]
    assert len({p.read_bytes() for p in paths}) == 1
    assert len({ckpt_mod.read_sidecar(p)["weights_sha256"] for p in paths}) == 1
    size = int.from_bytes(paths[0].read_bytes()[:8], "little")
    header = json.loads(paths[0].read_bytes()[8 : 8 + size])
    assert list(header["__metadata__"]) == ["format", "smoothinf_arch"]
    loaded = load_file(str(paths[0]))
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_save_refuses_models_without_arch_and_reserved_keys(tmp_path):
    with pytest.raises(CheckpointError, match="smoothinf_arch"):
        save_checkpoint(tmp_path / "x.safetensors", nn.Linear(2, 2))
    wrapped = nn.DataParallel(create_model("linear", 2, 1, input_size=2))
    path = save_checkpoint(tmp_path / "dp.safetensors", wrapped)
    assert "module.fc.weight" not in load_checkpoint(path)[0].state_dict()
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(tmp_path / "x.safetensors", create_model("linear", 2, 1, input_size=2), {"arch": 1})


def test_missing_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    assert "not found" in _one_line_error(excinfo, path)


def test_truncated_and_corrupt_safetensors(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    assert "sha256" in _one_line_error(excinfo, path)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path, verify=False)
    assert "truncated or corrupt safetensors" in _one_line_error(excinfo, path)
    path.write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path, verify=False)
    assert "corrupt" in _one_line_error(excinfo, path)


def test_corrupt_sidecar_and_unknown_architecture(saved):
    _, path = saved
    side = Path(str(path) + ".json")
    good = json.loads(side.read_text())
    side.write_text(side.read_text()[:40])
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    assert "corrupt sidecar JSON" in _one_line_error(excinfo, side)
    side.write_text(json.dumps({**good, "arch": {"name": "resnet9000", "kwargs": {}}}))
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    assert "unknown architecture 'resnet9000'" in _one_line_error(excinfo, path)
    side.write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a smoothinf checkpoint sidecar"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"num_classes": 5}, "'fc.weight' has shape (10, 64), the model expects (5, 64)"),
        ({"width": 8}, "'conv1.weight' has shape (16, 3, 3, 3), the model expects (8, 3, 3, 3)"),
    ],
)
def test_weights_that_do_not_fit(saved, edit, expected):
    _, path = saved
    side = Path(str(path) + ".json")
    meta = json.loads(side.read_text())
    meta["arch"]["kwargs"].update(edit)
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    msg = _one_line_error(excinfo, path)
    assert "do not fit resnet20" in msg and expected in msg


def test_weights_for_another_depth(saved):
    _, path = saved
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path, arch="resnet32")
    assert "missing key 'layer1.3.conv1.weight'" in _one_line_error(excinfo, path)


class _Payload:
    """Unpickling this would create ``target`` (a file): the loader must refuse before it runs."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("container", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_never_runs(tmp_path, container):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    obj = {"state_dict": {"fc.weight": torch.zeros(2, 2)}, "extra": _Payload(target)}
    if container == "torch_zip":
        torch.save(obj, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)
    assert not target.exists()
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path, arch="linear", num_classes=2, in_channels=1, mean=0.0, std=1.0, input_size=1)
    assert "refused to unpickle" in _one_line_error(excinfo, path)
    assert not target.exists()


def test_legacy_errors(tmp_path):
    model = create_model("linear", 3, 1, input_size=2)
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    assert "no sidecar" in _one_line_error(excinfo, path)
    with pytest.raises(CheckpointError, match="needs mean, std"):
        load_checkpoint(path, arch="linear", num_classes=3, in_channels=1)
    loaded, meta = load_checkpoint(
        path, arch="linear", num_classes=3, in_channels=1, mean=0, std=1, input_size=2
    )
    assert torch.equal(loaded.fc.weight, model.fc.weight) and meta["format"] == "legacy"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path, arch="linear", num_classes=3, in_channels=1, mean=0, std=1, input_size=2)
    assert "truncated or corrupt" in _one_line_error(excinfo, path)
    torch.save({"epoch": 3, "names": ["a"]}, path)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path, arch="linear", num_classes=3, in_channels=1, mean=0, std=1, input_size=2)
    assert "no state dict found" in _one_line_error(excinfo, path)


def test_trades_style_wide_resnet_keys_map(tmp_path):
    """A state dict in the TRADES / Madry WRN naming loads into the zoo's wide_resnet."""
    torch.manual_seed(0)
    model = _trained_like("wide_resnet", num_classes=10, in_channels=3, depth=10, widen_factor=1)

    def trades_name(key: str) -> str:
        for i in (1, 2, 3):
            key = key.replace(f"layer{i}.", f"block{i}.layer.")
        key = key.replace("downsample.", "convShortcut.")
        return "bn1." + key[3:] if key.startswith("bn.") else key

    legacy = {trades_name(k): v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    legacy.update({"sub_block1.layer.0.conv1.weight": torch.zeros(1)})  # unused duplicate in TRADES files
    path = tmp_path / "trades.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in legacy.items()}}, path)
    loaded, _ = load_legacy_checkpoint(path, "wide_resnet", 10, 3, 0.0, 1.0, depth=10, widen_factor=1)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def _reference_resnet20(state: dict, z: torch.Tensor) -> torch.Tensor:
    """Independent functional forward of a SIAM/He ResNet-20 state dict on normalised inputs z."""

    def bn(x, p):
        return F.batch_norm(
            x,
            state[p + ".running_mean"],
            state[p + ".running_var"],
            state[p + ".weight"],
            state[p + ".bias"],
            training=False,
            eps=1e-5,
        )

    out = F.relu(bn(F.conv2d(z, state["conv1.weight"], padding=1), "bn1"))
    for stage in (1, 2, 3):
        for i in range(3):
            p = f"layer{stage}.{i}"
            stride = 2 if (stage > 1 and i == 0) else 1
            h = F.relu(bn(F.conv2d(out, state[p + ".conv1.weight"], stride=stride, padding=1), p + ".bn1"))
            h = bn(F.conv2d(h, state[p + ".conv2.weight"], padding=1), p + ".bn2")
            if p + ".downsample.0.weight" in state:
                out = bn(F.conv2d(out, state[p + ".downsample.0.weight"], stride=stride), p + ".downsample.1")
            out = F.relu(h + out)
    return F.linear(out.mean(dim=(2, 3)), state["fc.weight"], state["fc.bias"])


def _smooth_images(n: int, seed: int) -> torch.Tensor:
    """Low-frequency random colour images (N, 3, 32, 32) in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 4, 4, generator=gen), size=32, mode="bilinear", align_corners=False)


@needs_siam
def test_legacy_siam_resnet20_interop(tmp_path):
    model, meta = load_checkpoint(
        SIAM, arch="resnet20", num_classes=10, in_channels=3, mean=CIFAR_MEAN, std=CIFAR_STD
    )
    assert meta["legacy"]["epoch"] == 210 and meta["legacy"]["best_prec1"] == pytest.approx(0.9131)
    raw = torch.load(SIAM, map_location="cpu", weights_only=True)["state_dict"]
    # the same network without normalisation, fed pre-normalised inputs
    plain = create_model("resnet20", 10, 3, 0.0, 1.0)
    plain.load_state_dict(map_legacy_keys(raw, plain), strict=True)
    plain.eval()
    x = torch.cat(
        [_smooth_images(24, 0), torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))]
    )
    z = (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(logits, plain(z))
        torch.testing.assert_close(logits, _reference_resnet20(raw, z), rtol=1e-4, atol=1e-4)
    # a real classifier: varied, confident predictions
    pred = logits.argmax(1)
    assert len(set(pred.tolist())) >= 3
    assert logits.softmax(1).max(1).values.mean() > 0.5
    # converting to the safe format keeps the outputs
    path = save_checkpoint(tmp_path / "siam_resnet20.safetensors", model, {"source": str(SIAM)})
    again, meta2 = load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(again(x), logits)
    assert meta2["source"] == str(SIAM)
    # the CLI conversion does the same; dataset= takes the normalisation from the data registry
    out = tmp_path / "converted.safetensors"
    args = [
        "models",
        "convert",
        "-c",
        str(SIAM),
        "--arch",
        "resnet20",
        "--dataset",
        "cifar10",
        "-o",
        str(out),
    ]
    args += ["--mean", *map(str, CIFAR_MEAN), "--std", *map(str, CIFAR_STD)]
    assert cli_main(args) == 0
    converted, meta3 = load_checkpoint(out)
    with torch.no_grad():
        assert torch.equal(converted(x), logits)
    assert meta3["dataset"] == "cifar10" and meta3["legacy"]["epoch"] == 210
    from smoothinf.data import get_dataset_info

    _, meta4 = load_checkpoint(SIAM, arch="resnet20", dataset="cifar10")
    assert meta4["normalization"]["mean"] == list(get_dataset_info("cifar10").mean)
    # input_normalized=False: the legacy net took raw pixels, so normalize is the identity
    raw_px, _ = load_legacy_checkpoint(SIAM, "resnet20", 10, 3, CIFAR_MEAN, CIFAR_STD, input_normalized=False)
    with torch.no_grad():
        assert torch.equal(raw_px(z.clamp(0, 1)), plain(z.clamp(0, 1)))


def test_cli_models_list_and_info(saved, capsys):
    _, path = saved
    assert cli_main(["models", "list", "--noise"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "272,474" in out and "46,160,474" in out and "noise kinds" in out
    assert cli_main(["models", "info", "--checkpoint", str(path)]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "clean_acc" in out and "cifar10" in out
    assert cli_main(["models", "info", "--checkpoint", str(path) + ".missing"]) == 2
    assert "not found" in capsys.readouterr().err
