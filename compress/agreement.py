"""How closely a pruned model follows the unpruned one, measured without labels.

The share of calibration images on which a pruned model predicts the class the unpruned model
predicts. It needs no labels (calibration images have none in general), it is what a user compares
when asking whether the pruned model still does what the original did, and on the calibration
images it ranked two prunings of one model at one cost as their test top-1 did at 87 of 88 points
measured (BENCHMARKS.md, auto allocation). `--allocation auto` uses it to choose between the allocations
(compress.plans).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
from torch.utils.data import RandomSampler

from .causal.calibration import batch_images
from .recovery import recalibrate_batchnorm

# Readies a pruned model before it is measured, in place (Agreement hands it a copy): the recovery
# the shipped model gets.
Recover = Callable[[nn.Module], None]


class Agreement:
    """Top-1 agreement with a reference model on `batches` (re-iterable: a DataLoader or a list).

    `fit(reference)` records the reference's predicted class for every image (`predictions_`);
    `score(model)` returns the share of the images on which `model` predicts the same class, in
    [0, 1], after `recover` (say, batch-norm re-estimation) on a copy of it: the model itself is not
    changed, so what it scores before recovery can still be reported.
    """

    def __init__(self, batches: Iterable, recover: Recover | None = None):
        self.batches = batches
        self.recover = recover

    @torch.no_grad()
    def fit(self, reference: nn.Module) -> Agreement:
        if isinstance(getattr(self.batches, "sampler", None), RandomSampler):  # a new order on every pass
            raise ValueError(
                "agreement compares predictions image by image, but the batches are shuffled on every pass: "
                "give a DataLoader with shuffle=False, or a list of batches"
            )
        reference.eval()
        self.predictions_, self.fingerprints_ = self._predict(reference)
        if not len(self.predictions_):
            raise ValueError("agreement needs at least one image; the batches are empty")
        return self

    def _predict(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """`model`'s predicted class for every image, and every image's sum (to tell the same images)."""
        predictions, fingerprints = [torch.empty(0, dtype=torch.long)], [torch.empty(0, dtype=torch.float64)]
        for batch in self.batches:
            images = batch_images(batch)
            predictions.append(model(images).argmax(1).cpu())
            fingerprints.append(images.detach().flatten(1).double().sum(1).cpu())
        return torch.cat(predictions), torch.cat(fingerprints)

    @torch.no_grad()
    def score(self, model: nn.Module) -> float:
        if not hasattr(self, "predictions_"):
            raise RuntimeError("Agreement.score called before fit(reference)")
        if self.recover is not None:
            model = copy.deepcopy(model)
            self.recover(model)
        model.eval()
        predicted, fingerprints = self._predict(model)
        if predicted.shape != self.predictions_.shape:
            raise ValueError(
                f"the batches gave {len(predicted)} images, the reference saw {len(self.predictions_)}: "
                "pass a loader that yields the same images every time"
            )
        if not torch.allclose(fingerprints, self.fingerprints_, rtol=1e-6, atol=1e-6):  # a custom sampler's
            # shuffle, a random augmentation: the images differ from the reference's, so would the answers
            raise ValueError(
                "the batches gave other images than the reference saw (shuffled, or randomly augmented): "
                "pass a loader that yields the same images every time, without random transforms"
            )
        return float((predicted == self.predictions_).double().mean())


def recalibrated_agreement(reference: nn.Module, batches: Iterable, recalibrate: bool = True) -> Agreement:
    """Auto allocation's measure, fitted on `reference`: agreement on `batches` after the batch-norm
    re-estimation on them that the shipped model gets (none when `recalibrate` is False)."""
    recover = functools.partial(recalibrate_batchnorm, batches=batches) if recalibrate else None
    return Agreement(batches, recover=recover).fit(reference)
