"""The paper's own methods, registered (kind "ours"): ``dwld``, ``arfd`` and ``lix``.

LIX (Guo et al., arXiv:2403.08215): L = CE + λ1·DWLD + λ2·ARFD. The trainer adds the
cross-entropy; these distillers return the unweighted terms ``{"dwld": ..., "arfd": ...}`` with
default weights λ1 = λ2 = 1.0 (the paper's values were not available to us; override with
``w_dwld`` / ``w_arfd``). The formulas, defaults and every choice for segmentation are in
lix/losses/dwld.py (DWLD and its dynamic weight controller) and lix/losses/arfd.py (alignment,
kernel-regression recalibration, CKA), the consistency measures in lix/losses/cka.py.

Hyper-parameters (one flat namespace, no name used twice; ``lix`` takes all of them):

DWLD (``dwld``, ``lix``)
  alpha          TCLD weight α (1.0, DKD's and eq. 4's)
  beta           the fixed β of ``controller="fixed"`` (Fig. 4a sweep: 1, 2, 4, 8, 10), and the
                 prior/initial weight of the DWC (8.0, DKD's); needs beta_min < beta < beta_max
                 for the DWC
  temperature    T (4.0, DKD's; the paper's value was lost in our copy); the loss carries T²
  beta_min, beta_max   the weights' range (1.0, 10.0: the paper's)
  controller     "dwc" (default) | "fixed" | "confidence" (parameter-free: β_min + (β_max − β_min)(1 − c))
  dwc_inputs     "softmax" | "softmax_conf" (default, eq. 8) | "teacher_softmax_conf" (Fig. 4b: the
                 teacher's softmax and confidence instead of the student's)
  dwc_hidden     the controller MLP's hidden width (32, our choice: the paper gives none)
  dwc_depth      its linear layers (3, the paper's; Fig. 4b varies it)
  dwc_dropout    dropout after each hidden layer (0.0: the paper's "without dropout"; Fig. 4b)
  dwc_tau        the KL anchor's strength τ of the adversarial and lookahead signals (1.0):
                 larger -> weights closer to β
  dwc_training   the controller's training signal: "lookahead" (default, bi-level, Ren et al.
                 2018; chosen by the README's measurement) | "adversarial" (ours) | "joint" (the
                 literal "minimise (18)"; collapses to beta_min); see dwld.py
  lookahead_lr   η of the lookahead's virtual SGD step (0.01, MFNet's lr)
  lookahead_every  run the virtual step every k training steps (1)
  ncld_terms     "generalized" (default, per-class terms ≥ 0) | "paper" (eq. 9 literally)

ARFD (``arfd``, ``lix``)
  kernel         "laplace" (default, eq. 13) | "gaussian" | "linear" | "none" (Table V)
  bandwidth      a multiplier of the bandwidth rule's σ (1.0)
  bandwidth_rule "perplexity" (default: the σ at which each pixel is smoothed over about
                 bandwidth_k pixels) | "median" (the median heuristic) | "rms" (the RMS pairwise
                 distance; the former default, which washes the maps out); one σ per image
  bandwidth_k    the perplexity target: pixels each pixel is smoothed over (8.0)
  teacher_norm   "bn_relu" (default: the teacher's maps standardised and activated like the
                 aligned student's) | "none" (as they come)
  consistency    "cka" (default) | "cosine" | "euclidean" | "pearson" (Table V)
  reduction      L_FD over the taps: "mean" (default, eq. 17's 1/N) | "sum"
  chunk          query pixels per kernel-regression block (1024; memory, not results)
  max_pixels     pool each tap's maps to at most this many pixels first (1024; None: never)
  exact_distances  kernel distances from the differences (True: chunk-invariant, 8-10x slower on
                 the CPU) or the matrix-product expansion (False, default; see arfd._nw_chunk)
  taps           (the trainer's) the tapped stages; default DEFAULT_TAPS of the family

Each default is declared once (``DWLD_DEFAULTS``, ``ARFD_DEFAULTS``; LIX composes both), and
``lix distill --list`` prints them from there. ``diagnostics()`` after a forward: the DWC's
weight statistics (``dwc.w_mean``, ``dwc.w_std_class``, ``dwc.w_std_pixel``, ``dwc.w_at_bound``)
and the variance ARFD's recalibration kept per tap (``arfd.kept.<tap>.<side>``), logged by the
trainer as ``train/diag.<name>``, never added to the loss.
"""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError

from lix.distill.base import DistillBatch, Distiller, TapSpec, register_distiller
from lix.losses.arfd import ARFDHead
from lix.losses.dwld import DWLDHead

REFERENCE = ("S. Guo, Z. Long, Z. Wu, Q. Chen, I. Pitas, R. Fan, LIX: Implicitly Infusing Spatial Geometric Prior "
             "Knowledge into Visual Semantic Segmentation for Autonomous Driving, arXiv:2403.08215 (2024)")


def _build(name: str, factory, *args, **kw):
    """Build a head, turning a bad hyper-parameter value into a ConfigError naming the key (the
    heads' ValueError messages start with the offending keyword)."""
    try:
        return factory(*args, **kw)
    except ValueError as e:
        msg = str(e)
        key = msg.split(" ", 1)[0]
        raise ConfigError(f"distill.hyper.{name}" + (f".{key}" if key in kw else ""), msg) from None


def _arfd_channels(spec: TapSpec) -> dict[str, tuple[int, int]]:
    return {t: spec.channels(t) for t in spec.taps}


# Each default written once; ``lix distill --list`` and the config validation read these.
DWLD_DEFAULTS: dict[str, object] = {
    "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "beta_min": 1.0, "beta_max": 10.0, "controller": "dwc",
    "dwc_inputs": "softmax_conf", "dwc_hidden": 32, "dwc_depth": 3, "dwc_dropout": 0.0, "dwc_tau": 1.0,
    "dwc_training": "lookahead", "lookahead_lr": 0.01, "lookahead_every": 1, "ncld_terms": "generalized"}
ARFD_DEFAULTS: dict[str, object] = {
    "kernel": "laplace", "bandwidth": 1.0, "bandwidth_rule": "perplexity", "bandwidth_k": 8.0, "teacher_norm": "bn_relu",
    "consistency": "cka", "reduction": "mean", "chunk": 1024, "max_pixels": 1024, "exact_distances": False}


class _OursDistiller(Distiller):
    """DWLD and/or ARFD heads built from ``defaults`` (the class's) overridden by ``hyper``."""

    defaults: dict[str, object] = {}
    taps = None
    # where the defaults' keys are declared with their types (validate_hyper reads which take null)
    hyper_signatures = (DWLDHead.__init__, ARFDHead.__init__)

    def __init__(self, spec: TapSpec, **hyper):
        super().__init__(spec)
        unknown = sorted(set(hyper) - set(self.defaults))
        if unknown:
            raise ConfigError(f"distill.hyper.{self.name}.{unknown[0]}",
                              f"unknown hyper-parameter; {self.name} takes {sorted(self.defaults)}")
        h = {**self.defaults, **hyper}
        if "alpha" in self.defaults:
            self.dwld = _build(self.name, DWLDHead, spec.n_classes, **{k: h[k] for k in DWLD_DEFAULTS})
            self.wants_student_forward = h["controller"] == "dwc" and h["dwc_training"] == "lookahead"
        if "kernel" in self.defaults:
            self.arfd = _build(self.name, ARFDHead, _arfd_channels(spec), **{k: h[k] for k in ARFD_DEFAULTS})

    def forward(self, b: DistillBatch):
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


@register_distiller("dwld", kind="ours", reference=REFERENCE + ", Sect. III-B (DWLD)", terms={"dwld": 1.0})
class DWLDDistiller(_OursDistiller):
    """DWLD alone: per-pixel DKD with per-logit weights from the dynamic weight controller
    (lix/losses/dwld.py)."""

    defaults = DWLD_DEFAULTS
    taps = ()


@register_distiller("arfd", kind="ours", reference=REFERENCE + ", Sect. III-C (ARFD)", terms={"arfd": 1.0})
class ARFDDistiller(_OursDistiller):
    """ARFD alone: aligned, normalised, kernel-regression-recalibrated features compared by CKA
    at every tap (lix/losses/arfd.py)."""

    defaults = ARFD_DEFAULTS


@register_distiller("lix", kind="ours", reference=REFERENCE, terms={"dwld": 1.0, "arfd": 1.0})
class LIXDistiller(_OursDistiller):
    """LIX = CE + λ1·DWLD + λ2·ARFD (the trainer adds CE)."""

    defaults = {**DWLD_DEFAULTS, **ARFD_DEFAULTS}
