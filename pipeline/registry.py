"""A tiny name -> class registry shared by readers, depth backends and models."""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, Mapping, TypeVar

from pipeline.errors import LixError

T = TypeVar("T")


class Registry(Generic[T]):
    """``@registry.register("name")`` adds a class (setting its ``name``); a duplicate name is
    an error. ``registry[name]`` looks one up with a message listing what exists.

    ``lazy`` maps names to ``"<module>:<class>"`` of classes that register themselves when their
    module is imported: the module is imported on the first lookup of its name, so listing the
    names (iteration, ``in``) imports nothing. Iteration gives the lazy names in their order,
    then the others in registration order.
    """

    def __init__(self, kind: str, lazy: Mapping[str, str] | None = None):
        self.kind = kind
        self.entries: dict[str, Callable[..., T]] = {}
        self.lazy: dict[str, str] = dict(lazy or {})

    def register(self, name: str):
        def deco(cls):
            if name in self.entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            cls.name = name
            self.entries[name] = cls
            return cls

        return deco

    def _load(self, name: str) -> None:
        module, _, attr = self.lazy[name].partition(":")
        importlib.import_module(module)  # the module's @register runs here
        if name not in self.entries:  # a wrong location is a bug of the table, not of the user
            raise RuntimeError(f"{self.kind} {name!r}: importing {module} did not register {attr}")

    def __getitem__(self, name: str) -> Callable[..., T]:
        if name not in self.entries and name in self.lazy:
            self._load(name)
        if name not in self.entries:
            raise LixError(f"unknown {self.kind} {name!r}; expected one of {sorted(self)}")
        return self.entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self.entries or name in self.lazy

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self.lazy, *self.entries]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*self.lazy, *self.entries]))

    def items(self) -> list[tuple[str, Callable[..., T]]]:
        """(name, class) pairs in iteration order; loads every lazy entry."""
        return [(name, self[name]) for name in self]
