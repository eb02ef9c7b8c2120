"""Causal filter importance from structural equations fitted on calibration images.

For every consumer layer (a conv or linear layer reading prunable channels) the pooled activation of
each output channel (child) is modelled as a linear function of the pooled activations of its input
channels (parents):

    F_i = sum_j beta_{j->i} F_j + e_i        importance(j) = sum over children i of |beta_{j->i}|

Variables are standardised and the fit is ridge-regularised, so the importance measures how much of
the children's image-to-image variation flows from each filter, independent of the filters' scales.
A channel that several layers consume (a residual stream) sums its effects over all of them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..progress import progress
from .calibration import open_batches
from .graph import ChannelGraph, Consumer, build_channel_graph, layer_scores_from_groups
from .statistics import RegressionStatistics


def pool_rows(t: torch.Tensor, grid: tuple[int, int] | None = None, features_per_channel: int = 1) -> torch.Tensor:
    """Turn a layer's input or output into observation rows of per-channel activations.

    Feature maps (N, C, H, W) are average-pooled onto a `grid` of cells, each cell of each image one
    row: (N * gh * gw, C). Vectors (N, F) stay rows; a flattened feature map read by a linear layer is
    averaged back to one value per channel (`features_per_channel` = H * W).
    """
    if t.dim() == 4:
        pooled = F.adaptive_avg_pool2d(t, grid if grid is not None else 1)
        return pooled.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    t = t.reshape(-1, t.shape[-1])
    if features_per_channel > 1:
        t = t.reshape(t.shape[0], -1, features_per_channel).mean(-1)
    return t


class CausalScorer:
    """Fit structural equations over a CNN's filters and score each filter's causal importance.

    Parameters
    ----------
    ridge:
        Ridge penalty on the standardised (correlation-scale) equations; keeps the fit stable when
        filters are collinear or outnumber the observations.
    pool_grid:
        Activations are averaged over a `pool_grid` x `pool_grid` grid of cells per image, each cell
        an observation; 1 is global average pooling. Cells keep where in the image a filter fires.
    max_batches:
        Stop calibration after this many batches (None: the whole loader).

    Attributes (after `fit`)
    ------------------------
    coef_: dict consumer name -> (parents, children) standardised coefficients
    consumer_importances_: dict consumer name -> per-input-feature importance (sum of |beta|)
    importances_: dict pruning-group root name -> per-channel importance of that group
    layer_importances_: dict conv/linear layer name -> importance of each of its output filters (its group's)
    graph_: the traced ChannelGraph
    n_images_: calibration images seen
    fit_seconds_: wall time of calibration plus solving
    """

    def __init__(self, ridge: float = 1e-2, pool_grid: int = 1, max_batches: int | None = None):
        self.ridge = ridge
        self.pool_grid = pool_grid
        self.max_batches = max_batches

    def _validate(self) -> None:
        if not (isinstance(self.ridge, (int, float)) and self.ridge >= 0):
            raise ValueError(f"ridge must be a number >= 0, got {self.ridge!r}")
        if not (isinstance(self.pool_grid, int) and self.pool_grid >= 1):
            raise ValueError(f"pool_grid must be an integer >= 1, got {self.pool_grid!r}")
        if self.max_batches is not None and not (isinstance(self.max_batches, int) and self.max_batches >= 1):
            raise ValueError(f"max_batches must be a positive integer or None, got {self.max_batches!r}")

    def fit(self, model: nn.Module, batches: Iterable, example_inputs: torch.Tensor | None = None) -> CausalScorer:
        """Collect statistics over `batches` ((images, labels) or images) and solve the equations.

        The caller's model is never changed: a private copy in eval mode is observed.
        """
        return self.collect(model, batches, example_inputs).solve()

    def collect(self, model: nn.Module, batches: Iterable, example_inputs: torch.Tensor | None = None) -> CausalScorer:
        """One pass over `batches`: trace the filter graph and accumulate every consumer's statistics."""
        self._validate()
        start = time.perf_counter()
        observed = copy.deepcopy(model).eval()
        first, rest, total = open_batches(batches, self.max_batches)
        self.graph_ = build_channel_graph(observed, example_inputs if example_inputs is not None else first[:2])
        self.statistics_, self.n_images_ = self._collect(observed, self.graph_, rest, total)
        self.collect_seconds_ = time.perf_counter() - start
        return self

    def reduce_statistics(self, sum_across: Callable[[list[torch.Tensor]], None]) -> CausalScorer:
        """Combine the statistics of data-parallel processes before `solve`.

        Each process collects its shard of the calibration data; `sum_across` sums a list of tensors
        in place across the processes (`Distributed.all_reduce_sum`). The sums are then those of all
        the images, so every process solves the same equations a single process would.
        """
        if not hasattr(self, "statistics_"):
            raise RuntimeError("call collect() before reduce_statistics()")
        count = torch.tensor(float(self.n_images_), dtype=torch.float64)
        sum_across([count, *(t for name in self.graph_.consumers for t in self.statistics_[name].tensors())])
        self.n_images_ = int(count.item())
        return self

    def solve(self) -> CausalScorer:
        """One multi-output ridge fit per consumer; importances from the coefficients."""
        if not hasattr(self, "statistics_"):
            raise RuntimeError("call collect() (or fit()) before solve()")
        start = time.perf_counter()
        stats, graph = self.statistics_, self.graph_
        self.coef_ = {name: stats[name].solve(self.ridge, _blocks(c)).numpy() for name, c in graph.consumers.items()}
        self.consumer_importances_ = {
            name: _per_feature(np.abs(self.coef_[name]).sum(1), c) for name, c in graph.consumers.items()
        }
        self.importances_ = group_importances(graph, self.consumer_importances_)
        self.layer_importances_ = layer_scores_from_groups(graph, self.importances_)
        self.fit_seconds_ = self.collect_seconds_ + time.perf_counter() - start
        return self

    @torch.no_grad()
    def _collect(
        self, observed: nn.Module, graph: ChannelGraph, batches: Iterable, total: int | None
    ) -> tuple[dict[str, RegressionStatistics], int]:
        """One pass over `batches`: every consumer's sums and cross-products, and the images seen."""
        stats = {name: RegressionStatistics(c.n_parents, c.n_children) for name, c in graph.consumers.items()}
        grid = self.pool_grid

        def hook_for(consumer: Consumer):
            def hook(module, args, output):
                x = args[0]
                if x.dim() == 4:
                    cells = (min(grid, output.shape[2], x.shape[2]), min(grid, output.shape[3], x.shape[3]))
                    stats[consumer.name].update(pool_rows(x, cells), pool_rows(output, cells))
                else:
                    stats[consumer.name].update(pool_rows(x, None, consumer.features_per_channel), pool_rows(output))

            return hook

        handles = [c.module.register_forward_hook(hook_for(c)) for c in graph.consumers.values()]
        n_images = 0
        try:
            for images in progress(batches, desc="calibrating", unit="batch", total=total):
                observed(images)
                n_images += len(images)
        finally:
            for handle in handles:
                handle.remove()
        return stats, n_images


def group_importances(graph: ChannelGraph, consumer_importances: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sum each group channel's importance over every consumer that reads it."""
    result = {}
    for group in graph.groups:
        total = np.zeros(group.channels)
        for name, idxs, root_idxs in group.links:
            np.add.at(total, root_idxs, consumer_importances[name][idxs])
        result[group.root] = total
    return result


def _per_feature(per_channel: np.ndarray, consumer: Consumer) -> np.ndarray:
    """Spread a channel's importance evenly over the features it was flattened into."""
    k = consumer.features_per_channel
    return np.repeat(per_channel / k, k) if k > 1 else per_channel


def _blocks(consumer: Consumer) -> list[tuple[slice, slice]] | None:
    if consumer.groups <= 1:
        return None
    p, q = consumer.n_parents // consumer.groups, consumer.n_children // consumer.groups
    return [(slice(g * p, (g + 1) * p), slice(g * q, (g + 1) * q)) for g in range(consumer.groups)]
