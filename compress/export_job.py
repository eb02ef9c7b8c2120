"""`compress export`: one model to one checked ONNX file (and optionally its INT8 twin).

The model is either an architecture with its weights (as `compress run` loads it) or a pruned.pt
written by `compress run`. The file is exported, checked by onnx.checker, compared with PyTorch on
real evaluation images (failure is an error), and only then renamed into place.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import __version__
from .artifacts import OutputFiles, disk_errors, environment, sha256
from .benchmark import make_session, onnx_accuracy
from .config import RunConfig
from .data import load_splits
from .errors import ConfigError
from .export import PARITY_IMAGES, check_parity, export_onnx
from .onnx_info import preprocessing_metadata, read_onnx_info
from .quantize import quantize_int8
from .serialization import load_pruned_with_info
from .zoo import check_model_accepts, get_spec, load_model


def int8_path(path: str | Path) -> Path:
    """Where the INT8 twin of `path` goes: model.onnx -> model.int8.onnx."""
    path = Path(path)
    return path.with_name(f"{path.stem}.int8{path.suffix or '.onnx'}")


def export_model(
    config: RunConfig,
    output: str | Path,
    *,
    pruned: str | Path | None = None,
    input_name: str = "input",
    output_name: str = "logits",
    static_batch: int | None = None,
) -> dict[str, Any]:
    """Export `config.model` (or the pruned model in `pruned`) to `output`; returns a summary."""
    config.validate()
    if static_batch is not None and static_batch < 1:
        raise ConfigError(f"static batch must be a positive integer, got {static_batch}")
    output = Path(output)
    if output.suffix != ".onnx":
        raise ConfigError(f"output {output} should end in .onnx")
    start = time.perf_counter()
    with OutputFiles(force=config.force) as files:
        staged = files.stage(output)
        staged_int8 = files.stage(int8_path(output)) if config.int8 else None
        model, name, source, splits = _load(config, pruned)
        example = splits.example_batch(max(static_batch or 2, 2))
        check_model_accepts(model, example, splits.num_classes)
        metadata = preprocessing_metadata(splits.input_size, splits.mean, splits.std, model=name, source=source)
        with disk_errors(staged):
            exported = export_onnx(
                model,
                example[:static_batch] if static_batch else example,
                staged,
                opset=config.opset,
                exporter=config.exporter,
                input_name=input_name,
                output_name=output_name,
                dynamic_batch=static_batch is None,
                metadata=metadata,
            )
        session = make_session(staged, "cpu", config.threads)
        images = splits.evaluation_batch(PARITY_IMAGES)
        parity = check_parity(session, model, images, tolerance=config.parity_tolerance)
        evaluation = splits.loader("evaluation", static_batch or config.batch_size)
        summary: dict[str, Any] = {
            "schema": "compress.export/1",
            "compress_version": __version__,
            "model": name,
            "source": source,
            "file": str(output),
            "exporter": exported.exporter,
            "fallback_reason": exported.fallback_reason,
            "opset": exported.opset,
            "input": {"name": input_name, "batch": static_batch or "dynamic", "size": list(splits.input_size)},
            "output": {"name": output_name},
            "macs": read_onnx_info(staged).macs,
            "parity": parity.as_dict(),
            "accuracy": onnx_accuracy(session, evaluation, desc="onnx accuracy"),
            "data": splits.info,
        }
        if staged_int8 is not None:
            calibration = splits.loader("calibration", config.batch_size)
            with disk_errors(staged_int8):
                quantised = quantize_int8(staged, staged_int8, calibration, max_images=config.int8_images)
            int8_session = make_session(staged_int8, "cpu", config.threads)
            int8_accuracy = onnx_accuracy(int8_session, evaluation, desc="int8 accuracy")
            summary["int8"] = {
                "file": str(int8_path(output)),
                "accuracy": int8_accuracy,
                "top1_drop": summary["accuracy"]["top1"] - int8_accuracy["top1"],
                "parity": check_parity(int8_session, model, images).as_dict(),
                "calibration_images": quantised.calibration_images,
                "reduce_range": quantised.reduce_range,
            }
        files.commit()
    summary["sha256"] = sha256(output)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["environment"] = environment()
    return summary


def _load(config: RunConfig, pruned: str | Path | None):
    """(model, architecture name, where it came from, data splits sized for it)."""
    if pruned is not None:
        model, info = load_pruned_with_info(pruned, trust_code=config.trust_code)
        input_size, mean, std, channels_known = tuple(info["input_size"]), info["mean"], info["std"], True
        name, source = info["architecture"], f"{pruned} ({info.get('variant')})"
    else:
        spec = get_spec(config.model, trust_code=config.trust_code)
        input_size, mean, std, channels_known = spec.input_size, spec.mean, spec.std, spec.channels_known
        name, model, source = spec.name, None, None
    splits = load_splits(config, input_size, mean, std, channels_known)
    if model is None:
        loaded = load_model(spec, config.weights, splits.num_classes, trust_checkpoint=config.trust_checkpoint)
        model, source = loaded.model, loaded.weights or "random initialisation"
    return model.eval(), name, source, splits
