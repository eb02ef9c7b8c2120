"""Accuracy of a PyTorch model; the same top-k rule serves the ONNX benchmark."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn as nn

from .progress import progress


def topk_correct(logits: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """How many rows of `logits` have their label among the k highest scores, for each k."""
    order = np.argsort(-logits, axis=1, kind="stable")
    hits = order == labels[:, None]
    return {k: int(hits[:, : min(k, logits.shape[1])].any(axis=1).sum()) for k in ks}


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], desc: str = "evaluating"
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) of `model` in eval mode; the caller's mode is restored."""
    was_training = model.training
    model.eval()
    correct, total = {1: 0, 5: 0}, 0
    try:
        for x, y in progress(batches, desc=desc, unit="batch"):
            counts = topk_correct(model(x).numpy(), y.numpy())
            correct = {k: correct[k] + counts[k] for k in correct}
            total += len(y)
    finally:
        model.train(was_training)
    return {"top1": 100.0 * correct[1] / max(total, 1), "top5": 100.0 * correct[5] / max(total, 1)}


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy (percent) on in-memory tensors."""
    batches = [(images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return evaluate(model, batches)["top1"]
