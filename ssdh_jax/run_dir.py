"""A run folder remembers the config it was created with; a conflicting config is refused before anything runs.

Resuming a run needs the same network, loss, data, split and schedule, so every config field must match the
stored `config.json` except the operational ones below, which change how a run executes (paths, devices,
logging, diagnostics) but not what it computes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

# Fields that may differ between the run that created a folder and one that resumes it.
OPERATIONAL = frozenset(
  {
    "data.manual_dir",
    "data.data_dir",
    "data.cache_dir",
    "data.num_workers",
    "model.pretrained",  # the weights file may move; its contents are keyed by sha256 where cached
    "model.depthwise",  # lowering only: conv and shift are numerically equal (tests/test_depthwise.py)
    "model.pointwise",  # lowering only: conv and dot are numerically equal (tests/test_pointwise.py)
    "model.feature_cache",
    "model.feature_cache_dir",
    "train.parallel",
    "train.num_devices",
    "train.distributed",
    "train.coordinator_address",
    "train.num_processes",
    "train.process_id",
    "train.init_timeout",
    "train.heartbeat_timeout",
    "train.shutdown_timeout",
    "train.checkpoint_timeout",
    "train.log_every",
    "train.keep_checkpoints",
    "train.async_checkpoint",
    "train.progress",
    "train.term_grad_norms",
  }
)


class WorkdirConflictError(ValueError):
  """The workdir holds a run created with another config."""


def flat_fields(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """A nested config dict as {'section.field': value}."""
  out: dict[str, Any] = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flat_fields(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as `config.json` stores it (tuples become lists), so stored and new configs compare equal."""
  return json.loads(config.to_json_best_effort())


def config_conflicts(stored: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """(field, stored value, new value) for every run-defining field that differs, sorted by field.

  A field the stored config lacks (written by an older version, before the field existed) is not a conflict:
  new fields default to the behaviour that version had.
  """
  old, cur = flat_fields(stored), flat_fields(new)
  missing = object()
  out = []
  for key in sorted(set(old) | set(cur)):
    if key in OPERATIONAL or key not in old:
      continue
    if old[key] != cur.get(key, missing):
      out.append((key, old[key], cur.get(key, "<absent>")))
  return out


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises WorkdirConflictError, naming the differing fields, when `workdir` was created with another config.

  A folder without `config.json` (new, or a run that failed before writing it) is accepted.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise WorkdirConflictError(
      f"{path}: cannot read the stored config ({e}); not touching this run"
    ) from None
  diffs = config_conflicts(stored, as_json(config))
  if diffs:
    shown = "; ".join(f"{k}: {a!r} (stored) vs {b!r} (given)" for k, a, b in diffs[:8])
    more = f"; and {len(diffs) - 8} more" if len(diffs) > 8 else ""
    raise WorkdirConflictError(
      f"{workdir!r} holds a run created with another config — {shown}{more}. Nothing in it was changed. "
      "Train into a new --workdir, or pass the stored values to resume this run."
    )
