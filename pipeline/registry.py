"""A tiny name -> class registry shared by readers, depth backends (and later models, losses)."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from pipeline.errors import LixError

T = TypeVar("T")


class Registry(Generic[T]):
    """``@registry.register("name")`` adds a class (setting its ``name``); a duplicate name is
    an error. ``registry[name]`` looks one up with a message listing what exists."""

    def __init__(self, kind: str):
        self.kind = kind
        self.entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str):
        def deco(cls):
            if name in self.entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            cls.name = name
            self.entries[name] = cls
            return cls

        return deco

    def __getitem__(self, name: str) -> Callable[..., T]:
        if name not in self.entries:
            raise LixError(f"unknown {self.kind} {name!r}; expected one of {sorted(self.entries)}")
        return self.entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __iter__(self):
        return iter(self.entries)
