"""Shared by the distillation tests: tiny real model pairs and two steps of the real trainer.

``two_trainer_steps(method, model="mfnet", **hyper)`` builds a tiny teacher (RGB + depth) and
student of ``model``'s family, the method's distiller through ``create_distiller``, and runs
two optimizer steps of ``lix.train.train_one_epoch`` on the combined module of
lix/distill/train.py (the path ``lix distill`` takes), pre-training first when the method has
such a phase. Returns the per-step loss terms; fails when a term is not finite or a trainable
part of the distiller never got a gradient.
"""

from __future__ import annotations

import torch

from lix.config import TrainConfig
from lix.distill import create_distiller
from lix.distill.train import StudentWithDistiller
from lix.inputs import Inputs
from lix.models import create_model
from lix.runtime import DistInfo
from lix.train import train_one_epoch

N_CLASSES = 5


def tiny_pair(model: str = "mfnet", n_classes: int = N_CLASSES, seed: int = 0):
    """(student, teacher): the teacher takes 1-channel depth, eval mode and frozen."""
    torch.manual_seed(seed)
    kw = {"depth": 18} if model == "sne_roadseg" else {}
    student = create_model(model, n_classes, 0, **kw)
    teacher = create_model(model, n_classes, 1, **kw).eval().requires_grad_(False)
    return student, teacher


def fake_batches(n: int = 2, batch: int = 2, h: int = 32, w: int = 64, n_classes: int = N_CLASSES, seed: int = 0):
    """Batches as ShardDataset yields them (uint8 rgb, float32 depth in metres with its
    validity mask, uint8 labels with some 255)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        label = torch.randint(0, n_classes, (batch, h, w), generator=g).to(torch.uint8)
        label[:, :2] = 255
        depth = torch.rand(batch, 1, h, w, generator=g) * 60 + 2
        out.append({"rgb": torch.randint(0, 256, (batch, 3, h, w), generator=g, dtype=torch.uint8),
                    "depth": depth, "depth_valid": torch.ones(batch, 1, h, w, dtype=torch.bool),
                    "label": label})
    return out


def two_trainer_steps(method: str, model: str = "mfnet", **hyper) -> list[dict[str, float]]:
    student, teacher = tiny_pair(model)
    distiller = create_distiller(method, student, teacher, **hyper)
    module = StudentWithDistiller(student, distiller, teacher, Inputs(None), Inputs("depth"))
    batches = fake_batches()
    if distiller.needs_pretrain:
        opt = torch.optim.SGD([p for p in distiller.pretrain_parameters() if p.requires_grad], lr=0.01)
        for b in batches:
            from lix.data import to_device

            b = to_device(b, "cpu")
            t_logits, t_feats = module.teacher_outputs(b)
            loss = distiller.pretrain_loss(t_feats, t_logits, b["label"])
            assert torch.isfinite(loss), f"{method}: pre-training loss {loss}"
            opt.zero_grad()
            loss.backward()
            opt.step()
        distiller.after_pretrain()
    trainable = {n: p for n, p in distiller.named_parameters() if p.requires_grad}
    seen: set[str] = set()

    def hook_factory(name):
        def hook(grad):
            if grad is not None and bool(grad.abs().sum() > 0):
                seen.add(name)
        return hook

    handles = [p.register_hook(hook_factory(n)) for n, p in trainable.items()]
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    steps: list[dict[str, float]] = []

    class Recorder:
        def __call__(self, m, batch):
            terms = m(batch)
            steps.append({k: float(v.detach()) for k, v in terms.items()})
            return terms

    train_one_epoch(module, Recorder(), opt, batches, epoch=0, step=0, d=DistInfo())
    for h in handles:
        h.remove()
    assert len(steps) == 2
    for s in steps:
        assert all(torch.isfinite(torch.tensor(v)) for v in s.values()), f"{method}: {s}"
        assert set(distiller.terms) <= set(s), f"{method}: terms {sorted(s)} lack {sorted(distiller.terms)}"
    missing = sorted(set(trainable) - seen)
    assert not missing, f"{method}: no gradient reached {missing}"
    return steps


def cfg(**kw) -> TrainConfig:
    """A tiny CPU run (MFNet, 1 epoch, batch 2) on the test shards; ``kw`` overrides."""
    base = dict(model="mfnet", epochs=1, batch_size=2, num_workers=0, device="cpu", lr=0.01, patience=0, seed=3)
    return TrainConfig(**(base | kw))
