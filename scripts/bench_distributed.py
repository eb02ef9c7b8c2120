"""One process against N under torchrun: the same importances, accuracy and variants, and the time.

    python scripts/bench_distributed.py --nproc 2 --model cifar_resnet20 \\
        --weights models/cifar_resnet20.pt --data ../shared/data/cifar10 --write BENCHMARKS.md

Runs `compress run` once in one process and once under `torchrun --standalone --nproc-per-node N`
(gloo on CPU), with the same flags (extra arguments go to both), then compares: the largest relative
difference of any importance (the target is 1e-6: the calibration statistics are sums, and the
processes' sums are all-reduced), the accuracy of every variant before fine-tuning (sharded counts,
summed: equal), the scoring time and the wall time of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmark_tables import replace_section

HEADING = "### Data-parallel runs: one process against torchrun"
FAST = ["--latency-runs", "3", "--latency-min-seconds", "0", "--latency-window-seconds", "0", "--warmup", "1"]


def run_compress(launcher: list[str], out: Path, flags: list[str]) -> float:
    start = time.perf_counter()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [*launcher, "-m", "compress", "run", "--out", str(out), "--quiet", *FAST, *flags]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2, help="processes of the torchrun run")
    parser.add_argument("--write", type=Path, help="Markdown file whose section is replaced.")
    args, flags = parser.parse_known_args()
    flags = flags or ["--criteria", "causal", "--ratios", "0.5"]

    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}"]
        seconds = {1: run_compress([sys.executable], one, flags), args.nproc: run_compress(torchrun, many, flags)}
        reports = {n: json.loads((d / "report.json").read_text()) for n, d in ((1, one), (args.nproc, many))}
        a, b = np.load(one / "importances.npz"), np.load(many / "importances.npz")
        worst = max(float(np.max(np.abs(a[k] - b[k]) / np.maximum(np.abs(a[k]), 1e-12))) for k in a.files if a[k].size)
        n_scores = sum(a[k].size for k in a.files)

    lines = [
        HEADING,
        "",
        f"Command: `python scripts/bench_distributed.py {' '.join(sys.argv[1:])}` (2-core CPU, gloo). Both runs "
        f"use the same flags; the {args.nproc}-process run shards calibration, fine-tuning and evaluation.",
        "",
        f"Largest relative difference over {n_scores} importances: **{worst:.1e}** (target 1e-6).",
        "",
        "| processes | wall s | causal scoring s | calibration images | variant | top-1 before recovery | top-1 "
        "after recovery | top-1 (final) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, report in reports.items():
        scoring = report["scoring"].get("causal", {})
        for v in report["variants"]:
            acc = v["accuracy"]
            cells = [
                str(n),
                f"{seconds[n]:.0f}",
                f"{scoring.get('seconds', 0):.1f}",
                str(scoring.get("calibration_images", "—")),
                v["name"],
                f"{acc['top1_before_recovery']:.2f}" if "top1_before_recovery" in acc else "—",
                f"{acc.get('top1_before_finetune', acc['top1']):.2f}",
                f"{acc['top1']:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Top-1 before recovery is counted on shards and summed, so it must match to the image; after "
        "fine-tuning it may differ a little (each process's batch norm sees its own shard of each batch, "
        "and the sampler shuffles per process). Wall times on a 2-core machine say nothing about scaling: the "
        "processes share the same two cores.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        replace_section(args.write, HEADING, text)


if __name__ == "__main__":
    main()
