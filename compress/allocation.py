"""How many channels each pruning group keeps: the same fraction everywhere, or a global ranking.

A criterion scores every channel of every prunable group (`{group root: scores}`); allocation turns
an amount into a kept width per group, and the pruner then removes each group's lowest-scored
channels down to that width.

- `uniform`: every group loses the same fraction of its channels (the kept count is rounded down
  to a multiple of `round_to`, never below `round_to`).
- `global`: the channels of all groups are ranked together and the lowest go first, until the
  amount is removed. Scores of different groups are not on one scale (a residual stream has many
  consumers, a late layer has different activations), so each group's scores are first put on a
  common scale. `sqrt-total` (the default for `causal`) divides them by their mean and multiplies by
  the square root of the group's summed score: a channel is ranked by how it compares with its own group and
  by its group's level, where the level is the group's total effect (a wide layer spreads the same
  total thinner over more channels) and counts as its square root. So a residual stream every
  block reads is not thinned at the rate of a weak inner convolution, and a wide last layer is not
  stripped for having many channels. `sqrt-mean` divides by the square root of the mean (the level
  per channel), `mean` by the mean (no level at all; the default for the baselines, whose scores are
  not on one scale across groups), `none` ranks raw scores. No group loses more than
  `max_fraction` of its channels, and kept counts are rounded as above.

- `auto`: both of the above at the same MACs budget, and the pruned model that agrees more with the
  unpruned one is kept (compress.plans; the agreement is measured by compress.agreement). Which of the
  two loses less is not a property of the criterion: global allocation wins on networks with
  shortcuts, where it takes deep cuts from single groups, and loses on plain chains, where it strips
  the late layers of small feature maps (BENCHMARKS.md, plain chains). Measuring both on the
  calibration images decides per model and amount, without labels. For total effects a third
  candidate, global allocation of do(channel := 0)'s effects, is measured alongside, and for a
  criterion estimated from calibration images a fourth, global's widths with l1's channels, and for
  total effects under `auto` normalisation a fifth, global on the `sqrt-mean` scale
  (compress.plans.allocation_candidates).

`global_keep` removes a share of the channels; `budget_keep` spends a MACs budget: the largest
global ranking cut that fits, then the rounding's leftover given back, a unit of channels at a time,
to the groups whose best removed channels score highest. One more rounding step on a narrow group
(a 16-channel residual stream) can move MACs by several percent, so without the give-back a budget
is met only as "at most", and criteria land on different costs.

The normalisation was chosen by measurement over the six benchmark models together, with every
baseline given each normalisation (BENCHMARKS.md, criteria at matched MACs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

ALLOCATIONS = ("uniform", "global", "auto")
DEFAULT_ALLOCATION = "auto"
NORMALISATIONS = ("auto", "mean", "sqrt-mean", "sqrt-total", "max", "none")
DEFAULT_NORMALISATION = "auto"
# `auto`: what measured best for each criterion at matched MACs (BENCHMARKS.md). Only total effects
# are on one scale across groups (the effect on the output), so only they gain from keeping each
# group's level; magnitudes and Taylor scores rank best divided by their group's mean.
AUTO_NORMALISATION = {"causal": "sqrt-total", "causal-direct": "sqrt-mean"}
# Under `auto` normalisation, auto allocation also tries these criteria's global widths on a second
# scale (compress.plans.allocation_candidates). Total effects keep each group's level, and how much of
# it to keep is what varies between networks: `sqrt-total` measured best overall, `sqrt-mean` (the
# level per channel) on ResNet-32, ResNet-44 and digits at some targets, and never worse where agreement
# kept it (BENCHMARKS.md, auto allocation). Scores without a level across groups (magnitudes, Taylor) have no
# such question.
AUTO_SECOND_NORMALISATION = {"causal": "sqrt-mean"}
DEFAULT_MAX_FRACTION = 0.9


def settings_problem(allocation: str, group_normalisation: str, max_group_ratio: float) -> str | None:
    """What is wrong with these allocation settings, each named as its option is (None: nothing); the
    configuration and `compress.Pruner` raise it as their own error."""
    if allocation not in ALLOCATIONS:
        return f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}"
    if group_normalisation not in NORMALISATIONS:
        return f"group_normalisation must be one of {', '.join(NORMALISATIONS)}, got {group_normalisation!r}"
    if not 0 < max_group_ratio < 1:
        return f"max_group_ratio must be in (0, 1), got {max_group_ratio!r}"
    return None


def uniform_keep(channels: int, ratio: float, round_to: int | None) -> int:
    """Channels a group of `channels` keeps when it loses `ratio` of them: the floor of what is left,
    rounded as `rounded_width` does."""
    return rounded_width(channels, int(channels * (1.0 - ratio)), round_to)


def rounded_width(channels: int, left: int, round_to: int | None) -> int:
    """`left` of a group's `channels` rounded down to a multiple of `round_to`, but never below
    `round_to` (a group is never emptied; one narrower than `round_to` is left whole)."""
    unit = round_to if round_to and round_to > 1 else 1
    if channels <= unit:
        return channels
    return max(unit, left - left % unit)


def resolve_normalisation(how: str, criterion: str) -> str:
    """The normalisation `criterion`'s scores get: `how`, or with `auto` the one measured best for it."""
    return AUTO_NORMALISATION.get(criterion, "mean") if how == "auto" else how


def second_normalisations(how: str, criterion: str) -> tuple[str, ...]:
    """The other scales auto allocation tries for `criterion`'s global widths: none once `how` is set."""
    second = AUTO_SECOND_NORMALISATION.get(criterion)
    return (second,) if how == "auto" and second else ()


def normalise_scores(scores: np.ndarray, how: str) -> np.ndarray:
    """A group's scores on a scale comparable across groups (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    if how == "none":
        return scores
    scale = scores.max() if how == "max" else scores.mean()
    if scale <= 0:
        return np.zeros_like(scores)
    if how == "sqrt-mean":  # halfway: a group's level counts, as the square root of its mean
        return scores / np.sqrt(scale)
    if how == "sqrt-total":  # the level is the group's summed score: a wide layer spreads it thinner
        return scores / scale * np.sqrt(scale * len(scores))
    return scores / scale


def global_keep(
    scores: Mapping[str, np.ndarray],
    amount: float,
    *,
    round_to: int | None = None,
    max_fraction: float = DEFAULT_MAX_FRACTION,
    normalise: str = "mean",
    caps: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """Kept channels per group when `amount` of all the groups' channels go by a global ranking; no
    group loses more than `max_fraction` of its channels (or its own fraction in `caps`)."""
    concrete = [n for n in NORMALISATIONS if n != "auto"]  # auto is resolved per criterion first
    if normalise not in concrete:
        raise ValueError(f"normalise must be one of {', '.join(concrete)}, got {normalise!r}")
    roots = list(scores)
    widths = {root: len(scores[root]) for root in roots}
    keys = np.concatenate([normalise_scores(scores[root], normalise) for root in roots]) if roots else np.zeros(0)
    owner = np.repeat(np.arange(len(roots)), [widths[root] for root in roots])
    caps = caps or {}
    limit = {root: int(caps.get(root, max_fraction) * widths[root]) for root in roots}
    removed = dict.fromkeys(roots, 0)
    budget = round(amount * len(keys))
    for i in np.argsort(keys, kind="stable"):
        if budget <= 0:
            break
        root = roots[owner[i]]
        if removed[root] < limit[root]:
            removed[root] += 1
            budget -= 1
    return {root: rounded_width(widths[root], widths[root] - removed[root], round_to) for root in roots}


def budget_keep(
    scores: Mapping[str, np.ndarray],
    macs_of: Callable[[Mapping[str, int]], float],
    budget: float,
    *,
    round_to: int | None = None,
    max_fraction: float = DEFAULT_MAX_FRACTION,
    normalise: str = "mean",
    caps: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """Kept channels per group, by the global ranking, whose MACs (`macs_of(keep)`) are at most
    `budget` and as close to it as channel rounding allows; as much as the caps allow when no cut
    fits. See the module docstring."""

    def cut(share: float) -> dict[str, int]:
        return global_keep(scores, share, round_to=round_to, max_fraction=max_fraction, normalise=normalise, caps=caps)

    keep = smallest_cut_within(cut, macs_of, budget)
    if macs_of(keep) > budget:
        return keep  # the caps stop short of the budget: the most that may go
    unit = round_to if round_to and round_to > 1 else 1
    ranked = {root: np.sort(normalise_scores(s, normalise))[::-1] for root, s in scores.items()}
    while True:  # give the leftover back to the best removed channels, a rounding unit at a time
        best = None
        for root, ordered in ranked.items():
            width = len(ordered)
            if keep[root] >= width:
                continue
            back = min(width, keep[root] + unit)
            gain = float(ordered[keep[root] : back].mean())
            if (best is None or gain > best[0]) and macs_of({**keep, root: back}) <= budget:
                best = (gain, root, back)
        if best is None:
            return keep
        keep[best[1]] = best[2]


def uniform_budget_keep(
    original: Mapping[str, int],
    current: Mapping[str, int],
    macs_of: Callable[[Mapping[str, int]], float],
    budget: float,
    *,
    round_to: int | None = None,
) -> dict[str, int]:
    """Kept channels per group when every group loses the same fraction of its `original` width, the
    smallest fraction whose MACs (`macs_of(keep)`) are at most `budget`; no group grows past its
    `current` width. Uniform allocation spending a MACs budget, as `budget_keep` is global's."""

    def cut(ratio: float) -> dict[str, int]:
        return {root: min(current[root], uniform_keep(original[root], ratio, round_to)) for root in current}

    return smallest_cut_within(cut, macs_of, budget)


def smallest_cut_within(
    cut: Callable[[float], dict[str, int]], macs_of: Callable[[Mapping[str, int]], float], budget: float
) -> dict[str, int]:
    """`cut(share)` at the smallest share in [0, 1] whose MACs are at most `budget` (to 2**-30), or
    `cut(1)` when none is. A cut removes more channels as its share grows, so MACs fall monotonically."""
    lo, hi = 0.0, 1.0
    if macs_of(cut(hi)) > budget:
        return cut(hi)
    for _ in range(30):
        mid = (lo + hi) / 2
        if macs_of(cut(mid)) <= budget:
            hi = mid
        else:
            lo = mid
    return cut(hi)
