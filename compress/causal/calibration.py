"""Iterating calibration batches the same way for every scorer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch


def batch_images(batch) -> torch.Tensor:
    """The images of a batch given as (images, labels), [images, labels] or images."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def open_batches(batches: Iterable, max_batches: int | None = None) -> tuple[torch.Tensor, Iterator, int | None]:
    """(first batch's images, an iterator of images over all batches including the first, batch count).

    The first batch is read up front so its images can trace the model; the count (None when the
    loader has no length) drives the progress bar; at most `max_batches` batches are yielded.
    """
    total = len(batches) if hasattr(batches, "__len__") else None
    if total is not None and max_batches is not None:
        total = min(total, max_batches)
    iterator = iter(batches)
    try:
        first = batch_images(next(iterator))
    except StopIteration:
        raise ValueError("no calibration batches: the calibration data is empty") from None

    def images() -> Iterator[torch.Tensor]:
        yield first
        for i, batch in enumerate(iterator, start=1):
            if max_batches is not None and i >= max_batches:
                return
            yield batch_images(batch)

    return first, images(), total
