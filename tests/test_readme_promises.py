"""Promises README.md makes that no other test would catch if broken (each found by breaking the code)."""

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from compress.cli import main, run_config_from_args
from compress.onnx_info import read_onnx_info

FAST = ["--latency-runs", "3", "--latency-min-seconds", "0", "--latency-window-seconds", "0", "--warmup", "1"]
README = Path(__file__).resolve().parents[1] / "README.md"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("compress: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory):
    """README's release pipeline: settings in a TOML file, `--json` to stdout, a gate that fails (exit 1)."""
    root = tmp_path_factory.mktemp("release")
    config = root / "compress.toml"
    config.write_text(
        'ratios = [0.5]\ncriteria = ["causal", "random"]\nrandom-seeds = 2\nlatency-batch = 8\n'
        "min-speedup = 1000.0\nmax-size-mb = 100.0\n"
    )
    out = root / "artifacts"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["run", "--config", str(config), "--out", str(out), "--json", *FAST])
    return code, out, stdout.getvalue(), stderr.getvalue()


def test_a_failed_gate_under_json_exits_1_keeps_stdout_json_and_measures_at_the_latency_batch(gated_run):
    code, out, stdout, stderr = gated_run
    assert code == 1
    summary = json.loads(stdout)  # `--json > summary.json` stays parseable: gate lines go to stderr
    assert summary["gates_passed"] is False and summary["output_dir"] == str(out)
    lines = stderr.strip().splitlines()  # one line per failed gate, and nothing else
    assert len(lines) == 1 and lines[0].startswith("compress: gate failed: min_speedup "), lines
    report = json.loads((out / "report.json").read_text())
    gates = {g["name"]: g for g in report["gates"]}
    assert summary["gates"] == report["gates"] and set(gates) == {"min_speedup", "max_size_mb"}
    assert gates["max_size_mb"]["passed"] and not gates["min_speedup"]["passed"]
    # min-speedup: measured at --latency-batch (8, from the file), against the original in the same run
    assert report["benchmark"]["latency_batches"] == [1, 8]
    shipped = next(v for v in report["variants"] if v["name"] == report["chosen"]["variant"])
    measured = shipped["speedup"]["cpu"]["batch_8"]
    assert gates["min_speedup"]["value"] == pytest.approx(measured["speedup"])
    original = report["variants"][0]["latency"]["cpu"]["batch_8"]["median_ms"]
    assert measured["speedup"] == pytest.approx(original / shipped["latency"]["cpu"]["batch_8"]["median_ms"])
    assert gates["min_speedup"]["value"] != shipped["speedup"]["cpu"]["batch_1"]["speedup"]
    assert gates["min_speedup"]["value"] != measured["macs_speedup"]  # measured, not what the MACs promise


def test_report_json_holds_what_the_readme_lists(gated_run):
    _, out, _, _ = gated_run
    report = json.loads((out / "report.json").read_text())
    for v in report["variants"]:
        assert {"top1", "top5"} <= set(v["accuracy"]), v["name"]
        assert {"max_abs_diff", "max_rel_diff", "tolerance", "passed"} <= set(v["parity"]), v["name"]
        assert v["parity"]["tolerance"] == 1e-4 and v["parity"]["passed"] is True
        for batch in ("batch_1", "batch_8"):
            assert {"median_ms", "p90_ms", "p99_ms", "throughput_ips"} <= set(v["latency"]["cpu"][batch])
            assert {"speedup", "macs_speedup", "efficiency"} <= set(v["speedup"]["cpu"][batch])
        assert {"macs", "params", "widths", "precision"} <= set(v) and v["precision"] == "fp32"
    benchmark = report["benchmark"]
    timing = [benchmark[key] for key in ("warmup", "runs", "min_seconds", "window_seconds")]
    assert timing == [1, 3, 0, 0]  # the timing settings, as given
    slices = {f"{v['name']}@{b}" for v in report["variants"] for b in (1, 8)}
    assert benchmark["run_order"]["cpu"] and set(benchmark["run_order"]["cpu"]) <= slices
    assert report["seeds"] == {"seed": 0, "random_baselines": [0, 1]}
    assert {"torch", "onnxruntime", "torch-pruning"} <= set(report["environment"]["versions"])
    # random baselines over several seeds: mean and std
    row = report["summary"][0]
    assert row["random"]["top1"]["n"] == 2 and "std" in row["random"]["top1"]
    assert "±" in (out / "report.md").read_text()


@pytest.mark.parametrize("command", ["run", "explain"])
def test_force_never_replaces_a_directory_holding_the_data(tmp_path, capsys, command):
    out = tmp_path / "old-results"
    images = out / "images"
    images.mkdir(parents=True)
    (images / "keep.txt").write_text("the user's data")
    (out / "manifest.json").write_text("{}")  # an earlier result: --force could replace it, but not its data
    assert main([command, "--data", str(images), "--out", str(out), "--force", "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert "holds the input" in line and str(images) in line
    assert (images / "keep.txt").read_text() == "the user's data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old-results"]


def test_export_parity_over_the_tolerance_writes_nothing(tmp_path, capsys):
    out = tmp_path / "slim.onnx"
    assert main(["export", "-o", str(out), "--int8", "--parity-tolerance", "1e-12", "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert "ONNX output differs from PyTorch by" in line and "--parity-tolerance" in line
    assert not list(tmp_path.iterdir())  # neither file, nor a staged half


def test_export_takes_the_opset_and_the_input_and_output_names_given(tmp_path, capsys):
    out = tmp_path / "slim.onnx"
    args = ["export", "-o", str(out), "--opset", "17", "--input-name", "images", "--output-name", "scores"]
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["scores"]
    assert proto.opset_import[0].version == 17 and summary["opset"] == 17
    # the dynamo exporter writes opset 18 at least: the fallback, and why, is in the summary
    assert summary["exporter"] == "torchscript" and "17" in summary["fallback_reason"]
    assert read_onnx_info(out).input_name == "images"
    # fed without this code: the preprocessing is in the metadata, under the keys README names
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["compress.input_size"] == "1,8,8"
    assert float(metadata["compress.mean"]) == pytest.approx(0.3056)
    assert float(metadata["compress.std"]) == pytest.approx(0.3761)


def test_a_run_says_when_and_why_the_exporter_fell_back(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--ratios", "0.3", "--criteria", "causal", "--opset", "17", "--json", *FAST]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert all((v["export"]["exporter"], v["export"]["opset"]) == ("torchscript", 17) for v in report["variants"])
    fallback = [w for w in report["warnings"] if w.startswith("exported with the torchscript exporter")]
    assert fallback and "17" in fallback[0] and summary["warnings"] == report["warnings"]


def test_documented_defaults():
    from compress.config import RunConfig
    from compress.training import TrainSettings

    config = RunConfig()
    assert config.criteria == ("causal", "l1", "random")
    assert (config.allocation, config.group_normalisation, config.max_group_ratio) == ("auto", "auto", 0.9)
    assert (config.round_to, config.effect_images, config.parity_tolerance) == (4, 512, 1e-4)
    assert (config.distill_temperature, config.distill_weight) == (4.0, 0.7)
    assert (config.exporter, config.int8, config.ship_int8, config.download) == ("dynamo", False, False, False)
    assert config.finetune_augment == "auto" and config.finetune_epochs == 0
    settings = TrainSettings()
    assert (settings.temperature, settings.distill_weight, settings.momentum) == (4.0, 0.7, 0.9)
    assert run_config_from_args([]) == config  # the flags' defaults are the same


def test_relative_paths_in_a_config_file_are_read_from_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ci").mkdir()
    path = tmp_path / "ci" / "compress.toml"
    path.write_text('weights = "w.pt"\ndata = "images"\nout = "artifacts"\n')
    config = run_config_from_args(["--config", "ci/compress.toml"])
    assert (config.weights, config.data, config.out) == ("w.pt", "images", "artifacts")
    assert Path(config.weights).resolve() == (tmp_path / "w.pt").resolve()
    # what `config show` prints runs the same from where it was printed
    assert main(["config", "show", "--config", "ci/compress.toml"]) == 0
    shown = tmp_path / "shown.toml"
    shown.write_text(capsys.readouterr().out)
    assert run_config_from_args(["--config", str(shown)]) == config


def test_ship_int8_gates_judge_the_int8_file_that_ships(tmp_path):
    out = tmp_path / "out"
    args = ["run", "--out", str(out), "--ratios", "0.2", "--criteria", "causal", "--ship-int8", "--int8-images", "64"]
    args += ["--latency-batch", "8", "--max-size-mb", "100", "--max-accuracy-drop", "100", "--min-speedup", "0"]
    assert main([*args, "--quiet", *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["chosen"]["variant"] == "causal-0.20-int8"
    variants = {v["name"]: v for v in report["variants"]}
    twin, gates = variants["causal-0.20-int8"], {g["name"]: g for g in report["gates"]}
    assert gates["max_size_mb"]["value"] == (out / "model.onnx").stat().st_size / 1e6 == twin["onnx_bytes"] / 1e6
    assert twin["onnx_bytes"] < variants["causal-0.20"]["onnx_bytes"]  # not the fp32 parent's size
    drop = variants["original"]["accuracy"]["top1"] - twin["accuracy"]["top1"]
    assert gates["max_accuracy_drop"]["value"] == pytest.approx(drop)
    assert gates["min_speedup"]["value"] == pytest.approx(twin["speedup"]["cpu"]["batch_8"]["speedup"])


def test_the_readme_python_example_runs_and_leaves_the_model_unchanged(tmp_path, monkeypatch):
    import compress

    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "import compress\n" in b)
    monkeypatch.chdir(tmp_path)
    spec = compress.get_spec("digits-cnn")
    untouched = compress.load_model(spec, num_classes=10).model.state_dict()
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block, str(README), "exec"), namespace)  # the README's own example, as written
    scores = np.asarray(namespace["scorer"].importances_["conv4"])
    assert scores.shape == (128,) and np.isfinite(scores).all() and scores.std() > 0  # one score per filter
    model, pruned, pruner = namespace["model"], namespace["pruned"].model, namespace["pruner"]
    for name, value in model.state_dict().items():  # scored, pruned and used as teacher: never changed
        assert torch.equal(value, untouched[name]), name
    assert pruned.conv4.out_channels < model.conv4.out_channels
    [choice] = pruner.allocation_choices_
    assert pruner.macs_ratio_ <= 0.5 and choice["chosen"] == max(choice["agreement"], key=choice["agreement"].get)
    proto = onnx.load(str(tmp_path / "slim.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a dynamic batch axis
    exported = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    assert exported["conv4.weight"][0] == pruner.model_.conv4.out_channels < model.conv4.out_channels  # slim


def test_bench_force_replaces_an_earlier_report_but_not_without_it(tmp_path, capsys):
    from compress import get_spec
    from compress.export import export_onnx
    from compress.onnx_info import preprocessing_metadata
    from compress.zoo import DigitsCNN

    spec = get_spec("digits-cnn")
    metadata = preprocessing_metadata(spec.input_size, spec.mean, spec.std)
    path = export_onnx(DigitsCNN().eval(), torch.randn(2, 1, 8, 8), tmp_path / "m.onnx", metadata=metadata).path
    report = tmp_path / "bench.json"
    report.write_text("an earlier report")
    args = ["bench", str(path), "--batch", "1", "--eval-size", "16", *FAST, "--quiet", "--report", str(report)]
    assert main(args) == 2
    assert "already exists" in _one_error_line(capsys) and report.read_text() == "an earlier report"
    assert main([*args, "--force"]) == 0
    assert json.loads(report.read_text())["variants"][0]["name"] == "m"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "m.onnx"]  # nothing staged is left
