"""Tests of ssdh_jax.graph: distances, windows, sorting and uniform sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs.default import get_config
from ssdh_jax import graph


def test_pairwise_sq_dists_bruteforce():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(7, 5)), rng.normal(size=(9, 5))
  brute = np.array([[np.sum((x[i] - y[j]) ** 2) for j in range(9)] for i in range(7)])
  d = np.asarray(graph.pairwise_sq_dists(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))
  assert d.dtype == np.float32
  np.testing.assert_allclose(d, brute, rtol=1e-5, atol=1e-5)
  same = np.asarray(graph.pairwise_sq_dists(jnp.asarray(x), jnp.asarray(x)))
  assert same.min() >= 0  # clamped: the Gram form can go slightly negative


def test_knn_size():
  assert graph.knn_size(128, 8) == 8
  assert graph.knn_size(12, 8) == 4  # N/3
  assert graph.knn_size(2, 8) == 1  # at least one position


@pytest.mark.parametrize(
  "n,window,expected",
  [
    (128, (114, 124), (114, 124)),
    (128, (120, 124), (120, 124)),
    (256, (114, 124), (228, 248)),
    (1024, (114, 124), (912, 992)),
    (64, (114, 124), (57, 62)),
    (100, (114, 124), (89, 96)),  # floor(114·100/128) = 89, floor(124·100/128) = 96
    (8, (120, 124), (7, 8)),
    (1, (114, 124), (0, 1)),
  ],
)
def test_scaled_window(n, window, expected):
  assert graph.scaled_window(n, window, 128) == expected
  lo, hi = expected
  assert 0 <= lo < hi <= n


def test_graph_window_variants():
  cfg = get_config().loss
  assert graph.graph_window(128, cfg) == (114, 124)
  cfg.variant = "single_label"
  assert graph.graph_window(128, cfg) == (86, 128)  # the farthest 42 = 128 // 3
  assert graph.farthest_third_window(2) == (1, 2)
  cfg.variant = "bogus"
  with pytest.raises(ValueError):
    graph.graph_window(128, cfg)


def test_sorted_neighbours_matches_numpy_with_ties():
  rng = np.random.default_rng(1)
  f = rng.normal(size=(20, 4)).astype(np.float32)
  f[7] = f[3]  # a duplicate: ties broken by row id
  f[12] = f[3]
  anchors = jnp.array([3, 7, 0, 12, 19], jnp.int32)
  order = np.asarray(jax.jit(graph.sorted_neighbours)(jnp.asarray(f), anchors, jnp.arange(20)))
  for a_idx, a in enumerate(np.asarray(anchors)):
    d = np.sum((f.astype(np.float64) - f[a]) ** 2, axis=1)
    expected = sorted(range(20), key=lambda j: (d[j], j))
    np.testing.assert_array_equal(order[a_idx], expected)
  assert order[2, 0] == 0  # a unique row is its own nearest neighbour
  assert list(order[1, :3]) == [3, 7, 12]  # duplicates of 3: lowest id first
  # Tie-break by row id, not position: relabelling rows changes the tie order.
  rid = jnp.asarray(np.r_[np.arange(7), 99, np.arange(8, 20)])
  order2 = np.asarray(graph.sorted_neighbours(jnp.asarray(f), anchors, rid))
  assert list(order2[1, :3]) == [3, 12, 7]


@pytest.mark.parametrize("window", [(3, 9), (10, 14), (17, 20), (0, 20), (19, 20)])
def test_window_neighbours_equal_full_sort(window):
  """top_k extraction == slices of the full (distance, row id) sort, with ties and shuffled row ids."""
  rng = np.random.default_rng(7)
  f = rng.normal(size=(20, 3)).astype(np.float32)
  f[[5, 9, 14]] = f[2]  # ties among near and far rows
  f[[11, 17]] = 40.0
  f[18] = 40.0
  anchors = jnp.array([2, 5, 11, 0, 18, 7], jnp.int32)
  for rid in (np.arange(20), rng.permutation(20) * 3 + 1):
    order = np.asarray(graph.sorted_neighbours(jnp.asarray(f), anchors, jnp.asarray(rid)))
    near, far = graph.window_neighbours(jnp.asarray(f), anchors, jnp.asarray(rid), 4, window)
    np.testing.assert_array_equal(np.asarray(near), order[:, :4])
    np.testing.assert_array_equal(np.asarray(far), order[:, window[0] : window[1]])


def test_sample_graph_pairs_ranges():
  rng = np.random.default_rng(2)
  f = jnp.asarray(rng.normal(size=(30, 6)), jnp.float32)
  bits = graph.anchor_bits(jax.random.PRNGKey(0), jnp.arange(30), 2)
  out = graph.sample_graph_pairs(f, bits, jnp.arange(30), jnp.arange(30), k_size=5, window=(20, 25))
  order = np.asarray(graph.sorted_neighbours(f, jnp.arange(30), jnp.arange(30)))
  pr, nr = np.asarray(out["pos_rank"]), np.asarray(out["neg_rank"])
  assert pr.min() >= 0 and pr.max() < 5 and nr.min() >= 20 and nr.max() < 25
  np.testing.assert_array_equal(order[np.arange(30), pr], np.asarray(out["pos"]))
  np.testing.assert_array_equal(order[np.arange(30), nr], np.asarray(out["neg"]))


def test_sample_graph_pairs_class_filter():
  rng = np.random.default_rng(5)
  n, k_size, window = 40, 6, (25, 35)
  f = jnp.asarray(rng.normal(size=(n, 6)), jnp.float32)
  ids = jnp.arange(n)
  bits = graph.anchor_bits(jax.random.PRNGKey(1), ids, 2)
  cls = np.eye(3, dtype=bool)[rng.integers(0, 3, n)]
  out = {
    k: np.asarray(v)
    for k, v in graph.sample_graph_pairs(
      f, bits, ids, ids, k_size=k_size, window=window, classes=jnp.asarray(cls)
    ).items()
  }
  order = np.asarray(graph.sorted_neighbours(f, ids, ids))
  agree = lambda a, j: bool(np.any(cls[a] & cls[j]))
  for a in range(n):
    assert out["pos_rank"][a] < k_size and order[a, out["pos_rank"][a]] == out["pos"][a]
    assert agree(a, out["pos"][a])
    far_disagree = [j for j in order[a, window[0] : window[1]] if not agree(a, j)]
    assert out["neg_valid"][a] == bool(far_disagree)
    if far_disagree:
      assert out["neg"][a] in far_disagree and window[0] <= out["neg_rank"][a] < window[1]
  assert out["neg_valid"].any() and len(set(out["pos"].tolist())) > n // 2  # not collapsed onto the anchors
  # Every row in one class: the neighbour draws are exactly the unfiltered ones; no non-neighbour exists.
  plain = graph.sample_graph_pairs(f, bits, ids, ids, k_size=k_size, window=window)
  same = graph.sample_graph_pairs(
    f, bits, ids, ids, k_size=k_size, window=window, classes=jnp.ones((n, 1), bool)
  )
  np.testing.assert_array_equal(np.asarray(same["pos"]), np.asarray(plain["pos"]))
  assert not np.asarray(same["neg_valid"]).any() and np.asarray(plain["neg_valid"]).all()


def test_anchor_bits_depend_only_on_key_and_row():
  key = jax.random.PRNGKey(3)
  full = np.asarray(graph.anchor_bits(key, jnp.arange(16), 4))
  part = np.asarray(graph.anchor_bits(key, jnp.array([9, 2]), 4))
  np.testing.assert_array_equal(part, full[[9, 2]])
  assert len({tuple(r) for r in full.tolist()}) == 16
  other = np.asarray(graph.anchor_bits(jax.random.PRNGKey(4), jnp.arange(16), 4))
  assert not np.array_equal(full, other)


def test_uniform_index_range():
  bits = jax.random.bits(jax.random.PRNGKey(0), (1000,), jnp.uint32)
  r = np.asarray(graph.uniform_index(bits, 7))
  assert r.min() == 0 and r.max() == 6
  assert np.all(np.asarray(graph.uniform_index(bits, 0)) == 0)  # empty set: index 0, caller masks it


def test_masked_choice_membership_and_empty():
  rng = np.random.default_rng(5)
  mask = rng.random((12, 25)) < 0.3
  mask[4] = False
  bits = graph.anchor_bits(jax.random.PRNGKey(1), jnp.arange(12), 6)
  idx, ok = graph.masked_choice(bits, jnp.asarray(mask), jnp.arange(25))
  idx, ok = np.asarray(idx), np.asarray(ok)
  assert idx.shape == (12, 6)
  np.testing.assert_array_equal(ok, mask.any(axis=1))
  for i in range(12):
    if ok[i]:
      assert mask[i, idx[i]].all()


def test_masked_choice_uniform():
  mask = np.zeros((1, 40), bool)
  members = [1, 4, 5, 11, 20, 33, 39]
  mask[0, members] = True
  bits = jax.random.bits(jax.random.PRNGKey(0), (1, 7000), jnp.uint32)
  idx, _ = graph.masked_choice(bits, jnp.asarray(mask), jnp.arange(40))
  counts = np.array([np.sum(np.asarray(idx) == m) for m in members])
  assert counts.sum() == 7000
  stat = np.sum((counts - 1000.0) ** 2 / 1000.0)
  assert stat < stats.chi2.ppf(0.999, len(members) - 1), counts


def test_masked_choice_permutation_invariant():
  """The same bits pick the same row id whatever the column order."""
  rng = np.random.default_rng(6)
  mask = rng.random((8, 30)) < 0.4
  rid = np.arange(30)
  perm = rng.permutation(30)
  bits = graph.anchor_bits(jax.random.PRNGKey(2), jnp.arange(8), 3)
  idx, _ = graph.masked_choice(bits, jnp.asarray(mask), jnp.asarray(rid))
  idx_p, _ = graph.masked_choice(bits, jnp.asarray(mask[:, perm]), jnp.asarray(rid[perm]))
  np.testing.assert_array_equal(rid[perm][np.asarray(idx_p)], np.asarray(idx))


def test_graph_features_detached():
  cfg = get_config().loss
  out = {"codes": jnp.ones((4, 3)), "features": jnp.ones((4, 5), jnp.bfloat16)}
  g = jax.grad(lambda o: jnp.sum(graph.graph_features(o, cfg) ** 2))(out)
  assert np.all(np.asarray(g["codes"]) == 0)
  cfg.graph_feature = "features"
  f = graph.graph_features(out, cfg)
  assert f.shape == (4, 5) and f.dtype == jnp.float32
  cfg.graph_feature = "pixels"
  with pytest.raises(ValueError):
    graph.graph_features(out, cfg)
