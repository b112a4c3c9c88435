"""ssdh_jax.index: file round trip, refusal of mismatches, search vs the brute-force oracle, FAISS export."""

from __future__ import annotations

import json

import metrics_reference as ref
import numpy as np
import pytest

from ssdh_jax import index as index_lib


def clustered_codes(seed: int, n: int, k: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  centres = rng.integers(0, 2, (4, k)).astype(bool)
  return centres[rng.integers(0, 4, n)] ^ (rng.random((n, k)) < 0.1)


def make_index(n=120, k=24, seed=0, labels=True) -> index_lib.CodeIndex:
  rng = np.random.default_rng(seed)
  return index_lib.CodeIndex(
    codes=clustered_codes(seed, n, k),
    ids=rng.permutation(10 * n)[:n],
    labels=(rng.random((n, 5)) < 0.3).astype(np.float32) if labels else None,
    meta={"bits": k, "backbone": "small_cnn", "preprocessing": "unit", "split_hash": "abc123", "step": 7},
  )


def oracle_neighbours(db_bits, q_bits):
  """Per query: positions by (distance, position) and the distances, from the explicit-loop oracle."""
  out = []
  for q in q_bits:
    d = [ref.hamming(q, b) for b in db_bits]
    order = ref.ranking(d)
    out.append((order, [d[j] for j in order]))
  return out


def unpack(index):
  return np.unpackbits(index.codes.view(np.uint8), axis=1, bitorder="little")[:, : index.bits].astype(bool)


@pytest.mark.parametrize("labels", [True, False])
def test_round_trip(tmp_path, labels):
  idx = make_index(labels=labels)
  path = str(tmp_path / "db_index.npz")
  assert index_lib.save_index(path, idx) == path
  got = index_lib.load_index(path, bits=24, expect={"backbone": "small_cnn", "split_hash": "abc123"})
  np.testing.assert_array_equal(got.codes, idx.codes)
  assert got.codes.dtype == np.uint32 and got.codes.shape == (120, 1)
  np.testing.assert_array_equal(got.ids, idx.ids)
  if labels:
    np.testing.assert_array_equal(got.labels, idx.labels)
  else:
    assert got.labels is None
  assert got.meta == idx.meta and got.bits == 24 and len(got) == 120
  np.testing.assert_array_equal(unpack(got), clustered_codes(0, 120, 24))  # the stored bit layout


def test_refuses_mismatches(tmp_path):
  path = str(tmp_path / "i.npz")
  index_lib.save_index(path, make_index())
  with pytest.raises(ValueError, match="24-bit codes but the query codes have 48 bits"):
    index_lib.load_index(path, bits=48)
  with pytest.raises(ValueError, match="backbone"):
    index_lib.load_index(path, expect={"backbone": "vgg_f"})
  with pytest.raises(FileNotFoundError):
    index_lib.load_index(str(tmp_path / "missing.npz"))
  # Another format version.
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  meta = json.loads(str(arrays["meta"]))
  meta["format_version"] = index_lib.FORMAT_VERSION + 1
  bad = str(tmp_path / "v2.npz")
  np.savez(bad, **{**arrays, "meta": np.array(json.dumps(meta))})
  with pytest.raises(ValueError, match="format version"):
    index_lib.load_index(bad)
  # Codes that do not hold the declared code length.
  meta["format_version"] = index_lib.FORMAT_VERSION
  meta["bits"] = 40
  bad = str(tmp_path / "bits.npz")
  np.savez(bad, **{**arrays, "meta": np.array(json.dumps(meta))})
  with pytest.raises(ValueError, match="40-bit"):
    index_lib.load_index(bad)
  other = str(tmp_path / "other.npz")
  np.savez(other, x=np.zeros(3))
  with pytest.raises(ValueError, match="not an ssdh_jax index"):
    index_lib.load_index(other)
  with pytest.raises(ValueError, match="ids"):
    index_lib.CodeIndex(codes=np.zeros((3, 1), np.uint32), ids=np.arange(4), meta={"bits": 8})
  with pytest.raises(ValueError, match="bits"):
    index_lib.CodeIndex(codes=np.zeros((3, 1), np.uint32), ids=np.arange(3))


@pytest.mark.parametrize("k_bits", [12, 64])
def test_search_matches_oracle(k_bits):
  idx = make_index(n=150, k=k_bits, seed=k_bits)
  q_bits = clustered_codes(k_bits + 1, 7, k_bits)
  want = oracle_neighbours(unpack(idx), q_bits)
  for k, block in [(10, 1 << 20), (10, 32), (33, 40), (1, 7), (500, 1 << 20)]:
    ids, dists = index_lib.search(idx, q_bits, k, query_chunk=3, db_block=block)
    kk = min(k, 150)
    assert ids.shape == (7, kk) and dists.shape == (7, kk)
    for i, (order, d) in enumerate(want):
      np.testing.assert_array_equal(ids[i], idx.ids[order[:kk]])
      np.testing.assert_array_equal(dists[i], d[:kk])
  # Packed queries and a single 1-D query give the same answer.
  ids1, d1 = index_lib.search(idx, idx.codes[5], 4)
  assert ids1.shape == (1, 4) and d1[0, 0] == 0 and ids1[0, 0] == idx.ids[want_first_zero(unpack(idx), 5)]


def want_first_zero(db_bits, j):
  """Position of the first item identical to item j (ties go to the smallest position)."""
  return next(i for i in range(len(db_bits)) if (db_bits[i] == db_bits[j]).all())


def test_range_search_matches_oracle():
  idx = make_index(n=90, k=32, seed=3)
  q_bits = clustered_codes(4, 6, 32)
  q_bits[0] = ~q_bits[0]  # far from everything: an empty ball
  want = oracle_neighbours(unpack(idx), q_bits)
  for radius in (0, 2, 5, 32):
    found = index_lib.range_search(idx, q_bits, radius, query_chunk=4)
    assert len(found) == 6
    for (ids, d), (order, dist) in zip(found, want):
      n_in = sum(1 for x in dist if x <= radius)
      np.testing.assert_array_equal(ids, idx.ids[order[:n_in]])
      np.testing.assert_array_equal(d, dist[:n_in])
  assert len(index_lib.range_search(idx, q_bits, 2)[0][0]) == 0


def test_format_results():
  text = index_lib.format_results([42, 7], [0, 3], paths={42: "a.jpg", 7: "b.jpg"})
  lines = text.splitlines()
  assert lines[0].split("\t") == ["rank", "id", "hamming", "path"]
  assert lines[1].split("\t") == ["1", "42", "0", "a.jpg"] and lines[2].split("\t") == [
    "2",
    "7",
    "3",
    "b.jpg",
  ]
  assert index_lib.format_results([5], [1]).splitlines()[1] == "1\t5\t1"


def test_faiss_bytes_layout():
  rng = np.random.default_rng(0)
  bits = rng.integers(0, 2, (9, 20)).astype(bool)
  tight = np.packbits(bits, axis=1, bitorder="little")
  by = index_lib.faiss_bytes(bits, 20, pad_bits=8)
  assert by.dtype == np.uint8 and by.shape == (9, 3)
  np.testing.assert_array_equal(by, tight)
  # Default: zero-padded to a whole 64-bit word (FAISS's fast kernels); 80 bits take two words.
  by64 = index_lib.faiss_bytes(bits, 20)
  assert by64.shape == (9, 8) and by64.flags.c_contiguous
  np.testing.assert_array_equal(by64[:, :3], tight)
  assert not by64[:, 3:].any()
  wide = rng.integers(0, 2, (4, 80)).astype(bool)
  np.testing.assert_array_equal(
    index_lib.faiss_bytes(wide, 80), np.pad(np.packbits(wide, axis=1, bitorder="little"), ((0, 0), (0, 6)))
  )
  with pytest.raises(ValueError, match="multiple of 8"):
    index_lib.faiss_bytes(bits, 20, pad_bits=12)


@pytest.mark.parametrize("k_bits", [12, 48])
def test_faiss_export_same_neighbours(k_bits):
  faiss = pytest.importorskip("faiss")
  idx = make_index(n=200, k=k_bits, seed=11)
  q_bits = clustered_codes(12, 8, k_bits)
  fidx = index_lib.to_faiss(idx)
  assert isinstance(fidx, faiss.IndexBinaryFlat) and fidx.ntotal == 200 and fidx.d == 64
  k = 15
  ids, dists = index_lib.search(idx, q_bits, k, backend="jax")
  for use_heap in (True, False):
    fidx.use_heap = use_heap
    f_dist, f_pos = fidx.search(index_lib.faiss_bytes(q_bits, k_bits), k)
    np.testing.assert_array_equal(f_dist, dists)
    np.testing.assert_array_equal(idx.ids[f_pos], ids)  # ties by position, as `search` breaks them
