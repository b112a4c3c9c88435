"""Test helpers: run a code body under N fake CPU devices.

XLA reads `--xla_force_host_platform_device_count` once, when jax initialises its backend, so a body that needs
N devices runs in a fresh interpreter with the flag set before jax is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

_RESULT_MARK = "@@SSDH_RESULT@@"


def run_with_devices(body: str, num_devices: int, *, timeout: float = 600.0, env: dict | None = None) -> Any:
  """Runs `body` (Python source) in a subprocess that sees `num_devices` CPU devices.

  The body may call `emit(obj)` once with a JSON-serialisable result, which this function returns.
  Raises RuntimeError with the subprocess's stderr when it fails.
  """
  prelude = textwrap.dedent(
    f"""
    import json as _json
    def emit(obj):
      print({_RESULT_MARK!r} + _json.dumps(obj), flush=True)
    """
  )
  child_env = dict(os.environ)
  child_env.update(env or {})
  flags = child_env.get("XLA_FLAGS", "")
  child_env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={num_devices}".strip()
  child_env["JAX_PLATFORMS"] = "cpu"
  repo = str(Path(__file__).resolve().parent.parent)
  child_env["PYTHONPATH"] = repo + os.pathsep + child_env.get("PYTHONPATH", "")
  proc = subprocess.run(
    [sys.executable, "-c", prelude + textwrap.dedent(body)],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=child_env,
    cwd=repo,
  )
  if proc.returncode != 0:
    raise RuntimeError(
      f"subprocess with {num_devices} devices failed (rc={proc.returncode}):\n{proc.stderr[-6000:]}"
    )
  for line in proc.stdout.splitlines():
    if line.startswith(_RESULT_MARK):
      return json.loads(line[len(_RESULT_MARK) :])
  return None
