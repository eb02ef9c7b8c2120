"""Allocation across groups: uniform fractions, a global ranking on normalised scores, caps, rounding,
a MACs budget spent exactly."""

import numpy as np
import pytest

from compress.allocation import (
    budget_keep,
    global_keep,
    normalise_scores,
    resolve_normalisation,
    uniform_budget_keep,
    uniform_keep,
)


def test_uniform_keep_floors_rounds_down_and_never_empties_a_group():
    assert uniform_keep(16, 0.3, 4) == 8  # int(11.2) = 11, rounded down to 8
    assert uniform_keep(64, 0.5, 4) == 32
    assert uniform_keep(16, 0.95, 4) == 4  # not 0: a group is never emptied
    assert uniform_keep(3, 0.5, 4) == 3  # narrower than the rounding unit: left whole
    assert uniform_keep(10, 0.3, None) == 7


def test_global_ranking_takes_the_lowest_normalised_channels_first():
    # group a's scores are ten times group b's: without normalisation a would lose nothing
    scores = {"a": np.array([10.0, 20.0, 30.0, 40.0]), "b": np.array([1.0, 2.0, 3.0, 4.0])}
    assert global_keep(scores, 0.25, normalise="none") == {"a": 4, "b": 2}
    # divided by their means both groups look alike: each loses its lowest channel
    assert global_keep(scores, 0.25, normalise="mean") == {"a": 3, "b": 3}


def test_sqrt_mean_normalisation_lets_a_groups_level_count_in_part():
    # b's scores are four times a's: divided by their means they tie, by the square roots b stays higher
    scores = {"a": np.array([1.0, 2.0, 3.0, 4.0]), "b": np.array([4.0, 8.0, 12.0, 16.0])}
    assert normalise_scores(scores["b"], "sqrt-mean").tolist() == pytest.approx([1.0, 2.0, 3.0, 4.0] / np.sqrt(2.5) * 2)
    assert global_keep(scores, 0.25, normalise="sqrt-mean") == {"a": 2, "b": 4}
    assert global_keep(scores, 0.25, normalise="mean") == {"a": 3, "b": 3}


def test_sqrt_total_normalisation_weighs_a_group_by_its_summed_score_not_its_width():
    # four strong channels and sixteen weak ones with the same summed score: one level; twice the sum,
    # the square root of two times the level
    narrow, wide = np.full(4, 4.0), np.full(16, 1.0)
    level = {name: normalise_scores(s, "sqrt-total").mean() for name, s in (("narrow", narrow), ("wide", wide))}
    assert level["narrow"] == pytest.approx(level["wide"])
    assert normalise_scores(2 * wide, "sqrt-total").mean() == pytest.approx(np.sqrt(2) * level["wide"])
    # sqrt-mean instead favours the narrow group's stronger channels
    assert normalise_scores(narrow, "sqrt-mean").mean() > normalise_scores(wide, "sqrt-mean").mean()


def test_global_ranking_respects_the_cap_and_the_rounding():
    scores = {"flat": np.ones(8), "spread": np.linspace(0.1, 2.0, 8)}
    kept = global_keep(scores, 0.5, normalise="none", max_fraction=0.5)
    assert kept["spread"] == 4  # capped at half of its channels, the rest of the budget goes elsewhere
    assert kept["flat"] == 4
    assert global_keep(scores, 0.6, normalise="none", round_to=4, max_fraction=0.9) == {"flat": 4, "spread": 4}


def test_auto_normalisation_is_sqrt_total_for_total_effects_and_mean_for_the_baselines():
    assert resolve_normalisation("auto", "causal") == "sqrt-total"
    assert resolve_normalisation("auto", "causal-direct") == "sqrt-mean"
    assert {resolve_normalisation("auto", c) for c in ("taylor", "l1", "l2", "lamp", "bn-scale", "random")} == {"mean"}
    assert resolve_normalisation("none", "causal") == "none"  # a named one is taken as it is
    with pytest.raises(ValueError, match="normalise must be one of mean, sqrt-mean"):
        global_keep({"a": np.ones(4)}, 0.5, normalise="auto")  # resolved per criterion before allocation


@pytest.mark.parametrize("how", ["mean", "sqrt-mean", "sqrt-total", "max", "none"])
def test_normalised_scores_keep_each_groups_order(how):
    scores = np.array([3.0, 1.0, 2.0])
    assert list(np.argsort(normalise_scores(scores, how))) == [1, 2, 0]
    assert normalise_scores(np.zeros(3), how).tolist() == [0.0, 0.0, 0.0]


def _linear_costs(per_channel):
    """MACs of kept widths when every channel of a group costs a fixed amount."""
    return lambda keep: sum(per_channel[root] * width for root, width in keep.items())


def test_a_macs_budget_is_spent_exactly_and_the_leftover_goes_to_the_best_removed_channels():
    # a narrow expensive group (a residual stream) and a wide cheap one; rounding unit 4
    scores = {"stream": np.linspace(1.0, 2.0, 16), "wide": np.linspace(0.1, 3.0, 64)}
    macs_of = _linear_costs({"stream": 100.0, "wide": 10.0})
    full = macs_of({"stream": 16, "wide": 64})
    for share in (0.2, 0.35, 0.5, 0.7):
        budget = (1 - share) * full
        keep = budget_keep(scores, macs_of, budget, round_to=4)
        assert macs_of(keep) <= budget
        # no unit of 4 channels could be given back to any group without breaking the budget
        assert all(keep[r] == len(scores[r]) or macs_of({**keep, r: keep[r] + 4}) > budget for r in keep)
        assert all(w % 4 == 0 for w in keep.values())
    # the plain ranking cut stops one rounding unit short; the leftover is given back
    keep = budget_keep(scores, macs_of, 0.8 * full, round_to=4)
    assert macs_of(keep) >= 0.8 * full - 40  # within the cheapest unit (4 x 10 MACs) of the budget


def test_a_budget_beyond_the_caps_takes_what_the_caps_allow():
    scores = {"a": np.ones(8), "b": np.ones(8)}
    macs_of = _linear_costs({"a": 1.0, "b": 1.0})
    assert budget_keep(scores, macs_of, 0.0, max_fraction=0.5) == {"a": 4, "b": 4}


def test_uniform_allocation_at_a_macs_budget_cuts_every_group_by_the_smallest_fraction_that_fits():
    original = {"stream": 16, "wide": 64}
    macs_of = _linear_costs({"stream": 100.0, "wide": 10.0})
    full = macs_of(original)
    grid = np.linspace(0.0, 1.0, 20001)
    for share in (0.2, 0.35, 0.5, 0.7):
        budget = (1 - share) * full
        keep = uniform_budget_keep(original, original, macs_of, budget, round_to=4)
        fits = next(r for r in grid if macs_of({k: uniform_keep(w, r, 4) for k, w in original.items()}) <= budget)
        assert keep == {k: uniform_keep(w, fits, 4) for k, w in original.items()}  # one fraction for all
        assert macs_of(keep) <= budget
    # a group already narrower than its uniform width (an earlier step) does not grow back
    assert uniform_budget_keep(original, {"stream": 4, "wide": 64}, macs_of, 0.9 * full, round_to=4)["stream"] == 4
    # no uniform cut fits: the narrowest widths
    assert uniform_budget_keep(original, original, macs_of, 0.0, round_to=4) == {"stream": 4, "wide": 4}
