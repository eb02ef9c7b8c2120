"""`compress bench`: accuracy and interleaved latency of ONNX files, side by side, in one process.

The first file is the baseline: every other file's speed-up is measured against it in the same run,
and set against the speed-up its MACs (counted from the graph) promise. Inputs are fed as the files'
own metadata says (input size, mean, std, written by `compress export` and `compress run`), or as the
flags say for files from elsewhere.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .artifacts import environment, sha256
from .benchmark import LatencySettings, make_session, onnx_accuracy, resolve_providers, run_batched, time_providers
from .config import check_positive_int
from .data import load_data
from .errors import ConfigError, OutputError, first_line
from .onnx_info import OnnxInfo, format_shape, not_a_classifier, read_onnx_info


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

    def validate(self) -> BenchSettings:
        """Check the sizes (raise ConfigError naming the flag); returns self. Before any file or data is
        read, so a typo fails at once rather than after loading a data set."""
        if not self.batches:
            raise ConfigError("--batch: give at least one batch size to time, e.g. --batch 1,32")
        for b in self.batches:
            check_positive_int("--batch", b)
        for flag, value in (("--batch-size", self.batch_size), ("--eval-size", self.eval_size)):
            if value is not None:
                check_positive_int(flag, value)
        for flag, values in (("--mean", self.mean), ("--std", self.std)):
            if values is not None and not all(math.isfinite(v) for v in values):
                raise ConfigError(f"{flag} values must be finite numbers, got {','.join(map(str, values))}")
        if self.std is not None and not all(v > 0 for v in self.std):
            raise ConfigError(f"--std values must be positive, got {','.join(map(str, self.std))}")
        return self


def bench_files(paths: Sequence[str | Path], settings: BenchSettings | None = None) -> dict[str, Any]:
    """Benchmark the ONNX files `paths` (the first is the baseline); returns the bench report."""
    settings = settings or BenchSettings()
    latency = settings.latency or LatencySettings()
    latency.validate()
    settings.validate()
    if not paths:
        raise ConfigError("give at least one ONNX file to benchmark")
    infos = [read_onnx_info(p) for p in paths]
    names = _variant_names(infos)
    if settings.accuracy:  # top-k needs (batch, classes) scores; timing alone takes any output
        for info in infos:
            info.check_classifier_output()
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
    if settings.accuracy:
        _check_class_counts(infos, splits.num_classes, settings.data)
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
        _probe(
            sessions[name], info, inputs[batches[0]], splits.num_classes if settings.accuracy else None, settings.data
        )
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
    channels = size[0] if size is not None else infos[0].input_shape[0]
    if settings.image_size is not None and channels is not None:
        size = (channels, settings.image_size, settings.image_size)
    if size is None:
        raise ConfigError(f"{infos[0].path} does not say its input size; pass --image-size")
    # A dimension the file fixes cannot be fed another size: onnxruntime would refuse it mid-run.
    for info in infos:
        shape = info.input_shape
        if all(d is None or d == s for d, s in zip(shape, size, strict=True)):
            continue
        if settings.image_size is not None and shape[1:] != tuple(size[1:]) and shape[1] and shape[2]:
            hint = f"pass --image-size {shape[1]} or leave it out" if shape[1] == shape[2] else "leave it out"
            raise ConfigError(
                f"{info.path} takes {shape[1]}x{shape[2]} images (fixed in the file), not --image-size "
                f"{settings.image_size}; {hint}"
            )
        if info is infos[0]:  # its metadata says one size, its graph another
            raise ConfigError(
                f"{info.path} takes input {format_shape(shape)} (fixed in the file) but its compress.input_size "
                f"metadata says {tuple(size)}; re-export the file with matching metadata"
            )
        raise ConfigError(
            f"{info.path} takes input {format_shape(shape)}, but {infos[0].path} takes {tuple(size)}; "
            "benchmark files of one input size together"
        )
    mean = settings.mean or found[0][1]
    std = settings.std or found[0][2]
    if mean is None or std is None:
        raise ConfigError(f"{infos[0].path} carries no normalisation metadata; pass --mean and --std")
    return tuple(size), tuple(mean), tuple(std)


def check_report_path(report: str | Path, paths: Sequence[str | Path]) -> Path:
    """The --report file, refused (ConfigError, OutputError) when empty or one of the benchmarked
    `paths`: --force replaces existing reports, never the files being measured."""
    if not str(report).strip():
        raise ConfigError("--report is empty; give the JSON file to write, e.g. --report bench.json")
    target = Path(report).expanduser()
    for path in paths:
        if _same_file(target, Path(path)):
            raise OutputError(
                f"--report {report} is the benchmarked file {path}; writing the report would replace it "
                "(even with --force); choose another --report file"
            )
    return target


def _same_file(a: Path, b: Path) -> bool:
    """One file under two names: the same resolved path, or (for links) the same inode."""
    if a.resolve() == b.expanduser().resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): they cannot be one file
        return False


def _check_class_counts(infos: list[OnnxInfo], data_classes: int, data: str) -> None:
    """Top-1 of a file scoring other classes than the data's labels is meaningless: refuse it, as
    `compress run` and `export` refuse weights for other classes."""
    for info in infos:
        if info.num_classes is not None and info.num_classes != data_classes:
            raise _other_classes(info.path, info.num_classes, data_classes, data)


def _other_classes(path: Path, found: int, classes: int, data: str) -> ConfigError:
    return ConfigError(
        f"{path} has {found} output classes but the data ({data}) has {classes}; "
        "use data with the file's classes (--data), or pass --no-accuracy to time it only"
    )


def _probe(session: Any, info: OnnxInfo, images: Any, classes: int | None, data: str) -> None:
    """One call on real images before timing: a file that fails at run time (a reshape fixed to
    another input size) or, with `classes`, gives other than (batch, classes) scores is named in one
    line, where the graph alone could not tell."""
    try:
        out = run_batched(session, images)
    except Exception as exc:  # onnxruntime raises its own (multi-line) error types
        raise ConfigError(
            f"onnxruntime cannot run {info.path} on {tuple(images.shape)} float32 images: {first_line(exc)}"
        ) from exc
    if classes is None:
        return
    if out.ndim != 2:
        raise not_a_classifier(info.path, tuple(out.shape))
    if out.shape[1] != classes:
        raise _other_classes(info.path, out.shape[1], classes, data)
