"""The one registry of distillation methods (the project's :class:`pipeline.registry.Registry`,
as models and readers use) and what reads it: the hyper-parameter defaults, their checking,
:func:`create_distiller` and the ``lix distill --list`` table.

The registry is filled eagerly: ``lix/distill/__init__.py`` imports ``lix.distill.methods``,
whose modules register themselves with :func:`register_distiller` on import. Nothing here
imports a method, so the losses and methods depend on this module and never the reverse.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from torch import nn

from lix.distill.base import Distiller, FunctionDistiller, NoHyper, TapSpec, resolve_taps
from pipeline.errors import ConfigError
from pipeline.registry import Registry

KINDS = ("logit", "feature", "ours")  # also the order of ``lix distill --list``


DISTILLERS: Registry[type[Distiller]] = Registry("distillation method")


def register_distiller(name: str, *, kind: str, reference: str, config: type = NoHyper,
                       taps: tuple[str, ...] | None = (), terms: dict[str, float] | None = None
                       ) -> Callable:
    """Register a Distiller subclass, or a loss function ``fn(batch, cfg) -> scalar`` (one term,
    ``name``, weight 1 unless ``terms`` says), under ``name``. ``kind``: logit | feature | ours;
    ``config``: the frozen dataclass of the method's hyper-parameters (each default declared
    there once); ``taps``: the taps read (None: the model's ``default_taps``). A duplicate name is
    an error."""
    if kind not in KINDS:
        raise ValueError(f"kind must be logit, feature or ours, got {kind!r}")

    def deco(obj):
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
        cls.kind, cls.reference, cls.config = kind, reference, config
        DISTILLERS.register(name)(cls)
        return obj

    return deco


def hyper_defaults(name: str) -> dict[str, object]:
    """The method's hyper-parameters and defaults (the fields of its config, in order), plus
    ``w_<term>`` for each term."""
    cls = DISTILLERS[name]
    out = {f.name: f.default for f in dataclasses.fields(cls.config)}
    return out | {f"w_{t}": w for t, w in cls.terms.items()}


def nullable_hyper(name: str) -> set[str]:
    """The method's hyper-parameters that take None (null) beside their default's type: the
    config fields annotated ``X | None`` / ``Optional[X]``."""
    return {f.name for f in dataclasses.fields(DISTILLERS[name].config)
            if "None" in str(f.type) or "Optional" in str(f.type)}


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
    cls = DISTILLERS[name]
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
    rows = []
    for name, cls in sorted(DISTILLERS.items(), key=lambda kv: (KINDS.index(kv[1].kind), kv[0])):
        rows.append({"name": name, "kind": cls.kind, "reference": cls.reference, "terms": dict(cls.terms),
                     "hyper": hyper_defaults(name), "pretrain": cls.needs_pretrain,
                     "taps": "family default" if cls.taps is None else ", ".join(cls.taps) or "-"})
    return rows
