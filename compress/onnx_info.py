"""What an ONNX file says about itself: its input, its preprocessing metadata and its MACs.

`compress bench` works from ONNX files alone, so the speed-up each file's MACs promise is counted
from the graph: shapes by ONNX shape inference at batch 1, then multiply-accumulates of every Conv,
ConvTranspose, Gemm and MatMul (QDQ-quantised files count the same as their float parents).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper, shape_inference

from .errors import ConfigError

# Metadata keys `compress` writes into every exported file (metadata_props).
META_INPUT_SIZE = "compress.input_size"  # "C,H,W"
META_MEAN = "compress.mean"  # "m1,m2,m3"
META_STD = "compress.std"
META_MODEL = "compress.model"
META_VARIANT = "compress.variant"


@dataclass
class OnnxInfo:
    path: Path
    input_name: str
    input_shape: tuple  # per image (C, H, W); entries may be None when the file leaves them symbolic
    fixed_batch: int | None  # the batch size the file requires, None when the batch axis is dynamic
    metadata: dict[str, str]
    macs: int  # per image

    def preprocessing(self) -> tuple[tuple[int, ...] | None, tuple[float, ...] | None, tuple[float, ...] | None]:
        """(input size, mean, std) from the file's metadata; None for what it does not say."""
        return (
            _floats(self.metadata.get(META_INPUT_SIZE), int),
            _floats(self.metadata.get(META_MEAN), float),
            _floats(self.metadata.get(META_STD), float),
        )


def preprocessing_metadata(input_size, mean, std, **extra: str) -> dict[str, str]:
    """The metadata_props that let a file be fed without the code that trained it."""
    return {
        META_INPUT_SIZE: ",".join(str(int(v)) for v in input_size),
        META_MEAN: ",".join(f"{float(v):g}" for v in mean),
        META_STD: ",".join(f"{float(v):g}" for v in std),
        **{f"compress.{k}": str(v) for k, v in extra.items() if v is not None},
    }


def read_onnx_info(path: str | Path) -> OnnxInfo:
    """Read `path` (raise ConfigError if it is missing or not ONNX) and count its MACs per image."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise ConfigError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ConfigError(f"{path} has {len(inputs)} inputs; compress benchmarks image classifiers with one input")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ConfigError(f"{path}: input {inputs[0].name!r} has shape rank {len(dims)}, expected (batch, C, H, W)")
    metadata = {p.key: p.value for p in proto.metadata_props}
    return OnnxInfo(
        path=path,
        input_name=inputs[0].name,
        input_shape=tuple(dims[1:]),
        fixed_batch=dims[0],
        metadata=metadata,
        macs=count_macs(proto, dims[1:]),
    )


def count_macs(proto: onnx.ModelProto, image_shape) -> int:
    """Multiply-accumulates for one image: Conv, ConvTranspose, Gemm and MatMul nodes."""
    if any(d is None for d in image_shape):
        return 0  # symbolic spatial size: nothing to count without an input size
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    initializers = {t.name for t in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in initializers)
    for dim, value in zip(graph_input.type.tensor_type.shape.dim, [1, *image_shape], strict=True):
        dim.Clear()
        dim.dim_value = int(value)
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    for tensor in inferred.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    constants = {
        node.output[0]: list(numpy_helper.to_array(node.attribute[0].t).shape)
        for node in inferred.graph.node
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR
    }
    shapes.update({k: v for k, v in constants.items() if k not in shapes})
    # A weight behind a DequantizeLinear (QDQ files) has the shape of the quantised tensor.
    for node in inferred.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in shapes and node.output[0] not in shapes:
            shapes[node.output[0]] = shapes[node.input[0]]
    total = 0
    for node in inferred.graph.node:
        total += _node_macs(node, shapes)
    return int(total)


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    if node.op_type in ("Conv", "ConvTranspose"):
        weight, out = shapes.get(node.input[1]), shapes.get(node.output[0])
        if weight is None or out is None:
            return 0
        # weight (M, C/g, kh, kw) for Conv: each output element needs C/g * kh * kw MACs.
        if node.op_type == "Conv":
            return math.prod(out) * math.prod(weight[1:])
        inp = shapes.get(node.input[0])
        return math.prod(inp) * math.prod(weight[1:]) if inp else 0
    if node.op_type in ("Gemm", "MatMul"):
        a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
        if a is None or out is None:
            return 0
        transposed = node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute)
        inner = a[-2] if transposed else a[-1]
        return math.prod(out) * inner
    return 0


def _floats(text: str | None, kind):
    if not text:
        return None
    try:
        return tuple(kind(v) for v in text.split(","))
    except ValueError:
        return None
