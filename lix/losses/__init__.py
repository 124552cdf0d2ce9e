"""Distillation losses as pure functions: tensors in, tensors out (shapes and units in their
docstrings, the ignore label masked out where a method reads the label), each method's
hyper-parameter defaults declared once in a frozen config dataclass next to its functions, and
the small modules some methods learn (connectors, the DWLD and ARFD heads). Nothing here
registers a method or imports lix.distill: the registered methods are lix/distill/methods/."""
