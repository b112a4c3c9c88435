"""train.py / eval.py / ssdh-search as a user runs them (subprocesses, real digits data)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
  "--config.train.num_steps=8",
  "--config.train.batch_size=32",
  "--config.train.log_every=4",
  "--config.train.eval_every=4",
  "--config.train.checkpoint_every=4",
  "--config.train.progress=False",
  "--config.model.width=8",
]


def run(*args, check=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600
  )
  if check and proc.returncode != 0:
    raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc


def test_typo_in_override_is_an_error(tmp_path):
  proc = run(
    "train.py",
    "--config",
    "configs/digits_demo.py",
    "--workdir",
    str(tmp_path),
    "--config.train.num_stepz=3",
    check=False,
  )
  assert proc.returncode != 0
  assert "num_stepz" in proc.stderr
  assert not os.path.exists(tmp_path / "checkpoints")


def test_missing_data_folder_fails_cleanly(tmp_path):
  proc = run(
    "train.py",
    "--config",
    "configs/cifar10_small_cnn.py:12",
    "--workdir",
    str(tmp_path / "run"),
    f"--config.data.manual_dir={tmp_path / 'nope'}",
    *TINY,
    check=False,
  )
  assert proc.returncode != 0
  assert "nope" in proc.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.slow
def test_train_eval_search_end_to_end(tmp_path):
  wd = str(tmp_path / "run")
  out = run("train.py", "--config", "configs/digits_demo.py:12", "--workdir", wd, *TINY).stdout
  assert "| digits |" in out and "| 12 |" in out
  run("eval.py", "--workdir", wd, "--checkpoint", "latest", "--override", "eval.map_r=100")
  m = json.load(open(os.path.join(wd, "metrics.json")))
  assert m["key"]["R"] == 100 and m["key"]["bits"] == 12 and m["key"]["checkpoint_step"] == 8
  assert 0.0 <= m["metrics"]["map"] <= 1.0
  assert os.path.exists(os.path.join(wd, "database_index.npz"))

  from PIL import Image
  from sklearn.datasets import load_digits

  img = (load_digits().images[0] * 255 / 16).astype(np.uint8)
  path = tmp_path / "q.png"
  Image.fromarray(img).convert("RGB").save(path)
  env_cmd = ["-c", "from ssdh_jax import cli; cli.search_main()"]
  proc = run(
    *env_cmd,
    "--workdir",
    wd,
    "--index",
    os.path.join(wd, "database_index.npz"),
    "--image",
    str(path),
    "--k",
    "5",
  )
  row = json.loads(proc.stdout.strip().splitlines()[-1])
  assert len(row["ids"]) == 5 and row["distances"] == sorted(row["distances"])

  bad = run("eval.py", "--workdir", str(tmp_path / "missing"), check=False)
  assert bad.returncode != 0 and "config.json" in bad.stderr
