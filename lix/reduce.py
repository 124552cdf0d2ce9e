"""Means over the global batch under DDP, for every loss that averages over pixels or images.

DDP averages the gradients of the W processes. A per-process mean (sum_r / n_r) therefore gives
(1/W)·Σ_r ∇(sum_r / n_r), which equals the gradient of the single-process mean Σ_r sum_r / Σ_r n_r
only when every rank holds the same count n_r. :func:`global_mean` returns W·sum_r / Σ_r n_r
instead: averaged over the ranks its value and its gradient are exactly the single-process
mean's, whatever the counts (the cross-entropy of lix/train.py, DWLD and ARFD use it).
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist


def global_mean(total: torch.Tensor, count: torch.Tensor | float, world_size: int = 1) -> torch.Tensor:
    """``total`` (scalar: this process's sum over its items) divided by the number of items of
    the global batch (``count`` summed over the ``world_size`` processes with an all_reduce), times
    ``world_size``. 0 when no process holds an item. The count carries no gradient."""
    n = torch.as_tensor(count, dtype=torch.float32, device=total.device).detach().clone()
    if world_size > 1:
        torch_dist.all_reduce(n)
        total = total * world_size
    return total / n.clamp(min=1.0).to(total.dtype)
