"""bench/ as a package: its shape (no sys.path patching, no reads of another module's privates, every
comparison has --quick for `make bench`) and the shared harness (Markdown, ratios, workers, deadlines)."""

from __future__ import annotations

import ast
import os
import sys
import time

import pytest

from bench import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
# Experiments still run as scripts, to be moved with the quality issue's grids.
SCRIPTS = {"quality.py", "sweep.py", "ceiling.py"}


def _modules() -> list[str]:
  out = []
  for folder, _, files in os.walk(BENCH):
    out += [os.path.join(folder, f) for f in files if f.endswith(".py") and f not in SCRIPTS]
  return sorted(out)


def test_no_module_patches_sys_path():
  assert [m for m in _modules() if "sys.path" in open(m).read()] == []


def test_no_module_reads_another_modules_private_names():
  bad = []
  for path in _modules():
    tree = ast.parse(open(path).read())
    imported = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bench"):
        imported |= {a.asname or a.name for a in node.names}
      elif isinstance(node, ast.Import):
        imported |= {(a.asname or a.name).split(".")[-1] for a in node.names if a.name.startswith("bench")}
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
        if isinstance(node.value, ast.Name) and node.value.id in imported:
          bad.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
  assert bad == []


def test_every_comparison_runs_quick():
  comparisons = [m for m in _modules() if os.path.basename(m).startswith("bench_")]
  assert len(comparisons) >= 9
  assert [m for m in comparisons if '"--quick"' not in open(m).read()] == []


def test_markdown_head_and_row():
  assert harness.md_head(["a", "b", "c"], "lrl") == ["| a | b | c |", "|---|---:|---|"]
  assert harness.md_head(["a", "b"]) == ["| a | b |", "|---|---|"]
  assert harness.md_row(["x", 1, 2.5]) == "| x | 1 | 2.5 |"


def test_ratio_summary_is_per_round():
  times = {"a": [1.0, 1.0, 2.0, 1.0], "b": [2.0, 3.0, 2.0, 2.0]}
  s = harness.ratio_stats(times, "b", "a")
  assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 4)
  assert harness.ratio_summary(times, "b", "a") == "2.00 (IQR 1.75–2.25; 1.00–3.00), n=4"


def test_interleave_alternates_the_order():
  order = []
  sides = {k: (lambda k=k: order.append(k)) for k in ("a", "b", "c")}
  times = harness.interleave(sides, rounds=2)
  assert order == ["a", "b", "c", "c", "b", "a"]
  assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2, "c": 2}


def test_worker_answers_and_is_killed_past_its_deadline():
  serve = "from bench import harness; harness.serve(lambda: None, {'hello': 1})"
  w = harness.Worker([sys.executable, "-c", serve], timeout=60)
  try:
    assert w.info == {"hello": 1}
    assert len(harness.interleave({"w": w, "f": lambda: None}, rounds=2, per_round=3)["w"]) == 2
  finally:
    w.close()
  assert w.proc.poll() is not None
  t = time.perf_counter()
  with pytest.raises(TimeoutError):
    harness.Worker([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
  assert time.perf_counter() - t < 30


def test_call_with_deadline():
  assert harness.call_with_deadline(lambda: None, 5)[0] == ""
  assert harness.call_with_deadline(lambda: 1 / 0, 5)[0].startswith("failed (ZeroDivisionError")
  assert harness.call_with_deadline(lambda: time.sleep(5), 0.1)[0] == "did not finish in 0 s"


def test_a_missing_peer_is_said_loudly(capsys):
  note = harness.peer_missing("PyTorch", ImportError("No module named 'torch'"))
  err = capsys.readouterr().err
  assert err.strip() == note
  assert note.startswith("bench: PyTorch peer not installed") and "make bench-peers" in note
