"""The sides of a train-step comparison and their orchestration: which workers (bench/train_worker.py) a
group of sides needs, starting them (all at once or one by one, within a deadline), timing them in paired
rounds and the JSON-able result per group. Used by bench_train, bench_cpu_flags and the GPU suite.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import harness
from bench.train_setup import SHORT_DTYPE, torch_loss_cfg

# JAX must not pre-allocate 75% of a GPU in the orchestrating process, nor in any worker: the JAX worker and
# the PyTorch workers are alive at the same time. (An explicit user setting is kept.)
USER_PREALLOCATE = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
WORKER_MODULE = "bench.train_worker"


class TimedWorker(harness.Worker):
  """harness.Worker whose warm-up is bounded by `timeout`, and whose failure while timing marks this side
  failed (NaN rounds) instead of ending every side."""

  def __init__(self, argv: list[str], env: dict[str, str], timeout: float):
    self.error = ""
    try:
      super().__init__(argv, env=env, timeout=timeout)
    except TimeoutError:
      raise TimeoutError(f"not ready after {timeout:.0f} s (build + compile + warm-up); killed") from None
    except BaseException:
      self.kill()
      raise

  def __call__(self, n: int = 1) -> list[float]:
    if self.error:
      return [math.nan] * n
    try:
      return super().__call__(n)
    except (RuntimeError, TimeoutError, OSError, ValueError) as e:
      self.error = f"failed while timing: {e}"
      self.kill()
      return [math.nan] * n


@dataclasses.dataclass
class Side:
  """One side of a paired comparison: a worker spec (None: not run, `error` says why), environment variables
  for its worker only (`env`), and what came back."""

  key: str
  label: str
  framework: str
  spec: dict[str, Any] | None
  timeout: float = 900.0
  error: str = ""
  env: dict[str, str] = dataclasses.field(default_factory=dict)
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  worker: TimedWorker | None = None
  start_s: float = 0.0


@dataclasses.dataclass
class Group:
  """The sides compared with one another: one backbone, one compute dtype, one batch."""

  backbone: str
  dtype: str
  batch: int
  image_size: int
  augment: bool
  sides: list[Side]


def worker_env(gpu: bool) -> dict[str, str]:
  env = dict(os.environ)
  if USER_PREALLOCATE is None:
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # JAX and PyTorch workers share the GPU
  if not gpu:
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no inductor pool fighting the pinned cores
  return env


def start_side(side: Side, env: dict[str, str], deadline: float | None) -> None:
  """Starts one side's worker (build, compile, warm-up) within its timeout and the deadline (monotonic);
  a side that cannot start gets `error` instead of a worker."""
  if side.spec is None or side.error:
    return
  timeout = side.timeout
  if deadline is not None:
    timeout = min(timeout, deadline - time.monotonic())
    if timeout < 5:
      side.error = "skipped: time budget spent before this side started"
      return
  argv = harness.module_argv(WORKER_MODULE, json.dumps(side.spec))
  t = time.perf_counter()
  try:
    side.worker = TimedWorker(argv, {**env, **side.env}, timeout)
    side.info = dict(side.worker.info)
  except TimeoutError as e:
    side.error = f"skipped: {e}"
  except Exception as e:
    side.error = f"failed to start: {type(e).__name__}: {str(e)[:200]}"
  side.start_s = time.perf_counter() - t
  state = side.error or "ready"
  print(f"[bench] {side.spec['backbone']} {side.label}: {state} after {side.start_s:.0f} s",
        file=sys.stderr, flush=True)  # fmt: skip


def start_sides(sides: list[Side], env: dict[str, str], parallel: bool, deadline: float | None) -> None:
  """Starts (builds, compiles, warms up) every side's worker: one after another, or all at once (GPU: the
  compiles are CPU work in separate processes; nothing is timed until every side is ready)."""
  if parallel and len(sides) > 1:
    with ThreadPoolExecutor(len(sides)) as pool:
      list(pool.map(lambda s: start_side(s, env, deadline), sides))
  else:
    for s in sides:
      start_side(s, env, deadline)


def close_sides(sides: list[Side]) -> None:
  for s in sides:
    if s.worker is not None:
      if s.worker.error and not s.error:
        s.error = s.worker.error
      s.worker.close()
      s.worker = None


def _finite_pairs(times: dict[str, list[float]], num: str, den: str) -> dict[str, list[float]]:
  pairs = [(a, b) for a, b in zip(times[num], times[den]) if math.isfinite(a) and math.isfinite(b)]
  return {num: [a for a, _ in pairs], den: [b for _, b in pairs]}


def time_group(group: Group, rounds: int, per_round: int) -> dict[str, Any]:
  """Interleaves the group's ready sides, closes their workers and returns the group's JSON-able result."""
  live = {s.key: s.worker for s in group.sides if s.worker is not None}
  times: dict[str, list[float]] = {}
  try:
    if live:
      times = harness.interleave(live, rounds, per_round=per_round)
  finally:
    close_sides(group.sides)
  rows = []
  for s in group.sides:
    row: dict[str, Any] = {
      "key": s.key,
      "label": s.label,
      "framework": s.framework,
      "mode": (s.spec or {}).get("mode", "jit" if s.framework == "jax" else ""),
      "memory_format": (s.spec or {}).get("memory_format", ""),
      "warmup_s": round(s.start_s, 2),
      **s.info,
    }
    finite = [t for t in times.get(s.key, []) if math.isfinite(t)]
    if s.error or not finite:
      row["error"] = s.error or "no timed rounds"
    else:
      row["round_s"] = times[s.key]
      row["step_s"] = statistics.median(finite)
      row["images_s"] = group.batch / row["step_s"]
    rows.append(row)
  ok = {r["key"]: r for r in rows if "step_s" in r}
  if "jax" in ok:
    for r in rows:
      if r["framework"] == "torch" and r["key"] in ok:
        pairs = _finite_pairs(times, r["key"], "jax")
        if pairs["jax"]:
          r["ratio_vs_jax"] = harness.ratio_stats(pairs, r["key"], "jax")
          r["ratio_summary"] = harness.ratio_summary(pairs, r["key"], "jax")
  torch_ok = [r for r in rows if r["framework"] == "torch" and "step_s" in r]
  best = min(torch_ok, key=lambda r: r["step_s"]) if torch_ok else None
  out = {
    "backbone": group.backbone,
    "dtype": group.dtype,
    "batch": group.batch,
    "image_size": group.image_size,
    "augment": group.augment,
    "rounds": rounds,
    "per_round": per_round,
    "rows": rows,
    "best_torch": best["key"] if best else None,
    "best_torch_label": best["label"] if best else None,
  }
  if best is not None and "ratio_vs_jax" in best:
    out["jax_vs_best"] = best["ratio_vs_jax"]
    out["jax_vs_best_summary"] = best["ratio_summary"]
  return out


def run_groups(
  groups: list[Group],
  rounds: int,
  per_round: int,
  env: dict[str, str],
  *,
  parallel_warmup: bool = False,
  warm_all_first: bool = False,
  deadline: float | None = None,
) -> list[dict[str, Any]]:
  """Each group: start its sides, interleave them, close them. warm_all_first: every group's workers are
  started before any timing (GPU: the slow compiles overlap; idle workers hold memory but run nothing)."""
  results = []
  try:
    if warm_all_first:
      start_sides([s for g in groups for s in g.sides], env, parallel_warmup, deadline)
    for g in groups:
      if not warm_all_first:
        if deadline is not None and time.monotonic() > deadline:
          for s in g.sides:
            s.error = s.error or "skipped: time budget spent"
        else:
          start_sides(g.sides, env, parallel_warmup, deadline)
      results.append(time_group(g, rounds, per_round))
  finally:
    for g in groups:
      close_sides(g.sides)
  return results


def build_group(
  backbone: str,
  dtype: str,
  batch: int,
  *,
  image_size: int,
  threads: int,
  torch_dev: str | None,
  warmup: int,
  loss_reps: int,
  augment: bool = False,
  stored_size: int = 0,
  compile_: bool | str = True,
  compile_backend: str = "inductor",
  memory_formats: tuple[str, ...] = ("channels_last", "contiguous"),
  timeout: float = 900.0,
  compile_timeout: float = 600.0,
  cores: list[int] | None = None,
  warm_cores: list[int] | None = None,
  loss_cfg: dict[str, Any] | None = None,
  torch_skip: str = "",
) -> Group:
  """The JAX side and the PyTorch sides (eager in each memory format, torch.compile channels_last) for one
  backbone and dtype. compile_: False or a reason string skips the torch.compile side (recorded).
  torch_dev None: no PyTorch sides, or, with `torch_skip` (why), each recorded as skipped.
  cores: the cores every side is timed on (None: the first `threads` the worker may use); warm_cores: the
  cores it may build and compile on before that (`core_plan`)."""
  stored = stored_size or image_size
  common = {
    "backbone": backbone,
    "batch": batch,
    "dtype": dtype,
    "image_size": image_size,
    "stored_size": stored,
    "augment": augment,
    "warmup": warmup,
    "loss_reps": loss_reps,
    "threads": threads,
    "cores": cores,
    "warm_cores": warm_cores,
  }
  short = SHORT_DTYPE.get(dtype, dtype)
  sides = [Side("jax", f"JAX jit (pmap, 1 device), {short}", "jax", {**common, "framework": "jax"}, timeout)]
  amp = "bf16 autocast" if dtype == "bfloat16" else "fp32"
  label = f"PyTorch torch.compile {amp}, channels_last"
  if compile_backend != "inductor":
    label += f" (backend {compile_backend})"
  if torch_dev is None and torch_skip:
    for fmt in memory_formats:
      sides.append(
        Side(
          f"torch_eager_{fmt}", f"PyTorch eager {amp}, {fmt}", "torch", None, error=f"skipped: {torch_skip}"
        )
      )
    sides.append(Side("torch_compile_channels_last", label, "torch", None, error=f"skipped: {torch_skip}"))
  if torch_dev is not None:
    tcommon = {**common, "framework": "torch", "device": torch_dev, "loss_cfg": loss_cfg or torch_loss_cfg()}
    for i, fmt in enumerate(memory_formats):
      spec = {**tcommon, "mode": "eager", "memory_format": fmt, "count_flops": i == 0}
      sides.append(Side(f"torch_eager_{fmt}", f"PyTorch eager {amp}, {fmt}", "torch", spec, timeout))
    if compile_ is True:
      spec = {
        **tcommon,
        "mode": "compile",
        "memory_format": "channels_last",
        "compile_backend": compile_backend,
      }
      sides.append(Side("torch_compile_channels_last", label, "torch", spec, compile_timeout))
    else:
      sides.append(Side("torch_compile_channels_last", label, "torch", None, error=f"skipped: {compile_}"))
  return Group(backbone, dtype, batch, image_size, augment, sides)


def core_plan(threads: int, spread_warmup: bool) -> tuple[list[int] | None, list[int] | None]:
  """(timing cores: the first `threads` this process may use, the same for every side; warm-up cores: every
  core it may use when spread_warmup and there are more, else None)."""
  if not hasattr(os, "sched_getaffinity"):
    return None, None
  allowed = sorted(os.sched_getaffinity(0))
  cores = allowed[:threads]
  return cores, (allowed if spread_warmup and len(allowed) > len(cores) else None)


def torch_device(gpu: bool, notes: list[str]) -> tuple[str | None, str | None]:
  """(torch device for the PyTorch sides or None, torch version or None); why not, appended to notes (and,
  when torch is missing, said loudly on stderr)."""
  try:
    import torch
  except ImportError as e:
    harness.peer_missing("PyTorch", e)
    notes.append(f"PyTorch rows skipped: torch is not importable ({e}).")
    return None, None
  if gpu and not torch.cuda.is_available():
    notes.append(f"PyTorch rows skipped: torch {torch.__version__} sees no CUDA device (a CPU wheel?).")
    return None, torch.__version__
  return ("cuda" if gpu else "cpu"), torch.__version__
