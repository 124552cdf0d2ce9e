"""The distillation contract: what a method sees each step and what it returns.

A method is either a **pure loss function** plus a decorator::

    @register_distiller("kd", kind="logit", reference="Hinton et al., arXiv:1503.02531 (2015)")
    def kd(b: DistillBatch, temperature: float = 4.0) -> torch.Tensor:
        return kd_loss(b.student_logits, b.teacher_logits, b.target, temperature)

or, when it owns trainable parts (connectors, the dynamic weight controller, paraphrasers,
tokens, denoisers), a :class:`Distiller` subclass under the same decorator. Either way
``create_distiller(name, student, teacher, **hyper)`` returns an ``nn.Module`` whose
``forward(batch)`` maps one :class:`DistillBatch` to a dict of named, *unweighted* scalar loss
terms; ``loss_weights`` (term -> weight, every hyper-parameter named ``w_<term>`` overrides
one) says how the trainer sums them with the cross-entropy. The trainer puts the distiller's
parameters in the optimizer and its ``state_dict`` in the checkpoint.

Hyper-parameters are the keyword arguments of the function (after the batch) or of the class's
``__init__`` (after the :class:`TapSpec`), with their defaults; ``lix distill --list`` prints
them. Unknown hyper-parameters are a ConfigError naming the key.

Features: ``taps`` names the places of the models' ``feature_taps`` a method reads (the trainer
hooks exactly those, on both networks). Student and teacher are the same family, so each tap
exists in both at the same stride (channels may differ: ``TapSpec``). ``taps=None`` on a class
means "the family's default list" (:data:`DEFAULT_TAPS`); a function method declares its taps
in the decorator (``taps=("decoder",)``) or takes a ``taps`` hyper-parameter.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from pipeline.errors import ConfigError, LixError

from pipeline.constants import IGNORE_INDEX  # noqa: E402

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

    Class attributes set by :func:`register_distiller`: ``name``, ``kind`` ('logit', 'feature'
    or 'ours'), ``reference``."""

    name: str = ""
    kind: str = ""
    reference: str = ""
    terms: dict[str, float] = {}
    taps: tuple[str, ...] | None = ()  # None: the family's DEFAULT_TAPS
    needs_pretrain: bool = False  # FT's paraphraser, MasKD's tokens, DiffKD's autoencoder
    pretrain_epochs: int = 0
    wants_student_forward: bool = False  # DistillBatch.student_forward is filled (costs a closure only)

    def __init__(self, spec: TapSpec):
        super().__init__()
        self.spec = spec
        self.loss_weights: dict[str, float] = dict(self.terms)

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
    """A pure loss function as a Distiller: one term named after the method."""

    fn: Callable[..., torch.Tensor]

    def __init__(self, spec: TapSpec, **hyper):
        super().__init__(spec)
        self.hyper = hyper

    def forward(self, b: DistillBatch) -> dict[str, torch.Tensor]:
        return {self.name: type(self).fn(b, **self.hyper)}


# --------------------------------------------------------------------------- registry
DISTILLERS: dict[str, type[Distiller]] = {}


def register_distiller(name: str, *, kind: str, reference: str, taps: tuple[str, ...] | None = (),
                       terms: dict[str, float] | None = None):
    """Register a loss function (one term, ``name``, weight 1 unless ``terms`` says) or a
    Distiller subclass under ``name``. ``kind``: logit | feature | ours. A duplicate name is an
    error."""
    if kind not in ("logit", "feature", "ours"):
        raise ValueError(f"kind must be logit, feature or ours, got {kind!r}")

    def deco(obj):
        if name in DISTILLERS:
            raise ValueError(f"distillation method {name!r} registered twice")
        if isinstance(obj, type) and issubclass(obj, Distiller):
            cls = obj
            if terms is not None:
                cls.terms = dict(terms)
            if taps != ():
                cls.taps = taps
        elif callable(obj):
            cls = type(f"{name.title().replace('_', '')}Distiller", (FunctionDistiller,),
                       {"fn": staticmethod(obj), "terms": dict(terms or {name: 1.0}), "taps": taps,
                        "__doc__": obj.__doc__, "__module__": obj.__module__})
        else:
            raise TypeError(f"register_distiller({name!r}) decorates a function or a Distiller subclass")
        cls.name, cls.kind, cls.reference = name, kind, reference
        DISTILLERS[name] = cls
        return obj

    return deco


def hyper_defaults(name: str) -> dict[str, object]:
    """The method's hyper-parameters and defaults (the function's keywords after the batch, or
    the class's ``__init__`` keywords after the spec), plus ``w_<term>`` for each term."""
    cls = _lookup(name)
    if getattr(cls, "defaults", None):  # declared once as a mapping (lix/losses/lix_method.py)
        return dict(cls.defaults) | {f"w_{t}": w for t, w in cls.terms.items()}
    fn = cls.fn if issubclass(cls, FunctionDistiller) and cls is not FunctionDistiller else cls.__init__
    params = list(inspect.signature(fn).parameters.values())[1:]  # drop the batch / self
    if fn is cls.__init__:
        params = params[1:]  # drop the spec
    out = {p.name: p.default for p in params
           if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "taps"}
    out |= {f"w_{t}": w for t, w in cls.terms.items()}
    return out


def _lookup(name: str) -> type[Distiller]:
    _register_all()
    if name not in DISTILLERS:
        raise LixError(f"unknown distillation method {name!r}; expected one of {sorted(DISTILLERS)}")
    return DISTILLERS[name]


def _register_all() -> None:
    # Imported here, not at the top: lix.losses' modules import this one to register.
    import lix.losses  # noqa: F401  (importing the package registers every method)


def resolve_taps(cls: type[Distiller], student: nn.Module, hyper: dict) -> tuple[str, ...]:
    if "taps" in hyper and hyper["taps"] is not None:
        return tuple(hyper["taps"])
    if cls.taps is None:
        default = getattr(type(student), "default_taps", None)
        if not default:
            raise ConfigError("distill.taps", f"no default taps for {type(student).__name__}; name them")
        return tuple(default)
    return tuple(cls.taps)


def nullable_hyper(name: str) -> set[str]:
    """The method's hyper-parameters that take None (null) beside their default's type: those
    annotated ``X | None`` / ``Optional[X]`` in the function, the class's ``__init__``, or the
    ``hyper_signatures`` a class declares (DWLD/ARFD's heads)."""
    cls = _lookup(name)
    fns = [cls.fn] if issubclass(cls, FunctionDistiller) and cls is not FunctionDistiller else \
        [cls.__init__, *getattr(cls, "hyper_signatures", ())]
    out = set()
    for fn in fns:
        for p in inspect.signature(fn).parameters.values():
            ann = p.annotation if isinstance(p.annotation, str) else repr(p.annotation)
            if p.annotation is not inspect.Parameter.empty and ("None" in ann or "Optional" in ann):
                out.add(p.name)
    return out


def _typed(value, default, key: str, nullable: bool = False):
    """``value`` checked against the type of its ``default`` (YAML and JSON give plain types):
    a float takes any number (not a bool), an int an int, a bool a bool, a string a string, a
    tuple a list; None where ``nullable``; a None default takes anything (the method checks it)."""
    if default is None or (value is None and nullable):
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (tuple, list))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
            type(default), "a list" if isinstance(default, (tuple, list)) else type(default).__name__)
        raise ConfigError(key, f"expected {kind} (default {default!r}), got {value!r}")
    return value


def validate_hyper(name: str, hyper: Mapping, prefix: str | None = None) -> dict:
    """``hyper`` checked against method ``name``'s hyper-parameters (:func:`hyper_defaults`):
    the method registered, every key known, every value of its default's type (ints widen to
    floats). Returns the typed mapping. ConfigError naming ``<prefix>.<key>`` (default
    ``distill.hyper.<name>``); an unknown method is a ConfigError naming ``prefix``."""
    prefix = prefix or f"distill.hyper.{name}"
    _register_all()
    if name not in DISTILLERS:
        raise ConfigError(prefix, f"unknown distillation method {name!r}; expected one of {sorted(DISTILLERS)}")
    if not isinstance(hyper, Mapping):
        raise ConfigError(prefix, f"expected a mapping of hyper-parameters, got {hyper!r}")
    known, nullable = hyper_defaults(name), nullable_hyper(name)
    out = {}
    for k, v in hyper.items():
        if k == "taps":
            if v is not None and not (isinstance(v, (list, tuple)) and all(isinstance(t, str) for t in v)):
                raise ConfigError(f"{prefix}.taps", f"expected a list of tap names or null, got {v!r}")
            out[k] = v
            continue
        if k not in known:
            raise ConfigError(f"{prefix}.{k}", f"unknown hyper-parameter; {name} takes {sorted(known)}")
        out[k] = _typed(v, known[k], f"{prefix}.{k}", k in nullable)
    return out


def create_distiller(name: str, student: nn.Module, teacher: nn.Module, **hyper) -> Distiller:
    """The method ``name`` for this student/teacher pair. ``hyper``: the method's
    hyper-parameters (see :func:`hyper_defaults`), ``w_<term>`` loss weights, ``taps``; checked
    by :func:`validate_hyper`, and a value the method itself refuses (ValueError, TypeError at
    construction) becomes a ConfigError naming the method's entry."""
    cls = _lookup(name)
    hyper = validate_hyper(name, hyper)
    weights = {k[2:]: float(v) for k, v in hyper.items() if k.startswith("w_")}
    rest = {k: v for k, v in hyper.items() if not k.startswith("w_") and k != "taps"}
    taps = resolve_taps(cls, student, hyper)
    s_ch, t_ch = dict(student.feature_channels), dict(teacher.feature_channels)
    missing = [t for t in taps if t not in s_ch or t not in t_ch]
    if missing:
        raise ConfigError(f"distill.hyper.{name}.taps", f"unknown taps {missing}; the models have {sorted(s_ch)}")
    n_classes = int(getattr(student, "n_classes"))
    spec = TapSpec(s_ch, t_ch, taps, n_classes)
    try:
        module = cls(spec, **rest)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"distill.hyper.{name}", str(e)) from None
    module.loss_weights.update(weights)
    return module


def method_table() -> list[dict]:
    """Every registered method: name, kind, reference, terms, hyper-parameters (for --list)."""
    _register_all()
    order = {"logit": 0, "feature": 1, "ours": 2}
    rows = []
    for name, cls in sorted(DISTILLERS.items(), key=lambda kv: (order[kv[1].kind], kv[0])):
        rows.append({"name": name, "kind": cls.kind, "reference": cls.reference, "terms": dict(cls.terms),
                     "hyper": hyper_defaults(name), "pretrain": cls.needs_pretrain,
                     "taps": "family default" if cls.taps is None else ", ".join(cls.taps) or "-"})
    return rows
