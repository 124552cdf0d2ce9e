"""Small helpers the loss modules share: float32 compute under autocast, summing per-tap losses,
checking a choice among named options, and the switch to the reference implementations."""

from __future__ import annotations

import functools
import os
from typing import Sequence

import torch

REFERENCE_ENV = "LIX_REFERENCE_LOSSES"


def use_reference() -> bool:
    """True when the environment sets ``LIX_REFERENCE_LOSSES=1``: the losses and the distillation
    step then run their reference implementations (the formulas as first written, kept beside each
    faster rewrite and tested equal to it in tests/test_distill_step_fast.py) instead of the
    rewrites. For side-by-side measurements (benchmarks/distill_step.py ``--compare``) and
    checks; read at every call, so a test can set it with ``monkeypatch.setenv``."""
    return os.environ.get(REFERENCE_ENV, "") == "1"


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors as float32 (norms, Gram matrices and softmaxes of them overflow in
    fp16); float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def full_precision(fn):
    """Run ``fn`` with autocast disabled on the device of its first tensor argument (the trainer's
    bf16 autocast would otherwise run the matrix products with 8-bit mantissas)."""

    @functools.wraps(fn)
    def wrapper(*args, **kw):
        t = next((a for a in args if isinstance(a, torch.Tensor)), None)
        with torch.autocast(device_type=t.device.type if t is not None else "cpu", enabled=False):
            return fn(*args, **kw)

    return wrapper


def stack_sum(losses: list[torch.Tensor]) -> torch.Tensor:
    """The sum of a list of scalar losses (one per tap), kept in the graph."""
    return torch.stack(losses).sum()


def check_choice(key: str, value, choices: Sequence) -> None:
    """ValueError ``"<key> must be one of <choices>, got <value>"`` unless ``value`` is one of
    ``choices`` (the message starts with the key: the distillers turn it into a ConfigError naming
    ``distill.hyper.<method>.<key>``)."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {tuple(choices)}, got {value!r}")
