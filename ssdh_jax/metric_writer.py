"""The training log: metrics.jsonl (one JSON record per logged step) and TensorBoard scalars."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping


class MetricWriter:
  """JSON-lines + TensorBoard scalars, flushed at every write so a killed run keeps what it logged; a no-op on
  every process but 0. `resume_step`: records after it (logged by a run killed before its next checkpoint, and
  about to be recomputed) are dropped from metrics.jsonl, so the log stays one record per step."""

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if not enabled:
      return
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
      _drop_records_after(path, resume_step)
    self._jsonl = open(path, "a")
    try:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:
      logging.warning("tensorboardX not installed: TensorBoard event files are not written.")

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _drop_records_after(path: str, step: int) -> None:
  """Rewrites the JSON-lines log without records whose step is beyond `step` (atomically)."""
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      if int(json.loads(line).get("step", 0)) > step:
        continue
    except (ValueError, AttributeError):
      continue  # a line cut by the kill
    keep.append(line if line.endswith("\n") else line + "\n")
  if len(keep) == len(lines) and all(a == b for a, b in zip(keep, lines)):
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.writelines(keep)
  os.replace(tmp, path)
