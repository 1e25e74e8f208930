"""A tiny name -> factory registry: models, losses, optimizers, datasets, studies, spaces.

One registry per component kind (timm's `_registry.py` pattern): a decorator
registers a factory with metadata, `names()` feeds `--help` texts and
parametrized tests, and an unknown name raises a `ConfigError` listing the valid
ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from kmnist_lab.errors import ConfigError, did_you_mean


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered component.

    Attributes:
        name: registry key, e.g. `"bn_mlp"`.
        factory: callable building the component (a catalog of plain data, such as
            the studies, registers the object itself).
        summary: one line shown in `--help` and the README tables.
        meta: free-form metadata (e.g. the head a loss needs).
    """

    name: str
    factory: Callable[..., Any]
    summary: str
    meta: dict


class Registry:
    """Maps names to factories for one kind of component (`kind` is used in errors)."""

    def __init__(self, kind: str, plural: str | None = None):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, summary: str = "", **meta) -> Callable:
        """Decorator registering `factory` under `name`."""

        def decorator(factory: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            doc = (factory.__doc__ or "").strip().splitlines()
            self._entries[name] = Entry(name, factory, summary or (doc[0] if doc else ""), meta)
            return factory

        return decorator

    def get(self, name: str) -> Entry:
        """Returns the entry for `name`, or raises `ConfigError` listing valid names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, self.names())} "
                f"Valid {self.plural}: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
