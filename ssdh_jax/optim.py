"""Optimiser from config: Caffe-style SGD (or Adam) with per-layer learning-rate multipliers.

Release semantics: momentum 0.9, weight decay on weights only (never biases, nor BatchNorm scales), biases at
2x the learning rate, step schedule x0.1 every 30k iterations. Parameter trees have top-level keys 'backbone',
'hash' and 'classifier' (see ssdh_jax.models); the backbone can get its own multiplier.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any


def _path_names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def weight_decay_mask(params: PyTree) -> PyTree:
  """True for conv/dense kernels: the leaves Caffe decays."""
  return jax.tree_util.tree_map_with_path(lambda p, _: _path_names(p)[-1] == "kernel", params)


def lr_multipliers(params: PyTree, cfg: ml_collections.ConfigDict) -> PyTree:
  """Per-leaf learning-rate multiplier: bias_lr_mult for biases, times backbone_lr_mult inside the backbone."""

  def mult(path, _):
    names = _path_names(path)
    m = cfg.bias_lr_mult if names[-1] == "bias" else 1.0
    if names and names[0] == "backbone":
      m *= cfg.backbone_lr_mult
    return float(m)

  return jax.tree_util.tree_map_with_path(mult, params)


def scale_by_tree(multipliers: PyTree) -> optax.GradientTransformation:
  """Multiplies each update leaf by a fixed per-leaf scalar (stateless)."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def learning_rate_schedule(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """lr(step) for cfg.schedule in {step, cosine, constant}, with an optional linear warm-up."""
  warmup = int(cfg.warmup_steps)
  if cfg.schedule == "cosine":
    if warmup > 0:
      return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(num_steps, warmup + 1))
    return optax.cosine_decay_schedule(cfg.lr, max(num_steps, 1))
  if cfg.schedule == "step":
    main = optax.exponential_decay(cfg.lr, cfg.step_every, cfg.step_gamma, staircase=True)
  elif cfg.schedule == "constant":
    main = optax.constant_schedule(cfg.lr)
  else:
    raise ValueError(f"config.optim.schedule: unknown schedule {cfg.schedule!r} (step | cosine | constant)")
  if warmup > 0:
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), main], [warmup])
  return main


def make_optimizer(
  cfg: ml_collections.ConfigDict, params: PyTree, num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax transformation for `params` (used only for their tree structure and names)."""
  schedule = learning_rate_schedule(cfg, num_steps)
  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  if cfg.weight_decay > 0:
    parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=weight_decay_mask(params)))
  if cfg.name == "sgd":
    parts.append(optax.trace(decay=cfg.momentum))
  elif cfg.name == "adam":
    parts.append(optax.scale_by_adam())
  else:
    raise ValueError(f"config.optim.name: unknown optimiser {cfg.name!r} (sgd | adam)")
  # Multipliers after the optimiser so they keep their meaning for Adam; for SGD the order is immaterial.
  parts.append(scale_by_tree(lr_multipliers(params, cfg)))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts), schedule
