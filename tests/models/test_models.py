"""Model zoo: registry, output shapes, Normalize, architecture figures."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from smoothinf.data.dataset import DatasetInfo
from smoothinf.errors import SmoothinfError
from smoothinf.models import (
    Normalize,
    count_parameters,
    create_model,
    create_model_for,
    get_model_spec,
    list_models,
    parameter_count,
    register_model,
)
from smoothinf.models.resnet import cifar_resnet

EXPECTED = {
    "linear",
    "mnist_cnn_small",
    "mnist_cnn",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "preact_resnet18",
    "wide_resnet28_10",
    "wide_resnet34_10",
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Batch-2 forwards gain nothing from intra-op threads, and on shared cores OpenMP spin-waits
    make them ~50x slower (see benchmarks/results/models.md); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registry_lists_the_zoo_in_natural_order():
    names = list_models()
    assert set(names) >= EXPECTED
    resnets = [n for n in names if n.startswith("resnet")]
    assert resnets == ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


@pytest.mark.parametrize("name", sorted(EXPECTED | {"wide_resnet"}))
def test_output_shape_for_its_data(name):
    torch.manual_seed(0)
    spec = get_model_spec(name)
    c = spec.input_shape[0]
    model = create_model(name, 10, c, mean=[0.5] * c, std=[0.25] * c).eval()
    assert next(iter(model.named_children()))[0] == "normalize"
    assert isinstance(model.normalize, Normalize)
    with torch.no_grad():
        out = model(torch.rand(2, *spec.input_shape))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    # layers that carry weights are plain modules, so noise injection can swap them
    kinds = {type(m) for m in model.modules() if any(True for _ in m.parameters(recurse=False))}
    assert kinds <= {nn.Conv2d, nn.Linear, nn.BatchNorm2d}
    # the arch record is JSON-able and rebuilds the same architecture
    arch = json.loads(json.dumps(model.smoothinf_arch))
    assert arch["name"] == name and arch["kwargs"]["mean"] == [0.5] * c
    if "wide" not in name:  # WRN: one forward only (cost)
        rebuilt = create_model(arch["name"], **arch["kwargs"])
        assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("resnet20", 272_474),  # option B shortcuts (the reference code's ResNet-20)
        ("preact_resnet18", 11_172_170),
        ("wide_resnet28_10", 36_479_194),
        ("wide_resnet34_10", 46_160_474),  # the TRADES / Madry WRN-34-10 count
        ("mnist_cnn", 3_274_634),  # Madry et al.'s MNIST model
        ("linear", 7_850),
    ],
)
def test_parameter_counts_match_the_literature(name, params):
    assert parameter_count(name) == params


def test_option_a_shortcut_and_depth():
    model = create_model("resnet20", 10, 3, shortcut="pad")
    assert count_parameters(model) == 269_722  # He et al.'s 0.27M CIFAR ResNet-20
    for depth in (20, 32, 56):
        m = create_model(f"resnet{depth}", 10, 3)
        convs3 = sum(1 for x in m.modules() if isinstance(x, nn.Conv2d) and x.kernel_size == (3, 3))
        linears = sum(1 for x in m.modules() if isinstance(x, nn.Linear))
        assert convs3 + linears == depth
    with pytest.raises(SmoothinfError, match="6n \\+ 2"):
        cifar_resnet(10, 3, 0.0, 1.0, depth=21)
    with pytest.raises(SmoothinfError, match="6n \\+ 4"):
        create_model("wide_resnet", 10, 3, depth=12)


def test_normalize_values_and_errors():
    norm = Normalize([0.1, 0.2, 0.3], [0.5, 0.25, 2.0])
    x = torch.rand(4, 3, 5, 5)
    expected = torch.stack([(x[:, 0] - 0.1) / 0.5, (x[:, 1] - 0.2) / 0.25, (x[:, 2] - 0.3) / 2.0], dim=1)
    torch.testing.assert_close(norm(x), expected)
    assert set(dict(norm.named_buffers())) == {"mean", "std"}
    assert "mean" in norm.state_dict()  # persistent: saved with the weights
    scalar = Normalize(0.5, 0.5, in_channels=3)
    assert scalar.mean.shape == (1, 3, 1, 1)
    torch.testing.assert_close(scalar(torch.full((1, 3, 2, 2), 0.75)), torch.full((1, 3, 2, 2), 0.5))
    with pytest.raises(SmoothinfError, match="positive"):
        Normalize([0.5], [0.0])
    with pytest.raises(SmoothinfError, match="3 input channels"):
        Normalize([0.1, 0.2], [1.0, 1.0], in_channels=3)
    with pytest.raises(SmoothinfError, match="input channels"):
        create_model("resnet20", 10, 3, mean=[0.1, 0.2], std=[1.0, 1.0])


def test_model_normalises_inside():
    """The model equals its network applied to externally normalised inputs."""
    torch.manual_seed(0)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.1)
    model = create_model("resnet20", 10, 3, mean, std).eval()
    x = torch.rand(3, 3, 32, 32)
    z = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_normalized(z))


def test_unknown_model_and_bad_kwargs():
    with pytest.raises(SmoothinfError, match="unknown model 'resnet21'.*resnet20"):
        create_model("resnet21", 10, 3)
    with pytest.raises(SmoothinfError, match="bad arguments for model 'resnet20'"):
        create_model("resnet20", 10, 3, widen_factor=4)
    with pytest.raises(SmoothinfError, match="num_classes"):
        create_model("linear", 0, 1)
    with pytest.raises(SmoothinfError, match="already registered"):
        register_model("resnet20")(lambda *a, **k: None)


def test_create_model_for_small_inputs():
    info = DatasetInfo("synthetic", 4, (1, 12, 12), (0.5,), (0.25,), 0.1)
    for name in ("linear", "mnist_cnn_small", "mnist_cnn", "resnet20"):
        model = create_model_for(name, info).eval()
        assert model(torch.rand(2, 1, 12, 12)).shape == (2, 4)
        assert model.smoothinf_arch["kwargs"]["num_classes"] == 4
    assert create_model_for("linear", info).smoothinf_arch["kwargs"]["input_size"] == [12, 12]
    assert count_parameters(create_model_for("linear", info)) == 144 * 4 + 4
    with pytest.raises(SmoothinfError, match="too small"):
        create_model("mnist_cnn", 10, 1, input_size=2)


def test_linear_model_is_affine_in_pixels():
    torch.manual_seed(0)
    model = create_model("linear", 3, 1, mean=0.5, std=0.5, input_size=4).eval()
    x1, x2 = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    with torch.no_grad():
        lhs = model(0.3 * x1 + 0.7 * x2)
        rhs = 0.3 * model(x1) + 0.7 * model(x2)
    torch.testing.assert_close(lhs, rhs)
    w, b = model.fc.weight, model.fc.bias
    with torch.no_grad():
        torch.testing.assert_close(model(x1), ((x1 - 0.5) / 0.5).flatten(1) @ w.T + b)


def test_gradients_reach_inputs_and_dropout_is_optional():
    torch.manual_seed(0)
    model = create_model("resnet20", 10, 3, dropout=0.3).eval()
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    assert not any(isinstance(m, nn.Dropout) for m in create_model("resnet20", 10, 3).modules())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    assert grad.abs().sum() > 0
    with pytest.raises(SmoothinfError, match="dropout"):
        create_model("wide_resnet", 10, 3, dropout=1.5)
