"""Teacher-student feature similarity over training (the paper's Fig. 5).

At every validation the trainer calls the run's monitor with the student; this one returns the
linear CKA between the student's and the frozen teacher's features at each tap, per image over
its pixels (lix/losses/cka.py, the measure ARFD optimises), averaged over a fixed set of val
images, plus their mean:

    {"cka/rgb4": 0.81, "cka/fused": 0.77, "cka/decoder": 0.90, "cka/mean": 0.83}

logged by dvclive as ``val/cka/<tap>`` and ``val/cka/mean``. The plain student (``lix distill
--method student``) gets the same monitor, so the two curves of Fig. 5 come from one
definition. The features compared are the networks' own (before any method's aligner), so
the number is comparable across methods. A map whose grid is larger than ``max_pixels`` is
average-pooled (both sides alike) to keep the cost of a validation small.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lix.loaders import prepare_batch
from lix.losses.cka import linear_cka
from lix.models.taps import FeatureTaps


def _pool_to(f: torch.Tensor, max_pixels: int) -> torch.Tensor:
    h, w = f.shape[-2:]
    k = math.ceil(math.sqrt(h * w / max_pixels)) if h * w > max_pixels else 1
    return F.avg_pool2d(f, k, ceil_mode=True) if k > 1 else f


def per_image_cka(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """(N, Cs, h, w), (N, Ct, h, w) -> (N,) linear CKA over each image's h*w pixels."""
    return linear_cka(fs.flatten(2).transpose(1, 2).float(), ft.flatten(2).transpose(1, 2).float())


class FeatureCKAMonitor:
    """``monitor(student) -> {"cka/<tap>": mean CKA, "cka/mean": mean over taps}`` on the first
    ``max_images`` val images (the teacher's features computed once, on first use)."""

    def __init__(self, teacher: nn.Module, teacher_inputs, student_inputs, taps: tuple[str, ...], val_loader,
                 device: torch.device, max_images: int = 16, max_pixels: int = 4096):
        self.teacher, self.t_inputs, self.s_inputs = teacher, teacher_inputs, student_inputs
        self.taps, self.loader, self.device = tuple(taps), val_loader, device
        self.max_images, self.max_pixels = max_images, max_pixels
        self._batches: list[dict] | None = None
        self._teacher_feats: list[dict[str, torch.Tensor]] = []

    def _prepare(self) -> None:
        self._batches, seen = [], 0
        for batch in self.loader:
            batch = prepare_batch(batch, self.device)
            take = min(self.max_images - seen, batch["rgb"].shape[0])
            batch = {k: (v[:take] if torch.is_tensor(v) else v) for k, v in batch.items()}
            self._batches.append(batch)
            with torch.no_grad(), FeatureTaps(self.teacher, self.taps, detach=True) as taps:
                self.teacher.eval()
                self.teacher(*self.t_inputs(batch))
            self._teacher_feats.append({k: _pool_to(v.float(), self.max_pixels) for k, v in taps.features.items()})
            seen += take
            if seen >= self.max_images:
                break

    @torch.no_grad()
    def __call__(self, student: nn.Module) -> dict[str, float]:
        if self._batches is None:
            self._prepare()
        was_training = student.training
        student.eval()
        sums = {t: 0.0 for t in self.taps}
        n = 0
        try:
            for batch, t_feats in zip(self._batches, self._teacher_feats):
                with FeatureTaps(student, self.taps, detach=True) as taps:
                    student(*self.s_inputs(batch))
                for t in self.taps:
                    sums[t] += float(per_image_cka(_pool_to(taps.features[t].float(), self.max_pixels),
                                                   t_feats[t]).sum())
                n += batch["rgb"].shape[0]
        finally:
            student.train(was_training)
        out = {f"cka/{t}": sums[t] / max(n, 1) for t in self.taps}
        out["cka/mean"] = sum(out.values()) / max(len(self.taps), 1)
        return out
