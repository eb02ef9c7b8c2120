"""Pick the pruning ratio from what the user wants to ship: a MACs budget or a measured speed-up.

Both searches bisect the uniform pruning ratio. The pruned shape at a ratio does not depend on which
channels go, only on how many, so the search prunes by magnitude (no scoring) and the run then prunes
at the found ratio with every criterion, as at any other ratio. MACs fall as the ratio grows; so does
latency, though not smoothly (rounding, kernel choice), and it is measured, so the speed-up search
times each candidate against the original, interleaved, and keeps the smallest ratio that reached
the target.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .benchmark import LatencySettings, make_session, measure_latency
from .criteria import importance_factory
from .export import export_onnx
from .pruning import count_macs_params, prune

log = logging.getLogger("compress")
_MAGNITUDE = importance_factory("l1")  # any criterion gives the same shape at a ratio; this one is free

MAX_RATIO = 0.95  # beyond this most layers keep a handful of channels: no useful model is there


@dataclass
class TargetSearch:
    """The outcome of a search: the ratio found, what it measured there, and every step."""

    kind: str  # "macs_ratio" or "speedup"
    target: float
    ratio: float
    value: float  # the measured MACs ratio or speed-up at `ratio`
    reached: bool
    steps: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def bisect_ratio(
    measure: Callable[[float], float], reached: Callable[[float], bool], steps: int = 8
) -> tuple[float, float, bool, list[dict[str, float]]]:
    """The smallest ratio in (0, MAX_RATIO] whose `measure` is `reached`, to 1/2**steps of the range."""
    history = []

    def probe(ratio: float) -> float:
        value = measure(ratio)
        history.append({"ratio": round(ratio, 4), "value": value})
        return value

    top = probe(MAX_RATIO)
    if not reached(top):
        return MAX_RATIO, top, False, history
    lo, hi, best = 0.0, MAX_RATIO, top
    for _ in range(steps):
        mid = (lo + hi) / 2
        value = probe(mid)
        if reached(value):
            hi, best = mid, value
        else:
            lo = mid
    return round(hi, 4), best, True, history


def search_macs_ratio(
    model: nn.Module,
    example: torch.Tensor,
    target: float,
    *,
    protected: Sequence[str],
    round_to: int | None,
) -> TargetSearch:
    """The smallest uniform ratio whose pruned model keeps at most `target` of the MACs."""
    base = count_macs_params(model, example)[0]

    def macs_ratio(ratio: float) -> float:
        pruned = prune(model, _MAGNITUDE, ratio, example, protected=protected, round_to=round_to).model
        return count_macs_params(pruned, example)[0] / base

    ratio, value, reached, steps = bisect_ratio(macs_ratio, lambda v: v <= target)
    log.info("target MACs ratio %.3f: pruning ratio %.3f gives %.3f", target, ratio, value)
    return TargetSearch("macs_ratio", target, ratio, value, reached, steps)


def search_speedup(
    model: nn.Module,
    example: torch.Tensor,
    images: np.ndarray,
    target: float,
    *,
    protected: Sequence[str],
    round_to: int | None,
    provider: str = "cpu",
    threads: int | None = None,
    settings: LatencySettings | None = None,
    steps: int = 6,
) -> TargetSearch:
    """The smallest uniform ratio whose pruned model runs `target` times faster than `model` on
    `images` (one batch), measured with onnxruntime against the original in the same timing run."""
    settings = settings or LatencySettings(warmup=5, runs=10, min_seconds=0.3, window_seconds=2.0)
    with tempfile.TemporaryDirectory(prefix="compress-target-") as tmp:
        original = export_onnx(model, example, Path(tmp) / "original.onnx").path
        batch = {len(images): images}

        def speedup(ratio: float) -> float:
            pruned = prune(model, _MAGNITUDE, ratio, example, protected=protected, round_to=round_to).model
            path = export_onnx(pruned, example, Path(tmp) / "candidate.onnx").path
            sessions = {name: make_session(p, provider, threads) for name, p in (("o", original), ("c", path))}
            timings = measure_latency(sessions, batch, settings).timings
            key = f"batch_{len(images)}"
            return timings["o"][key]["median_ms"] / timings["c"][key]["median_ms"]

        ratio, value, reached, history = bisect_ratio(speedup, lambda v: v >= target, steps=steps)
    log.info("target speed-up %.2fx: pruning ratio %.3f measured %.2fx", target, ratio, value)
    return TargetSearch("speedup", target, ratio, value, reached, history)
