"""`compress bench` on bad input: one line on stderr, exit code 2, nothing on stdout, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.cli import main
from compress.onnx_info import preprocessing_metadata

FAST = [
    "--eval-size",
    "8",
    "--batch",
    "1,4",
    "--latency-runs",
    "1",
    "--latency-min-seconds",
    "0",
    "--latency-window-seconds",
    "0",
    "--warmup",
    "0",
    "--provider",
    "cpu",
    "--threads",
    "1",
]
DIGITS_META = preprocessing_metadata((1, 8, 8), (0.3,), (0.4,))


def _linear(
    path: Path,
    classes: int = 10,
    *,
    input_dims: tuple = ("N", 1, 8, 8),
    input_type: int = TensorProto.FLOAT,
    output_dims: tuple | None = None,
    metadata: dict[str, str] | None = DIGITS_META,
) -> Path:
    """A tiny classifier over 1x8x8 images (Flatten, Gemm), made with onnx.helper: no export needed."""
    nodes = []
    x = "x"
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
        x = "xf"
    nodes += [helper.make_node("Flatten", [x], ["flat"]), helper.make_node("Gemm", ["flat", "w", "b"], ["y"])]
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((64, classes)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "b"),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", input_type, list(input_dims))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_dims or ("N", classes)))],
        initializer=weights,
    )
    return _save(graph, path, metadata)


def _identity(path: Path) -> Path:
    """A file whose output is its 4-D input: not a classifier's (batch, classes) scores."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])],
    )
    return _save(graph, path, DIGITS_META)


def _save(graph: onnx.GraphProto, path: Path, metadata: dict[str, str] | None) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the installed onnxruntime reads, whatever onnx writes by default
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _image_folder(root: Path, classes: int = 2, per_class: int = 3) -> Path:
    from PIL import Image

    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8), 40 * c + i, np.uint8)).save(folder / f"{i}.png")
    return root


def _refused(args: list[str], capsys, tmp_path: Path) -> str:
    """Run `compress bench ARGS --json --report ...`: assert exit 2, one stderr line, empty stdout and
    no file written or left half-written; return the line."""
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    report = tmp_path / "report.json"
    assert main(["bench", *FAST, *args, "--json", "--report", str(report)]) == 2  # ARGS win over FAST
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == ""
    assert len(lines) == 1 and lines[0].startswith("compress: error: "), captured.err
    assert "Traceback" not in captured.err
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing new, nothing touched
    return lines[0]


def test_a_report_on_a_benchmarked_file_is_refused_even_with_force(tmp_path, capsys):
    path = _linear(tmp_path / "m.onnx")
    content = path.read_bytes()
    other = tmp_path / "sub"
    other.mkdir()
    for spelling in (path, other / ".." / "m.onnx"):  # the same file under another name too
        assert main(["bench", str(path), *FAST, "--json", "--report", str(spelling), "--force"]) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert captured.out == "" and len(lines) == 1
        assert "is the benchmarked file" in lines[0] and "choose another --report" in lines[0]
        assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "sub"]  # no staged report left


def test_an_empty_report_path_is_refused(tmp_path, capsys):
    path = _linear(tmp_path / "m.onnx")
    assert main(["bench", str(path), *FAST, "--json", "--report", ""]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        "compress: error: --report is empty; give the JSON file to write, e.g. --report bench.json"
    ]


@pytest.mark.parametrize(("value", "words"), [("", "at least one batch size"), ("0", "got 0"), ("1,-2", "got -2")])
def test_no_or_nonpositive_batch_is_refused(tmp_path, capsys, value, words):
    path = _linear(tmp_path / "m.onnx")
    line = _refused([str(path), "--batch", value], capsys, tmp_path)
    assert line.startswith("compress: error: --batch") and words in line


@pytest.mark.parametrize("value", ["0", "-1"])
def test_nonpositive_batch_size_is_refused(tmp_path, capsys, value):
    path = _linear(tmp_path / "m.onnx")
    line = _refused([str(path), "--batch-size", value], capsys, tmp_path)
    assert line == f"compress: error: --batch-size must be an integer >= 1, got {value}"


@pytest.mark.parametrize(
    "flag, value, words",
    [
        ("--mean", "nan", "--mean values must be finite numbers, got nan"),
        ("--std", "inf", "--std values must be finite numbers, got inf"),
        ("--std", "0", "--std values must be positive, got 0.0"),
    ],
)
def test_a_normalisation_that_is_not_a_finite_positive_number_is_refused(tmp_path, capsys, flag, value, words):
    path = _linear(tmp_path / "m.onnx")
    assert _refused([str(path), flag, value], capsys, tmp_path) == f"compress: error: {words}"


def test_an_image_size_the_file_does_not_take_is_refused(tmp_path, capsys):
    path = _linear(tmp_path / "fixed.onnx")  # input fixed to 1x8x8
    line = _refused([str(path), "--image-size", "16"], capsys, tmp_path)
    assert "fixed.onnx takes 8x8 images" in line and "not --image-size 16" in line and "--image-size 8" in line


def test_an_input_that_is_not_float_is_refused(tmp_path, capsys):
    path = _linear(tmp_path / "ints.onnx", input_type=TensorProto.INT64)
    line = _refused([str(path)], capsys, tmp_path)
    assert "ints.onnx" in line and "takes int64 tensors" in line and "float32" in line


def test_an_output_that_is_not_batch_by_classes_is_refused_unless_only_timed(tmp_path, capsys):
    path = _identity(tmp_path / "image_out.onnx")
    line = _refused([str(path)], capsys, tmp_path)
    assert "image_out.onnx" in line and "(?, 1, 8, 8)" in line and "not a classifier's (batch, classes)" in line
    assert "--no-accuracy" in line
    assert main(["bench", str(path), *FAST, "--no-accuracy", "--json"]) == 0  # timing takes any output
    capsys.readouterr()


def test_a_file_for_other_classes_is_refused_unless_only_timed(tmp_path, capsys):
    three = _linear(tmp_path / "three.onnx", classes=3)
    line = _refused([str(three)], capsys, tmp_path)
    assert "three.onnx has 3 output classes but the data (digits) has 10" in line and "--no-accuracy" in line
    assert main(["bench", str(three), *FAST, "--no-accuracy", "--json"]) == 0
    capsys.readouterr()


def test_a_ten_class_file_on_a_two_class_folder_is_refused(tmp_path, capsys):
    ten = _linear(tmp_path / "ten.onnx")
    folder = _image_folder(tmp_path / "images")
    line = _refused([str(ten), "--data", str(folder)], capsys, tmp_path)
    assert "ten.onnx has 10 output classes but the data" in line and "has 2" in line


def test_a_class_count_the_graph_leaves_open_is_checked_on_a_first_call(tmp_path, capsys):
    # A dynamic spatial size and a symbolic output: only running the file tells its classes.
    path = _linear(tmp_path / "open.onnx", classes=3, input_dims=("N", 1, "H", "W"), output_dims=("N", "K"))
    line = _refused([str(path)], capsys, tmp_path)
    assert "open.onnx has 3 output classes but the data (digits) has 10" in line


def test_a_file_that_fails_at_run_time_is_named_in_one_line(tmp_path, capsys):
    # Dynamic H and W, but the Gemm only fits 8x8 images: onnxruntime fails on the first call.
    path = _linear(tmp_path / "gemm8.onnx", input_dims=("N", 1, "H", "W"))
    line = _refused([str(path), "--image-size", "16"], capsys, tmp_path)
    assert "onnxruntime cannot run" in line and "gemm8.onnx" in line


def test_an_empty_file_is_not_an_onnx_model(tmp_path, capsys):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    line = _refused([str(path)], capsys, tmp_path)
    assert line == f"compress: error: {path} is empty (0 bytes), not an ONNX model; give the .onnx file itself"


def test_a_message_without_a_graph_is_not_an_onnx_model(tmp_path, capsys):
    path = tmp_path / "nograph.onnx"
    path.write_bytes(onnx.ModelProto(ir_version=8).SerializeToString())
    line = _refused([str(path)], capsys, tmp_path)
    assert "nograph.onnx is not an ONNX model" in line and "0 inputs" not in line


def test_a_good_file_still_benchmarks(tmp_path, capsys):
    path = _linear(tmp_path / "m.onnx")
    report = tmp_path / "r.json"
    assert main(["bench", str(path), *FAST, "--json", "--report", str(report)]) == 0
    assert report.is_file() and capsys.readouterr().out.startswith("{")
