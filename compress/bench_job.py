"""`compress bench`: accuracy and interleaved latency of ONNX files, side by side, in one process.

The first file is the baseline: every other file's speed-up is measured against it in the same run,
and set against the speed-up its MACs (counted from the graph) promise. Inputs are fed as the files'
own metadata says (input size, mean, std, written by `compress export` and `compress run`), or as the
flags say for files from elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .artifacts import environment, sha256
from .benchmark import LatencySettings, make_session, onnx_accuracy, resolve_providers, time_providers
from .data import load_data
from .errors import ConfigError
from .onnx_info import OnnxInfo, read_onnx_info


@dataclass
class BenchSettings:
    data: str = "digits"
    data_root: str | None = None
    download: bool = False
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    eval_size: int | None = None
    batch_size: int = 128
    seed: int = 0
    providers: tuple[str, ...] | None = None
    threads: int | None = None
    batches: tuple[int, ...] = (1, 32)
    latency: LatencySettings | None = None
    accuracy: bool = True


def bench_files(paths: Sequence[str | Path], settings: BenchSettings | None = None) -> dict[str, Any]:
    """Benchmark the ONNX files `paths` (the first is the baseline); returns the bench report."""
    settings = settings or BenchSettings()
    latency = settings.latency or LatencySettings()
    latency.validate()
    if not paths:
        raise ConfigError("give at least one ONNX file to benchmark")
    if any(b < 1 for b in settings.batches):
        raise ConfigError(f"batch sizes must be positive, got {settings.batches}")
    infos = [read_onnx_info(p) for p in paths]
    names = _variant_names(infos)
    input_size, mean, std = _preprocessing(infos, settings)
    providers = resolve_providers(settings.providers)
    splits = load_data(
        settings.data,
        input_size=input_size,
        mean=mean,
        std=std,
        root=settings.data_root,
        calibration_size=2,  # nothing is calibrated here; the evaluation split is what counts
        evaluation_size=settings.eval_size,
        seed=settings.seed,
        download=settings.download,
    )
    batches = sorted(set(settings.batches))
    for info in infos:
        if info.fixed_batch is not None and any(b != info.fixed_batch for b in batches):
            raise ConfigError(
                f"{info.path} has a fixed batch size of {info.fixed_batch}; "
                f"benchmark it with --batch {info.fixed_batch}"
            )
    images = splits.evaluation_batch(max(batches))
    inputs = {b: images[:b].numpy() for b in batches}
    records: list[dict[str, Any]] = []
    files = dict(zip(names, (info.path for info in infos), strict=True))
    sessions = {name: make_session(path, providers[0], settings.threads) for name, path in files.items()}
    for name, info in zip(names, infos, strict=True):
        records.append(
            {
                "name": name,
                "file": str(info.path),
                "sha256": sha256(info.path),
                "bytes": info.path.stat().st_size,
                "macs": info.macs,
                "macs_ratio": info.macs / infos[0].macs if infos[0].macs else None,
                "accuracy": (
                    onnx_accuracy(sessions[name], splits.loader("evaluation", settings.batch_size), desc=name)
                    if settings.accuracy
                    else None
                ),
                "latency": {},
                "speedup": {},
            }
        )
    timed = time_providers(
        files,
        inputs,
        latency,
        providers,
        macs={r["name"]: r["macs"] for r in records},
        baseline=names[0],
        threads=settings.threads,
        sessions=sessions,
    )
    for provider, timing in timed.items():
        for record in records:
            record["latency"][provider] = timing.latency[record["name"]]
            record["speedup"][provider] = timing.speedup[record["name"]]
    return {
        "schema": "compress.bench/1",
        "compress_version": __version__,
        "baseline": names[0],
        "data": {**splits.info, "input_size": list(input_size), "mean": list(mean), "std": list(std)},
        "benchmark": {
            "providers": providers,
            "threads": int(next(iter(sessions.values())).get_session_options().intra_op_num_threads),
            "batches": batches,
            "warmup": latency.warmup,
            "runs": latency.runs,
            "min_seconds": latency.min_seconds,
            "window_seconds": latency.window_seconds,
            "rounds": latency.rounds,
            "slice_seconds": latency.slice_seconds,
            "interleaved": True,
            "run_order": {provider: timing.order for provider, timing in timed.items()},
            "io_binding": True,
        },
        "variants": records,
        "environment": environment(),
    }


def _variant_names(infos: list[OnnxInfo]) -> list[str]:
    """File stems, made unique (the same stem from two folders gets its folder in front)."""
    stems = [info.path.stem for info in infos]
    names = []
    for info, stem in zip(infos, stems, strict=True):
        name = stem if stems.count(stem) == 1 else f"{info.path.parent.name}/{stem}"
        if name in names:
            raise ConfigError(f"{info.path} is given twice")
        names.append(name)
    return names


def _preprocessing(infos: list[OnnxInfo], settings: BenchSettings):
    """The input size, mean and std every file is fed with: flags first, then the files' metadata."""
    found = [info.preprocessing() for info in infos]
    size = found[0][0] or (tuple(infos[0].input_shape) if all(infos[0].input_shape) else None)
    if settings.image_size is not None and size is not None:
        size = (size[0], settings.image_size, settings.image_size)
    if size is None:
        raise ConfigError(f"{infos[0].path} does not say its input size; pass --image-size")
    for info in infos[1:]:
        shape = info.input_shape
        if all(shape) and tuple(shape) != tuple(size):
            raise ConfigError(f"{info.path} takes input {tuple(shape)}, but {infos[0].path} takes {tuple(size)}")
    mean = settings.mean or found[0][1]
    std = settings.std or found[0][2]
    if mean is None or std is None:
        raise ConfigError(f"{infos[0].path} carries no normalisation metadata; pass --mean and --std")
    return tuple(size), tuple(mean), tuple(std)
