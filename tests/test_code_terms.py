"""Bit-information terms (losses 'bit_balance', 'bit_decorrelation') and `hashing.bit_statistics`, against
loops over the definitions in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssdh_jax import hashing, losses


def make_batch(seed, n, k, c=5):
  """Random global batch: codes in (0,1), class logits, one-hot labels on about half the rows. (Not imported
  from test_losses: importing a test module twice registers its terms twice.)"""
  rng = np.random.default_rng(seed)
  labeled = rng.random(n) < 0.5
  labels = np.eye(c, dtype=np.float32)[rng.integers(0, c, n)]
  labels[~labeled] = 0.0
  outputs = {
    "codes": jnp.asarray(1 / (1 + np.exp(-2 * rng.normal(size=(n, k)))), jnp.float32),
    "class_logits": jnp.asarray(rng.normal(size=(n, c)), jnp.float32),
  }
  return outputs, jnp.asarray(labels), jnp.asarray(labeled)


def _hand_balance(h: np.ndarray) -> float:
  s = 2.0 * h - 1.0
  n, k = s.shape
  total = 0.0
  for j in range(k):
    m = sum(s[i, j] for i in range(n)) / n
    total += m * m
  return total / k


def _hand_decorrelation(h: np.ndarray) -> float:
  s = 2.0 * h - 1.0
  n, k = s.shape
  mean = [sum(s[i, j] for i in range(n)) / n for j in range(k)]
  total = 0.0
  for j in range(k):
    for l in range(k):  # noqa: E741
      if j != l:
        c = sum((s[i, j] - mean[j]) * (s[i, l] - mean[l]) for i in range(n)) / n
        total += c * c
  return total / (k * (k - 1))


@pytest.mark.parametrize(
  ("name", "hand"), [("bit_balance", _hand_balance), ("bit_decorrelation", _hand_decorrelation)]
)
def test_code_term_matches_hand_computation_and_shards_sum(name, hand):
  o, y, m = make_batch(11, n=24, k=6)
  key = jax.random.PRNGKey(0)
  weight = 0.7
  cfg = losses.SSDHLoss(extra_terms=((name, weight),))
  base, _ = losses.ssdh_loss(o, y, m, key, losses.SSDHLoss())
  loss, aux = losses.ssdh_loss(o, y, m, key, cfg)
  expect = weight * hand(np.asarray(o["codes"], np.float64))
  assert expect > 1e-4  # a random batch is neither balanced nor decorrelated exactly
  np.testing.assert_allclose(float(aux[f"loss_{name}"]), expect, rtol=1e-5)
  np.testing.assert_allclose(float(loss), float(base) + expect, rtol=1e-5)

  # Shards that partition the anchors sum to the full value and to the full gradient.
  fn = losses.get_term(name)
  term = lambda codes, anchors: fn(losses.TermInputs(codes, o, y, m, anchors, {}, cfg, 24))
  full_grad = jax.grad(term)(o["codes"], jnp.arange(24))
  parts = [jnp.arange(i, 24, 3) for i in range(3)]
  np.testing.assert_allclose(sum(float(term(o["codes"], p)) for p in parts), expect / weight, rtol=1e-5)
  summed = sum(jax.grad(term)(o["codes"], p) for p in parts)
  np.testing.assert_allclose(np.asarray(summed), np.asarray(full_grad), rtol=1e-4, atol=1e-7)


def test_bit_balance_is_zero_for_balanced_and_one_for_constant_bits():
  half = jnp.asarray(np.tile([[0.9], [0.1]], (4, 3)), jnp.float32)  # every bit on for half the rows
  inputs = lambda h: losses.TermInputs(h, {}, None, None, jnp.arange(h.shape[0]), {}, losses.SSDHLoss(), 8)
  assert float(losses.bit_balance(inputs(half))) == pytest.approx(0.0, abs=1e-7)
  saturated = jnp.ones((8, 3), jnp.float32)
  assert float(losses.bit_balance(inputs(saturated))) == pytest.approx(1.0)
  # Two identical bits are perfectly correlated; a bit and its complement too.
  h = np.random.default_rng(0).random((8, 1)).astype(np.float32)
  dup = jnp.asarray(np.concatenate([h, h, 1 - h], axis=1))
  assert float(losses.bit_decorrelation(inputs(dup))) > 0.0
  indep = jnp.asarray([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]] * 2, jnp.float32)
  assert float(losses.bit_decorrelation(inputs(indep))) == pytest.approx(0.0, abs=1e-7)


def test_bit_statistics_counts_constant_bits_and_entropy():
  rng = np.random.default_rng(3)
  bits = rng.random((50, 8)) < 0.5
  bits[:, 2] = False
  bits[:, 5] = True
  bits[:, 6] = np.arange(50) < 10  # p = 0.2
  stats = hashing.bit_statistics(bits)
  assert int(stats["constant_bits"]) == 2
  p = bits.mean(0)
  ent = [0.0 if q in (0.0, 1.0) else -(q * np.log2(q) + (1 - q) * np.log2(1 - q)) for q in p]
  np.testing.assert_allclose(float(stats["bit_entropy"]), np.mean(ent), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(stats["ones"]), p, rtol=1e-6)
  assert int(hashing.bit_statistics(np.ones((4, 3), bool))["constant_bits"]) == 3
  assert float(hashing.bit_statistics(np.ones((4, 3), bool))["bit_entropy"]) == 0.0
