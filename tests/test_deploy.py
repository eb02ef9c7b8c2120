"""Deployable files: `compress export`, `compress bench`, INT8 twins and what an ONNX file says of itself."""

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from builders import randomise_batchnorm

from compress.bench_job import BenchSettings, bench_files
from compress.benchmark import LatencySettings, make_session, onnx_accuracy
from compress.cli import main
from compress.errors import ConfigError
from compress.export import export_onnx
from compress.onnx_info import preprocessing_metadata, read_onnx_info
from compress.quantize import quantize_int8
from compress.zoo import _REGISTRY, DigitsCNN, ModelSpec, register_model

QUICK_TIMING = ["--latency-runs", "3", "--latency-min-seconds", "0", "--latency-window-seconds", "0", "--warmup", "1"]


class _ConvFc(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, groups=1)
        self.dw = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(self.dw(self.conv(x)).flatten(1))


def test_onnx_macs_are_counted_from_the_graph(tmp_path):
    path = export_onnx(_ConvFc().eval(), torch.randn(2, 3, 8, 8), tmp_path / "m.onnx").path
    info = read_onnx_info(path)
    # conv: 8*8*4 outputs x 3*3*3; depthwise: 4*4*4 outputs x 1*3*3; fc: 5 outputs x 64
    assert info.macs == 8 * 8 * 4 * 27 + 4 * 4 * 4 * 9 + 5 * 64
    assert info.input_shape == (3, 8, 8) and info.fixed_batch is None


def test_preprocessing_metadata_round_trips(tmp_path):
    meta = preprocessing_metadata((1, 8, 8), (0.3,), (0.4,), model="digits-cnn")
    path = export_onnx(DigitsCNN().eval(), torch.randn(2, 1, 8, 8), tmp_path / "m.onnx", metadata=meta).path
    info = read_onnx_info(path)
    assert info.preprocessing() == ((1, 8, 8), (0.3,), (0.4,))
    assert info.metadata["compress.model"] == "digits-cnn"


def test_not_an_onnx_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not a readable ONNX file"):
        read_onnx_info(bad)
    with pytest.raises(ConfigError, match="ONNX file not found"):
        read_onnx_info(tmp_path / "missing.onnx")


def test_int8_twin_is_qdq_per_channel_and_keeps_accuracy(tmp_path, digits_splits, digits_model):
    fp32 = export_onnx(digits_model, digits_splits.example_batch(), tmp_path / "d.onnx").path
    result = quantize_int8(fp32, tmp_path / "d.int8.onnx", digits_splits.loader("calibration", 128), max_images=256)
    assert result.calibration_images == 256
    proto = onnx.load(str(result.path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    scales = {t.name: t for t in proto.graph.initializer}
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    weight_dq = next(n for n in proto.graph.node if n.output[0] == conv.input[1])
    assert list(scales[weight_dq.input[1]].dims) == [32]  # one scale per output channel of conv1
    assert result.per_channel and result.reduce_range
    weights = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and max(int(np.abs(w).max()) for w in weights) <= 64  # 7 bits: no overflow without VNNI
    evaluation = digits_splits.loader("evaluation", 128)
    fp32_top1 = onnx_accuracy(make_session(fp32), evaluation)["top1"]
    int8_top1 = onnx_accuracy(make_session(result.path), evaluation)["top1"]
    assert int8_top1 >= fp32_top1 - 1.0
    assert read_onnx_info(result.path).macs == read_onnx_info(fp32).macs


def _two_files(tmp_path):
    meta = preprocessing_metadata((1, 8, 8), (0.3056,), (0.3761,))
    x = torch.randn(4, 1, 8, 8)
    wide = export_onnx(randomise_batchnorm(DigitsCNN()), x, tmp_path / "wide.onnx", metadata=meta).path
    slim = export_onnx(
        randomise_batchnorm(DigitsCNN(widths=(8, 16, 32, 32))), x, tmp_path / "slim.onnx", metadata=meta
    ).path
    return wide, slim


def test_bench_reports_every_field_for_every_file(tmp_path):
    wide, slim = _two_files(tmp_path)
    settings = BenchSettings(
        batches=(1, 8), latency=LatencySettings(warmup=1, runs=4, rounds=2, min_seconds=0, window_seconds=0)
    )
    report = bench_files([wide, slim], settings)
    assert report["baseline"] == "wide" and report["benchmark"]["providers"] == ["cpu"]
    assert report["benchmark"]["run_order"]["cpu"][:3] == ["wide@1", "slim@1", "wide@1"]
    for v in report["variants"]:
        assert set(v["accuracy"]) == {"top1", "top5"}
        for batch in ("batch_1", "batch_8"):
            assert {"median_ms", "p90_ms", "p99_ms", "throughput_ips", "runs"} <= set(v["latency"]["cpu"][batch])
            assert set(v["speedup"]["cpu"][batch]) == {"speedup", "macs_speedup", "efficiency"}
    slim_record = report["variants"][1]
    assert slim_record["macs_ratio"] < 0.2
    gain = slim_record["speedup"]["cpu"]["batch_8"]
    assert gain["efficiency"] == pytest.approx(gain["speedup"] / gain["macs_speedup"])


def test_bench_command_prints_json_and_refuses_to_overwrite_a_report(tmp_path, capsys):
    wide, slim = _two_files(tmp_path)
    report = tmp_path / "bench.json"
    args = ["bench", str(wide), str(slim), "--batch", "1,4", "--eval-size", "50", *QUICK_TIMING]
    assert main([*args, "--json", "--report", str(report)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(report.read_text())["variants"][1]["name"] == printed["variants"][1]["name"] == "slim"
    assert printed["data"]["evaluation_images"] == 50
    assert main([*args, "--quiet", "--report", str(report)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_bench_without_normalisation_metadata_asks_for_it(tmp_path, capsys):
    path = export_onnx(DigitsCNN().eval(), torch.randn(2, 1, 8, 8), tmp_path / "bare.onnx").path
    assert main(["bench", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"compress: error: {path} carries no normalisation metadata; pass --mean and --std"]


def test_bench_of_an_absent_provider_is_one_line_and_exit_2(tmp_path, capsys):
    wide, _ = _two_files(tmp_path)
    assert main(["bench", str(wide), "--provider", "tensorrt", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "provider 'tensorrt' is not available" in err[0]


def test_export_command_writes_a_checked_file_and_its_int8_twin(tmp_path, capsys):
    out = tmp_path / "digits.onnx"
    code = main(["export", "-o", str(out), "--int8", "--input-name", "pixels", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parity"]["passed"] and summary["parity"]["max_abs_diff"] <= 1e-4
    assert summary["input"] == {"name": "pixels", "batch": "dynamic", "size": [1, 8, 8]}
    assert summary["int8"]["top1_drop"] <= 1.0 and (tmp_path / "digits.int8.onnx").is_file()
    info = read_onnx_info(out)
    assert info.input_name == "pixels" and info.preprocessing()[0] == (1, 8, 8)
    assert not list(tmp_path.glob(".*partial*"))
    assert main(["export", "-o", str(out), "--quiet"]) == 2
    assert "already exists; choose another output or pass --force" in capsys.readouterr().err


def test_export_command_with_a_static_batch_and_its_int8_twin(tmp_path, capsys):
    out = tmp_path / "fixed.onnx"
    # 7 divides neither the calibration batches nor the INT8 images: the quantiser still gets batches of 7
    assert main(["export", "-o", str(out), "--static-batch", "7", "--int8", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["int8"]["top1_drop"] <= 1.0
    for path in (out, tmp_path / "fixed.int8.onnx"):
        assert read_onnx_info(path).fixed_batch == 7
        session = make_session(path)
        assert session.run(None, {"input": np.zeros((7, 1, 8, 8), np.float32)})[0].shape == (7, 10)


class _Polygamma(nn.Module):
    """A classifier with an operator neither ONNX exporter can translate."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        x = torch.polygamma(2, self.conv(x).abs() + 1)
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def polygamma_model(tmp_path):
    spec = register_model(ModelSpec("test-polygamma", _Polygamma, (1, 8, 8), (0.3056,), (0.3761,)))
    weights = tmp_path / "polygamma.pt"
    torch.save(_Polygamma().state_dict(), weights)
    yield spec.name, weights
    del _REGISTRY[spec.name]


def test_export_of_an_unsupported_operator_exits_2_and_names_it(tmp_path, capsys, polygamma_model):
    name, weights = polygamma_model
    out = tmp_path / "p.onnx"
    assert main(["export", "--model", name, "--weights", str(weights), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unsupported operator aten::polygamma" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_export_of_a_pruned_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert (
        main(["run", "--out", str(run_dir), "--ratios", "0.5", "--criteria", "causal", "--quiet", *QUICK_TIMING]) == 0
    )
    out = tmp_path / "pruned.onnx"
    pruned = str(run_dir / "pruned.pt")
    assert main(["export", "--pruned", pruned, "--model", "cifar_resnet20", "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # a model given twice is refused, not ignored
    assert len(err) == 1 and "--pruned brings its own model and weights: drop --model" in err[0]
    assert not out.exists()
    assert main(["export", "--pruned", pruned, "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    shipped = read_onnx_info(run_dir / "model.onnx")
    assert summary["macs"] == shipped.macs == read_onnx_info(out).macs
    report = json.loads((run_dir / "report.json").read_text())
    chosen = next(v for v in report["variants"] if v["name"] == report["chosen"]["variant"])
    assert summary["accuracy"]["top1"] == pytest.approx(chosen["accuracy"]["top1"])
