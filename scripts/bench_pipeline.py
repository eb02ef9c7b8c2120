"""Benchmark the whole `compress run` pipeline: causal vs L1 vs random pruning, accuracy and CPU latency.

    python scripts/bench_pipeline.py                          # embedded default, 10 random seeds
    python scripts/bench_pipeline.py --write BENCHMARKS.md    # also replace its section there

Runs the pipeline once (all variants side by side, latency interleaved across variants) and prints:
accuracy per ratio (causal and L1 against random's mean, std, 95% interval over seeds, and causal's
margin in random standard deviations), and latency per ratio (median and p90 at batch 1 and the
larger batch, speed-up against the original measured in the same run). Extra arguments are passed to
`compress run` (e.g. --model resnet18 --weights W --data DIR --image-size 32).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmark_tables import T_975, replace_section

from compress.cli import run_config_from_args
from compress.pipeline import run
from compress.progress import set_quiet


def _interval(stats: dict) -> str:
    n = stats["n"]
    if n < 3:
        return "—"
    half = T_975.get(n - 1, 1.96) * stats["std"] / np.sqrt(n)
    return f"[{stats['mean'] - half:.2f}, {stats['mean'] + half:.2f}]"


def accuracy_table(report: dict) -> list[str]:
    seeds = report["seeds"]["random_baselines"]
    lines = [
        f"Top-1 % on {report['data']['evaluation_images']} evaluation images (onnxruntime), after batch-norm "
        f"re-estimation; before it in parentheses. Random: {len(seeds)} seeds {seeds[0]}..{seeds[-1]}.",
        "",
        "| ratio | MACs kept | causal | l1 | random mean ± std | random 95% CI | causal − random |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["summary"]:
        c, l1, r = row["causal"], row["l1"], row["random"]
        units = row["causal_minus_random_in_std"]
        margin = f"{row['causal_minus_random']:+.2f}" + (f" ({units:+.1f} std)" if units is not None else "")
        lines.append(
            f"| {row['ratio']:.2f} | {c['macs_ratio']:.3f} "
            f"| {c['top1']['mean']:.2f} ({c['top1_before_recovery']['mean']:.2f}) "
            f"| {l1['top1']['mean']:.2f} ({l1['top1_before_recovery']['mean']:.2f}) "
            f"| {r['top1']['mean']:.2f} ± {r['top1']['std']:.2f} ({r['top1_before_recovery']['mean']:.2f}) "
            f"| {_interval(r['top1'])} | {margin} |"
        )
    return lines


def auto_choices(report: dict) -> list[str]:
    """With auto allocation, the candidate each criterion's variants kept, ratio by ratio (random: its
    first seed); nothing otherwise."""
    if report["config"].get("allocation") != "auto":
        return []
    first_seed = report["seeds"]["random_baselines"][0] if report["seeds"]["random_baselines"] else None
    kept: dict[str, list[str]] = {}
    for v in report["variants"]:
        if v.get("allocation_choices") and not (v["criterion"] == "random" and v["seed"] != first_seed):
            kept.setdefault(v["criterion"], []).append(f"{v['ratio']:.2f} {v['allocation_choices'][0]['chosen']}")
    each = "; ".join(f"{criterion}: {', '.join(choices)}" for criterion, choices in kept.items())
    return ["", f"Auto allocation kept, by ratio: {each}."] if kept else []


def _random_shapes(report: dict) -> str:
    """How the random rows' shapes relate to the others': uniform allocation gives every criterion the
    same widths; global allocation gives each its own (random ranks channels at random across groups), and
    auto allocation each its choice among its candidates' widths."""
    allocation = report["config"].get("allocation", "uniform")
    if allocation == "uniform":
        return "Random variants share the causal ones' shapes; the first seed is shown."
    return f"Each criterion allocates its own widths ({allocation} allocation), random too; its first seed is shown."


def latency_table(report: dict) -> list[str]:
    provider = report["benchmark"]["providers"][0]
    batches = report["benchmark"]["latency_batches"]
    head = ["variant", "params", "MACs ratio"]
    for b in batches:
        head += [f"b{b} median ms", f"b{b} p90 / p99 ms", f"b{b} speed-up (efficiency)"]
    lines = [
        f"onnxruntime {provider}, {report['benchmark']['threads']} threads, {report['benchmark']['runs']} timed "
        f"calls (and {report['benchmark']['min_seconds']:g} s) at least per variant and batch, interleaved in "
        f"turns of about {report['benchmark']['slice_seconds']:g} s. Speed-up = original median / variant median, "
        f"same run; efficiency = speed-up / (original MACs / variant MACs). {_random_shapes(report)}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    first_seed = report["seeds"]["random_baselines"][0] if report["seeds"]["random_baselines"] else None
    for v in report["variants"]:
        if v["criterion"] == "random" and v["seed"] != first_seed:
            continue
        cells = [v["name"], f"{v['params']:,}", f"{v['macs_ratio']:.3f}"]
        for b in batches:
            t, g = v["latency"][provider][f"batch_{b}"], v["speedup"][provider][f"batch_{b}"]
            cells += [
                f"{t['median_ms']:.3f}",
                f"{t['p90_ms']:.3f} / {t['p99_ms']:.3f}",
                f"{g['speedup']:.2f}x ({g['efficiency']:.2f})",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def int8_table(report: dict) -> list[str]:
    """INT8 twins against their fp32 parents: accuracy and speed-up, same run."""
    provider = report["benchmark"]["providers"][0]
    batches = report["benchmark"]["latency_batches"]
    variants = {v["name"]: v for v in report["variants"]}
    int8 = [v for v in report["variants"] if v.get("precision") == "int8"]
    # Agreement is measured on the batch kept for parity and latency, not the whole evaluation set.
    shown = int8[0]["parity"]["agreement_images"] if int8 else 0
    head = ["INT8 variant", "top-1", "fp32 parent top-1", "drop (points)", f"top-1 agreement ({shown} images)"]
    head += [f"b{b} speed-up over parent" for b in batches]
    lines = [
        "INT8: onnxruntime static quantisation (QDQ, per-channel int8 weights with reduced range, uint8 "
        "activations, MinMax on the calibration images), timed in the same interleaved run.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for v in report["variants"]:
        if v.get("precision") != "int8":
            continue
        parent = variants[v["parent"]]
        cells = [
            v["name"],
            f"{v['accuracy']['top1']:.2f}",
            f"{parent['accuracy']['top1']:.2f}",
            f"{v['accuracy']['top1_drop_from_parent']:+.2f}",
            f"{100 * v['parity']['top1_agreement']:.1f}%",
        ]
        for b in batches:
            key = f"batch_{b}"
            cells.append(
                f"{parent['latency'][provider][key]['median_ms'] / v['latency'][provider][key]['median_ms']:.2f}x"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, help="Markdown file whose pipeline section is replaced.")
    parser.add_argument("--random-seeds", type=int, default=10)
    args, passthrough = parser.parse_known_args()

    command = "python scripts/bench_pipeline.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        config = run_config_from_args(
            ["--out", str(Path(tmp) / "out"), "--random-seeds", str(args.random_seeds), *passthrough]
        )
        set_quiet(True)
        start = time.perf_counter()
        report = run(config)
        seconds = time.perf_counter() - start

    model = report["model"]
    lines = [
        f"### {model['name']} on {report['data']['source']}",
        "",
        f"Command: `{command.strip()}` ({seconds:.0f} s wall, 2-core CPU). Original: {model['params']:,} parameters, "
        f"{model['macs']:,} MACs, top-1 {report['variants'][0]['accuracy']['top1']:.2f}%. Channel rounding "
        f"to multiples of {report['config']['round_to']}.",
        "",
        *accuracy_table(report),
        *auto_choices(report),
        "",
        *latency_table(report),
        "",
        *([*int8_table(report), ""] if report["config"]["int8"] else []),
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['environment']['versions'].items() if v)}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        replace_section(args.write, f"### {model['name']} on {report['data']['source']}", text)


if __name__ == "__main__":
    main()
