"""Quality gates: thresholds the shipped model must meet, for release pipelines.

Each gate is checked on the variant that became model.onnx; the report states every gate, its
threshold, the measured value and whether it passed, and `compress run` exits with 1 when any failed
(after writing everything, so the pipeline can publish the report of a rejected model).
"""

from __future__ import annotations

from typing import Any

from .config import RunConfig


def check_gates(config: RunConfig, variants: list[dict[str, Any]], chosen: str, provider: str) -> list[dict]:
    """One record per gate set in `config`: name, threshold, value, unit, passed, what it measures."""
    original = variants[0]
    shipped = next(v for v in variants if v["name"] == chosen)
    batch = f"batch_{config.latency_batch}"
    gates = []
    if config.max_accuracy_drop is not None:
        drop = original["accuracy"]["top1"] - shipped["accuracy"]["top1"]
        gates.append(
            _gate(
                "max_accuracy_drop",
                config.max_accuracy_drop,
                drop,
                "points",
                drop <= config.max_accuracy_drop,
                f"top-1 of {chosen} below the original's, on the evaluation data",
            )
        )
    if config.min_speedup is not None:
        speedup = shipped["speedup"][provider][batch]["speedup"]
        gates.append(
            _gate(
                "min_speedup",
                config.min_speedup,
                speedup,
                "x",
                speedup >= config.min_speedup,
                f"median latency of the original over {chosen}'s, {provider}, {batch}, same run",
            )
        )
    if config.max_size_mb is not None:
        size = shipped["onnx_bytes"] / 1e6
        gates.append(
            _gate(
                "max_size_mb",
                config.max_size_mb,
                size,
                "MB",
                size <= config.max_size_mb,
                "size of model.onnx, MB (10^6 bytes)",
            )
        )
    return gates


def _gate(name: str, threshold: float, value: float, unit: str, passed: bool, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "threshold": threshold,
        "value": float(value),
        "unit": unit,
        "passed": bool(passed),
        "what": what,
    }
