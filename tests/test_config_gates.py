"""Release pipelines: configuration files, `compress config show`, and quality gates with exit code 1."""

import json

import pytest

from compress.benchmark import LatencySettings
from compress.cli import main, run_config_from_args
from compress.config import RunConfig, read_config_file
from compress.errors import ConfigError
from compress.targets import MAX_RATIO, bisect_ratio, search_speedup

FAST = ["--latency-runs", "3", "--latency-min-seconds", "0", "--latency-window-seconds", "0", "--warmup", "1"]


def test_a_config_file_sets_fields_and_flags_override_it(tmp_path):
    path = tmp_path / "compress.toml"
    path.write_text('ratios = [0.3, 0.5]\ncriteria = "causal,random"\nrandom-seeds = 2\nlatency_batch = 16\n')
    config = run_config_from_args(["--config", str(path), "--random-seeds", "5"])
    assert config.ratios == (0.3, 0.5) and config.criteria == ("causal", "random")
    assert config.random_seeds == 5  # the flag wins
    assert config.latency_batch == 16  # underscores work like dashes
    assert run_config_from_args([]) == RunConfig()


def test_config_show_prints_toml_that_reads_back_to_the_same_configuration(tmp_path, capsys):
    path = tmp_path / "compress.toml"
    path.write_text("[run]\nratios = [0.25]\nmax-size-mb = 3.5\n")  # a [run] table works too
    assert main(["config", "show", "--config", str(path), "--seed", "7"]) == 0
    shown = capsys.readouterr().out
    assert "ratios = [0.25]" in shown and "seed = 7" in shown and "max-size-mb = 3.5" in shown
    again = tmp_path / "shown.toml"
    again.write_text(shown)
    assert run_config_from_args(["--config", str(again)]) == run_config_from_args(
        ["--config", str(path), "--seed", "7"]
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ratioz = [0.3]\n", "unknown key 'ratioz'; did you mean 'ratios'?"),
        ("latency-bach = 8\n", "unknown key 'latency-bach'; did you mean 'latency-batch'?"),
        ("random-seeds = 'three'\n", "random-seeds must be an integer, got 'three'"),
        ("ratios = 0.3\n", "ratios must be a list"),
        ("force = 1\n", "force must be true or false, got 1"),
        ("ratios = [0.3\n", "is not valid TOML"),
        ("seed = 2\n[run]\nratios = [0.3]\n", "key 'seed' is outside the [run] table"),
        ("latency_batch = 32\nlatency-batch = 16\n", "'latency_batch' and 'latency-batch' are the same key"),
    ],
)
def test_bad_config_files_name_the_key(tmp_path, capsys, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        read_config_file(path)
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()


def test_an_unknown_provider_in_a_config_file_is_refused_before_anything_runs(tmp_path, capsys):
    path = tmp_path / "gpu.toml"
    path.write_text('providers = ["gpu"]\n')
    for command in (["config", "show"], ["run", "--out", str(tmp_path / "out")]):
        assert main([*command, "--config", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"compress: error: {path}: providers: unknown provider 'gpu'; choose from cpu, cuda, tensorrt"]
    assert not (tmp_path / "out").exists()


def test_a_bad_value_is_blamed_on_the_config_file_only_when_the_file_holds_it(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('criteria = ["foo"]\nratios = [0.3]\n')
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"compress: error: {path}: criteria: unknown criterion 'foo'; choose from causal, causal-direct, "
        "causal-reference, intervention, taylor, l1, l2, bn-scale, lamp, random"
    ]
    # the flag's value is the bad one: the file is not named
    assert main(["config", "show", "--config", str(path), "--criteria", "l1", "--ratios", "2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "compress: error: ratios: each pruning ratio must be in (0, 1), got 2"
    ]
    # a flag that fixes the file's value: nothing to blame
    assert run_config_from_args(["--config", str(path), "--criteria", "l1"]).criteria == ("l1",)
    assert not (tmp_path / "out").exists()


def test_a_setting_that_has_no_effect_with_the_others_is_named_once(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("finetune-lr = 0.1\ndistill-weight = 0.5\n")
    args = ["config", "show", "--config", str(path), "--allocation", "uniform", "--group-normalisation", "mean"]
    assert main(args) == 0
    assert capsys.readouterr().err.splitlines() == [
        "compress: warning: --distill-weight has no effect without --finetune-epochs N (N >= 1)",
        "compress: warning: --finetune-lr has no effect without --finetune-epochs N (N >= 1)",
        "compress: warning: --group-normalisation has no effect with --allocation uniform",
    ]
    assert main(["config", "show", "--finetune-lr", "0.1", "--finetune-epochs", "1"]) == 0
    assert capsys.readouterr().err == ""
    folder = ["--data", str(tmp_path), "--download", "--data-root", str(tmp_path), "--trust-code"]
    assert main(["config", "show", *folder]) == 0
    named = "it is for the data sets torchvision downloads (cifar10, cifar100, mnist, fashion-mnist, kmnist)"
    assert capsys.readouterr().err.splitlines() == [
        f"compress: warning: --data-root has no effect with --data {tmp_path}: {named}",
        f"compress: warning: --download has no effect with --data {tmp_path}: {named}",
        "compress: warning: --trust-code has no effect with --model digits-cnn: only an import path "
        "(package.module:factory) runs code of yours",
    ]
    assert main(["config", "show", "--data", "mnist", "--download", "--model", "m:build", "--trust-code"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["config", "show"]) == 0  # every key, at its default, read back: nothing to say
    path.write_text(capsys.readouterr().out)
    assert main(["config", "show", "--config", str(path)]) == 0
    assert capsys.readouterr().err == ""


def test_bad_gate_thresholds_are_refused():
    with pytest.raises(ConfigError, match="min_speedup must be a finite number >= 0"):
        RunConfig(min_speedup=-1).validate()


@pytest.mark.parametrize(
    "field, value",
    [
        ("ridge", float("nan")),
        ("parity_tolerance", float("nan")),
        ("accuracy_tolerance", float("nan")),
        ("latency_min_seconds", float("inf")),
        ("finetune_weight_decay", float("inf")),
        ("distill_temperature", float("inf")),
        ("mean", (0.5, float("nan"), 0.5)),
        ("std", (float("inf"),)),
    ],
)
def test_nan_and_infinity_are_refused_where_a_number_is_expected(field, value):
    # nan passes `value < 0`-style checks, so every float field is checked for being finite first
    with pytest.raises(ConfigError, match=f"{field} must be a finite number"):
        RunConfig(**{field: value}).validate()


def test_an_infinite_timing_option_is_one_line_not_a_traceback(tmp_path, capsys):
    with pytest.raises(ConfigError, match="window_seconds must be a finite number"):
        LatencySettings(window_seconds=float("inf")).validate()
    assert main(["run", "--latency-min-seconds", "inf", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["compress: error: latency_min_seconds must be a finite number, got inf"]
    assert not list(tmp_path.iterdir())


def _run(tmp_path, name, *gates):
    out = tmp_path / name
    args = ["run", "--out", str(out), "--ratios", "0.5", "--criteria", "causal", "--quiet", *FAST, *gates]
    return main(args), out


def _gate_values(out):
    report = json.loads((out / "report.json").read_text())
    return report, {g["name"]: g for g in report["gates"]}


def test_a_gate_just_above_and_just_below_the_measured_value_flips_the_exit_code(tmp_path, capsys):
    code, out = _run(tmp_path, "probe", "--max-accuracy-drop", "100", "--max-size-mb", "100")
    assert code == 0
    report, gates = _gate_values(out)
    drop, size = gates["max_accuracy_drop"]["value"], gates["max_size_mb"]["value"]
    original = report["variants"][0]["accuracy"]["top1"]
    assert drop == pytest.approx(original - report["variants"][1]["accuracy"]["top1"])
    assert size == (out / "model.onnx").stat().st_size / 1e6  # the shipped file, in 10^6 bytes

    code, out = _run(tmp_path, "pass", "--max-accuracy-drop", f"{drop + 0.01}", "--max-size-mb", f"{size + 0.001}")
    report, gates = _gate_values(out)
    assert code == 0 and report["gates_passed"] is True
    assert gates["max_size_mb"]["value"] == (out / "model.onnx").stat().st_size / 1e6

    args = ["--max-accuracy-drop", f"{drop - 0.01}", "--min-speedup", "1000", "--max-size-mb", f"{size - 0.001}"]
    code, out = _run(tmp_path, "fail", *args)
    assert code == 1
    report, gates = _gate_values(out)  # written in full despite the failed gates
    assert report["gates_passed"] is False
    assert {name: g["passed"] for name, g in gates.items()} == {
        "max_accuracy_drop": False,
        "min_speedup": False,
        "max_size_mb": False,
    }
    assert gates["max_size_mb"]["value"] == (out / "model.onnx").stat().st_size / 1e6
    assert (out / "model.onnx").is_file() and (out / "manifest.json").is_file()
    assert "Quality gates" in (out / "report.md").read_text()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3  # one line per failed gate
    assert all(f"gate failed: {name}" in line for name, line in zip(gates, err, strict=True))


def test_bisection_finds_the_smallest_ratio_that_reaches_the_target():
    ratio, value, reached, steps = bisect_ratio(lambda r: 1 - r, lambda v: v - 0.58, steps=10)
    assert reached and 0.42 <= ratio <= 0.42 + 0.05 / 2**10 and value <= 0.58
    assert [s["ratio"] for s in steps[:9]] == pytest.approx([0.05 * i for i in range(1, 10)])  # the grid walk
    assert len(steps) == 9 + 10
    ratio, value, reached, _ = bisect_ratio(lambda r: 1 - r, lambda v: v - 0.01)
    assert (ratio, reached) == (MAX_RATIO, False) and value == pytest.approx(0.05)


def test_search_is_not_fooled_by_macs_that_rise_again_at_high_ratios():
    # channel rounding leaves groups whole past some ratio: MACs fall, then jump back to the original's
    def macs(ratio):
        return 1 - ratio if ratio < 0.9 else 1.0

    ratio, value, reached, _ = bisect_ratio(macs, lambda v: v - 0.5)
    assert reached and 0.5 <= ratio <= 0.5 + 0.05 / 2**5 and value <= 0.5
    ratio, value, reached, _ = bisect_ratio(macs, lambda v: v - 0.05)  # out of reach: the closest ratio
    assert not reached and ratio == pytest.approx(0.85) and value == pytest.approx(0.15)


def test_target_macs_ratio_picks_and_ships_the_smallest_ratio_that_meets_it(tmp_path):
    out = tmp_path / "target"
    args = ["run", "--out", str(out), "--ratios", "0.5", "--criteria", "causal", "--target-macs-ratio", "0.6"]
    assert main([*args, "--allocation", "uniform", "--quiet", *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    target = report["target"]
    assert target["kind"] == "macs_ratio" and target["reached"]
    shipped = next(v for v in report["variants"] if v["name"] == report["chosen"]["variant"])
    assert shipped["ratio"] == target["ratio"] and shipped["macs_ratio"] <= 0.6
    assert any(s["ratio"] < target["ratio"] and s["value"] > 0.6 for s in target["steps"])  # one step less misses
    assert "target MACs ratio 0.6" in report["chosen"]["reason"]
    assert {v["ratio"] for v in report["variants"] if v["criterion"]} == {0.5, target["ratio"]}


def test_with_global_allocation_a_macs_target_is_the_amount_itself_and_is_met_closely(tmp_path):
    out = tmp_path / "target"
    args = ["run", "--out", str(out), "--ratios", "", "--criteria", "causal,l1", "--target-macs-ratio", "0.6"]
    assert main([*args, "--allocation", "global", "--quiet", *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    for criterion, target in report["targets"].items():
        assert target["ratio"] == pytest.approx(0.4) and target["reached"] and len(target["steps"]) == 1
        variant = next(v for v in report["variants"] if v["criterion"] == criterion)
        assert 0.56 <= variant["macs_ratio"] <= 0.6  # spent to within a rounding unit, never over
    assert "global allocation removed 0.4 of the MACs" in report["chosen"]["reason"]


@pytest.fixture
def macs_clock(monkeypatch):
    """A noiseless clock for the speed-up search: an ONNX file takes 1 ms per million MACs of its graph, so
    a speed-up is a quotient of MACs; every timing it gives is logged ({"o": original, "c": candidate})."""
    import compress.targets
    from compress.benchmark import LatencyRun
    from compress.onnx_info import read_onnx_info

    log = []

    def measure(sessions, inputs, settings=None, device="cpu"):
        ms = {name: read_onnx_info(path).macs / 1e6 for name, path in sessions.items()}
        log.append(ms)
        return LatencyRun({name: {f"batch_{b}": {"median_ms": t} for b in inputs} for name, t in ms.items()})

    monkeypatch.setattr(compress.targets, "make_session", lambda path, *args, **kwargs: path)
    monkeypatch.setattr(compress.targets, "measure_latency", measure)
    return log


def test_speedup_search_times_candidates_against_the_original(digits_splits, digits_model, macs_clock):
    example = digits_splits.example_batch(8)
    search = search_speedup(digits_model, example, example.numpy(), 1.5, protected=["fc"], round_to=4, steps=2)
    assert search.kind == "speedup" and search.steps[0]["ratio"] == pytest.approx(0.1)
    assert len(macs_clock) == len(search.steps)
    for step, ms in zip(search.steps, macs_clock, strict=True):
        assert ms["c"] < ms["o"]  # every candidate is a pruned, cheaper model
        assert step["value"] == pytest.approx(ms["o"] / ms["c"])  # the original's time over the candidate's
    assert search.reached and search.value >= 1.5
    assert all(s["value"] < 1.5 for s in search.steps if s["ratio"] < search.ratio)  # the smallest ratio reaching it


def test_speedup_search_runs_on_real_timings(digits_splits, digits_model):
    example = digits_splits.example_batch(8)
    settings = LatencySettings(warmup=1, runs=3, min_seconds=0, window_seconds=0)
    search = search_speedup(
        digits_model, example, example.numpy(), 1.01, protected=["fc"], round_to=4, settings=settings, steps=1
    )
    assert all(s["value"] > 0 for s in search.steps)
    assert search.reached == (search.value >= 1.01)


def test_target_speedup_through_the_cli_prunes_and_ships_the_ratio_it_found(tmp_path, macs_clock):
    out = tmp_path / "speedup"
    args = ["run", "--out", str(out), "--ratios", "", "--criteria", "causal,l1", "--target-speedup", "1.5"]
    args += ["--allocation", "uniform", "--calibration-size", "300"]  # one search: shapes do not depend on scores
    assert main([*args, "--quiet", *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    target = report["target"]
    assert (target["kind"], target["target"], target["reached"]) == ("speedup", 1.5, True)
    assert len(target["steps"]) == len(macs_clock) and target["value"] >= 1.5
    pruned = [v for v in report["variants"] if v["criterion"]]
    assert sorted(v["criterion"] for v in pruned) == ["causal", "l1"]
    assert {v["ratio"] for v in pruned} == {target["ratio"]}  # --ratios "": the ratio found alone
    shipped = next(v for v in report["variants"] if v["name"] == report["chosen"]["variant"])
    assert (shipped["criterion"], shipped["ratio"]) == ("causal", target["ratio"])
    assert "target measured speed-up 1.5" in report["chosen"]["reason"]
    # the shipped model is the searched shape: its MACs (counted by the run) promise the speed-up measured
    assert shipped["macs_ratio"] == pytest.approx(1 / target["value"], rel=0.01)


def test_targets_are_validated():
    with pytest.raises(ConfigError, match="not both"):
        RunConfig(target_macs_ratio=0.5, target_speedup=2.0).validate()
    with pytest.raises(ConfigError, match=r"target_macs_ratio must be in \(0, 1\)"):
        RunConfig(target_macs_ratio=1.5).validate()
    with pytest.raises(ConfigError, match="target_speedup must be a finite number > 1"):
        RunConfig(target_speedup=0.5).validate()


def test_ship_int8_ships_the_twin_within_tolerance_and_keeps_fp32_weights(tmp_path):
    import torch

    out = tmp_path / "out"
    args = ["run", "--ratios", "0.2", "--criteria", "causal", "--ship-int8", "--int8-images", "64", "--quiet"]
    assert main([*args, "--out", str(out), *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["int8"]  # implied
    twin = next(v for v in report["variants"] if v["name"] == "causal-0.20-int8")
    original = report["variants"][0]["accuracy"]["top1"]
    assert twin["accuracy"]["top1"] >= original - 1.0  # within the default tolerance on this model
    assert report["chosen"]["variant"] == "causal-0.20-int8" and "INT8 twin" in report["chosen"]["reason"]
    assert (out / "model.onnx").read_bytes() == (out / "onnx" / "causal-0.20-int8.onnx").read_bytes()
    assert torch.load(out / "pruned.pt", weights_only=True)["variant"] == "causal-0.20"  # PyTorch runs fp32


def _record(name, top1, ratio, criterion="causal", precision="fp32", parent=None):
    return {"name": name, "criterion": criterion, "ratio": ratio, "precision": precision, "parent": parent,
            "accuracy": {"top1": top1}}  # fmt: skip


def test_the_most_pruned_ship_criterion_variant_within_the_tolerance_ships():
    from compress.pipeline import choose_variant

    records = [
        _record("original", 95.0, 0.0, criterion=None),
        _record("causal-0.20", 94.5, 0.2),
        _record("causal-0.40", 94.1, 0.4),  # 0.9 points down: the most pruned within 1
        _record("causal-0.50", 93.0, 0.5),  # 2 points down
        _record("causal-0.60", 93.9, 0.6),  # 1.1 points down
        _record("l1-0.80", 94.9, 0.8, criterion="l1"),  # within, but not the ship criterion
        _record("causal-0.40-int8", 94.8, 0.4, precision="int8", parent="causal-0.40"),  # no --ship-int8
    ]
    config = RunConfig(ratios=(0.2, 0.4, 0.5, 0.6, 0.8), criteria=("causal", "l1")).validate()
    chosen = choose_variant(records, config)
    assert chosen["variant"] == "causal-0.40" and chosen["within_tolerance"] is True
    assert "within 1 points" in chosen["reason"]
    wider = RunConfig(ratios=config.ratios, criteria=config.criteria, accuracy_tolerance=1.5).validate()
    assert choose_variant(records, wider)["variant"] == "causal-0.60"  # past a dip, the most pruned within
    by_l1 = RunConfig(ratios=config.ratios, criteria=config.criteria, ship_criterion="l1").validate()
    assert choose_variant(records, by_l1)["variant"] == "l1-0.80"
    # none within the tolerance: the least pruned ships, and the report says so
    strict = RunConfig(ratios=config.ratios, criteria=config.criteria, accuracy_tolerance=0.1).validate()
    chosen = choose_variant(records, strict)
    assert chosen["variant"] == "causal-0.20" and chosen["within_tolerance"] is False
    assert chosen["reason"].startswith("no causal variant is within 0.1 points")


def test_choose_variant_keeps_fp32_when_the_int8_twin_falls_outside_the_tolerance():
    from compress.pipeline import choose_variant

    def variant(name, top1, ratio, precision="fp32", parent=None):
        return {"name": name, "criterion": "causal", "ratio": ratio, "precision": precision, "parent": parent,
                "accuracy": {"top1": top1}}  # fmt: skip

    records = [variant("original", 90.0, 0.0), variant("causal-0.30", 89.5, 0.3)]
    records[0]["criterion"] = None
    twin = variant("causal-0.30-int8", 88.9, 0.3, "int8", "causal-0.30")
    config = RunConfig(ratios=(0.3,), criteria=("causal",), ship_int8=True).validate()
    chosen = choose_variant([*records, twin], config)
    assert chosen["variant"] == "causal-0.30" and "is not within 1 points" in chosen["reason"]
    twin["accuracy"]["top1"] = 89.0
    assert choose_variant([*records, twin], config)["variant"] == "causal-0.30-int8"


def test_explain_reads_the_model_and_scoring_keys_of_a_run_config(tmp_path, capsys):
    path = tmp_path / "compress.toml"
    path.write_text('calibration-size = 300\nridge = 0.5\nratios = [0.3]\nout = "run-output"\n')
    out = tmp_path / "explained"
    assert main(["explain", "--config", str(path), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["calibration_images"] == 300  # from the file
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["ridge"] == 0.5 and manifest["config"]["out"] == str(out)  # not the run's out
    assert not (tmp_path / "run-output").exists()


def test_explain_takes_neither_out_nor_force_from_a_run_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    release = tmp_path / "release"
    release.mkdir()
    (release / "manifest.json").write_text("{}")
    (release / "model.onnx").write_text("a shipped model")
    path = tmp_path / "compress.toml"
    path.write_text('calibration-size = 300\nout = "release"\nforce = true\n')
    assert main(["explain", "--config", str(path), "--quiet"]) == 0
    assert (release / "model.onnx").read_text() == "a shipped model"  # the run's results stay
    assert (tmp_path / "compress-explain" / "manifest.json").is_file()  # explain's own default
