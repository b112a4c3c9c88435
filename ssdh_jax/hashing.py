"""Binary codes: binarisation, {0,1} <-> ±1, bit packing and Hamming distances.

Conventions (shared with metrics, index and FAISS export):
  * relaxed code h in (0,1)^k (sigmoid of the hash layer); binary code b = h > 0.5 (bool).
  * ±1 form: s = 2b - 1.
  * uint32 words: bit j of a code lives in word j // 32 at bit position j % 32 (little-endian within a word);
    the padding bits of the last word are zero.
  * uint8 bytes: bit j lives in byte j // 8 at bit position j % 8, i.e. `np.packbits(b, axis=-1,
    bitorder='little')` (the layout FAISS binary indexes consume).

All functions are pure jnp and work on numpy or jax inputs, under jit and vmap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike


def binarize(h: ArrayLike) -> Array:
  """Binary code of relaxed codes: h > 0.5.

  Args:
    h: (..., k) relaxed codes in (0, 1), any float dtype.

  Returns:
    (..., k) bool.
  """
  return jnp.asarray(h) > 0.5


def to_pm1(bits: ArrayLike, dtype: jnp.dtype = jnp.float32) -> Array:
  """{0,1} (bool or numeric) -> ±1: (..., k) -> (..., k) `dtype` with 1 -> +1 and 0 -> -1."""
  b = jnp.asarray(bits).astype(bool)
  return jnp.where(b, 1, -1).astype(dtype)


def from_pm1(s: ArrayLike) -> Array:
  """±1 (or any signed real) -> bool (..., k): s > 0."""
  return jnp.asarray(s) > 0


def _num_words(k: int, width: int) -> int:
  return -(-k // width)


def _pack(bits: ArrayLike, width: int, dtype: jnp.dtype) -> Array:
  b = jnp.asarray(bits).astype(bool)
  k = b.shape[-1]
  w = _num_words(k, width)
  pad = w * width - k
  if pad:
    b = jnp.concatenate([b, jnp.zeros((*b.shape[:-1], pad), bool)], axis=-1)
  b = b.reshape(*b.shape[:-1], w, width).astype(dtype)
  shifts = jnp.arange(width, dtype=dtype)
  # Bits are disjoint, so OR == sum; sum keeps it a single reduction.
  return jnp.sum(b << shifts, axis=-1, dtype=dtype)


def _unpack(words: ArrayLike, k: int, width: int, dtype: jnp.dtype) -> Array:
  x = jnp.asarray(words).astype(dtype)
  if x.shape[-1] != _num_words(k, width):
    raise ValueError(f"{x.shape[-1]} words cannot hold exactly {k} bits at {width} bits per word")
  shifts = jnp.arange(width, dtype=dtype)
  b = ((x[..., None] >> shifts) & 1).astype(bool)
  return b.reshape(*x.shape[:-1], -1)[..., :k]


def pack_bits(bits: ArrayLike) -> Array:
  """Packs codes into uint32 words.

  Args:
    bits: (..., k) bool or {0,1}.

  Returns:
    (..., ceil(k/32)) uint32; bit j in word j // 32 at position j % 32, padding bits zero.
  """
  return _pack(bits, 32, jnp.uint32)


def unpack_bits(words: ArrayLike, k: int) -> Array:
  """Inverse of `pack_bits`: (..., ceil(k/32)) uint32 -> (..., k) bool."""
  return _unpack(words, k, 32, jnp.uint32)


def pack_bytes(bits: ArrayLike) -> Array:
  """Packs codes into uint8 bytes, identical to `np.packbits(bits, axis=-1, bitorder='little')`.

  Args:
    bits: (..., k) bool or {0,1}.

  Returns:
    (..., ceil(k/8)) uint8.
  """
  return _pack(bits, 8, jnp.uint8)


def unpack_bytes(data: ArrayLike, k: int) -> Array:
  """Inverse of `pack_bytes`: (..., ceil(k/8)) uint8 -> (..., k) bool."""
  return _unpack(data, k, 8, jnp.uint8)


def codes_to_words(h: ArrayLike) -> Array:
  """Relaxed codes (..., k) -> packed uint32 words (..., ceil(k/32)) of their binarisation."""
  return pack_bits(binarize(h))


def hamming_packed(q_words: ArrayLike, db_words: ArrayLike) -> Array:
  """Hamming distances between packed codes via XOR + popcount.

  Args:
    q_words: (Q, W) uint32 (from `pack_bits`).
    db_words: (D, W) uint32.

  Returns:
    (Q, D) int32. Memory is O(Q·D·W); chunk the queries for large databases.
  """
  q = jnp.asarray(q_words, jnp.uint32)
  db = jnp.asarray(db_words, jnp.uint32)
  x = jnp.bitwise_xor(q[:, None, :], db[None, :, :])
  return jnp.sum(jax.lax.population_count(x).astype(jnp.int32), axis=-1)


def hamming_pm1(q: ArrayLike, db: ArrayLike) -> Array:
  """Hamming distances between ±1 codes via the matmul form (k - q·db^T) / 2.

  Args:
    q: (Q, k) ±1 (any real dtype).
    db: (D, k) ±1.

  Returns:
    (Q, D) int32. The product runs in float32 at HIGHEST precision so that it is exact for any k < 2^24
    (the default TPU/GPU matmul precision would round it).
  """
  q = jnp.asarray(q, jnp.float32)
  db = jnp.asarray(db, jnp.float32)
  k = q.shape[-1]
  ip = jnp.matmul(q, db.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.round((k - ip) * 0.5).astype(jnp.int32)


def bit_statistics(bits: ArrayLike) -> dict[str, Array]:
  """How much information each bit position carries over a set of codes (e.g. the database).

  Args:
    bits: (N, k) bool codes, N >= 1.

  Returns:
    'ones' (k,) float32 fraction of codes with the bit set; 'constant_bits' int32 scalar, the positions equal
    over every code (fraction exactly 0 or 1: they never separate two items); 'bit_entropy' float32 scalar,
    the mean over positions of the binary entropy of that fraction, in bits (1 = every bit balanced,
    0 = every bit constant).
  """
  b = jnp.asarray(bits, bool)
  n = b.shape[0]
  count = jnp.sum(b, axis=0, dtype=jnp.int32)
  p = count.astype(jnp.float32) / n
  # 0 log 0 = 0: clip inside the logs and mask the products.
  safe = lambda x: jnp.log2(jnp.clip(x, 1e-38, 1.0))
  h = -(jnp.where(p > 0, p * safe(p), 0.0) + jnp.where(p < 1, (1 - p) * safe(1 - p), 0.0))
  constant = jnp.sum((count == 0) | (count == n), dtype=jnp.int32)
  return {"ones": p, "constant_bits": constant, "bit_entropy": jnp.mean(h)}
