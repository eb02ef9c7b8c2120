"""How stable are latency figures on this machine, and what makes them so?

    python scripts/bench_timing.py                          # print the tables
    python scripts/bench_timing.py --write BENCHMARKS.md    # also replace its section there

Two measurements, side by side in one run:
1. The machine itself: a fixed single-threaded float32 matrix product, counted in back-to-back
   windows of `--window` seconds for `--seconds` seconds. On a machine with steady speed every window
   does the same work; the table shows how far the slowest and fastest windows are from the median.
2. The timing method: two ONNX files of different cost (the CIFAR ResNet-56 and ResNet-20 layouts,
   32x32) timed by `compress`'s interleaved benchmark `--repeats` times, each repeat with fresh
   sessions, for each thread count and timing length asked for. Reported: the repeat-to-repeat
   spread ((max - min) / median) of each file's median latency and of the speed-up between them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from benchmark_tables import replace_section

from compress.artifacts import package_versions
from compress.benchmark import LatencySettings, make_session, measure_latency
from compress.export import export_onnx
from compress.progress import set_quiet
from compress.zoo import get_spec

HEADING = "### Timing stability on this machine"


def machine_noise(seconds: float, window: float) -> np.ndarray:
    """Work done per window by a fixed single-threaded matrix product, relative to the machine's fast
    speed (the 95th percentile window: the fastest one alone could be a fluke)."""
    torch.set_num_threads(1)
    a = torch.rand(256, 256)
    counts = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < window:
            a @ a
            n += 1
        counts.append(n)
    counts = np.asarray(counts, dtype=float)
    return counts / np.percentile(counts, 95)


def spread(values) -> float:
    values = np.asarray(values, dtype=float)
    return float((values.max() - values.min()) / np.median(values))


def timing_spread(files: dict[str, Path], threads: int, min_seconds: float, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    inputs = {1: rng.standard_normal((1, 3, 32, 32), dtype=np.float32)}
    inputs[32] = rng.standard_normal((32, 3, 32, 32), dtype=np.float32)
    settings = LatencySettings(warmup=20, runs=20, min_seconds=min_seconds, window_seconds=0)
    medians: dict[str, list[float]] = {}
    for _ in range(repeats):
        sessions = {name: make_session(path, "cpu", threads) for name, path in files.items()}
        timings = measure_latency(sessions, inputs, settings).timings
        for batch in inputs:
            key = f"batch_{batch}"
            for name in files:
                medians.setdefault(f"{name} b{batch}", []).append(timings[name][key]["median_ms"])
            medians.setdefault(f"speed-up b{batch}", []).append(
                timings["resnet56"][key]["median_ms"] / timings["resnet20"][key]["median_ms"]
            )
    return {k: spread(v) for k, v in medians.items()} | {f"{k} value": float(np.median(v)) for k, v in medians.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=0.5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--min-seconds", default="1,6", help="Timed seconds per file and batch, compared.")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    set_quiet(True)
    command = "python scripts/bench_timing.py " + " ".join(sys.argv[1:])
    start = time.perf_counter()

    noise = machine_noise(args.seconds, args.window)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for depth in (56, 20):
            torch.manual_seed(0)
            model = get_spec(f"cifar_resnet{depth}").build(10).eval()
            files[f"resnet{depth}"] = export_onnx(model, torch.randn(2, 3, 32, 32), Path(tmp) / f"r{depth}.onnx").path
        for threads in (int(t) for t in args.threads.split(",")):
            for seconds in (float(s) for s in args.min_seconds.split(",")):
                rows.append((threads, seconds, timing_spread(files, threads, seconds, args.repeats)))

    keys = ["resnet56 b1", "resnet20 b1", "speed-up b1", "resnet56 b32", "resnet20 b32", "speed-up b32"]
    lines = [
        HEADING,
        "",
        f"Command: `{command.strip()}` ({time.perf_counter() - start:.0f} s wall, 2-core x86-64 CPU, onnxruntime "
        f"{package_versions().get('onnxruntime')}).",
        "",
        f"The machine: a fixed single-threaded 256x256 float32 matrix product counted in {args.window:g} s windows "
        f"for {args.seconds:g} s. Work per window relative to the machine's fast speed (the 95th percentile "
        f"window): min {noise.min():.2f}, p10 {np.percentile(noise, 10):.2f}, median {np.median(noise):.2f}, "
        f"max {noise.max():.2f}; {100 * np.mean(noise < 0.9):.0f}% of the windows ran more than 10% slow. A "
        "steady machine gives 1.00 everywhere.",
        "",
        f"The method: repeat-to-repeat spread ((max - min) / median over {args.repeats} repeats, fresh sessions "
        "each) of the median latency of two files timed interleaved, and of the speed-up between them "
        "(ResNet-56 over ResNet-20 layout, 32x32; value = median over repeats).",
        "",
        "| threads | timed s per file and batch | " + " | ".join(keys) + " |",
        "|" + "---|" * (len(keys) + 2),
    ]
    for threads, seconds, result in rows:
        cells = [str(threads), f"{seconds:g}"]
        for key in keys:
            unit = "x" if key.startswith("speed-up") else " ms"
            cells.append(f"{100 * result[key]:.1f}% ({result[key + ' value']:.3g}{unit})")
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        replace_section(args.write, HEADING, text)


if __name__ == "__main__":
    main()
