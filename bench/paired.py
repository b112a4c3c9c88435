"""Paired, interleaved timing: the measurement every bench/ comparison uses.

On a shared machine an absolute time says little: load comes and goes within seconds. So A and B are timed
in alternating rounds (A B, then B A, ...), each round's ratio t_B / t_A is taken, and the median ratio and
its spread (min–max and the interquartile range over rounds) are reported. Both sides get the same thread
count (`pin_threads`, set before numpy / jax / torch / faiss are imported) and, where given, the same cores.

Two ways to pair:
  * in one process — `interleave({"a": fn_a, "b": fn_b}, rounds)`, each fn one timed unit of work;
  * across processes — `Worker` wraps a subprocess that answers "run N" with N timings (the JAX and PyTorch
    train steps, which must not share an allocator or a thread pool); `interleave` takes workers as well.

  from paired import interleave, ratio_summary, machine_header
  times = interleave({"jax": f, "faiss": g}, rounds=8)
  print(ratio_summary(times, "faiss", "jax"))   # t_faiss / t_jax: median (IQR q1–q3; min–max), n
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
READY = "PAIRED_READY"
RESULT = "PAIRED_RESULT "


def pin_threads(threads: int, cores: Sequence[int] | None = None) -> list[int]:
  """Same thread count for every library of this process (call before they are imported).

  XLA:CPU gets one intra-op thread when threads == 1 (its Eigen pool otherwise takes every core); PyTorch
  reads OMP_NUM_THREADS (workers also call torch.set_num_threads); FAISS uses OpenMP. The process is bound
  to `cores` (default: the first `threads` cores it may use). Returns the cores it is bound to.
  """
  for var in THREAD_VARS:
    os.environ[var] = str(threads)
  flags = os.environ.get("XLA_FLAGS", "")
  if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
    flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  os.environ["XLA_FLAGS"] = flags.strip()
  if not hasattr(os, "sched_setaffinity"):
    return []
  allowed = sorted(os.sched_getaffinity(0))
  chosen = list(cores) if cores else allowed[:threads]
  os.sched_setaffinity(0, set(chosen))
  return chosen


def machine_header(threads: int) -> str:
  """One line for a table header: cores, CPU, threads per side, load average now."""
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  cpu = platform.processor() or platform.machine()
  return f"{os.cpu_count()} cores ({cpu}), {threads} thread(s) per side, load average {load}"


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo), or 'cpu' where it cannot be read."""
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return "cpu"


def rounds_note(rounds: int, started: float) -> str:
  """The closing note of a paired run: rounds, wall time since `started` (perf_counter), load average now."""
  return (
    f"{rounds} paired rounds per row (sides alternate, order reversed every round); "
    f"{time.perf_counter() - started:.0f} s for this thread count; load average at the end "
    + ", ".join(f"{x:.1f}" for x in os.getloadavg())
  )


def run_thread_counts(
  child_argv: Callable[[int], list[str]], tag: str, counts: Sequence[int] = (1, 2)
) -> list:
  """Runs one child process per thread count (`child_argv(threads)`: a bench in its pinned `--json` mode) and
  returns what each printed after `tag` on one line, parsed as JSON; a child that fails ends the run."""
  results = []
  for threads in counts:
    t0 = time.perf_counter()
    proc = subprocess.run(child_argv(threads), stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
      raise SystemExit(f"the {threads}-thread run failed ({proc.returncode})")
    line = next(x for x in proc.stdout.splitlines() if x.startswith(tag))
    results.append(json.loads(line[len(tag) :]))
    print(f"[{threads} thread(s): {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
  return results


class Worker:
  """A subprocess that times one side: it prints READY after its warm-up, then answers each "run N" line
  with `RESULT {"times": [...], ...}` (N timings in seconds)."""

  def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 900.0):
    self.argv = list(argv)
    self.proc = subprocess.Popen(
      self.argv,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=None,
      text=True,
      env=dict(env) if env is not None else None,
      bufsize=1,
    )
    self.info = self._read(timeout, expect_ready=True)

  def _read(self, timeout: float, expect_ready: bool = False) -> dict[str, Any]:
    # readline blocks, so the deadline is a timer that kills the worker; the read then sees end of file.
    expired = threading.Event()

    def expire() -> None:
      expired.set()
      self.kill()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    assert self.proc.stdout is not None
    try:
      while True:
        line = self.proc.stdout.readline()
        if not line:
          if expired.is_set():
            raise TimeoutError(f"worker {self.argv}: no answer in {timeout:.0f} s (killed)")
          raise RuntimeError(f"worker {self.argv} exited ({self.proc.wait()}) before answering")
        if expect_ready and line.startswith(READY):
          rest = line[len(READY) :].strip()
          return json.loads(rest) if rest else {}
        if line.startswith(RESULT):
          return json.loads(line[len(RESULT) :])
    finally:
      timer.cancel()

  def __call__(self, n: int = 1) -> list[float]:
    assert self.proc.stdin is not None
    self.proc.stdin.write(f"run {n}\n")
    self.proc.stdin.flush()
    return list(self._read(900.0)["times"])

  def close(self) -> None:
    if self.proc.poll() is None:
      try:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)
      except (OSError, subprocess.TimeoutExpired):
        self.kill()

  def kill(self) -> None:
    """Ends the worker now (what a missed deadline does; subclasses may kill a whole process group)."""
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()


def serve(
  step: Callable[[], Any], info: Mapping[str, Any] | None = None, sync: Callable[[Any], Any] | None = None
) -> None:
  """The worker side: announce READY (with `info`), then time `step` N times per "run N" request."""
  print(READY + " " + json.dumps(dict(info or {})), flush=True)
  for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == "quit":
      return
    times = []
    for _ in range(int(cmd[1])):
      t = time.perf_counter()
      out = step()
      if sync is not None:
        sync(out)
      times.append(time.perf_counter() - t)
    print(RESULT + json.dumps({"times": times}), flush=True)


def time_call(fn: Callable[[], Any], sync: Callable[[Any], Any] | None = None) -> float:
  t = time.perf_counter()
  out = fn()
  if sync is not None:
    sync(out)
  return time.perf_counter() - t


def interleave(
  sides: Mapping[str, Callable[[], Any] | Worker],
  rounds: int,
  *,
  per_round: int = 1,
  sync: Callable[[Any], Any] | None = None,
) -> dict[str, list[float]]:
  """Times every side once per round (the median of `per_round` calls), in an order that alternates
  between rounds (forward, then reversed), so no side always runs first or right after another.

  Returns side -> list of per-round seconds (same length for every side: rounds are paired)."""
  names = list(sides)
  out: dict[str, list[float]] = {k: [] for k in names}
  for r in range(rounds):
    for name in names if r % 2 == 0 else names[::-1]:
      side = sides[name]
      if isinstance(side, Worker):
        times = side(per_round)
      else:
        times = [time_call(side, sync) for _ in range(per_round)]
      out[name].append(statistics.median(times))
  return out


def ratio_stats(times: Mapping[str, Sequence[float]], num: str, den: str) -> dict[str, float]:
  """Per-round ratios t_num / t_den: median, quartiles, min, max, n."""
  ratios = sorted(a / b for a, b in zip(times[num], times[den]))
  n = len(ratios)
  q = statistics.quantiles(ratios, n=4, method="inclusive") if n >= 2 else [ratios[0]] * 3
  return {
    "median": statistics.median(ratios),
    "q1": q[0],
    "q3": q[2],
    "min": ratios[0],
    "max": ratios[-1],
    "n": n,
  }


def ratio_summary(times: Mapping[str, Sequence[float]], num: str, den: str) -> str:
  """`median (IQR q1–q3; min–max), n rounds` of t_num / t_den."""
  s = ratio_stats(times, num, den)
  return f"{s['median']:.2f} (IQR {s['q1']:.2f}–{s['q3']:.2f}; {s['min']:.2f}–{s['max']:.2f}), n={s['n']}"
