"""Unsupervised hashing baselines on fixed features: LSH (random projections) and ITQ (PCA + rotation).

Both are linear hash functions b = ((x - mean) @ projection @ rotation) > 0, stored as a params dict
{'mean': (F,), 'projection': (F, k), 'rotation': (k, k)} of float32 arrays; `encode` applies either.

  * LSH (Charikar 2002, sign random projections): projection ~ N(0, 1) from an explicit key, rotation = I.
    With `center=True` (default) the training mean is subtracted first, so every hyperplane passes through
    the data centre and each bit is ~balanced on symmetric data.
  * ITQ (Gong & Lazebnik, CVPR 2011): projection = the top-k principal directions of the centred training
    features; rotation R (k x k orthogonal, random init from the key) minimises the quantisation loss
    Q(B, R) = ||B - V R||_F^2 over V = centred features @ projection and B in {-1, +1}^{N x k} by
    alternating B = sign(V R) and R = U W^T for the SVD V^T B = U S W^T (orthogonal Procrustes).
    Each half-step cannot increase Q, so the recorded loss sequence is non-increasing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

Params = dict[str, Array]
_HI = jax.lax.Precision.HIGHEST  # the fits are small: keep full float32 matmuls on every backend


def _check(features: ArrayLike, bits: int) -> Array:
  x = jnp.asarray(features, jnp.float32)
  if x.ndim != 2 or x.shape[0] < 1:
    raise ValueError(f"features must be (N, F) with N >= 1; got shape {x.shape}")
  if bits < 1:
    raise ValueError(f"bits must be positive; got {bits}")
  return x


@functools.partial(jax.jit, static_argnames=("bits", "center"))
def _lsh_fit(key: Array, x: Array, *, bits: int, center: bool) -> Params:
  mean = jnp.mean(x, axis=0) if center else jnp.zeros((x.shape[1],), jnp.float32)
  return {
    "mean": mean,
    "projection": jax.random.normal(key, (x.shape[1], bits), jnp.float32),
    "rotation": jnp.eye(bits, dtype=jnp.float32),
  }


def lsh_fit(key: Array, features: ArrayLike, bits: int, *, center: bool = True) -> Params:
  """Sign-random-projection LSH.

  Args:
    key: PRNG key of the projection.
    features: (N, F) float training features (only their mean is used, when `center`).
    bits: code length k.
    center: subtract the training mean before projecting.

  Returns:
    params {'mean': (F,), 'projection': (F, k), 'rotation': (k, k) identity}, float32.
  """
  return _lsh_fit(key, _check(features, bits), bits=bits, center=center)


def _pca(xc: Array, bits: int) -> Array:
  """Top-`bits` principal directions (F, bits) of centred data, by decreasing variance, sign-fixed."""
  cov = jnp.matmul(xc.T, xc, precision=_HI) / xc.shape[0]
  _, vecs = jnp.linalg.eigh(cov)  # ascending eigenvalues
  top = vecs[:, ::-1][:, :bits]
  # eigh's signs are arbitrary; make the largest-magnitude entry of each direction positive (determinism).
  sign = jnp.sign(top[jnp.argmax(jnp.abs(top), axis=0), jnp.arange(bits)])
  return top * jnp.where(sign == 0, 1.0, sign)


@functools.partial(jax.jit, static_argnames=("bits", "n_iter"))
def _itq_fit(key: Array, x: Array, *, bits: int, n_iter: int) -> tuple[Params, Array]:
  mean = jnp.mean(x, axis=0)
  xc = x - mean
  proj = _pca(xc, bits)
  v = jnp.matmul(xc, proj, precision=_HI)
  r0, _ = jnp.linalg.qr(jax.random.normal(key, (bits, bits), jnp.float32))

  def step(r, _):
    vr = jnp.matmul(v, r, precision=_HI)
    b = jnp.where(vr >= 0, 1.0, -1.0)
    loss = jnp.sum(jnp.square(b - vr))
    u, _, wt = jnp.linalg.svd(jnp.matmul(v.T, b, precision=_HI))
    return jnp.matmul(u, wt, precision=_HI), loss

  rot, losses = jax.lax.scan(step, r0, None, length=n_iter)
  return {"mean": mean, "projection": proj, "rotation": rot}, losses


def itq_fit(key: Array, features: ArrayLike, bits: int, n_iter: int = 50) -> tuple[Params, Array]:
  """Iterative quantisation.

  Args:
    key: PRNG key of the random initial rotation.
    features: (N, F) float training features, F >= bits.
    bits: code length k.
    n_iter: alternating iterations (the paper uses 50).

  Returns:
    params {'mean': (F,), 'projection': (F, k) PCA, 'rotation': (k, k)} (float32) and the quantisation
    loss ||sign(V R_t) - V R_t||_F^2 of iterations t = 0..n_iter-1 ((n_iter,) float32, non-increasing;
    the returned rotation is the one after the last update).
  """
  x = _check(features, bits)
  if bits > x.shape[1]:
    raise ValueError(f"ITQ needs bits <= feature dimension; got bits={bits} for {x.shape[1]} features")
  return _itq_fit(key, x, bits=bits, n_iter=n_iter)


@jax.jit
def encode(params: Params, features: ArrayLike) -> Array:
  """Binary codes of a linear hash: ((x - mean) @ projection @ rotation) > 0.

  Args:
    params: from `lsh_fit` or `itq_fit`.
    features: (N, F) float.

  Returns:
    (N, k) bool.
  """
  x = jnp.asarray(features, jnp.float32) - params["mean"]
  return jnp.matmul(jnp.matmul(x, params["projection"], precision=_HI), params["rotation"], precision=_HI) > 0


def lsh_encode(params: Params, features: ArrayLike) -> Array:
  """LSH codes (N, k) bool of (N, F) features; see `encode`."""
  return encode(params, features)


def itq_encode(params: Params, features: ArrayLike) -> Array:
  """ITQ codes (N, k) bool of (N, F) features; see `encode`."""
  return encode(params, features)
