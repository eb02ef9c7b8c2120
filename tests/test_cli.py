"""The command line, end to end on the embedded default and on a torchvision model with an image folder."""

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch
import torchvision
from PIL import Image

from compress.cli import main
from compress.zoo import CHECKPOINTS_DIR

FAST = ["--latency-runs", "4", "--latency-min-seconds", "0", "--latency-window-seconds", "0", "--quiet"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "default"
    code = main(["run", "--out", str(out), "--ratios", "0.2,0.5", "--random-seeds", "3", "--int8", *FAST])
    return code, out


def test_default_run_writes_every_artifact(default_run):
    code, out = default_run
    assert code == 0
    for name in (
        "model.onnx",
        "pruned.pt",
        "importances.npz",
        "report.json",
        "report.md",
        "manifest.json",
        "plots/accuracy.png",
        "plots/latency.png",
        "plots/tradeoff.png",
        "plots/widths.png",
        "onnx/original.onnx",
        "onnx/causal-0.50.onnx",
    ):
        assert (out / name).is_file(), name
    assert not list(out.parent.glob(".default.partial-*"))
    manifest = json.loads((out / "manifest.json").read_text())
    # every other file is listed with its own sha256 and size, and nothing that is not there
    written = {p.relative_to(out).as_posix(): p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert set(manifest["files"]) == set(written) and "onnx/l1-0.20.onnx" in written
    for name, path in written.items():
        data = path.read_bytes()
        assert manifest["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}, name
    checkpoint = (CHECKPOINTS_DIR / "digits_cnn.pt").read_bytes()
    assert manifest["input_model"]["sha256"] == hashlib.sha256(checkpoint).hexdigest()
    assert manifest["environment"]["versions"]["torch-pruning"]


def test_importances_npz_names_every_criterion_group_and_layer(default_run):
    _, out = default_run
    widths = {"conv1": 32, "conv2": 64, "conv3": 128, "conv4": 128}
    with np.load(out / "importances.npz") as npz:
        scores = {key: npz[key] for key in npz.files}
    kinds = ("group", "layer")
    expected = {f"{c}/{kind}:{layer}" for c in ("causal", "l1", "random") for kind in kinds for layer in widths}
    assert expected <= set(scores)
    # anything else is a causal criterion's per-consumer-input scores (test_causal checks their values)
    reads = {"conv2": "conv1", "conv3": "conv2", "conv4": "conv3", "fc": "conv4"}  # a consumer scores its inputs
    for key in set(scores) - expected:
        criterion, _, layer = key.partition("/consumer:")
        assert criterion in ("causal", "l1", "random") and layer in reads, key
    for key, value in scores.items():
        layer = key.split(":")[1]
        width = widths[reads[layer]] if "/consumer:" in key else widths[layer]
        assert value.shape == (width,) and np.isfinite(value).all(), key
    for criterion in ("causal", "l1", "random"):  # a chain: each group is one layer's filters
        for layer in widths:
            np.testing.assert_array_equal(scores[f"{criterion}/layer:{layer}"], scores[f"{criterion}/group:{layer}"])
    assert not np.array_equal(scores["causal/group:conv1"], scores["l1/group:conv1"])


def test_every_onnx_file_of_a_run_says_how_to_feed_it(default_run, capsys):
    from compress import get_spec
    from compress.onnx_info import read_onnx_info

    _, out = default_run
    spec = get_spec("digits-cnn")
    files = [*sorted(out.glob("onnx/*.onnx")), out / "model.onnx"]
    assert any(f.name.endswith("-int8.onnx") for f in files) and len(files) > 10
    for path in files:
        size, mean, std = read_onnx_info(path).preprocessing()
        assert size == spec.input_size, path.name
        np.testing.assert_allclose(mean, spec.mean, rtol=1e-5, err_msg=path.name)
        np.testing.assert_allclose(std, spec.std, rtol=1e-5, err_msg=path.name)
    # fed by its metadata alone (no --mean, --std or --image-size), model.onnx scores what the run reported
    capsys.readouterr()
    assert main(["bench", str(out / "model.onnx"), "--json", "--batch", "1", *FAST]) == 0
    benched = json.loads(capsys.readouterr().out)["variants"][0]["accuracy"]["top1"]
    report = json.loads((out / "report.json").read_text())
    shipped = next(v for v in report["variants"] if v["name"] == report["chosen"]["variant"])
    assert benched == pytest.approx(shipped["accuracy"]["top1"], abs=1e-6)


def test_default_report_compares_causal_with_random_and_l1(default_run):
    _, out = default_run
    report = json.loads((out / "report.json").read_text())
    names = {v["name"] for v in report["variants"]}
    for ratio in ("0.20", "0.50"):
        assert {f"causal-{ratio}", f"l1-{ratio}"} | {f"random-s{s}-{ratio}" for s in range(3)} <= names
    for v in report["variants"]:
        if v["precision"] == "fp32":  # INT8 files differ by design; their parity is reported, not gated
            assert v["parity"]["max_abs_diff"] <= 1e-4 and v["parity"]["passed"]
            assert {"top1", "top5"} <= set(v["accuracy"])
            assert ("top1_before_recovery" in v["accuracy"]) == (v["name"] != "original")  # nothing to recover
        assert {"batch_1", "batch_32"} <= set(v["latency"]["cpu"])
    original = report["variants"][0]
    half = next(v for v in report["variants"] if v["name"] == "causal-0.50")
    # global allocation (the default): the amount is the share of MACs removed, spent to the budget
    assert 0.45 <= half["macs_ratio"] <= 0.5 and half["onnx_params"] < 0.7 * original["onnx_params"]
    for row in report["summary"]:
        assert row["causal"]["top1"]["mean"] >= row["random"]["top1"]["mean"]
    # batch-norm re-estimation is what brings the pruned variants back (recorded before and after)
    gains = [
        v["accuracy"]["top1"] - v["accuracy"]["top1_before_recovery"]
        for v in report["variants"]
        if v["precision"] == "fp32" and v["criterion"]
    ]
    assert min(gains) > 0 and sum(gains) / len(gains) > 20


def test_pruned_widths_are_multiples_of_the_default_round_to(default_run):
    from compress.config import RunConfig

    _, out = default_run
    report = json.loads((out / "report.json").read_text())
    assert RunConfig().round_to == 4 and report["config"]["round_to"] == 4
    pruned = [v for v in report["variants"] if v["criterion"] and v["precision"] == "fp32"]
    assert len(pruned) == 10  # causal, l1 and three random seeds at two ratios
    for v in pruned:
        assert all(width % 4 == 0 for layer, width in v["widths"].items() if layer != "fc"), v["name"]


def test_the_most_pruned_causal_variant_within_the_tolerance_ships(default_run, digits_splits):
    from compress import load_pruned
    from compress.benchmark import make_session
    from compress.pruning import layer_widths

    _, out = default_run
    report = json.loads((out / "report.json").read_text())
    original = report["variants"][0]["accuracy"]["top1"]
    tolerance = report["config"]["accuracy_tolerance"]
    causal = [v for v in report["variants"] if v["criterion"] == "causal" and v["precision"] == "fp32"]
    within = [v for v in causal if v["accuracy"]["top1"] >= original - tolerance]
    assert within  # which of them ships is the ship rule's test (test_config_gates)
    shipped = max(within, key=lambda v: v["ratio"])
    assert report["chosen"]["variant"] == shipped["name"] and report["chosen"]["within_tolerance"] is True
    assert (out / "model.onnx").read_bytes() == (out / shipped["onnx"]).read_bytes()
    # pruned.pt is the same variant for PyTorch: its widths, and the logits of model.onnx
    model = load_pruned(out / "pruned.pt")
    assert layer_widths(model) == shipped["widths"]
    images = digits_splits.evaluation_batch(64)
    with torch.no_grad():
        logits = model(images).numpy()
    onnx_logits = make_session(out / "model.onnx").run(None, {"input": images.numpy()})[0]
    np.testing.assert_allclose(onnx_logits, logits, atol=1e-4)


def _agreement(out, twin, parent, splits):
    """Fraction of the run's evaluation images on which the INT8 file and its fp32 parent predict the same class
    (the parent's fp32 file matches its PyTorch model within 1e-4)."""
    from compress.benchmark import make_session

    images = splits.evaluation_batch(twin["parity"]["agreement_images"]).numpy()
    twin_class, parent_class = (
        make_session(out / v["onnx"]).run(None, {"input": images})[0].argmax(1) for v in (twin, parent)
    )
    return float((twin_class == parent_class).mean())


def test_default_report_sets_speedup_against_macs_and_has_int8_twins(default_run, digits_splits):
    _, out = default_run
    report = json.loads((out / "report.json").read_text())
    variants = {v["name"]: v for v in report["variants"]}
    for v in variants.values():
        for batch in ("batch_1", "batch_32"):
            gain = v["speedup"]["cpu"][batch]
            base = variants["original"]["latency"]["cpu"][batch]["median_ms"]
            assert gain["speedup"] == pytest.approx(base / v["latency"]["cpu"][batch]["median_ms"])  # original / it
            assert gain["macs_speedup"] == pytest.approx(1 / v["macs_ratio"])
            assert gain["efficiency"] == pytest.approx(gain["speedup"] / gain["macs_speedup"])
            assert v["latency"]["cpu"][batch]["p99_ms"] >= v["latency"]["cpu"][batch]["median_ms"]
    assert variants["original"]["speedup"]["cpu"]["batch_1"]["speedup"] == 1.0
    int8 = [v for v in report["variants"] if v["precision"] == "int8"]
    assert [v["name"] for v in int8] == ["original-int8", "causal-0.20-int8", "causal-0.50-int8"]
    for v in int8:
        parent = variants[v["parent"]]
        assert v["accuracy"]["top1"] >= parent["accuracy"]["top1"] - 1.0
        drop = v["accuracy"]["top1_drop_from_parent"]
        assert drop == pytest.approx(parent["accuracy"]["top1"] - v["accuracy"]["top1"])
        assert v["quantization"]["format"] == "QDQ" and (out / v["onnx"]).is_file()
        assert v["macs"] == parent["macs"]
        assert v["parity"]["top1_agreement"] == pytest.approx(_agreement(out, v, parent, digits_splits))
    assert all(v["parity"]["agreement_images"] == 32 for v in int8)  # max(--latency-batch, parity images)
    assert all(row["causal"]["top1"]["n"] == 1 for row in report["summary"])  # INT8 twins not mixed in
    assert report["chosen"]["variant"].endswith("-int8") is False
    order = report["benchmark"]["run_order"]["cpu"]
    assert order[: len(variants)] == [f"{name}@1" for name in variants]  # one slice each, then again
    assert report["chosen"]["variant"].startswith("causal-")
    chosen = next(v for v in report["variants"] if v["name"] == report["chosen"]["variant"])
    assert (out / "model.onnx").read_bytes() == (out / chosen["onnx"]).read_bytes()
    onnx.checker.check_model(str(out / "model.onnx"))


def test_json_summary_on_stdout(tmp_path, capsys):
    code = main(
        [
            "run",
            "--out",
            str(tmp_path / "j"),
            "--ratios",
            "0.3",
            "--criteria",
            "causal",
            "--exporter",
            "torchscript",
            "--json",
            *FAST[:-1],  # --json is quiet by itself
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["chosen"]["variant"] == "causal-0.30"
    assert [v["name"] for v in summary["variants"]] == ["original", "causal-0.30"]
    assert summary["output_dir"] == str(tmp_path / "j")
    report = json.loads((tmp_path / "j" / "report.json").read_text())
    assert [v["export"]["exporter"] for v in report["variants"]] == ["torchscript", "torchscript"]
    assert report["warnings"] == []  # the exporter asked for worked: no fallback
    for mine, theirs in zip(summary["variants"], report["variants"], strict=True):
        assert mine["top1"] == theirs["accuracy"]["top1"]
        assert mine["speedup"] == {k: g["speedup"] for k, g in theirs["speedup"]["cpu"].items()}


def _folder(root, classes=3, per_class=10):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def test_torchvision_model_with_weights_and_image_folder(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    folder = _folder(tmp_path / "images")
    out = tmp_path / "r18-out"
    code = main(
        [
            "run",
            "--model",
            "resnet18",
            "--weights",
            str(weights),
            "--data",
            str(folder),
            "--image-size",
            "32",
            "--calibration-size",
            "12",
            "--ratios",
            "0.3",
            "--criteria",
            "causal,random",
            "--random-seeds",
            "1",
            "--latency-batch",
            "4",
            "--out",
            str(out),
            *FAST,
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["calibration_images"] == 12 and report["data"]["evaluation_images"] == 18
    assert report["model"]["output_layers"] == ["fc"]
    assert all(v["parity"]["max_abs_diff"] <= 1e-4 for v in report["variants"])
    assert (out / "pruned.pt").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ratios", "0.5,1.5"], "ratios: each pruning ratio must be in (0, 1), got 1.5"),
        (["--ratios", "abc"], "is not a comma-separated list"),
        (["--ratios", "0.3,,0.5"], "has an empty item; separate the values by single commas"),
        (["--criteria", "causal,magic"], "'magic' is not one of"),
        (["--model", "resnet181"], "did you mean 'resnet18'"),
        (["--weights", "/nonexistent/w.pt"], "checkpoint not found: /nonexistent/w.pt"),
        (["--data", "/nonexistent/images"], "data not found: /nonexistent/images"),
        (["--random-seeds", "0"], "random_seeds must be an integer >= 1"),
        (["--image-size", "1"], "cannot take input of shape (1, 1, 1)"),
        (["--provider", "cuda"], "provider 'cuda' is not available"),
        (["--opset", "99"], "opset must be at most"),
        (["--mean", "0.5,0.5"], "mean/std have 2/1 values but the model takes 1 channels"),
        (["--criteria", "causal", "--ship-criterion", "l1"], "ship criterion 'l1' is not among the criteria run"),
        (["--ratios", ""], "ratios: give at least one pruning ratio, e.g. --ratios 0.3, or a target"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    code = main(["run", "--out", str(out), "--quiet", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("compress: error: ") and message in err[0]
    assert not out.exists() and not list(tmp_path.glob(".never.partial-*"))


def test_existing_output_is_not_overwritten_without_force(tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["run", "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_force_replaces_an_output_with_a_run_of_the_reference_and_intervention_criteria(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("an earlier run")
    (out / "manifest.json").write_text("{}")  # what makes it an earlier result --force may replace
    args = ["run", "--out", str(out), "--force", "--criteria", "causal-reference,intervention", "--ratios", "0.5"]
    args += ["--intervention-images", "32", "--calibration-size", "300", "--no-recalibrate", *FAST]
    args += ["--allocation", "uniform"]  # every group, conv1 included, loses half: which half is the criterion's
    assert main(args) == 0
    assert not (out / "old.txt").exists() and (out / "report.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the old directory is gone, nothing staged is left
    report = json.loads((out / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["original", "causal-reference-0.50", "intervention-0.50"]
    assert report["chosen"]["variant"] == "causal-reference-0.50"  # the first criterion ships when causal is absent
    for v in report["variants"][1:]:  # --no-recalibrate: the accuracy right after pruning is the final one
        assert v["accuracy"]["top1"] == v["accuracy"]["top1_before_recovery"]
    assert report["scoring"]["intervention"]["calibration_images"] == 32
    with np.load(out / "importances.npz") as npz:
        scores = {key: npz[key] for key in npz.files}
    assert {key.split("/")[0] for key in scores} == {"causal-reference", "intervention"}
    # each variant kept the first layer's highest-scored filters by its own criterion (and they differ)
    from compress import get_spec, load_model

    original = load_model(get_spec("digits-cnn"), num_classes=10).model.conv1.weight.detach().numpy()
    kept = {}
    for criterion, v in zip(("causal-reference", "intervention"), report["variants"][1:], strict=True):
        kept[criterion] = _kept_filters(out / v["onnx"], original)
        score = scores[f"{criterion}/group:conv1"]
        removed = np.setdiff1d(np.arange(32), kept[criterion])
        assert len(set(kept[criterion])) == v["widths"]["conv1"] < 32, criterion
        assert score[removed].max() <= score[kept[criterion]].min(), criterion
    assert set(kept["causal-reference"]) != set(kept["intervention"])


def _kept_filters(onnx_path, weight):
    """Which of the original first-layer filters an ONNX file's first conv holds: the exporter folds batch norm
    into it, which scales each filter, so they are matched by direction."""
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_path))
    first = next(numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == "conv1.weight")
    a, b = (w.reshape(len(w), -1) for w in (first, weight))
    cosine = np.abs((a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T)
    assert (cosine.max(1) > 1 - 1e-5).all()
    return sorted(cosine.argmax(1).tolist())


def test_a_parity_failure_is_one_line_and_exit_2(tmp_path, capsys):
    # the digits model's files differ from PyTorch by about 1e-6: a tolerance below that must stop the run
    code = main(["run", "--out", str(tmp_path / "never"), "--ratios", "0.3", "--criteria", "l1", "--parity-tolerance",
                 "1e-12", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("compress: error: ONNX output differs from PyTorch by") and "--parity-tolerance" in err[0]
    assert not list(tmp_path.iterdir())


def test_debug_shows_the_traceback_before_the_one_line(tmp_path, capsys):
    args = ["run", "--out", str(tmp_path / "never"), "--data", "/nonexistent/images", "--quiet"]
    assert main(args) == 2
    plain = capsys.readouterr().err.strip()
    assert main(["--debug", *args]) == 2
    debug = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in plain and len(plain.splitlines()) == 1
    assert debug[0] == "Traceback (most recent call last):" and debug[-1] == plain
    assert any(line.startswith("compress.errors.DataError: data not found") for line in debug)
    assert main(args) == 2 and "Traceback" not in capsys.readouterr().err  # --debug lasts one command


def test_version_and_help(capsys):
    from compress import __version__
    from compress.cli import run

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"compress, version {__version__}"
    assert main(["run", "--help"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("Usage: compress run [OPTIONS]")
    for option in run.params:  # every option of run is listed
        assert all(flag in shown for flag in option.opts), option.name
    assert main(["models"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"digits-cnn", "cifar_resnet20", "cifar_resnet56_b", "resnet18", "mobilenet_v2", "timm:NAME"} <= set(names)


def test_terminated_run_leaves_nothing_that_looks_complete(tmp_path):
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "compress", "run", "--out", str(out), "--ratios", "0.3"],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stderr:  # wait until the run is writing variants
        if "causal scores" in line:
            break
    time.sleep(1.0)
    process.terminate()
    assert process.wait(timeout=60) == 130
    assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_ctrl_c_is_exit_130_with_one_line_and_nothing_written(tmp_path, capsys, monkeypatch):
    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr("compress.pipeline.run", interrupted)
    assert main(["run", "--out", str(tmp_path / "out"), "--quiet"]) == 130
    # click ends the terminal's "^C" line with a newline of its own; then the one message
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert lines == ["compress: interrupted; no results were written"]
    assert not list(tmp_path.iterdir())


def test_ctrl_c_while_the_command_starts_is_honoured(tmp_path):
    # The interrupt arrives while the command line is being imported, as a Ctrl-C in the first
    # seconds does; torch-pruning imports timm inside a bare `except:` that would swallow it.
    import subprocess
    import sys

    out = tmp_path / "out"
    program = (
        "import os, signal, sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'compress.cli':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "sys.argv = ['compress', 'run', '--out', sys.argv[1], '--ratios', '0.3']\n"
        "from compress._console import console_main\n"
        "console_main()\n"
    )
    done = subprocess.run([sys.executable, "-c", program, str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.splitlines() == ["compress: interrupted; no results were written"]
    assert not list(tmp_path.iterdir())


def test_a_command_group_alone_shows_its_help_not_an_error_line(capsys):
    for args, usage in (([], "Usage: compress [OPTIONS] COMMAND"), (["config"], "Usage: compress config")):
        assert main(args) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(usage) and "compress: error" not in captured.err
        assert "Commands:" in captured.err and captured.out == ""


def test_a_bug_is_not_dressed_as_bad_input(tmp_path, monkeypatch):
    def broken(config):
        raise RuntimeError("a bug in a stage")

    monkeypatch.setattr("compress.pipeline.run", broken)
    with pytest.raises(RuntimeError, match="a bug in a stage"):  # its traceback reaches the user
        main(["run", "--out", str(tmp_path / "out"), "--quiet"])


def test_every_config_field_has_a_flag_with_the_same_default():
    import dataclasses

    from compress.cli import run, run_config_from_args
    from compress.config import RunConfig

    flags = {p.name for p in run.params} - {"as_json", "quiet", "config_file"}
    assert flags == {f.name for f in dataclasses.fields(RunConfig)}
    assert run_config_from_args([]) == RunConfig()


def test_explain_writes_the_four_pictures_and_importances(tmp_path, capsys):
    out = tmp_path / "explained"
    code = main(
        ["explain", "--out", str(out), "--criterion", "causal-reference", "--calibration-size", "300", "--json"]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["criterion"] == "causal-reference"
    assert [layer["name"] for layer in summary["layers"]] == ["conv1", "conv2", "conv3", "conv4"]
    for picture in summary["pictures"].values():
        assert (out / picture).read_bytes().startswith(b"\x89PNG")
    with np.load(out / "importances.npz") as scores:
        assert scores["causal-reference/layer:conv1"].shape == (32,)
    assert main(["explain", "--out", str(out), "--quiet"]) == 2  # exists, no --force
    code = main(["explain", "--out", str(tmp_path / "never"), "--tsne-layer", "9", "--quiet"])
    assert code == 2 and "t-SNE layer index 9 is outside the model's 4 conv layers" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
