"""Allocation across groups: uniform fractions, a global ranking on normalised scores, caps, rounding."""

import numpy as np
import pytest

from compress.allocation import global_keep, normalise_scores, uniform_keep


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


def test_global_ranking_respects_the_cap_and_the_rounding():
    scores = {"flat": np.ones(8), "spread": np.linspace(0.1, 2.0, 8)}
    kept = global_keep(scores, 0.5, normalise="none", max_fraction=0.5)
    assert kept["spread"] == 4  # capped at half of its channels, the rest of the budget goes elsewhere
    assert kept["flat"] == 4
    assert global_keep(scores, 0.6, normalise="none", round_to=4, max_fraction=0.9) == {"flat": 4, "spread": 4}


@pytest.mark.parametrize("how", ["mean", "max", "none"])
def test_normalised_scores_keep_each_groups_order(how):
    scores = np.array([3.0, 1.0, 2.0])
    assert list(np.argsort(normalise_scores(scores, how))) == [1, 2, 0]
    assert normalise_scores(np.zeros(3), how).tolist() == [0.0, 0.0, 0.0]
