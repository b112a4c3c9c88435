"""ssdh_jax.baselines: LSH and ITQ properties checked against NumPy computations written here."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ssdh_jax import baselines


def anisotropic_features(seed: int, n: int, f: int, offset: float = 3.0) -> np.ndarray:
  """Correlated, non-centred Gaussian features with a decaying spectrum."""
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(f, f)) * (0.8 ** np.arange(f))[:, None]
  return (rng.normal(size=(n, f)) @ mix + offset).astype(np.float32)


def numpy_quantisation_loss(x, params) -> float:
  v = (x - np.asarray(params["mean"])) @ np.asarray(params["projection"]) @ np.asarray(params["rotation"])
  b = np.where(v >= 0, 1.0, -1.0)
  return float(np.sum((b - v) ** 2))


def test_itq_loss_decreases_monotonically():
  x = anisotropic_features(0, 2000, 32)
  params, losses = baselines.itq_fit(jax.random.key(0), x, 16, n_iter=40)
  losses = np.asarray(losses, np.float64)
  assert losses.shape == (40,)
  assert np.all(np.diff(losses) <= 1e-5 * losses[0]), np.diff(losses).max()
  assert losses[-1] < 0.97 * losses[0]  # the rotation really improves on the random start
  # The last recorded loss is the one of the rotation before the final update; the final rotation is no worse.
  assert numpy_quantisation_loss(x, params) <= losses[-1] * (1 + 1e-5)


def test_itq_params_are_pca_and_orthogonal():
  x = anisotropic_features(1, 1500, 20)
  params, _ = baselines.itq_fit(jax.random.key(1), x, 8, n_iter=5)
  mean, proj, rot = (np.asarray(params[k], np.float64) for k in ("mean", "projection", "rotation"))
  np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(rot @ rot.T, np.eye(8), atol=1e-5)
  np.testing.assert_allclose(proj.T @ proj, np.eye(8), atol=1e-5)
  # Same subspace as NumPy's top-8 principal directions (projector comparison is sign/order free).
  xc = x.astype(np.float64) - x.mean(0)
  _, _, vt = np.linalg.svd(xc, full_matrices=False)
  np.testing.assert_allclose(proj @ proj.T, vt[:8].T @ vt[:8], atol=1e-4)
  # Principal directions in decreasing variance.
  var = np.var(xc @ proj, axis=0)
  assert np.all(np.diff(var) <= 1e-6 * var[0])


def test_itq_codes_and_determinism():
  x = anisotropic_features(2, 500, 24)
  p1, l1 = baselines.itq_fit(jax.random.key(3), x, 12, n_iter=10)
  p2, l2 = baselines.itq_fit(jax.random.key(3), x, 12, n_iter=10)
  np.testing.assert_array_equal(np.asarray(l1), np.asarray(l2))
  codes = baselines.itq_encode(p1, x[:37])
  assert codes.shape == (37, 12) and codes.dtype == bool
  np.testing.assert_array_equal(codes, baselines.itq_encode(p2, x[:37]))
  v = (x[:37] - np.asarray(p1["mean"])) @ np.asarray(p1["projection"]) @ np.asarray(p1["rotation"])
  np.testing.assert_array_equal(np.asarray(codes), v > 0)
  p3, _ = baselines.itq_fit(jax.random.key(4), x, 12, n_iter=10)
  assert not np.allclose(np.asarray(p1["rotation"]), np.asarray(p3["rotation"]))
  with pytest.raises(ValueError, match="bits <= feature"):
    baselines.itq_fit(jax.random.key(0), x, 25)


def test_lsh_bits_balanced_on_centred_data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(20000, 64)).astype(np.float32)
  x -= x.mean(0)
  params = baselines.lsh_fit(jax.random.key(0), x, 48, center=False)
  ones = np.asarray(baselines.lsh_encode(params, x)).mean(axis=0)
  assert np.all(np.abs(ones - 0.5) < 0.03), ones
  # Off-centre data: without centring the bits are skewed, with the default centring they are balanced.
  y = x + 2.0
  skewed = np.asarray(baselines.lsh_encode(baselines.lsh_fit(jax.random.key(0), y, 48, center=False), y))
  balanced = np.asarray(baselines.lsh_encode(baselines.lsh_fit(jax.random.key(0), y, 48), y))
  assert np.abs(skewed.mean(0) - 0.5).max() > 0.1
  assert np.all(np.abs(balanced.mean(0) - 0.5) < 0.03)


def test_lsh_hamming_estimates_angle():
  # Sign random projections: P(bit differs) = angle / pi (Charikar 2002).
  rng = np.random.default_rng(1)
  a = rng.normal(size=32)
  b = rng.normal(size=32)
  angle = np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
  params = baselines.lsh_fit(jax.random.key(5), np.stack([a, b]), 8192, center=False)
  codes = np.asarray(baselines.lsh_encode(params, np.stack([a, b]).astype(np.float32)))
  assert codes.shape == (2, 8192) and codes.dtype == bool
  assert np.mean(codes[0] != codes[1]) == pytest.approx(angle / np.pi, abs=0.02)
  # A fresh key gives a different projection; the same key the same one.
  p2 = baselines.lsh_fit(jax.random.key(6), np.stack([a, b]), 8192, center=False)
  assert not np.allclose(np.asarray(params["projection"]), np.asarray(p2["projection"]))
  np.testing.assert_array_equal(
    np.asarray(params["projection"]),
    np.asarray(baselines.lsh_fit(jax.random.key(5), np.stack([a, b]), 8192, center=False)["projection"]),
  )
