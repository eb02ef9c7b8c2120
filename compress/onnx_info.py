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
    # The first output's shape, batch axis included (entries None where symbolic); None when neither
    # the file nor shape inference says. A classifier's is (batch, classes).
    output_shape: tuple | None = None

    @property
    def num_classes(self) -> int | None:
        """The classes the first output scores, when the file fixes them; else None."""
        if self.output_shape is None or len(self.output_shape) != 2:
            return None
        return self.output_shape[1]

    def check_classifier_output(self) -> None:
        """Raise ConfigError unless the first output can be a classifier's (batch, classes) scores:
        top-k accuracy ranks scores along axis 1, so any other rank gives a meaningless number."""
        if self.output_shape is not None and len(self.output_shape) != 2:
            raise not_a_classifier(self.path, self.output_shape)

    def preprocessing(self) -> tuple[tuple[int, ...] | None, tuple[float, ...] | None, tuple[float, ...] | None]:
        """(input size, mean, std) from the file's metadata; None for what it does not say."""
        return (
            _floats(self.metadata.get(META_INPUT_SIZE), int),
            _floats(self.metadata.get(META_MEAN), float),
            _floats(self.metadata.get(META_STD), float),
        )


def format_shape(dims: tuple) -> str:
    """(3, 32, 32), with ? for a symbolic entry."""
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def not_a_classifier(path: Path, shape: tuple) -> ConfigError:
    """The error for a file whose output is not (batch, classes) scores."""
    return ConfigError(
        f"{path}: output has shape {format_shape(shape)}, not a classifier's (batch, classes); "
        "benchmark a classifier, or pass --no-accuracy to time it only"
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
    """Read `path` (raise ConfigError if it is missing, not ONNX, or not an image classifier's input)
    and count its MACs per image."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ONNX file not found: {path}")
    if path.stat().st_size == 0:
        # onnx.load reads 0 bytes as an empty model, which would be reported as "0 inputs".
        raise ConfigError(f"{path} is empty (0 bytes), not an ONNX model; give the .onnx file itself")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise ConfigError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    if not proto.HasField("graph") or not proto.graph.output:
        # Some non-ONNX bytes happen to decode as a protobuf message with no graph in it.
        raise ConfigError(f"{path} is not an ONNX model (it holds no graph with outputs); give the .onnx file itself")
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ConfigError(f"{path} has {len(inputs)} inputs; compress benchmarks image classifiers with one input")
    _check_input_type(path, inputs[0])
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ConfigError(f"{path}: input {inputs[0].name!r} has shape rank {len(dims)}, expected (batch, C, H, W)")
    metadata = {p.key: p.value for p in proto.metadata_props}
    inferred = _infer_at_batch_1(proto, dims[1:])
    return OnnxInfo(
        path=path,
        input_name=inputs[0].name,
        input_shape=tuple(dims[1:]),
        fixed_batch=dims[0],
        metadata=metadata,
        macs=_count_macs(inferred) if inferred is not None else 0,
        output_shape=_output_shape(proto, inferred),
    )


def _check_input_type(path: Path, graph_input: onnx.ValueInfoProto) -> None:
    """Images are fed as float32 tensors: any other input type fails inside onnxruntime."""
    kind = graph_input.type.WhichOneof("value")
    elem_type = graph_input.type.tensor_type.elem_type if kind == "tensor_type" else None
    if elem_type == onnx.TensorProto.FLOAT:
        return
    if elem_type is None:
        found = f"a {kind or 'typeless'} value, not a tensor"
    else:
        found = f"{onnx.TensorProto.DataType.Name(elem_type).lower()} tensors"
    raise ConfigError(
        f"{path}: input {graph_input.name!r} takes {found}; compress feeds images as float32 tensors, "
        "so give a classifier with a float32 (batch, C, H, W) input"
    )


def _output_shape(proto: onnx.ModelProto, inferred: onnx.ModelProto | None) -> tuple | None:
    """The first output's shape as the file declares it, its symbolic entries (batch aside) filled in
    from shape inference at batch 1; None when neither says."""
    declared = _dims(proto.graph.output[0])
    found = _dims(inferred.graph.output[0]) if inferred is not None else None
    if found is not None:
        found = (None, *found[1:]) if found else ()  # inference ran at batch 1, not the file's batch
    if declared is None or (found is not None and len(found) != len(declared)):
        return found
    if found is None:
        return declared
    return tuple(d if d is not None else f for d, f in zip(declared, found, strict=True))


def _dims(value: onnx.ValueInfoProto) -> tuple | None:
    """A tensor's shape (None for symbolic entries), or None when it has no shape."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)


def count_macs(proto: onnx.ModelProto, image_shape) -> int:
    """Multiply-accumulates for one image: Conv, ConvTranspose, Gemm and MatMul nodes."""
    inferred = _infer_at_batch_1(proto, image_shape)
    return _count_macs(inferred) if inferred is not None else 0


def _infer_at_batch_1(proto: onnx.ModelProto, image_shape) -> onnx.ModelProto | None:
    """A copy of `proto` with its input fixed to (1, *image_shape) and shapes inferred; None when the
    spatial size is symbolic (nothing to infer without an input size)."""
    if any(d is None for d in image_shape):
        return None
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    initializers = {t.name for t in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in initializers)
    for dim, value in zip(graph_input.type.tensor_type.shape.dim, [1, *image_shape], strict=True):
        dim.Clear()
        dim.dim_value = int(value)
    return shape_inference.infer_shapes(model, data_prop=True)


def _count_macs(inferred: onnx.ModelProto) -> int:
    """`count_macs` of a model whose shapes `_infer_at_batch_1` inferred."""
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
