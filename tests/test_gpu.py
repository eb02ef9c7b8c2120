"""CUDA paths: skipped where there is no GPU (CI), run by scripts/gpu_check.py on a GPU machine."""

import numpy as np
import pytest
import torch
from builders import batches, randomise_batchnorm
from torch.utils.data import TensorDataset

from compress.benchmark import BoundCall, available_providers, make_session, run_batched
from compress.cifar_resnet import CifarResNet
from compress.export import check_parity, export_onnx
from compress.training import TrainSettings, train

cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or "cuda" not in available_providers(),
    reason="needs a CUDA GPU and onnxruntime-gpu",
)


@cuda
def test_cuda_session_matches_pytorch_and_binds_its_io_on_the_gpu(tmp_path):
    torch.manual_seed(0)
    model = randomise_batchnorm(CifarResNet(20))
    images = torch.randn(64, 3, 32, 32)
    session = make_session(export_onnx(model, images, tmp_path / "r20.onnx").path, "cuda")
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    assert session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "0"  # full float32
    assert check_parity(session, model, images, tolerance=1e-4).max_abs_diff <= 1e-4
    call = BoundCall(session, images.numpy(), "cuda")
    call()
    np.testing.assert_array_equal(call.outputs[0].numpy(), run_batched(session, images.numpy()))


@cuda
def test_training_runs_on_the_gpu_and_returns_the_model_to_the_cpu():
    torch.manual_seed(0)
    model = randomise_batchnorm(CifarResNet(8))
    images, labels = batches(n=64, shape=(3, 32, 32), batch_size=64, classes=10)[0]
    result = train(model, TensorDataset(images, labels), TrainSettings(epochs=2, lr=0.05, batch_size=16))
    assert result.device.startswith("cuda")
    assert result.epochs[-1]["loss"] < result.epochs[0]["loss"]
    assert next(model.parameters()).device.type == "cpu"
