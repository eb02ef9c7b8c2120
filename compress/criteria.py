"""Pruning criteria, each a torch-pruning `Importance`: a small callable from a group to scores.

Data-driven criteria are scored by a fitted scorer first (`make_scorer`):
- `causal`: this project's structural equations over the traced filter graph (`CausalScorer`);
- `causal-reference`: the seed's literal method, for comparison (`ReferenceCausalScorer`);
- `intervention`: the measured output change under do(channel = 0) (`InterventionScorer`).
`l1` is DepGraph's group L1 magnitude; `random` is seeded and independent of global random state, so a
seed names one reproducible baseline.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from .causal.graph import CONSUMER_HANDLERS, is_producer
from .causal.intervention import InterventionScorer
from .causal.reference import ReferenceCausalScorer
from .causal.scorer import CausalScorer
from .layers import LearnedConv
from .pruning import ImportanceFactory

CRITERIA = ("causal", "causal-reference", "intervention", "l1", "random")
SCORED_CRITERIA = ("causal", "causal-reference", "intervention")
# What `compress run` compares by default; the other two are opt-in studies (intervention is slow).
DEFAULT_CRITERIA = ("causal", "l1", "random")
Scorer = CausalScorer | ReferenceCausalScorer | InterventionScorer
# The layers whose weights torch-pruning's magnitude criteria read: fixed selections are not filters.
LEARNED_LAYERS = [LearnedConv, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm]


def make_scorer(
    criterion: str,
    *,
    ridge: float = 1e-2,
    pool_grid: int = 1,
    max_batches: int | None = None,
    intervention_images: int = 128,
) -> Scorer:
    """An unfitted scorer for a data-driven criterion (call `.fit(model, batches, example_inputs)`)."""
    if criterion == "causal":
        return CausalScorer(ridge=ridge, pool_grid=pool_grid, max_batches=max_batches)
    if criterion == "causal-reference":
        return ReferenceCausalScorer(max_batches=max_batches)
    if criterion == "intervention":
        return InterventionScorer(max_images=intervention_images)
    raise ValueError(f"criterion {criterion!r} needs no scorer; scored criteria are {', '.join(SCORED_CRITERIA)}")


def importance_factory(criterion: str, scorer: Scorer | None = None, seed: int = 0) -> ImportanceFactory:
    """Build, for each model copy being pruned, the torch-pruning Importance of `criterion`."""
    if criterion in SCORED_CRITERIA:
        if scorer is None or not hasattr(scorer, "layer_importances_"):
            raise ValueError(f"criterion {criterion!r} needs a fitted scorer")
        if isinstance(scorer, CausalScorer):
            return lambda model: CausalImportance(scorer.consumer_importances_, model)
        return lambda model: LayerScoreImportance(scorer.layer_importances_, model)
    if criterion == "l1":
        return lambda model: l1_importance()
    if criterion == "random":
        return lambda model: SeededRandomImportance(seed)
    raise ValueError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")


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


class LayerScoreImportance(tp.importance.Importance):
    """Group importance = mean score of the filters the group removes, from per-layer filter scores.

    `layer_scores` maps a conv or linear layer's name to a score per output filter; `model` is the
    model being pruned, whose module names match the scored model's.
    """

    def __init__(self, layer_scores: Mapping[str, np.ndarray], model: nn.Module):
        self.scores = {name: torch.as_tensor(v, dtype=torch.float64) for name, v in layer_scores.items()}
        self.names = {m: n for n, m in model.named_modules()}

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        n = len(group[0].idxs)
        total, count = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        for item in group:
            scores = self.scores.get(self.names.get(item.dep.target.module, ""))
            if scores is None or not is_producer(item) or any(r is None for r in item.root_idxs):
                continue
            roots = torch.as_tensor(item.root_idxs)
            total.scatter_add_(0, roots, scores[torch.as_tensor(item.idxs)])
            count.scatter_add_(0, roots, torch.ones(len(roots), dtype=torch.float64))
        if not count.any():
            return None  # nothing scored: torch-pruning leaves the group unpruned
        return (total / count.clamp(min=1)).float()


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
    return tp.importance.GroupMagnitudeImportance(
        p=1, group_reduction="mean", normalizer=None, target_types=LEARNED_LAYERS
    )
