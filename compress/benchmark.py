"""onnxruntime benchmarks: accuracy of each ONNX file, and latency with all variants interleaved.

Latency is timed per call (time.perf_counter around the run) after a warm-up, with inputs and
outputs bound to the provider's device beforehand (I/O binding), so a GPU provider is timed without
host copies and every provider goes through the same code. Variants take turns in rounds
(A B C A B C ...), so a machine that drifts (thermal, other load) moves all of them alike instead of
favouring whichever ran first; the order is recorded so a report shows it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, first_line
from .evaluation import count_hits, percentages
from .progress import progress_bar, quiet_library_output

try:
    import onnxruntime as ort
except ImportError:  # the cpu or gpu extra brings it; say which instead of a traceback
    ort = None

# A provider name users type -> the onnxruntime execution providers to ask for, in order (the later
# ones take the operators the first cannot run), and the device its inputs and outputs live on.
PROVIDERS: dict[str, tuple[tuple[str, ...], str]] = {
    "cpu": (("CPUExecutionProvider",), "cpu"),
    "cuda": (("CUDAExecutionProvider", "CPUExecutionProvider"), "cuda"),
    "tensorrt": (("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"), "cuda"),
}


# Full float32 on the GPU: TF32 convolutions would miss the 1e-4 parity the exported files promise
# (and time a different precision than the CPU's).
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"use_tf32": "0"}}


def require_onnxruntime():
    """The onnxruntime module, or a clear error saying how to install it."""
    if ort is None:
        raise ConfigError(
            "onnxruntime is not installed: pip install 'compress[cpu]' (or 'compress[gpu]' for CUDA and TensorRT)"
        )
    return ort


def available_providers() -> list[str]:
    """The benchmarkable providers of this onnxruntime build: 'cpu', and 'cuda'/'tensorrt' where present."""
    present = set(require_onnxruntime().get_available_providers())
    return [alias for alias, (names, _) in PROVIDERS.items() if names[0] in present]


def resolve_providers(requested: Sequence[str] | None) -> list[str]:
    """The providers to benchmark: those asked for (each must be present) or every present one."""
    present = available_providers()
    if requested is None:  # TensorRT builds an engine per file: only when asked for
        return [p for p in present if p != "tensorrt"]
    missing = [p for p in requested if p not in present]
    if missing:
        raise ConfigError(
            f"onnxruntime provider {missing[0]!r} is not available here (available: {', '.join(present)}); "
            "for cuda and tensorrt install the gpu extra (onnxruntime-gpu, which replaces onnxruntime)"
        )
    return list(requested)


def default_threads() -> int:
    """One intra-op thread per CPU core available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def make_session(path: str | Path, provider: str = "cpu", threads: int | None = None):
    """An inference session with all graph optimisations and a stated intra-op thread count.

    Raises ConfigError when `provider` is unknown, absent from this install, or fails to load (a GPU
    provider whose CUDA libraries are missing would otherwise fall back to the CPU silently).
    """
    runtime = require_onnxruntime()
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    if provider not in available_providers():
        raise ConfigError(
            f"onnxruntime provider {provider!r} is not available in this install "
            f"(available: {', '.join(available_providers())}); for cuda and tensorrt install the gpu extra "
            "(onnxruntime-gpu, which replaces onnxruntime)"
        )
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    options = runtime.SessionOptions()
    options.graph_optimization_level = runtime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    # Idle onnxruntime threads spin by default; with several sessions in one process (interleaved
    # timing) the spinning pools of the idle sessions steal the cores of the one being timed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    wanted = PROVIDERS[provider][0]
    chain = [(name, dict(PROVIDER_OPTIONS.get(name, {}))) for name in wanted]
    if provider != "cpu":
        # A GPU provider that cannot load its libraries makes onnxruntime log the failure and print its
        # fallback on stdout (into --json output); the check below says it in one line instead.
        runtime.set_default_logger_severity(4)
    try:
        with quiet_library_output():
            session = runtime.InferenceSession(str(path), sess_options=options, providers=chain)
    except Exception as exc:  # a corrupt file, an operator the runtime lacks
        raise ConfigError(f"onnxruntime cannot load {path}: {first_line(exc)}") from exc
    if session.get_providers()[0] != wanted[0]:
        raise ConfigError(
            f"onnxruntime provider {provider!r} failed to start for {path} (running on "
            f"{session.get_providers()[0]} instead); check the CUDA, cuDNN and TensorRT libraries"
        )
    return session


def onnx_accuracy(session, batches: Iterable, desc: str = "onnx accuracy") -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) of an ONNX classifier over (images, labels) batches."""
    return percentages(onnx_hits(session, batches, desc))


def onnx_hits(session, batches: Iterable, desc: str = "onnx accuracy") -> dict[str, int]:
    """`evaluation.count_hits` of an ONNX classifier: counts that processes can sum."""
    return count_hits(lambda images: run_batched(session, images.numpy()), batches, desc)


def run_batched(session, array: np.ndarray) -> np.ndarray:
    """The session's first output for `array`, fed in chunks when the file has a fixed batch size
    (the last chunk padded by repetition, the padding dropped)."""
    meta = session.get_inputs()[0]
    batch = meta.shape[0] if meta.shape and isinstance(meta.shape[0], int) else None
    if batch is None or batch == len(array):
        return session.run(None, {meta.name: np.ascontiguousarray(array)})[0]
    outputs = []
    for start in range(0, len(array), batch):
        chunk = array[start : start + batch]
        padded = np.concatenate([chunk] * -(-batch // len(chunk)))[:batch]
        outputs.append(session.run(None, {meta.name: np.ascontiguousarray(padded)})[0][: len(chunk)])
    return np.concatenate(outputs)


@dataclass
class LatencySettings:
    """How latency is sampled.

    After `warmup` untimed calls, each variant gets at least `runs` timed calls per batch size, and
    more when that would take under `min_seconds` of timed work, or under its share of
    `window_seconds` (short calls are noisier, so fast models get more samples; and a machine whose
    speed drifts over seconds needs a window long enough to see its fast and slow phases: see
    BENCHMARKS.md, timing stability), up to `max_runs`. Variants take turns in slices of about
    `slice_seconds` (one call at least) for as many rounds as the most demanding variant needs (and
    `rounds` at least), so every variant's calls are spread evenly over the whole timing window: on a
    machine whose speed drifts over seconds, each variant sees the slow and fast phases alike.
    """

    warmup: int = 10
    runs: int = 50
    rounds: int = 10
    min_seconds: float = 1.0
    window_seconds: float = 10.0
    max_runs: int = 2000
    slice_seconds: float = 0.05

    def validate(self) -> None:
        for field_name in ("warmup", "runs", "rounds", "max_runs"):
            value = getattr(self, field_name)
            minimum = 0 if field_name == "warmup" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"latency {field_name} must be an integer >= {minimum}, got {value!r}")
        for field_name in ("min_seconds", "window_seconds", "slice_seconds"):
            if not 0 <= getattr(self, field_name) < math.inf:
                raise ConfigError(
                    f"latency {field_name} must be a finite number >= 0, got {getattr(self, field_name)!r}"
                )
        if self.max_runs < self.runs:
            raise ConfigError(f"latency max_runs ({self.max_runs}) must be >= runs ({self.runs})")

    def runs_for(self, call_seconds: float, variants: int = 1) -> int:
        """Timed calls for one of `variants` variants whose warm-up calls took `call_seconds` each."""
        seconds = max(self.min_seconds, self.window_seconds / max(variants, 1))
        wanted = math.ceil(seconds / call_seconds) if call_seconds > 0 else self.max_runs
        return int(min(self.max_runs, max(self.runs, wanted)))


def summarise(samples_ms: np.ndarray, batch: int) -> dict[str, float]:
    """Median, tail percentiles, spread and throughput (images per second at the median) of timings."""
    median = float(np.median(samples_ms))
    q25, q75 = np.percentile(samples_ms, [25, 75])
    return {
        "median_ms": median,
        "p90_ms": float(np.percentile(samples_ms, 90)),
        "p99_ms": float(np.percentile(samples_ms, 99)),
        "min_ms": float(samples_ms.min()),
        "spread_iqr_ms": float(q75 - q25),
        "throughput_ips": batch * 1000.0 / median if median > 0 else float("inf"),
        "runs": len(samples_ms),
    }


class BoundCall:
    """One inference call with its input and outputs bound to the session's device in advance.

    Binding once means the timed call copies nothing between host and device: what is timed is the
    model, as it would run inside a serving loop that keeps tensors on the device.
    """

    def __init__(self, session, array: np.ndarray, device: str = "cpu"):
        runtime = require_onnxruntime()
        self.session = session
        self.array = np.ascontiguousarray(array)  # kept alive: a CPU OrtValue may share its memory
        feed_name = session.get_inputs()[0].name
        outputs = session.run(None, {feed_name: self.array})  # learns the output shapes and types
        self.binding = session.io_binding()
        self.input = runtime.OrtValue.ortvalue_from_numpy(self.array, device, 0)
        self.binding.bind_ortvalue_input(feed_name, self.input)
        self.outputs = []
        for meta, value in zip(session.get_outputs(), outputs, strict=True):
            buffer = runtime.OrtValue.ortvalue_from_shape_and_type(value.shape, value.dtype, device, 0)
            self.binding.bind_ortvalue_output(meta.name, buffer)
            self.outputs.append(buffer)

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()  # a GPU run counts until its results are there


@dataclass
class LatencyRun:
    """What `measure_latency` measured: {variant: {"batch_<n>": stats}} and the order of the timed calls."""

    timings: dict[str, dict[str, dict[str, float]]]
    order: list[tuple[str, int]] = field(default_factory=list)  # (variant, batch) per timed slice, in order


def measure_latency(
    sessions: Mapping[str, Any],
    inputs: Mapping[int, np.ndarray],
    settings: LatencySettings | None = None,
    device: str = "cpu",
) -> LatencyRun:
    """Latency of every session at every batch size, interleaved across sessions.

    `inputs` maps a batch size to a real input array of that batch; `device` is where inputs and
    outputs are bound ('cpu' or 'cuda'; see PROVIDERS).
    """
    settings = settings or LatencySettings()
    settings.validate()
    names = list(sessions)
    result = LatencyRun(timings={name: {} for name in names})
    bar = progress_bar(0, desc="timing", unit="slice")
    try:
        for batch, array in inputs.items():
            calls = {name: BoundCall(sessions[name], array, device) for name in names}
            per_round, rounds = plan_rounds({name: _warm_up(calls[name], settings.warmup) for name in names}, settings)
            bar.total += rounds * len(names)
            samples: dict[str, list[float]] = {name: [] for name in names}
            for _ in range(rounds):
                for name in names:
                    call = calls[name]
                    for _ in range(per_round[name]):
                        t0 = time.perf_counter()
                        call()
                        samples[name].append((time.perf_counter() - t0) * 1000.0)
                    result.order.append((name, batch))
                    bar.update(1)
            for name in names:
                result.timings[name][f"batch_{batch}"] = summarise(np.asarray(samples[name]), batch)
    finally:
        bar.close()
    return result


def _warm_up(call: BoundCall, warmup: int) -> float:
    """Run `call` untimed `warmup` times (once at least); the median duration in seconds."""
    durations = []
    for _ in range(max(warmup, 1)):
        t0 = time.perf_counter()
        call()
        durations.append(time.perf_counter() - t0)
    return float(np.median(durations))


def plan_rounds(seconds: Mapping[str, float], settings: LatencySettings) -> tuple[dict[str, int], int]:
    """Calls per slice for each variant and the number of rounds: enough rounds that no slice takes
    more than about `slice_seconds` (and `rounds` at least), enough calls per slice that each variant
    gets its `runs_for` calls; every variant takes part in every round."""
    wanted = {name: settings.runs_for(t, len(seconds)) for name, t in seconds.items()}
    rounds = max(
        settings.rounds,
        *(
            math.ceil(wanted[name] * t / settings.slice_seconds) if settings.slice_seconds > 0 else wanted[name]
            for name, t in seconds.items()
        ),
    )
    rounds = min(rounds, max(wanted.values()))  # a slice holds one call at least
    return {name: math.ceil(n / rounds) for name, n in wanted.items()}, rounds


def speedups(
    timings: Mapping[str, Mapping[str, Mapping[str, float]]],
    macs: Mapping[str, float],
    baseline: str,
) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant and batch: measured speed-up over `baseline` (same run), the speed-up its MACs
    promise, and their quotient, the efficiency (1.0: every MAC saved became time saved)."""
    base = timings[baseline]
    result: dict[str, dict[str, dict[str, float]]] = {}
    for name, per_batch in timings.items():
        promised = macs[baseline] / macs[name] if macs.get(name) else float("nan")
        result[name] = {}
        for key, stats in per_batch.items():
            measured = base[key]["median_ms"] / stats["median_ms"]
            result[name][key] = {
                "speedup": measured,
                "macs_speedup": promised,
                "efficiency": measured / promised if promised > 0 else float("nan"),
            }
    return result


@dataclass
class ProviderTiming:
    """One provider's timing of a set of files: latency and speed-ups per file and batch, and the
    first slices of the run order ('name@batch')."""

    latency: dict[str, dict[str, dict[str, float]]]
    speedup: dict[str, dict[str, dict[str, float]]]
    order: list[str]


def time_providers(
    files: Mapping[str, str | Path],
    inputs: Mapping[int, np.ndarray],
    settings: LatencySettings,
    providers: Sequence[str],
    *,
    macs: Mapping[str, float],
    baseline: str,
    threads: int | None = None,
    sessions: Mapping[str, Any] | None = None,
) -> dict[str, ProviderTiming]:
    """Time the ONNX `files` ({name: path}) interleaved on each provider, with speed-ups over
    `baseline`. `sessions`, if given, are open sessions of the first provider, reused."""
    result = {}
    for provider in providers:
        if sessions is None or provider != providers[0]:
            sessions = {name: make_session(path, provider, threads) for name, path in files.items()}
        measured = measure_latency(sessions, inputs, settings, device=PROVIDERS[provider][1])
        result[provider] = ProviderTiming(
            latency=measured.timings,
            speedup=speedups(measured.timings, macs, baseline),
            order=interleaving_summary(measured.order, limit=2 * len(files)),
        )
    return result


def interleaving_summary(order: Sequence[tuple[str, int]], limit: int = 12) -> list[str]:
    """The first `limit` timed slices as 'variant@batch', for reports: shows the A B A B order."""
    return [f"{name}@{batch}" for name, batch in order[:limit]]
