"""Data: sources (digits, arrays, image folders, list files, tfds), protocol splits, and the input pipeline.

Importing this package never imports TensorFlow; only `tfds_builders` does, which `pipeline.load_pool` imports
lazily for data.source='tfds'.
"""

from ssdh_jax.data.pipeline import (
  device_augment,
  device_eval_transform,
  eval_batches,
  load_pool,
  load_splits,
  shard,
  train_batch,
  train_batches,
  validate_examples,
)
from ssdh_jax.data.sources import Examples
from ssdh_jax.data.splits import PROTOCOLS, SPLIT_NAMES, Protocol, get_protocol, make_splits

__all__ = [
  "PROTOCOLS",
  "SPLIT_NAMES",
  "Examples",
  "Protocol",
  "device_augment",
  "device_eval_transform",
  "eval_batches",
  "get_protocol",
  "load_pool",
  "load_splits",
  "make_splits",
  "shard",
  "train_batch",
  "train_batches",
  "validate_examples",
]
