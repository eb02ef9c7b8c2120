"""Training and fine-tuning: SGD with a learning-rate schedule, optional distillation from a teacher.

One loop serves both `compress run --finetune-epochs N` (recovering a pruned model, the original as
teacher) and `scripts/train.py` (training the shipped checkpoints from scratch). Under torchrun it
trains with DistributedDataParallel: each process sees its DistributedSampler shard and a batch of
`batch_size / world_size`, so the global batch and the schedule are those of a 1-process run.

The caller's model is trained in place; the pipeline hands it a pruned copy, never the original.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from .distributed import SINGLE, Distributed
from .errors import TrainingError
from .progress import progress_bar

log = logging.getLogger("compress")

SCHEDULES = ("cosine", "step", "constant")
AUGMENTATIONS = ("auto", "crop-flip", "crop", "none")


@dataclass
class TrainSettings:
    """How a model is (fine-)tuned.

    `batch_size` is the global batch (split over the processes of a distributed run). `schedule`:
    `cosine` anneals the learning rate per step to 0; `step` multiplies it by 0.1 at 50% and 75% of
    the steps; `constant` keeps it. `augment`: random crops (padding of 1/8 of the side) and, with
    `crop-flip`, horizontal flips; `auto` flips only colour images (flipped digits are other digits).
    With `distill`, the loss is `distill_weight * T^2 * KL(teacher_T || student_T) + (1 -
    distill_weight) * cross-entropy`, with temperature T (Hinton et al., 2015).
    """

    epochs: int = 1
    lr: float = 0.01
    schedule: str = "cosine"
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: str = "auto"
    distill: bool = False
    temperature: float = 4.0
    distill_weight: float = 0.7
    label_smoothing: float = 0.0
    seed: int = 0

    def validate(self) -> TrainSettings:
        def check(name: str, ok: bool, want: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {want}, got {getattr(self, name)!r}")

        check("epochs", isinstance(self.epochs, int) and self.epochs >= 1, "an integer >= 1")
        check("lr", self.lr > 0 and math.isfinite(self.lr), "a finite number > 0")
        check("schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}")
        check("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1, "an integer >= 1")
        check("momentum", 0 <= self.momentum < 1, "in [0, 1)")
        check("weight_decay", self.weight_decay >= 0, ">= 0")
        check("augment", self.augment in AUGMENTATIONS, f"one of {', '.join(AUGMENTATIONS)}")
        check("temperature", self.temperature > 0, "> 0")
        check("distill_weight", 0 <= self.distill_weight <= 1, "in [0, 1]")
        check("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What `train` did: per-epoch mean loss and learning rate, images per epoch, wall time."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    images_per_epoch: int = 0
    seconds: float = 0.0
    world_size: int = 1
    device: str = "cpu"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def learning_rate(settings: TrainSettings, step: int, total_steps: int) -> float:
    """The learning rate at `step` of `total_steps` under `settings.schedule`."""
    progress = step / max(total_steps, 1)
    if settings.schedule == "cosine":
        return settings.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if settings.schedule == "step":
        return settings.lr * (0.1 ** (int(progress >= 0.5) + int(progress >= 0.75)))
    return settings.lr


def augment_batch(images: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Random crops (zero padding of 1/8 of the side, i.e. the mean colour after normalisation) and,
    for `crop-flip`, random horizontal flips; `none` returns the images unchanged."""
    if mode == "none":
        return images
    n, _, height, width = images.shape
    pad = max(1, min(height, width) // 8)
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    crops = [padded[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(zip(dy, dx, strict=True))]
    out = torch.stack(crops)
    if mode == "crop-flip":
        flip = torch.rand(n, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def resolve_augment(mode: str, channels: int) -> str:
    """`auto`: crops and flips for colour images, crops alone otherwise (digits are not symmetric)."""
    if mode != "auto":
        return mode
    return "crop-flip" if channels == 3 else "crop"


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    weight: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Hinton's knowledge distillation: soft targets at temperature T (scaled by T^2 so their
    gradients keep their size as T changes) mixed with the hard-label cross-entropy."""
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if weight == 0:
        return hard
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)
    return weight * soft + (1 - weight) * hard


def train(
    model: nn.Module,
    dataset: Dataset,
    settings: TrainSettings,
    *,
    teacher: nn.Module | None = None,
    distributed: Distributed = SINGLE,
    desc: str = "training",
) -> TrainResult:
    """Train `model` in place on `dataset` ((image, label) pairs); returns what happened.

    With `settings.distill`, `teacher` (required) supplies soft targets; it is only run, in eval
    mode, and never changed. Runs on the process's device (its GPU under torchrun with CUDA, else the
    CPU); the model is back on the CPU, in eval mode, when this returns. In a distributed run every
    process ends with rank 0's weights and batch-norm statistics.
    """
    settings.validate()
    if settings.distill and teacher is None:
        raise ValueError("distillation needs a teacher model")
    device = distributed.device
    world = distributed.world_size
    local_batch = max(1, settings.batch_size // world)
    sampler = DistributedSampler(
        dataset, num_replicas=world, rank=distributed.rank, shuffle=True, seed=settings.seed, drop_last=True
    )
    # drop_last: a last batch of a few images gives batch norm noisy statistics.
    loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, drop_last=len(sampler) > local_batch)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"no training batches: {len(dataset)} images for batch size {settings.batch_size}")
    total_steps = settings.epochs * steps_per_epoch

    model.to(device).train()
    if teacher is not None:
        teacher = teacher.to(device).eval()
    augment = resolve_augment(settings.augment, dataset[0][0].shape[0])
    generator = torch.Generator().manual_seed(settings.seed * 1009 + distributed.rank)
    decay, no_decay = _parameter_groups(model)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=settings.momentum > 0,
    )
    trained = nn.parallel.DistributedDataParallel(model) if distributed.enabled else model

    result = TrainResult(images_per_epoch=steps_per_epoch * local_batch * world, world_size=world, device=str(device))
    start, step = time.perf_counter(), 0
    bar = progress_bar(total_steps, desc=desc, unit="step") if distributed.is_main else None
    try:
        for epoch in range(settings.epochs):
            sampler.set_epoch(epoch)
            loss_sum, batches = torch.zeros((), dtype=torch.float64, device=device), 0
            for images, labels in loader:
                lr = learning_rate(settings, step, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = augment_batch(images, augment, generator).to(device, non_blocking=True)
                labels = torch.as_tensor(labels).to(device, non_blocking=True)
                logits = trained(images)
                if settings.distill:
                    with torch.no_grad():
                        teacher_logits = teacher(images)
                    loss = distillation_loss(
                        logits,
                        teacher_logits,
                        labels,
                        settings.temperature,
                        settings.distill_weight,
                        settings.label_smoothing,
                    )
                else:
                    loss = F.cross_entropy(logits, labels, label_smoothing=settings.label_smoothing)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"{desc}: the loss became {loss.item()} at step {step} of {total_steps}; "
                        "lower the learning rate (--finetune-lr)"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                batches += 1
                step += 1
                if bar is not None:
                    bar.update(1)
            mean_loss = loss_sum / batches
            distributed.all_reduce_sum([mean_loss])
            loss, seconds = float(mean_loss) / world, time.perf_counter() - start
            lr_end = learning_rate(settings, step, total_steps)
            result.epochs.append({"epoch": epoch + 1, "loss": loss, "lr_end": lr_end, "seconds": round(seconds, 3)})
            if distributed.is_main:  # a line per epoch: long jobs in pipelines show they are alive
                log.info("%s: epoch %d/%d, loss %.4f, %.0f s", desc, epoch + 1, settings.epochs, loss, seconds)
    finally:
        if bar is not None:
            bar.close()
    # DDP keeps the weights equal, but each process updated batch-norm statistics on its own shard.
    distributed.broadcast_module(model)
    model.cpu().eval()
    if teacher is not None:
        teacher.cpu()
    result.seconds = time.perf_counter() - start
    return result


def _parameter_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Weights of conv and linear layers get weight decay; biases and normalisation scales do not."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() > 1 else no_decay).append(parameter)
    return decay, no_decay
