"""Tests of ssdh_jax.hashing against NumPy brute force and np.packbits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssdh_jax import hashing

BITS = (1, 7, 8, 12, 24, 31, 32, 33, 48, 64, 100)


def random_bits(seed, shape):
  return np.random.default_rng(seed).random(shape) < 0.5


def test_binarize_and_pm1():
  h = np.array([[0.1, 0.5, 0.500001, 0.9]], np.float32)
  np.testing.assert_array_equal(np.asarray(hashing.binarize(h)), [[False, False, True, True]])
  b = random_bits(0, (5, 12))
  s = np.asarray(hashing.to_pm1(b))
  assert s.dtype == np.float32 and set(np.unique(s).tolist()) == {-1.0, 1.0}
  np.testing.assert_array_equal(s, np.where(b, 1.0, -1.0))
  np.testing.assert_array_equal(np.asarray(hashing.from_pm1(s)), b)
  np.testing.assert_array_equal(np.asarray(hashing.to_pm1(b.astype(np.int32), jnp.int8)), np.where(b, 1, -1))


@pytest.mark.parametrize("k", BITS)
def test_pack_bits_layout_and_round_trip(k):
  b = random_bits(k, (6, k))
  words = np.asarray(hashing.pack_bits(b))
  assert words.dtype == np.uint32 and words.shape == (6, -(-k // 32))
  # Explicit layout: bit j -> word j // 32, position j % 32.
  expected = np.zeros_like(words)
  for i in range(6):
    for j in range(k):
      if b[i, j]:
        expected[i, j // 32] |= np.uint32(1) << np.uint32(j % 32)
  np.testing.assert_array_equal(words, expected)
  np.testing.assert_array_equal(np.asarray(hashing.unpack_bits(words, k)), b)


@pytest.mark.parametrize("k", BITS)
def test_pack_bytes_matches_numpy(k):
  b = random_bits(100 + k, (4, 3, k))  # any leading shape
  packed = np.asarray(hashing.pack_bytes(b))
  np.testing.assert_array_equal(packed, np.packbits(b, axis=-1, bitorder="little"))
  assert packed.dtype == np.uint8
  np.testing.assert_array_equal(np.asarray(hashing.unpack_bytes(packed, k)), b)
  np.testing.assert_array_equal(
    np.asarray(hashing.unpack_bytes(packed, k)), np.unpackbits(packed, axis=-1, count=k, bitorder="little")
  )


def test_words_and_bytes_agree():
  """uint32 words are the little-endian view of the byte packing (same bit order)."""
  b = random_bits(3, (10, 64))
  words = np.asarray(hashing.pack_bits(b))
  as_bytes = np.asarray(hashing.pack_bytes(b))
  np.testing.assert_array_equal(words.astype("<u4").view(np.uint8).reshape(10, 8), as_bytes)


def test_unpack_rejects_wrong_width():
  with pytest.raises(ValueError):
    hashing.unpack_bits(np.zeros((2, 2), np.uint32), 12)


@pytest.mark.parametrize("k", (12, 32, 48, 100))
def test_hamming_packed_pm1_bruteforce(k):
  q = random_bits(k, (9, k))
  db = random_bits(k + 1, (23, k))
  db[0] = q[0]  # a distance-0 pair
  db[1] = ~q[0]  # a distance-k pair
  brute = np.array([[sum(int(q[i, t] != db[j, t]) for t in range(k)) for j in range(23)] for i in range(9)])
  packed = np.asarray(hashing.hamming_packed(hashing.pack_bits(q), hashing.pack_bits(db)))
  pm1 = np.asarray(hashing.hamming_pm1(hashing.to_pm1(q), hashing.to_pm1(db)))
  assert packed.dtype == np.int32 and pm1.dtype == np.int32
  np.testing.assert_array_equal(packed, brute)
  np.testing.assert_array_equal(pm1, brute)
  assert brute[0, 0] == 0 and brute[0, 1] == k


def test_codes_to_words_and_jit():
  h = np.random.default_rng(0).random((5, 48)).astype(np.float32)
  words = jax.jit(hashing.codes_to_words)(h)
  np.testing.assert_array_equal(np.asarray(words), np.asarray(hashing.pack_bits(h > 0.5)))
  d = jax.jit(hashing.hamming_packed)(words, words)
  np.testing.assert_array_equal(np.diag(np.asarray(d)), 0)
  # vmap over a leading axis of code sets.
  dv = jax.vmap(hashing.hamming_packed)(words[None], words[None])
  np.testing.assert_array_equal(np.asarray(dv[0]), np.asarray(d))
