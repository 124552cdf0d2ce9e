"""Knowledge distillation from the RGB + X teacher into the RGB-only student.

``base`` is the contract (Distiller, TapSpec, DistillBatch), ``registry`` the one registry of
methods (``create_distiller(name, student, teacher, **hyper)``, the defaults, their checking),
``methods/`` one module per method (the loss formulas live in lix/losses/), ``train`` runs them
with the trainer of lix/train.py. Importing this package registers every method.
"""

from lix.distill import methods  # noqa: F401  (each method module registers itself)
from lix.distill.base import DistillBatch, Distiller, TapSpec
from lix.distill.registry import (
                                  DISTILLERS,
                                  create_distiller,
                                  hyper_defaults,
                                  method_table,
                                  register_distiller,
                                  validate_hyper,
)

__all__ = ["DISTILLERS", "DistillBatch", "Distiller", "TapSpec", "create_distiller", "hyper_defaults",
           "method_table", "register_distiller", "validate_hyper"]
