"""Orbax checkpoints: keep-last-N periodic saves plus the best by validation mAP.

Two managers under <workdir>/checkpoints: `last/` (max_to_keep=N, async) and `best/` (one, chosen by val_map).
Restoring walks the saved steps newest first and falls back, with a warning, past one that cannot be read.

On several processes (jax.distributed) every process calls every save, and Orbax's background commit thread of
each manager meets the other processes at coordination-service barriers named after the step directory
(`async_write_complete.<step>`). The two managers save the same step whenever evaluation and checkpointing fall
on one step (every shipped config), so each manager gets its own barrier key prefix: with the default (no
prefix) the second barrier of a step collides with the first one ("Barrier ... is already ongoing") and the
run dies or hangs. Distinct keys keep both saves asynchronous and independent; serialising them (waiting for
`last/` before `best/` saves) would also work but would block training on the first write.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


def _as_numpy(tree: PyTree) -> PyTree:
  return jax.tree.map(np.asarray, jax.device_get(tree))


class Checkpointer:
  """Saves/restores TrainState pytrees (host copies) for one run directory. A restore target may also be a
  dict of some of the state's top-level fields (`{'params': ..., 'step': ...}`): only those are read."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, timeout_s: int | None = None):
    """timeout_s: how long a background save waits for the other processes at its commit barriers before it
    fails (Orbax's default: 20 minutes); None keeps Orbax's."""
    root = os.path.abspath(os.path.join(workdir, "checkpoints"))

    def options(name: str, **kw) -> ocp.CheckpointManagerOptions:
      return ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save,
        create=True,
        # One barrier namespace per manager: see the module docstring.
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name),
        async_options=ocp.options.AsyncOptions(timeout_secs=int(timeout_s)) if timeout_s else None,
        **kw,
      )

    self._last = ocp.CheckpointManager(
      os.path.join(root, "last"), options=options("last", max_to_keep=max(int(keep), 1))
    )
    self._best = ocp.CheckpointManager(
      os.path.join(root, "best"),
      options=options("best", max_to_keep=1, best_fn=lambda m: m["val_map"], best_mode="max"),
    )

  def save(self, step: int, state: PyTree) -> None:
    if step in self._last.all_steps():
      return
    self._last.save(step, args=ocp.args.StandardSave(_as_numpy(state)))

  def save_best(self, step: int, state: PyTree, val_map: float) -> None:
    if step in self._best.all_steps():
      return
    self._best.save(step, args=ocp.args.StandardSave(_as_numpy(state)), metrics={"val_map": float(val_map)})

  def wait(self) -> None:
    self._last.wait_until_finished()
    self._best.wait_until_finished()

  def any_saved(self) -> bool:
    """Whether a periodic or best checkpoint has been written (after `wait`, the committed ones)."""
    return bool(self._last.all_steps() or self._best.all_steps())

  @staticmethod
  def _restore_newest(manager: ocp.CheckpointManager, target: PyTree, steps: list[int]) -> tuple[PyTree, int]:
    abstract = _as_numpy(target)
    if isinstance(abstract, dict):
      # A dict of some top-level fields (e.g. params and batch_stats for evaluation): only those are read,
      # so no optimiser state has to be built to restore a model.
      args = ocp.args.PyTreeRestore(
        item=abstract,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True,
      )
    else:
      args = ocp.args.StandardRestore(abstract)
    for step in sorted(steps, reverse=True):
      try:
        return manager.restore(step, args=args), step
      except Exception as e:
        logging.warning(
          "checkpoint at step %d in %s cannot be restored (%s); trying an older one",
          step,
          manager.directory,
          e,
        )
    return target, 0

  def restore_latest(self, target: PyTree) -> tuple[PyTree, int]:
    """Newest readable periodic checkpoint, or (target, 0) when there is none."""
    self.wait()
    return self._restore_newest(self._last, target, list(self._last.all_steps()))

  def restore_step(self, target: PyTree, step: int) -> tuple[PyTree, int]:
    """A given periodic (or best) step; (target, 0) when it is not there or unreadable."""
    self.wait()
    for manager in (self._last, self._best):
      if step in manager.all_steps():
        return self._restore_newest(manager, target, [step])
    return target, 0

  def restore_best(self, target: PyTree) -> tuple[PyTree, int]:
    """The best-by-validation checkpoint; falls back to the newest periodic one (then to `target`)."""
    self.wait()
    best = self._best.best_step()
    if best is not None:
      state, step = self._restore_newest(self._best, target, [best])
      if step:
        return state, step
    steps = list(self._last.all_steps())
    if steps:
      return self._restore_newest(self._last, target, steps)
    return target, int(
      np.asarray(jax.device_get(target["step"] if isinstance(target, dict) else target.step))
    )
