"""What a training, evaluation or prediction process runs on: the device, the torchrun process
group, the RNG seed, bf16 autocast and the progress bar. Shared by the trainer, distillation,
prediction and cross-dataset evaluation."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist

from pipeline.device import resolve_device

__all__ = ["DistInfo", "ProgressBar", "autocast", "barrier", "init_distributed", "resolve_device", "seed_everything"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on CUDA, rank on
    cuda:LOCAL_RANK), else a single process on ``device``. Idempotent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device, "train.device"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and resolve_device(device, "train.device").type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, torch.device("cuda", local) if use_cuda else torch.device("cpu"))


def barrier(d: DistInfo) -> None:
    if d.distributed:
        torch_dist.barrier()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ProgressBar:
    """A rich progress bar (rank 0, when enabled) with the running loss."""

    def __init__(self, description: str, total: int, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not enabled)
        self.task = self.prog.add_task(description, total=total, info="")

    def __enter__(self):
        self.prog.__enter__()
        return self

    def advance(self, info: str = "") -> None:
        self.prog.update(self.task, advance=1, info=info)

    def __exit__(self, *exc):
        return self.prog.__exit__(*exc)


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp``; a no-op context elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
