"""Retrieval metrics on binary codes: Hamming ranking, mAP@R, precision@K, PR curves, Hamming-ball metrics.

Every device computation is a jitted function that loops over chunks of queries with `lax.map`. Two exact
methods give identical numbers:
  * 'counting' (default on CPU unless the metrics only need the first D/64 ranks): two scans over the database
    items with the queries of a chunk vectorised: per-distance histograms, then each item's stable rank as a
    per-distance running offset (a counting sort that is never materialised). O(D) per query, O(chunk x k)
    memory.
  * 'sort' (default on accelerators, and on CPU for short prefixes such as mAP@1000 of ImageNet-100): per chunk
    of queries, the (chunk, D) distances are ranked by a stable top_k / single-key sort (a two-stage strided
    top_k for short prefixes). Memory O(query_chunk x D), the chunk capped so that query_chunk x D stays
    below 2^26 elements on CPU, 2^28 on accelerators.
A ranked prefix shorter than the database (mAP@R, top-k) can instead come from FAISS (backend='faiss', or
'auto' where it is installed and measured faster on CPU: `resolve_backend`): `IndexBinaryFlat` top-L lists
over 64-bit-padded codes, ties by position exactly as above, then the AP in NumPy; the same numbers (float32
rounding aside). XLA:CPU has no fast selection (top_k, sort, scatter and cumsum each cost several ns per
element and query), so FAISS's threshold-pruned k-NN wins for prefixes of a few thousand (bench/
bench_metrics.py); the whole ranking (mAP@all) stays with the counting method.

Conventions (the project's protocols.md; each one explicit, the default named):
  * Codes: packed uint32 words (N, ceil(k/32)) in the layout of `hashing.pack_bits` (bit j of a code in word
    j // 32 at bit position j % 32); (N, k) bool codes are packed on the fly. Padding bits are ignored.
  * Relevance: a database item is relevant to a query when they share at least one label (multi-hot entries
    > 0). 1-D integer labels are read as class ids (relevant = same class).
  * Ranking: ascending Hamming distance, ties broken by database index (stable). Positions are 1-based.
    Storage order then decides ties; `tie_order` gives an order of the database that depends only on the
    item ids and a seed, and the evaluator (config.eval.tie_break='id_hash', the default) ranks the database
    in that order, so the headline does not change when the same items are stored in another order.
  * AP@R = (1 / n_R) * sum over positions p <= R holding a relevant item of P@p, with n_R the number of
    relevant items inside the top R (R = 0 or R >= D: the whole database). A query with n_R = 0 has AP 0
    (default) or is left out of the mean with `drop_no_relevant=True` (some peers' convention).
  * P@K = (relevant items in the top min(K, D)) / min(K, D), averaged over all queries.
  * Hamming ball of radius r: the items at distance <= r. precision = relevant in ball / ball size (an empty
    ball counts as precision 0); recall = relevant in ball / relevant in the database (0 for a query without
    relevant items); mAP within radius r = AP over the ball in ranking order normalised by the relevant items
    in the ball (0 when there is none). Averaged over all queries (macro average).
  * PR curve by rank position p: mean over queries of (cum_rel(p) / p, cum_rel(p) / n_rel); PR curve by radius
    r = 0..k: the ball precision / recall above for every r.
  * Expected AP under a uniformly random order inside each tie group: `expected_average_precision` (closed
    form, float64, from the per-distance histograms).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.typing import ArrayLike

from ssdh_jax import ranking
from ssdh_jax.ranking import as_code_words

DEFAULT_TOPK = (1, 10, 50, 100, 500, 1000)


# ------------------------------------------------------------------------------------------------ inputs


def _label_words(q_labels: ArrayLike, db_labels: ArrayLike) -> tuple[Array, Array]:
  """Multi-hot (N, C) labels (or 1-D class ids) -> uint32 bit sets (N, ceil(C/32)) for the relevance test."""
  q = np.asarray(q_labels)
  d = np.asarray(db_labels)
  if q.ndim == 1 and d.ndim == 1:
    n_cls = int(max(q.max(initial=0), d.max(initial=0))) + 1
    q = np.eye(n_cls, dtype=bool)[q.astype(np.int64)]
    d = np.eye(n_cls, dtype=bool)[d.astype(np.int64)]
  if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1] or q.shape[1] == 0:
    raise ValueError(f"labels must be (Q, C) and (D, C) multi-hot with C >= 1; got {q.shape} and {d.shape}")

  n_words = -(-q.shape[1] // 32)

  def pack(y: np.ndarray) -> Array:
    # Rows padded to whole words, then one packbits over the flat array (per-row packbits is ~3x slower).
    b = np.zeros((y.shape[0], 32 * n_words), bool)
    b[:, : y.shape[1]] = y > 0
    return jnp.asarray(np.packbits(b.reshape(-1), bitorder="little").view("<u4").reshape(-1, n_words))

  return pack(q), pack(d)


def _check_inputs(q_codes, db_codes, q_labels, db_labels, bits):
  qw = as_code_words(q_codes, bits)
  dw = as_code_words(db_codes, bits)
  ql, dl = _label_words(q_labels, db_labels)
  if ql.shape[0] != qw.shape[0] or dl.shape[0] != dw.shape[0]:
    raise ValueError(
      f"{qw.shape[0]} query codes vs {ql.shape[0]} query labels, {dw.shape[0]} database codes vs "
      f"{dl.shape[0]} database labels"
    )
  if dw.shape[0] == 0 or qw.shape[0] == 0:
    raise ValueError(f"empty query set or database ({qw.shape[0]} queries, {dw.shape[0]} database items)")
  return qw, dw, ql, dl


# ------------------------------------------------------------------------------------ device primitives


def _relevant(q_lw: Array, db_lw: Array) -> Array:
  """(Qc, Wl) x (D, Wl) uint32 label sets -> (Qc, D) bool: share at least one label."""
  acc = None
  for w in range(q_lw.shape[1]):
    a = q_lw[:, w, None] & db_lw[None, :, w]
    acc = a if acc is None else acc | a
  return acc != 0


def hamming_distances(q_codes: ArrayLike, db_codes: ArrayLike, *, bits: int) -> Array:
  """All Hamming distances (unchunked; for small inputs).

  Args:
    q_codes: (Q, W) packed uint32 or (Q, bits) bool.
    db_codes: (D, W) packed uint32 or (D, bits) bool.
    bits: code length k.

  Returns:
    (Q, D) int32 in [0, k].
  """
  return ranking.hamming(as_code_words(q_codes, bits), as_code_words(db_codes, bits))


@functools.partial(jax.jit, static_argnames=("length", "chunk"))
def _ranking_device(q_words, db_words, *, length, chunk):
  def body(qw):
    return ranking.stable_prefix(ranking.hamming(qw, db_words), length, 32 * qw.shape[1])

  return ranking.map_queries(body, (q_words,), chunk)


@functools.partial(jax.jit, static_argnames=("bits", "chunk"))
def _histograms_device(q_words, q_lw, db_words, db_lw, *, bits, chunk):
  n_bins = 2 * (bits + 1)

  def body(qw, ql):
    key = ranking.hamming(qw, db_words) * 2 + _relevant(ql, db_lw).astype(jnp.int32)
    hist = jax.vmap(lambda x: jnp.zeros((n_bins,), jnp.int32).at[x].add(1))(key)
    return hist[:, 0::2] + hist[:, 1::2], hist[:, 1::2]

  return ranking.map_queries(body, (q_words, q_lw), chunk)


def _ap_at(contrib: Array, cum: Array, cut: Array) -> tuple[Array, Array]:
  """AP over the first `cut` positions: (sum of P@p at relevant p <= cut) / (relevant items in the top cut)."""
  pos = lax.broadcasted_iota(jnp.int32, contrib.shape, 1)
  s = jnp.sum(jnp.where(pos < cut[:, None], contrib, 0.0), axis=1)
  n_rel = jnp.take_along_axis(cum, jnp.clip(cut - 1, 0, cum.shape[1] - 1)[:, None], axis=1)[:, 0]
  n_rel = jnp.where(cut > 0, n_rel, 0)
  return jnp.where(n_rel > 0, s / jnp.maximum(n_rel, 1), 0.0), n_rel


@functools.partial(jax.jit, static_argnames=("length", "ks", "positions", "with_ball", "chunk"))
def _ranked_device(
  q_words, q_lw, cut_r, cut_ball, db_words, db_lw, *, length, ks, positions, with_ball, chunk
):
  def body(qw, ql, cr, cb):
    rel = _relevant(ql, db_lw).astype(jnp.int32)
    _, rel_sorted = ranking.stable_prefix(
      ranking.hamming(qw, db_words), length, 32 * qw.shape[1], payload=rel
    )
    cum = jnp.cumsum(rel_sorted, axis=1)
    prec = cum.astype(jnp.float32) / jnp.arange(1, length + 1, dtype=jnp.float32)
    contrib = jnp.where(rel_sorted > 0, prec, 0.0)
    ap_r, n_r = _ap_at(contrib, cum, cr)
    ap_ball = _ap_at(contrib, cum, cb)[0] if with_ball else jnp.zeros_like(ap_r)
    cum_k = cum[:, np.asarray(ks, np.int32) - 1] if ks else jnp.zeros((cum.shape[0], 0), jnp.int32)
    cum_p = (
      cum[:, np.asarray(positions, np.int32) - 1] if positions else jnp.zeros((cum.shape[0], 0), jnp.int32)
    )
    return ap_r, n_r, ap_ball, cum_k, cum_p

  return ranking.map_queries(body, (q_words, q_lw, cut_r, cut_ball), chunk)


def _kahan_add(acc: Array, comp: Array, x: Array) -> tuple[Array, Array]:
  """Compensated float32 summation: long scans add up to D terms."""
  y = x - comp
  t = acc + y
  return t, (t - acc) - y


@functools.partial(jax.jit, static_argnames=("bits", "radius", "n_bounds", "hist_only", "chunk", "unroll"))
def _counting_device(
  q_words,
  q_lw,
  db_words,
  db_lw,
  n_valid,
  cut_r,
  bucket_of_rank,
  *,
  bits,
  radius,
  n_bounds,
  hist_only,
  chunk,
  unroll,
):
  """Counting-sort evaluation: two sequential scans over the database items, all queries of a chunk at once.

  Pass 1 builds per-query histograms (items and relevant items per distance). Pass 2 revisits the items in
  index order with per-distance offsets initialised to the exclusive cumulative histogram, so an item's
  stable rank is offset[its distance] + 1 (a counting sort) and the relevant count up to it is the relevant
  offset + 1: the AP terms accumulate without sorting or storing the ranking. O(D) work and O(chunk x k)
  memory per chunk of queries. Fastest on CPU; on accelerators the sequential steps are latency bound (use
  'sort'). Each step touches one counter per query, so counters are updated by gather + scatter-set (XLA
  CPU runs that ~3x faster than a scatter-add). The database is padded to whole `unroll` groups; padding
  items go to an extra distance bin and count nowhere.
  """
  n_bins = bits + 2  # distances 0..k and a bin for padding items
  steps = jnp.arange(db_words.shape[0], dtype=jnp.int32).reshape(-1, unroll)

  def body(qw, ql):
    n_q = qw.shape[0]
    rows = jnp.arange(n_q, dtype=jnp.int32) * n_bins

    def item(j):
      """Flat counter index, relevance (int32 0/1) and distance of database item j for every query."""
      d = None
      for w in range(qw.shape[1]):
        x = lax.population_count(qw[:, w] ^ db_words[j, w]).astype(jnp.int32)
        d = x if d is None else d + x
      r = None
      for w in range(ql.shape[1]):
        x = ql[:, w] & db_lw[j, w]
        r = x if r is None else r | x
      valid = j < n_valid
      d = jnp.where(valid, d, bits + 1)
      return rows + d, ((r != 0) & valid).astype(jnp.int32), d

    def hist_step(carry, js):
      cnt, rcnt = carry
      for u in range(unroll):
        idx, r, _ = item(js[u])
        cnt = cnt.at[idx].set(cnt[idx] + 1)
        rcnt = rcnt.at[idx].set(rcnt[idx] + r)
      return (cnt, rcnt), None

    zeros = jnp.zeros((n_q * n_bins,), jnp.int32)
    (cnt, rcnt), _ = lax.scan(hist_step, (zeros, zeros), steps)
    cnt, rcnt = cnt.reshape(n_q, n_bins), rcnt.reshape(n_q, n_bins)
    counts, rel_counts = cnt[:, : bits + 1], rcnt[:, : bits + 1]
    if hist_only:
      return counts, rel_counts
    off = (jnp.cumsum(cnt, axis=1) - cnt).reshape(-1)
    roff = (jnp.cumsum(rcnt, axis=1) - rcnt).reshape(-1)
    rows_b = jnp.arange(n_q, dtype=jnp.int32) * (n_bounds + 1)
    zf = jnp.zeros((n_q,), jnp.float32)

    def rank_step(carry, js):
      off, roff, acc_r, comp_r, n_r, acc_b, comp_b, bucket = carry
      for u in range(unroll):
        idx, r, d = item(js[u])
        rank = off[idx] + 1
        c = roff[idx] + r
        off = off.at[idx].set(rank)
        roff = roff.at[idx].set(c)
        prec = c.astype(jnp.float32) / rank.astype(jnp.float32)
        in_r = (r > 0) & (rank <= cut_r)
        acc_r, comp_r = _kahan_add(acc_r, comp_r, jnp.where(in_r, prec, 0.0))
        n_r = n_r + in_r.astype(jnp.int32)
        if radius >= 0:
          acc_b, comp_b = _kahan_add(acc_b, comp_b, jnp.where((r > 0) & (d <= radius), prec, 0.0))
        if n_bounds:
          b_idx = rows_b + jnp.take(bucket_of_rank, rank, mode="clip")
          bucket = bucket.at[b_idx].set(bucket[b_idx] + r)
      return (off, roff, acc_r, comp_r, n_r, acc_b, comp_b, bucket), None

    bucket0 = jnp.zeros((n_q * (n_bounds + 1),), jnp.int32)
    init = (off, roff, zf, zf, jnp.zeros((n_q,), jnp.int32), zf, zf, bucket0)
    (_, _, acc_r, _, n_r, acc_b, _, bucket), _ = lax.scan(rank_step, init, steps)
    ap_r = jnp.where(n_r > 0, acc_r / jnp.maximum(n_r, 1), 0.0)
    n_ball = jnp.sum(rel_counts[:, : max(radius, 0) + 1], axis=1)
    ap_b = jnp.where(n_ball > 0, acc_b / jnp.maximum(n_ball, 1), 0.0)
    cum_b = jnp.cumsum(bucket.reshape(n_q, n_bounds + 1)[:, :n_bounds], axis=1)
    return counts, rel_counts, ap_r, n_r, ap_b, cum_b

  return ranking.map_queries(body, (q_words, q_lw), chunk)


# ----------------------------------------------------------------------------------------- FAISS backend

BACKENDS = ("auto", "jax", "faiss")
# FAISS IndexBinaryFlat: its heap k-NN (use_heap=True) is as fast as its counting k-NN up to k ~ 100 and slower
# beyond (measured on one core over 193,734 64-bit codes: 1.6x slower at k = 1,000, 2.5x at 5,000).
_FAISS_HEAP_MAX_K = 256
# Memory bound of one batch of FAISS's counting k-NN (queries x (code bits + 1) x k x 8 bytes).
_FAISS_COUNTING_BYTES = 1 << 28
# Queries per batch of FAISS's counting k-NN (FAISS's default is 32), per OpenMP thread count: measured at
# k = 5,000 over 193,734 codes, 8 queries ran 1.35x faster than 32 on one thread (smaller buffers), while two
# threads ran fastest with 64 (fewer parallel regions, each ending in a barrier).
_FAISS_BATCH_ONE_THREAD = 8
_FAISS_BATCH_PER_THREAD = 32
# Queries x k elements per FAISS call: bounds the (chunk, k) neighbour, relevance and AP buffers (~25 MB).
_FAISS_CHUNK_ELEMS = 1 << 20


def faiss_knn(
  q_words: ArrayLike, db_words: ArrayLike, k: int, *, use_heap: bool | None = None, chunk_elems: int = 0
):
  """Exact Hamming top-k with FAISS (`IndexBinaryFlat` over 64-bit-padded codes), in query chunks.

  Ties come out by database position, as in the JAX path: FAISS's counting k-NN (use_heap=False) scans the
  database in order and keeps the first k items of each distance, and its heap (use_heap=True) replaces only
  on a strictly smaller distance and orders equal distances by id (both checked in tests/test_faiss_backend.py).

  Args:
    q_words, db_words: packed uint32 codes (Q, W), (D, W) with zeroed padding bits (`as_code_words`).
    k: neighbours per query, 1 <= k <= D.
    use_heap: FAISS's k-NN algorithm (None: the heap for k <= 256, else counting, the faster one; the
      counting k-NN's query batch is set for the OpenMP thread count and bounded to 256 MiB of buffers).
    chunk_elems: queries x k per FAISS call (0: the default bound).

  Yields:
    (first query row, positions (c, k) int64, distances (c, k) int32) per chunk of queries.
  """
  faiss = ranking.faiss_module()
  if faiss is None:
    raise ImportError("the FAISS backend needs FAISS: pip install faiss-cpu")
  db = ranking.faiss_code_bytes(db_words)
  q = ranking.faiss_code_bytes(q_words)
  k = int(k)
  if not 1 <= k <= db.shape[0]:
    raise ValueError(f"k must be in [1, {db.shape[0]}]; got {k}")
  index = faiss.IndexBinaryFlat(8 * db.shape[1])
  index.add(db)
  index.use_heap = bool(k <= _FAISS_HEAP_MAX_K if use_heap is None else use_heap)
  if not index.use_heap:
    threads = faiss.omp_get_max_threads()
    batch = _FAISS_BATCH_ONE_THREAD if threads == 1 else _FAISS_BATCH_PER_THREAD * threads
    per_query = (8 * db.shape[1] + 1) * k * 8
    index.query_batch_size = int(np.clip(_FAISS_COUNTING_BYTES // per_query, 1, batch))
  step = ranking.balanced(q.shape[0], max(1, (chunk_elems or _FAISS_CHUNK_ELEMS) // k))
  for s in range(0, q.shape[0], step):
    dist, pos = index.search(q[s : s + step], k)
    yield s, pos, dist


def _relevant_np(q_lw: np.ndarray, db_lw: np.ndarray, pos: np.ndarray) -> np.ndarray:
  """(c, Wl) query label sets, (D, Wl) database label sets, (c, L) positions -> (c, L) bool relevance."""
  acc = None
  for w in range(q_lw.shape[1]):
    a = db_lw[:, w][pos] & q_lw[:, w, None]
    acc = a if acc is None else acc | a
  return acc != 0


def _ranked_numpy(rel: np.ndarray, cut_r: int, cut_ball: np.ndarray | None, ks, positions) -> dict:
  """AP@cut_r, relevant count in the top cut_r, AP in the ball (its size per query) and the relevant counts at
  `ks` / `positions` from the relevance of ranked prefixes (c, L) (float64 sums; float32 results like JAX)."""
  n, length = rel.shape
  cum = np.cumsum(rel, axis=1, dtype=np.int32)
  contrib = (cum * rel) * (1.0 / np.arange(1, length + 1))  # P@p at relevant positions, else 0 (float64)

  def ap(s, n_rel):
    return np.where(n_rel > 0, s / np.maximum(n_rel, 1), 0.0).astype(np.float32)

  n_rel = cum[:, cut_r - 1]
  out = {"ap": ap(contrib[:, :cut_r].sum(axis=1), n_rel), "n_rel": n_rel, "ap_ball": np.zeros(n, np.float32)}
  if cut_ball is not None:  # a cut per query (the ball sizes, 0 for an empty ball)
    i = (np.arange(n), np.clip(cut_ball - 1, 0, length - 1))
    has = cut_ball > 0
    out["ap_ball"] = ap(np.where(has, np.cumsum(contrib, axis=1)[i], 0.0), np.where(has, cum[i], 0))
  out["cum_k"] = cum[:, np.asarray(ks, np.int64) - 1] if ks else np.zeros((n, 0), np.int32)
  out["cum_p"] = cum[:, np.asarray(positions, np.int64) - 1] if positions else np.zeros((n, 0), np.int32)
  return out


def _faiss_ranked(qw, dw, ql, dl, *, length, r_eff, ball, ks, positions) -> dict[str, np.ndarray]:
  """`_evaluate_raw`'s ranked results from FAISS top-`length` lists (ties by position, exactly as JAX)."""
  q_lw, db_lw = np.asarray(ql), np.asarray(dl)
  parts = []
  for s, pos, _ in faiss_knn(qw, dw, length):
    rel = _relevant_np(q_lw[s : s + pos.shape[0]], db_lw, pos)
    parts.append(
      _ranked_numpy(rel, r_eff, None if ball is None else ball[s : s + pos.shape[0]], ks, positions)
    )
  return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def resolve_backend(backend: str, x: Array, length: int, n_db: int, method: str = "auto") -> str:
  """Which backend ranks a prefix of `length` positions of a database of `n_db` items.

  'faiss' serves every prefix shorter than the database (the whole ranking, e.g. mAP@all, stays JAX: its
  counting scans are faster there); 'auto' picks FAISS only where it is installed, the JAX arrays `x` live on
  the CPU, no JAX `method` was named, and the prefix is longer than the JAX strided top_k covers (length x 4
  x 16 > n_db: top-100 search over 1M codes stays JAX, which measured faster) and at most an eighth of the
  database. FAISS measured faster at length = n_db / 39 (mAP@5000 over 193,734 items) and slower at n_db
  (mAP@all); n_db / 8 is a conservative bound between the two, not a measured crossover. Else 'jax'.
  """
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {' | '.join(BACKENDS)}; got {backend!r}")
  if backend == "faiss" and ranking.faiss_module() is None:
    raise ImportError("backend='faiss' needs FAISS, which is not installed: pip install faiss-cpu")
  if length >= n_db or backend == "jax":
    return "jax"
  if backend == "faiss":
    return "faiss"
  on_cpu = next(iter(x.devices())).platform == "cpu"
  fits = length * 4 * ranking._GROUPS > n_db and length * 8 <= n_db
  return "faiss" if method == "auto" and on_cpu and fits and ranking.faiss_module() is not None else "jax"


# ---------------------------------------------------------------------------------------- public metrics


def hamming_ranking(
  q_codes: ArrayLike, db_codes: ArrayLike, *, bits: int, length: int = 0, query_chunk: int = 256
) -> tuple[Array, Array]:
  """Stable Hamming ranking: database indices by ascending distance, ties by ascending index.

  Args:
    q_codes: (Q, W) packed uint32 or (Q, bits) bool.
    db_codes: (D, W) packed uint32 or (D, bits) bool.
    bits: code length k.
    length: number of ranked positions L to return (0 or > D: all D).
    query_chunk: queries per device step.

  Returns:
    (Q, L) int32 database indices and (Q, L) int32 distances, in ranking order.
  """
  qw, dw = as_code_words(q_codes, bits), as_code_words(db_codes, bits)
  n_db = dw.shape[0]
  length = n_db if length <= 0 or length > n_db else int(length)
  return _ranking_device(qw, dw, length=length, chunk=ranking.chunk_size(query_chunk, qw.shape[0], n_db, dw))


METHODS = ("auto", "counting", "sort")
# The counting method's memory is O(chunk x k): it takes big chunks to amortise its per-item steps.
_COUNTING_MIN_CHUNK = 2048
_UNROLL = 4  # database items per scan step of the counting method


def _resolve_method(method: str, x: Array, length: int, n_db: int) -> str:
  """'auto': on CPU the counting method unless the ranked prefix the metrics need is shorter than D/64 (a
  top_k per query is then cheaper: measured crossover near D/60); on accelerators the sort method (the
  counting scans are latency bound there)."""
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}; got {method!r}")
  if method != "auto":
    return method
  on_cpu = next(iter(x.devices())).platform == "cpu"
  return "counting" if on_cpu and length * 4 * ranking._GROUPS > n_db else "sort"


def _effective_r(R: int, n_db: int) -> int:
  return n_db if R <= 0 or R >= n_db else int(R)


def _evaluate_raw(
  qw: Array,
  dw: Array,
  ql: Array,
  dl: Array,
  *,
  bits: int,
  r_eff: int,
  radius: int,
  ks: tuple[int, ...],
  positions: tuple[int, ...],
  method: str,
  query_chunk: int,
  hist_only: bool = False,
  backend: str = "jax",
) -> dict[str, Any]:
  """Per-query raw results: histograms, AP@R, relevant count in the top R, AP in the ball of `radius` (< 0:
  skipped), relevant counts in the top K for K in `ks` and in `positions` (all <= D); 'backend' names what
  ranked them ('faiss': FAISS top-L lists, L the longest prefix needed, the histograms still by JAX)."""
  kw = dict(bits=bits, r_eff=r_eff, radius=radius, ks=ks, positions=positions, method=method)
  n_db = dw.shape[0]
  length = max([r_eff, *ks, *positions])
  if hist_only or resolve_backend(backend, dw, length, n_db, method) == "jax":
    return {
      **_evaluate_jax(qw, dw, ql, dl, **kw, query_chunk=query_chunk, hist_only=hist_only),
      "backend": "jax",
    }
  out, ball = {}, None
  if radius >= 0:
    out = _evaluate_jax(qw, dw, ql, dl, **kw, query_chunk=query_chunk, hist_only=True)
    ball = out["counts"][:, : radius + 1].sum(axis=1)
    length = max(length, int(ball.max(initial=0)))
    if length >= n_db:  # a ball holds the whole database: JAX ranks it all
      return {**_evaluate_jax(qw, dw, ql, dl, **kw, query_chunk=query_chunk), "backend": "jax"}
  out.update(_faiss_ranked(qw, dw, ql, dl, length=length, r_eff=r_eff, ball=ball, ks=ks, positions=positions))
  return {**out, "backend": "faiss"}


def _evaluate_jax(
  qw: Array,
  dw: Array,
  ql: Array,
  dl: Array,
  *,
  bits: int,
  r_eff: int,
  radius: int,
  ks: tuple[int, ...],
  positions: tuple[int, ...],
  method: str,
  query_chunk: int,
  hist_only: bool = False,
) -> dict[str, np.ndarray]:
  """`_evaluate_raw` by either JAX method."""
  n_q, n_db = qw.shape[0], dw.shape[0]
  length = max([r_eff, *ks, *positions])
  method = _resolve_method(method, dw, n_db if hist_only or radius >= 0 else length, n_db)
  if method == "counting":
    pad = (-n_db) % _UNROLL
    bounds = tuple(sorted(set(ks) | set(positions)))
    table = np.searchsorted(np.asarray(bounds, np.int64), np.arange(n_db + 2), side="left").astype(np.int32)
    res = _counting_device(
      qw,
      ql,
      jnp.pad(dw, ((0, pad), (0, 0))),
      jnp.pad(dl, ((0, pad), (0, 0))),
      jnp.int32(n_db),
      jnp.int32(r_eff),
      jnp.asarray(table),
      bits=bits,
      radius=int(radius),
      n_bounds=len(bounds),
      hist_only=hist_only,
      chunk=ranking.balanced(n_q, max(query_chunk, _COUNTING_MIN_CHUNK)),
      unroll=_UNROLL,
    )
    res = [np.asarray(x) for x in res]
    out = {"counts": res[0].astype(np.int64), "rel_counts": res[1].astype(np.int64)}
    if hist_only:
      return out
    col = {b: i for i, b in enumerate(bounds)}
    cum_b = res[5]
    out.update(
      ap=res[2],
      n_rel=res[3],
      ap_ball=res[4],
      cum_k=cum_b[:, [col[k] for k in ks]],
      cum_p=cum_b[:, [col[p] for p in positions]],
    )
    return out
  chunk = ranking.chunk_size(query_chunk, n_q, n_db, dw)
  out = {}
  ball = np.zeros(n_q, np.int64)
  if hist_only or radius >= 0:
    counts, rel_counts = _histograms_device(qw, ql, dw, dl, bits=bits, chunk=chunk)
    out = {"counts": np.asarray(counts, np.int64), "rel_counts": np.asarray(rel_counts, np.int64)}
    if hist_only:
      return out
    ball = out["counts"][:, : radius + 1].sum(axis=1)
    ball_max = int(ball.max(initial=0))
    if ball_max > length:
      # Round the data-dependent ball size up to a power of two so that evaluations reuse compilations.
      length = min(n_db, 1 << int(np.ceil(np.log2(ball_max))))
  res = _ranked_device(
    qw,
    ql,
    jnp.full((n_q,), r_eff, jnp.int32),
    jnp.asarray(ball, jnp.int32),
    dw,
    dl,
    length=length,
    ks=ks,
    positions=positions,
    with_ball=radius >= 0,
    chunk=chunk,
  )
  ap, n_rel, ap_ball, cum_k, cum_p = (np.asarray(x) for x in res)
  out.update(ap=ap, n_rel=n_rel, ap_ball=ap_ball, cum_k=cum_k, cum_p=cum_p)
  return out


def distance_histograms(
  q_codes: ArrayLike,
  db_codes: ArrayLike,
  q_labels: ArrayLike,
  db_labels: ArrayLike,
  *,
  bits: int,
  query_chunk: int = 256,
  method: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
  """Per-query histograms of Hamming distances over the database, all items and relevant items.

  Returns:
    counts (Q, k+1) int64: items at distance d; rel_counts (Q, k+1) int64: relevant items at distance d.
  """
  qw, dw, ql, dl = _check_inputs(q_codes, db_codes, q_labels, db_labels, bits)
  out = _evaluate_raw(
    qw,
    dw,
    ql,
    dl,
    bits=bits,
    r_eff=dw.shape[0],
    radius=-1,
    ks=(),
    positions=(),
    method=method,
    query_chunk=query_chunk,
    hist_only=True,
  )
  return out["counts"], out["rel_counts"]


def average_precision(
  q_codes: ArrayLike,
  db_codes: ArrayLike,
  q_labels: ArrayLike,
  db_labels: ArrayLike,
  *,
  bits: int,
  R: int = 0,
  query_chunk: int = 256,
  method: str = "auto",
  backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
  """Per-query AP@R under the stable ranking.

  Args:
    q_codes, db_codes: packed uint32 (N, W) or bool (N, bits) codes.
    q_labels, db_labels: (N, C) multi-hot (or 1-D class ids).
    bits: code length k.
    R: rank cutoff (0 or >= D: whole database).
    query_chunk: queries per device step.
    method: 'counting' (two scans over the database, no sort: fastest on CPU for long rankings), 'sort'
      (stable top_k / sort of each query's distances) or 'auto' (counting on CPU when R > D / 64, else sort).
      Both are exact and give the same numbers.
    backend: 'jax', 'faiss' (FAISS top-R lists, then the AP in NumPy, for R < D; mAP@all stays JAX) or 'auto'
      (FAISS where it is installed and measured faster, see `resolve_backend`). Same numbers either way.

  Returns:
    ap (Q,) float32 (0 for a query without relevant item in the top R) and n_rel (Q,) int32, the number of
    relevant items in the top R.
  """
  qw, dw, ql, dl = _check_inputs(q_codes, db_codes, q_labels, db_labels, bits)
  out = _evaluate_raw(
    qw,
    dw,
    ql,
    dl,
    bits=bits,
    r_eff=_effective_r(R, dw.shape[0]),
    radius=-1,
    ks=(),
    positions=(),
    method=method,
    query_chunk=query_chunk,
    backend=backend,
  )
  return out["ap"], out["n_rel"]


def _mean_kept(values: np.ndarray, kept: np.ndarray | None) -> float:
  if kept is not None:
    values = values[kept]
  return float(np.mean(values, dtype=np.float64)) if values.size else 0.0


def tie_order(ids: ArrayLike, seed: int = 0) -> np.ndarray:
  """(D,) int64 permutation of a database that puts its items in a seeded pseudo-random order of their ids.

  Ranking the permuted database with the stable (by-position) convention breaks every distance tie in this
  order: a function of the ids and the seed only, so any storage order of the same items gives the same
  ranking, and no class or file-name order leaks into it. Hash: splitmix64 of (id, seed); equal hashes fall
  back to the id.
  """
  x = np.asarray(ids, np.int64).astype(np.uint64)
  with np.errstate(over="ignore"):
    x = x + np.uint64(0x9E3779B97F4A7C15) * (np.uint64(seed) + np.uint64(1))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
  return np.lexsort((np.asarray(ids, np.int64), x)).astype(np.int64)


def mean_average_precision(
  q_codes: ArrayLike,
  db_codes: ArrayLike,
  q_labels: ArrayLike,
  db_labels: ArrayLike,
  *,
  bits: int,
  R: int = 0,
  drop_no_relevant: bool = False,
  query_chunk: int = 256,
  method: str = "auto",
  backend: str = "auto",
) -> float:
  """mAP@R under the stable ranking (see the module docstring for every convention).

  Args:
    q_codes, db_codes: packed uint32 (N, W) or bool (N, bits) codes.
    q_labels, db_labels: (N, C) multi-hot (or 1-D class ids).
    bits: code length k.
    R: rank cutoff (0 or >= D: whole database, i.e. mAP@all).
    drop_no_relevant: leave queries without a relevant item in the top R out of the mean (default: AP 0).
    query_chunk: queries per device step.
    method: 'auto' | 'counting' | 'sort' (see `average_precision`).
    backend: 'auto' | 'jax' | 'faiss' (see `average_precision`).

  Returns:
    The mean AP as a Python float.
  """
  ap, n_rel = average_precision(
    q_codes,
    db_codes,
    q_labels,
    db_labels,
    bits=bits,
    R=R,
    query_chunk=query_chunk,
    method=method,
    backend=backend,
  )
  return _mean_kept(ap, n_rel > 0 if drop_no_relevant else None)


def ball_metrics(counts: np.ndarray, rel_counts: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-query precision and recall within Hamming radius `radius` from the distance histograms.

  Args:
    counts: (Q, k+1) items per distance; rel_counts: (Q, k+1) relevant items per distance.
    radius: Hamming radius r (>= 0; >= k means the whole database).

  Returns:
    precision (Q,) float64 (empty ball: 0) and recall (Q,) float64 (no relevant item: 0).
  """
  r = min(int(radius), counts.shape[1] - 1)
  n_ball = counts[:, : r + 1].sum(axis=1)
  rel_ball = rel_counts[:, : r + 1].sum(axis=1)
  n_rel = rel_counts.sum(axis=1)
  precision = np.where(n_ball > 0, rel_ball / np.maximum(n_ball, 1), 0.0)
  recall = np.where(n_rel > 0, rel_ball / np.maximum(n_rel, 1), 0.0)
  return precision, recall


def pr_curve_by_radius(counts: np.ndarray, rel_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean precision and recall within Hamming radius r for r = 0..k (from `distance_histograms`).

  Returns:
    precision (k+1,) float64 and recall (k+1,) float64.
  """
  k1 = counts.shape[1]
  p, r = zip(*(ball_metrics(counts, rel_counts, rad) for rad in range(k1)))
  return np.mean(np.stack(p), axis=1), np.mean(np.stack(r), axis=1)


def expected_average_precision(
  counts: np.ndarray, rel_counts: np.ndarray, R: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Exact expected AP@R when the order inside each tie group is uniformly random (float64, host).

  Notation for one query: group t holds the n items at distance t, r of them relevant; a = items at smaller
  distances, b = relevant items at smaller distances; H(x) = sum_{i=1..x} 1/i. Position m (1-based) inside
  the group is relevant with probability r/n and, given that, the earlier m-1 group positions hold
  (m-1)(r-1)/(n-1) relevant items in expectation, so by linearity the expected sum of P@p over the group's
  relevant items is

    E_t(n, r, a, b) = (r/n) * sum_{m=1..n} (b + 1 + (m-1) beta) / (a + m),  beta = (r-1)/(n-1) (0 if n = 1)
                    = (r/n) * [beta n + (b + 1 - beta (1 + a)) (H(a+n) - H(a))].

  Groups entirely inside the top R give S = sum_t E_t and B = their relevant count. If R cuts a group
  (a < R < a + n, u = R - a of its positions inside), the number X of relevant items among those u positions
  is hypergeometric(n, r, u) and, given X = x, the u positions are a random arrangement of x relevant items,
  contributing E_t(u, x, a, B). The AP normaliser B + X is then random, so

    E[AP@R] = sum_x P(X = x) (S + E_t(u, x, a, B)) / (B + x)      (a term with B + x = 0 is 0),

  and E[AP@R] = S / B when no group is cut (R = 0: the whole database).

  Args:
    counts: (Q, k+1) items per distance; rel_counts: (Q, k+1) relevant items per distance.
    R: rank cutoff (0 or >= D: whole database).

  Returns:
    expected AP (Q,) float64 and the probability (Q,) float64 that the top R holds a relevant item (a query
    with probability 0 is the one `drop_no_relevant` leaves out).
  """
  counts = np.asarray(counts, np.int64)
  rel_counts = np.asarray(rel_counts, np.int64)
  n_db = int(counts[0].sum()) if counts.size else 0
  r_eff = _effective_r(R, n_db)
  harm = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n_db + 1, dtype=np.float64))])

  def group_sum(n, r, a, b):
    n, a = np.asarray(n, np.int64), np.asarray(a, np.int64)
    nf, rf, af = n.astype(np.float64), np.asarray(r, np.float64), a.astype(np.float64)
    beta = np.where(nf > 1, (rf - 1) / np.maximum(nf - 1, 1), 0.0)
    val = (rf / np.maximum(nf, 1)) * (beta * nf + (b + 1 - beta * (1 + af)) * (harm[a + n] - harm[a]))
    return np.where(rf > 0, val, 0.0)

  ap = np.zeros(counts.shape[0])
  p_any = np.zeros(counts.shape[0])
  for q in range(counts.shape[0]):
    n, r = counts[q], rel_counts[q]
    a = np.concatenate([[0], np.cumsum(n)[:-1]])
    b = np.concatenate([[0], np.cumsum(r)[:-1]])
    full = a + n <= r_eff
    s = float(group_sum(n[full], r[full], a[full], b[full]).sum())
    b_full = int(r[full].sum())
    cut = np.nonzero((a < r_eff) & (a + n > r_eff))[0]
    if cut.size == 0 or r[cut[0]] == 0:
      ap[q] = s / b_full if b_full > 0 else 0.0
      p_any[q] = float(b_full > 0)
      continue
    g = cut[0]
    n_g, r_g, a_g, u = int(n[g]), int(r[g]), int(a[g]), int(r_eff - a[g])
    x = np.arange(max(0, u - (n_g - r_g)), min(r_g, u) + 1)
    # Hypergeometric pmf by the ratio recursion P(x+1)/P(x) = (r-x)(u-x) / ((x+1)(n-r-u+x+1)), normalised.
    xf = x[:-1].astype(np.float64)
    log_ratio = np.log((r_g - xf) * (u - xf)) - np.log((xf + 1) * (n_g - r_g - u + xf + 1))
    logp = np.concatenate([[0.0], np.cumsum(log_ratio)])
    pmf = np.exp(logp - logp.max())
    pmf /= pmf.sum()
    c = group_sum(np.full(x.shape, u), x, a_g, b_full)
    denom = b_full + x
    vals = np.where(denom > 0, (s + c) / np.maximum(denom, 1), 0.0)
    ap[q] = float(np.dot(pmf, vals))
    p_any[q] = 1.0 if b_full > 0 else float(1.0 - (pmf[0] if x[0] == 0 else 0.0))
  return ap, p_any


def _rank_positions(n_db: int, points: int, max_pos: int) -> tuple[int, ...]:
  top = n_db if max_pos <= 0 else min(int(max_pos), n_db)
  if points <= 0:
    return ()
  return tuple(
    int(p) for p in np.unique(np.round(np.linspace(top / points, top, points)).astype(np.int64)) if p >= 1
  )


def evaluate_codes(
  q_codes: ArrayLike,
  db_codes: ArrayLike,
  q_labels: ArrayLike,
  db_labels: ArrayLike,
  *,
  bits: int,
  R: int = 0,
  topk: Sequence[int] = DEFAULT_TOPK,
  radius: int = 2,
  drop_no_relevant: bool = False,
  expected_ties: bool = False,
  query_chunk: int = 256,
  pr_rank_points: int = 100,
  pr_rank_max: int = 0,
  method: str = "auto",
  backend: str = "auto",
) -> dict[str, Any]:
  """Every retrieval metric of one query set against one database (two chunked device passes).

  Args:
    q_codes, db_codes: packed uint32 (N, ceil(bits/32)) or bool (N, bits) codes.
    q_labels, db_labels: (N, C) multi-hot float32/bool (or 1-D class ids).
    bits: code length k.
    R: mAP cutoff (0 or >= D: mAP@all).
    topk: K values of the precision@K curve (K > D is evaluated at D).
    radius: Hamming radius of the ball metrics (default 2).
    drop_no_relevant: leave queries without relevant item in the top R out of 'map' and 'map_expected_ties'
      (default False: they count as AP 0). The ball and curve metrics always average over all queries.
    expected_ties: also report the expected mAP@R under random order inside tie groups.
    query_chunk: queries per device step (sort method: capped so that chunk x D <= 2^26 on CPU; counting
      method: at least 2048, its memory being O(chunk x k)).
    pr_rank_points: number of rank positions of the PR-by-rank curve (0: skip it); they are spread evenly over
      [1, pr_rank_max] (pr_rank_max = 0: the whole database; free with the counting method, a full ranking
      of every query with the sort method).
    pr_rank_max: last rank position of the PR-by-rank curve (0: D).
    method: 'auto' | 'counting' | 'sort' (see `average_precision`); the counting method computes every
      number in two scans whatever R and the curves ask for.
    backend: 'auto' | 'jax' | 'faiss' (see `average_precision`): with FAISS, one JAX histogram scan and FAISS
      top-L lists, L the longest ranked prefix any metric needs (R, the largest K, the last PR-by-rank
      position, the largest Hamming ball); JAX ranks everything when L reaches D (mAP@all, or a PR-by-rank
      curve over the whole database, the default).

  Returns:
    dict of numpy values: scalars 'map' (mAP@R), 'precision_radius', 'recall_radius', 'map_radius' (the ball
    of `radius`), 'map_expected_ties' (if requested); per-query 'ap', 'ap_kept' (bool, the queries in the
    mAP mean), 'ap_expected_ties' (if requested); curves 'precision_at_k_k', 'precision_at_k',
    'pr_rank_position', 'pr_rank_precision', 'pr_rank_recall', 'pr_radius_radius', 'pr_radius_precision',
    'pr_radius_recall'; and 'backend', the backend that ranked ('jax' or 'faiss', a string).
  """
  qw, dw, ql, dl = _check_inputs(q_codes, db_codes, q_labels, db_labels, bits)
  n_q, n_db = qw.shape[0], dw.shape[0]
  r_eff = _effective_r(R, n_db)
  rad = min(max(int(radius), 0), bits)
  ks = tuple(sorted({int(k) for k in topk if int(k) > 0}))
  ks_eff = tuple(min(k, n_db) for k in ks)
  positions = _rank_positions(n_db, pr_rank_points, pr_rank_max)
  raw = _evaluate_raw(
    qw,
    dw,
    ql,
    dl,
    bits=bits,
    r_eff=r_eff,
    radius=rad,
    ks=ks_eff,
    positions=positions,
    method=method,
    query_chunk=query_chunk,
    backend=backend,
  )
  counts, rel_counts = raw["counts"], raw["rel_counts"]
  n_rel_all = rel_counts.sum(axis=1)
  ap, n_rel_r, ap_ball = raw["ap"], raw["n_rel"], raw["ap_ball"]
  cum_k, cum_p = raw["cum_k"], raw["cum_p"]
  kept = n_rel_r > 0 if drop_no_relevant else np.ones(n_q, bool)
  p_ball, r_ball = ball_metrics(counts, rel_counts, rad)
  pr_p, pr_r = pr_curve_by_radius(counts, rel_counts)
  cum_k, cum_p = np.asarray(cum_k, np.float64), np.asarray(cum_p, np.float64)
  pos = np.asarray(positions, np.float64)
  out: dict[str, Any] = {
    "map": _mean_kept(ap, kept),
    "precision_radius": float(p_ball.mean()),
    "recall_radius": float(r_ball.mean()),
    "map_radius": float(np.mean(np.asarray(ap_ball), dtype=np.float64)),
    "ap": ap,
    "ap_kept": kept,
    "precision_at_k_k": np.asarray(ks, np.int64),
    "precision_at_k": (cum_k / np.maximum(np.asarray(ks_eff, np.float64), 1)).mean(axis=0),
    "pr_rank_position": np.asarray(positions, np.int64),
    "pr_rank_precision": (cum_p / np.maximum(pos, 1)).mean(axis=0),
    "pr_rank_recall": np.where(n_rel_all[:, None] > 0, cum_p / np.maximum(n_rel_all[:, None], 1), 0.0).mean(
      0
    ),
    "pr_radius_radius": np.arange(bits + 1, dtype=np.int64),
    "pr_radius_precision": pr_p,
    "pr_radius_recall": pr_r,
    "backend": raw["backend"],
  }
  if expected_ties:
    eap, p_any = expected_average_precision(counts, rel_counts, r_eff)
    out["map_expected_ties"] = _mean_kept(eap, p_any > 0 if drop_no_relevant else None)
    out["ap_expected_ties"] = eap
  return out
