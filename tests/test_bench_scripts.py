"""Benchmark scripts (summarise_matched, bench_pipeline): what they write into BENCHMARKS.md comes out right."""

from __future__ import annotations

import json
from pathlib import Path

from builders import load_script, scripts_on_path

# every candidate auto allocation can keep for causal (compress.plans.allocation_candidates)
AUTO_CANDIDATES = ("global", "uniform", "global-unrepaired", "global-l1-order", "global-sqrt-mean")


def test_the_heldout_architectures_are_registered_for_the_scripts_and_run_at_32x32():
    import importlib

    import torch

    from compress.zoo import get_spec

    with scripts_on_path():
        heldout = importlib.import_module("heldout_models")  # as bench_criteria and train import it
    assert set(heldout.HELDOUT) == {"cifar_vgg11_half_bn", "cnn5", "cnn5_bn"}
    has_bn = {}
    for name in heldout.HELDOUT:
        spec = get_spec(name)
        model = spec.build(10).eval()
        assert spec.input_size == (3, 32, 32)
        assert model(torch.zeros(2, *spec.input_size)).shape == (2, 10)
        has_bn[name] = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert has_bn == {"cifar_vgg11_half_bn": True, "cnn5": False, "cnn5_bn": True}


def row(criterion, after, allocation="global", steps=1):
    return {"target": 2.0, "criterion": criterion, "allocation": allocation, "steps": steps, "after": after}


def write(path: Path, rows: list[dict], **fields) -> Path:
    path.write_text(json.dumps([{"model": "m", "rows": rows, **fields}]))
    return path


def test_causal_defaults_against_the_best_baseline_per_seed_and_over_the_seeds(tmp_path):
    summarise = load_script("summarise_matched")
    # seed 0: two runs of an old script (no recorded seed or normalisation), told by suffixes
    mean0 = write(
        tmp_path / "a.json", [row("causal", 60.0, allocation="auto"), row("l1", 62.0), row("taylor", 50.0, steps=3)]
    )
    total0 = write(tmp_path / "b.json", [row("l1", 40.0)])
    # seed 1: a new run records its seed and each global row's normalisation
    rows1 = [row("causal", 70.0, allocation="auto"), row("l1", 61.0), row("taylor", 65.0, steps=3)]
    rows1[0]["normalisation"], rows1[1]["normalisation"], rows1[2]["normalisation"] = "sqrt-total", "mean", "mean"
    run1 = write(tmp_path / "c.json", [*rows1, row("random", 99.0, allocation="uniform")], data_seed=1)

    table = summarise.load([f"{mean0}:auto@0", f"{total0}:sqrt-total@0", str(run1)])
    configs = table["m"][2.0]
    assert configs[("causal", "auto", 1, "sqrt-total")] == {0: 60.0, 1: 70.0}  # auto resolves per criterion
    assert configs[("l1", "global", 1, "mean")] == {0: 62.0, 1: 61.0}
    assert configs[("l1", "global", 1, "sqrt-total")] == {0: 40.0}  # the suffix named it
    assert not any(c[0] == "random" for c in configs)  # random is no baseline configuration

    text = summarise.render(table, "cmd")
    # seed 0: l1 (62) beats causal (60): a miss; seed 1: causal 70 beats Taylor 65 and l1 61. Over the
    # seeds: causal 65.0 against the best complete baseline mean, l1 mean 61.5 (Taylor 57.5)
    assert "| 2x | 60.00 / 70.00 | 62.00 l1 · global mean (miss); 65.00 taylor · global mean, 3 steps |" in text
    assert "| 65.00 | 61.50 l1 · global mean |" in text
    assert "at 1 of 1 points** (mean margin +3.50); seed by seed, at 1 of 2." in text


def test_a_tie_between_baselines_is_named_alike_per_seed_and_over_the_seeds(tmp_path):
    summarise = load_script("summarise_matched")
    rows = [
        row("causal", 60.0, allocation="auto"),
        row("l2", 70.0, allocation="uniform"),
        row("lamp", 70.0, allocation="uniform"),
    ]
    table = summarise.load([f"{write(tmp_path / 'a.json', rows)}:auto@0"])
    text = summarise.render(table, "cmd")
    assert "| 2x | 60.00 | 70.00 lamp · uniform (miss) | 60.00 **(miss)** | 70.00 lamp · uniform |" in text


def test_a_later_input_replaces_an_earlier_ones_row(tmp_path):
    summarise = load_script("summarise_matched")
    first = write(tmp_path / "a.json", [row("causal", 60.0, allocation="auto"), row("l1", 62.0)])
    rerun = write(tmp_path / "b.json", [row("causal", 65.0, allocation="auto")])
    table = summarise.load([f"{first}:auto@0", f"{rerun}:auto@0"])
    assert table["m"][2.0][("causal", "auto", 1, "sqrt-total")] == {0: 65.0}
    assert "| 2x | 65.00 | 62.00 l1 · global mean | 65.00 | 62.00 l1 · global mean |" in summarise.render(table, "cmd")


def test_int8_table_says_how_many_images_agreement_is_measured_on():
    bench = load_script("bench_pipeline")
    timing = {"cpu": {"batch_1": {"median_ms": 2.0}}}
    parent = {"name": "causal-0.5", "accuracy": {"top1": 99.0}, "latency": timing}
    twin = {
        "name": "causal-0.5-int8",
        "precision": "int8",
        "parent": "causal-0.5",
        "accuracy": {"top1": 98.5, "top1_drop_from_parent": 0.5},
        "parity": {"top1_agreement": 31 / 32, "agreement_images": 32},
        "latency": {"cpu": {"batch_1": {"median_ms": 1.0}}},
    }
    report = {"benchmark": {"providers": ["cpu"], "latency_batches": [1]}, "variants": [parent, twin]}
    lines = bench.int8_table(report)
    assert "top-1 agreement (32 images)" in lines[2]
    assert "| causal-0.5-int8 | 98.50 | 99.00 | +0.50 | 96.9% | 2.00x |" in lines


def test_pipeline_latency_table_says_whose_widths_the_random_rows_have():
    bench = load_script("bench_pipeline")
    report = {
        "benchmark": {
            "providers": ["cpu"],
            "latency_batches": [1],
            "threads": 2,
            "runs": 50,
            "min_seconds": 1,
            "slice_seconds": 0.05,
        },
        "seeds": {"random_baselines": [0]},
        "variants": [],
    }
    uniform = bench.latency_table({**report, "config": {"allocation": "uniform"}})[0]
    global_ = bench.latency_table({**report, "config": {"allocation": "global"}})[0]
    assert "share the causal ones' shapes" in uniform
    assert "its own widths (global allocation)" in global_ and "share the causal" not in global_
    assert "its own widths (auto allocation)" in bench.latency_table({**report, "config": {"allocation": "auto"}})[0]


def test_the_matched_tables_compare_causal_defaults_and_say_what_auto_allocation_kept():
    bench = load_script("bench_criteria")
    kept = [{"step": 1, "chosen": "uniform", "agreement": {"global": 0.8, "uniform": 0.9}}]
    result = {
        "rows": [
            {**row("causal", 70.0, allocation="auto"), "macs": 0.48, "choices": kept},  # the default allocation
            {**row("causal", 65.0), "macs": 0.5},
            {**row("causal", 70.0, allocation="uniform"), "macs": 0.48},
            {**row("l1", 68.0), "macs": 0.5},
        ]
    }
    [line] = bench.best_lines(result, [2.0])
    assert line == "- 2x: causal (defaults) 70.00 at 0.480 MACs; best baseline l1 · global 68.00 at 0.500: +2.00"
    assert bench.choice_lines(result, [2.0]) == [
        "- 2x, causal · auto: kept uniform (agreement global 80.00% / uniform 90.00%); "
        "top-1 global 65.00 / uniform 70.00",
        "",
    ]


def test_finetune_table_says_what_auto_allocation_kept():
    bench = load_script("bench_finetune")
    targets = {"causal": {"ratio": 0.5}, "l1": {"ratio": 0.5}}
    global_choice = [{"step": 1, "chosen": "global", "agreement": {"global": 0.8, "uniform": 0.7}}]
    uniform_choice = [{"step": 1, "chosen": "uniform", "agreement": {"global": 0.6, "uniform": 0.7}}]
    report = {
        "config": {"allocation": "auto"},
        "targets": targets,
        "variants": [
            {"name": "original"},
            {"name": "causal-0.50", "allocation_choices": global_choice},
            {"name": "l1-0.50", "allocation_choices": global_choice},
        ],
    }
    assert bench.amounts(report) == (
        "Auto allocation (global kept for every variant) removing 0.5000 of the MACs for every criterion,"
    )
    report["variants"][2]["allocation_choices"] = uniform_choice
    assert "(causal-0.50: global, l1-0.50: uniform)" in bench.amounts(report)
    report["config"]["allocation"] = "global"
    assert bench.amounts(report) == "Global allocation removing 0.5000 of the MACs for every criterion,"


def test_the_architecture_check_prunes_to_the_target_and_reports_a_failure_in_one_line(capsys):
    check = load_script("check_architectures")
    assert check.main(["--models", "digits-cnn", "no_such_net", "--target", "0.5", "--image-size", "8"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| architecture | MACs kept (target 0.5) |")
    digits, missing = table[2].split(" | "), table[3]
    assert digits[0] == "| digits-cnn" and 0.4 <= float(digits[1]) <= 0.5 and digits[2] in AUTO_CANDIDATES
    assert digits[3] == "none"  # no group had to be kept whole
    assert missing.startswith("| no_such_net | failed: ModelError: unknown model 'no_such_net'")


def test_pipeline_tables_say_which_candidate_auto_allocation_kept():
    bench = load_script("bench_pipeline")

    def variant(criterion, ratio, chosen, seed=None):
        return {"criterion": criterion, "ratio": ratio, "seed": seed, "allocation_choices": [{"chosen": chosen}]}

    variants = [
        {"criterion": None, "ratio": 0.0, "seed": None},  # the original: no choice
        variant("causal", 0.2, "global-unrepaired"),
        variant("causal", 0.5, "global"),
        variant("l1", 0.2, "uniform"),
        variant("random", 0.2, "global", seed=0),
        variant("random", 0.2, "uniform", seed=1),  # not the first seed: not shown
    ]
    report = {"config": {"allocation": "auto"}, "seeds": {"random_baselines": [0, 1]}, "variants": variants}
    assert bench.auto_choices(report) == [
        "",
        "Auto allocation kept, by ratio: causal: 0.20 global-unrepaired, 0.50 global; l1: 0.20 uniform; "
        "random: 0.20 global.",
    ]
    assert bench.auto_choices({**report, "config": {"allocation": "global"}}) == []
