"""The distillation contract: what a method sees each step and what it returns.

A method is either a **pure loss function** plus a decorator (lix/distill/registry.py)::

    @register_distiller("kd", kind="logit", config=KDConfig, reference="Hinton et al., arXiv:1503.02531")
    def kd(b: DistillBatch, cfg: KDConfig) -> torch.Tensor:
        return kd_loss(b.student_logits, b.teacher_logits, b.target, cfg.temperature, b.ignore_index)

or, when it owns trainable parts (connectors, the dynamic weight controller, paraphrasers,
tokens, denoisers), a :class:`Distiller` subclass under the same decorator; each lives in its
own module of lix/distill/methods/, the formulas in lix/losses/. Either way
``create_distiller(name, student, teacher, **hyper)`` returns an ``nn.Module`` whose
``forward(batch)`` maps one :class:`DistillBatch` to a dict of named, *unweighted* scalar loss
terms; ``loss_weights`` (term -> weight, every hyper-parameter named ``w_<term>`` overrides
one) says how the trainer sums them with the cross-entropy. The trainer puts the distiller's
parameters in the optimizer and its ``state_dict`` in the checkpoint.

Hyper-parameters are the fields of the method's ``config``, a frozen dataclass that declares each
default once (next to the loss functions that read it); the distiller holds the resolved values
as ``cfg`` and :attr:`Distiller.resolved_hyper` (every key with its final value, term weights
included) is what a run records. ``lix distill --list`` prints the defaults from the same
dataclass. Unknown hyper-parameters are a ConfigError naming the key.

Features: ``taps`` names the places of the models' ``feature_taps`` a method reads (the trainer
hooks exactly those, on both networks). Student and teacher are the same family, so each tap
exists in both at the same stride (channels may differ: ``TapSpec``). ``taps=None`` on a class
means "the family's default list" (the model class's ``default_taps``); a function method
declares its taps in the decorator (``taps=("decoder",)``) or takes a ``taps`` hyper-parameter.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from pipeline.constants import IGNORE_INDEX
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class NoHyper:
    """The config of a method without hyper-parameters (its term weights aside)."""

@dataclass(frozen=True)
class TapSpec:
    """What a method may know about the networks when it builds its parts.

    ``student`` / ``teacher``: tap name -> (channels, stride w.r.t. the input) for every tap the
    family declares (``model.feature_channels``); ``taps``: the taps this method reads;
    ``n_classes``: logit channels."""

    student: Mapping[str, tuple[int, int]]
    teacher: Mapping[str, tuple[int, int]]
    taps: tuple[str, ...]
    n_classes: int

    def channels(self, tap: str) -> tuple[int, int]:
        """(student channels, teacher channels) at ``tap``."""
        return self.student[tap][0], self.teacher[tap][0]


@dataclass
class DistillBatch:
    """One training step's outputs.

    student_logits: (N, C, H, W), in the autograd graph.
    teacher_logits: (N, C, H, W), detached (the teacher is frozen, eval mode, no_grad).
    target:         (N, H, W) int64 class ids, ``ignore_index`` (255) = unlabelled.
    student_feats:  tap -> (N, Cs, h, w), in the graph.
    teacher_feats:  tap -> (N, Ct, h, w), detached; same (h, w) as the student's at each tap.
    world_size:     processes of the DDP run; losses that average over pixels or images divide
                    by the global count (lix/reduce.py), as the cross-entropy does.
    student_forward: for methods with ``wants_student_forward`` (DWLD's lookahead controller):
                    params -> the student's logits on this batch with those parameters
                    (``torch.func.functional_call``, buffers copied), ``.params`` the student's
                    trainable parameters by name. None otherwise.
    """

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    target: torch.Tensor
    student_feats: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_feats: dict[str, torch.Tensor] = field(default_factory=dict)
    ignore_index: int = IGNORE_INDEX
    world_size: int = 1
    student_forward: Callable | None = None

    @property
    def valid(self) -> torch.Tensor:
        """(N, H, W) bool: labelled pixels."""
        return self.target != self.ignore_index

    def tap_pairs(self, taps=None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(tap, student map, teacher map) for ``taps`` (default: every tap hooked, i.e. the
        method's ``spec.taps``), in order, checked to be (N, C, h, w) with the same N, h, w."""
        names = list(self.student_feats) if taps is None else list(taps)
        if not names:
            raise ValueError("this feature-distillation method got no feature maps (no taps hooked)")
        out = []
        for t in names:
            if t not in self.student_feats or t not in self.teacher_feats:
                raise KeyError(f"tap {t!r} missing from the batch (student {sorted(self.student_feats)}, "
                               f"teacher {sorted(self.teacher_feats)})")
            fs, ft = self.student_feats[t], self.teacher_feats[t]
            if fs.dim() != 4 or ft.dim() != 4 or fs.shape[0] != ft.shape[0] or fs.shape[2:] != ft.shape[2:]:
                raise ValueError(f"tap {t!r}: student {tuple(fs.shape)} and teacher {tuple(ft.shape)} must be "
                                 f"(N, C, h, w) with the same N, h, w")
            out.append((t, fs, ft))
        return out


class Distiller(nn.Module):
    """Base class of every method. Subclasses set ``terms`` (term -> default weight) and
    implement ``forward``; methods with a pre-training phase set ``needs_pretrain`` and
    implement ``pretrain_loss``.

    Class attributes set by ``register_distiller``: ``name``, ``kind`` ('logit', 'feature'
    or 'ours'), ``reference``, ``config`` (the frozen dataclass of its hyper-parameters, their
    defaults declared there once); ``hyper`` (its fields) builds ``self.cfg``."""

    name: str = ""
    kind: str = ""
    reference: str = ""
    config: type = NoHyper
    terms: dict[str, float] = {}
    taps: tuple[str, ...] | None = ()  # None: the model class's default_taps
    needs_pretrain: bool = False  # FT's paraphraser, MasKD's tokens, DiffKD's autoencoder
    pretrain_epochs: int = 0
    wants_student_forward: bool = False  # DistillBatch.student_forward is filled (costs a closure only)

    def __init__(self, spec: TapSpec, **hyper):
        super().__init__()
        self.spec = spec
        with hyper_errors(self.name, config_keys(self.config)):  # the config's own checks name the key
            self.cfg = self.config(**hyper)  # an unknown key: TypeError
        self.loss_weights: dict[str, float] = dict(self.terms)

    @property
    def resolved_hyper(self) -> dict[str, object]:
        """Every hyper-parameter with the value this distiller uses (defaults filled in), plus
        ``w_<term>`` for each term's weight: the one record of what a run resolved."""
        return dataclasses.asdict(self.cfg) | {f"w_{t}": w for t, w in self.loss_weights.items()}

    def forward(self, b: DistillBatch) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """Detached scalars measured by the last forward (logged beside the terms, never added
        to the loss); e.g. DWC weight statistics, the variance ARFD's recalibration keeps."""
        return {}

    def pretrain_loss(self, teacher_feats: dict[str, torch.Tensor], teacher_logits: torch.Tensor,
                      target: torch.Tensor) -> torch.Tensor:
        """The loss of the pre-training phase, on the frozen teacher's outputs only (the student
        does not exist for it). Trained by the trainer with its own optimizer for
        ``pretrain_epochs`` before distillation; cached in the run directory."""
        raise NotImplementedError(f"{self.name} has no pre-training phase")

    def pretrain_parameters(self) -> list[nn.Parameter]:
        """What the pre-training phase trains (default: every parameter)."""
        return list(self.parameters())

    def after_pretrain(self) -> None:
        """Called by the trainer once pre-training is done (or loaded from its cache): by default
        freezes ``pretrain_parameters()`` (the paraphraser, tokens, autoencoder stay fixed while
        the student learns). Override to keep some of them training."""
        for p in self.pretrain_parameters():
            p.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"{self.name}: weights {self.loss_weights}"


class FunctionDistiller(Distiller):
    """A pure loss function as a Distiller: one term named after the method; the function is
    called as ``fn(batch, cfg)``."""

    fn: Callable[..., torch.Tensor]

    def forward(self, b: DistillBatch) -> dict[str, torch.Tensor]:
        return {self.name: type(self).fn(b, self.cfg)}


def config_keys(config: type) -> set[str]:
    """The hyper-parameter names a config dataclass declares."""
    return {f.name for f in dataclasses.fields(config)}


@contextmanager
def hyper_errors(method: str, keys):
    """A ValueError raised inside (a config's or a head's check, whose message starts with the
    offending keyword) as a ConfigError naming ``distill.hyper.<method>[.<key>]``."""
    try:
        yield
    except ValueError as e:
        msg = str(e)
        key = msg.split(" ", 1)[0]
        raise ConfigError(f"distill.hyper.{method}" + (f".{key}" if key in keys else ""), msg) from None


def resolve_taps(cls: type[Distiller], student: nn.Module, hyper: dict) -> tuple[str, ...]:
    """The taps method ``cls`` reads: ``hyper["taps"]`` when given, else the class's own, else
    (``taps = None``) the student's model class's ``default_taps``."""
    if "taps" in hyper and hyper["taps"] is not None:
        return tuple(hyper["taps"])
    if cls.taps is None:
        default = getattr(type(student), "default_taps", None)
        if not default:
            raise ConfigError("distill.taps", f"no default taps for {type(student).__name__}; name them")
        return tuple(default)
    return tuple(cls.taps)
