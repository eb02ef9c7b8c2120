"""Shared by the benchmark scripts: confidence intervals and replacing a section of BENCHMARKS.md."""

from __future__ import annotations

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
