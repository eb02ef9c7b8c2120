"""Does pruning pay? Latency of causal-pruned models against their originals, on onnxruntime.

    python scripts/bench_latency.py                            # the three models below, print tables
    python scripts/bench_latency.py --write BENCHMARKS.md      # also replace its section there
    python scripts/bench_latency.py --models resnet18 --round-to 1,4,8,16 --ratios 0.5

Models: the CIFAR ResNet-56 layout at 32x32 and torchvision resnet18 and mobilenet_v2 at 224x224,
randomly initialised (latency depends on the shapes, not the weights; nothing is downloaded). Each is
scored with the causal criterion on `--calibration-size` real CIFAR-10 images (resized), pruned at
each ratio with and without channel rounding, exported (parity checked against PyTorch), and timed
with onnxruntime: batch 1 and `--batch`, every variant of a model interleaved in one process, the
whole timing repeated `--repeats` times with fresh sessions. Reported per variant and batch: the
median of the repeats' medians, the repeat-to-repeat spread of the median ((max - min) / median),
p90 and p99 of the pooled calls, the speed-up over the original measured in the same repeat, the
speed-up the MACs promise, and their quotient (efficiency).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from benchmark_tables import machine, replace_section

from compress.artifacts import package_versions
from compress.benchmark import (
    PROVIDERS,
    LatencySettings,
    available_providers,
    default_threads,
    make_session,
    measure_latency,
)
from compress.criteria import importance_factory, make_scorer
from compress.data import load_data
from compress.export import check_parity, export_onnx
from compress.progress import set_quiet
from compress.pruning import count_macs_params, output_layer_names, prune
from compress.recovery import recalibrate_batchnorm
from compress.zoo import get_spec

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS = {"cifar_resnet56": 32, "resnet18": 224, "mobilenet_v2": 224}
HEADING = "### Latency: does pruning pay"


def build_variants(name: str, size: int, args, tmp: Path) -> tuple[dict[str, Path], dict[str, int], dict[str, float]]:
    """Export the original and every (ratio, rounding) causal variant; returns files, MACs, parity."""
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.build(10).eval()
    input_size = (3, size, size)
    data = load_data(
        str(args.data),
        input_size=input_size,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        calibration_size=args.calibration_size,
        evaluation_size=64,
    )
    example = data.example_batch(8)
    images = next(iter(data.loader("evaluation", 32)))[0]
    # Batch-norm statistics of the calibration images, as a trained model has: with the initial ones
    # (mean 0, var 1) activations grow through a deep residual stack and logits reach the thousands.
    recalibrate_batchnorm(model, data.loader("calibration", 32))
    scorer = make_scorer("causal").fit(model, data.loader("calibration", 32), example)
    protected = output_layer_names(model, example)
    models = {"original": model}
    for ratio in args.ratios:
        for round_to in args.round_to:
            label = f"causal-{ratio:.2f}" + ("" if round_to == 1 else f"-round{round_to}")
            pruned = prune(
                model, importance_factory("causal", scorer, 0), ratio, example, protected=protected, round_to=round_to
            ).model
            recalibrate_batchnorm(pruned, data.loader("calibration", 32))
            models[label] = pruned
    files, macs, parity = {}, {}, {}
    for label, variant in models.items():
        path = tmp / f"{name}-{label}.onnx"
        export_onnx(variant, example, path)
        session = make_session(path, "cpu", args.threads)
        parity[label] = check_parity(session, variant, images, tolerance=1e-4).max_abs_diff
        macs[label] = count_macs_params(variant, example)[0]
        files[label] = path
    return files, macs, parity


def time_variants(files: dict[str, Path], size: int, provider: str, args) -> list[dict]:
    """`--repeats` interleaved timings of every file at batch 1 and --batch; fresh sessions each time."""
    settings = LatencySettings(
        warmup=args.warmup,
        runs=args.runs,
        rounds=args.rounds,
        min_seconds=args.min_seconds,
        window_seconds=0,
        slice_seconds=args.slice,
    )
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in (1, args.batch)}
    repeats = []
    for _ in range(args.repeats):
        sessions = {label: make_session(path, provider, args.threads) for label, path in files.items()}
        repeats.append(measure_latency(sessions, inputs, settings, device=PROVIDERS[provider][1]).timings)
        del sessions
    return repeats


def table(name: str, size: int, macs, parity, repeats, provider: str, args) -> list[str]:
    batches = (1, args.batch)
    head = ["variant", "MACs ratio", "parity max abs"]
    for b in batches:
        head += [f"b{b} median ms (spread)", f"b{b} p90 / p99 ms", f"b{b} speed-up (spread)", f"b{b} efficiency"]
    lines = [
        f"#### {name} at {size}x{size}, onnxruntime {provider}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for label in macs:
        cells = [label, f"{macs[label] / macs['original']:.3f}", f"{parity[label]:.1e}"]
        for b in batches:
            key = f"batch_{b}"
            medians = np.array([r[label][key]["median_ms"] for r in repeats])
            ratios = np.array([r["original"][key]["median_ms"] / r[label][key]["median_ms"] for r in repeats])
            median = float(np.median(medians))
            spread = float((medians.max() - medians.min()) / median)
            speedup = float(np.median(ratios))
            speedup_spread = float((ratios.max() - ratios.min()) / speedup)
            promised = macs["original"] / macs[label]
            p90 = np.median([r[label][key]["p90_ms"] for r in repeats])
            p99 = np.median([r[label][key]["p99_ms"] for r in repeats])
            cells += [
                f"{median:.3f} ({100 * spread:.1f}%)",
                f"{p90:.3f} / {p99:.3f}",
                f"{speedup:.2f}x ({100 * speedup_spread:.1f}%)",
                f"{speedup / promised:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    runs = [r["original"]["batch_1"]["runs"] for r in repeats[:1]] + [
        r["original"][f"batch_{args.batch}"]["runs"] for r in repeats[:1]
    ]
    lines += [
        "",
        f"Original: {macs['original']:,} MACs per image. {args.repeats} repeats; timed calls per variant in a "
        f"repeat (original): {runs[0]} at batch 1, {runs[1]} at batch {args.batch}.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="Comma-separated; sizes are fixed per model.")
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--round-to", default="1,4", help="Channel roundings compared (1: none).")
    parser.add_argument("--data", type=Path, default=SHARED / "data/cifar10", help="Calibration images.")
    parser.add_argument("--calibration-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--min-seconds", type=float, default=4.0)
    parser.add_argument("--slice", type=float, default=0.05, help="Seconds of one variant's turn in a round.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--provider", action="append", help="Default: every available (cpu, cuda).")
    parser.add_argument("--write", type=Path, help="Markdown file whose latency section is replaced.")
    args = parser.parse_args()
    args.ratios = [float(r) for r in args.ratios.split(",")]
    args.round_to = [int(r) for r in args.round_to.split(",")]
    providers = args.provider or [p for p in available_providers() if p != "tensorrt"]
    set_quiet(True)
    torch.set_num_threads(args.threads or default_threads())

    command = "python scripts/bench_latency.py " + " ".join(sys.argv[1:])
    start = time.perf_counter()
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            size = MODELS[name]
            t0 = time.perf_counter()
            files, macs, parity = build_variants(name, size, args, Path(tmp))
            for provider in providers:
                repeats = time_variants(files, size, provider, args)
                sections.append(table(name, size, macs, parity, repeats, provider, args))
                print("\n".join(sections[-1]) + "\n", flush=True)
            print(f"({name}: {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    threads = args.threads or default_threads()
    versions = package_versions()
    lines = [
        HEADING,
        "",
        f"Command: `{command.strip()}` ({time.perf_counter() - start:.0f} s wall). Machine: "
        f"{machine()}{'' if providers == ['cpu'] else ' + ' + ', '.join(providers)}; "
        f"onnxruntime {versions.get('onnxruntime')} with {threads} intra-op threads, all graph optimisations, "
        "spinning off, inputs and outputs bound beforehand (I/O binding).",
        "",
        "Randomly initialised weights (latency depends on shapes only) with batch-norm statistics "
        f"re-estimated on the calibration images, causal scores from {args.calibration_size} CIFAR-10 images "
        "resized to the model's input. `round N`: kept channel "
        "counts rounded down to multiples of N; without it, the exact ratio. Speed-up: original median / "
        "variant median within the same repeat (median over repeats); efficiency: speed-up / (original MACs / "
        "variant MACs). Spread, in parentheses: (max - min) / median over the repeats, of the median latency "
        "and of the speed-up. Each repeat builds fresh sessions and times every variant interleaved: "
        f"{args.warmup} warm-up calls, then at least {args.runs} calls and {args.min_seconds:g} s per variant "
        f"and batch, in turns of about {args.slice:g} s (one call at least) so that every variant's calls "
        "span the whole timing window.",
        "",
    ]
    for section in sections:
        lines += [*section, ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section(args.write, HEADING, text)


if __name__ == "__main__":
    main()
