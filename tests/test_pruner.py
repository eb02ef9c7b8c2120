"""compress.Pruner: one model pruned from Python as `compress run` prunes a variant."""

from __future__ import annotations

import json
import re

import pytest
import torch

import compress
from compress.pruning import count_macs_params

LATENCY = ["--latency-runs", "3", "--latency-min-seconds", "0", "--latency-window-seconds", "0", "--warmup", "1"]


@pytest.fixture(scope="module")
def digits():
    spec = compress.get_spec("digits-cnn")
    data = compress.load_data("digits", input_size=spec.input_size, mean=spec.mean, std=spec.std)
    model = compress.load_model(spec, num_classes=data.num_classes).model
    return model, data


def test_pruner_gives_the_model_compress_run_gives_with_its_defaults(digits, tmp_path):
    from compress.cli import main

    model, data = digits
    out = tmp_path / "out"
    args = ["run", "--criteria", "causal", "--ratios", "", "--target-macs-ratio", "0.5", "--out", str(out)]
    assert main([*args, "--quiet", *LATENCY]) == 0
    [variant] = json.loads((out / "report.json").read_text())["variants"][1:]

    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = compress.Pruner("causal", target_macs_ratio=0.5).fit(model, data.loader("calibration", 128))

    # the run's defaults: auto allocation at a MACs budget (the report lists every layer, widths_ the groups)
    assert pruner.widths_ == {root: variant["widths"][root] for root in pruner.widths_}
    assert pruner.allocation_choices_ == variant["allocation_choices"]
    assert pruner.amount_ == variant["ratio"] == 0.5
    assert pruner.macs_ratio_ == pytest.approx(variant["macs_ratio"]) and pruner.macs_ratio_ <= 0.5
    top1 = compress.evaluate(pruner.model_, data.loader("evaluation", 256))["top1"]
    assert top1 == pytest.approx(variant["accuracy"]["top1"], abs=0.2)  # batch norms re-estimated alike
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is kept


def test_uniform_allocation_searches_the_amount_that_meets_the_macs_target(digits):
    model, data = digits
    calibration = list(data.loader("calibration", 128))  # a list works as well as a loader
    pruner = compress.Pruner("l1", target_macs_ratio=0.6, allocation="uniform", recalibrate=False)
    pruner.fit(model, calibration)
    assert pruner.allocation_choices_ == []
    assert 0.0 < pruner.amount_ < 1.0 and 0.5 < pruner.macs_ratio_ <= 0.6  # the smallest amount that meets it
    example = data.example_batch(4)
    assert pruner.macs_ratio_ == count_macs_params(pruner.model_, example)[0] / count_macs_params(model, example)[0]
    fractions = {root: pruner.widths_[root] / pruner.original_widths_[root] for root in pruner.widths_}
    assert max(fractions.values()) - min(fractions.values()) < 0.2  # one ratio for every group, up to rounding


def test_a_ratio_is_the_share_of_macs_removed_under_global_allocation(digits):
    model, data = digits
    batches = list(data.loader("calibration", 128))
    pruner = compress.Pruner("causal", ratio=0.3, allocation="global").fit(model, batches)
    assert pruner.amount_ == 0.3 and 0.68 <= pruner.macs_ratio_ <= 0.7
    assert set(pruner.scores_) == set(pruner.widths_)
    assert pruner.scores_ is pruner.scorer_.importances_  # the fitted criterion, its unrepaired effects too
    assert set(pruner.scorer_.unrepaired_importances_) == set(pruner.scores_)

    once = compress.Pruner("causal", ratio=0.3, allocation="global").fit(model, (b for b in batches))  # a generator
    images = data.example_batch(8)
    assert once.widths_ == pruner.widths_  # read once, then kept for every pass: scoring, re-estimation
    assert torch.equal(once.model_(images), pruner.model_(images))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "give exactly one of target_macs_ratio and ratio"),
        ({"ratio": 0.3, "target_macs_ratio": 0.5}, "give exactly one of target_macs_ratio and ratio"),
        ({"target_macs_ratio": 1.5}, "target_macs_ratio must be in (0, 1), got 1.5"),
        ({"ratio": 0.3, "criterion": "l3"}, "criterion must be one of causal, "),
        ({"ratio": 0.3, "allocation": "greedy"}, "allocation must be one of uniform, global, auto, got 'greedy'"),
        ({"ratio": 0.3, "steps": 0}, "steps must be a positive integer, got 0"),
        ({"ratio": 0.3, "max_group_ratio": 1.0}, "max_group_ratio must be in (0, 1), got 1.0"),
        ({"ratio": 0.3, "group_normalisation": "z"}, "group_normalisation must be one of auto, "),
    ],
)
def test_bad_settings_name_the_argument(digits, settings, message):
    model, data = digits
    settings = dict(settings)  # the parameters are shared between runs: not popped from in place
    criterion = settings.pop("criterion", "causal")
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        compress.Pruner(criterion, **settings).fit(model, data.loader("calibration", 128))
