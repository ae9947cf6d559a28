"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch


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
