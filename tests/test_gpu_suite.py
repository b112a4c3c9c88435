"""bench/gpu_suite.sh --dry-run: the whole GPU suite on CPU at tiny sizes, every section and code path.

The suite is meant to run unattended on a lent accelerator, so a section that breaks must show up here first:
the dry run must exit 0, and its JSON and Markdown must hold every section (train rows per backbone, the
metric row, the quality row), with PyTorch rows timed when torch imports and recorded as skipped when not.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_KEYS = ("torch_eager_channels_last", "torch_eager_contiguous", "torch_compile_channels_last")

pytestmark = pytest.mark.slow  # a dry run compiles three small JAX programs and starts four workers: minutes


def torch_importable() -> bool:
  return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0


def run_suite(out, *extra: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable, **(env_extra or {}))
  env.pop("OUT", None)
  cmd = ["bash", os.path.join(ROOT, "bench", "gpu_suite.sh"), "--dry-run", "--out", str(out), *extra]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


def problems(report: dict, md: str, torch_ok: bool, sections=("metric", "train", "quality")) -> list[str]:
  """Everything wrong with a dry run's report (empty: it holds every section it should)."""
  bad = []
  if not report.get("dry_run"):
    bad.append("not marked as a dry run")
  secs = report.get("sections", {})
  for name in sections:
    if secs.get(name, {}).get("status") != "ok":
      bad.append(f"section {name}: {secs.get(name, {}).get('status')} {secs.get(name, {}).get('reason', '')}")
  if "metric" in sections:
    m = secs.get("metric", {})
    if not m.get("rows"):
      bad.append("metric: no rows")
    for r in m.get("rows", []):
      if not (r.get("warm_s", 0) > 0 and r.get("compile_s", -1) >= 0 and 0 <= r.get("map", -1) <= 1):
        bad.append(f"metric row implausible: {r}")
    if not m.get("check", {}).get("abs_diff", 1) < 1e-5:
      bad.append(f"metric: ssdh_jax disagrees with the NumPy reference: {m.get('check')}")
    if "## mAP@R" not in md or "mean_average_precision" not in md:
      bad.append("markdown: no metric section")
  if "train" in sections:
    t = secs.get("train", {})
    groups = {g["backbone"]: g for g in t.get("groups", [])}
    rounds = report.get("settings", {}).get("train", {}).get("rounds")
    for name in report.get("settings", {}).get("train", {}).get("backbones", []):
      g = groups.get(name)
      if g is None:
        bad.append(f"train: no rows for {name}")
        continue
      rows = {r["key"]: r for r in g["rows"]}
      j = rows.get("jax", {})
      if not (j.get("step_s", 0) > 0 and j.get("images_s", 0) > 0) or "error" in j:
        bad.append(f"train {name}: JAX row not timed: {j.get('error')}")
      for key in TORCH_KEYS:
        r = rows.get(key)
        if r is None:
          bad.append(f"train {name}: no {key} row")
        elif torch_ok:
          ratio = r.get("ratio_vs_jax") or {}
          if "error" in r or not r.get("step_s", 0) > 0 or ratio.get("n") != rounds:
            bad.append(f"train {name} {key}: not timed against JAX: {r.get('error')} {ratio}")
        elif not (r.get("error", "").startswith("skipped") and "torch" in r.get("error", "")):
          bad.append(f"train {name} {key}: torch is not importable, yet the row is not skipped: {r}")
      if torch_ok and (g.get("best_torch") not in TORCH_KEYS or "jax_vs_best" not in g):
        bad.append(f"train {name}: no best PyTorch configuration / ratio")
      if name not in md:
        bad.append(f"markdown: no train row for {name}")
    if torch_ok and not any(
      n.startswith("Numeric sanity, JAX loss vs torch_ref loss: PASS") for n in t.get("notes", [])
    ):
      bad.append(f"train: the JAX and PyTorch losses were not shown to agree: {t.get('notes')}")
    if "## Train step" not in md or "thread(s) per side" not in md or "JAX jit" not in md:
      bad.append("markdown: no train table with its machine header")
    if torch_ok and "PyTorch eager" not in md:
      bad.append("markdown: no PyTorch rows")
  if "quality" in sections:
    q = secs.get("quality", {})
    if not (0 <= q.get("map", -1) <= 1 and q.get("wall_s", 0) > 0):
      bad.append(f"quality: no mAP: {q}")
    if q.get("steps") != report.get("settings", {}).get("quality", {}).get("steps"):
      bad.append("quality: step count differs from the settings")
    if not str(q.get("data", "")).startswith("digits"):
      bad.append(f"quality: a dry run trains on digits, not {q.get('data')}")
    if "## Quality" not in md:
      bad.append("markdown: no quality section")
  return bad


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("gpu_suite")
  proc = run_suite(out)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(out / "gpu_suite.json") as f:
    report = json.load(f)
  md = (out / "gpu_suite.md").read_text()
  return report, md, proc


def test_dry_run_holds_every_section(dry_run):
  report, md, proc = dry_run
  assert problems(report, md, torch_importable()) == []
  assert proc.stdout.strip() == md.strip()  # what it prints is what it wrote


def test_a_broken_section_fails_the_check(dry_run):
  report, md, _ = dry_run
  torch_ok = torch_importable()
  breakages = {
    "quality failed": lambda r: r["sections"]["quality"].update(status="failed", reason="boom"),
    "no metric rows": lambda r: r["sections"]["metric"].update(rows=[]),
    "no train group": lambda r: r["sections"]["train"].update(groups=[]),
    "JAX row errored": lambda r: r["sections"]["train"]["groups"][0]["rows"][0].update(error="failed: x"),
    "a torch row missing": lambda r: r["sections"]["train"]["groups"][0]["rows"].pop(),
  }
  for what, brk in breakages.items():
    broken = copy.deepcopy(report)
    brk(broken)
    assert problems(broken, md, torch_ok), what
  assert problems(report, md.replace("## Quality", "## Q"), torch_ok)
  # The same report read with the other torch availability is wrong too: the rows must match reality.
  assert problems(report, md, not torch_ok)


def test_torch_rows_are_skipped_when_torch_does_not_import(tmp_path):
  fake = tmp_path / "fake"
  fake.mkdir()
  (fake / "torch.py").write_text("raise ImportError('torch hidden by the test')\n")
  out = tmp_path / "out"
  pythonpath = os.pathsep.join(p for p in (str(fake), os.environ.get("PYTHONPATH", "")) if p)
  proc = run_suite(out, "--only", "train", env_extra={"PYTHONPATH": pythonpath})
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads((out / "gpu_suite.json").read_text())
  md = (out / "gpu_suite.md").read_text()
  assert problems(report, md, torch_ok=False, sections=("train",)) == []
  assert "torch hidden by the test" in md
