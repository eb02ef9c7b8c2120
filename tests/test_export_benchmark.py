import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from builders import Depthwise, randomise_batchnorm

from compress.benchmark import (
    BoundCall,
    LatencySettings,
    available_providers,
    interleaving_summary,
    make_session,
    measure_latency,
    onnx_accuracy,
    plan_rounds,
    speedups,
)
from compress.cifar_resnet import CifarResNet
from compress.criteria import importance_factory
from compress.errors import ConfigError, ExportError
from compress.evaluation import evaluate
from compress.export import check_parity, export_onnx
from compress.zoo import DigitsCNN


def test_every_export_passes_the_full_onnx_check(tmp_path, monkeypatch):
    full_checks = []
    check = onnx.checker.check_model

    def spy(proto, *args, **kwargs):
        full_checks.append(kwargs.get("full_check", args[1] if len(args) > 1 else False))
        return check(proto, *args, **kwargs)

    monkeypatch.setattr(onnx.checker, "check_model", spy)
    for exporter in ("dynamo", "torchscript"):
        full_checks.clear()
        export_onnx(randomise_batchnorm(DigitsCNN()), torch.randn(2, 1, 8, 8), tmp_path / "m.onnx", exporter=exporter)
        assert True in full_checks, exporter  # with shape inference, not only the structural check


def test_sessions_state_their_threads_and_do_not_spin(tmp_path):
    from compress.benchmark import default_threads

    path = export_onnx(randomise_batchnorm(DigitsCNN()), torch.randn(2, 1, 8, 8), tmp_path / "m.onnx").path
    options = make_session(path).get_session_options()
    # idle pools of the other sessions being timed in turn would otherwise steal the timed one's cores
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == default_threads() and options.inter_op_num_threads == 1
    assert make_session(path, threads=3).get_session_options().intra_op_num_threads == 3


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
    settings = LatencySettings(warmup=2, runs=12, rounds=4, min_seconds=0, window_seconds=0)
    result = measure_latency(sessions, {1: x[:1].numpy(), 8: x.numpy()}, settings).timings
    for name in ("wide", "slim"):
        for batch in ("batch_1", "batch_8"):
            t = result[name][batch]
            assert t["runs"] == 12 and 0 < t["min_ms"] <= t["median_ms"] <= t["p90_ms"] <= t["p99_ms"]
            assert t["throughput_ips"] == pytest.approx(int(batch.split("_")[1]) * 1000 / t["median_ms"])
    assert result["slim"]["batch_8"]["median_ms"] < result["wide"]["batch_8"]["median_ms"]


def test_variants_are_timed_interleaved_and_the_order_is_recorded(tmp_path):
    x = torch.randn(4, 1, 8, 8)
    path = export_onnx(DigitsCNN().eval(), x, tmp_path / "m.onnx", exporter="torchscript").path
    sessions = {name: make_session(path) for name in ("a", "b", "c")}
    settings = LatencySettings(warmup=1, runs=3, rounds=3, min_seconds=0, window_seconds=0)
    run = measure_latency(sessions, {1: x[:1].numpy(), 4: x.numpy()}, settings)
    assert run.order == [(n, 1) for n in "abc"] * 3 + [(n, 4) for n in "abc"] * 3
    assert interleaving_summary(run.order, limit=4) == ["a@1", "b@1", "c@1", "a@1"]


def test_fast_calls_get_more_timed_runs_up_to_the_cap():
    settings = LatencySettings(runs=50, min_seconds=1.0, window_seconds=10.0, max_runs=2000)
    assert settings.runs_for(0.1, variants=20) == 50  # slow calls: the minimum count
    assert settings.runs_for(0.001, variants=20) == 1000  # fast calls: enough for a second of timed work
    assert settings.runs_for(0.001, variants=2) == 2000 == settings.runs_for(1e-6)  # the window's half; the cap
    assert settings.runs_for(0.1, variants=2) == 50 and settings.runs_for(0.05, variants=2) == 100
    with pytest.raises(ConfigError, match="max_runs"):
        LatencySettings(runs=10, max_runs=5).validate()


def test_slices_stay_short_so_every_variant_spans_the_whole_window():
    settings = LatencySettings(runs=10, rounds=5, min_seconds=2.0, window_seconds=0, slice_seconds=0.05)
    per_slice, rounds = plan_rounds({"slow": 0.1, "fast": 0.001}, settings)
    assert rounds == 40  # 2 s of slow calls in slices of at most one 0.1 s call: 20 calls, 40 rounds
    assert per_slice == {"slow": 1, "fast": 50}  # 2000 fast calls spread over the same 40 rounds
    assert plan_rounds({"a": 0.01}, LatencySettings(runs=12, rounds=4, min_seconds=0, window_seconds=0)) == (
        {"a": 3},
        4,
    )


def test_bound_call_gives_the_same_logits_as_a_plain_run(tmp_path):
    model = randomise_batchnorm(DigitsCNN())
    x = torch.randn(5, 1, 8, 8)
    session = make_session(export_onnx(model, x, tmp_path / "m.onnx").path)
    call = BoundCall(session, x.numpy())
    call()
    assert np.array_equal(call.outputs[0].numpy(), session.run(None, {"input": x.numpy()})[0])


def test_speedups_set_measured_gain_against_the_macs_saved():
    timings = {"base": {"batch_1": {"median_ms": 8.0}}, "half": {"batch_1": {"median_ms": 5.0}}}
    gains = speedups(timings, {"base": 100, "half": 50}, baseline="base")
    assert gains["base"]["batch_1"] == {"speedup": 1.0, "macs_speedup": 1.0, "efficiency": 1.0}
    assert gains["half"]["batch_1"] == pytest.approx({"speedup": 1.6, "macs_speedup": 2.0, "efficiency": 0.8})


@pytest.mark.parametrize("model_name", ["plain", "residual", "depthwise"])
def test_export_parity_on_small_models(tmp_path, model_name):
    model = randomise_batchnorm(
        {"plain": lambda: DigitsCNN(), "residual": lambda: CifarResNet(depth=8), "depthwise": Depthwise}[model_name]()
    )
    x = torch.randn(6, 1, 8, 8) if model_name == "plain" else torch.randn(6, 3, 16, 16)
    result = export_onnx(model, x, tmp_path / "m.onnx", input_name="images", output_name="scores")
    proto = onnx.load(str(result.path))
    assert [i.name for i in proto.graph.input] == ["images"] and proto.graph.output[0].name == "scores"
    parity = check_parity(make_session(result.path), model, x, tolerance=1e-4)
    assert parity.passed and parity.max_abs_diff <= 1e-4 and parity.max_rel_diff <= 1e-4


def test_static_batch_export_fixes_the_batch_axis_and_still_checks_parity(tmp_path):
    model = randomise_batchnorm(DigitsCNN())
    x = torch.randn(4, 1, 8, 8)
    result = export_onnx(model, x, tmp_path / "m.onnx", dynamic_batch=False, metadata={"compress.model": "d"})
    proto = onnx.load(str(result.path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert {p.key: p.value for p in proto.metadata_props} == {"compress.model": "d"}
    session = make_session(result.path)
    assert check_parity(session, model, torch.randn(10, 1, 8, 8), tolerance=1e-4).images == 10  # fed in chunks


def test_bad_onnx_names_are_refused(tmp_path):
    with pytest.raises(ExportError, match="input name '1x' is not a valid ONNX name"):
        export_onnx(DigitsCNN(), torch.randn(2, 1, 8, 8), tmp_path / "m.onnx", input_name="1x")
    with pytest.raises(ExportError, match="must differ"):
        export_onnx(DigitsCNN(), torch.randn(2, 1, 8, 8), tmp_path / "m.onnx", input_name="x", output_name="x")


def test_unknown_or_absent_provider_is_a_clear_error(tmp_path):
    path = export_onnx(DigitsCNN().eval(), torch.randn(2, 1, 8, 8), tmp_path / "m.onnx", exporter="torchscript").path
    with pytest.raises(ConfigError, match="unknown provider 'tpu'; choose one of cpu, cuda, tensorrt"):
        make_session(path, "tpu")
    for provider in ("cuda", "tensorrt"):
        if provider not in available_providers():
            with pytest.raises(ConfigError, match=f"provider '{provider}' is not available.*install the gpu extra"):
                make_session(path, provider)


def test_a_model_with_the_same_shapes_reuses_the_translation_and_exports_the_same_file(tmp_path):
    from onnx import numpy_helper

    from compress.export import ExportCache
    from compress.pruning import prune

    torch.manual_seed(0)
    model = randomise_batchnorm(CifarResNet(depth=8)).eval()
    x = torch.randn(4, 3, 32, 32)
    first, second = (prune(model, importance_factory("random", seed=s), 0.5, x).model for s in (1, 2))
    cache = ExportCache()
    export_onnx(first, x, tmp_path / "first.onnx", cache=cache)
    reused = export_onnx(second, x, tmp_path / "second.onnx", cache=cache).path
    assert cache.reused == 1
    fresh = export_onnx(second, x, tmp_path / "fresh.onnx").path
    protos = [onnx.load(str(p)) for p in (reused, fresh)]
    assert [n.op_type for n in protos[0].graph.node] == [n.op_type for n in protos[1].graph.node]
    weights = [[(t.name, numpy_helper.to_array(t)) for t in p.graph.initializer] for p in protos]
    assert len(weights[0]) == len(weights[1])
    for (name, array), (fresh_name, fresh_array) in zip(*weights, strict=True):
        assert np.array_equal(array, fresh_array)
        assert name == fresh_name or name.startswith("val_")  # the exporter numbers its own constants
    images = torch.randn(8, 3, 32, 32).numpy()
    outputs = [make_session(p).run(None, {"input": images})[0] for p in (reused, fresh)]
    assert np.array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], make_session(tmp_path / "first.onnx").run(None, {"input": images})[0])
    export_onnx(prune(model, importance_factory("random", seed=1), 0.25, x).model, x, tmp_path / "o.onnx", cache=cache)
    assert cache.reused == 1  # other shapes: translated afresh
