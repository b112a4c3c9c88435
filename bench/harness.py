"""The measurement every bench/ comparison shares: paired, interleaved rounds on pinned threads.

On a shared machine an absolute time says little: load comes and goes within seconds. So A and B are timed
in alternating rounds (A B, then B A, ...), each round's ratio t_B / t_A is taken, and the median ratio and
its spread (min–max and the interquartile range over rounds) are reported. Both sides get the same thread
count (`pin_threads`, set before numpy / jax / torch / faiss are imported) and, where given, the same cores.

Two ways to pair:
  * in one process — `interleave({"a": fn_a, "b": fn_b}, rounds)`, each fn one timed unit of work;
  * across processes — `Worker` wraps a subprocess (`python -m bench.<module> ...`, its own process group)
    that answers "run N" with N timings (`serve` is its side); `interleave` takes workers as well. A worker
    not ready by its deadline is killed with its children.

Around that: the machine header and closing note of a table, one child process per thread count
(`run_thread_counts`), a deadline for one call (`call_with_deadline`), Markdown table lines, and the loud
line a comparison prints when its peer library is missing (`peer_missing`).

  from bench import harness
  times = harness.interleave({"jax": f, "faiss": g}, rounds=8)
  print(harness.ratio_summary(times, "faiss", "jax"))   # t_faiss / t_jax: median (IQR q1–q3; min–max), n
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
READY = "PAIRED_READY"
RESULT = "PAIRED_RESULT "
PEER_INSTALL = {"PyTorch": "make bench-peers", "FAISS": "make bench-peers"}

# ------------------------------------------------------------------------------------------------ threads


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


def pin_all_threads(cores: Sequence[int]) -> bool:
  """Binds every thread of this process (the thread pools XLA and PyTorch started too) to `cores`; a new
  thread inherits its creator's binding, so sched_setaffinity on the main thread alone would not do it."""
  ok = True
  for tid in os.listdir("/proc/self/task"):
    try:
      os.sched_setaffinity(int(tid), set(cores))
    except OSError:  # the thread ended meanwhile
      ok = False
  return ok


def likely_gpu() -> bool:
  """Before JAX is imported: is a CUDA device likely what JAX will use? (Only picks default thread counts.)"""
  return "cpu" not in os.environ.get("JAX_PLATFORMS", "").lower() and os.path.exists("/dev/nvidiactl")


def default_threads(gpu: bool) -> int:
  """Threads per side by default: 1 on a CPU (one core each, paired), every core feeding a GPU."""
  return (os.cpu_count() or 1) if gpu else 1


def bound_cores() -> list[int]:
  """The cores this process may run on ([] where the platform cannot say)."""
  return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


# ------------------------------------------------------------------------------------------------ headers


def load_average() -> str:
  return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def machine_header(threads: int) -> str:
  """One line for a table header: cores, CPU, threads per side, load average now."""
  cpu = platform.processor() or platform.machine()
  return f"{os.cpu_count()} cores ({cpu}), {threads} thread(s) per side, load average {load_average()}"


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
    f"{time.perf_counter() - started:.0f} s for this thread count; load average at the end " + load_average()
  )


def peer_missing(peer: str, error: BaseException | str) -> str:
  """Says loudly, on stderr, that a comparison's peer is not installed (its rows are skipped); returns the
  same sentence for the report's notes."""
  how = PEER_INSTALL.get(peer, "make bench-peers")
  line = f"bench: {peer} peer not installed ({error}) — rows skipped; install with {how}"
  print(line, file=sys.stderr, flush=True)
  return line


# ------------------------------------------------------------------------------------------------ Markdown


def md_head(columns: Sequence[str], align: str = "") -> list[str]:
  """A table's header and rule lines; align: one letter per column, 'l' (---) or 'r' (---:), default 'l'."""
  align = align or "l" * len(columns)
  rule = "".join("|---:" if a == "r" else "|---" for a in align) + "|"
  return ["| " + " | ".join(columns) + " |", rule]


def md_row(cells: Sequence[Any]) -> str:
  return "| " + " | ".join(str(c) for c in cells) + " |"


def write_text(path: str, text: str) -> None:
  """Writes a report whole (a temporary file renamed over the old one: a killed run leaves the old file)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ processes


def module_argv(module: str, *args: str) -> list[str]:
  """`python -m <module> args...` with this interpreter (children run from the repository root)."""
  return [sys.executable, "-m", module, *args]


def run_thread_counts(
  child_argv: Callable[[int], list[str]], tag: str, counts: Sequence[int] = (1, 2)
) -> list:
  """Runs one child process per thread count (`child_argv(threads)`: a bench in its pinned `--json` mode) and
  returns what each printed after `tag` on one line, parsed as JSON; a child that fails ends the run."""
  results = []
  for threads in counts:
    t0 = time.perf_counter()
    proc = subprocess.run(child_argv(threads), stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if proc.returncode != 0:
      raise SystemExit(f"the {threads}-thread run failed ({proc.returncode})")
    line = next(x for x in proc.stdout.splitlines() if x.startswith(tag))
    results.append(json.loads(line[len(tag) :]))
    print(f"[{threads} thread(s): {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
  return results


def call_with_deadline(fn: Callable[[], Any], seconds: float) -> tuple[str, float]:
  """Runs fn() on a daemon thread for at most `seconds` (a first call that compiles, say); returns (why it is
  unusable, or "" when it finished; seconds taken). A call past its deadline keeps running in the background."""
  done, err = threading.Event(), []

  def run() -> None:
    try:
      fn()
    except Exception as e:  # a failure is a finding to report, not a crash of the whole bench
      err.append(f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
    done.set()

  t0 = time.perf_counter()
  threading.Thread(target=run, daemon=True).start()
  if not done.wait(seconds):
    return f"did not finish in {seconds:.0f} s", time.perf_counter() - t0
  return (f"failed ({err[0]})" if err else ""), time.perf_counter() - t0


class Worker:
  """A subprocess that times one side: it prints READY after its warm-up, then answers each "run N" line
  with `RESULT {"times": [...], ...}` (N timings in seconds). It leads its own process group (torch.compile
  and XLA start helpers), so `kill` ends its children too; not ready in `timeout` seconds: killed."""

  def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 900.0):
    self.argv = list(argv)
    self.proc = subprocess.Popen(
      self.argv,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=None,
      text=True,
      env=dict(env) if env is not None else None,
      cwd=ROOT,
      bufsize=1,
      start_new_session=True,
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
        pass
    self.kill()  # helpers the worker started may outlive it

  def kill(self) -> None:
    """Ends the worker and its process group now (what a missed deadline does)."""
    proc = getattr(self, "proc", None)
    if proc is None:
      return
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      if proc.poll() is None:
        proc.kill()
    proc.wait()


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


# ------------------------------------------------------------------------------------------------ timing


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
