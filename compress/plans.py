"""A pruning plan: which criterion ranks channels, how much goes, how it is spread across groups, and
in how many steps. The pruning stage executes plans; the pipeline only lists them.

One step scores the model, allocates kept widths (compress.allocation) and removes each group's
lowest-scored channels (compress.pruning). With uniform allocation the amount is the share of every
group's channels removed; with global allocation it is the share of the model's MACs removed (the
shapes follow the scores, so this is what makes criteria comparable at one amount: every one costs
the same, compress.costs). With `auto` allocation the amount is a share of MACs too: the model is
pruned both ways at that budget (uniform widths: the smallest equal fraction that fits it), for total
effects a third way, global allocation of do(channel := 0)'s effects, and for a criterion estimated
from calibration images one more, its global widths with l1's channels, and for total effects under
`auto` normalisation global widths on a second group scale (`allocation_candidates`); each candidate
is recovered as the shipped model will be, and the one whose predictions agree more often with the
unpruned model's on the calibration images is kept (compress.agreement; a tie keeps the first,
global).
With `steps` > 1 the amount is reached in equal steps:
after each one the batch norms are re-estimated and the criterion is fitted again on the smaller
model (the causal calibration is one cheap pass), so later steps see the model they prune (`auto`
chooses at every step). Every criterion follows the same schedule.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn as nn

from .allocation import (
    ALLOCATIONS,
    DEFAULT_MAX_FRACTION,
    DEFAULT_NORMALISATION,
    budget_keep,
    resolve_normalisation,
    second_normalisations,
    uniform_budget_keep,
    uniform_keep,
)
from .baselines import MagnitudeScorer
from .costs import MacsModel
from .criteria import ESTIMATED_CRITERIA, GroupScoreImportance
from .errors import CompressWarning
from .pruning import GroupLayout, PruneResult, group_layouts, prune, whole_units


class FittedScorer(Protocol):
    """A criterion fitted on a model (compress.criteria.Scorer). `importances_`: group root ->
    per-channel scores. A scorer may also give `unrepaired_importances_` (total effects,
    compress.causal.total_effect), which auto allocation tries as another candidate."""

    importances_: Mapping[str, np.ndarray]


# Fits the plan's criterion on a model and returns the fitted scorer.
ScoreFn = Callable[[nn.Module], FittedScorer]
# How closely a pruned candidate follows the unpruned model, higher is closer
# (compress.agreement.Agreement.score). It must leave the candidate as it was: what the candidate
# scores before recovery is reported.
FidelityFn = Callable[[nn.Module], float]


@dataclass(frozen=True)
class PruningPlan:
    """`amount`: with uniform allocation the fraction of every group's channels removed; with global or
    auto allocation the fraction of the model's MACs removed. `seed` names a random baseline."""

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
    allocation: str,
    scores: Mapping[str, np.ndarray],
    fraction: float,
    *,
    original: Mapping[str, int],
    round_to: int | None,
    max_fraction: float = DEFAULT_MAX_FRACTION,
    costs: MacsModel | None = None,
    original_macs: float | None = None,
    normalise: str = "mean",
    units: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Kept widths by `allocation` after removing `fraction` (`uniform`: of each group's original
    channels; `global`: of the original model's MACs, `original_macs`, by the global ranking;
    `uniform-budget`: of the MACs too, every group cut by the same fraction), the current model's
    channels ranked by `scores` and its MACs predicted by `costs`. `units`: the groups whose kept width
    pruning rounds down to a multiple (compress.pruning.GroupLayout.unit: whole parts of a grouped
    convolution, whole sets of coupled channels), so the MACs budget is spent on the widths pruning will
    give."""
    if allocation == "uniform":
        return {root: uniform_keep(original.get(root, len(s)), fraction, round_to) for root, s in scores.items()}
    if costs is None or original_macs is None:
        raise ValueError(f"{allocation} allocation needs the current model's costs and the original MACs")
    units = units or {}

    def as_pruned(keep: Mapping[str, int]) -> dict[str, int]:
        return {root: whole_units(k, units.get(root, 1)) for root, k in keep.items()}

    def macs(keep: Mapping[str, int]) -> float:
        return costs.macs(as_pruned(keep))

    current = {root: len(s) for root, s in scores.items()}
    widths = {root: original.get(root, current[root]) for root in scores}  # before the first step
    budget = (1.0 - fraction) * original_macs
    if allocation == "uniform-budget":
        return as_pruned(uniform_budget_keep(widths, current, macs, budget, round_to=round_to))
    # no group below its floor of the original width, whatever the step
    floor = {root: widths[root] - int(max_fraction * widths[root]) for root in scores}
    caps = {root: max(0.0, 1.0 - floor[root] / current[root]) for root in scores}
    keep = budget_keep(scores, macs, budget, round_to=round_to, max_fraction=1.0, normalise=normalise, caps=caps)
    predicted = macs(keep)
    if predicted > budget:
        reached = 1.0 - predicted / original_macs
        unrounded = budget_keep(scores, macs, budget, max_fraction=1.0, normalise=normalise, caps=caps)
        if round_to and round_to > 1 and macs(unrounded) <= budget:  # the cap alone would allow it
            cause = f"channels are kept in multiples of {round_to} (--round-to), which cuts too coarsely"
        else:
            cause = f"no group may lose more than {max_fraction:g} of its channels (--max-group-ratio)"
        warnings.warn(
            f"global allocation removes only {reached:.2f} of the MACs, not {fraction:.2f}: {cause}",
            CompressWarning,
            stacklevel=3,
        )
    return as_pruned(keep)


@dataclass(frozen=True)
class Candidate:
    """One way to prune at a budget: `allocation` spreads the cut over the groups by the `widths`
    scores (global: on the group scale `normalisation`, None for the plan's), and within each group the
    `order` scores choose the channels that go."""

    allocation: str
    widths: Mapping[str, np.ndarray]
    order: Mapping[str, np.ndarray]
    normalisation: str | None = None


def allocation_candidates(
    allocation: str,
    fitted: FittedScorer,
    magnitudes: Mapping[str, np.ndarray] | None = None,
    normalisations: Sequence[str] = (),
) -> dict[str, Candidate]:
    """Candidate name -> Candidate. Auto's, in order of preference (a tie keeps the first):
    - `global`: global allocation of the criterion's scores, the better default where shortcuts are;
    - `uniform`: every group cut by the same fraction, the better one on some plain chains;
    - `global-unrepaired`, for total effects: global allocation of do(channel := 0)'s effects, the mean's
      loss counted wherever it is (TotalEffectScorer.unrepaired_importances_). Where batch-norm
      re-estimation repairs less than the first-order estimate assumes, these rank channels better;
    - `global-l1-order`, given the model's l1 `magnitudes`: global's widths, and in each group the
      channels of least l1 magnitude go. An estimated criterion allocates widths well, but its order
      within a group carries the calibration images' noise, and a group cut deep loses channels whose
      effects interact; where the weights' magnitudes choose better, this agrees better;
    - `global-<scale>`, for each of `normalisations`: global allocation of the criterion's scores with the
      groups put on that scale instead of the plan's (compress.allocation.second_normalisations).
    Which is the case is measured, not guessed: BENCHMARKS.md, auto allocation."""
    scores = fitted.importances_
    if allocation != "auto":
        return {allocation: Candidate(allocation, scores, scores)}
    candidates = {"global": Candidate("global", scores, scores), "uniform": Candidate("uniform-budget", scores, scores)}
    unrepaired = getattr(fitted, "unrepaired_importances_", None)
    if unrepaired is not None and not _same_scores(unrepaired, scores):  # equal where no batch norm repairs
        candidates["global-unrepaired"] = Candidate("global", unrepaired, unrepaired)
    if magnitudes is not None:
        # a group l1 does not score keeps the criterion's order
        order = {root: magnitudes[root] if len(magnitudes.get(root, ())) == len(s) else s for root, s in scores.items()}
        candidates["global-l1-order"] = Candidate("global", scores, order)
    for scale in normalisations:
        candidates[f"global-{scale}"] = Candidate("global", scores, scores, scale)
    return candidates


def _same_scores(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _tied(scores: Mapping[str, np.ndarray], layouts: Mapping[str, GroupLayout]) -> dict[str, np.ndarray]:
    """A set of channels pruning removes together is ranked at its mean (compress.pruning.GroupLayout)."""
    return {
        root: layouts[root].tie(s) if root in layouts and len(s) == layouts[root].width else s
        for root, s in scores.items()
    }


def execute_plan(
    model: nn.Module,
    plan: PruningPlan,
    score: ScoreFn,
    example_inputs: torch.Tensor,
    *,
    protected: Sequence[str],
    round_to: int | None,
    recalibrate: Callable[[nn.Module], None] | None = None,
    scorer: FittedScorer | None = None,
    max_fraction: float = DEFAULT_MAX_FRACTION,
    normalise: str = DEFAULT_NORMALISATION,
    fidelity: FidelityFn | None = None,
) -> PruneResult:
    """Prune a copy of `model` by `plan`. `score` fits the plan's criterion on a model and returns the
    fitted scorer; `scorer`, if given, is the criterion already fitted on `model` (the first step then
    skips a fit). `recalibrate` re-estimates the batch norms between steps; `max_fraction` caps what
    global allocation takes from one group and `normalise` puts the groups' scores on one scale
    (compress.allocation; `auto`: the one measured best for the plan's criterion). `fidelity` measures
    a pruned candidate against `model` (auto allocation keeps the highest; it needs one). The caller's
    model is not changed."""
    if plan.allocation == "auto" and fidelity is None:
        raise ValueError("auto allocation needs a fidelity measure to choose between its candidates")
    start = time.perf_counter()
    scale = resolve_normalisation(normalise, plan.criterion)
    scales = second_normalisations(normalise, plan.criterion) if plan.allocation == "auto" else ()
    original, original_macs = None, None
    current, history, kept_unpruned, choices = model, [], {}, []
    for step in range(1, plan.steps + 1):
        fitted = scorer if step == 1 and scorer is not None else score(current)
        layouts = group_layouts(current, example_inputs, protected)
        original = original or {root: layout.width for root, layout in layouts.items()}
        unscored = sorted(set(original) - set(fitted.importances_))
        if step == 1 and unscored:  # e.g. bn-scale on layers without batch norm
            shown = ", ".join(unscored[:3]) + (f" and {len(unscored) - 3} more" if len(unscored) > 3 else "")
            warnings.warn(
                f"{plan.criterion} gives no scores to group(s) {shown}: kept whole", CompressWarning, stacklevel=2
            )
        fraction = plan.amount * step / plan.steps
        costs, units = None, None
        if plan.allocation != "uniform":
            costs = MacsModel(current, example_inputs, protected)
            original_macs = original_macs or costs.total_
            units = {root: layout.unit for root, layout in layouts.items()}
        magnitudes = None
        if plan.allocation == "auto" and plan.criterion in ESTIMATED_CRITERIA:
            magnitudes = MagnitudeScorer("l1").fit(current, example_inputs=example_inputs).importances_
        candidates = allocation_candidates(plan.allocation, fitted, magnitudes, scales)
        result, chosen, agreement = None, None, {}
        for name, way in candidates.items():
            widths = _tied(way.widths, layouts)
            order = widths if way.order is way.widths else _tied(way.order, layouts)
            keep = plan_keep(
                way.allocation,
                widths,
                fraction,
                original=original,
                round_to=round_to,
                max_fraction=max_fraction,
                costs=costs,
                original_macs=original_macs,
                normalise=way.normalisation or scale,
                units=units,
            )
            candidate = prune(
                current,
                lambda m, s=order: GroupScoreImportance(s, m),
                plan.amount,
                example_inputs,
                protected=protected,
                round_to=round_to,
                keep=keep,
                layouts=layouts,
            )
            if len(candidates) > 1:
                agreement[name] = fidelity(candidate.model)
            if result is None or agreement[name] > agreement[chosen]:  # the first of equals stays
                result, chosen = candidate, name
            del candidate  # at most two pruned copies alive at once
        if agreement:
            choices.append({"step": step, "chosen": chosen, "agreement": agreement})
        history += result.history
        kept_unpruned.update(result.kept_unpruned)
        current = result.model
        if step < plan.steps and recalibrate is not None:
            recalibrate(current)
    return PruneResult(current, plan.amount, history, kept_unpruned, time.perf_counter() - start, choices)
