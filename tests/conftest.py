"""Shared test fixtures and the ``--device`` option.

``pytest --device cuda`` runs the device-parametrised tests (those taking the ``device`` fixture,
e.g. tests/test_device.py) on CUDA; every other test is unaffected and runs on the CPU. The
default ``--device cpu`` keeps the suite exactly as it is without the option.
"""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="device of the tests that take the `device` fixture (default cpu)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--device") == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda given but torch.cuda.is_available() is False")


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device chosen with ``--device`` (cpu by default)."""
    return torch.device(request.config.getoption("--device"))


@pytest.fixture(scope="session")
def mnist_small_model():
    """A ``mnist_cnn_small`` trained two short epochs on 12k real MNIST images (~96.5% on 512 test images).

    Returns ``(model, x_test, y_test)`` with 512 test images (float32 in [0, 1]); the model is in
    eval mode on the CPU. Shared by every test that needs a real trained classifier.
    """
    from smoothinf.data import load_splits
    from smoothinf.models import create_model

    torch.manual_seed(0)
    splits, info = load_splits("mnist", ("train", "test"))
    train, test = splits["train"], splits["test"]
    x, y = train.tensors(12000)
    model = create_model("mnist_cnn_small", info.num_classes, info.in_channels, info.mean, info.std)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(2):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], 128):
            idx = perm[i : i + 128]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    xt, yt = test.tensors(512)
    return model, xt, yt


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A CLI call with --threads sets torch's thread count for the process; put it back after each
    test so that no test sees another's setting."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
