"""One module per distillation method; importing this package registers them all (each module
registers itself with lix.distill.registry.register_distiller). Logit baselines, feature
baselines, then the paper's own methods (``lix distill --list`` sorts them by kind and name)."""

from lix.distill.methods import (  # noqa: F401
                                 afdcd,
                                 arfd,
                                 at,
                                 cwkd,
                                 diffkd,
                                 dist,
                                 dkd,
                                 dwld,
                                 fitnet,
                                 ft,
                                 intra_kd,
                                 kd,
                                 lix,
                                 maskd,
                                 nst,
                                 pad,
                                 rkd,
                                 sp,
                                 vid,
                                 wsld,
)
