"""Every CUDA path of compress, checked in one run on a GPU machine, with a short table at the end.

Prepare the wheels here (scripts/gpu_wheels.sh), then on the GPU machine, in the repository root:

    mkdir -p /tmp/site && tar xJf .whl/onnxruntime_gpu_sm90.tar.xz -C /tmp/site \\
      && python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/torch_pruning-*.whl \\
      && PYTHONPATH=/tmp/site:$PWD python3 scripts/gpu_check.py --out "$OUT"

Checks, each reported pass/fail with its figures:
1. onnxruntime's CUDA provider (and TensorRT, where it starts): parity with PyTorch and latency with
   inputs and outputs bound to the GPU, for the original and pruned variants of the embedded default
   (digits-cnn) and the project's CIFAR ResNet-20, at batch 1, 32 and 256; speed-up over the original
   and efficiency (speed-up over the MACs reduction), as on the CPU;
2. `compress run --provider cuda` end to end (INT8 twins included);
3. fine-tuning with distillation on the GPU (`--finetune-epochs`);
4. a one-process torchrun with the NCCL backend (`cpu:gloo,cuda:nccl`);
5. the CUDA-marked tests (tests/test_gpu.py).
Writes gpu_check.json and gpu_check.md (the table for BENCHMARKS.md) to --out.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def environment() -> dict:
    import onnxruntime as ort
    import torch

    import compress

    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except FileNotFoundError:
        smi = "no nvidia-smi"
    return {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "nvidia_smi": smi,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
        "compress": compress.__version__,
        "python": sys.version.split()[0],
    }


def latency_section(batches: list[int], seconds: float, provider: str) -> list[dict]:
    """Parity and interleaved latency of original and pruned variants on cuda (and tensorrt)."""
    import torch

    from compress import get_spec, load_data, load_model
    from compress.benchmark import LatencySettings, make_session, time_providers
    from compress.criteria import importance_factory, make_scorer
    from compress.errors import CompressError
    from compress.export import check_parity, export_onnx
    from compress.pruning import count_macs_params, prune
    from compress.recovery import recalibrate_batchnorm

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    for name, weights, criterion in (
        ("digits-cnn", None, "causal"),
        ("cifar_resnet20", ROOT / "models/cifar_resnet20.pt", "l1"),
    ):
        spec = get_spec(name)
        torch.manual_seed(0)
        if name == "digits-cnn":
            data = load_data("digits", input_size=spec.input_size, mean=spec.mean, std=spec.std)
            calibration = data.loader("calibration", 128)
            images = data.evaluation_batch(max(batches))
        else:  # no CIFAR-10 on the GPU machine: latency and parity depend on shapes, not on the images
            calibration = [(torch.randn(128, *spec.input_size), None) for _ in range(4)]
            images = torch.randn(max(batches), *spec.input_size)
        model = load_model(spec, weights, 10).model
        example = calibration[0][0][:16] if isinstance(calibration, list) else next(iter(calibration))[0][:16]
        scorer = make_scorer(criterion).fit(model, calibration, example) if criterion == "causal" else None
        models = {"original": model}
        for ratio in (0.3, 0.5):
            pruned = prune(model, importance_factory(criterion, scorer), ratio, example, round_to=4).model
            recalibrate_batchnorm(pruned, calibration)
            models[f"{criterion}-{ratio:.2f}"] = pruned
        files, macs, parity = {}, {}, {}
        for label, variant in models.items():
            path = export_onnx(variant, example, tmp / f"{name}-{label}.onnx").path
            session = make_session(path, provider)
            parity[label] = check_parity(session, variant, images[:256]).max_abs_diff
            files[label], macs[label] = path, count_macs_params(variant, example)[0]
        inputs = {b: images[:b].numpy() for b in batches}
        settings = LatencySettings(warmup=20, runs=50, min_seconds=seconds, window_seconds=0)
        timed = {}
        for timed_on in (provider, "tensorrt") if provider == "cuda" else (provider,):
            try:
                found = time_providers(files, inputs, settings, [timed_on], macs=macs, baseline="original")
                timed[timed_on] = found[timed_on]
            except CompressError as exc:  # TensorRT needs its own libraries: reported, not fatal
                rows.append({"model": name, "provider": timed_on, "error": str(exc)})
        for timed_on, timing in timed.items():
            for label in files:
                for b in batches:
                    key = f"batch_{b}"
                    t, g = timing.latency[label][key], timing.speedup[label][key]
                    rows.append(
                        {
                            "model": name,
                            "provider": timed_on,
                            "variant": label,
                            "batch": b,
                            "macs_ratio": macs[label] / macs["original"],
                            "parity": parity[label],
                            "median_ms": t["median_ms"],
                            "p90_ms": t["p90_ms"],
                            "speedup": g["speedup"],
                            "efficiency": g["efficiency"],
                        }
                    )
    return rows


def run_cli(args: list[str], timeout: int, torchrun: bool = False) -> dict:
    command = [
        sys.executable,
        *(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"] if torchrun else []),
        "-m",
        "compress",
        *args,
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    return {"code": done.returncode, "seconds": round(time.perf_counter() - start, 1), "stderr": done.stderr[-2000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per variant and batch")
    parser.add_argument("--provider", default="cuda", help="cpu: a dry run of the script where there is no GPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    try:  # onnxruntime-gpu finds PyTorch's CUDA and cuDNN libraries (same major versions)
        importlib.import_module("torch")  # first: its CUDA libraries are the ones onnxruntime-gpu loads
        ort = importlib.import_module("onnxruntime")

        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
    except Exception:
        traceback.print_exc()
    results: dict = {"environment": environment(), "checks": {}}
    print(json.dumps(results["environment"], indent=1), flush=True)
    checks = results["checks"]

    def check(name: str, fn):
        start = time.perf_counter()
        try:
            value = fn()
            checks[name] = {"passed": True, **(value or {})}
        except Exception as exc:  # keep going: one failing path must not hide the others
            checks[name] = {
                "passed": False,
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc()[-3000:],
            }
        checks[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"{name}: {'pass' if checks[name]['passed'] else 'FAIL ' + checks[name]['error']}", flush=True)

    batches = [int(b) for b in args.batches.split(",")]
    check("latency", lambda: {"rows": latency_section(batches, args.seconds, args.provider)})

    runs = Path(tempfile.mkdtemp(prefix="gpu-check-runs-"))  # only the summary comes back in --out
    fast = ["--latency-runs", "20", "--latency-min-seconds", "0.2", "--latency-window-seconds", "2", "--quiet"]

    def cli_run(name: str, cli_args: list[str], torchrun: bool = False) -> dict:
        out = runs / name
        result = run_cli(["run", "--provider", args.provider, "--out", str(out), *cli_args, *fast], 300, torchrun)
        if result["code"] != 0:
            raise RuntimeError(f"exit {result['code']}: {result['stderr']}")
        report = json.loads((out / "report.json").read_text())
        shipped = next(v for v in report["variants"] if v["name"] == report["chosen"]["variant"])
        return {
            "seconds_run": result["seconds"],
            "providers": report["benchmark"]["providers"],
            "parity_max": max(v["parity"]["max_abs_diff"] for v in report["variants"] if v["precision"] == "fp32"),
            "shipped": shipped["name"],
            "shipped_b32_speedup": shipped["speedup"][args.provider]["batch_32"]["speedup"],
            "finetune": [v.get("finetune") for v in report["variants"] if v.get("finetune")][:1],
            "distributed": report["distributed"],
            "int8": [v["name"] for v in report["variants"] if v["precision"] == "int8"],
        }

    check("run_cuda", lambda: cli_run("run-cuda", ["--ratios", "0.3,0.5", "--random-seeds", "2", "--int8"]))
    check(
        "finetune_gpu",
        lambda: cli_run(
            "finetune",
            [
                "--ratios",
                "0.5",
                "--criteria",
                "causal,random",
                "--random-seeds",
                "1",
                "--finetune-epochs",
                "2",
                "--distill",
                "--calibration-size",
                "500",
            ],
        ),
    )
    check(
        "torchrun_nccl",
        lambda: cli_run(
            "torchrun",
            ["--ratios", "0.5", "--criteria", "causal", "--finetune-epochs", "1", "--calibration-size", "500"],
            torchrun=True,
        ),
    )

    def cuda_tests() -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests/test_gpu.py")],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        if done.returncode != 0:
            raise RuntimeError(done.stdout[-2000:])
        return {"summary": done.stdout.strip().splitlines()[-1]}

    check("cuda_tests", cuda_tests)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    table = render(results)
    (args.out / "gpu_check.md").write_text(table)
    print(table)
    return 0 if all(c["passed"] for c in checks.values()) else 1


def render(results: dict) -> str:
    env, checks = results["environment"], results["checks"]
    lines = [
        f"GPU: {env['gpu']} ({env['nvidia_smi']}); torch {env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}), "
        f"onnxruntime {env['onnxruntime']} ({', '.join(env['ort_providers'])}), Python {env['python']}.",
        "",
        "| check | result | figures |",
        "|---|---|---|",
    ]
    for name, c in checks.items():
        figures = {k: v for k, v in c.items() if k not in ("passed", "rows", "trace", "error", "finetune")}
        if c.get("finetune"):
            f = c["finetune"][0]
            figures["finetune"] = f"device {f.get('device')}, loss {[round(e['loss'], 3) for e in f.get('epochs', [])]}"
        text = c.get("error", "")[:200] if not c["passed"] else json.dumps(figures, default=str)[:400]
        lines.append(f"| {name} | {'pass' if c['passed'] else '**FAIL**'} | {text} |")
    rows = checks.get("latency", {}).get("rows", [])
    if rows:
        lines += [
            "",
            "| model | provider | variant | MACs ratio | parity max abs | batch | median ms | p90 ms | speed-up "
            "| efficiency |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['model']} | {r['provider']} | did not start: {r['error'][:150]} | | | | | | | |")
                continue
            lines.append(
                f"| {r['model']} | {r['provider']} | {r['variant']} | {r['macs_ratio']:.3f} | {r['parity']:.1e} "
                f"| {r['batch']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | {r['speedup']:.2f}x "
                f"| {r['efficiency']:.2f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
