"""Several processes (jax.distributed) as one run: joining, refusing mismatched configs, noticing a lost
process, and agreeing on a step to stop at when the scheduler announces a preemption (SIGTERM).

jax.distributed aborts a process with a C++ stack trace when its peers never join or die; the helpers here
turn the usual failures into one line on stderr and a non-zero exit within bounded time (train.* timeouts).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import jax
import ml_collections

from ssdh_jax import run_dir

# Fields that legitimately differ between the processes of one run (each has its own id).
PER_PROCESS = frozenset({"train.process_id", "train.progress"})
_PREFIX = "ssdh_jax"
# Every process calls `start_run` in the same order, so this counter names the same run on all of them (a
# test may call train_and_evaluate twice in one process; coordination-service keys cannot be reused).
_generation = 0


class DistributedError(RuntimeError):
  """The processes of a multi-host run cannot work together: a coordinator that does not answer, or processes
  started with different configs."""


def field(train_cfg: ml_collections.ConfigDict, name: str, default: int) -> int:
  """train.<name>, or `default` for a config saved before the field existed (eval.py re-reads old runs)."""
  try:
    return int(train_cfg[name])
  except (KeyError, AttributeError):
    return default


def die(message: str, code: int = 3) -> None:
  """One line on stderr and an immediate exit. A normal exit would run jax's exit handler, which waits at the
  shutdown barrier for processes that are gone and then aborts with a stack trace."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  os._exit(code)


def _client():
  from jax._src import distributed  # the coordination service's client: key-value store, liveness

  return distributed.global_state.client


def initialize(train_cfg: ml_collections.ConfigDict, connect_timeout: float | None = None) -> None:
  """jax.distributed.initialize when train.distributed is set (a no-op otherwise, or when already done): with
  train.coordinator_address, num_processes and process_id when given, else auto-detected (TPU pods, SLURM).

  A process other than 0 first waits up to `connect_timeout` s (default train.init_timeout) for the
  coordinator's port to answer, else DistributedError; a process whose peers do not all join within
  train.init_timeout exits with one line (jax itself would abort with a stack trace).
  """
  if not train_cfg.distributed or jax.distributed.is_initialized():
    return
  init_timeout = field(train_cfg, "init_timeout", 300)
  heartbeat = field(train_cfg, "heartbeat_timeout", 60)
  kwargs: dict[str, Any] = dict(
    # jax's own limits a little later than ours, so that the one-line errors here and in `Watchdog` come
    # first; jax's heartbeat stays the backstop when the coordinator itself is gone.
    initialization_timeout=init_timeout + 10,
    heartbeat_timeout_seconds=heartbeat + 10,
    shutdown_timeout_seconds=field(train_cfg, "shutdown_timeout", 60),
  )
  where = "the auto-detected coordinator"
  who = "this process"
  if train_cfg.coordinator_address:
    pid, n = int(train_cfg.process_id), int(train_cfg.num_processes)
    kwargs.update(coordinator_address=train_cfg.coordinator_address, num_processes=n, process_id=pid)
    where = f"the coordinator {train_cfg.coordinator_address}"
    who = f"process {pid} of {n}"
    if pid != 0:
      wait_for_coordinator(
        train_cfg.coordinator_address, init_timeout if connect_timeout is None else connect_timeout
      )
  joined = threading.Event()

  def give_up() -> None:
    if not joined.is_set():
      die(
        f"{who}: not every process joined {where} within {init_timeout} s (train.init_timeout); start the "
        "same command on every host, each with its own train.process_id"
      )

  timer = threading.Timer(init_timeout, give_up)
  timer.daemon = True
  timer.start()
  try:
    jax.distributed.initialize(**kwargs)
  finally:
    joined.set()
    timer.cancel()


def wait_for_coordinator(address: str, timeout: float) -> None:
  """Returns once a TCP connection to `address` (host:port) succeeds; DistributedError after `timeout` s."""
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + max(float(timeout), 0.0)
  while True:
    try:
      with socket.create_connection(
        (host.strip("[]"), int(port)), timeout=max(min(5.0, float(timeout)), 0.1)
      ):
        return
    except (OSError, ValueError) as e:
      if time.monotonic() >= deadline:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise DistributedError(
          f"the coordinator {address} (train.coordinator_address) does not answer after {float(timeout):.0f} s "
          f"({why}); is process 0 running there?"
        ) from None
    time.sleep(0.25)


def _try_get(client, key: str) -> str | None:
  try:
    return client.key_value_try_get(key)
  except Exception as e:  # jax raises JaxRuntimeError NOT_FOUND for a key not set yet
    if "NOT_FOUND" in str(e):
      return None
    raise


class Run:
  """One multi-process run's coordination: `check_config` at the start (then a `Watchdog` runs), `start` before
  the first step, `preempted(step)` after every step, `close` at the end. On one process every method is a no-op except SIGTERM handling: the run stops at
  the next step with a checkpoint, as on several processes."""

  def __init__(self, config: ml_collections.ConfigDict):
    global _generation
    self.processes = jax.process_count()
    self.pid = jax.process_index()
    self.config = config
    self._sigterm = threading.Event()
    self._old_handler = None
    self._watchdog: Watchdog | None = None
    if self.processes > 1:
      _generation += 1
      self.ns = f"{_PREFIX}/{_generation}"

  def check_config(self) -> None:
    """DistributedError naming the differing fields when the processes were started with different configs
    (another code length, batch or seed...), before any step: a mismatch would otherwise hang in a collective or
    train a silently different model on each host."""
    if self.processes == 1:
      return
    client = _client()
    mine = json.loads(self.config.to_json_best_effort())
    client.key_value_set(f"{self.ns}/config/{self.pid}", json.dumps(mine, sort_keys=True))
    timeout_ms = 1000 * field(self.config.train, "init_timeout", 300)
    ours = {k: v for k, v in run_dir.flat_fields(mine).items() if k not in PER_PROCESS}
    diffs = []
    for q in range(self.processes):
      if q == self.pid:
        continue
      try:
        theirs = json.loads(client.blocking_key_value_get(f"{self.ns}/config/{q}", timeout_ms))
      except Exception as e:
        raise DistributedError(f"process {q} did not publish its config ({str(e).splitlines()[0]})") from None
      flat = {k: v for k, v in run_dir.flat_fields(theirs).items() if k not in PER_PROCESS}
      for k in sorted(set(ours) | set(flat)):
        if ours.get(k, "<absent>") != flat.get(k, "<absent>"):
          diffs.append(
            f"config.{k}: {ours.get(k, '<absent>')!r} here vs {flat.get(k, '<absent>')!r} on process {q}"
          )
    if diffs:
      shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
      raise DistributedError(
        f"process {self.pid}: the processes were started with different configs — {shown}. Every process must "
        "run the same command (only train.process_id differs); nothing was trained"
      )
    # Every process passes the exchange above within moments of the others: start watching from here, so
    # that the clocks of the heartbeats start together (a peer still setting up is not taken for lost).
    self._watchdog = Watchdog(
      self.ns, self.pid, self.processes, field(self.config.train, "heartbeat_timeout", 60)
    )

  def start(self) -> None:
    """Before the first step, on one process: a SIGTERM handler (jax's preemption notifier, which handles it
    on several processes, is not running; SIGTERM would kill the run mid-step). `close` removes it."""
    if self.processes == 1 and threading.current_thread() is threading.main_thread():
      self._old_handler = signal.signal(signal.SIGTERM, lambda *_: self._sigterm.set())

  def preempted(self, step: int) -> bool:
    """True (on every process at the same step) once a SIGTERM reached any of them: save and stop here.
    Must be called after every step with the step count, on every process."""
    if self.processes == 1:
      return self._sigterm.is_set()
    from jax.experimental import multihost_utils

    try:
      return bool(multihost_utils.reached_preemption_sync_point(step))
    except RuntimeError:  # the preemption service is off (jax_enable_preemption_service=False)
      return False

  def on_error(self, exc: BaseException) -> None:
    """A collective that failed on several processes (gloo: 'Connection reset by peer') usually means another
    process died: give the watchdog up to train.heartbeat_timeout s to name it (it then exits this process
    with that line) before the error propagates."""
    if self._watchdog is not None and isinstance(exc, jax.errors.JaxRuntimeError):
      self._watchdog.join(field(self.config.train, "heartbeat_timeout", 60) + 5)

  def close(self, ok: bool) -> None:
    """Stops the watchdog, telling the others this process ended well (`ok`) or with an error."""
    if self._watchdog is not None:
      self._watchdog.stop("done" if ok else "failed")
      self._watchdog = None
    if self._old_handler is not None:
      signal.signal(signal.SIGTERM, self._old_handler)
      self._old_handler = None


class Watchdog:
  """Every process publishes a counter in the coordination service's key-value store each second and reads the
  others'. A process whose counter stands still for `timeout` s, or that ended with an error, stops this one
  with one line naming it (exit 3): without this, the survivors wait in a collective until jax's heartbeat
  aborts them. Losing the coordinator (process 0) itself is caught by jax first, with its own message ('the
  leader task was preempted/died')."""

  def __init__(self, ns: str, pid: int, processes: int, timeout: int):
    self._client = _client()
    self._key = lambda q: f"{ns}/alive/{q}"
    self._pid, self._n, self._timeout = pid, processes, int(timeout)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, name="ssdh-watchdog", daemon=True)
    self._thread.start()

  def _loop(self) -> None:
    interval = min(1.0, self._timeout / 5)
    now = time.monotonic()
    last: dict[int, tuple[str | None, float]] = {q: (None, now) for q in range(self._n) if q != self._pid}
    tick = 0
    while not self._stop.wait(interval):
      tick += 1
      try:
        self._client.key_value_set(self._key(self._pid), str(tick), allow_overwrite=True)
        seen = {q: _try_get(self._client, self._key(q)) for q in last}
      except Exception as e:
        if self._stop.is_set():
          return
        die(
          f"process {self._pid} lost the coordinator (process 0): {str(e).splitlines()[0]}; stopping. Start "
          "every process again with the same command: the run resumes from its last complete checkpoint"
        )
        return
      now = time.monotonic()
      for q, value in seen.items():
        if value == "done":
          continue
        if value == "failed" and not self._stop.is_set():
          die(
            f"process {q} of {self._n} stopped with an error (see its log); stopping process {self._pid} too"
          )
        if value != last[q][0]:
          last[q] = (value, now)
        elif now - last[q][1] > self._timeout and not self._stop.is_set():
          die(
            f"process {q} of {self._n} is lost: no sign of life for {self._timeout} s (train.heartbeat_timeout); "
            f"stopping process {self._pid} too. Start every process again with the same command: the run "
            "resumes from its last complete checkpoint"
          )

  def join(self, timeout: float) -> None:
    self._thread.join(timeout)

  def stop(self, state: str) -> None:
    self._stop.set()
    self._thread.join(timeout=5)
    try:
      self._client.key_value_set(self._key(self._pid), state, allow_overwrite=True)
    except Exception:  # the coordinator may be gone already; nothing left to tell
      pass
