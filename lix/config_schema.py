"""Frozen dataclasses from parsed YAML mappings, validated against their type hints: an unknown
key, a value of the wrong type, or a value a section's ``__post_init__`` refuses fails with one
:class:`ConfigError` naming the full key path (``splits.kitti.ratio``) and what is allowed."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from pipeline.errors import ConfigError


def require(ok: bool, key: str, problem: str) -> None:
    """ConfigError(``key``, ``problem``) unless ``ok``."""
    if not ok:
        raise ConfigError(key, problem)


_require = require


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp)) if origin is None else str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples."""
    if tp is Any:  # free-form (a method's hyper-parameters, checked by the method itself)
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        _require(value in args, key, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is dict:
        _require(isinstance(value, dict), key, f"expected a mapping, got {value!r}")
        kt, vt = args
        return {_convert(k, kt, f"{key}.{k}"): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        _require(isinstance(value, (list, tuple)), key, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        _require(len(value) == len(args), key, f"expected a list of {len(args)} values, got {list(value)}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _require(ok, key, f"expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        _require(ok, key, f"expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} at {key}")


def from_dict(cls, data: Any, path: str = ""):
    """Build the frozen dataclass ``cls`` from a mapping, validating as described above."""
    prefix = f"{path}." if path else ""
    if data is None:
        data = {}
    _require(isinstance(data, dict), path or "<root>", f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    _require(not unknown, f"{prefix}{unknown[0]}" if unknown else "",
             f"unknown key; allowed keys here: {names}")
    kwargs = {k: _convert(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e.key}", e.problem) from None
