"""The seed's literal method (applybn's `CausalCNNExplainer`), kept to compare against.

What it does, defects included (DESIGN.md lists them):
- the graph is a chain of the conv layers in registration order: layer i's parents are layer i-1's
  filters, whatever the real data flow (residual streams, branches, the classifier are ignored);
- a filter's activation is the spatial Frobenius norm of its raw conv output (before batch norm);
- each child is fitted by unstandardised least squares with an intercept (no ridge), so a filter's
  importance depends on its scale and on its children's scales;
- a layer's importances are normalised to sum to 1; the last conv layer has no children, so its
  filters all get the same score.

The fit is the same estimator as the seed's per-child `LinearRegression`, computed from streaming
sums (one pass, memory independent of the number of images) with the minimum-norm solution where
the seed's would be singular.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn as nn

from ..layers import learned_convs
from ..progress import progress
from .calibration import open_batches
from .graph import build_channel_graph, group_scores_from_layers
from .statistics import RegressionStatistics


def frobenius_norms(output: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C): each filter's spatial Frobenius norm, per image."""
    return torch.linalg.vector_norm(output.flatten(2), dim=2)


class ReferenceCausalScorer:
    """Score filters exactly as the seed does.

    Attributes (after `fit`)
    ------------------------
    layers_: conv layer names in registration order (the seed's chain)
    coef_: dict child layer name -> (parents, children) least-squares coefficients
    layer_importances_: dict conv layer name -> per-filter importance, normalised to sum 1
    importances_: dict pruning-group root -> per-channel mean importance of the filters in the group
    n_images_, fit_seconds_: calibration images seen, wall time
    """

    def __init__(self, max_batches: int | None = None):
        self.max_batches = max_batches

    def fit(
        self, model: nn.Module, batches: Iterable, example_inputs: torch.Tensor | None = None
    ) -> ReferenceCausalScorer:
        return self.collect(model, batches, example_inputs).solve()

    @torch.no_grad()
    def collect(
        self, model: nn.Module, batches: Iterable, example_inputs: torch.Tensor | None = None
    ) -> ReferenceCausalScorer:
        if self.max_batches is not None and not (isinstance(self.max_batches, int) and self.max_batches >= 1):
            raise ValueError(f"max_batches must be a positive integer or None, got {self.max_batches!r}")
        start = time.perf_counter()
        observed = copy.deepcopy(model).eval()
        first, images, total = open_batches(batches, self.max_batches)
        self.graph_ = build_channel_graph(observed, example_inputs if example_inputs is not None else first[:2])
        convs = list(learned_convs(observed))
        if not convs:
            raise ValueError(f"{type(model).__name__} has no conv layers to score")
        self.layers_ = [n for n, _ in convs]
        self.statistics_ = {
            child: RegressionStatistics(parent_module.out_channels, child_module.out_channels)
            for (_, parent_module), (child, child_module) in itertools.pairwise(convs)
        }
        norms: dict[str, torch.Tensor] = {}
        handles = [
            module.register_forward_hook(lambda _m, _a, out, name=name: norms.__setitem__(name, frobenius_norms(out)))
            for name, module in convs
        ]
        n_images = 0
        try:
            for batch in progress(images, desc="calibrating (reference)", unit="batch", total=total):
                observed(batch)
                for parent, child in zip(self.layers_, self.layers_[1:], strict=False):
                    self.statistics_[child].update(norms[parent], norms[child])
                n_images += len(batch)
        finally:
            for handle in handles:
                handle.remove()
        self.n_images_ = n_images
        self.collect_seconds_ = time.perf_counter() - start
        return self

    def solve(self) -> ReferenceCausalScorer:
        if not hasattr(self, "statistics_"):
            raise RuntimeError("call collect() (or fit()) before solve()")
        start = time.perf_counter()
        self.coef_ = {}
        raw = {name: np.zeros(self.graph_.widths[name]) for name in self.layers_}
        for parent, child in zip(self.layers_, self.layers_[1:], strict=False):
            _, _, _, cov_xx, cov_xy = self.statistics_[child].moments()
            # Ordinary least squares with an intercept: the centred normal equations, minimum norm.
            coef = torch.linalg.lstsq(cov_xx, cov_xy, driver="gelsd").solution.numpy()
            self.coef_[child] = coef
            raw[parent] += np.abs(coef).sum(1)
        self.layer_importances_ = {name: _normalise(v) for name, v in raw.items()}
        self.importances_ = group_scores_from_layers(self.graph_, self.layer_importances_)
        self.fit_seconds_ = self.collect_seconds_ + time.perf_counter() - start
        return self


def _normalise(scores: np.ndarray) -> np.ndarray:
    total = scores.sum()
    return scores / total if total != 0 else np.full_like(scores, 1.0 / len(scores))
