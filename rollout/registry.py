"""Name -> function registries (verifiers, advantage estimators, losses, KL estimators).

Lives in `rollout`, the bottom of the import chain, so every stage can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class Entry(Generic[F]):
    name: str
    fn: F
    description: str


class Registry(Generic[F]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[F]] = {}

    def register(self, name: str, description: str) -> Callable[[F], F]:
        def wrap(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = Entry(name, fn, description)
            return fn

        return wrap

    def get(self, name: str) -> F:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} '{name}'; valid names: {', '.join(self.names())}")
        return self._entries[name].fn

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[F]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries
