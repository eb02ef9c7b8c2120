"""Shared fixtures: small constructed models and data, made on the fly (nothing downloaded)."""

from __future__ import annotations

import matplotlib
import pytest
import torch

from compress import get_spec, load_data
from compress.progress import set_quiet

matplotlib.use("Agg")
set_quiet(True)
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits_splits():
    spec = get_spec("digits-cnn")
    return load_data("digits", input_size=spec.input_size, mean=spec.mean, std=spec.std)


@pytest.fixture(scope="session")
def digits_model():
    from compress import load_model

    return load_model(get_spec("digits-cnn"), num_classes=10).model
