"""The pool graph (`ssdh_jax.pool_graph`): exact kNN against brute force, label propagation against its closed
form, the class-balanced choice, and pseudo-labels through the trainer (refresh, saved choice, exact resume)."""

import json

import jax
import numpy as np
import pytest

from configs import digits_demo
from ssdh_jax import checkpoints, config_checks, mesh, pool_graph, train_lib


def _brute_knn(x, k):
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  s = x.astype(np.float64) @ x.T.astype(np.float64)
  np.fill_diagonal(s, -np.inf)
  idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
  return idx, np.take_along_axis(s, idx, 1)


@pytest.mark.parametrize(
  "n,chunk", [(300, 64), (97, 512)]
)  # several chunks with a padded last one; one chunk
def test_knn_matches_brute_force(n, chunk):
  x = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float32)
  idx, sim = pool_graph.knn(x * 3.0, 7, chunk=chunk)  # scale-free: rows are normalised
  ref_idx, ref_sim = _brute_knn(x, 7)
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_allclose(sim, ref_sim, atol=1e-5)
  assert not (idx == np.arange(n)[:, None]).any()  # no self-edges


def test_knn_rejects_k_out_of_range():
  with pytest.raises(ValueError, match="k must be in"):
    pool_graph.knn(np.ones((5, 3)), 5)


def test_edge_purity_by_hand():
  labels = np.eye(3)[[0, 0, 1, 2]]
  idx = np.array([[1, 2], [0, 3], [3, 0], [2, 1]])
  # edges: 0-1 yes, 0-2 no, 1-0 yes, 1-3 no, 2-3 no, 2-0 no, 3-2 no, 3-1 no
  assert pool_graph.edge_purity(idx, labels) == pytest.approx(2 / 8)
  assert pool_graph.edge_purity(idx[2:], labels, np.array([2, 3])) == 0.0


def test_propagate_matches_the_closed_form():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(60, 5)).astype(np.float32)
  idx, sim = pool_graph.knn(x, 6)
  seeds = np.zeros((60, 3), np.float32)
  seeds[[0, 1, 2, 3, 4], [0, 0, 1, 2, 2]] = 1.0
  alpha, gamma = 0.9, 3.0
  z = pool_graph.propagate(idx, sim, seeds, alpha=alpha, gamma=gamma, iters=500)
  # Dense reference: W_ij = max(sim,0)^gamma on kNN edges, symmetrised; S = D^-1/2 W D^-1/2.
  w = np.zeros((60, 60))
  for i in range(60):
    for j, s in zip(idx[i], sim[i]):
      w[i, j] += max(float(s), 0.0) ** gamma
  w = w + w.T
  d = 1 / np.sqrt(w.sum(1))
  s = d[:, None] * w * d[None, :]
  y = seeds / np.maximum(seeds.sum(0, keepdims=True), 1)
  ref = np.linalg.solve(np.eye(60) - alpha * s, y)
  np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-6)


def test_propagation_labels_two_clusters():
  rng = np.random.default_rng(2)
  centres = np.array([[5.0, 0, 0], [0, 5.0, 0]])
  truth = np.repeat([0, 1], 40)
  x = centres[truth] + rng.normal(size=(80, 3))
  idx, sim = pool_graph.knn(x, 5)
  seeds = np.zeros((80, 2), np.float32)
  seeds[[0, 40], [0, 1]] = 1.0  # one labeled image per cluster
  z = pool_graph.propagate(idx, sim, seeds)
  assert (z.argmax(1) == truth).mean() > 0.95
  assert pool_graph.edge_purity(idx, np.eye(2)[truth]) > 0.95


def test_select_is_class_balanced_by_confidence():
  scores = np.array(
    [
      [1.0, 0.0],  # row 0: class 0, certain
      [0.6, 0.4],  # row 1: class 0, unsure
      [0.9, 0.1],  # row 2: class 0
      [0.0, 1.0],  # row 3: class 1, certain
      [0.2, 0.8],  # row 4: class 1
      [0.0, 0.0],  # row 5: never reached: no prediction
      [5.0, 5.0],  # row 6: labeled (not a candidate)
    ]
  )
  rows, labels = pool_graph.select(scores, np.arange(6), 0.5)
  # class 0: round(0.5 * 3) = 2 of rows {0, 1, 2} -> 0 and 2; class 1: 1 of {3, 4} -> 3
  np.testing.assert_array_equal(rows, [0, 2, 3])
  np.testing.assert_array_equal(labels, np.eye(2)[[0, 0, 1]])
  rows, _ = pool_graph.select(scores, np.arange(6), 1.0)
  np.testing.assert_array_equal(rows, [0, 1, 2, 3, 4])
  rows, _ = pool_graph.select(scores, np.arange(6), 0.0)
  assert rows.size == 0


def _config(steps):
  c = digits_demo.get_config("16")
  c.train.num_steps = steps
  c.train.batch_size = 32
  c.train.log_every = 5
  c.train.eval_every = 0
  c.train.checkpoint_every = 5
  c.train.progress = False
  c.model.width = 8
  c.eval.val_queries = 50
  c.eval.val_database = 200
  c.data.num_labeled = 100  # label-scarce: most training images are unlabeled
  c.pseudo.mode = "propagate"
  c.pseudo.refresh_every = 10
  return c


def _params(workdir, c):
  model, tx, _, _ = train_lib.build_training(c, mesh.create("pmap", 1))
  target = train_lib.create_train_state(c, model, tx, jax.random.PRNGKey(0))
  state, step = checkpoints.Checkpointer(str(workdir), async_save=False).restore_latest(target)
  return state, step


def test_pseudo_labels_refresh_and_resume_exactly(tmp_path):
  c = _config(20)
  train_lib.train_and_evaluate(c, str(tmp_path / "straight"))
  recs = [json.loads(line) for line in open(tmp_path / "straight" / "metrics.jsonl")]
  refreshes = [r for r in recs if "pseudo_labels" in r]
  assert [r["step"] for r in refreshes] == [0, 10]
  for r in refreshes:
    assert (
      r["pseudo_labels"] > 0 and 0.0 <= r["pseudo_label_acc"] <= 1.0 and 0.0 <= r["pool_graph_purity"] <= 1.0
    )
  saved = sorted(p.name for p in (tmp_path / "straight" / "pseudo_labels").iterdir())
  assert saved == ["step_00000000.npz", "step_00000010.npz"]
  # Stopped after step 13 (after the refresh at 10): the resumed run reads the saved choice back, and ends
  # where the uninterrupted run did.
  out = train_lib.train_and_evaluate(c, str(tmp_path / "resumed"), stop_after=13)
  assert out["step"] == 13
  train_lib.train_and_evaluate(c, str(tmp_path / "resumed"))
  again = [json.loads(line) for line in open(tmp_path / "resumed" / "metrics.jsonl")]
  assert [r["step"] for r in again if "pseudo_labels" in r] == [0, 10]  # not recomputed at 15
  a, sa = _params(tmp_path / "straight", c)
  b, sb = _params(tmp_path / "resumed", c)
  assert sa == sb == 20
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_pseudo_labels_join_the_labeled_split(tmp_path):
  from ssdh_jax.data import pipeline

  c = _config(1)
  splits, _ = pipeline.load_splits(c, str(tmp_path))
  rows = np.array([0, 3, 7])
  labels = np.eye(10, dtype=np.float32)[[1, 2, 3]]
  out = pool_graph._with_pseudo(splits, rows, labels)
  lab, unl = splits["train_labeled"], splits["train_unlabeled"]
  assert len(out["train_labeled"]) == len(lab) + 3
  np.testing.assert_array_equal(out["train_labeled"].ids[len(lab) :], unl.ids[rows])
  np.testing.assert_array_equal(
    out["train_labeled"].labels[len(lab) :], labels
  )  # predicted, not true, labels
  np.testing.assert_array_equal(out["train_labeled"].images[len(lab) :], unl.images[rows])
  assert out["train_unlabeled"] is unl


def test_config_checks_name_the_pseudo_fields():
  c = _config(1)
  c.pseudo.alpha = 1.0
  with pytest.raises(ValueError, match=r"config\.pseudo\.alpha"):
    config_checks.check_config(c)
  c = _config(1)
  c.data.multi_label = True
  with pytest.raises(ValueError, match=r"config\.pseudo\.mode.*single-label"):
    config_checks.check_config(c)
  c = _config(1)
  c.pseudo.mode = "spread"
  with pytest.raises(ValueError, match=r"config\.pseudo\.mode"):
    config_checks.check_config(c)


def test_cached_knn_builds_once_per_feature_set(tmp_path, monkeypatch):
  x = np.random.default_rng(3).normal(size=(50, 4)).astype(np.float32)
  idx, sim = pool_graph.cached_knn(x, 3, str(tmp_path))
  np.testing.assert_array_equal(idx, pool_graph.knn(x, 3)[0])
  monkeypatch.setattr(pool_graph, "knn", lambda *a, **k: pytest.fail("the cached graph was rebuilt"))
  idx2, sim2 = pool_graph.cached_knn(x, 3, str(tmp_path))
  np.testing.assert_array_equal(idx2, idx)
  np.testing.assert_array_equal(sim2, sim)
  with pytest.raises(BaseException, match="rebuilt"):  # other features (or another k): another graph
    pool_graph.cached_knn(x + 1.0, 3, str(tmp_path))
