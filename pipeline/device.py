"""Which torch device a process computes on: one rule for the depth backends and the trainer."""

from __future__ import annotations

import os
from typing import Mapping

import torch

from pipeline.errors import ConfigError


def resolve_device(device: str, key: str = "device", env: Mapping[str, str] | None = None) -> torch.device:
    """The torch device for a ``device`` setting ('auto', 'cpu', 'cuda' or 'cuda:N').

    'auto' is CUDA when available, else the CPU. Under torchrun every process sees all GPUs, so a
    bare 'cuda' (or 'auto' on a CUDA machine) means this process's GPU: ``cuda:{LOCAL_RANK}`` when
    ``env`` (default os.environ) sets LOCAL_RANK, else the current CUDA device. An explicit 'cuda:N'
    is kept. Asking for CUDA where there is none is a :class:`ConfigError` naming ``key``.
    """
    env = os.environ if env is None else env
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(key, f"{device!r} asked for, but CUDA is not available (use auto or cpu)")
    if device == "cuda" and env.get("LOCAL_RANK", "") != "":
        return torch.device("cuda", int(env["LOCAL_RANK"]))
    return torch.device(device)


def use_device(device: str, key: str = "device") -> torch.device:
    """:func:`resolve_device`, and a CUDA result with an index becomes this process's current
    device, so that library calls which take "the current GPU" (the bf16 check, cuBLAS/cuDNN
    handles) use it too instead of opening a context on cuda:0 in every torchrun process."""
    dev = resolve_device(device, key)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    return dev
