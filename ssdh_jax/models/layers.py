"""Layers shared by the backbones."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

ROW_DROPOUT_RNG = "row_dropout"


def resolve_lowering(field: str, impl: str, impls: tuple[str, ...], on_cpu: str) -> str:
  """A lowering choice of config.model.<field>: 'auto' → `on_cpu` on the CPU backend, impls[0] (XLA's own
  convolution) elsewhere; a name in `impls` passes through; anything else is a ValueError naming the field."""
  if impl == "auto":
    return on_cpu if jax.default_backend() == "cpu" else impls[0]
  if impl not in impls:
    raise ValueError(
      f"config.model.{field} must be one of {', '.join(map(repr, ('auto', *impls)))}; got {impl!r}"
    )
  return impl


def global_row_ids(n: int, axis_name: str | None) -> Array:
  """(n,) int32 index of this device's rows in the global batch: device d of the named axis holds rows
  d·n … d·n + n − 1 (the layout `pipeline.shard` and a P(axis) sharding give). Without an axis: 0 … n − 1."""
  rows = jnp.arange(n, dtype=jnp.int32)
  if axis_name is None:
    return rows
  return jax.lax.axis_index(axis_name).astype(jnp.int32) * n + rows


class RowDropout(nn.Module):
  """Dropout whose mask for a row is drawn from that row's index in the global batch, so training is the
  same computation on 1 or N devices (nn.Dropout draws from one key per device: the masks change with the
  device count).

  The key comes from the rng collection 'row_dropout' (the trainer passes one key, equal on every device) or,
  when it is not given, 'dropout' (a single-device `model.apply(..., rngs={'dropout': k})` works as usual).

  Attributes:
    rate: probability of zeroing an element.
    axis_name: the device axis the batch is split over (None: the batch is the global batch).
    deterministic: True: identity (as in nn.Dropout, give it here or in the call).
  """

  rate: float
  axis_name: str | None = None
  deterministic: bool | None = None

  @nn.compact
  def __call__(self, x: Array, deterministic: bool | None = None) -> Array:
    """x: (B, ...) with rows along axis 0. Returns x with dropped elements zeroed, the rest scaled by
    1/(1 − rate)."""
    if nn.merge_param("deterministic", self.deterministic, deterministic) or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    key = self.make_rng(ROW_DROPOUT_RNG if self.has_rng(ROW_DROPOUT_RNG) else "dropout")
    rows = global_row_ids(x.shape[0], self.axis_name)
    keep_p = 1.0 - self.rate
    keep = jax.vmap(lambda r: jax.random.bernoulli(jax.random.fold_in(key, r), keep_p, x.shape[1:]))(rows)
    return jnp.where(keep, x / keep_p, jnp.zeros_like(x)).astype(x.dtype)
