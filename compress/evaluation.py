"""Accuracy of a PyTorch model; the same top-k rule serves the ONNX benchmark.

In a distributed run each process counts hits on its shard of the evaluation images and the counts
are summed (`evaluate_sharded`), so the accuracy is that of the whole split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from .data import make_loader
from .distributed import SINGLE, Distributed
from .progress import progress


def topk_correct(logits: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """How many rows of `logits` have their label among the k highest scores, for each k."""
    order = np.argsort(-logits, axis=1, kind="stable")
    hits = order == labels[:, None]
    return {k: int(hits[:, : min(k, logits.shape[1])].any(axis=1).sum()) for k in ks}


def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], desc: str = "evaluating"
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) of `model` in eval mode; the caller's mode is restored."""
    return percentages(count_correct(model, batches, desc))


def evaluate_sharded(
    model: nn.Module,
    dataset,
    batch_size: int,
    distributed: Distributed = SINGLE,
    desc: str = "evaluating",
) -> dict[str, float]:
    """`evaluate` on `dataset`, each process of a distributed run counting its shard."""
    counts = count_correct(model, make_loader(distributed.shard(dataset), batch_size), desc)
    return percentages(distributed.sum_counts(counts))


def count_correct(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], desc: str = "evaluating"
) -> dict[str, int]:
    """`count_hits` of `model` in eval mode, without gradients; the caller's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return count_hits(lambda x: model(x).numpy(), batches, desc)
    finally:
        model.train(was_training)


def count_hits(
    predict: Callable[[torch.Tensor], np.ndarray], batches: Iterable[tuple[torch.Tensor, torch.Tensor]], desc: str
) -> dict[str, int]:
    """Images seen (`n`) and how many had their label among the top 1 and top 5 scores `predict`
    gives them (`1`, `5`): the rule for PyTorch models and ONNX files alike."""
    counts = {"n": 0, "1": 0, "5": 0}
    for x, y in progress(batches, desc=desc, unit="batch"):
        hits = topk_correct(predict(x), np.asarray(y))
        counts = {"n": counts["n"] + len(y), "1": counts["1"] + hits[1], "5": counts["5"] + hits[5]}
    return counts


def percentages(counts: dict[str, int]) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) from `count_correct`'s counts."""
    total = max(counts["n"], 1)
    return {"top1": 100.0 * counts["1"] / total, "top5": 100.0 * counts["5"] / total}


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy (percent) on in-memory tensors."""
    batches = [(images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return evaluate(model, batches)["top1"]
