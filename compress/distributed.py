"""Data-parallel runs on PyTorch's own engine: `torchrun --nproc-per-node N -m compress run ...`.

torchrun starts N processes and tells each its RANK, WORLD_SIZE and LOCAL_RANK through the
environment; `init_distributed` joins them into one process group (gloo for CPU tensors, NCCL for
CUDA tensors when GPUs are present). Every process runs the same pipeline on its shard of the data:

- calibration: each process accumulates the sufficient statistics of its shard; a sum-`all_reduce`
  makes them the statistics of all the calibration images, so the solve equals a 1-process run's;
- fine-tuning: DistributedDataParallel (see `training.py`);
- evaluation: each process counts hits on its shard; the counts are summed.

Only rank 0 writes outputs and times latency; the others wait for it at the end.
Without torchrun (WORLD_SIZE unset or 1) every call here is a no-op on one process.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Dataset, Subset

# Rank 0 alone times latency and writes the report while the others wait at a barrier: long enough
# for big benchmarks, unlike the default 30 minutes.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a data-parallel run (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """A process group exists (torchrun), even of one process: its collectives run."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """This process's device: its own GPU under torchrun when CUDA is present, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")

    def shard(self, dataset: Dataset) -> Dataset:
        """This process's share of `dataset`: every world_size-th item from its rank, no padding, so
        the shards partition the data exactly and summed counts are those of the whole set."""
        if not self.enabled:
            return dataset
        return Subset(dataset, range(self.rank, len(dataset), self.world_size))

    def all_reduce_sum(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum each tensor across processes, in place."""
        if not self.enabled:
            return
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def sum_counts(self, counts: dict[Any, int]) -> dict[Any, int]:
        """Integer counts summed across processes (same keys, same order on every process)."""
        if not self.enabled:
            return counts
        values = torch.tensor(list(counts.values()), dtype=torch.int64)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return dict(zip(counts, values.tolist(), strict=True))

    def broadcast_module(self, module: nn.Module) -> None:
        """Make every process's parameters and buffers equal to rank 0's (e.g. batch-norm statistics
        that each process updated on its own shard)."""
        if not self.enabled:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every process (picklable objects; for small results such as a ratio)."""
        if not self.enabled:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def as_dict(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend}


SINGLE = Distributed()


def backend_for_this_machine() -> str:
    """gloo for CPU tensors always (the statistics live on the CPU); NCCL for CUDA tensors with GPUs."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


@contextmanager
def distributed_from_env() -> Iterator[Distributed]:
    """Join the process group torchrun describes in the environment, and leave it afterwards.

    Outside torchrun (no RANK in the environment) this yields the single-process context and does
    nothing. Under torchrun a group of one process is joined too, so `--nproc-per-node 1` runs the
    same collectives (NCCL on a machine with one GPU) as a larger group.
    """
    if "RANK" not in os.environ or dist.is_initialized():
        yield _current() if dist.is_initialized() else SINGLE
        return
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    backend = backend_for_this_machine()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield Distributed(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)
    finally:
        dist.destroy_process_group()


def _current() -> Distributed:
    return Distributed(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )
