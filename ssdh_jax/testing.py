"""Test helpers: run a code body under N fake CPU devices, or in P processes (a multi-host run in miniature).

XLA reads `--xla_force_host_platform_device_count` once, when jax initialises its backend, so a body that needs
N devices runs in a fresh interpreter with the flag set before jax is imported.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

_RESULT_MARK = "@@SSDH_RESULT@@"


_PRELUDE = textwrap.dedent(
  f"""
  import json as _json
  def emit(obj):
    print({_RESULT_MARK!r} + _json.dumps(obj), flush=True)
  """
)
_REPO = str(Path(__file__).resolve().parent.parent)


def _child_env(num_devices: int, env: dict | None) -> dict:
  child_env = dict(os.environ)
  child_env.update(env or {})
  flags = child_env.get("XLA_FLAGS", "")
  child_env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={num_devices}".strip()
  child_env["JAX_PLATFORMS"] = "cpu"
  child_env["PYTHONPATH"] = _REPO + os.pathsep + child_env.get("PYTHONPATH", "")
  return child_env


def _result(stdout: str) -> Any:
  for line in stdout.splitlines():
    if line.startswith(_RESULT_MARK):
      return json.loads(line[len(_RESULT_MARK) :])
  return None


def run_with_devices(body: str, num_devices: int, *, timeout: float = 600.0, env: dict | None = None) -> Any:
  """Runs `body` (Python source) in a subprocess that sees `num_devices` CPU devices.

  The body may call `emit(obj)` once with a JSON-serialisable result, which this function returns.
  Raises RuntimeError with the subprocess's stderr when it fails.
  """
  proc = subprocess.run(
    [sys.executable, "-c", _PRELUDE + textwrap.dedent(body)],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=_child_env(num_devices, env),
    cwd=_REPO,
  )
  if proc.returncode != 0:
    raise RuntimeError(
      f"subprocess with {num_devices} devices failed (rc={proc.returncode}):\n{proc.stderr[-6000:]}"
    )
  return _result(proc.stdout)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(body: str, num_processes: int, devices_per_process: int, *, timeout: float = 600.0) -> list:
  """Runs `body` in `num_processes` subprocesses on this machine, each with `devices_per_process` CPU devices:
  a multi-host run in miniature. The body sees COORDINATOR ('127.0.0.1:port'), NUM_PROCESSES and PROCESS_ID
  and calls jax.distributed.initialize with them (CPU collectives: gloo).

  Returns every process's `emit` result, in process order. Raises RuntimeError with the stderr of the first
  process that fails (the others are killed: a collective would wait for it forever).
  """
  coordinator = f"127.0.0.1:{free_port()}"
  procs = []
  for i in range(num_processes):
    header = f"COORDINATOR = {coordinator!r}\nNUM_PROCESSES = {num_processes}\nPROCESS_ID = {i}\n"
    procs.append(
      subprocess.Popen(
        [sys.executable, "-c", _PRELUDE + header + textwrap.dedent(body)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(devices_per_process, None),
        cwd=_REPO,
      )
    )
  outputs: list = [None] * num_processes
  deadline = time.monotonic() + timeout
  try:
    pending = set(range(num_processes))
    while pending:
      for i in sorted(pending):
        try:
          out, err = procs[i].communicate(timeout=0.5)
        except subprocess.TimeoutExpired:
          if time.monotonic() > deadline:
            raise RuntimeError(f"process {i} of {num_processes} timed out after {timeout:.0f} s") from None
          continue
        pending.discard(i)
        if procs[i].returncode != 0:
          raise RuntimeError(
            f"process {i} of {num_processes} failed (rc={procs[i].returncode}):\n{err[-6000:]}"
          )
        outputs[i] = _result(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return outputs
