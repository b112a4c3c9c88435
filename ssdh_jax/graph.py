"""The online in-batch graph of SSDH and the uniform index sampling the losses rely on.

Every function here is selection: its outputs are integer indices or masks, computed from detached inputs, so
nothing in this module is ever differentiated. All randomness comes from per-anchor random words drawn from
fold_in(key, global row) (`anchor_bits`), so a row's choices never depend on which shard (or which batch
position) computes them.

Sorting convention (the release's `std::sort` of (distance, j) pairs): rows are ordered by ascending squared
distance, ties broken by ascending row id. The anchor's distance to itself is exactly 0, so position 0 is the
anchor unless another row has an identical feature and a smaller id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from jax import Array

from ssdh_jax.registry import Registry

_HIGHEST = jax.lax.Precision.HIGHEST


def pairwise_sq_dists(x: Array, y: Array) -> Array:
  """Squared Euclidean distances ‖x_i − y_j‖² in float32 via the Gram form, clamped at 0.

  Args:
    x: (n, d) any float dtype.
    y: (m, d).

  Returns:
    (n, m) float32. The matmul runs at HIGHEST precision: default TPU/GPU precision (bf16/TF32 passes) would
    reorder near neighbours.
  """
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  xx = jnp.sum(x * x, axis=-1)
  yy = jnp.sum(y * y, axis=-1)
  d = xx[:, None] + yy[None, :] - 2.0 * jnp.matmul(x, y.T, precision=_HIGHEST)
  return jnp.maximum(d, 0.0)


def knn_size(n: int, knn_k: int) -> int:
  """Number of leading sorted positions the neighbour is drawn from: min(knn_k, n // 3), at least 1."""
  return max(1, min(int(knn_k), n // 3))


def scaled_window(n: int, window: tuple[int, int], ref_n: int) -> tuple[int, int]:
  """The release's non-neighbour window [a, b) defined at batch size `ref_n`, scaled linearly to `n`.

  Rounding: both ends are floored, lo = ⌊a·n/ref_n⌋ and hi = ⌊b·n/ref_n⌋ (exact at n = ref_n and at every
  multiple of ref_n for which a·n/ref_n is integral, e.g. (114, 124) -> (228, 248) at 256). The result is then
  clipped to valid sorted positions: 0 ≤ lo < hi ≤ n, widening to one position if the floors coincide.

  Args:
    n: global batch size.
    window: (a, b) at `ref_n` (config.loss.neg_window).
    ref_n: batch size the window is defined at (config.loss.window_ref_n).

  Returns:
    (lo, hi) Python ints; the non-neighbour is drawn uniformly from sorted positions lo..hi-1.
  """
  a, b = int(window[0]), int(window[1])
  if not 0 <= a < b:
    raise ValueError(f"neg_window must satisfy 0 <= a < b, got {window}")
  lo = (a * n) // int(ref_n)
  hi = (b * n) // int(ref_n)
  hi = min(max(hi, lo + 1), n)
  lo = min(lo, hi - 1)
  return max(lo, 0), hi


def farthest_third_window(n: int) -> tuple[int, int]:
  """Single-label variant: the farthest third of the batch, sorted positions [n − n//3, n) (≥ 1 position)."""
  return n - max(1, n // 3), n


def graph_window(n: int, cfg: Mapping) -> tuple[int, int]:
  """Non-neighbour window for the configured variant (config.loss.variant)."""
  if cfg.variant == "single_label":
    return farthest_third_window(n)
  if cfg.variant == "multi_label":
    return scaled_window(n, tuple(cfg.neg_window), cfg.window_ref_n)
  raise ValueError(f"unknown loss variant {cfg.variant!r}; expected 'multi_label' or 'single_label'")


def graph_features(outputs: Mapping[str, Array], cfg: Mapping) -> Array:
  """Detached float32 features the graph is built on: (N, k) 'codes' (release) or (N, F) 'features' (fc7)."""
  name = cfg.graph_feature
  key = {"codes": "codes", "features": "features", "fc7": "features"}.get(name)
  if key is None:
    raise ValueError(f"unknown graph_feature {name!r}; expected 'codes' or 'features'")
  return jax.lax.stop_gradient(outputs[key].astype(jnp.float32))


def anchor_bits(key: Array, global_rows: Array, num: int) -> Array:
  """Per-anchor random words: row a gets jax.random.bits(fold_in(key, global_rows[a]), (num,)).

  One threefry call for all of an anchor's choices (each extra random call costs XLA compile time), so an
  anchor's draws depend only on (key, its global row), never on the shard or batch position computing them.

  Args:
    key: PRNG key.
    global_rows: (n,) int global row ids of the anchors.
    num: words per anchor.

  Returns:
    (n, num) uint32.
  """
  return jax.vmap(lambda r: jax.random.bits(jax.random.fold_in(key, r), (num,), jnp.uint32))(global_rows)


def uniform_index(bits: Array, count: Array | int) -> Array:
  """Uniform integer in [0, count) from uint32 words: bits mod count (bias ≤ count / 2^32). count ≥ 1."""
  count = jnp.maximum(jnp.asarray(count, jnp.uint32), 1)
  return (bits % count).astype(jnp.int32)


def _anchor_dists(feats: Array, anchor_ids: Array) -> Array:
  feats = jax.lax.stop_gradient(feats)
  d = pairwise_sq_dists(feats[anchor_ids], feats)
  return d.at[jnp.arange(anchor_ids.shape[0]), anchor_ids].set(
    0.0
  )  # exact, as the release's direct difference


def sorted_neighbours(feats: Array, anchor_ids: Array, row_ids: Array) -> Array:
  """Rows of the batch fully sorted by distance to each anchor (O(n·N log N); a reference for tests and
  diagnostics: the loss uses `window_neighbours`, which only extracts the positions it samples from).

  Args:
    feats: (N, F) graph features (detached).
    anchor_ids: (n,) int positions of the anchors in the batch.
    row_ids: (N,) int unique global ids of the rows (tie-break key, so the order is permutation-invariant).

  Returns:
    (n, N) int32 batch positions: entry [a, q] is the row at sorted position q for anchor a.
  """
  n, big_n = anchor_ids.shape[0], feats.shape[0]
  d = _anchor_dists(feats, anchor_ids)
  rid = jnp.broadcast_to(row_ids.astype(jnp.int32)[None, :], (n, big_n))
  pos = jnp.broadcast_to(jnp.arange(big_n, dtype=jnp.int32)[None, :], (n, big_n))
  _, _, order = jax.lax.sort((d, rid, pos), dimension=1, num_keys=2)
  return order


def window_neighbours(
  feats: Array, anchor_ids: Array, row_ids: Array, k_size: int, window: tuple[int, int]
) -> tuple[Array, Array]:
  """The rows at sorted positions [0, k_size) and [lo, hi) for each anchor, without a full sort.

  Same order as `sorted_neighbours` ((distance, row id) ascending), but via two `lax.top_k` calls, which on
  CPU are one to two orders of magnitude faster than sorting n rows of N (XLA's CPU sort calls a comparator
  per comparison). top_k puts the lower index first among equal values, so columns are first permuted into
  row-id order; a window in the far half is read from the top_k of the column-reversed distances, whose
  ties then come out highest-id-first, i.e. lowest-id-first once the list is reversed into ascending order.

  Args:
    feats: (N, F) graph features (detached here).
    anchor_ids: (n,) int anchor positions.
    row_ids: (N,) int unique global row ids.
    k_size: number of leading positions.
    window: static (lo, hi), 0 ≤ lo < hi ≤ N.

  Returns:
    near: (n, k_size) int32 batch positions at sorted positions 0..k_size-1.
    far: (n, hi - lo) int32 batch positions at sorted positions lo..hi-1.
  """
  big_n = feats.shape[0]
  lo, hi = window
  canon = jnp.argsort(row_ids).astype(jnp.int32)  # canonical column c is batch position canon[c]
  dc = _anchor_dists(feats, anchor_ids)[:, canon]
  near = canon[jax.lax.top_k(-dc, k_size)[1]]
  # Columns of the top_k output are picked with a constant index array, not a slice: XLA:CPU turns a sliced
  # top_k into a full sort (measured 6x slower at N = 1024).
  if hi <= big_n - lo:  # the window is nearer the front: ascending top_k up to hi
    asc = jax.lax.top_k(-dc, hi)[1]
    far = canon[jnp.take(asc, jnp.arange(lo, hi), axis=1)]
  else:  # descending from the back: desc[:, t] has ascending rank N-1-t, reversed column c is canonical N-1-c
    desc = jax.lax.top_k(dc[:, ::-1], big_n - lo)[1]
    far = canon[big_n - 1 - jnp.take(desc, big_n - 1 - jnp.arange(lo, hi), axis=1)]
  return near.astype(jnp.int32), far.astype(jnp.int32)


def sample_graph_pairs(
  feats: Array,
  bits: Array,
  anchor_ids: Array,
  row_ids: Array,
  *,
  k_size: int,
  window: tuple[int, int],
  classes: Array | None = None,
) -> dict[str, Array]:
  """Draws each anchor's graph neighbour and non-neighbour.

  Neighbour: uniform among sorted positions [0, k_size); non-neighbour: uniform among [window[0], window[1]).
  With `classes` (the class-agreement filter), the neighbour is drawn only among those positions whose row
  shares a class with the anchor (the anchor itself always does, so one always exists) and the non-neighbour
  only among those sharing none (there may be none: 'neg_valid' False).

  Args:
    feats: (N, F) graph features.
    bits: (n, 2) uint32 per-anchor random words (neighbour, non-neighbour), see `anchor_bits`.
    anchor_ids: (n,) int anchor positions.
    row_ids: (N,) int unique global row ids.
    k_size: see `knn_size`.
    window: (lo, hi) static sorted-position window, see `graph_window`.
    classes: optional (N, C) bool class sets per row (e.g. one-hot predicted classes); detached here.

  Returns:
    dict of (n,) arrays: 'pos', 'neg' int32 batch positions, 'pos_rank', 'neg_rank' int32 sorted positions
    drawn, 'neg_valid' bool (all True without `classes`).
  """
  lo, hi = window
  near, far = window_neighbours(feats, anchor_ids, row_ids, k_size, window)
  if classes is None:
    q_pos = uniform_index(bits[:, 0], k_size)
    q_neg = lo + uniform_index(bits[:, 1], hi - lo)
    neg_valid = jnp.ones(q_pos.shape, bool)
  else:
    # Candidates are already in sorted order, so their column index is the tie-free draw order; with every
    # candidate kept this draws exactly the unfiltered positions (bits mod count).
    cls = jax.lax.stop_gradient(jnp.asarray(classes, bool))
    cls_a = cls[anchor_ids][:, None, :]
    agree = lambda cand: jnp.any(cls_a & cls[cand], axis=-1)  # (n, K) -> (n, K) bool
    q_pos, _ = masked_choice(bits[:, :1], agree(near), jnp.arange(k_size))
    q_far, neg_valid = masked_choice(bits[:, 1:], ~agree(far), jnp.arange(hi - lo))
    q_pos, q_neg = q_pos[:, 0], lo + q_far[:, 0]
  pos = jnp.take_along_axis(near, q_pos[:, None], axis=1)[:, 0]
  neg = jnp.take_along_axis(far, (q_neg - lo)[:, None], axis=1)[:, 0]
  return {"pos": pos, "neg": neg, "pos_rank": q_pos, "neg_rank": q_neg, "neg_valid": neg_valid}


GraphBuilder = Callable[..., dict[str, Array]]  # the signature of `sample_graph_pairs`
_BUILDERS: Registry[GraphBuilder] = Registry(
  "graph builder", {"knn_window": sample_graph_pairs}, how="ssdh_jax.graph.register_graph_builder(name, fn)"
)


def register_graph_builder(name: str, fn: GraphBuilder) -> GraphBuilder:
  """Registers `fn` as the online graph for config.loss.graph = name (`--config.loss.graph=name`). Returns fn.

  Called under jit once per step, as `fn(feats, bits, anchor_ids, row_ids, *, k_size, window, classes)`:
    feats: (N, F) float32 detached graph features of the global batch (config.loss.graph_feature: the codes,
      or the backbone features).
    bits: (n, 2) uint32 random words per anchor (column 0 for the neighbour, 1 for the non-neighbour), drawn
      from the anchor's global row id: the only randomness to use.
    anchor_ids: (n,) int32 batch positions of the anchors this call draws for; row_ids: (N,) int32 global ids.
    k_size: `knn_size(N, loss.knn_k)`; window: static (lo, hi) sorted-position window of the variant
      (`graph_window`); classes: (N, C) bool predicted classes under loss.graph_filter='class_agree', else
      None. A builder may ignore any of these.

  Returns a dict of (n,) arrays, one entry per anchor:
    'pos': int32 batch position of its neighbour p(i) — training pulls it close (L_emb's D_ip), and the logged
      graph_purity is the share of labeled neighbours that share a label.
    'neg': int32 batch position of its non-neighbour n(i) — training pushes it beyond the margin (the hinge).
    'neg_valid': bool, False where no non-neighbour exists; training drops that anchor's hinge (optional,
      default all True).
    'pos_rank', 'neg_rank': int32 sorted positions (by distance to the anchor) the two were drawn at. Training
      never reads them; `losses.ssdh_sample` returns them as 'emb_pos_rank' / 'emb_neg_rank' for tests and
      diagnostics (optional, default -1).
  A row may enter only through its global id and its features, so sharded and single-device runs agree.

  From the command line: register it in a module passed with `--module path/to/file.py` (see the README's
  "Extending"). `graph.sample_graph_pairs` is the release's builder ('knn_window').
  """
  return _BUILDERS.add(name, fn)


def get_graph_builder(name: str) -> GraphBuilder:
  """The builder registered under `name`; ValueError listing the registered builders if none."""
  return _BUILDERS.get(name)


def available_graph_builders() -> tuple[str, ...]:
  """Names accepted by config.loss.graph."""
  return _BUILDERS.names()


def masked_choice(bits: Array, mask: Array, row_ids: Array) -> tuple[Array, Array]:
  """For each row of `mask`, one uniform draw from its True columns per column of `bits`.

  The r-th True column is taken in row-id order (not batch-position order), so with the same key the same
  *row* is chosen however the batch is permuted. Cost O(n·N + n·num·log N): one cumsum, then a binary search
  per draw; no (n, num, N) random tensor.

  Args:
    bits: (n, num) uint32 random words, one per draw (e.g. num = the triplet tries).
    mask: (n, N) bool candidate sets.
    row_ids: (N,) int unique global ids of the columns.

  Returns:
    idx: (n, num) int32 batch positions (arbitrary where the set is empty).
    nonempty: (n,) bool.
  """
  mask = jax.lax.stop_gradient(mask)
  canon = jnp.argsort(row_ids).astype(jnp.int32)  # column positions in row-id order
  return choice_from_counts(bits, jnp.cumsum(mask[:, canon].astype(jnp.int32), axis=1), canon)


def choice_from_counts(bits: Array, cs: Array, canon: Array) -> tuple[Array, Array]:
  """`masked_choice` given the running counts of its mask in row-id order: cs = cumsum(mask[:, canon], 1)
  (int32 (n, N)) and canon = argsort(row_ids). Lets callers derive one set's counts from another's (e.g. the
  complement within a set) instead of paying another cumsum."""
  big_n = cs.shape[1]
  count = cs[:, -1]
  r = uniform_index(bits, count[:, None])  # (n, num) rank within the set
  # First canonical position whose cumsum exceeds r: the r-th True column.
  j = jax.vmap(lambda c, rr: jnp.searchsorted(c, rr, side="right"))(cs, r)
  idx = canon[jnp.minimum(j, big_n - 1)]
  return idx.astype(jnp.int32), count > 0
