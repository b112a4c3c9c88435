"""The scripts in examples/ run as a user runs them (subprocesses) and print what they promise."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(
    [sys.executable, os.path.join("examples", script), *args],
    cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_loss_and_metrics_on_arrays():
  out = _run("loss_and_metrics.py")
  assert "SSDH loss" in out and "loss_emb" in out and "mAP@all of random codes" in out


def test_custom_loss_term_trains_through_the_standard_trainer(tmp_path):
  out = _run("custom_loss_term.py", "--workdir", str(tmp_path / "run"), "--steps", "8", "--weight", "0.5")
  line = next(x for x in out.splitlines() if x.startswith("loss_quant over training:"))
  values = [float(v) for v in line.split(":")[1].split("->")]
  assert len(values) == 4 and all(v > 0 for v in values)  # logged as its own term at every log step
  assert "mAP@all" in out


def test_custom_backbone_trains_through_the_standard_trainer(tmp_path):
  out = _run("custom_backbone.py", "--workdir", str(tmp_path / "run"), "--steps", "8")
  assert "tiny_mlp: mAP@all" in out
  meta = (tmp_path / "run" / "config.json").read_text()
  assert '"name": "tiny_mlp"' in meta


def test_model_and_loss_objects_train_without_registering(tmp_path):
  out = _run("custom_backbone.py", "--workdir", str(tmp_path / "run"), "--steps", "4", "--unregistered")
  line = next(x for x in out.splitlines() if x.startswith("unregistered model and loss"))
  assert int(line.split("(")[1].split()[0]) >= 1  # the given loss function was the one traced
  assert "tiny_mlp: mAP@all" in out
