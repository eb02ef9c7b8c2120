"""Pruning criteria, each a torch-pruning `Importance`: a small callable from a group to scores.

`causal` reads the scores of a fitted `CausalScorer`; `l1` is DepGraph's group L1 magnitude; `random`
is seeded and independent of global random state, so a seed names one reproducible baseline.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from .causal.graph import CONSUMER_HANDLERS

CRITERIA = ("causal", "l1", "random")


class CausalImportance(tp.importance.Importance):
    """Group importance = sum of a filter's causal effects on every consumer of its channels.

    `consumer_importances` maps a consumer layer's name to the importance of each of its input
    features (`CausalScorer.consumer_importances_`); `model` is the model being pruned, whose module
    names match the scored model's.
    """

    def __init__(self, consumer_importances: Mapping[str, np.ndarray], model: nn.Module):
        self.scores = {name: torch.as_tensor(v, dtype=torch.float64) for name, v in consumer_importances.items()}
        self.names = {m: n for n, m in model.named_modules()}

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        total, found = torch.zeros(len(group[0].idxs), dtype=torch.float64), False
        for item in group:
            if item.dep.handler not in CONSUMER_HANDLERS:
                continue
            scores = self.scores.get(self.names.get(item.dep.target.module, ""))
            if scores is None or any(r is None for r in item.root_idxs):
                continue
            total.scatter_add_(0, torch.as_tensor(item.root_idxs), scores[torch.as_tensor(item.idxs)])
            found = True
        # None tells torch-pruning to leave a group whose channels nothing scored unpruned.
        return total.float() if found else None


class SeededRandomImportance(tp.importance.Importance):
    """Uniform random scores from a private generator: the same seed ranks channels the same way."""

    def __init__(self, seed: int):
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        return torch.rand(len(group[0].idxs), generator=self.generator)


def l1_importance() -> tp.importance.Importance:
    """Group L1 magnitude (DepGraph): mean over the group's layers of each channel's L1 weight norm."""
    return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)
