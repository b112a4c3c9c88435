"""A named registry: what lets a new backbone, loss, loss term or graph builder be one function plus a name."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


# How a name becomes known to the commands (train.py, eval.py, ssdh-search): the tail of every unknown-name error.
WHERE = (
  "in a module passed to train.py, eval.py and ssdh-search with --module (or an ssdh_jax.plugins entry point)"
)


class Registry(Generic[T]):
  """Entries of one kind by name; `kind` names them in errors ("unknown backbone 'x'; registered: …") and `how`
  (e.g. "ssdh_jax.models.register_backbone(name, spec)") says how to add one."""

  def __init__(
    self,
    kind: str,
    entries: Mapping[str, T] | None = None,
    *,
    reserved: tuple[str, ...] = (),
    how: str = "",
  ):
    self.kind = kind
    self.how = how
    self._entries: dict[str, T] = dict(entries or {})
    self._reserved = frozenset(reserved)

  def add(self, name: str, entry: T) -> T:
    if name in self._entries or name in self._reserved:
      raise ValueError(f"{self.kind} {name!r} is already registered")
    self._entries[name] = entry
    return entry

  def get(self, name: str) -> T:
    """The entry registered under `name`; ValueError (one line: what is registered, how to add one) if none."""
    try:
      return self._entries[name]
    except KeyError:
      raise ValueError(self.unknown(name)) from None

  def unknown(self, name: str) -> str:
    """The one-line message for a name nothing registered."""
    known = ", ".join(self._entries) or "(none)"
    add = f"; add one with {self.how} {WHERE}" if self.how else ""
    return f"unknown {self.kind} {name!r}; registered: {known}{add}"

  def names(self) -> tuple[str, ...]:
    return tuple(self._entries)

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)
