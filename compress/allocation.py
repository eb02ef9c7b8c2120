"""How many channels each pruning group keeps: the same fraction everywhere, or a global ranking.

A criterion scores every channel of every prunable group (`{group root: scores}`); allocation turns
an amount into a kept width per group, and the pruner then removes each group's lowest-scored
channels down to that width.

- `uniform`: every group loses the same fraction of its channels (the kept count is rounded down
  to a multiple of `round_to`, never below `round_to`).
- `global`: the channels of all groups are ranked together and the lowest go first, until the
  amount (a fraction of all prunable channels) is removed. Scores of different groups are not on
  one scale (a residual stream has many consumers, a late layer has different activations), so each
  group's scores are first divided by their mean: a channel is ranked by how it compares with its
  own group, and a group whose channels are all alike loses them at the same rate as its peers.
  No group loses more than `max_fraction` of its channels, and kept counts are rounded as above.

The normalisation was chosen by measurement over the benchmark models (BENCHMARKS.md, criteria).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

ALLOCATIONS = ("uniform", "global")
NORMALISATIONS = ("mean", "max", "none")
DEFAULT_MAX_FRACTION = 0.9


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


def normalise_scores(scores: np.ndarray, how: str) -> np.ndarray:
    """A group's scores on a scale comparable across groups (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    if how == "none":
        return scores
    scale = scores.mean() if how == "mean" else scores.max()
    return scores / scale if scale > 0 else np.zeros_like(scores)


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
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {normalise!r}")
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
