"""User code for the commands: `--module` files and modules, the `ssdh_jax.plugins` entry-point group, and the
record a run folder keeps of them (`modules.json`), so that eval.py and ssdh-search import them again.

A user's extension is a Python file that registers names at import (`losses.register_term`,
`graph.register_graph_builder`, `models.register_backbone`, `losses.register_loss`). The commands import it
before any config name is resolved:

  * `--module path/to/my_ext.py` (a file, imported as module `my_ext`) or `--module my_pkg.ext` (an importable
    name; the current directory is searched too, as `python -m` does), repeatable;
  * every entry point of the group `ssdh_jax.plugins` of the installed distributions, e.g. in pyproject.toml
    `[project.entry-points."ssdh_jax.plugins"] my_ext = "my_pkg.ext"` (a module, imported) or
    `"my_pkg.ext:register"` (a function, called once with no arguments).

`train_lib.train_and_evaluate` writes what was loaded (module name, file, sha256 of the file) to
`<workdir>/modules.json`; `import_recorded` imports it again for eval.py, ssdh-search and a resumed train.py.
A recorded file that is gone is an error (the names the run uses could not resolve); one whose content changed
is a warning: edits that leave the registered names alone (comments, another term, a loss term evaluation never
runs) are the common case, and a backbone whose parameter shapes changed still fails when its checkpoint is
restored, naming the tensor.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any

ENTRY_POINT_GROUP = "ssdh_jax.plugins"
RECORD_FILE = "modules.json"


class PluginError(ValueError):
  """A user module or plugin that cannot be imported, or a run's record of them that cannot be honoured."""


# Module name -> record, in load order: what this process imported through this module (written by `record`).
_LOADED: dict[str, dict[str, Any]] = {}
_ENTRY_POINTS_DONE: set[tuple[str, str]] = set()  # (name, value): a register function is called once


def loaded() -> list[dict[str, Any]]:
  """Records of the modules imported so far: name, kind ('path' | 'name' | 'entry_point'), given, path,
  sha256 (and distribution for entry points)."""
  return [dict(r) for r in _LOADED.values()]


def sha256_file(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _is_path(given: str) -> bool:
  return given.endswith(".py") or "/" in given or os.sep in given


def _raised(label: str, e: BaseException) -> PluginError:
  """One line: what importing `label` raised, and where (the innermost frame, which is the user's code)."""
  where = ""
  if isinstance(e, SyntaxError) and e.filename:
    where = f" ({e.filename}:{e.lineno})"
  else:
    frames = traceback.extract_tb(e.__traceback__)
    if frames:
      where = f" ({frames[-1].filename}:{frames[-1].lineno})"
  text = " ".join(str(e).split()) if not isinstance(e, SyntaxError) else e.msg
  return PluginError(f"{label}: importing it raised {type(e).__name__}: {text}{where}")


def _record(name: str, kind: str, given: str, module: types.ModuleType, **extra: str) -> dict[str, Any]:
  path = os.path.abspath(module.__file__) if getattr(module, "__file__", None) else ""
  rec = {
    "name": name,
    "kind": kind,
    "given": given,
    "path": path,
    "sha256": sha256_file(path) if path else "",
  }
  rec.update(extra)
  _LOADED.setdefault(name, rec)
  return _LOADED[name]


def load_module(given: str) -> dict[str, Any]:
  """Imports a user's module once per process: a .py file (`given` ends in .py or holds a path separator)
  or an importable dotted name. Returns its record. Raises PluginError (one line) when the file is missing,
  the name cannot be found, or importing raises."""
  if not _is_path(given):
    return _load_by_name(given)
  path = os.path.abspath(given)
  if not os.path.isfile(path):
    raise PluginError(f"--module {given}: no such file")
  name = os.path.splitext(os.path.basename(path))[0]
  if not name.isidentifier():
    raise PluginError(f"--module {given}: {name!r} is not a valid module name; rename the file")
  existing = sys.modules.get(name)
  if existing is not None:
    have = getattr(existing, "__file__", None)
    if have and os.path.abspath(have) == path:
      return _record(name, "path", given, existing)
    raise PluginError(
      f"--module {given}: the module name {name!r} is already taken by {have or 'a built-in module'}; "
      "rename the file"
    )
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise PluginError(f"--module {given}: cannot be imported as a Python file")
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # before running it: dataclasses and pickling look the module up by name
  try:
    spec.loader.exec_module(module)
  except Exception as e:
    del sys.modules[name]
    raise _raised(f"--module {given}", e) from None
  return _record(name, "path", given, module)


def _load_by_name(given: str) -> dict[str, Any]:
  if given in _LOADED:
    return _LOADED[given]
  if "" not in sys.path and os.getcwd() not in sys.path:
    sys.path.append(os.getcwd())  # as `python -m`: a module in the current directory is found
  try:
    module = importlib.import_module(given)
  except ModuleNotFoundError as e:
    if e.name and (given == e.name or given.startswith(e.name + ".")):
      raise PluginError(
        f"--module {given}: no module named {e.name!r} (give a file path ending in .py, or put its folder on "
        "PYTHONPATH)"
      ) from None
    raise _raised(f"--module {given}", e) from None
  except Exception as e:
    raise _raised(f"--module {given}", e) from None
  return _record(given, "name", given, module)


def load_entry_points() -> list[dict[str, Any]]:
  """Imports every `ssdh_jax.plugins` entry point of the installed distributions (sorted by entry-point name);
  one that names a function (`module:function`) is also called, once per process. Returns their records.
  Raises PluginError naming the entry point and its distribution when loading fails."""
  out = []
  for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
    dist = getattr(ep, "dist", None)
    origin = f"{dist.name} {dist.version}" if dist is not None else "an installed distribution"
    label = f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}, from {origin})"
    key = (ep.name, ep.value)
    try:
      obj = ep.load()
      if key not in _ENTRY_POINTS_DONE and callable(obj) and not isinstance(obj, types.ModuleType):
        obj()
    except Exception as e:
      raise _raised(label, e) from None
    _ENTRY_POINTS_DONE.add(key)
    module_name = ep.value.split(":", 1)[0].strip()
    out.append(
      _record(
        module_name, "entry_point", f"{ep.name} = {ep.value}", sys.modules[module_name], distribution=origin
      )
    )
  return out


def record(workdir: str) -> None:
  """Writes the loaded modules to `<workdir>/modules.json` (atomically); nothing when none were loaded, so a
  resumed run's record stays as it was."""
  if not _LOADED:
    return
  path = os.path.join(workdir, RECORD_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump({"modules": loaded()}, f, indent=2)
  os.replace(path + ".tmp", path)


def read_record(workdir: str) -> list[dict[str, Any]]:
  """The records in `<workdir>/modules.json` ([] when the run has none)."""
  path = os.path.join(workdir, RECORD_FILE)
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      mods = json.load(f)["modules"]
    for m in mods:
      missing = [k for k in ("name", "kind", "path", "sha256") if k not in m]
      if missing:
        raise KeyError(f"a record lacks {missing}")
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise PluginError(f"{path}: unreadable record of the run's modules ({type(e).__name__}: {e})") from None
  return mods


def import_recorded(
  workdir: str, warn: Callable[[str], None], *, replaced: bool = False
) -> list[dict[str, Any]]:
  """Imports the modules a run recorded (those not imported already, e.g. given again with --module).

  A file that no longer exists or a module that no longer imports: PluginError (one line, saying to pass
  --module with its new place), or with `replaced` (the user gave --module, maybe the file under a new name)
  a `warn` line; a name the run needs and nothing registered then fails the config checks. A file whose
  sha256 differs from the record: one `warn` line, and the current file is used.
  """
  where = os.path.join(workdir, RECORD_FILE)
  out = []
  for rec in read_record(workdir):
    name = rec["name"]
    current = _LOADED.get(name)
    if current is None and rec["kind"] == "path":
      if not os.path.isfile(rec["path"]):
        gone = f"this run was trained with module {name!r} from {rec['path']}, which no longer exists"
        if replaced:
          warn(f"warning: {where}: {gone}; relying on the --module given instead")
          continue
        raise PluginError(f"{where}: {gone}; pass --module with the file's new path")
      current = load_module(rec["path"])
    elif current is None:
      try:
        current = _load_by_name(name)
      except PluginError as e:
        if replaced:
          warn(
            f"warning: {where}: recorded module {name!r} does not import here; relying on the --module given"
          )
          continue
        how = "pass --module with its file or name"
        if rec["kind"] == "entry_point":
          how = f"reinstall {rec.get('distribution', 'the distribution that provided it')}"
        raise PluginError(
          f"{where}: this run was trained with module {name!r} ({rec['path']}), which does not import here "
          f"[{str(e).split(': ', 1)[-1]}]; {how}"
        ) from None
    if rec["sha256"] and current["sha256"] != rec["sha256"]:
      warn(
        f"warning: module {name!r} ({current['path']}) changed since this run recorded it (sha256 "
        f"{rec['sha256'][:12]} then, {current['sha256'][:12]} now); using the current file"
      )
    out.append(current)
  return out
