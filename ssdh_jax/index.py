"""A searchable index of binary codes: one .npz file, Hamming top-k and range search on device, FAISS export.

File format (version `FORMAT_VERSION`), a NumPy .npz readable without pickle:
  codes   (N, ceil(bits/32)) uint32  packed as in `hashing.pack_bits` (bit j in word j // 32, position j % 32)
  ids     (N,) int64                 the dataset ids of the indexed items
  labels  (N, C) float32             multi-hot labels (C = 0 when the index has none)
  meta    0-d unicode                JSON object: format, format_version, bits, backbone, preprocessing,
                                     split_hash and any further keys given at build time.

Search conventions: neighbours are ranked by ascending Hamming distance, ties broken by position in the
index (stable), exactly as in `ssdh_jax.metrics`; both searches return dataset ids, not positions. Top-k search
runs in JAX or, with backend='faiss' (or 'auto' where FAISS measured faster: k beyond what the JAX strided top_k
covers), with FAISS `IndexBinaryFlat` over 64-bit-padded codes: the same neighbours in the same order.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.typing import ArrayLike

from ssdh_jax import metrics, ranking

FORMAT = "ssdh_jax.index"
_MAX_UNROLLED_BLOCKS = 16  # search loops over more database blocks than this with lax.map (slower, small HLO)
FORMAT_VERSION = 1
_REQUIRED_META = ("bits", "backbone", "preprocessing", "split_hash")


@dataclasses.dataclass(frozen=True)
class CodeIndex:
  """Packed binary codes with their ids, labels and metadata.

  Attributes:
    codes: (N, ceil(bits/32)) uint32 packed codes (bool (N, bits) codes are packed on construction).
    ids: (N,) int64 dataset ids.
    labels: (N, C) float32 multi-hot labels, or None.
    meta: JSON-serialisable metadata; must hold 'bits' (the other `_REQUIRED_META` keys default to '').
  """

  codes: np.ndarray
  ids: np.ndarray
  labels: np.ndarray | None = None
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    meta = dict(self.meta)
    if "bits" not in meta:
      raise ValueError("CodeIndex.meta must give the code length 'bits'")
    bits = int(meta["bits"])
    meta["bits"] = bits
    for key in _REQUIRED_META[1:]:
      meta.setdefault(key, "")
    codes = np.asarray(ranking.as_code_words(self.codes, bits), np.uint32)
    ids = np.asarray(self.ids).astype(np.int64).reshape(-1)
    if ids.shape[0] != codes.shape[0]:
      raise ValueError(f"{codes.shape[0]} codes but {ids.shape[0]} ids")
    labels = None
    if self.labels is not None:
      labels = np.asarray(self.labels, np.float32)
      if labels.ndim != 2 or labels.shape[0] != codes.shape[0]:
        raise ValueError(f"labels must be (N, C) with N = {codes.shape[0]}; got {labels.shape}")
    object.__setattr__(self, "codes", codes)
    object.__setattr__(self, "ids", ids)
    object.__setattr__(self, "labels", labels)
    object.__setattr__(self, "meta", meta)

  @property
  def bits(self) -> int:
    return int(self.meta["bits"])

  def __len__(self) -> int:
    return int(self.codes.shape[0])


def save_index(path: str, index: CodeIndex) -> str:
  """Writes `index` to `path` (.npz, atomically: a temporary file then a rename). Returns the path."""
  meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **index.meta}
  try:
    meta_json = json.dumps(meta, sort_keys=True)
  except TypeError as e:
    raise ValueError(f"index metadata must be JSON-serialisable: {e}") from e
  labels = index.labels if index.labels is not None else np.zeros((len(index), 0), np.float32)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:  # a file object keeps np.savez from appending '.npz'
    np.savez(f, codes=index.codes, ids=index.ids, labels=labels, meta=np.array(meta_json))
  os.replace(tmp, path)
  return path


def load_index(path: str, bits: int | None = None, *, expect: Mapping[str, Any] | None = None) -> CodeIndex:
  """Reads an index file, refusing files this version cannot read or that do not fit the caller.

  Args:
    path: file written by `save_index`.
    bits: if given, the code length the caller produces; a different length is refused.
    expect: further metadata that must match exactly (e.g. {'backbone': 'vgg_f', 'preprocessing': ...}).

  Returns:
    The CodeIndex.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not an index file, another format version, a code-length or metadata mismatch.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such index file")
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable ssdh_jax index file ({e})") from e
  missing = {"codes", "ids", "labels", "meta"} - set(arrays)
  if missing:
    raise ValueError(f"{path}: not an ssdh_jax index file (missing {sorted(missing)})")
  meta = json.loads(str(arrays["meta"]))
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path}: not an ssdh_jax index file (format {meta.get('format')!r})")
  version = meta.pop("format_version", None)
  meta.pop("format")
  if version != FORMAT_VERSION:
    raise ValueError(
      f"{path}: index format version {version}, but this ssdh_jax reads version {FORMAT_VERSION}; "
      "rebuild the index with this version (ssdh-eval writes it)"
    )
  if bits is not None and int(meta["bits"]) != int(bits):
    raise ValueError(
      f"{path}: the index holds {meta['bits']}-bit codes but the query codes have {bits} bits; "
      "search it with the model that built it"
    )
  for key, want in (expect or {}).items():
    if meta.get(key) != want:
      raise ValueError(f"{path}: index {key} is {meta.get(key)!r}, expected {want!r}")
  w = ranking.num_words(int(meta["bits"]))
  if arrays["codes"].dtype != np.uint32 or arrays["codes"].ndim != 2 or arrays["codes"].shape[1] != w:
    raise ValueError(
      f"{path}: codes of shape {arrays['codes'].shape} / {arrays['codes'].dtype} do not hold "
      f"{meta['bits']}-bit codes ({w} uint32 words)"
    )
  labels = arrays["labels"] if arrays["labels"].shape[1] > 0 else None
  return CodeIndex(codes=arrays["codes"], ids=arrays["ids"], labels=labels, meta=meta)


# ---------------------------------------------------------------------------------------------- search


def _query_words(index: CodeIndex, query_codes: ArrayLike) -> Array:
  q = jnp.asarray(query_codes)
  if q.ndim == 1:
    q = q[None]
  return ranking.as_code_words(q, index.bits)


@functools.partial(jax.jit, static_argnames=("k", "block", "chunk"))
def _knn_device(q_words: Array, db_words: Array, *, k: int, block: int, chunk: int) -> tuple[Array, Array]:
  """Top-k by (distance, position): per-block top-k's (lax.map over whole blocks, then the tail), merged."""
  n = db_words.shape[0]
  n_blocks, tail = divmod(n, block)
  max_dist = 32 * q_words.shape[1]

  def per_chunk(qw):
    if n_blocks == 1 and tail == 0:
      return ranking.stable_prefix(ranking.hamming(qw, db_words), k, max_dist)
    parts_i, parts_d = [], []
    if 0 < n_blocks <= _MAX_UNROLLED_BLOCKS:
      # Static slices: XLA CPU runs these several times faster than a loop over a dynamic block index.
      for b in range(n_blocks):
        idx, d = ranking.stable_prefix(
          ranking.hamming(qw, db_words[b * block : (b + 1) * block]), k, max_dist
        )
        parts_i.append(idx + b * block)
        parts_d.append(d)
    elif n_blocks:
      blocks = db_words[: n_blocks * block].reshape(n_blocks, block, db_words.shape[1])
      idx, d = lax.map(lambda blk: ranking.stable_prefix(ranking.hamming(qw, blk), k, max_dist), blocks)
      idx = idx + (jnp.arange(n_blocks, dtype=jnp.int32) * block)[:, None, None]
      parts_i.append(jnp.transpose(idx, (1, 0, 2)).reshape(qw.shape[0], -1))
      parts_d.append(jnp.transpose(d, (1, 0, 2)).reshape(qw.shape[0], -1))
    if tail:
      idx, d = ranking.stable_prefix(
        ranking.hamming(qw, db_words[n_blocks * block :]), min(k, tail), max_dist
      )
      parts_i.append(idx + n_blocks * block)
      parts_d.append(d)
    # Candidates are laid out block by block, each block's in (distance, position) order, so among equal
    # distances an earlier slot is a smaller position and one stable top_k gives the global order.
    cat_i, cat_d = jnp.concatenate(parts_i, axis=1), jnp.concatenate(parts_d, axis=1)
    _, sel = lax.top_k(-cat_d.astype(jnp.float32), k)
    return jnp.take_along_axis(cat_i, sel, axis=1), jnp.take_along_axis(cat_d, sel, axis=1)

  return ranking.map_queries(per_chunk, (q_words,), chunk)


def knn(
  db_codes: ArrayLike,
  query_codes: ArrayLike,
  k: int,
  *,
  bits: int,
  query_chunk: int = 256,
  db_block: int = 1 << 22,
  backend: str = "auto",
) -> tuple[Array, Array]:
  """Exact Hamming top-k, on device chunked over queries and over database blocks, or with FAISS.

  Args:
    db_codes: (N, W) packed uint32 or (N, bits) bool database codes.
    query_codes: (Q, W) packed uint32 or (Q, bits) bool.
    k: neighbours per query (clipped to N).
    bits: code length.
    query_chunk: queries per step (capped so that chunk x db_block stays within the memory bound of
      `metrics`).
    db_block: database items per step (a database up to this size is searched in one step).
    backend: 'jax', 'faiss' (k < N; FAISS `IndexBinaryFlat`, codes padded to 64 bits) or 'auto' (FAISS where
      installed, on CPU, and k is beyond the JAX strided top_k: `metrics.resolve_backend`).

  Returns:
    positions (Q, k) int32 into the database and distances (Q, k) int32, ordered by (distance, position)
    (jax Arrays, or NumPy arrays from FAISS).
  """
  dw = ranking.as_code_words(db_codes, bits)
  qw = ranking.as_code_words(query_codes, bits)
  n = dw.shape[0]
  if n == 0:
    raise ValueError("empty index")
  k = max(1, min(int(k), n))
  if metrics.resolve_backend(backend, dw, k, n) == "faiss":
    parts = list(metrics.faiss_knn(np.asarray(qw), np.asarray(dw), k))
    return (
      np.concatenate([p[1] for p in parts]).astype(np.int32),
      np.concatenate([p[2] for p in parts]).astype(np.int32),
    )
  block = max(k, n if n <= db_block else int(db_block))
  chunk = ranking.chunk_size(query_chunk, qw.shape[0], block, dw)
  return _knn_device(qw, dw, k=k, block=block, chunk=chunk)


def search(
  index: CodeIndex,
  query_codes: ArrayLike,
  k: int,
  *,
  query_chunk: int = 256,
  db_block: int = 1 << 22,
  backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
  """The k nearest indexed items of every query.

  Args:
    index: the CodeIndex.
    query_codes: (Q, ceil(bits/32)) packed uint32 or (Q, bits) bool (a single code may be 1-D).
    k: neighbours per query (clipped to the index size).
    query_chunk, db_block: chunking of the device computation (see `knn`).
    backend: 'auto' | 'jax' | 'faiss' (see `knn`; the same answer either way).

  Returns:
    ids (Q, k) int64 (dataset ids) and Hamming distances (Q, k) int32, by (distance, index position).
  """
  pos, dist = knn(
    index.codes,
    _query_words(index, query_codes),
    k,
    bits=index.bits,
    query_chunk=query_chunk,
    db_block=db_block,
    backend=backend,
  )
  return index.ids[np.asarray(pos)], np.asarray(dist)


@functools.partial(jax.jit, static_argnames=("chunk",))
def _ball_sizes(q_words, db_words, radius, *, chunk):
  def body(qw):
    return jnp.sum(ranking.hamming(qw, db_words) <= radius, axis=1, dtype=jnp.int32)

  return ranking.map_queries(body, (q_words,), chunk)


def range_search(
  index: CodeIndex, query_codes: ArrayLike, radius: int, *, query_chunk: int = 256
) -> list[tuple[np.ndarray, np.ndarray]]:
  """Every indexed item within Hamming distance `radius` of each query.

  Args:
    index: the CodeIndex.
    query_codes: (Q, ceil(bits/32)) packed uint32 or (Q, bits) bool (a single code may be 1-D).
    radius: Hamming radius (inclusive).
    query_chunk: queries per device step.

  Returns:
    One (ids int64 (n_q,), distances int32 (n_q,)) pair per query, ordered by (distance, index position).
  """
  qw = _query_words(index, query_codes)
  dw = jnp.asarray(index.codes)
  n = dw.shape[0]
  chunk = ranking.chunk_size(query_chunk, qw.shape[0], n, dw)
  sizes = np.asarray(_ball_sizes(qw, dw, jnp.int32(radius), chunk=chunk))
  largest = int(sizes.max(initial=0))
  if largest == 0:
    return [(np.zeros((0,), np.int64), np.zeros((0,), np.int32)) for _ in sizes]
  # The ball is a prefix of the stable ranking; a power-of-two length bounds the number of compilations.
  length = min(n, 1 << int(np.ceil(np.log2(largest))))
  pos, dist = metrics.hamming_ranking(qw, dw, bits=index.bits, length=length, query_chunk=query_chunk)
  pos, dist = np.asarray(pos), np.asarray(dist)
  return [(index.ids[pos[i, :m]], dist[i, :m]) for i, m in enumerate(sizes)]


def format_results(
  ids: ArrayLike, distances: ArrayLike, *, paths: Sequence[str] | Mapping[int, str] | None = None
) -> str:
  """Human-readable table of one query's neighbours: rank, id, Hamming distance (and path if known).

  Args:
    ids: (n,) dataset ids; distances: (n,) Hamming distances.
    paths: optional id -> image path lookup (a mapping, or a sequence indexed by id).
  """
  ids, distances = np.asarray(ids).reshape(-1), np.asarray(distances).reshape(-1)
  lines = ["rank\tid\thamming" + ("\tpath" if paths is not None else "")]
  for r, (i, d) in enumerate(zip(ids, distances), start=1):
    row = f"{r}\t{int(i)}\t{int(d)}"
    if paths is not None:
      try:
        row += f"\t{paths[int(i)]}"
      except (KeyError, IndexError):
        row += "\t?"
    lines.append(row)
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- FAISS


def faiss_bytes(codes: ArrayLike, bits: int, *, pad_bits: int = 64) -> np.ndarray:
  """Packed codes -> the uint8 layout FAISS binary indexes take.

  Bit j goes to byte j // 8 at bit position j % 8 (`np.packbits(b, bitorder='little')`, FAISS's own packing);
  the code is zero-padded to whole `pad_bits` (zero padding leaves distances unchanged). The default, whole
  64-bit words, puts codes of up to 512 bits on FAISS's fast Hamming kernels (8, 16, 32 or 64 bytes: a 48-bit
  code in 6 bytes takes FAISS's generic, slower path); pad_bits=8 gives the tightest layout (FAISS needs whole
  bytes).

  Args:
    codes: (N, ceil(bits/32)) packed uint32 or (N, bits) bool.
    bits: code length.
    pad_bits: pad each code to a multiple of this many bits (a multiple of 8).

  Returns:
    (N, pad_bits / 8 * ceil(bits / pad_bits)) uint8, C-contiguous.
  """
  by = ranking.faiss_code_bytes(ranking.as_code_words(codes, bits), pad_bits)  # padding bits are zero
  n_bytes = pad_bits // 8 * -(-bits // pad_bits)  # whole uint32 words may hold more bytes than that
  return np.ascontiguousarray(by[:, :n_bytes])


def to_faiss(index: CodeIndex):
  """Exports the codes to a `faiss.IndexBinaryFlat` (needs the `faiss` extra: pip install faiss-cpu).

  The FAISS index has d = 64 * ceil(bits/64) dimensions (codes zero-padded to whole 64-bit words, FAISS's fast
  Hamming kernels) and holds the items in index order, so FAISS labels are index positions (map them through
  `index.ids`); search it with `faiss_bytes(query_codes, bits)` (the same padding). Distance ties come out by
  position for both of its k-NN algorithms (use_heap True or False), as in `search`.
  """
  try:
    import faiss
  except ImportError as e:
    raise ImportError("to_faiss needs FAISS: pip install faiss-cpu (the 'faiss' extra of ssdh_jax)") from e
  data = faiss_bytes(index.codes, index.bits)
  out = faiss.IndexBinaryFlat(8 * data.shape[1])
  out.add(data)
  return out
