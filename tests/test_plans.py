"""Pruning plans: criterion, allocation, schedule and amount executed by the pruning stage."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from builders import GhostStyle, Grouped, TwoConv, batches, randomise_batchnorm

from compress.allocation import uniform_keep
from compress.baselines import MagnitudeScorer
from compress.costs import MacsModel
from compress.criteria import importance_factory, make_scorer
from compress.errors import CompressWarning
from compress.plans import PruningPlan, allocation_candidates, execute_plan, plan_keep
from compress.pruning import (
    count_macs_params,
    group_layouts,
    group_widths,
    layer_widths,
    output_layer_names,
    prune,
)
from compress.zoo import DigitsCNN


def _fitted(scores, unrepaired=None):
    """A criterion fitted elsewhere: its scores (and, as total effects give, do(channel := 0)'s)."""
    extra = {} if unrepaired is None else {"unrepaired_importances_": unrepaired}
    return SimpleNamespace(importances_=scores, **extra)


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    model = randomise_batchnorm(DigitsCNN())
    data = batches(n=64, shape=(1, 8, 8), classes=10)
    return model, data, data[0][0], output_layer_names(model, data[0][0])


def test_one_uniform_step_is_plain_pruning(digits):
    model, data, x, protected = digits
    scorer = make_scorer("causal").fit(model, data, x)
    planned = execute_plan(model, PruningPlan("causal", 0.3), lambda m: scorer, x, protected=protected, round_to=4)
    plain = prune(model, importance_factory("causal", scorer), 0.3, x, protected=protected, round_to=4)
    assert layer_widths(planned.model) == layer_widths(plain.model) == {
        "conv1": 20, "conv2": 44, "conv3": 88, "conv4": 88, "fc": 10  # int(0.7 C) rounded down to 4
    }  # fmt: skip
    assert planned.pruned_channels() == plain.pruned_channels()


def _conv1_matters_most():
    """conv1's and conv3's channels all matter, conv2's and conv4's mostly not (global keeps conv1 whole)."""
    return {
        "conv1": np.full(32, 5.0),
        "conv2": np.r_[np.full(48, 0.1), np.full(16, 5.0)],
        "conv3": np.full(128, 5.0),
        "conv4": np.r_[np.full(96, 0.1), np.full(32, 5.0)],
    }


def test_global_allocation_takes_channels_where_the_scores_are_low_until_the_macs_share_is_gone(digits):
    model, _, x, protected = digits
    scores = _conv1_matters_most()
    plan = PruningPlan("causal", 0.4, "global")  # global: the amount is the share of MACs removed
    result = execute_plan(model, plan, lambda m: _fitted(scores), x, protected=protected, round_to=4)
    widths = layer_widths(result.model)
    kept = count_macs_params(result.model, x)[0] / count_macs_params(model, x)[0]
    assert 0.55 <= kept <= 0.6  # at most the budget, and within a rounding unit of it
    assert widths["conv2"] < 64 and widths["conv4"] < 128
    assert widths["conv1"] == 32 and widths["conv3"] == 128  # uniform would have taken 40% of them too
    removed = result.pruned_channels()
    assert all(i < 48 for i in removed["conv2"]) and all(i < 96 for i in removed["conv4"])  # the low ones


def test_auto_allocation_keeps_the_candidate_that_agrees_more_and_global_on_a_tie(digits):
    model, _, x, protected = digits
    scores = _conv1_matters_most()
    settings = {"protected": protected, "round_to": 4}
    global_widths = layer_widths(
        execute_plan(model, PruningPlan("causal", 0.4, "global"), lambda m: _fitted(scores), x, **settings).model
    )
    measured = []

    def thin_conv1_agrees_more(m):  # a stand-in fidelity that prefers the candidate with the narrower conv1
        measured.append(layer_widths(m))
        return 1.0 - layer_widths(m)["conv1"] / 32

    plan = PruningPlan("causal", 0.4, "auto")
    result = execute_plan(model, plan, lambda m: _fitted(scores), x, **settings, fidelity=thin_conv1_agrees_more)
    widths = layer_widths(result.model)
    # every candidate measured, global first; the third has global's widths (l1's channels within them)
    assert measured[0] == global_widths and len(measured) == 4 and measured[2] == global_widths
    assert widths == measured[1] != global_widths
    # uniform at the MACs budget: every group cut by one fraction, no more than the budget needs
    assert count_macs_params(result.model, x)[0] <= 0.6 * count_macs_params(model, x)[0]
    base = {n: w for n, w in layer_widths(model).items() if n != "fc"}
    assert any(all(widths[n] == uniform_keep(w, r, 4) for n, w in base.items()) for r in np.linspace(0, 1, 1001))
    chosen = result.allocation_choices
    assert [c["chosen"] for c in chosen] == ["uniform"] and chosen[0]["agreement"]["global"] == 0.0

    tie = execute_plan(model, plan, lambda m: _fitted(scores), x, **settings, fidelity=lambda m: 0.9)
    assert layer_widths(tie.model) == global_widths
    assert tie.allocation_choices == [
        {
            "step": 1,
            "chosen": "global",
            "agreement": {"global": 0.9, "uniform": 0.9, "global-l1-order": 0.9, "global-sqrt-mean": 0.9},
        }
    ]
    with pytest.raises(ValueError, match="auto allocation needs a fidelity measure"):
        execute_plan(model, plan, lambda m: _fitted(scores), x, **settings)


def test_auto_allocation_tries_global_on_the_unrepaired_effects_a_scorer_gives_and_keeps_it_when_it_agrees_more(
    digits,
):
    model, _, x, protected = digits
    settings = {"protected": protected, "round_to": 4}
    scores = _conv1_matters_most()
    # do(channel := 0)'s effects rank the other way round in conv1 and conv2: conv2 all matters, conv1 mostly not
    unrepaired = {**scores, "conv1": np.r_[np.full(24, 0.1), np.full(8, 5.0)], "conv2": np.full(64, 5.0)}
    alone = execute_plan(model, PruningPlan("causal", 0.4, "global"), lambda m: _fitted(unrepaired), x, **settings)
    measured = []

    def whole_conv2_agrees_more(m):  # a stand-in fidelity that prefers conv2 whole and conv1 thinned
        measured.append(layer_widths(m))
        return 1.0 if measured[-1]["conv2"] == 64 and measured[-1]["conv1"] < 32 else 0.5

    plan = PruningPlan("causal", 0.4, "auto")
    result = execute_plan(
        model, plan, lambda m: _fitted(scores, unrepaired), x, **settings, fidelity=whole_conv2_agrees_more
    )
    assert len(measured) == 5 and measured[2] == layer_widths(alone.model)  # global, uniform, then the third
    assert layer_widths(result.model) == layer_widths(alone.model)
    assert result.pruned_channels() == alone.pruned_channels()  # its channels ranked by the unrepaired effects
    assert result.allocation_choices == [
        {
            "step": 1,
            "chosen": "global-unrepaired",
            "agreement": {
                "global": 0.5,
                "uniform": 0.5,
                "global-unrepaired": 1.0,
                "global-l1-order": 0.5,
                "global-sqrt-mean": 0.5,
            },
        }
    ]
    tie = execute_plan(model, plan, lambda m: _fitted(scores, unrepaired), x, **settings, fidelity=lambda m: 0.9)
    assert tie.allocation_choices[0]["chosen"] == "global"  # a tie keeps the first
    # without batch norms the two effects are the same: the third candidate would repeat global
    same = execute_plan(model, plan, lambda m: _fitted(scores, scores), x, **settings, fidelity=lambda m: 0.9)
    assert list(same.allocation_choices[0]["agreement"]) == ["global", "uniform", "global-l1-order", "global-sqrt-mean"]


def test_auto_allocation_tries_l1s_channels_within_an_estimated_criterions_global_widths(digits):
    model, _, x, protected = digits
    settings = {"protected": protected, "round_to": 4, "normalise": "sqrt-total"}  # causal's scale, and no other
    l1 = MagnitudeScorer("l1").fit(model, example_inputs=x).importances_
    # the criterion's levels put conv1 first, but within each group it ranks channels against their l1 norm
    scores = {root: level * (1.0 - 1e-3 * l1[root] / l1[root].max()) for root, level in _conv1_matters_most().items()}
    plan = PruningPlan("causal", 0.4, "auto")
    global_ = execute_plan(model, PruningPlan("causal", 0.4, "global"), lambda m: _fitted(scores), x, **settings)

    def heavier_weights_agree_more(m):  # a stand-in fidelity that prefers the heaviest filters kept
        return float(sum(c.weight.detach().abs().sum() for c in m.modules() if isinstance(c, torch.nn.Conv2d)))

    result = execute_plan(model, plan, lambda m: _fitted(scores), x, **settings, fidelity=heavier_weights_agree_more)
    [choice] = result.allocation_choices
    assert (
        list(choice["agreement"]) == ["global", "uniform", "global-l1-order"] and choice["chosen"] == "global-l1-order"
    )
    assert layer_widths(result.model) == layer_widths(global_.model)  # global's widths
    removed, removed_by_global = result.pruned_channels(), global_.pruned_channels()
    assert removed.keys() == removed_by_global.keys() and removed  # the same groups cut, as deep
    for root, channels in removed.items():
        assert sorted(channels) == sorted(np.argsort(l1[root])[: len(channels)])  # the weakest by l1 went
        assert sorted(channels) != sorted(removed_by_global[root])
    tie = execute_plan(model, plan, lambda m: _fitted(scores), x, **settings, fidelity=lambda m: 0.9)
    assert tie.allocation_choices[0]["chosen"] == "global"
    # magnitudes have no sampling noise, and random is the null baseline: two candidates, as before
    for criterion in ("l1", "lamp", "random"):
        plain = execute_plan(
            model, PruningPlan(criterion, 0.4, "auto"), lambda m: _fitted(scores), x, **settings, fidelity=lambda m: 0.9
        )
        assert list(plain.allocation_choices[0]["agreement"]) == ["global", "uniform"]
    taylor = execute_plan(
        model, PruningPlan("taylor", 0.4, "auto"), lambda m: _fitted(scores), x, **settings, fidelity=lambda m: 0.9
    )
    assert list(taylor.allocation_choices[0]["agreement"]) == ["global", "uniform", "global-l1-order"]


def test_l1s_order_leaves_a_group_l1_does_not_score_in_the_criterions_order():
    scores = {"a": np.array([3.0, 1.0, 2.0]), "b": np.array([1.0, 2.0])}
    candidates = allocation_candidates("auto", _fitted(scores), {"a": np.array([1.0, 2.0, 3.0])})
    way = candidates["global-l1-order"]
    assert way.allocation == "global" and way.widths is scores
    np.testing.assert_array_equal(way.order["a"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(way.order["b"], scores["b"])
    assert list(allocation_candidates("auto", _fitted(scores))) == ["global", "uniform"]  # no magnitudes given


def test_auto_allocation_tries_total_effects_global_widths_on_the_sqrt_mean_scale_unless_a_scale_is_set(digits):
    model, _, x, protected = digits
    settings = {"protected": protected, "round_to": 4}
    # every group alike within, at its own level: the scale decides how deep each one is cut
    levels = {"conv1": 1.0, "conv2": 0.5, "conv3": 0.3, "conv4": 0.2}
    widths_of = group_widths(model, x, protected)
    scores = {root: level * np.linspace(0.5, 1.5, widths_of[root]) for root, level in levels.items()}

    def global_on(scale):
        plan = PruningPlan("causal", 0.4, "global")
        return execute_plan(model, plan, lambda m: _fitted(scores), x, **settings, normalise=scale)

    on_sqrt_mean, on_sqrt_total = global_on("sqrt-mean"), global_on("sqrt-total")
    assert layer_widths(on_sqrt_mean.model) != layer_widths(on_sqrt_total.model)
    later = iter(range(10))  # a stand-in fidelity that prefers each candidate to the ones before it
    plan = PruningPlan("causal", 0.4, "auto")
    result = execute_plan(model, plan, lambda m: _fitted(scores), x, **settings, fidelity=lambda m: next(later))
    [choice] = result.allocation_choices
    assert list(choice["agreement"]) == ["global", "uniform", "global-l1-order", "global-sqrt-mean"]
    assert choice["chosen"] == "global-sqrt-mean"
    assert layer_widths(result.model) == layer_widths(on_sqrt_mean.model)
    assert result.pruned_channels() == on_sqrt_mean.pruned_channels()  # the criterion's own channels
    # a scale the user set is the only one; the magnitudes' scores have no level to weigh: no second scale
    pinned = execute_plan(
        model, plan, lambda m: _fitted(scores), x, **settings, normalise="sqrt-total", fidelity=lambda m: 0.9
    )
    assert "global-sqrt-mean" not in pinned.allocation_choices[0]["agreement"]
    for criterion in ("l1", "taylor"):
        other = execute_plan(
            model, PruningPlan(criterion, 0.4, "auto"), lambda m: _fitted(scores), x, **settings, fidelity=lambda m: 0.9
        )
        assert "global-sqrt-mean" not in other.allocation_choices[0]["agreement"]


def test_auto_normalisation_follows_the_plans_criterion(digits):
    model, _, x, protected = digits
    # alike within every group; under sqrt-total the narrow conv1 (smallest summed score) goes first
    scores = {root: np.linspace(0.5, 1.5, width) for root, width in group_widths(model, x, protected).items()}
    widths = {
        criterion: layer_widths(
            execute_plan(
                model,
                PruningPlan(criterion, 0.3, "global"),
                lambda m: _fitted(scores),
                x,
                protected=protected,
                round_to=4,
            ).model
        )
        for criterion in ("causal", "l1")
    }
    assert widths["causal"]["conv1"] < widths["l1"]["conv1"]  # causal: sqrt-total; l1: mean


def test_a_macs_share_beyond_the_group_caps_prunes_what_they_allow_and_says_so(digits):
    model, _, x, protected = digits
    scores = {root: np.ones(width) for root, width in group_widths(model, x, protected).items()}
    plan = PruningPlan("causal", 0.95, "global")
    with pytest.warns(CompressWarning, match=r"removes only 0\.\d\d of the MACs, not 0\.95: .*--max-group-ratio"):
        result = execute_plan(
            model, plan, lambda m: _fitted(scores), x, protected=protected, round_to=4, max_fraction=0.5
        )
    assert layer_widths(result.model)["conv2"] == 32  # every group at its cap: half of its channels


def test_a_macs_share_that_channel_rounding_forbids_names_the_rounding(digits):
    model, _, x, protected = digits
    scores = {root: np.ones(width) for root, width in group_widths(model, x, protected).items()}
    plan = PruningPlan("causal", 0.5, "global")  # the caps allow 0.5; units of 128 channels do not
    with pytest.warns(CompressWarning, match=r"removes only 0\.\d\d of the MACs, not 0\.50: .*of 128 \(--round-to\)"):
        execute_plan(model, plan, lambda m: _fitted(scores), x, protected=protected, round_to=128)


def test_steps_rescore_and_recalibrate_between_and_reach_the_same_widths(digits):
    model, data, x, protected = digits
    fits, recalibrations = [], []

    def score(m):
        fits.append(layer_widths(m)["conv1"])
        return make_scorer("l1").fit(m, data, x)

    plan = PruningPlan("l1", 0.5, steps=3)
    result = execute_plan(model, plan, score, x, protected=protected, round_to=4, recalibrate=recalibrations.append)
    assert fits == [32, 24, 20]  # each step scores the model the previous step left (26, 21, 16 -> 24, 20, 16)
    assert len(recalibrations) == 2  # between steps, not after the last
    assert layer_widths(result.model) == layer_widths(prune(model, importance_factory("l1"), 0.5, x).model)
    assert group_widths(result.model, x, protected) == {"conv1": 16, "conv2": 32, "conv3": 64, "conv4": 64}


def test_a_group_a_criterion_cannot_score_is_kept_whole_with_one_warning():
    model = TwoConv().eval()  # no batch norm: bn-scale has nothing to read
    data = batches(n=32)
    x = data[0][0]
    scorer = make_scorer("bn-scale").fit(model, data, x)
    assert scorer.importances_ == {}
    with pytest.warns(CompressWarning, match=r"bn-scale gives no scores to group\(s\) conv1, conv2: kept whole"):
        result = execute_plan(model, PruningPlan("bn-scale", 0.5), lambda m: scorer, x, protected=["fc"], round_to=None)
    assert layer_widths(result.model) == layer_widths(model)


def test_plans_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match=r"amount must be in \(0, 1\)"):
        PruningPlan("causal", 1.2)
    with pytest.raises(ValueError, match="allocation must be one of uniform, global, auto"):
        PruningPlan("causal", 0.3, "greedy")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        PruningPlan("causal", 0.3, steps=0)
    assert PruningPlan("random", 0.3, seed=2).name == "random-s2-0.30"


def test_a_run_with_global_allocation_steps_and_a_target_searches_each_criterion(tmp_path):
    import json

    from compress.cli import main

    out = tmp_path / "out"
    args = ["run", "--allocation", "global", "--steps", "2", "--criteria", "causal,l1,random", "--random-seeds", "2"]
    args += ["--ratios", "", "--target-macs-ratio", "0.6", "--out", str(out), "--quiet"]
    args += ["--latency-runs", "3", "--latency-min-seconds", "0", "--latency-window-seconds", "0", "--warmup", "1"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["allocation"] == "global" and report["config"]["steps"] == 2
    targets = report["targets"]
    assert set(targets) == {"causal", "l1", "random"} and all(t["reached"] for t in targets.values())
    for v in report["variants"][1:]:  # every criterion at its own amount, each within the MACs budget
        assert v["ratio"] == targets[v["criterion"]]["ratio"] and v["macs_ratio"] <= 0.6
    shipped = next(v for v in report["variants"] if v["name"] == report["chosen"]["variant"])
    assert shipped["criterion"] == "causal" and shipped["ratio"] == targets["causal"]["ratio"]
    assert (out / "plots" / "widths.png").is_file()


def test_a_run_with_auto_allocation_reports_each_variants_choice_at_the_macs_target(tmp_path):
    import json

    from compress.cli import main

    out = tmp_path / "out"
    args = ["run", "--allocation", "auto", "--criteria", "causal,l1", "--ratios", "", "--target-macs-ratio", "0.5"]
    args += ["--out", str(out), "--quiet"]
    args += ["--latency-runs", "3", "--latency-min-seconds", "0", "--latency-window-seconds", "0", "--warmup", "1"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    candidates = {
        "causal": ["global", "uniform", "global-unrepaired", "global-l1-order", "global-sqrt-mean"],
        "l1": ["global", "uniform"],
    }
    for v in report["variants"][1:]:
        [choice] = v["allocation_choices"]
        # total effects' third: do(channel := 0)'s; an estimated criterion's fourth: l1's channels in its
        # widths; total effects' fifth: global on the sqrt-mean scale
        assert list(choice["agreement"]) == candidates[v["criterion"]]
        assert choice["chosen"] == max(choice["agreement"], key=choice["agreement"].get)  # the one that agrees more
        assert all(0.0 <= a <= 1.0 for a in choice["agreement"].values())
        assert v["ratio"] == 0.5 and v["macs_ratio"] <= 0.5  # a share of MACs, whichever allocation was kept
    assert "auto allocation removed 0.5 of the MACs" in report["chosen"]["reason"]
    markdown = (out / "report.md").read_text()
    assert "## Allocation chosen (--allocation auto)" in markdown
    header = "| variant | step | kept | global | uniform | global-unrepaired | global-l1-order | global-sqrt-mean |"
    assert header in markdown
    [l1_row] = [line for line in markdown.splitlines() if line.startswith("| l1-0.50 | 1 |")]
    assert l1_row.endswith("% |  |  |  |")  # l1 has none of causal's last three candidates: their cells are empty


def test_global_allocation_spends_its_budget_on_the_whole_units_grouped_convolutions_keep():
    torch.manual_seed(0)
    model = randomise_batchnorm(Grouped(c=64, groups=16)).eval()  # 4 channels per part: 16 at a time
    x = torch.randn(8, 3, 16, 16)
    protected = output_layer_names(model, x)
    scores = make_scorer("l1").fit(model, [x], x).importances_
    for allocation in ("global", "uniform-budget"):
        keep = plan_keep(allocation, scores, 0.5, original=group_widths(model, x, protected), round_to=4,
                         costs=MacsModel(model, x, protected), original_macs=count_macs_params(model, x)[0],
                         units={r: g.unit for r, g in group_layouts(model, x, protected).items()})  # fmt: skip
        pruned = prune(model, lambda m: importance_factory("l1")(m), 0.5, x, protected=protected, round_to=4, keep=keep)
        widths = group_widths(pruned.model, x, protected)
        assert widths == keep and widths["conv1"] % 16 == 0  # planned as pruning gives it: no silent rounding
        macs = count_macs_params(pruned.model, x)[0] / count_macs_params(model, x)[0]
        assert macs <= 0.5  # uniform's equal cut moves 16 channels of each group at once: at most the budget
        if allocation == "global":
            assert macs >= 0.45  # spent: before, it planned widths pruning then rounded down to whole parts


def test_global_allocation_plans_coupled_channels_as_pruning_removes_them():
    torch.manual_seed(0)
    model = randomise_batchnorm(GhostStyle(c=16)).eval()
    x = torch.randn(8, 3, 16, 16)
    protected = output_layer_names(model, x)
    plan = PruningPlan("l1", 0.5, "global", 1, None)
    score = lambda m: make_scorer("l1").fit(m, [x], x)  # noqa: E731
    result = execute_plan(model, plan, score, x, protected=protected, round_to=4)
    assert result.kept_unpruned == {}
    widths = group_widths(result.model, x, protected)
    assert widths["project1.primary"] % 2 == 0 and widths["project2.primary"] % 2 == 0  # whole pairs
    costs = MacsModel(model, x, protected)
    macs = count_macs_params(result.model, x)[0]
    assert costs.macs(widths) == pytest.approx(macs)  # the plan's prediction is what pruning gave
    assert 0.45 <= macs / costs.total_ <= 0.5  # the budget spent (before: streams whole, 0.55 or more)
