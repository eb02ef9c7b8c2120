"""The field's pruning criteria, scored like compress's own: every channel of every prunable group.

- `l1`, `l2`: DepGraph's group magnitude, the mean over a group's layers of each channel's weight norm;
- `bn-scale`: the batch norms' |gamma| (network slimming), averaged over the group's batch norms;
- `lamp`: layer-adaptive magnitude (Lee et al., 2021), a channel's squared L2 norm over the sum of those
  not smaller in its group: comparable across groups without a separate normalisation;
- `taylor`: first-order group Taylor, |weight x gradient| of the cross-entropy on labelled calibration
  batches (Molchanov et al., 2019; DepGraph's `GroupTaylorImportance`);
- `random`: a seeded generator, the same seed giving the same scores.

Each is torch-pruning's own importance evaluated on the unpruned model, which is also what
torch-pruning's pruner does (it scores every group before it removes any). Fixed selections
(compress.layers) are not filters and are never read.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from .causal.calibration import open_batches
from .causal.graph import build_dependency_graph, find_output_layers, group_root, is_producer, prunable_groups
from .layers import LearnedConv

# The layers whose weights the magnitude and gradient criteria read: fixed selections are not filters.
LEARNED_LAYERS = [LearnedConv, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm]
MAGNITUDES = ("l1", "l2", "bn-scale", "lamp")


class _GroupScorer:
    """fit(model, batches, example_inputs) -> self, with importances_ (group root -> per-channel
    scores), layer_importances_ (producing layer -> per-filter scores), n_images_ and fit_seconds_."""

    n_images_ = 0

    def _importance(self, model: nn.Module, batches: Iterable | None) -> tp.importance.Importance:
        raise NotImplementedError

    def fit(self, model: nn.Module, batches: Iterable | None = None, example_inputs: torch.Tensor | None = None):
        start = time.perf_counter()
        work = copy.deepcopy(model).eval()
        if example_inputs is None:
            example_inputs, _, _ = open_batches(batches)
        importance = self._importance(work, batches)
        graph = build_dependency_graph(work, example_inputs)
        names = {m: n for n, m in work.named_modules()}
        order = {m: i for i, m in enumerate(names)}
        self.importances_, self.layer_importances_ = {}, {}
        with torch.no_grad():
            for group in prunable_groups(graph, find_output_layers(graph)):
                try:
                    scores = importance(group)
                except IndexError:  # torch-pruning indexes past a layer it cannot score (a grouped
                    continue  # convolution widening its channels): unscored, so kept whole (compress.plans)
                if scores is None:
                    continue
                scores = scores.detach().double().cpu().numpy()
                self.importances_[group_root(group, names, order)] = scores
                for item in group:  # every layer whose filters go with the group's channels
                    if is_producer(item) and all(r is not None for r in item.root_idxs):
                        layer = names[item.dep.target.module]
                        width = getattr(item.dep.target.module, "out_channels", None)
                        width = width or item.dep.target.module.out_features
                        filters = self.layer_importances_.setdefault(layer, np.zeros(width))
                        filters[list(item.idxs)] = scores[list(item.root_idxs)]
        self.fit_seconds_ = time.perf_counter() - start
        return self


class MagnitudeScorer(_GroupScorer):
    """`kind`: l1, l2, bn-scale or lamp (see the module docstring)."""

    def __init__(self, kind: str = "l1"):
        if kind not in MAGNITUDES:
            raise ValueError(f"kind must be one of {', '.join(MAGNITUDES)}, got {kind!r}")
        self.kind = kind

    def _importance(self, model, batches):
        if self.kind == "bn-scale":
            return tp.importance.GroupMagnitudeImportance(
                p=1, group_reduction="mean", normalizer=None, target_types=[nn.modules.batchnorm._BatchNorm]
            )
        return tp.importance.GroupMagnitudeImportance(
            p=1 if self.kind == "l1" else 2,
            group_reduction="mean",
            normalizer="lamp" if self.kind == "lamp" else None,
            target_types=LEARNED_LAYERS,
        )


class TaylorScorer(_GroupScorer):
    """First-order group Taylor on `max_batches` labelled calibration batches."""

    def __init__(self, max_batches: int = 4):
        if not (isinstance(max_batches, int) and max_batches >= 1):
            raise ValueError(f"max_batches must be a positive integer, got {max_batches!r}")
        self.max_batches = max_batches

    def _importance(self, model, batches):
        if batches is None:
            raise ValueError("taylor needs labelled calibration batches")
        model.zero_grad(set_to_none=True)
        self.n_images_ = 0
        with torch.enable_grad():  # the model stays in eval mode: batch-norm statistics are not touched
            for i, batch in enumerate(batches):
                if i >= self.max_batches:
                    break
                images, labels = batch[0], batch[1]
                F.cross_entropy(model(images), torch.as_tensor(labels)).backward()
                self.n_images_ += len(images)
        return tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None, target_types=LEARNED_LAYERS)


class RandomScorer(_GroupScorer):
    """Uniform random scores from a private generator, drawn group by group in a fixed order."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _importance(self, model, batches):
        return SeededRandomImportance(self.seed)


class SeededRandomImportance(tp.importance.Importance):
    """Uniform random scores from a private generator: the same seed ranks channels the same way."""

    def __init__(self, seed: int):
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        return torch.rand(len(group[0].idxs), generator=self.generator)
