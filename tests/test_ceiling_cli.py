"""bench/ceiling.py --features_of RUN: the probe reads the fine-tuned run's own pooled features.

A MobileNetV2 (random init) fine-tuned from features_14 on the digits data at 32 px, a few steps; then the
ceiling command on that run, and the features it probes checked against the trained model's own `features`
output (what the hash layer reads) on the same images."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = """
import sys
from configs import digits_demo
from ssdh_jax import train_lib
c = digits_demo.get_config("16")
c.model.name = "mobilenet_v2"
c.model.trainable = "features_14"
c.data.resize_size = c.data.image_size = 32
c.train.num_steps = 4
c.train.batch_size = 32
c.train.eval_every = c.train.checkpoint_every = c.train.log_every = 2
c.train.progress = False
c.eval.val_queries, c.eval.val_database = 50, 200
train_lib.train_and_evaluate(c, sys.argv[1])
"""

CHECK = """
import json, os, sys
import jax, ml_collections, numpy as np
sys.path.insert(0, "bench")
import ceiling
from ssdh_jax import checkpoints, evaluate, models, train_lib
from ssdh_jax.data import pipeline
run, wd = sys.argv[1], sys.argv[2]
feats, labels, meta, c = ceiling.run_pooled(run, wd)
splits, _ = pipeline.load_splits(c, wd)
model = models.build_model(c.model)
tx, _, _ = train_lib.make_tx(c, models.variable_shapes(model, c.data.image_size)["params"])
state = train_lib.create_train_state(c, model, tx, jax.random.PRNGKey(c.seed))
state, step = checkpoints.Checkpointer(run, async_save=False).restore_best(state)
v = {"params": state.params, "batch_stats": state.batch_stats}
from ssdh_jax import preprocessing
q = splits["query"]
x = preprocessing.preprocess(pipeline.eval_images(q.images, c).astype(np.float32), c.model.preprocess)
want = np.asarray(model.apply(v, x, train=False)["features"])
np.testing.assert_allclose(feats["query"], want, rtol=1e-4, atol=1e-4)
print("OK", feats["query"].shape, step)
"""


@pytest.mark.slow
def test_features_of_a_fine_tuned_run(tmp_path):
  run, wd = str(tmp_path / "run"), str(tmp_path / "probe")
  env = dict(os.environ, PYTHONPATH=ROOT)
  subprocess.run([sys.executable, "-c", TRAIN, run], cwd=ROOT, env=env, check=True, timeout=600)
  out = tmp_path / "row.jsonl"
  cmd = [sys.executable, "bench/ceiling.py", "--config", "configs/digits_demo.py:16", "--workdir", wd,
         "--features_of", run, "--out", str(out)]  # fmt: skip
  res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  row = json.loads(out.read_text().splitlines()[-1])
  assert "fine-tuned from features_14" in row["representation"] and row["dim"] == 1280
  assert 0.0 <= row["probe_accuracy"] <= 1.0 and 0.0 < row["probe_map_all"] <= 1.0
  assert f"| {row['probe_accuracy']:.4f} |" in res.stdout
  chk = subprocess.run([sys.executable, "-c", CHECK, run, wd], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
  assert chk.returncode == 0 and "OK" in chk.stdout, chk.stderr[-3000:]
  np.testing.assert_equal(chk.stdout.split()[0], "OK")
