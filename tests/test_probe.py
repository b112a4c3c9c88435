"""The representation-ceiling probe: mAP of an embedding against a brute-force AP, and the probe on data
where the answer is known."""

import numpy as np
import pytest

from ssdh_jax import probe


def _brute_ap(q, db, ql, dl):
  aps = []
  for i in range(len(q)):
    scores = [float(np.dot(q[i], d)) for d in db]
    order = sorted(range(len(db)), key=lambda j: -scores[j])  # Python's sort is stable
    hits, total, n_rel = 0, 0.0, 0
    for rank, j in enumerate(order, 1):
      if np.any((ql[i] > 0.5) & (dl[j] > 0.5)):
        hits += 1
        total += hits / rank
    n_rel = hits
    aps.append(total / n_rel if n_rel else 0.0)
  return float(np.mean(aps))


def test_embedding_map_matches_brute_force():
  rng = np.random.default_rng(0)
  q, db = rng.random((7, 4)), rng.random((40, 4))
  ql = np.eye(3)[rng.integers(0, 3, 7)]
  dl = (rng.random((40, 3)) < 0.4).astype(np.float32)  # multi-label, some rows with no label
  got = probe.embedding_map(q, db, ql, dl, chunk=3)
  assert got == pytest.approx(_brute_ap(q, db, ql, dl), rel=1e-12)


def test_probe_ceiling_on_separable_and_on_noise_features():
  rng = np.random.default_rng(1)
  classes = 4
  centres = rng.normal(size=(classes, 16)) * 4

  def split(n, noise_only=False):
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, 16)) + (0 if noise_only else centres[y])
    return x.astype(np.float32), np.eye(classes, dtype=np.float32)[y]

  names = ("train_labeled", "validation", "query", "database")
  for noise_only, lo, hi in ((False, 0.95, 1.0), (True, 0.0, 0.45)):
    parts = {n: split(200 if n != "database" else 400, noise_only) for n in names}
    res = probe.ceiling({n: p[0] for n, p in parts.items()}, {n: p[1] for n, p in parts.items()})
    assert lo <= res["probe_accuracy"] <= hi and lo <= res["probe_map"] <= hi
    assert res["C"] in probe.DEFAULT_CS and res["dim"] == 16


def test_probe_refuses_multi_label():
  with pytest.raises(ValueError, match="single-label"):
    probe.fit_probe(np.zeros((2, 3)), np.ones((2, 2)), np.zeros((2, 3)), np.ones((2, 2)))
