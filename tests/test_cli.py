"""The command line, end to end on the embedded default and on a torchvision model with an image folder."""

import json

import numpy as np
import onnx
import pytest
import torch
import torchvision
from PIL import Image

from compress.cli import main

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
        "onnx/original.onnx",
        "onnx/causal-0.50.onnx",
    ):
        assert (out / name).is_file(), name
    assert not list(out.parent.glob(".default.partial-*"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"model.onnx", "report.json", "onnx/l1-0.20.onnx"}
    assert manifest["environment"]["versions"]["torch-pruning"]


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
    assert half["onnx_params"] <= 0.4 * original["onnx_params"]
    for row in report["summary"]:
        assert row["causal"]["top1"]["mean"] >= row["random"]["top1"]["mean"]


def test_default_report_sets_speedup_against_macs_and_has_int8_twins(default_run):
    _, out = default_run
    report = json.loads((out / "report.json").read_text())
    variants = {v["name"]: v for v in report["variants"]}
    for v in variants.values():
        for batch in ("batch_1", "batch_32"):
            gain = v["speedup"]["cpu"][batch]
            assert gain["macs_speedup"] == pytest.approx(1 / v["macs_ratio"])
            assert gain["efficiency"] == pytest.approx(gain["speedup"] / gain["macs_speedup"])
            assert v["latency"]["cpu"][batch]["p99_ms"] >= v["latency"]["cpu"][batch]["median_ms"]
    assert variants["original"]["speedup"]["cpu"]["batch_1"]["speedup"] == 1.0
    int8 = [v for v in report["variants"] if v["precision"] == "int8"]
    assert [v["name"] for v in int8] == ["original-int8", "causal-0.20-int8", "causal-0.50-int8"]
    for v in int8:
        parent = variants[v["parent"]]
        assert v["accuracy"]["top1"] >= parent["accuracy"]["top1"] - 1.0
        assert v["quantization"]["format"] == "QDQ" and (out / v["onnx"]).is_file()
        assert v["macs"] == parent["macs"]
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
            "--latency-runs",
            "4",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["chosen"]["variant"] == "causal-0.30"
    assert [v["name"] for v in summary["variants"]] == ["original", "causal-0.30"]


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
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    code = main(["run", "--out", str(out), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not out.exists() and not list(tmp_path.glob(".never.partial-*"))


def test_existing_output_is_not_overwritten_without_force(tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["run", "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_version_and_help():
    assert main(["--version"]) == 0
    assert main(["run", "--help"]) == 0
    assert main(["models"]) == 0


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
