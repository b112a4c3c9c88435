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


def run(*args, check=True, drop_env=()):
  env = {k: v for k, v in dict(os.environ, JAX_PLATFORMS="cpu").items() if k not in drop_env}
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
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
    "error: --config.train.num_stepz: no such config field (did you mean --config.train.num_steps?)"
  )
  assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize(
  "override,message",
  [
    ("--config.train.num_steps=-5", "error: config.train.num_steps: must be ≥ 1, got -5"),
    ("--config.model.bits=0", "error: config.model.bits: must be ≥ 1, got 0"),
  ],
)
def test_bad_config_value_is_one_line_and_writes_nothing(tmp_path, override, message):
  proc = run("train.py", "--config", "configs/digits_demo.py", "--workdir", str(tmp_path / "run"), override,
             check=False)  # fmt: skip
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == message
  assert not os.path.exists(tmp_path / "run")


def test_help_lists_the_flags():
  proc = run("train.py", "--help")
  assert proc.returncode == 0 and "--config" in proc.stdout and "--workdir" in proc.stdout
  assert "--xla_cache" in proc.stdout


def test_unusable_xla_cache_is_one_line(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  proc = run("eval.py", "--workdir", str(tmp_path), f"--xla_cache={blocker}/xla", check=False,
             drop_env=("JAX_COMPILATION_CACHE_DIR",))  # fmt: skip
  assert proc.returncode == 2 and proc.stderr.strip().startswith(f"error: --xla_cache={blocker}/xla: cannot")


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
  assert "| mAP | P@H≤2 | R@H≤2 | mAP@H≤2 |" in out  # the README's notation
  # Another code length into the finished run's folder: refused up front, naming the field; nothing changes.
  before = {f: open(os.path.join(wd, f), "rb").read() for f in ("config.json", "metrics.json")}
  clash = run("train.py", "--config", "configs/digits_demo.py:24", "--workdir", wd, *TINY, check=False)
  assert clash.returncode == 2 and "model.bits: 12 (stored) vs 24 (given)" in clash.stderr
  assert {f: open(os.path.join(wd, f), "rb").read() for f in before} == before
  # eval.py without the test session's cache: its own --xla_cache gets the compiled programs (conftest keeps
  # JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0, so even fast compiles are written).
  xla_cache = tmp_path / "xla"
  ev = run("eval.py", "--workdir", wd, "--checkpoint", "latest", "--override", "eval.map_r=100",
           f"--xla_cache={xla_cache}", drop_env=("JAX_COMPILATION_CACHE_DIR",))  # fmt: skip
  assert any(f.endswith("-cache") for f in os.listdir(xla_cache))
  phases = [line.split(" ...")[0] for line in ev.stderr.splitlines() if line.startswith("eval: ")]
  assert phases[:5] == ["eval: load data", "eval: restore checkpoint 'latest'",
                        "eval: encode 100 queries + 1697 database images", "eval: metrics",
                        "eval: write report and index"]  # fmt: skip
  assert phases[5].startswith("eval: done in ")
  m = json.load(open(os.path.join(wd, "metrics.json")))
  assert m["key"]["R"] == 100 and m["key"]["bits"] == 12 and m["key"]["checkpoint_step"] == 8
  assert 0.0 <= m["metrics"]["map"] <= 1.0
  bal = np.asarray(m["bit_balance"])  # the bit statistics describe the same database codes
  assert m["metrics"]["constant_bits"] == int(np.sum((bal == 0) | (bal == 1)))
  assert 0.0 <= m["metrics"]["bit_entropy"] <= 1.0
  assert "constant_bits" in ev.stdout and "bit_entropy" in ev.stdout
  assert os.path.exists(os.path.join(wd, "database_index.npz"))

  from PIL import Image
  from sklearn.datasets import load_digits

  img = (load_digits().images[0] * 255 / 16).astype(np.uint8)
  path = tmp_path / "q.png"
  Image.fromarray(img).convert("RGB").save(path)
  env_cmd = ["-c", "from ssdh_jax import cli; cli.search_main()"]
  proc = run(*env_cmd, "--workdir", wd, "--image", str(path), "--k", "5", "--format", "jsonl")
  hits = [json.loads(line) for line in proc.stdout.strip().splitlines()]
  assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5] and all(h["query"] == str(path) for h in hits)
  assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
  assert all(len(h["label"]) == 1 and 0 <= h["label"][0] < 10 for h in hits)  # digits: class ids, no files
  assert "mark_flag_as_required" not in proc.stderr
  table = run(*env_cmd, "--workdir", wd, "--image", str(path), "--k", "3").stdout
  assert "rank\tdistance\tid\tlabel\tpath" in table and len(table.strip().splitlines()) == 5
  no_image = run(*env_cmd, "--workdir", wd, check=False)
  assert no_image.returncode == 2 and "--image" in no_image.stderr and "Traceback" not in no_image.stderr

  bad = run("eval.py", "--workdir", str(tmp_path / "missing"), check=False)
  assert bad.returncode != 0 and "config.json" in bad.stderr


def test_search_names_folder_items_by_path_and_class(tmp_path):
  from PIL import Image

  from configs import default
  from ssdh_jax import evaluate_run

  for rel in ("train/cat/b.png", "train/cat/a.png", "test/dog/c.png"):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(tmp_path / rel)
  c = default.get_config()
  c.data.source, c.data.manual_dir = "folder", str(tmp_path)
  paths, classes = evaluate_run.item_names(c)
  assert paths == [str(tmp_path / r) for r in ("test/dog/c.png", "train/cat/a.png", "train/cat/b.png")]
  assert classes == ["cat", "dog"]
  c.data.source = "digits"
  assert evaluate_run.item_names(c) == (None, None)
