"""What the paper's own methods (kind "ours": ``dwld``, ``arfd``, ``lix``) share: a distiller made
of a DWLD head and/or an ARFD head (lix/losses/dwld.py, lix/losses/arfd.py), built from the
method's resolved config.

LIX (Guo et al., arXiv:2403.08215): L = CE + λ1·DWLD + λ2·ARFD. The trainer adds the
cross-entropy; these distillers return the unweighted terms ``{"dwld": ..., "arfd": ...}`` with
default weights λ1 = λ2 = 1.0 (the paper's values were not available to us; override with
``w_dwld`` / ``w_arfd``). The hyper-parameters are one flat namespace, no name used twice:
:class:`~lix.losses.dwld.DWLDConfig`'s and :class:`~lix.losses.arfd.ARFDConfig`'s fields (each
default and its meaning declared there once); ``lix`` takes the union of both
(:func:`union_config`). ``diagnostics()`` after a forward: the DWC's weight statistics
(``dwc.w_mean``, ``dwc.w_std_class``, ``dwc.w_std_pixel``, ``dwc.w_at_bound``) and the variance
ARFD's recalibration kept per tap (``arfd.kept.<tap>.<side>``), logged by the trainer as
``train/diag.<name>``, never added to the loss.
"""

from __future__ import annotations

import dataclasses

import torch

from lix.distill.base import DistillBatch, Distiller, TapSpec, config_keys, hyper_errors
from lix.losses.arfd import ARFDConfig, ARFDHead
from lix.losses.dwld import DWLDConfig, DWLDHead

REFERENCE = ("S. Guo, Z. Long, Z. Wu, Q. Chen, I. Pitas, R. Fan, LIX: Implicitly Infusing Spatial Geometric Prior "
             "Knowledge into Visual Semantic Segmentation for Autonomous Driving, arXiv:2403.08215 (2024)")


def union_config(name: str, *configs: type) -> type:
    """A frozen dataclass whose fields are those of ``configs`` in order (names must not repeat),
    with their declared defaults: one flat namespace of hyper-parameters, nothing re-declared."""
    fields = [(f.name, f.type, dataclasses.field(default=f.default)) for c in configs for f in dataclasses.fields(c)]
    names = [f[0] for f in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"{name}: a hyper-parameter is declared twice in {[c.__name__ for c in configs]}")
    return dataclasses.make_dataclass(name, fields, frozen=True)


def part_of(config: type, cfg) -> object:
    """The ``config`` dataclass holding ``cfg``'s values of its fields (checked on creation)."""
    return config(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(config)})


class HeadsDistiller(Distiller):
    """A DWLD head (``dwld``) and/or an ARFD head (``arfd``, one aligner per tap), as ``parts``
    says, built from ``self.cfg``."""

    parts: tuple[type, ...] = ()
    taps = None

    def __init__(self, spec: TapSpec, **hyper):
        super().__init__(spec, **hyper)
        with hyper_errors(self.name, config_keys(self.config)):
            if DWLDConfig in self.parts:
                dwld = part_of(DWLDConfig, self.cfg)
                self.dwld = DWLDHead.from_config(spec.n_classes, dwld)
                self.wants_student_forward = dwld.controller == "dwc" and dwld.dwc_training == "lookahead"
            if ARFDConfig in self.parts:
                self.arfd = ARFDHead({t: spec.channels(t) for t in spec.taps}, part_of(ARFDConfig, self.cfg))

    def forward(self, b: DistillBatch) -> dict[str, torch.Tensor]:
        out = {}
        if hasattr(self, "dwld"):
            out["dwld"] = self.dwld(b.student_logits, b.teacher_logits, b.target, b.ignore_index, b.world_size,
                                    b.student_forward, self.loss_weights.get("dwld", 1.0))
        if hasattr(self, "arfd"):
            out["arfd"] = self.arfd(b.student_feats, b.teacher_feats, b.world_size)
        return out

    def diagnostics(self) -> dict[str, torch.Tensor]:
        out = {}
        if hasattr(self, "dwld"):
            out |= {f"dwc.{k}": v for k, v in self.dwld.last_stats.items()}
        if hasattr(self, "arfd"):
            out |= {f"arfd.{k}": v for k, v in self.arfd.last_stats.items()}
        return out
