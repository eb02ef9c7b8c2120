"""Pruning criteria: each scores every channel of every prunable group, and a torch-pruning
`Importance` (a small callable from a group to scores) hands those scores to the pruner.

Every criterion has a scorer (`make_scorer`), fitted on the unpruned model:
- `causal` (the default): each filter's *total* causal effect on the model's output, removing it less
  what batch-norm re-estimation repairs (its mean, wherever a batch norm re-estimates it), to first
  order (`TotalEffectScorer`);
- `causal-direct`: the seed's *direct* effect on the filter's children, by structural equations over
  the traced filter graph (`CausalScorer`);
- `causal-reference`: the seed's literal method, for comparison (`ReferenceCausalScorer`);
- `intervention`: the measured output change under do(channel = 0) (`InterventionScorer`);
- the field's baselines (compress.baselines): `taylor`, `l1`, `l2`, `bn-scale`, `lamp` and the seeded
  `random`.
Scorers give `importances_`: group root -> per-channel scores, which both the allocation across
groups (compress.allocation) and the choice of channels within a group use.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from .baselines import MAGNITUDES, MagnitudeScorer, RandomScorer, SeededRandomImportance, TaylorScorer
from .causal.graph import group_root
from .causal.intervention import InterventionScorer
from .causal.reference import ReferenceCausalScorer
from .causal.scorer import CausalScorer
from .causal.total_effect import TotalEffectScorer
from .pruning import ImportanceFactory

CRITERIA = (
    "causal",
    "causal-direct",
    "causal-reference",
    "intervention",
    "taylor",
    "l1",
    "l2",
    "bn-scale",
    "lamp",
    "random",
)
# The data-driven criteria `compress explain` draws (the baselines explain nothing about causes).
SCORED_CRITERIA = ("causal", "causal-direct", "causal-reference", "intervention")
# The criteria estimated from calibration images. Their order within a group carries the images'
# sampling noise (BENCHMARKS.md: a median Spearman correlation of 0.66-0.81 between two sets of 512
# images); a weight magnitude has none, so auto allocation also tries l1's channel order within such a
# criterion's global widths (compress.plans.allocation_candidates).
ESTIMATED_CRITERIA = ("causal", "causal-direct", "causal-reference", "intervention", "taylor")
# What `compress run` compares by default; the others are opt-in (intervention is slow).
DEFAULT_CRITERIA = ("causal", "l1", "random")
Scorer = (
    CausalScorer
    | TotalEffectScorer
    | ReferenceCausalScorer
    | InterventionScorer
    | MagnitudeScorer
    | TaylorScorer
    | RandomScorer
)


def make_scorer(
    criterion: str,
    *,
    ridge: float = 1e-2,
    pool_grid: int = 1,
    max_batches: int | None = None,
    intervention_images: int = 128,
    taylor_batches: int = 4,
    effect_images: int = 512,
    seed: int = 0,
) -> Scorer:
    """An unfitted scorer for `criterion` (call `.fit(model, batches, example_inputs)`)."""
    if criterion == "causal":
        return TotalEffectScorer(max_images=effect_images)
    if criterion == "causal-direct":
        return CausalScorer(ridge=ridge, pool_grid=pool_grid, max_batches=max_batches)
    if criterion == "causal-reference":
        return ReferenceCausalScorer(max_batches=max_batches)
    if criterion == "intervention":
        return InterventionScorer(max_images=intervention_images)
    if criterion == "taylor":
        return TaylorScorer(max_batches=taylor_batches)
    if criterion in MAGNITUDES:
        return MagnitudeScorer(criterion)
    if criterion == "random":
        return RandomScorer(seed)
    raise ValueError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")


def importance_factory(criterion: str, scorer: Scorer | None = None, seed: int = 0) -> ImportanceFactory:
    """Build, for each model copy being pruned, the torch-pruning Importance of `criterion`: the
    fitted `scorer`'s scores; without one, `l1` and `random` (seeded) are computed by torch-pruning."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    if scorer is not None:
        if not hasattr(scorer, "importances_"):
            raise ValueError(f"criterion {criterion!r} needs a fitted scorer")
        return lambda model: GroupScoreImportance(scorer.importances_, model)
    if criterion == "l1":
        return lambda model: l1_importance()
    if criterion == "random":
        return lambda model: SeededRandomImportance(seed)
    raise ValueError(f"criterion {criterion!r} needs a fitted scorer")


class GroupScoreImportance(tp.importance.Importance):
    """The scores a scorer gave each group (by group root, in torch-pruning's channel order)."""

    def __init__(self, scores: Mapping[str, np.ndarray], model: nn.Module):
        self.scores = {root: torch.as_tensor(np.asarray(v), dtype=torch.float64) for root, v in scores.items()}
        self.names = {m: n for n, m in model.named_modules()}
        self.order = {m: i for i, m in enumerate(self.names)}

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        scores = self.scores.get(group_root(group, self.names, self.order))
        if scores is None or len(scores) != len(group[0].idxs):
            return None  # nothing scored this group: torch-pruning leaves it unpruned
        return scores.float()


def l1_importance() -> tp.importance.Importance:
    """Group L1 magnitude (DepGraph): mean over the group's layers of each channel's L1 weight norm."""
    return MagnitudeScorer("l1")._importance(None, None)
