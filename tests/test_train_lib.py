"""Trainer: 1 vs 8 devices (pmap and shard_map), loss goes down, exact resume, checkpoint fallback, NaN stop."""

import glob
import json
import logging
import os

import jax
import numpy as np
import pytest

from configs import digits_demo
from ssdh_jax import checkpoints, mesh, metric_writer, testing, train_lib


def tiny_config(steps=6, **train):
  c = digits_demo.get_config("16")
  c.train.num_steps = steps
  c.train.batch_size = 32
  c.train.log_every = 2
  c.train.eval_every = 0
  c.train.checkpoint_every = 2
  c.train.progress = False
  c.train.async_checkpoint = False
  c.model.width = 8
  c.eval.val_queries = 50
  c.eval.val_database = 200
  for k, v in train.items():
    setattr(c.train, k, v)
  return c


EQUIVALENCE_BODY = """
import jax, numpy as np
from configs import digits_demo
from ssdh_jax import train_lib, models, mesh
from ssdh_jax.data import pipeline
import tempfile

c = digits_demo.get_config("24")
c.train.batch_size = 32
c.model.width = 8
c.model.dropout = 0.5  # masks drawn per global row: equal on 1 and 8 devices
c.loss.variant = {variant!r}
c.optim.name = "sgd"
c.optim.lr = 0.05
c.optim.schedule = "constant"
c.optim.warmup_steps = 0
c.data.labeled_fraction = 0.5
c.train.parallel = {mode!r}
_tmp = tempfile.TemporaryDirectory()  # removed when the subprocess exits
splits, meta = pipeline.load_splits(c, _tmp.name)
batch = next(pipeline.train_batches(splits, c, 0, 0))
batch = {{k: batch[k] for k in ("image", "labels", "labeled")}}
if {variant!r} == "multi_label":  # give some rows a second label so multi-label similarity is exercised
  extra = np.zeros_like(batch["labels"]); extra[::3, 3] = 1.0
  batch["labels"] = np.maximum(batch["labels"], extra * batch["labeled"][:, None])
out = {{}}
for n in (1, 8):
  dm = mesh.create(c.train.parallel, n)
  model, tx, schedule, step_fn = train_lib.build_training(c, dm)
  state = train_lib.create_train_state(c, model, tx, jax.random.PRNGKey(0))
  pstate = dm.replicate(state)
  losses = []
  for _ in range(3):
    pstate, m = step_fn(pstate, dm.shard_batch(batch))
    mm = dm.to_host(m)
    losses.append(float(mm["loss"]))
  hs = dm.to_host(pstate)
  out[n] = (losses, jax.tree.leaves(hs.params), jax.tree.leaves(hs.batch_stats),
            float(np.asarray(mm["n_triplets"]).reshape(-1)[0]))
emit({{
  "loss1": out[1][0], "loss8": out[8][0],
  "param_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(out[1][1], out[8][1])),
  "param_scale": max(float(np.max(np.abs(a))) for a in out[1][1]),
  "bs_diff": max([float(np.max(np.abs(a - b))) for a, b in zip(out[1][2], out[8][2])] or [0.0]),
  "moved": max(float(np.max(np.abs(a))) for a in out[1][1]),
  "triplets": [out[1][3], out[8][3]],
}})
"""


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_step_traces_once_from_placed_state(mode):
  """replicate must lay the state out exactly as the step returns it, or step 2 recompiles the step."""
  dm = mesh.create(mode, 1)
  traces = []

  def body(state, batch, axis_name):
    traces.append(1)
    total = jax.lax.psum(batch["x"].sum(), axis_name)
    return jax.tree.map(lambda p: p + total, state), {"total": total}

  step = dm.wrap(body)
  pstate = dm.replicate({"w": np.zeros(3, np.float32)})
  for _ in range(3):
    pstate, _ = step(pstate, dm.shard_batch({"x": np.ones((4,), np.float32)}))
  np.testing.assert_allclose(dm.to_host(pstate)["w"], 12.0)
  assert len(traces) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
  "mode,variant", [("pmap", "multi_label"), ("shard_map", "multi_label"), ("pmap", "single_label")]
)
def test_one_vs_eight_devices_same_training(mode, variant):
  r = testing.run_with_devices(EQUIVALENCE_BODY.format(mode=mode, variant=variant), 8, timeout=900)
  np.testing.assert_allclose(r["loss1"], r["loss8"], rtol=2e-5, atol=1e-6)
  assert r["param_diff"] < 2e-5 * max(1.0, r["param_scale"]), r
  assert r["bs_diff"] < 1e-4, r
  assert r["triplets"][0] == r["triplets"][1]
  if variant == "multi_label":
    assert r["triplets"][0] > 0


def test_loss_decreases_on_digits(tmp_path):
  c = tiny_config(steps=40)
  c.train.log_every = 10
  c.train.checkpoint_every = 40
  c.train.batch_size = 64
  train_lib.train_and_evaluate(c, str(tmp_path))
  import json

  recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  losses = [r["loss"] for r in recs if "loss" in r]
  assert len(losses) == 4
  assert losses[-1] < losses[0] * 0.9, losses
  assert {"images_per_sec", "lr", "n_triplets", "grad_norm"} <= set(recs[0])
  assert os.path.exists(tmp_path / "metrics.json") and os.path.exists(tmp_path / "eval_curves.png")
  assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  meta = json.load(open(tmp_path / "run_meta.json"))
  assert meta["split_hash"]


def _final_params(workdir, c):
  model, tx, _, _ = train_lib.build_training(c, mesh.create("pmap", 1))
  target = train_lib.create_train_state(c, model, tx, jax.random.PRNGKey(0))
  state, step = checkpoints.Checkpointer(str(workdir), async_save=False).restore_latest(target)
  return state, step


def test_kill_and_resume_is_exact(tmp_path):
  c = tiny_config(steps=6)
  train_lib.train_and_evaluate(c, str(tmp_path / "straight"))
  out = train_lib.train_and_evaluate(c, str(tmp_path / "resumed"), stop_after=3)
  assert out == {"step": 3}
  assert _final_params(tmp_path / "resumed", c)[1] == 3  # the interrupted run really stopped mid-way
  log = tmp_path / "resumed" / "metrics.jsonl"
  with open(log, "a") as f:  # what a run killed after logging step 4, before checkpointing it, leaves behind
    f.write(json.dumps({"step": 4, "loss": 9.0}) + "\n" + '{"step": 5, "lo')
  train_lib.train_and_evaluate(c, str(tmp_path / "resumed"))
  recs = [json.loads(line) for line in open(log)]
  steps = [r["step"] for r in recs if "loss" in r]  # training records; val_map records share their step
  assert steps == [2, 4, 6] and 9.0 not in [r["loss"] for r in recs if "loss" in r]
  a, sa = _final_params(tmp_path / "straight", c)
  b, sb = _final_params(tmp_path / "resumed", c)
  assert sa == sb == 6
  for x, y in zip(
    jax.tree.leaves((a.params, a.opt_state, a.batch_stats)),
    jax.tree.leaves((b.params, b.opt_state, b.batch_stats)),
  ):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_corrupted_latest_checkpoint_falls_back(tmp_path, caplog):
  c = tiny_config(steps=4)
  train_lib.train_and_evaluate(c, str(tmp_path))
  latest = tmp_path / "checkpoints" / "last" / "4"
  assert latest.is_dir()
  for f in latest.rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  with caplog.at_level(logging.WARNING):
    _, step = _final_params(tmp_path, c)
  assert step == 2
  assert "cannot be restored" in caplog.text


def test_non_finite_update_stops_and_keeps_last_good(tmp_path, monkeypatch):
  c8 = tiny_config(steps=8)
  train_lib.train_and_evaluate(c8, str(tmp_path), stop_after=4)
  good, _ = _final_params(tmp_path, c8)
  real = train_lib.losses.get_loss

  def poisoned(name):
    fn = real(name)
    return lambda *a, **k: (lambda lv, aux: (lv * float("nan"), aux))(*fn(*a, **k))

  monkeypatch.setattr(train_lib.losses, "get_loss", poisoned)
  with pytest.raises(train_lib.NonFiniteError, match="non-finite"):
    train_lib.train_and_evaluate(c8, str(tmp_path))
  state, step = _final_params(tmp_path, c8)
  assert step == 4
  for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(good.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_metric_writer_flushes_tensorboard_at_every_write(tmp_path):
  w = metric_writer.MetricWriter(str(tmp_path))
  w.write(1, {"loss": 1.0})
  events = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  assert events and os.path.getsize(events[0]) > 0  # readable even if the process is killed now
  w.close()


def test_a_forty_image_two_class_folder_trains_with_a_custom_protocol(tmp_path):
  from PIL import Image

  rng = np.random.default_rng(0)
  for cls, level in (("cat", 40), ("dog", 200)):
    (tmp_path / "data" / "train" / cls).mkdir(parents=True)
    for i in range(20):
      img = rng.normal(level, 30, (8, 8, 3)).clip(0, 255).astype(np.uint8)
      Image.fromarray(img).save(tmp_path / "data" / "train" / cls / f"{i}.png")
  c = tiny_config(steps=4)
  c.data.source, c.data.manual_dir = "folder", str(tmp_path / "data")
  c.data.protocol = "custom:query=4,labeled=10,val=2,balanced=1"
  c.data.num_classes = c.model.num_classes = 2
  c.train.batch_size = 8
  res = train_lib.train_and_evaluate(c, str(tmp_path / "run"))
  assert res["key"]["protocol"] == c.data.protocol  # the spec, with its sizes, names the run
  assert (res["key"]["num_queries"], res["key"]["num_database"]) == (4, 36)
  assert 0.0 <= res["metrics"]["map"] <= 1.0
