"""Recovery after pruning: batch-norm statistics re-estimated on calibration images.

Removing channels shifts the distribution every later batch norm sees; its running mean and variance
are stale. One pass over calibration data with cumulative averaging (momentum=None) re-estimates them
without touching a single weight.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from .progress import progress


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, max_batches: int | None = None) -> int:
    """Re-estimate the running statistics of every batch-norm layer of `model`, in place.

    Only the batch-norm layers run in training mode; everything else (dropout included) stays in eval
    mode. Returns the number of batch-norm layers updated; the model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    saved_momentum = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    try:
        for i, batch in enumerate(progress(batches, desc="re-estimating batch norm", unit="batch")):
            if max_batches is not None and i >= max_batches:
                break
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for m, momentum in zip(norms, saved_momentum, strict=True):
            m.momentum = momentum
        model.eval()
    return len(norms)
