"""ssdh_jax.metrics against the brute-force oracle in metrics_reference.py, plus property tests."""

from __future__ import annotations

import jax
import metrics_reference as ref
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ssdh_jax import metrics, ranking

_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pack_words(bits: np.ndarray) -> np.ndarray:
  """Independent packer: np.packbits little-endian bytes viewed as little-endian uint32 words."""
  by = np.packbits(bits.astype(bool), axis=1, bitorder="little")
  by = np.pad(by, ((0, 0), (0, (-by.shape[1]) % 4)))
  return np.ascontiguousarray(by).view("<u4").astype(np.uint32)


def make_case(seed: int, k: int, n_q: int, n_db: int, n_cls: int = 5):
  """Codes clustered around a few centres (many ties), sparse multi-hot labels, one query without relevant."""
  rng = np.random.default_rng(seed)
  centres = rng.integers(0, 2, (3, k)).astype(bool)
  flip = 0.08 if k >= 24 else 0.15
  db = centres[rng.integers(0, 3, n_db)] ^ (rng.random((n_db, k)) < flip)
  q = centres[rng.integers(0, 3, n_q)] ^ (rng.random((n_q, k)) < flip)
  db_l = (rng.random((n_db, n_cls)) < 0.3).astype(np.float32)
  q_l = (rng.random((n_q, n_cls)) < 0.3).astype(np.float32)
  q_l[0] = 0.0  # a query with no label: no relevant item anywhere
  q_l[1] = 0.0
  q_l[1, n_cls - 1] = 1.0
  db_l[:, n_cls - 1] = 0.0  # label nobody in the database has: no relevant item either
  q_l[2] = 1.0  # a query relevant to every labelled item
  return q, db, q_l, db_l


@pytest.mark.parametrize("method", ["counting", "sort"])
@pytest.mark.parametrize("k", [12, 24, 32, 48, 64])
def test_evaluate_codes_matches_oracle(k, method):
  n_q, n_db = 9, 53
  q, db, q_l, db_l = make_case(k, k, n_q, n_db)
  for R, drop in [(0, False), (7, True), (20, False), (n_db + 10, True)]:
    ks = (1, 5, 17, n_db + 4)
    out = metrics.evaluate_codes(
      pack_words(q),
      pack_words(db),
      q_l,
      db_l,
      bits=k,
      R=R,
      topk=ks,
      radius=2,
      drop_no_relevant=drop,
      query_chunk=4,
      pr_rank_points=11,
      method=method,
    )
    positions = [int(p) for p in out["pr_rank_position"]]
    assert positions[-1] == n_db and len(positions) == 11
    want = ref.metrics(q, db, q_l, db_l, R=R, ks=ks, radius=2, positions=positions, drop=drop)
    np.testing.assert_allclose(out["ap"], want["ap"], atol=1e-6)
    assert out["map"] == pytest.approx(want["map"], abs=1e-6)
    np.testing.assert_array_equal(out["ap_kept"], [h > 0 or not drop for h in want["n_rel"]])
    np.testing.assert_array_equal(out["precision_at_k_k"], ks)
    np.testing.assert_allclose(out["precision_at_k"], want["precision_at_k"], atol=1e-6)
    np.testing.assert_allclose(out["pr_rank_precision"], want["pr_rank_precision"], atol=1e-6)
    np.testing.assert_allclose(out["pr_rank_recall"], want["pr_rank_recall"], atol=1e-6)
    np.testing.assert_allclose(out["pr_radius_precision"], want["pr_radius_precision"], atol=1e-6)
    np.testing.assert_allclose(out["pr_radius_recall"], want["pr_radius_recall"], atol=1e-6)
    assert out["precision_radius"] == pytest.approx(want["precision_radius"], abs=1e-6)
    assert out["recall_radius"] == pytest.approx(want["recall_radius"], abs=1e-6)
    assert out["map_radius"] == pytest.approx(want["map_radius"], abs=1e-6)
  # The case really has ties, queries without relevant items and a non-trivial ranking.
  assert want["ap"][0] == 0.0 and want["ap"][1] == 0.0 and 0.0 < want["map"] < 1.0
  assert any(len(set(row)) < len(row) for row in want["dist"])


@pytest.mark.parametrize("method", ["counting", "sort"])
@pytest.mark.parametrize("k", [12, 48])
def test_separate_entry_points_match_oracle(k, method):
  n_q, n_db = 10, 37
  q, db, q_l, db_l = make_case(100 + k, k, n_q, n_db)
  want = ref.metrics(q, db, q_l, db_l, R=9, drop=True)
  # bool codes are accepted as well as packed words; odd chunking exercises the padding of the last chunk.
  np.testing.assert_array_equal(metrics.hamming_distances(q, db, bits=k), want["dist"])
  for length in (3, 20, 0):  # top_k prefix, full sort, everything
    idx, dist = metrics.hamming_ranking(pack_words(q), pack_words(db), bits=k, length=length, query_chunk=3)
    ln = length or n_db
    np.testing.assert_array_equal(idx, [o[:ln] for o in want["order"]])
    np.testing.assert_array_equal(dist, [[d[j] for j in o[:ln]] for d, o in zip(want["dist"], want["order"])])
  ap, n_rel = metrics.average_precision(q, db, q_l, db_l, bits=k, R=9, query_chunk=3, method=method)
  np.testing.assert_allclose(ap, want["ap"], atol=1e-6)
  np.testing.assert_array_equal(n_rel, want["n_rel"])
  m = metrics.mean_average_precision(q, db, q_l, db_l, bits=k, R=9, drop_no_relevant=True, method=method)
  assert m == pytest.approx(want["map"], abs=1e-6)
  m0 = metrics.mean_average_precision(q, db, q_l, db_l, bits=k, R=9, method=method)
  assert m0 == pytest.approx(np.mean(want["ap"]), abs=1e-6) and m0 < m
  counts, rel_counts = metrics.distance_histograms(q, db, q_l, db_l, bits=k, query_chunk=7, method=method)
  for i in range(n_q):
    for d in range(k + 1):
      assert counts[i, d] == sum(1 for x in want["dist"][i] if x == d)
      assert rel_counts[i, d] == sum(1 for x, r in zip(want["dist"][i], want["rel"][i]) if x == d and r)


def test_sort_fallback_and_chunk_cap(monkeypatch):
  k, n_q, n_db = 24, 6, 41
  q, db, q_l, db_l = make_case(7, k, n_q, n_db)
  want = ref.metrics(q, db, q_l, db_l)
  dist = metrics.hamming_distances(q, db, bits=k)
  rel = np.array(want["rel"], np.int32)
  # A max distance too large for the packed int32 key forces the stable multi-operand sort.
  for max_dist in (k, 1 << 30):
    idx, payload = ranking.stable_prefix(dist, n_db, max_dist, payload=rel)
    np.testing.assert_array_equal(idx, want["order"])
    np.testing.assert_array_equal(payload, [[r[j] for j in o] for r, o in zip(rel, want["order"])])
    idx, d = ranking.stable_prefix(dist, 30, max_dist)
    np.testing.assert_array_equal(
      d, [[row[j] for j in o[:30]] for row, o in zip(want["dist"], want["order"])]
    )
  monkeypatch.setattr(ranking, "_MAX_CHUNK_ELEMS", 2 * n_db)  # chunk of 2 queries
  ap, _ = metrics.average_precision(q, db, q_l, db_l, bits=k, query_chunk=256, method="sort")
  np.testing.assert_allclose(ap, want["ap"], atol=1e-6)


@pytest.mark.parametrize("groups", [2, 3, 16])
def test_grouped_prefix_is_exact(groups):
  # Heavy ties (6 bits) and a database size no group count divides: padding and tie order both matter.
  k, n_q, n_db = 6, 5, 203
  q, db, q_l, db_l = make_case(groups, k, n_q, n_db, n_cls=3)
  want = ref.metrics(q, db, q_l, db_l)
  dist = metrics.hamming_distances(q, db, bits=k)
  rel = np.array(want["rel"], np.int32)
  grouped = jax.jit(ranking.grouped_prefix, static_argnames=("length", "max_dist", "groups"))
  for length in (1, 5, 12, 203 // groups):
    idx, d = grouped(dist, length=length, max_dist=k, payload=None, groups=groups)
    np.testing.assert_array_equal(idx, [o[:length] for o in want["order"]])
    np.testing.assert_array_equal(
      d, [[row[j] for j in o[:length]] for row, o in zip(want["dist"], want["order"])]
    )
    _, p = grouped(dist, length=length, max_dist=k, payload=rel, groups=groups)
    np.testing.assert_array_equal(p, [[r[j] for j in o[:length]] for r, o in zip(rel, want["order"])])
  # Through the public API (length x 64 <= D selects the grouped path).
  idx, _ = metrics.hamming_ranking(q, db, bits=k, length=3)
  np.testing.assert_array_equal(idx, [o[:3] for o in want["order"]])
  ap, _ = metrics.average_precision(q, db, q_l, db_l, bits=k, R=3, method="sort")
  np.testing.assert_allclose(ap, ref.metrics(q, db, q_l, db_l, R=3)["ap"], atol=1e-6)


def test_class_id_labels_and_padding_bits_ignored():
  rng = np.random.default_rng(3)
  k = 20
  q, db = rng.integers(0, 2, (5, k)).astype(bool), rng.integers(0, 2, (30, k)).astype(bool)
  qc, dc = rng.integers(0, 4, 5), rng.integers(0, 4, 30)
  want = ref.metrics(q, db, np.eye(4)[qc], np.eye(4)[dc])
  qw, dw = pack_words(q), pack_words(db)
  qw[:, 0] |= np.uint32(0xFFF00000)  # garbage in the 12 padding bits must not change any distance
  np.testing.assert_allclose(metrics.average_precision(qw, dw, qc, dc, bits=k)[0], want["ap"], atol=1e-6)


@pytest.mark.parametrize("n_cls", [31, 32, 33, 70])
def test_labels_over_several_words(n_cls):
  """Label sets are packed 32 labels a word: relevance is right at and across word boundaries, for float,
  bool and integer multi-hot labels."""
  q, db, q_l, db_l = make_case(n_cls, 24, 6, 40, n_cls=n_cls)
  rng = np.random.default_rng(n_cls)
  q_l[3] = 0.0
  q_l[3, n_cls - 1] = 1.0  # only the last label: relevant exactly to the items that have it
  db_l[rng.integers(0, 40, 8), n_cls - 1] = 1.0
  want = ref.metrics(q, db, q_l, db_l, R=10)
  assert want["n_rel"][3] > 0
  for ql, dl in [(q_l, db_l), (q_l > 0, db_l > 0), (q_l.astype(np.int8), db_l.astype(np.int8))]:
    ap, n_rel = metrics.average_precision(q, db, ql, dl, bits=24, R=10, backend="jax")
    np.testing.assert_allclose(ap, want["ap"], atol=1e-6)
    np.testing.assert_array_equal(n_rel, want["n_rel"])


def test_input_validation():
  q = np.zeros((3, 1), np.uint32)
  with pytest.raises(ValueError, match="bits=48"):
    metrics.hamming_distances(q, q, bits=48)
  with pytest.raises(ValueError, match="labels"):
    metrics.mean_average_precision(q, q, np.zeros((3, 2)), np.zeros((3, 3)), bits=12)
  with pytest.raises(ValueError, match="query labels"):
    metrics.mean_average_precision(q, q, np.zeros((2, 2)), np.zeros((3, 2)), bits=12)
  with pytest.raises(ValueError, match="float"):
    metrics.as_code_words(np.zeros((3, 12), np.float32), 12)
  with pytest.raises(ValueError, match="method"):
    metrics.mean_average_precision(q, q, np.ones((3, 2)), np.ones((3, 2)), bits=12, method="fast")
  with pytest.raises(ValueError, match=r"backend must be one of auto \| jax \| faiss"):
    metrics.mean_average_precision(q, q, np.ones((3, 2)), np.ones((3, 2)), bits=12, R=1, backend="fast")


@pytest.mark.parametrize("R", [0, 3, 5, 8])
def test_expected_ties_matches_enumeration(R):
  method = "sort" if R % 2 else "counting"
  rng = np.random.default_rng(R)
  k, n_q, n_db = 4, 8, 10  # 4 bits and 10 items: large tie groups, few arrangements to enumerate
  q, db = rng.integers(0, 2, (n_q, k)).astype(bool), rng.integers(0, 2, (n_db, k)).astype(bool)
  q_l = (rng.random((n_q, 3)) < 0.4).astype(np.float32)
  db_l = (rng.random((n_db, 3)) < 0.4).astype(np.float32)
  for drop in (False, True):
    out = metrics.evaluate_codes(
      q,
      db,
      q_l,
      db_l,
      bits=k,
      R=R,
      expected_ties=True,
      drop_no_relevant=drop,
      pr_rank_points=0,
      method=method,
    )
    dist, rel = ref.distances_and_relevance(q, db, q_l, db_l)
    exp = [ref.expected_ap_enumerated(dist[i], rel[i], R) for i in range(n_q)]
    np.testing.assert_allclose(out["ap_expected_ties"], [e[0] for e in exp], atol=1e-9)
    kept = [e[0] for e in exp if e[1] > 0 or not drop]
    assert out["map_expected_ties"] == pytest.approx(np.mean(kept) if kept else 0.0, abs=1e-9)
  counts, rel_counts = metrics.distance_histograms(q, db, q_l, db_l, bits=k)
  _, p_any = metrics.expected_average_precision(counts, rel_counts, R)
  np.testing.assert_allclose(p_any, [e[1] for e in exp], atol=1e-9)
  assert max(ref.num_arrangements(d, r) for d, r in zip(dist, rel)) > 10  # ties really are enumerated


def test_expected_ties_large_groups_finite():
  # One big tie group cut by R: the hypergeometric weights must stay finite and sum to one.
  counts = np.array([[0, 3000, 5000, 0]])
  rel_counts = np.array([[0, 1000, 2500, 0]])
  ap, p_any = metrics.expected_average_precision(counts, rel_counts, R=4000)
  assert np.isfinite(ap).all() and 0.0 < ap[0] < 1.0 and p_any[0] == 1.0
  ap_all, _ = metrics.expected_average_precision(counts, rel_counts, R=0)
  assert 0.0 < ap_all[0] < 1.0


# ----------------------------------------------------------------------------------------------- properties

_K, _D = 12, 24


@_SETTINGS
@given(codes=hnp.arrays(np.bool_, (_D + 1, _K)), threshold=st.integers(0, _K), R=st.integers(0, _D + 2))
def test_perfect_ranking_has_map_one(codes, threshold, R):
  q, db = codes[:1], codes[1:]
  d = np.array(ref.distances_and_relevance(q, db, [[1]], [[1]] * _D)[0][0])
  rel = d <= threshold  # every relevant item is strictly closer than every irrelevant one
  db_l = np.stack([rel, ~rel], axis=1).astype(np.float32)
  ap, n_rel = metrics.average_precision(q, db, np.array([[1.0, 0.0]]), db_l, bits=_K, R=R)
  assert ap[0] == pytest.approx(1.0 if rel.any() else 0.0, abs=1e-6)
  assert n_rel[0] == min(int(rel.sum()), R if 0 < R < _D else _D)


@_SETTINGS
@given(
  codes=hnp.arrays(np.bool_, (_D + 1, _K)),
  labels=hnp.arrays(np.bool_, (_D + 1, 3)),
  seed=st.integers(0, 2**31 - 1),
  method=st.sampled_from(["counting", "sort"]),
)
def test_invariant_to_permuting_untied_items(codes, labels, seed, method):
  q, db, q_l, db_l = codes[:1], codes[1:], labels[:1].astype(np.float32), labels[1:].astype(np.float32)
  d = np.array(ref.distances_and_relevance(q, db, q_l, db_l)[0][0])
  # A random permutation that keeps the relative order of items at equal distance (a random merge of the
  # tie groups, each in index order): the stable ranking, hence every rank metric, must not change.
  rng = np.random.default_rng(seed)
  queues = {t: list(np.nonzero(d == t)[0]) for t in np.unique(d)}
  tags = np.concatenate([[t] * len(v) for t, v in queues.items()])
  perm = np.array([queues[t].pop(0) for t in rng.permutation(tags)])
  kw = dict(bits=_K, R=7, topk=(1, 5, 10), radius=2, expected_ties=True, pr_rank_points=6, method=method)
  a = metrics.evaluate_codes(q, db, q_l, db_l, **kw)
  b = metrics.evaluate_codes(q, db[perm], q_l, db_l[perm], **kw)
  for key in ("ap", "precision_at_k", "pr_rank_precision", "pr_rank_recall", "pr_radius_precision"):
    np.testing.assert_allclose(a[key], b[key], atol=1e-6)
  assert a["map_radius"] == pytest.approx(b["map_radius"], abs=1e-6)
  # The expected AP under random tie order does not depend on the database order at all.
  shuffled = rng.permutation(_D)
  e = metrics.evaluate_codes(q, db[shuffled], q_l, db_l[shuffled], **kw)
  np.testing.assert_allclose(e["ap_expected_ties"], a["ap_expected_ties"], atol=1e-9)


@_SETTINGS
@given(
  codes=hnp.arrays(np.bool_, (_D + 3, _K)),
  labels=hnp.arrays(np.bool_, (_D + 3, 2)),
  flip=hnp.arrays(np.bool_, (_K,)),
)
def test_common_bit_flip_invariance_and_bounds(codes, labels, flip):
  q, db = codes[:3], codes[3:]
  q_l, db_l = labels[:3].astype(np.float32), labels[3:].astype(np.float32)
  a = metrics.average_precision(q, db, q_l, db_l, bits=_K, R=10)[0]
  b = metrics.average_precision(q ^ flip, db ^ flip, q_l, db_l, bits=_K, R=10)[0]
  np.testing.assert_allclose(a, b, atol=1e-7)
  assert np.all((a >= 0) & (a <= 1 + 1e-6))
  full = metrics.average_precision(q, db, q_l, db_l, bits=_K, R=0)[0]
  np.testing.assert_allclose(
    full, metrics.average_precision(q, db, q_l, db_l, bits=_K, R=_D + 5)[0], atol=1e-7
  )


def test_packing_matches_hashing_module():
  # Codes packed by the training side (hashing.pack_bits) and by metrics must be bit-identical.
  from ssdh_jax import hashing

  rng = np.random.default_rng(5)
  for k in (12, 32, 48, 64):
    bits = rng.integers(0, 2, (7, k)).astype(bool)
    np.testing.assert_array_equal(metrics.as_code_words(bits, k), hashing.pack_bits(bits))
    np.testing.assert_array_equal(metrics.as_code_words(bits, k), pack_words(bits))


def _report_map(config, q, d):
  from ssdh_jax import evaluate

  return evaluate.report(config, q, d, {"split_hash": "x"}, step=1)


def test_headline_map_does_not_depend_on_database_storage_order():
  """Folders store the database in class order; ties broken by position then favour the first classes."""
  from configs import default
  from ssdh_jax import hashing

  rng = np.random.default_rng(0)
  bits, n_db, n_q, classes = 8, 600, 40, 6
  labels = np.sort(rng.integers(0, classes, n_db))  # class-ordered storage, like sorted folder paths
  # Few bits and class-correlated codes: many ties at every distance, mixed classes inside them.
  codes = (rng.random((n_db, bits)) < 0.3 + 0.4 * (labels[:, None] % 2)).astype(bool)
  db = {
    "codes": np.asarray(hashing.pack_bits(codes)),
    "labels": np.eye(classes, dtype=np.float32)[labels],
    "ids": rng.permutation(10 * n_db)[:n_db].astype(np.int64),
  }
  qi = rng.choice(n_db, n_q, replace=False)
  q = {k: v[qi] for k, v in db.items()}
  c = default.get_config()
  c.model.bits = bits
  orders = {"stored": np.arange(n_db), "shuffled": rng.permutation(n_db), "reversed": np.arange(n_db)[::-1]}
  maps = {}
  for tie_break in ("id_hash", "index"):
    c.eval.tie_break = tie_break
    maps[tie_break] = {
      name: _report_map(c, q, {k: v[o] for k, v in db.items()})["metrics"]["map"]
      for name, o in orders.items()
    }
  assert len(set(maps["id_hash"].values())) == 1, maps
  assert len(set(maps["index"].values())) > 1, maps  # storage order did matter under the old convention
  c.eval.tie_break = "id_hash"
  key = _report_map(c, q, db)["key"]
  assert key["tie_break"] == "seeded order of item ids (seed 0)"
  c.eval.tie_seed = 1
  assert _report_map(c, q, db)["metrics"]["map"] != maps["id_hash"]["stored"]  # the seed is the tie order


def test_tie_order_is_a_permutation_fixed_by_ids_and_seed():
  ids = np.random.default_rng(1).permutation(1000)[:300].astype(np.int64)
  perm = metrics.tie_order(ids, 0)
  assert sorted(perm.tolist()) == list(range(300))
  shuffled = ids[::-1]
  np.testing.assert_array_equal(ids[perm], shuffled[metrics.tie_order(shuffled, 0)])
  assert not np.array_equal(ids[perm], ids[metrics.tie_order(ids, 1)])
