"""Name -> function registries (verifiers, advantage estimators, losses, KL estimators).

Lives in `rollout`, the bottom of the import chain, so every stage can use it. An entry carries
what callers need to know about it, given at registration: its description, the paper it comes
from, the record of options it reads, and registry-specific typed traits (e.g. a loss's kind,
trainer/losses.py: LossKind), so no separate table of names can drift from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar

F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class Entry(Generic[F]):
    name: str
    fn: F
    description: str
    paper: str = ""
    options: Optional[type] = None  # the options record the entry reads (e.g. LossSpec, AdvantageOptions)
    traits: Any = None  # registry-specific typed facts, of the registry's `traits` type


class Registry(Generic[F]):
    def __init__(self, kind: str, traits: Optional[type] = None, papers: bool = False):
        self.kind = kind
        self.traits = traits  # when set, every entry must carry traits of this type
        self.papers = papers  # when True, every entry must name its paper
        self._entries: dict[str, Entry[F]] = {}

    def register(self, name: str, description: str, *, paper: str = "", options: Optional[type] = None,
                 traits: Any = None) -> Callable[[F], F]:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        if self.traits is not None and not isinstance(traits, self.traits):
            raise TypeError(f"{self.kind} '{name}' must be registered with traits={self.traits.__name__}(...)")
        if self.papers and not paper:
            raise ValueError(f"{self.kind} '{name}' must name the paper it comes from (paper=...)")

        def wrap(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = Entry(name, fn, description, paper, options, traits)
            return fn

        return wrap

    def unregister(self, name: str) -> None:
        """Remove an entry (a test's temporary one); unknown names raise like `entry`."""
        self.entry(name)
        del self._entries[name]

    def entry(self, name: str) -> Entry[F]:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} '{name}'; valid names: {', '.join(self.names())}")
        return self._entries[name]

    def get(self, name: str) -> F:
        return self.entry(name).fn

    def names(self, where: Optional[Callable[[Entry[F]], bool]] = None) -> list[str]:
        """Registered names (sorted), optionally only those whose entry satisfies `where`."""
        return sorted(n for n, e in self._entries.items() if where is None or where(e))

    def entries(self) -> list[Entry[F]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries
