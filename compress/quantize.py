"""INT8 variants through onnxruntime's static quantisation: QDQ format, per-channel weights.

The activation ranges are calibrated on the same calibration images that scored the filters, so the
INT8 file is as data-aware as the pruning. Weights are quantised to 7 bits (`reduce_range`) by
default: onnxruntime's U8S8 kernels on CPUs without VNNI (AVX2, most AVX-512) can saturate 8-bit
products; on the embedded default this kept INT8 top-1 equal to fp32 (100%) where full 8-bit weights
lost 0.56 points, at the same speed (BENCHMARKS.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .artifacts import scratch_directory
from .benchmark import require_onnxruntime
from .errors import ExportError
from .onnx_info import read_onnx_info
from .progress import quiet_library_output


@dataclass
class QuantizeResult:
    path: Path
    calibration_images: int
    per_channel: bool
    reduce_range: bool
    method: str
    seconds: float


def quantize_int8(
    fp32_path: str | Path,
    path: str | Path,
    calibration: Iterable[tuple[torch.Tensor, torch.Tensor] | torch.Tensor],
    *,
    max_images: int = 512,
    per_channel: bool = True,
    reduce_range: bool = True,
    method: str = "minmax",
) -> QuantizeResult:
    """Write a static INT8 (QDQ) copy of the ONNX file `fp32_path` to `path`.

    `calibration` yields image batches (or (images, labels) pairs); up to `max_images` of them set the
    activation ranges. `method` is onnxruntime's calibration: 'minmax', 'entropy' or 'percentile'.
    """
    require_onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise ExportError(f"unknown calibration method {method!r}; choose one of {', '.join(methods)}")
    fp32_path, path = Path(fp32_path), Path(path)
    info = read_onnx_info(fp32_path)
    reader = _CalibrationReader(info.input_name, calibration, max_images, info.fixed_batch)
    if reader.images == 0:
        raise ExportError("INT8 calibration needs at least one calibration image")
    start = time.perf_counter()
    with scratch_directory("compress-int8-") as tmp, quiet_library_output():
        # Pre-processing folds batch norms and infers shapes: quantisation works on the fused graph.
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(path),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                reduce_range=reduce_range,
                calibrate_method=methods[method],
                extra_options={"CalibTensorRangeSymmetric": False},
            )
        except Exception as exc:  # the quantiser raises plain exceptions for graphs it cannot handle
            path.unlink(missing_ok=True)
            text = str(exc).splitlines()[0] if str(exc) else ""
            raise ExportError(f"INT8 quantisation of {fp32_path} failed ({type(exc).__name__}: {text})") from exc
    return QuantizeResult(
        path=path,
        calibration_images=reader.images,
        per_channel=per_channel,
        reduce_range=reduce_range,
        method=method,
        seconds=time.perf_counter() - start,
    )


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over our batches (`get_next` until None)."""

    def __init__(self, input_name: str, batches: Iterable, max_images: int, static_batch: int | None = None):
        kept, self.images = [], 0
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            images = images[: max_images - self.images]
            if len(images) == 0:
                break
            kept.append(np.ascontiguousarray(images.numpy(), dtype=np.float32))
            self.images += len(images)
        if static_batch and kept:  # a file with a fixed batch takes feeds of exactly that size
            images = np.concatenate(kept)
            images = np.concatenate([images] * -(-static_batch // len(images)))  # too few: repeated
            usable = len(images) - len(images) % static_batch
            kept = list(np.split(images[:usable], usable // static_batch))
        self.feeds = [{input_name: chunk} for chunk in kept]
        self._iter = iter(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self.feeds)
