"""`eval.py` on a finished run, as a user runs it: wall time per phase and in total.

The run directory is copied (config, splits, checkpoints) into a temporary folder first, so the run's own
reports are not rewritten. Each repeat is a fresh `python eval.py` process: start-up, imports, data loading,
restore, encoding, metrics and writing are all in the time. Phases come from eval.py's own stderr lines.

  .venv/bin/python -m bench.bench_eval --workdir RUN [--repeats 3]   # e.g. a CIFAR-10 run of train.py
  .venv/bin/python -m bench.bench_eval --quick                        # trains a tiny digits run first

Target (issue 16): a CIFAR-10 run (1,000 queries, 54,000 database images) in <= 120 s on 2 CPU cores.
The machine's load average is printed beside the times: on a shared machine they are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench import harness
from bench.harness import ROOT

TARGET_S = 120.0
_PHASE_DONE = re.compile(r"^eval: done in ([\d.]+) s \((.*)\)$")


def _copy_run(src: str, dst: str) -> None:
  for name in ("config.json", "run_meta.json"):
    if os.path.exists(os.path.join(src, name)):
      shutil.copy2(os.path.join(src, name), dst)
  for name in ("splits", "checkpoints"):
    if os.path.isdir(os.path.join(src, name)):
      shutil.copytree(os.path.join(src, name), os.path.join(dst, name))


def _tiny_run(workdir: str) -> None:
  cmd = [sys.executable, "train.py", "--config", "configs/digits_demo.py", "--workdir", workdir,
         "--config.train.num_steps=20", "--config.train.progress=False"]  # fmt: skip
  subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)


def _eval_once(workdir: str, xla_cache: str) -> dict:
  start = time.perf_counter()
  proc = subprocess.run(
    [sys.executable, "eval.py", "--workdir", workdir, f"--xla_cache={xla_cache}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    raise SystemExit(f"eval.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  phases: dict[str, float] = {}
  for line in proc.stderr.splitlines():
    m = _PHASE_DONE.match(line.strip())
    if m:
      for part in m.group(2).split(", "):
        name, secs = part.rsplit(" ", 1)
        phases[name] = float(secs)
  metrics = json.load(open(os.path.join(workdir, "metrics.json")))
  return {"wall": wall, "phases": phases, "map": metrics["metrics"]["map"], "key": metrics["key"]}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", default="", help="a run directory written by train.py")
  ap.add_argument("--quick", action="store_true", help="without --workdir: train a 20-step digits run first")
  ap.add_argument("--repeats", type=int, default=1)
  ap.add_argument("--xla_cache", default="", help="passed to eval.py (default: none, a cold start)")
  args = ap.parse_args()
  if not args.workdir and not args.quick:
    ap.error("give --workdir RUN (or --quick)")
  with tempfile.TemporaryDirectory(prefix="ssdh-bench-eval-") as tmp:
    src = args.workdir
    if not src:
      src = os.path.join(tmp, "tiny")
      _tiny_run(src)
    rows = []
    for r in range(args.repeats):
      run = os.path.join(tmp, f"eval{r}")
      os.makedirs(run)
      _copy_run(src, run)
      load = os.getloadavg()[0]
      rows.append(dict(_eval_once(run, args.xla_cache), load=load))
  key = rows[0]["key"]
  names = list(rows[0]["phases"])
  print(f"\n`eval.py` on {args.workdir or 'a 20-step digits run'}: protocol {key.get('protocol')}, split "
        f"{str(key.get('split_hash'))[:12]}, {key.get('bits')} bits, {key.get('backbone')}, mAP@"
        f"{key.get('R') or 'all'} {rows[0]['map']:.4f}; {os.cpu_count()} cores ({platform.processor() or platform.machine()}),"
        f" XLA cache: {args.xla_cache or 'none (cold start)'}\n")  # fmt: skip
  print(*harness.md_head(["repeat", "load avg", *(f"{n} s" for n in names), "wall s"]), sep="\n")
  for i, row in enumerate(rows):
    cells = " | ".join(f"{row['phases'].get(n, float('nan')):.1f}" for n in names)
    print(f"| {i} | {row['load']:.1f} | {cells} | {row['wall']:.1f} |")
  median = statistics.median(r["wall"] for r in rows)
  verdict = (
    f"target <= {TARGET_S:.0f} s: {'met' if median <= TARGET_S else 'not met'}" if args.workdir else ""
  )
  print(f"\nmedian wall {median:.1f} s over {len(rows)} repeat(s)" + (f"; {verdict}" if verdict else ""))


if __name__ == "__main__":
  main()
