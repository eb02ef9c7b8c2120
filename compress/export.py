"""ONNX export with a dynamic batch axis, checked by onnx.checker and against PyTorch on real inputs.

The file carries its preprocessing (input size, mean, std) and provenance as ONNX metadata, so a
benchmark or a serving stack can feed it correctly without the training code.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnxscript import ir

from .benchmark import run_batched
from .errors import ExportError
from .progress import quiet_library_output

EXPORTERS = ("dynamo", "torchscript")
DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"
PARITY_IMAGES = 32  # real evaluation images every exported file is compared with PyTorch on


@dataclass
class ExportResult:
    path: Path
    exporter: str  # the exporter that produced the file
    opset: int
    onnx_params: int  # elements of the float initializers: the weights the file actually carries
    seconds: float
    fallback_reason: str | None = None  # why the preferred exporter was not used
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
    dynamic_batch: bool = True,
    metadata: Mapping[str, str] | None = None,
    cache: ExportCache | None = None,
) -> ExportResult:
    """Write `model` (eval mode) to `path` as one self-contained ONNX file.

    `exporter="dynamo"` is the torch.export-based exporter PyTorch recommends; if it fails, the
    TorchScript-based one is tried and the reason recorded. The batch axis is symbolic unless
    `dynamic_batch=False` (then it is fixed to the example's batch). `metadata` is stored as the
    file's metadata_props. `onnx.checker` (full check, with shape inference) must pass. With a
    `cache`, a model whose architecture and weight shapes were exported before reuses that translation
    (see ExportCache).
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    for what, name in (("input", input_name), ("output", output_name)):
        if not _IDENTIFIER.fullmatch(name or ""):
            raise ExportError(f"{what} name {name!r} is not a valid ONNX name; use letters, digits and _")
    if input_name == output_name:
        raise ExportError(f"input and output names must differ, both are {input_name!r}")
    path = Path(path)
    model = model.eval()
    if dynamic_batch:  # two images at least: torch.export specialises a batch axis of size 1 to a constant
        example = example_inputs[:2] if len(example_inputs) >= 2 else example_inputs.repeat(2, 1, 1, 1)
    else:
        example = example_inputs
    names = _Names(input_name, output_name, dynamic_batch)
    start = time.perf_counter()
    order = [exporter] + [e for e in EXPORTERS if e != exporter]
    failures: list[str] = []
    for name in order:
        try:
            _EXPORT[name](model, example, path, opset, names, cache)
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
    if metadata:
        onnx.helper.set_model_props(proto, {str(k): str(v) for k, v in metadata.items()})
        onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise ExportError(f"exported file {path} fails onnx.checker: {_summarise(exc)}") from exc
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    return ExportResult(
        path=path,
        exporter=name,
        opset=opset,
        onnx_params=params,
        seconds=time.perf_counter() - start,
        fallback_reason=failures[0] if failures else None,
        input_name=input_name,
        output_name=output_name,
    )


@dataclass(frozen=True)
class _Names:
    input: str
    output: str
    dynamic_batch: bool


class ExportCache:
    """The dynamo exporter's translations, kept for models that differ only in their weights.

    The variants a run prunes at one ratio have the same shapes whatever the criterion or random seed,
    and tracing and translating a model is most of an export's time. A model whose architecture and
    weight shapes were translated before gets a copy of that translation with its own parameters and
    buffers, then the same optimisation as a fresh export: the file has the same operators and weights
    as a fresh export (only generated node names differ; tested, with equal onnxruntime outputs), and
    every file is still checked against PyTorch.
    """

    def __init__(self) -> None:
        self._translations: dict[tuple, bytes] = {}
        self.reused = 0

    def translate(self, model: nn.Module, example: torch.Tensor, opset: int, names: _Names):
        """The unoptimised ONNX program of `model`: from the cache when its key was seen."""
        key = _translation_key(model, example, opset, names)
        saved = self._translations.get(key)
        if saved is not None:
            program = _with_weights(saved, model)
            if program is not None:
                self.reused += 1
                return program
        program = _translate(model, example, opset, names)
        self._translations[key] = ir.serde.serialize_model(program.model).SerializeToString()
        return program


def _translation_key(model: nn.Module, example: torch.Tensor, opset: int, names: _Names) -> tuple:
    tensors = tuple((name, tuple(t.shape), str(t.dtype)) for name, t in _named_tensors(model).items())
    return type(model).__qualname__, tensors, tuple(example.shape[1:]), opset, names


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by the name the exporter gives its initializer (not the state dict:
    fixed selections are left out of that)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _with_weights(translation: bytes, model: nn.Module):
    """A saved translation carrying `model`'s tensors; None if one of its float initializers is not a
    tensor of the model (then it is translated afresh)."""
    proto = onnx.ModelProto.FromString(translation)
    program = torch.onnx.ONNXProgram(ir.serde.deserialize_model(proto), None)
    tensors = _named_tensors(model)
    initializers = program.model.graph.initializers
    if any(v.dtype == ir.DataType.FLOAT and name not in tensors for name, v in initializers.items()):
        return None
    for name, value in initializers.items():
        if name in tensors:
            value.const_value = ir.tensor(tensors[name].detach().cpu().contiguous().numpy(), name=name)
    return program


def _translate(model: nn.Module, example: torch.Tensor, opset: int, names: _Names):
    dynamic = ({0: torch.export.Dim("batch", min=1, max=1 << 16)},) if names.dynamic_batch else None
    with quiet_library_output():
        return torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            dynamic_shapes=dynamic,
            input_names=[names.input],
            output_names=[names.output],
            opset_version=opset,
            optimize=False,  # optimised by the caller, after a cached translation got its weights
            verbose=False,
        )


def _export_dynamo(
    model: nn.Module, example: torch.Tensor, path: Path, opset: int, names: _Names, cache: ExportCache | None
) -> None:
    program = cache.translate(model, example, opset, names) if cache else _translate(model, example, opset, names)
    with quiet_library_output():
        program.optimize()
        program.save(str(path), external_data=False)


def _export_torchscript(
    model: nn.Module, example: torch.Tensor, path: Path, opset: int, names: _Names, cache: ExportCache | None
) -> None:
    with quiet_library_output():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[names.input],
            output_names=[names.output],
            dynamic_axes={names.input: {0: "batch"}, names.output: {0: "batch"}} if names.dynamic_batch else None,
            opset_version=opset,
        )


_EXPORT = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]*")
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
    """How far onnxruntime's logits are from PyTorch's. `max_rel_diff` is the largest absolute
    difference over the largest absolute logit: per-element ratios explode on logits near zero."""

    max_abs_diff: float
    max_rel_diff: float
    images: int
    tolerance: float | None = None

    @property
    def passed(self) -> bool | None:
        return None if self.tolerance is None else self.max_abs_diff <= self.tolerance

    def as_dict(self) -> dict:
        return {
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "images": self.images,
            "tolerance": self.tolerance,
            "passed": self.passed,
        }


@torch.no_grad()
def check_parity(session, model: nn.Module, images: torch.Tensor, tolerance: float | None = None) -> Parity:
    """Compare onnxruntime's logits with PyTorch's on real `images`; raise if over `tolerance` (max abs)."""
    expected = model.eval()(images).numpy()
    got = run_batched(session, images.numpy())
    diff = np.abs(got.astype(np.float64) - expected)
    parity = Parity(
        max_abs_diff=float(diff.max()),
        max_rel_diff=float(diff.max() / max(float(np.abs(expected).max()), 1e-12)),
        images=len(images),
        tolerance=tolerance,
    )
    if tolerance is not None and parity.max_abs_diff > tolerance:
        raise ExportError(
            f"ONNX output differs from PyTorch by {parity.max_abs_diff:.3g} (max abs over {len(images)} images), "
            f"over the tolerance {tolerance:g} (--parity-tolerance); try --exporter torchscript or report the model"
        )
    return parity
