"""Multi-host training in miniature: 2 processes x 4 CPU devices (jax.distributed, gloo collectives) against
one process: the same losses, parameters and metrics.json, through an interruption and a resume."""

import json

import jax
import numpy as np
import pytest

from ssdh_jax import checkpoints, mesh, testing, train_lib

CONFIG = """
import jax, json
from configs import digits_demo
from ssdh_jax import train_lib

def config(mode):
  c = digits_demo.get_config("16")
  c.train.num_steps = 4
  c.train.batch_size = 32
  c.train.log_every = 1
  c.train.eval_every = 2  # the best-by-validation choice must be the same on every process
  c.train.checkpoint_every = 2  # == eval_every: both managers save steps 2 and 4 asynchronously (issue 24)
  c.train.progress = False
  c.train.parallel = mode
  c.model.width = 8
  c.model.dropout = 0.5  # masks drawn per global row: equal across process and device counts
  c.data.labeled_fraction = 0.5
  c.eval.val_queries = 40
  c.eval.val_database = 150
  return c
"""

TWO_PROCESSES = (
  CONFIG
  + """
jax.config.update("jax_cpu_collectives_implementation", "gloo")
c = config({mode!r})
c.train.distributed = True
c.train.coordinator_address = COORDINATOR
c.train.num_processes = NUM_PROCESSES
c.train.process_id = PROCESS_ID
first = train_lib.train_and_evaluate(c, {workdir!r}, stop_after=2)  # pre-empted after step 2
res = train_lib.train_and_evaluate(c, {workdir!r})  # resumed
from ssdh_jax import evaluate_run
again = evaluate_run.evaluate_workdir({workdir!r})  # eval.py: each process encodes its share
emit({{"first": first, "map": res["metrics"]["map"], "eval_map": again["metrics"]["map"],
       "processes": jax.process_count()}})
"""
)


def _losses(workdir):
  recs = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return {r["step"]: r["loss"] for r in recs if "loss" in r}, recs


def _params(workdir):
  from configs import digits_demo

  c = digits_demo.get_config("16")
  c.model.width = 8
  model, tx, _, _ = train_lib.build_training(c, mesh.create("pmap", 1))
  target = train_lib.create_train_state(c, model, tx, jax.random.PRNGKey(0))
  state, step = checkpoints.Checkpointer(str(workdir)).restore_latest(target)
  return jax.tree.leaves(state.params), step


def step_config(mode: str):
  from configs import digits_demo

  c = digits_demo.get_config("24")
  c.train.batch_size = 32
  c.train.parallel = mode
  c.model.width = 8
  c.model.dropout = 0.5
  c.loss.variant = "multi_label"
  c.optim.name = "sgd"
  c.optim.lr = 0.05
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.data.labeled_fraction = 0.5
  return c


def three_steps(mode: str, num_devices: int, workdir: str) -> dict:
  """Losses of 3 train steps and per-leaf sums of the parameters after them; each process builds only its
  rows of every global batch."""
  from ssdh_jax.data import pipeline

  c = step_config(mode)
  dm = mesh.create(mode, num_devices, c.train.batch_size)
  splits, _ = pipeline.load_splits(c, workdir)
  model, tx, _, step_fn = train_lib.build_training(c, dm)
  pstate = dm.replicate(train_lib.create_train_state(c, model, tx, jax.random.PRNGKey(0)))
  losses = []
  for s in range(3):
    b = pipeline.train_batch(splits, c, 0, s, rows=dm.host_rows(c.train.batch_size))
    pstate, m = step_fn(pstate, dm.shard_batch({k: b[k] for k in ("image", "labels", "labeled")}))
    losses.append(float(dm.to_host(m)["loss"]))
  leaves = jax.tree.leaves(dm.to_host(pstate).params)
  return {
    "losses": losses,
    "sums": [float(np.sum(x)) for x in leaves],
    "abs": [float(np.sum(np.abs(x))) for x in leaves],
  }


STEPS_BODY = """
import jax, tempfile
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=COORDINATOR, num_processes=NUM_PROCESSES, process_id=PROCESS_ID)
from tests.test_multiprocess import three_steps
with tempfile.TemporaryDirectory() as d:
  emit({"shard_map": three_steps("shard_map", 0, d)})
"""


def test_two_processes_step_like_one_device(tmp_path):
  """jit + shard_map over 2 processes x 4 devices, each process feeding only its rows, against one device fed
  the whole batch: equal losses and parameters after 3 steps (dropout on). pmap: the test below."""
  outs = testing.run_processes(STEPS_BODY, 2, 4, timeout=600)
  assert outs[0] == outs[1]
  for mode, got in outs[0].items():
    ref = three_steps(mode, 1, str(tmp_path / mode))
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=2e-5, err_msg=mode)
    np.testing.assert_allclose(got["abs"], ref["abs"], rtol=2e-5, err_msg=mode)
    np.testing.assert_allclose(got["sums"], ref["sums"], rtol=1e-4, atol=1e-4, err_msg=mode)
    assert got["losses"][0] != got["losses"][2]  # it trained


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pmap"])
def test_two_processes_train_and_evaluate_like_one(tmp_path, mode):
  two, one = tmp_path / "two", tmp_path / "one"
  outs = testing.run_processes(TWO_PROCESSES.format(mode=mode, workdir=str(two)), 2, 4, timeout=900)
  # The reference: this process, one device, no interruption (1 vs 8 devices in one process is proven in
  # test_train_lib.py).
  scope: dict = {}
  exec(CONFIG, scope)
  ref = {"map": train_lib.train_and_evaluate(scope["config"](mode), str(one))["metrics"]["map"]}
  assert [o["processes"] for o in outs] == [2, 2]
  assert [o["first"] for o in outs] == [{"step": 2}, {"step": 2}]
  # Every process evaluated the same gathered codes; only process 0 wrote the reports. eval.py on the two
  # processes reproduces the run's own evaluation.
  assert outs[0]["map"] == outs[1]["map"] == outs[0]["eval_map"] == outs[1]["eval_map"]
  # Codes are thresholds of float outputs: a sum in another order may flip a bit, hence the tolerance.
  assert outs[0]["map"] == pytest.approx(ref["map"], abs=2e-3)
  m2, m1 = json.load(open(two / "metrics.json")), json.load(open(one / "metrics.json"))
  assert m2["key"] == m1["key"]
  for k in ("map", "precision_radius", "recall_radius"):
    assert m2["metrics"][k] == pytest.approx(m1["metrics"][k], abs=2e-3), k
  l2, recs2 = _losses(two)
  l1, _ = _losses(one)
  assert sorted(l2) == sorted(l1) == [1, 2, 3, 4]
  assert len(recs2) == len({(r["step"], tuple(sorted(r))) for r in recs2}), "a record was written twice"
  for s in l1:
    assert l2[s] == pytest.approx(l1[s], rel=2e-5), s
  (p2, s2), (p1, s1) = _params(two), _params(one)
  assert s2 == s1 == 4
  for a, b in zip(p2, p1):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
