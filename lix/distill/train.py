"""Distillation with the trainer of lix/train.py: a frozen teacher, the RGB-only student and a
method's distiller, trained as one module.

    distill_fit(shard_dir, out_dir, cfg, dataset="kitti", method="lix",
                teacher_checkpoint="data/runs/kitti/mfnet/teacher/seed0/best.pt", hyper={...})

Each step: the teacher (loaded from its run's checkpoint, frozen, eval mode, under ``no_grad``)
and the student see the same augmented batch (the teacher RGB + X, the student RGB);
forward hooks on the method's taps (lix/models/taps.py) collect both networks' features; the
distiller maps them to named terms; the loss is ``ce + sum_k w_k * term_k`` and each term is
logged (dvclive ``train/<term>``). The student and the distiller's trainable parts form one
module (:class:`StudentWithDistiller`) so the optimizer, DDP and the checkpoint see both; the
teacher is held outside it (no gradients, no optimizer state, not in the checkpoint: the
checkpoint records its path and digest instead, and a resume with another teacher is refused).

Pre-training (FT's paraphraser, MasKD's tokens, DiffKD's autoencoder): before distillation,
``pretrain_epochs`` passes over the training loader optimise ``distiller.pretrain_loss`` on the
teacher's outputs (SGD with the run's lr and momentum); the result is cached in
``<out>/pretrain.pt`` keyed by the method, its hyper-parameters and the teacher's digest, so a
rerun loads it (the key holds the distiller's resolved hyper-parameters, so a default written
out or left implicit is the same run). Under DDP each rank pre-trains on its shard and rank 0's
parameters are broadcast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from lix.checkpoint import load_checkpoint, save_checkpoint
from lix.config import PLAIN_STUDENT, TrainConfig, from_dict
from lix.distill.base import DistillBatch, Distiller
from lix.distill.monitor import FeatureCKAMonitor
from lix.distill.registry import create_distiller
from lix.evaluate import load_run
from lix.inputs import Inputs
from lix.loaders import prepare_batch, set_loader_epoch
from lix.losses._common import use_reference
from lix.model_factory import build_model
from lix.models.taps import FeatureTaps
from lix.runtime import DistInfo, ProgressBar, autocast
from lix.train import Supervised, Task, cross_entropy, fit
from pipeline.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def teacher_channels_last(device: torch.device, channels_last: bool) -> bool:
    """Whether the frozen teacher runs in channels_last: on the CPU always (MFNet teacher, batch 8,
    96x160, no_grad, 1 thread: 123 -> 67 ms, 144x128: 157 -> 94 ms; oneDNN's NHWC convolutions
    and max pooling; the outputs equal NCHW's to float32 rounding, ~1e-7), on CUDA as the trainer's
    ``channels_last`` says for the student; never under ``LIX_REFERENCE_LOSSES=1``."""
    if use_reference():
        return False
    return device.type == "cpu" or (device.type == "cuda" and channels_last)


class StudentWithDistiller(nn.Module):
    """The trained module of a distillation run: ``forward(batch)`` -> named loss terms.

    The teacher is kept out of the module tree (``object.__setattr__``) so that ``.train()``,
    ``.parameters()``, ``.state_dict()`` and DDP never touch it. ``channels_last`` (None: on the
    CPU, :func:`teacher_channels_last`) converts the teacher's weights to channels_last in place and
    feeds it channels_last inputs; on the CPU its logits and features are handed on contiguous
    (NCHW, the student's layout there, as before), on CUDA as they come (channels_last, as the
    student's under the trainer's ``channels_last``)."""

    def __init__(self, student: nn.Module, distiller: Distiller, teacher: nn.Module, student_inputs: Inputs,
                 teacher_inputs: Inputs, world_size: int = 1, channels_last: bool | None = None):
        super().__init__()
        self.student, self.distiller = student, distiller
        object.__setattr__(self, "teacher", teacher)
        self.student_inputs, self.teacher_inputs, self.world_size = student_inputs, teacher_inputs, world_size
        self.taps = tuple(distiller.spec.taps)
        device = next(teacher.parameters()).device
        self.channels_last = teacher_channels_last(device, False) if channels_last is None else channels_last
        self._nchw_outputs = self.channels_last and device.type != "cuda"
        if self.channels_last:
            teacher.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def teacher_outputs(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits, tapped features) of the frozen teacher, detached."""
        self.teacher.eval()
        inputs = self.teacher_inputs(batch)
        if self.channels_last:
            inputs = tuple(x.contiguous(memory_format=torch.channels_last) if x is not None and x.dim() == 4 else x
                           for x in inputs)
        layout = torch.Tensor.contiguous if self._nchw_outputs else torch.Tensor.detach
        if self.taps:
            with FeatureTaps(self.teacher, self.taps, detach=True) as taps:
                logits = self.teacher(*inputs)
            return layout(logits.detach()), {k: layout(v) for k, v in taps.features.items()}
        return layout(self.teacher(*inputs).detach()), {}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        t_logits, t_feats = self.teacher_outputs(batch)
        if self.taps:
            with FeatureTaps(self.student, self.taps) as taps:
                s_logits = self.student(*self.student_inputs(batch))
            s_feats = dict(taps.features)
        else:
            s_logits, s_feats = self.student(*self.student_inputs(batch)), {}
        label = batch["label"]
        ce = cross_entropy(s_logits, label, self.world_size)
        student_forward = self._student_forward(batch) if self.distiller.wants_student_forward else None
        terms = self.distiller(DistillBatch(s_logits.float(), t_logits.float(), label,
                                            {k: v.float() for k, v in s_feats.items()},
                                            {k: v.float() for k, v in t_feats.items()},
                                            world_size=self.world_size, student_forward=student_forward))
        total = ce
        for name, value in terms.items():
            total = total + self.distiller.loss_weights.get(name, 1.0) * value
        diagnostics = {f"diag.{k}": v.detach() for k, v in self.distiller.diagnostics().items()}
        return {"loss": total, "ce": ce, **terms, **diagnostics}

    def _student_forward(self, batch: dict):
        """params -> the student's logits on ``batch`` with those parameters (buffers copied, so
        a virtual forward leaves the BatchNorm statistics alone); ``.params``: the trainable ones."""
        student = self.student
        inputs = self.student_inputs(batch)

        def forward(params: dict[str, torch.Tensor]) -> torch.Tensor:
            state = {**{n: b.clone() for n, b in student.named_buffers()}, **params}
            return torch.func.functional_call(student, state, inputs)

        forward.params = {n: p for n, p in student.named_parameters() if p.requires_grad}
        # forward-mode differentiation (the lookahead's jvp) has no rule for SyncBatchNorm
        forward.forward_mode = not any(isinstance(m, nn.SyncBatchNorm) for m in student.modules())
        return forward


def _call_module(module: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    return module(batch)


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_teacher(checkpoint: str | Path, class_names: list[str], device: torch.device
                 ) -> tuple[nn.Module, Inputs, dict]:
    """The frozen teacher of a ``lix train --role teacher`` run (``best.pt``/``last.pt`` or its
    ``model.safetensors``) with its input encoding, on ``device``. DataError when the file is
    not a teacher of this dataset's classes."""
    state, config = load_run(checkpoint)
    if config.get("role") != "teacher":
        raise DataError(checkpoint, f"is a {config.get('role')!r} run; distillation needs a teacher checkpoint")
    if list(config["class_names"]) != list(class_names):
        raise DataError(checkpoint, f"teacher classes {config['class_names']} differ from the shards' "
                                    f"{class_names}")
    tcfg = dataclasses.replace(from_dict(TrainConfig, config["train"], "train"), pretrained=None)
    teacher = build_model(tcfg, config["n_classes"], config["x"])
    teacher.load_state_dict(state)
    teacher.to(device).eval().requires_grad_(False)
    return teacher, Inputs.from_config(tcfg, "teacher"), config


def _json_value(v: Any) -> Any:
    return json.loads(json.dumps(v, default=list))


class DistillTaskFactory:
    """``task_factory`` for lix.train.fit: builds the teacher, the distiller and the combined
    module; runs or loads the pre-training phase."""

    def __init__(self, method: str, teacher_checkpoint: str | Path, hyper: dict | None = None,
                 pretrain_lr: float | None = None):
        self.method, self.teacher_checkpoint = method, Path(teacher_checkpoint)
        self.hyper = dict(hyper or {})
        self.pretrain_lr = pretrain_lr

    def __call__(self, student: nn.Module, inputs: Inputs, d: DistInfo, *, cfg: TrainConfig, train_loader,
                 out_dir: Path, resumed: bool, progress: bool = True, val_loader=None) -> Task:
        names = list(train_loader.dataset.class_names)
        teacher, t_inputs, t_config = load_teacher(self.teacher_checkpoint, names, d.device)
        if type(teacher) is not type(student):
            raise ConfigError("train.model", f"the student is {type(student).__name__} but the teacher "
                                             f"{self.teacher_checkpoint} is {type(teacher).__name__}; "
                                             f"distillation pairs one family")
        digest = file_digest(self.teacher_checkpoint)
        teacher_config = {"teacher": str(self.teacher_checkpoint), "teacher_sha256": digest,
                          "teacher_x": t_config["x"], "teacher_model": t_config["train"]["model"]}
        default_taps = getattr(type(student), "default_taps", ())
        monitor = (FeatureCKAMonitor(teacher, t_inputs, inputs, default_taps, val_loader, d.device)
                   if val_loader is not None and default_taps and d.is_main else None)
        if self.method == PLAIN_STUDENT:  # the CE alone; the teacher only for the Fig. 5 monitor
            if self.hyper:
                raise ConfigError(f"distill.hyper.{PLAIN_STUDENT}", f"the plain student takes no hyper-parameters, "
                                                                    f"got {sorted(self.hyper)}")
            config = {"distill": {"method": PLAIN_STUDENT, "hyper": {}, **teacher_config}}
            return Task(student, student, Supervised(inputs, d.world_size), inputs, config=config, monitor=monitor)
        distiller = create_distiller(self.method, student, teacher, **self.hyper)
        module = StudentWithDistiller(student, distiller, teacher, inputs, t_inputs, d.world_size,
                                      teacher_channels_last(d.device, cfg.channels_last))
        module.to(d.device)
        if distiller.needs_pretrain:
            if not resumed:
                self._pretrain(module, cfg, train_loader, out_dir, digest, d, progress)
            distiller.after_pretrain()
        # ``hyper``: what the run was asked for; ``resolved_hyper``: every hyper-parameter with the
        # value the distiller uses (its defaults filled in), recorded from the distiller, its one owner
        config = {"distill": {"method": self.method, "hyper": _json_value(self.hyper),
                              "resolved_hyper": _json_value(distiller.resolved_hyper),
                              "taps": list(distiller.spec.taps), "loss_weights": dict(distiller.loss_weights),
                              **teacher_config}}
        return Task(module, student, _call_module, inputs, extra={"distiller": distiller}, config=config,
                    monitor=monitor)

    def _pretrain(self, module: StudentWithDistiller, cfg: TrainConfig, loader, out_dir: Path, digest: str,
                  d: DistInfo, progress: bool) -> None:
        distiller = module.distiller
        key = {"method": self.method, "hyper": _json_value(distiller.resolved_hyper), "teacher_sha256": digest,
               "epochs": distiller.pretrain_epochs, "seed": cfg.seed}
        cache = out_dir / "pretrain.pt"
        if cache.is_file():
            try:
                saved = load_checkpoint(cache, required=("key", "distiller"))
            except DataError as e:  # a damaged cache is recomputed, never trusted
                log.warning("%s; pre-training again", e)
                saved = {}
            if saved.get("key") == key:
                distiller.load_state_dict(saved["distiller"])
                if d.is_main:
                    log.info("%s: pre-trained parts loaded from %s", self.method, cache)
                return
        params = [p for p in distiller.pretrain_parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=self.pretrain_lr or cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
        distiller.train()
        for epoch in range(distiller.pretrain_epochs):
            set_loader_epoch(loader, 10_000 + epoch)  # draws of their own, not the distillation epochs'
            with ProgressBar(f"{self.method} pre-training {epoch + 1}/{distiller.pretrain_epochs}", len(loader),
                      progress and d.is_main) as bar:
                for batch in loader:
                    batch = prepare_batch(batch, d.device)
                    with autocast(d.device, cfg.amp):
                        t_logits, t_feats = module.teacher_outputs(batch)
                        loss = distiller.pretrain_loss({k: v.float() for k, v in t_feats.items()}, t_logits.float(),
                                                       batch["label"])
                    if not torch.isfinite(loss):
                        raise ConfigError(f"distill.hyper.{self.method}", f"pre-training loss became {loss.item()}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    bar.advance(f"loss {loss.item():.4f}")
        if d.distributed:
            for p in distiller.parameters():
                torch_dist.broadcast(p.data, src=0)
        if d.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(cache, {"key": key, "distiller": distiller.state_dict()})


def distill_fit(shard_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, *, dataset: str, method: str,
                teacher_checkpoint: str | Path, hyper: dict | None = None, resume: bool | str = True,
                progress: bool = True, verify: str = "size") -> dict:
    """Distil the teacher of ``teacher_checkpoint`` into an RGB-only student of ``cfg.model``
    with ``method`` (lix.distill registry) on the shards of ``dataset``; everything else as
    :func:`lix.train.fit` (checkpoints, exact resume, early stopping, DDP, dvclive)."""
    if not Path(teacher_checkpoint).is_file():
        raise DataError(teacher_checkpoint, "teacher checkpoint not found (train the teacher first: "
                                            "lix train --role teacher)")
    return fit(shard_dir, out_dir, cfg, dataset=dataset, role="student", resume=resume, progress=progress,
               verify=verify, task_factory=DistillTaskFactory(method, teacher_checkpoint, hyper))
