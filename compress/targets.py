"""Pick the pruning amount from what the user wants to ship: a MACs budget or a measured speed-up.

With global allocation the amount is a share of the MACs (compress.plans), so a MACs budget needs
no search: the amount is what must go (`global_macs_target`), measured once per criterion.
Otherwise the searches bisect the pruning amount. With uniform allocation the pruned shape at a ratio
does not depend on which channels go, only on how many, so the search prunes by magnitude (no
scoring) and the run then prunes at the found ratio with every criterion, as at any other ratio; with
global allocation the speed-up search runs once per criterion, on its own shapes.
MACs fall in steps as the amount grows (channel rounding), and measured latency is noisy (rounding,
kernel choice), so the search walks a grid of amounts upward to the first that reaches the target
and bisects between it and the grid point below; the speed-up search times each candidate against
the original, interleaved.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .artifacts import scratch_directory
from .benchmark import LatencySettings, make_session, measure_latency
from .criteria import importance_factory
from .errors import CompressWarning
from .export import export_onnx
from .pruning import count_macs_params, group_layouts, prune

log = logging.getLogger("compress")
_MAGNITUDE = importance_factory("l1")  # any criterion gives the same shape at a ratio; this one is free

MAX_RATIO = 0.95  # beyond this most layers keep a handful of channels: no useful model is there
GRID_STEP = 0.05


@dataclass
class TargetSearch:
    """The outcome of a search: the ratio found, what it measured there, and every step."""

    kind: str  # "macs_ratio" or "speedup"
    target: float
    ratio: float
    value: float  # the measured MACs ratio or speed-up at `ratio`
    reached: bool
    steps: list[dict[str, float]] = field(default_factory=list)
    searched: bool = True  # False: the amount follows from the target (a MACs budget, global allocation)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def bisect_ratio(
    measure: Callable[[float], float],
    shortfall: Callable[[float], float],
    steps: int = 5,
    grid_step: float = GRID_STEP,
) -> tuple[float, float, bool, list[dict[str, float]]]:
    """The smallest ratio in (0, MAX_RATIO] whose `measure` reaches the target (`shortfall` of the
    value is 0), to `grid_step` / 2**steps: a walk up a grid of ratios to the first that reaches it,
    then bisection between that one and the grid point below.

    Returns (ratio, value there, reached, every probe). When no grid ratio reaches the target, the
    one that came closest is returned with reached False.
    """
    history = []

    def probe(ratio: float) -> float:
        value = measure(ratio)
        history.append({"ratio": round(ratio, 4), "value": value})
        return value

    grid = [round(grid_step * i, 6) for i in range(1, int(MAX_RATIO / grid_step + 1e-9) + 1)]
    lo = 0.0
    for ratio in grid:
        value = probe(ratio)
        if shortfall(value) <= 0:
            hi, best = ratio, value
            break
        lo = ratio
    else:
        closest = min(history, key=lambda step: (shortfall(step["value"]), step["ratio"]))
        return closest["ratio"], closest["value"], False, history
    for _ in range(steps):
        mid = (lo + hi) / 2
        value = probe(mid)
        if shortfall(value) <= 0:
            hi, best = mid, value
        else:
            lo = mid
    return round(hi, 4), best, True, history


# The model pruned at an amount: what a search measures. By default uniform allocation, whose shapes
# do not depend on the criterion (magnitude ranks the channels); with global allocation the caller
# passes its criterion's pruning, since there the shapes follow the scores.
Shape = Callable[[float], nn.Module]


def search_macs_ratio(
    model: nn.Module,
    example: torch.Tensor,
    target: float,
    *,
    protected: Sequence[str],
    round_to: int | None,
    shape: Shape | None = None,
) -> TargetSearch:
    """The smallest pruning amount whose pruned model keeps at most `target` of the MACs."""
    base = count_macs_params(model, example)[0]
    shape = shape or _uniform_shape(model, example, protected, round_to)

    def macs_ratio(ratio: float) -> float:
        return count_macs_params(shape(ratio), example)[0] / base

    ratio, value, reached, steps = bisect_ratio(macs_ratio, lambda v: v - target)
    log.info("target MACs ratio %.3f: pruning ratio %.3f gives %.3f", target, ratio, value)
    return TargetSearch("macs_ratio", target, ratio, value, reached, steps)


def budget_amount(target: float) -> float:
    """The amount that keeps `target` of the MACs under global or auto allocation, whose amount is the
    share of the MACs removed: 1 - target, by construction."""
    return round(1.0 - target, 6)


def global_macs_target(model: nn.Module, example: torch.Tensor, target: float, shape: Shape) -> TargetSearch:
    """The amount that keeps `target` of the MACs under global allocation (`budget_amount`), with the
    MACs measured on the criterion's pruned model (`shape`)."""
    amount = budget_amount(target)
    value = count_macs_params(shape(amount), example)[0] / count_macs_params(model, example)[0]
    log.info("target MACs ratio %.3f: global allocation at amount %.3f gives %.3f", target, amount, value)
    reached = value <= target + 1e-9
    return TargetSearch("macs_ratio", target, amount, value, reached, [{"ratio": amount, "value": value}], False)


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
    steps: int = 4,
    grid_step: float = 0.1,
    shape: Shape | None = None,
) -> TargetSearch:
    """The smallest pruning amount whose pruned model runs `target` times faster than `model` on
    `images` (one batch), measured with onnxruntime against the original in the same timing run."""
    settings = settings or LatencySettings(warmup=5, runs=10, min_seconds=0.3, window_seconds=2.0)
    shape = shape or _uniform_shape(model, example, protected, round_to)
    with scratch_directory("compress-target-") as tmp:
        original = export_onnx(model, example, Path(tmp) / "original.onnx").path
        batch = {len(images): images}

        def speedup(ratio: float) -> float:
            path = export_onnx(shape(ratio), example, Path(tmp) / "candidate.onnx").path
            sessions = {name: make_session(p, provider, threads) for name, p in (("o", original), ("c", path))}
            timings = measure_latency(sessions, batch, settings).timings
            key = f"batch_{len(images)}"
            return timings["o"][key]["median_ms"] / timings["c"][key]["median_ms"]

        ratio, value, reached, history = bisect_ratio(speedup, lambda v: target - v, steps=steps, grid_step=grid_step)
    log.info("target speed-up %.2fx: pruning ratio %.3f measured %.2fx", target, ratio, value)
    return TargetSearch("speedup", target, ratio, value, reached, history)


def _uniform_shape(model: nn.Module, example: torch.Tensor, protected, round_to) -> Shape:
    """The model pruned uniformly at a ratio, quietly (the variants pruned at the ratio found warn for
    themselves); its groups traced once for every probe of the search."""
    layouts = group_layouts(model, example, protected)

    def shape(ratio: float) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CompressWarning)
            return prune(
                model, _MAGNITUDE, ratio, example, protected=protected, round_to=round_to, layouts=layouts
            ).model

    return shape
