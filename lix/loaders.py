"""The trainer's data loaders: the augmented, shuffled train loader and this rank's slice of the
val split, and the batch on the device (``prepare_batch``). Exact resume needs the loaders to own
their generators: iterating them leaves the global torch RNG alone."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from lix.config import TrainConfig
from lix.data import AugmentConfig, ShardDataset, to_device
from lix.runtime import DistInfo
from pipeline.errors import ConfigError


class RankSlice(Sampler[int]):
    """Indices rank, rank + world, ...: disjoint, covering every sample once (evaluation)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def augment_config(cfg: TrainConfig) -> AugmentConfig:
    """The training augmentation of ``cfg``: its random rescale range times ``resolution``."""
    scale = (cfg.scale[0] * cfg.resolution, cfg.scale[1] * cfg.resolution)
    return AugmentConfig(scale=scale, crop=cfg.crop, flip=cfg.flip, photometric=cfg.photometric)


def build_loaders(shard_dir: str | Path, cfg: TrainConfig, d: DistInfo = DistInfo(),
                  verify: str = "size") -> tuple[DataLoader, DataLoader]:
    """Train loader (augmented, DistributedSampler shuffled by (seed, epoch), the last partial
    batch dropped) and val loader (no augmentation, this rank's slice). Call
    :func:`set_loader_epoch` before each epoch. The loaders own their generators, so iterating
    them leaves the global torch RNG alone (exact resume)."""
    train = ShardDataset(shard_dir, "train", augment=augment_config(cfg), seed=cfg.seed, verify=verify)
    val = ShardDataset(shard_dir, "val", augment=None, verify=verify)
    sampler = DistributedSampler(train, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=cfg.seed)
    if len(sampler) < cfg.batch_size:
        raise ConfigError("train.batch_size", f"{cfg.batch_size} per process is more than the {len(sampler)} "
                                              f"training samples each of {d.world_size} process(es) gets "
                                              f"from {shard_dir}")
    common = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                  pin_memory=d.device.type == "cuda")
    train_loader = DataLoader(train, sampler=sampler, drop_last=True,
                              generator=torch.Generator().manual_seed(cfg.seed), **common)
    val_loader = DataLoader(val, sampler=RankSlice(len(val), d.rank, d.world_size),
                            generator=torch.Generator().manual_seed(cfg.seed), **common)
    return train_loader, val_loader


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """The sampler's shuffle and the dataset's augmentation draws for ``epoch``."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


def prepare_batch(batch: dict, device: torch.device, channels_last: bool = False) -> dict:
    """``to_device`` (stored dtypes -> model dtypes on the device), NHWC images if asked."""
    batch = to_device(batch, device, non_blocking=device.type == "cuda")
    if channels_last:
        batch = {k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.dim() == 4 else v
                 for k, v in batch.items()}
    return batch
