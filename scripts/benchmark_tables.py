"""Shared by the benchmark scripts: confidence intervals and replacing a section of BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

# Two-sided 95% quantiles of Student's t by degrees of freedom (n - 1).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def interval95(values) -> tuple[float, float] | None:
    """95% t-interval of the mean; None below 3 values."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 3:
        return None
    half = T_975.get(n - 1, 1.96) * values.std(ddof=1) / np.sqrt(n)
    return float(values.mean() - half), float(values.mean() + half)


def replace_section(path: Path, heading: str, text: str) -> None:
    """Replace the section starting at `heading` (up to the next heading of that level) or append it."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(heading)
    if start < 0:
        new = old.rstrip() + "\n\n" + text
    else:
        end = old.find("\n### ", start + len(heading))
        new = old[:start] + text.rstrip("\n") + "\n" + ("\n" + old[end + 1 :] if end >= 0 else "")
    path.write_text(new)


def machine() -> str:
    """This machine as a benchmark states it: cores and the vector extensions its kernels use (read, not
    assumed: onnxruntime's blocked convolutions work in blocks of 16 channels with AVX-512, 8 with AVX2)."""
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    flags = set(value.split())
                elif key.strip() == "model name":
                    model = value.strip()
    except OSError:
        pass
    isa = [name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags][:1]
    isa.append("VNNI" if {"avx512_vnni", "avx_vnni"} & flags else "no VNNI")
    return f"{os.cpu_count()}-core {platform.machine()} CPU ({model}; {', '.join(isa)})"
