"""The FAISS backend (metrics / index backend='faiss'): the same numbers and neighbours as the JAX path, with ties
broken by database position for both FAISS k-NN algorithms; clear errors for bad or unavailable backends."""

from __future__ import annotations

import numpy as np
import pytest

from configs import default
from ssdh_jax import config_checks, evaluate, metrics, ranking
from ssdh_jax import index as index_lib

BITS = 16  # 17 possible distances over 2,000 items: every distance group is a large tie


def tie_heavy_case(seed: int, n_q: int = 40, n_db: int = 2000, single_label: bool = False, n_cls: int = 40):
  """Random 16-bit codes (hundreds of items per distance) with multi-hot (40 labels: two label words) or
  single-label (class id) labels; query 0 has no relevant item."""
  rng = np.random.default_rng(seed)
  q = rng.random((n_q, BITS)) < 0.5
  db = rng.random((n_db, BITS)) < 0.5
  if single_label:
    ql, dl = rng.integers(0, 7, n_q), rng.integers(0, 6, n_db)
    ql[0] = 6  # a class no database item has
  else:
    ql = (rng.random((n_q, n_cls)) < 0.05).astype(np.float32)
    dl = (rng.random((n_db, n_cls)) < 0.05).astype(np.float32)
    ql[0] = 0.0
  return q, db, ql, dl


@pytest.fixture(params=[True, False], ids=["use_heap", "counting"])
def faiss_algorithm(request, monkeypatch):
  """Forces FAISS's heap (use_heap=True) or counting k-NN for every k the backend asks for."""
  pytest.importorskip("faiss")
  monkeypatch.setattr(metrics, "_FAISS_HEAP_MAX_K", 10**9 if request.param else 0)
  return request.param


def faiss_lists(q, db, k, use_heap, chunk_elems=0):
  qw, dw = (np.asarray(metrics.as_code_words(x, BITS)) for x in (q, db))
  parts = list(metrics.faiss_knn(qw, dw, k, use_heap=use_heap, chunk_elems=chunk_elems))
  assert [p[0] for p in parts] == sorted({p[0] for p in parts})  # chunks in query order
  return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


@pytest.mark.parametrize("use_heap", [True, False])
def test_faiss_knn_equals_jax_on_ties(use_heap):
  pytest.importorskip("faiss")
  q, db, _, _ = tie_heavy_case(0)
  for k in (1, 7, 100, 700, 1999):
    pos_j, dist_j = (np.asarray(x) for x in index_lib.knn(db, q, k, bits=BITS, backend="jax"))
    pos_f, dist_f = faiss_lists(q, db, k, use_heap, chunk_elems=9 * k)  # several FAISS calls
    np.testing.assert_array_equal(dist_f, dist_j)
    np.testing.assert_array_equal(pos_f, pos_j)  # the same items in the same order: ties by position
    # Many ties really are cut at the boundary (a group straddles position k) in this case.
    if k == 100:
      d_all = np.asarray(metrics.hamming_distances(q, db, bits=BITS))
      assert all(
        (d_all[i] == dist_j[i, -1]).sum() > (dist_j[i] == dist_j[i, -1]).sum() for i in range(len(q))
      )


def test_index_search_faiss_backend(faiss_algorithm):
  q, db, _, dl = tie_heavy_case(1)
  idx = index_lib.CodeIndex(
    codes=db, ids=np.random.default_rng(1).permutation(10**6)[: len(db)], labels=dl, meta={"bits": BITS}
  )
  for k in (5, 300):
    ids_j, d_j = index_lib.search(idx, q, k, backend="jax")
    ids_f, d_f = index_lib.search(idx, q, k, backend="faiss")
    np.testing.assert_array_equal(ids_f, ids_j)
    np.testing.assert_array_equal(d_f, d_j)
  # k >= N is the whole ranking: JAX serves it whatever the backend.
  ids_f, _ = index_lib.search(idx, q, 5000, backend="faiss")
  np.testing.assert_array_equal(ids_f, index_lib.search(idx, q, 5000, backend="jax")[0])


@pytest.mark.parametrize("single_label", [False, True], ids=["multi_label", "single_label"])
def test_faiss_map_at_r_equals_jax(faiss_algorithm, single_label):
  q, db, ql, dl = tie_heavy_case(2 + single_label, single_label=single_label)
  for R in (1, 13, 250, 1000, 1999):
    ap_j, n_j = metrics.average_precision(q, db, ql, dl, bits=BITS, R=R, backend="jax")
    ap_f, n_f = metrics.average_precision(q, db, ql, dl, bits=BITS, R=R, backend="faiss")
    np.testing.assert_array_equal(n_f, n_j)
    np.testing.assert_allclose(ap_f, ap_j, rtol=0, atol=1e-6)
    assert ap_f.dtype == np.float32 and n_f.dtype == np.int32
    assert ap_j[0] == 0.0 and 0.0 < ap_j.mean() < 1.0
    for drop in (False, True):
      m_j = metrics.mean_average_precision(
        q, db, ql, dl, bits=BITS, R=R, drop_no_relevant=drop, backend="jax"
      )
      m_f = metrics.mean_average_precision(
        q, db, ql, dl, bits=BITS, R=R, drop_no_relevant=drop, backend="faiss"
      )
      assert m_f == pytest.approx(m_j, abs=1e-6)
  # An order that differs only inside tie groups changes AP: the test above can tell tie orders apart.
  flipped = metrics.average_precision(q, db[::-1], ql, dl[::-1], bits=BITS, R=250, backend="jax")[0]
  assert (
    np.abs(flipped - metrics.average_precision(q, db, ql, dl, bits=BITS, R=250, backend="jax")[0]).max()
    > 1e-3
  )


def test_faiss_evaluate_codes_equals_jax(faiss_algorithm):
  q, db, ql, dl = tie_heavy_case(4)
  kw = dict(bits=BITS, R=300, topk=(1, 10, 100, 500), radius=3, expected_ties=True, pr_rank_max=400)
  want = metrics.evaluate_codes(q, db, ql, dl, backend="jax", **kw)
  got = metrics.evaluate_codes(q, db, ql, dl, backend="faiss", **kw)
  assert want["backend"] == "jax" and got["backend"] == "faiss"
  assert set(got) == set(want)
  for key in want:
    if key != "backend":
      np.testing.assert_allclose(
        np.asarray(got[key], np.float64), np.asarray(want[key], np.float64), atol=1e-6
      )
  # The whole ranking (mAP@all, or a PR-by-rank curve over the whole database) stays JAX.
  assert metrics.evaluate_codes(q, db, ql, dl, bits=BITS, R=300, backend="faiss")["backend"] == "jax"
  assert (
    metrics.evaluate_codes(q, db, ql, dl, bits=BITS, R=0, pr_rank_max=10, backend="faiss")["backend"] == "jax"
  )


def test_auto_backend_choice():
  x = metrics.as_code_words(np.zeros((4, BITS), bool), BITS)
  installed = ranking.faiss_module() is not None
  n = 193_734
  assert metrics.resolve_backend("auto", x, 5000, n) == ("faiss" if installed else "jax")  # mAP@5000
  assert metrics.resolve_backend("auto", x, 100, n) == "jax"  # top-100: the JAX strided top_k is faster
  assert metrics.resolve_backend("auto", x, n, n) == "jax"  # mAP@all
  assert metrics.resolve_backend("auto", x, n // 2, n) == "jax"  # long prefixes: the JAX counting scans
  assert metrics.resolve_backend("auto", x, 5000, n, method="counting") == "jax"  # a JAX method was named
  assert metrics.resolve_backend("jax", x, 5000, n) == "jax"
  if installed:
    assert metrics.resolve_backend("faiss", x, 100, n) == "faiss"
    assert metrics.resolve_backend("faiss", x, n, n) == "jax"


def test_bad_backend_is_a_clear_error(monkeypatch):
  q, db, ql, dl = tie_heavy_case(5, n_q=3, n_db=50)
  with pytest.raises(ValueError, match=r"^backend must be one of auto \| jax \| faiss; got 'gpu'$"):
    metrics.average_precision(q, db, ql, dl, bits=BITS, R=10, backend="gpu")
  with pytest.raises(ValueError, match="backend must be one of"):
    index_lib.knn(db, q, 3, bits=BITS, backend="FAISS")
  c = default.get_config()
  c.eval.backend = "fast"
  with pytest.raises(
    ValueError, match=r"^config\.eval\.backend: expected one of auto \| jax \| faiss, got 'fast'$"
  ):
    config_checks.check_config(c)
  c.eval.backend = "faiss"
  monkeypatch.setattr(ranking, "faiss_module", lambda: None)  # as if FAISS were not installed
  with pytest.raises(ValueError, match=r"^config\.eval\.backend: .*pip install faiss-cpu$"):
    config_checks.check_config(c)
  with pytest.raises(ImportError, match="pip install faiss-cpu"):
    metrics.average_precision(q, db, ql, dl, bits=BITS, R=10, backend="faiss")
  c.eval.backend = "auto"
  config_checks.check_config(c)  # auto falls back to JAX without FAISS
  assert metrics.resolve_backend("auto", metrics.as_code_words(db, BITS), 10, 10**6) == "jax"


def test_report_key_records_the_backend():
  q, db, ql, dl = tie_heavy_case(6, n_q=5, n_db=300)
  c = default.get_config()
  c.model.bits = BITS
  c.eval.map_r = 50
  enc = {
    "q": {"codes": np.asarray(metrics.as_code_words(q, BITS)), "labels": ql, "ids": np.arange(5)},
    "d": {"codes": np.asarray(metrics.as_code_words(db, BITS)), "labels": dl, "ids": np.arange(300)},
  }
  res = evaluate.report(c, enc["q"], enc["d"], {"split_hash": "x"}, step=1)
  # The report's PR-by-rank curve spans the whole database, so JAX ranks it whatever the backend.
  assert res["key"]["eval_backend"] == "jax" and "backend" not in res["metrics"]
  assert "eval_backend" not in evaluate.scalar_metrics(res)
