import onnx
import pytest
import torch
import torch.nn as nn
from builders import randomise_batchnorm

from compress.benchmark import LatencySettings, available_providers, make_session, measure_latency, onnx_accuracy
from compress.errors import ConfigError, ExportError
from compress.evaluation import evaluate
from compress.export import check_parity, export_onnx
from compress.zoo import DigitsCNN


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_has_a_dynamic_batch_and_matches_pytorch(tmp_path, exporter):
    model = randomise_batchnorm(DigitsCNN())
    x = torch.randn(6, 1, 8, 8)
    result = export_onnx(model, x, tmp_path / "m.onnx", exporter=exporter)
    assert result.exporter == exporter and result.fallback_reason is None
    proto = onnx.load(str(result.path))
    assert proto.graph.input[0].name == "input" and proto.graph.output[0].name == "logits"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert weights <= result.onnx_params <= sum(p.numel() for p in model.parameters()) + 2 * 352
    session = make_session(result.path)
    for batch in (1, 5):
        assert check_parity(session, model, x[:batch], tolerance=1e-4).max_abs_diff <= 1e-4


def test_an_opset_the_dynamo_exporter_cannot_write_falls_back_to_torchscript(tmp_path):
    result = export_onnx(randomise_batchnorm(DigitsCNN()), torch.randn(2, 1, 8, 8), tmp_path / "m.onnx", opset=17)
    assert (result.exporter, result.opset) == ("torchscript", 17)
    assert "not the requested 17" in result.fallback_reason
    assert onnx.load(str(result.path)).opset_import[0].version == 17


def test_parity_over_tolerance_is_an_error(tmp_path):
    model = randomise_batchnorm(DigitsCNN())
    x = torch.randn(4, 1, 8, 8)
    session = make_session(export_onnx(model, x, tmp_path / "m.onnx").path)
    with torch.no_grad():
        model.fc.bias += 1.0  # the file no longer matches the model
    with pytest.raises(ExportError, match="differs from PyTorch"):
        check_parity(session, model, x, tolerance=1e-4)


class _Unexportable(nn.Module):
    def forward(self, x):
        return torch.polygamma(2, x.abs() + 1).flatten(1)  # no ONNX translation in either exporter


def test_model_that_cannot_export_names_the_operator(tmp_path):
    with pytest.raises(ExportError, match=r"_Unexportable failed: unsupported operator aten::polygamma"):
        export_onnx(_Unexportable(), torch.randn(2, 1, 4, 4), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_onnx_accuracy_equals_pytorch_accuracy(tmp_path, digits_splits, digits_model):
    loader = digits_splits.loader("evaluation", 128)
    session = make_session(export_onnx(digits_model, digits_splits.example_batch(), tmp_path / "d.onnx").path)
    assert onnx_accuracy(session, loader) == pytest.approx(evaluate(digits_model, loader))


def test_latency_is_measured_for_every_variant_and_batch(tmp_path):
    x = torch.randn(8, 1, 8, 8)
    sessions = {
        name: make_session(
            export_onnx(
                randomise_batchnorm(DigitsCNN(widths=w)), x, tmp_path / f"{name}.onnx", exporter="torchscript"
            ).path
        )
        for name, w in (("wide", (32, 64, 128, 128)), ("slim", (8, 16, 32, 32)))
    }
    result = measure_latency(sessions, {1: x[:1].numpy(), 8: x.numpy()}, LatencySettings(warmup=2, runs=12, rounds=4))
    for name in ("wide", "slim"):
        for batch in ("batch_1", "batch_8"):
            t = result[name][batch]
            assert t["runs"] == 12 and 0 < t["min_ms"] <= t["median_ms"] <= t["p90_ms"]
    assert result["slim"]["batch_8"]["median_ms"] < result["wide"]["batch_8"]["median_ms"]


def test_unknown_or_absent_provider_is_a_clear_error(tmp_path):
    path = export_onnx(DigitsCNN().eval(), torch.randn(2, 1, 8, 8), tmp_path / "m.onnx", exporter="torchscript").path
    with pytest.raises(ConfigError, match="unknown provider 'tpu'"):
        make_session(path, "tpu")
    if "cuda" not in available_providers():
        with pytest.raises(ConfigError, match="provider 'cuda' is not available"):
            make_session(path, "cuda")
