"""onnxruntime benchmarks: accuracy of each ONNX file, and latency with all variants interleaved.

Latency is timed per call (time.perf_counter around `session.run`) after a warm-up. Variants take
turns in rounds (A B C A B C ...), so a machine that drifts (thermal, other load) moves all of them
alike instead of favouring whichever ran first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .errors import ConfigError
from .evaluation import topk_correct
from .progress import progress

PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def available_providers() -> list[str]:
    """The benchmarkable providers of this onnxruntime build ('cpu', and 'cuda' where present)."""
    present = set(ort.get_available_providers())
    return [alias for alias, name in PROVIDER_ALIASES.items() if name in present]


def default_threads() -> int:
    """One intra-op thread per CPU core available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def make_session(path, provider: str = "cpu", threads: int | None = None) -> ort.InferenceSession:
    """An inference session with all graph optimisations and a stated intra-op thread count."""
    if provider not in PROVIDER_ALIASES:
        raise ConfigError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDER_ALIASES)}")
    if provider not in available_providers():
        raise ConfigError(
            f"onnxruntime provider {provider!r} is not available in this install "
            f"(available: {', '.join(available_providers())})"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    # Idle onnxruntime threads spin by default; with several sessions in one process (interleaved
    # timing) the spinning pools of the idle sessions steal the cores of the one being timed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=[PROVIDER_ALIASES[provider]])


def onnx_accuracy(session: ort.InferenceSession, batches: Iterable, desc: str = "onnx accuracy") -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) of an ONNX classifier over (images, labels) batches."""
    name = session.get_inputs()[0].name
    correct, total = {1: 0, 5: 0}, 0
    for images, labels in progress(batches, desc=desc, unit="batch"):
        logits = session.run(None, {name: np.ascontiguousarray(images.numpy())})[0]
        counts = topk_correct(logits, labels.numpy())
        correct = {k: correct[k] + counts[k] for k in correct}
        total += len(labels)
    return {"top1": 100.0 * correct[1] / max(total, 1), "top5": 100.0 * correct[5] / max(total, 1)}


@dataclass
class LatencySettings:
    warmup: int = 10  # untimed calls per variant before timing
    runs: int = 50  # timed calls per variant and batch size (rounded up to a multiple of rounds)
    rounds: int = 10  # the timed calls are spread over this many interleaved rounds

    def validate(self) -> None:
        for field_name in ("warmup", "runs", "rounds"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < (0 if field_name == "warmup" else 1):
                raise ConfigError(f"latency {field_name} must be a positive integer, got {value!r}")


def summarise(samples_ms: np.ndarray, batch: int) -> dict[str, float]:
    median = float(np.median(samples_ms))
    return {
        "median_ms": median,
        "p90_ms": float(np.percentile(samples_ms, 90)),
        "min_ms": float(samples_ms.min()),
        "spread_iqr_ms": float(np.percentile(samples_ms, 75) - np.percentile(samples_ms, 25)),
        "throughput_ips": batch * 1000.0 / median if median > 0 else float("inf"),
        "runs": len(samples_ms),
    }


def measure_latency(
    sessions: Mapping[str, ort.InferenceSession],
    inputs: Mapping[int, np.ndarray],
    settings: LatencySettings | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Latency of every session at every batch size, interleaved across sessions.

    `inputs` maps a batch size to a real input array of that batch. Returns
    {variant: {"batch_<n>": {median_ms, p90_ms, ...}}}.
    """
    settings = settings or LatencySettings()
    settings.validate()
    names = list(sessions)
    result: dict[str, dict[str, dict[str, float]]] = {name: {} for name in names}
    per_round = max(1, -(-settings.runs // settings.rounds))  # ceil
    total = len(inputs) * settings.rounds * len(names)
    bar = progress(range(total), desc="timing", unit="step")
    for batch, array in inputs.items():
        feeds = {name: {sessions[name].get_inputs()[0].name: np.ascontiguousarray(array)} for name in names}
        for name in names:
            for _ in range(settings.warmup):
                sessions[name].run(None, feeds[name])
        samples: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(settings.rounds):
            for name in names:
                run, feed = sessions[name].run, feeds[name]
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    run(None, feed)
                    samples[name].append((time.perf_counter() - t0) * 1000.0)
                next(bar, None)
        for name in names:
            result[name][f"batch_{batch}"] = summarise(np.asarray(samples[name]), batch)
    return result
