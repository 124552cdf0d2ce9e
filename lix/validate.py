"""Everything about params.yaml that needs the registries, checked before anything runs.

``lix.config.load_params`` checks each key's type and range without importing torch (the
preparation commands must not import the trainer). :func:`check_params` adds what needs the
model and method registries: every name in ``sweep.models`` / ``arch`` is a registered model,
every name in ``sweep.methods`` / ``distill.hyper`` / ``sweep.ablations`` a registered method
(or the plain ``student``), every hyper-parameter a known key of its method with a value of its
default's type, and every (dataset, model) recipe valid; then that each run of the matrix has
its entry. ``lix check-params``, ``lix sweep``, ``lix train`` and ``lix distill`` call it, so a
typo fails in one line before a file is touched.
"""

from __future__ import annotations

from lix.config import PLAIN_STUDENT, Params, check_safe_name, variant_hyper
from pipeline.errors import ConfigError


def check_model_name(name: str, key: str) -> str:
    """``name`` if it is a registered model, else ConfigError naming ``key`` and the models."""
    import lix.models  # noqa: F401  (registers the models)
    from lix.models.registry import MODELS

    if name not in MODELS:
        raise ConfigError(key, f"unknown model {name!r}; registered: {sorted(MODELS)}")
    return name


def check_method_name(name: str, key: str) -> tuple[str, dict]:
    """(base method, typed variant overrides) of a method or variant name, checked: a safe name,
    a registered method (or ``student``), the variant's keys and values valid for the method."""
    from lix.distill.registry import validate_hyper

    check_safe_name(key, name)
    try:
        base, pairs = variant_hyper(name)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None
    if base == PLAIN_STUDENT:
        if pairs:
            raise ConfigError(key, f"{name!r}: the plain student takes no hyper-parameters")
        return base, {}
    return base, validate_hyper(base, pairs, prefix=f"{key}[{name}]")


def check_params(p: Params, methods: bool = True) -> Params:
    """Check ``p`` against the registries (see the module docstring); returns ``p``.
    ``methods=False`` checks the models and training recipes only (``lix train``: a teacher's
    stage must not depend on the distillation code)."""
    for m in p.sweep.models:
        check_model_name(m, "sweep.models")
    for m in p.arch:
        check_model_name(m, f"arch.{m}")
    for d in p.datasets:
        for m in p.sweep.models:
            p.train_config(d, m)  # the recipe with arch.<model>'s overrides, validated as a whole
    if methods:
        _check_methods(p)
    return p


def _check_methods(p: Params) -> None:
    from lix.distill.registry import validate_hyper

    for m in p.sweep.methods:
        check_method_name(m, "sweep.methods")
    for a in p.sweep.ablations:
        check_method_name(a, "sweep.ablations")
    for name, hyper in p.distill.hyper.items():
        if name == PLAIN_STUDENT:
            if hyper:
                raise ConfigError(f"distill.hyper.{PLAIN_STUDENT}", f"the plain student takes no hyper-parameters, "
                                                                    f"got {sorted(hyper)}")
            continue
        validate_hyper(name, hyper or {})
    p.check_matrix_entries()
    for a in p.sweep.ablations:  # the variant on top of its method's entry, as the run will see it
        base, pairs = variant_hyper(a)
        validate_hyper(base, {**(p.distill.hyper.get(base) or {}), **pairs}, prefix=f"sweep.ablations[{a}]")
