"""Hamming ranking kernels shared by the metrics (`metrics.py`) and the code index (`index.py`).

Codes are packed uint32 words (N, ceil(k/32)) in the layout of `hashing.pack_bits`, padding bits zero
(`as_code_words` validates and converts). The kernels work on a chunk of queries at a time:
`hamming` (XOR + popcount), `stable_prefix` (the first L positions of the stable ranking: ascending distance,
ties by database position), `map_queries` (a function over query chunks, the last one padded) and
`chunk_size` (queries per chunk under a memory bound). `faiss_code_bytes` is the same codes in FAISS's byte
layout, padded to 64-bit words (FAISS's fast Hamming kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.typing import ArrayLike

from ssdh_jax import hashing

# query_chunk x D is kept below this many elements: the (chunk, D) distance, relevance and sort buffers are
# a few bytes each per element, so one chunk stays well under 1 GiB on CPU (4 GiB on an accelerator).
_MAX_CHUNK_ELEMS = 1 << 26
_MAX_CHUNK_ELEMS_ACCEL = 1 << 28
# A prefix of length L is ranked with lax.top_k (stable: lower index first on ties) while L <= D / this;
# longer prefixes use one full sort, which XLA does faster than a top_k that long.
_TOPK_FRACTION = 4
# A prefix with length x 4 x _GROUPS <= D is found by two small top_k's over strided groups (see
# `grouped_prefix`), ~10x faster on CPU for search-sized k.
_GROUPS = 16


def num_words(bits: int) -> int:
  """Number of uint32 words holding a `bits`-bit code."""
  return -(-bits // 32)


def as_code_words(codes: ArrayLike, bits: int) -> Array:
  """Validates codes and returns them as packed uint32 words with zeroed padding bits.

  Args:
    codes: (N, ceil(bits/32)) uint32 packed words, or (N, bits) bool / {0,1} integers.
    bits: code length k.

  Returns:
    (N, ceil(bits/32)) uint32.
  """
  x = jnp.asarray(codes)
  w = num_words(bits)
  if x.ndim != 2:
    raise ValueError(f"codes must be 2-D (N, words) or (N, bits); got shape {x.shape}")
  if x.dtype == jnp.uint32 and x.shape[1] == w:
    words = x
  elif x.shape[1] == bits and (x.dtype == jnp.bool_ or jnp.issubdtype(x.dtype, jnp.integer)):
    words = hashing.pack_bits(x != 0)  # the one packing of codes into words
  else:
    raise ValueError(
      f"codes of shape {x.shape} and dtype {x.dtype} do not match bits={bits}: expected packed uint32 "
      f"(N, {w}) or bool (N, {bits})"
    )
  if bits % 32:
    mask = np.full((w,), 0xFFFFFFFF, np.uint32)
    mask[-1] = (1 << (bits % 32)) - 1
    words = words & jnp.asarray(mask)
  return words


def balanced(num_queries: int, cap: int) -> int:
  """Largest chunk <= cap that splits the queries into equal chunks (the last one is padded)."""
  n_chunks = -(-max(num_queries, 1) // max(cap, 1))
  return int(-(-max(num_queries, 1) // n_chunks))


def chunk_size(query_chunk: int, num_queries: int, num_db: int, x: Array | None = None) -> int:
  """Queries per step of the sort method: query_chunk, capped by memory (x: an array on the target device)."""
  accel = x is not None and next(iter(x.devices())).platform != "cpu"
  cap = _MAX_CHUNK_ELEMS_ACCEL if accel else _MAX_CHUNK_ELEMS
  return balanced(num_queries, min(query_chunk, max(1, cap // max(num_db, 1))))


def hamming(q_words: Array, db_words: Array) -> Array:
  """(Qc, W) x (D, W) uint32 -> (Qc, D) int32 Hamming distances (XOR + popcount, one word at a time)."""
  dist = None
  for w in range(q_words.shape[1]):  # W is tiny and static; avoids a (Qc, D, W) buffer
    d = lax.population_count(q_words[:, w, None] ^ db_words[None, :, w]).astype(jnp.int32)
    dist = d if dist is None else dist + d
  return dist


def grouped_prefix(
  dist: Array, length: int, max_dist: int, payload: Array | None, groups: int
) -> tuple[Array, Array]:
  """Exact short stable prefix in two small top_k's instead of one over all D items.

  Item j = m * S + g (S = D / groups) belongs to strided group g. A group's best item in (distance, index)
  order is the one minimising v = distance * groups + m, and groups whose best items have equal v are
  ordered by g, which is how a stable top_k over -v ranks them; so the `length` best groups contain the
  `length` best items (every group holding one of them has its best item among them). Their members, laid
  out m-major with g ascending, are in index order, and a second stable top_k picks the prefix.
  """
  n_q, n_db = dist.shape
  s = -(-n_db // groups)
  if s * groups != n_db:  # pad with items farther than any real one: never selected
    dist = jnp.pad(dist, ((0, 0), (0, s * groups - n_db)), constant_values=max_dist + 1)
    if payload is not None:
      payload = jnp.pad(payload, ((0, 0), (0, s * groups - n_db)))
  d3 = dist.reshape(n_q, groups, s)
  v = jnp.min(d3 * groups + lax.broadcasted_iota(jnp.int32, d3.shape, 1), axis=1)
  _, gsel = lax.top_k(-v.astype(jnp.float32), length)
  gsel = jnp.broadcast_to(jnp.sort(gsel, axis=1)[:, None, :], (n_q, groups, length))
  cand = jnp.take_along_axis(d3, gsel, axis=2).reshape(n_q, groups * length)
  _, sel = lax.top_k(-cand.astype(jnp.float32), length)
  pos = jnp.take_along_axis(gsel[:, 0], sel % length, axis=1) + (sel // length) * s
  if payload is None:
    return pos, jnp.take_along_axis(cand, sel, axis=1)
  p_cand = jnp.take_along_axis(payload.reshape(n_q, groups, s), gsel, axis=2).reshape(n_q, groups * length)
  return pos, jnp.take_along_axis(p_cand, sel, axis=1)


def stable_prefix(
  dist: Array, length: int, max_dist: int, payload: Array | None = None
) -> tuple[Array, Array]:
  """The first `length` positions of the ranking by (distance, database index).

  Args:
    dist: (Qc, D) int32 distances in [0, max_dist].
    length: prefix length L <= D (static).
    max_dist: largest possible distance (static).
    payload: optional (Qc, D) int32 in {0, 1} carried along (the relevance).

  Returns:
    (Qc, L) int32 database indices and, if `payload` is given, (Qc, L) int32 payload in ranking order
    (else the (Qc, L) int32 distances).
  """
  n_db = dist.shape[1]
  if length * 4 * _GROUPS <= n_db:
    return grouped_prefix(dist, length, max_dist, payload, _GROUPS)
  if length * _TOPK_FRACTION <= n_db:
    # XLA's TopK is stable (lower index first among equal values); distances are exact in float32.
    _, idx = lax.top_k(-dist.astype(jnp.float32), length)
    return idx, jnp.take_along_axis(payload if payload is not None else dist, idx, axis=1)
  iota = lax.broadcasted_iota(jnp.int32, dist.shape, 1)
  if 2 * (max_dist + 1) * n_db <= int(jnp.iinfo(jnp.int32).max):
    # One unique int32 key per item, (distance, index) order, with the payload bit as the lowest bit: a
    # single-operand sort, much faster than a stable multi-operand one.
    extra = payload if payload is not None else jnp.zeros_like(dist)
    key = jnp.sort((dist * n_db + iota) * 2 + extra, axis=1)[:, :length]
    return (key >> 1) % n_db, (key & 1) if payload is not None else key // (2 * n_db)
  ops = (dist, iota) if payload is None else (dist, iota, payload)
  out = lax.sort(ops, dimension=1, is_stable=True, num_keys=1)
  return out[1][:, :length], out[2 if payload is not None else 0][:, :length]


def map_queries(fn: Callable[..., Any], per_query: Sequence[Array], chunk: int) -> Any:
  """Applies fn to chunks of the per-query arrays sequentially (lax.map) and concatenates the results."""
  n = per_query[0].shape[0]
  n_chunks = -(-n // chunk)
  if n_chunks == 1:
    # A single chunk needs no loop around it.
    return fn(*per_query)
  pad = n_chunks * chunk - n
  xs = [
    jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(n_chunks, chunk, *x.shape[1:]) for x in per_query
  ]
  out = lax.map(lambda t: fn(*t), tuple(xs))
  return jax.tree.map(lambda y: y.reshape(n_chunks * chunk, *y.shape[2:])[:n], out)


def faiss_module():
  """The `faiss` module, or None when it is not installed (pip install faiss-cpu)."""
  try:
    import faiss
  except ImportError:
    return None
  return faiss


def faiss_code_bytes(words: ArrayLike, pad_bits: int = 64) -> np.ndarray:
  """Packed uint32 words (N, W) -> (N, B) uint8 in FAISS's binary layout (bit j in byte j // 8 at position
  j % 8), zero-padded to whole `pad_bits` (a multiple of 8; zero padding leaves distances unchanged). 64-bit
  padding puts 1-512-bit codes on the code sizes FAISS has fast Hamming kernels for (8, 16, 32, 64 bytes)."""
  if pad_bits % 8 or pad_bits <= 0:
    raise ValueError(f"pad_bits must be a positive multiple of 8; got {pad_bits}")
  w = np.asarray(words, np.uint32)
  by = np.ascontiguousarray(w.astype("<u4")).view(np.uint8).reshape(w.shape[0], -1)
  n_bytes = -(-by.shape[1] // (pad_bits // 8)) * (pad_bits // 8)
  return np.ascontiguousarray(np.pad(by, ((0, 0), (0, n_bytes - by.shape[1]))))
