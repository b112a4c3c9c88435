"""Optimiser from config: Caffe-style SGD (or Adam) with per-layer learning-rate multipliers.

Release semantics: momentum 0.9, weight decay on weights only (never biases, nor BatchNorm scales), biases at
2x the learning rate, step schedule x0.1 every 30k iterations. Parameter trees have top-level keys 'backbone',
'hash' and 'classifier' (see ssdh_jax.models); the backbone can get its own multiplier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax
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


# --------------------------------------------------------------------------- trainable subsets

HEADS = "heads"  # model.trainable: only the hash and class heads learn
ALL = "all"


def trainable_start(spec: str, layers: Sequence[str], backbone: str = "") -> int:
  """Index into the backbone's ordered `layers` of the first trainable layer (len(layers): heads only).

  Args:
    spec: config.model.trainable: 'all' | 'heads' | a backbone layer name (that layer onward is trained).
    layers: the backbone's layer names in forward order (models.backbone_layers); empty when it has none.
  """
  if spec == ALL:
    return 0
  if spec == HEADS:
    return len(layers)
  if spec in layers:
    return list(layers).index(spec)
  names = ", ".join(layers) if layers else f"none: backbone {backbone!r} supports only all | heads"
  raise ValueError(f"config.model.trainable={spec!r}: expected all, heads or a backbone layer ({names})")


def trainable_mask(params: PyTree, spec: str, layers: Sequence[str], backbone: str = "") -> PyTree:
  """Bool pytree over `params`: True where the parameter is trained under config.model.trainable=`spec`.

  The heads (every top-level key but 'backbone') always train; inside params['backbone'] a leaf trains when its
  top-level layer comes at or after the first trainable layer.
  """
  start = trainable_start(spec, layers, backbone)
  rank = {name: i for i, name in enumerate(layers)}

  def leaf(path, _):
    names = _path_names(path)
    if names[0] != "backbone" or spec == ALL:
      return True
    return spec != HEADS and rank.get(names[1], -1) >= start

  return jax.tree_util.tree_map_with_path(leaf, params)


def split_params(params: PyTree, mask: PyTree) -> tuple[dict, dict]:
  """(trainable, frozen): two nested dicts holding the leaves where `mask` is True / False (paths kept)."""
  flat = flax.traverse_util.flatten_dict(params)
  flat_mask = flax.traverse_util.flatten_dict(mask)
  train = {k: v for k, v in flat.items() if flat_mask[k]}
  frozen = {k: v for k, v in flat.items() if not flat_mask[k]}
  return flax.traverse_util.unflatten_dict(train), flax.traverse_util.unflatten_dict(frozen)


def merge_params(trainable: PyTree, frozen: PyTree) -> dict:
  """Inverse of `split_params`."""
  flat = {**flax.traverse_util.flatten_dict(frozen), **flax.traverse_util.flatten_dict(trainable)}
  return flax.traverse_util.unflatten_dict(flat)
