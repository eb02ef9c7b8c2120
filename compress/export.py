"""ONNX export with a dynamic batch axis, checked by onnx.checker and against PyTorch on real inputs."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from .errors import ExportError

EXPORTERS = ("dynamo", "torchscript")
DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class ExportResult:
    path: Path
    exporter: str  # the exporter that produced the file
    opset: int
    onnx_params: int  # elements of the float initializers: the weights the file actually carries
    seconds: float
    fallback_reason: str | None = None  # why the preferred exporter was not used


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
) -> ExportResult:
    """Write `model` (eval mode) to `path` as one self-contained ONNX file with a dynamic batch axis.

    `exporter="dynamo"` is the torch.export-based exporter PyTorch recommends; if it fails, the
    TorchScript-based one is tried and the reason recorded. `onnx.checker` (with shape inference)
    must pass.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    path = Path(path)
    model = model.eval()
    # Two images at least: torch.export specialises a batch axis of size 1 to a constant.
    example = example_inputs[:2] if len(example_inputs) >= 2 else example_inputs.repeat(2, 1, 1, 1)
    start = time.perf_counter()
    order = [exporter] + [e for e in EXPORTERS if e != exporter]
    failures: list[str] = []
    for name in order:
        try:
            _EXPORT[name](model, example, path, opset)
            proto = onnx.load(str(path))
            produced = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
            if produced != opset:  # the dynamo exporter cannot write opsets below its own
                raise ExportError(f"it wrote opset {produced}, not the requested {opset}")
            break
        except Exception as exc:  # each exporter fails in its own ways; the next one may succeed
            failures.append(f"{name}: {_summarise(exc)}")
            path.unlink(missing_ok=True)
    else:
        operators = _operators_named(failures)
        what = f"unsupported operator {', '.join(operators)}; " if operators else ""
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {what}{'; '.join(failures)}")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"exported file {path} fails onnx.checker: {_summarise(exc)}") from exc
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    return ExportResult(
        path=path,
        exporter=name,
        opset=opset,
        onnx_params=params,
        seconds=time.perf_counter() - start,
        fallback_reason=failures[0] if failures else None,
    )


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with _quiet():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            external_data=False,
            dynamic_shapes=({0: batch},),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            optimize=True,
            verbose=False,
        )


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with _quiet():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
        )


_EXPORT = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


@contextlib.contextmanager
def _quiet():
    """The exporters print progress, log tracebacks of what they recover from and warn about
    deprecations; failures that matter reach us as exceptions, so keep the user's terminal clean."""
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ATEN_OP = re.compile(r"aten(?:::|\.)([A-Za-z_][A-Za-z0-9_]*)")


def _summarise(exc: BaseException) -> str:
    """The exception as one short line, with the operator it names if there is one."""
    text = _ANSI.sub("", str(exc))
    operators = sorted(set(_ATEN_OP.findall(text)))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    named = f" [aten::{', aten::'.join(operators)}]" if operators else ""
    return f"{type(exc).__name__}: {first[:200]}{named}"


def _operators_named(failures: list[str]) -> list[str]:
    return sorted({f"aten::{op}" for failure in failures for op in _ATEN_OP.findall(failure)})


@dataclass
class Parity:
    max_abs_diff: float
    max_rel_diff: float
    images: int

    def as_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff, "images": self.images}


@torch.no_grad()
def check_parity(session, model: nn.Module, images: torch.Tensor, tolerance: float | None = None) -> Parity:
    """Compare onnxruntime's logits with PyTorch's on real `images`; raise if over `tolerance` (max abs)."""
    expected = model.eval()(images).numpy()
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    diff = np.abs(got - expected)
    parity = Parity(
        max_abs_diff=float(diff.max()),
        max_rel_diff=float((diff / np.maximum(np.abs(expected), 1e-6)).max()),
        images=len(images),
    )
    if tolerance is not None and parity.max_abs_diff > tolerance:
        raise ExportError(
            f"ONNX output differs from PyTorch by {parity.max_abs_diff:.3g} (max abs over {len(images)} images), "
            f"over the tolerance {tolerance:g}; try --exporter torchscript or report the model"
        )
    return parity
