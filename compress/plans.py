"""A pruning plan: which criterion ranks channels, how much goes, how it is spread across groups, and
in how many steps. The pruning stage executes plans; the pipeline only lists them.

One step scores the model, allocates kept widths (compress.allocation) and removes each group's
lowest-scored channels (compress.pruning). With uniform allocation the amount is the share of every
group's channels removed; with global allocation it is the share of the model's MACs removed (the
shapes follow the scores, so this is what makes criteria comparable at one amount: every one costs
the same, compress.costs). With `steps` > 1 the amount is reached in equal steps:
after each one the batch norms are re-estimated and the criterion is fitted again on the smaller
model (the causal calibration is one cheap pass), so later steps see the model they prune. Every
criterion follows the same schedule.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .allocation import (
    ALLOCATIONS,
    DEFAULT_MAX_FRACTION,
    DEFAULT_NORMALISATION,
    budget_keep,
    resolve_normalisation,
    uniform_keep,
)
from .costs import MacsModel
from .criteria import GroupScoreImportance
from .errors import CompressWarning
from .pruning import PruneResult, group_widths, prune

# Fits the plan's criterion on a model and returns its scores: group root -> per-channel scores.
ScoreFn = Callable[[nn.Module], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class PruningPlan:
    """`amount`: with uniform allocation the fraction of every group's channels removed; with global
    allocation the fraction of the model's MACs removed. `seed` names a random baseline."""

    criterion: str
    amount: float
    allocation: str = "uniform"
    steps: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.amount < 1.0:
            raise ValueError(f"amount must be in (0, 1), got {self.amount}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")

    @property
    def name(self) -> str:
        seed = f"-s{self.seed}" if self.seed is not None else ""
        # two decimals as a rule; more for an amount a target search found, so names never collide
        label = f"{self.amount:.2f}" if round(self.amount, 2) == self.amount else f"{self.amount:.4f}".rstrip("0")
        return f"{self.criterion}{seed}-{label}"


def plan_keep(
    plan: PruningPlan,
    scores: Mapping[str, np.ndarray],
    fraction: float,
    *,
    original: Mapping[str, int],
    round_to: int | None,
    max_fraction: float = DEFAULT_MAX_FRACTION,
    costs: MacsModel | None = None,
    original_macs: float | None = None,
    normalise: str = "mean",
) -> dict[str, int]:
    """Kept widths after removing `fraction` (uniform: of each group's original channels; global: of
    the original model's MACs, `original_macs`), the current model's channels ranked by `scores` and
    its MACs predicted by `costs`."""
    if plan.allocation == "uniform":
        return {root: uniform_keep(original.get(root, len(s)), fraction, round_to) for root, s in scores.items()}
    if costs is None or original_macs is None:
        raise ValueError("global allocation needs the current model's costs and the original MACs")
    current = {root: len(s) for root, s in scores.items()}
    widths = {root: original.get(root, current[root]) for root in scores}  # before the first step
    # no group below its floor of the original width, whatever the step
    floor = {root: widths[root] - int(max_fraction * widths[root]) for root in scores}
    caps = {root: max(0.0, 1.0 - floor[root] / current[root]) for root in scores}
    budget = (1.0 - fraction) * original_macs
    keep = budget_keep(scores, costs.macs, budget, round_to=round_to, max_fraction=1.0, normalise=normalise, caps=caps)
    predicted = costs.macs(keep)
    if predicted > budget:
        reached = 1.0 - predicted / original_macs
        unrounded = budget_keep(scores, costs.macs, budget, max_fraction=1.0, normalise=normalise, caps=caps)
        if round_to and round_to > 1 and costs.macs(unrounded) <= budget:  # the cap alone would allow it
            cause = f"channels are kept in multiples of {round_to} (--round-to), which cuts too coarsely"
        else:
            cause = f"no group may lose more than {max_fraction:g} of its channels (--max-group-ratio)"
        warnings.warn(
            f"global allocation removes only {reached:.2f} of the MACs, not {fraction:.2f}: {cause}",
            CompressWarning,
            stacklevel=3,
        )
    return keep


def execute_plan(
    model: nn.Module,
    plan: PruningPlan,
    score: ScoreFn,
    example_inputs: torch.Tensor,
    *,
    protected: Sequence[str],
    round_to: int | None,
    recalibrate: Callable[[nn.Module], None] | None = None,
    scores: Mapping[str, np.ndarray] | None = None,
    max_fraction: float = DEFAULT_MAX_FRACTION,
    normalise: str = DEFAULT_NORMALISATION,
) -> PruneResult:
    """Prune a copy of `model` by `plan`. `score` fits the plan's criterion on a model; `scores`, if
    given, are its scores on `model` (the first step then skips a fit). `recalibrate` re-estimates the
    batch norms between steps; `max_fraction` caps what global allocation takes from one group and
    `normalise` puts the groups' scores on one scale (compress.allocation; `auto`: the one measured
    best for the plan's criterion). The caller's model is not changed."""
    start = time.perf_counter()
    original = group_widths(model, example_inputs, protected)
    original_macs = None
    current, history, kept_unpruned = model, [], {}
    for step in range(1, plan.steps + 1):
        step_scores = scores if step == 1 and scores is not None else score(current)
        unscored = sorted(set(original) - set(step_scores))
        if step == 1 and unscored:  # e.g. bn-scale on layers without batch norm
            shown = ", ".join(unscored[:3]) + (f" and {len(unscored) - 3} more" if len(unscored) > 3 else "")
            warnings.warn(
                f"{plan.criterion} gives no scores to group(s) {shown}: kept whole", CompressWarning, stacklevel=2
            )
        fraction = plan.amount * step / plan.steps
        costs = None
        if plan.allocation == "global":
            costs = MacsModel(current, example_inputs, protected)
            original_macs = original_macs or costs.total_
        keep = plan_keep(
            plan,
            step_scores,
            fraction,
            original=original,
            round_to=round_to,
            max_fraction=max_fraction,
            costs=costs,
            original_macs=original_macs,
            normalise=resolve_normalisation(normalise, plan.criterion),
        )
        result = prune(
            current,
            lambda m, s=step_scores: GroupScoreImportance(s, m),
            plan.amount,
            example_inputs,
            protected=protected,
            round_to=round_to,
            keep=keep,
        )
        history += result.history
        kept_unpruned.update(result.kept_unpruned)
        current = result.model
        if step < plan.steps and recalibrate is not None:
            recalibrate(current)
    return PruneResult(current, plan.amount, history, kept_unpruned, time.perf_counter() - start)
