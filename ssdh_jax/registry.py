"""A named registry: what lets a new backbone, loss, loss term or graph builder be one function plus a name."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Entries of one kind by name; `kind` names them in errors ("unknown backbone 'x'; registered: …")."""

  def __init__(self, kind: str, entries: Mapping[str, T] | None = None, *, reserved: tuple[str, ...] = ()):
    self.kind = kind
    self._entries: dict[str, T] = dict(entries or {})
    self._reserved = frozenset(reserved)

  def add(self, name: str, entry: T) -> T:
    if name in self._entries or name in self._reserved:
      raise ValueError(f"{self.kind} {name!r} is already registered")
    self._entries[name] = entry
    return entry

  def get(self, name: str) -> T:
    try:
      return self._entries[name]
    except KeyError:
      raise ValueError(f"unknown {self.kind} {name!r}; registered: {', '.join(self._entries)}") from None

  def names(self) -> tuple[str, ...]:
    return tuple(self._entries)

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)
