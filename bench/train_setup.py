"""What every train-step comparison shares: the bench's backbones and batches, its config of the step and its
fixed synthetic batch (bench_train, bench_cpu_flags, bench_wrappers, the GPU suite and the loss check)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

BACKBONES = ("vgg_f", "vgg16", "mobilenet_v2", "small_cnn")
QUICK = ("mobilenet_v2", "small_cnn")
IMAGE_SIZE = {"vgg_f": 224, "vgg16": 224, "mobilenet_v2": 224, "small_cnn": 32}
CPU_BATCH = {"vgg_f": 16, "vgg16": 8, "mobilenet_v2": 16, "small_cnn": 64}
QUICK_CPU_BATCH = {"vgg_f": 8, "vgg16": 4, "mobilenet_v2": 8, "small_cnn": 32}
GPU_BATCH = 128
BITS = 48
NUM_CLASSES = 21  # NUS-WIDE-21-like multi-label batch
SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16"}


def synthetic_batch(
  batch: int, size: int, num_classes: int = NUM_CLASSES, seed: int = 0
) -> dict[str, np.ndarray]:
  """A fixed random batch: uint8 images (B,size,size,3), 1–3 labels per row, every other row labeled.

  Returns:
    dict image uint8 (B,H,W,3), labels float32 (B,C) (zeros on unlabeled rows), labeled bool (B,).
  """
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  labels = np.zeros((batch, num_classes), np.float32)
  for i in range(batch):
    labels[i, rng.choice(num_classes, size=rng.integers(1, 4), replace=False)] = 1.0
  labeled = np.arange(batch) % 2 == 0
  labels[~labeled] = 0.0
  return {"image": images, "labels": labels, "labeled": labeled}


def make_config(
  backbone: str,
  batch: int,
  dtype: str,
  image_size: int | None = None,
  augment: bool = False,
  stored_size: int = 0,
):
  """configs/default.py with the bench's overrides (1 device, pmap, full multi-label SSDH loss).

  augment: on-device crop_flip of `stored_size`-px images to `image_size` (data.on_device_augment), as the
  GPU configs train; otherwise the batch is already `image_size` and only preprocessed.
  """
  from configs.default import get_config
  from ssdh_jax import preprocessing

  c = get_config()
  c.model.name = backbone
  c.model.bits = BITS
  c.model.num_classes = NUM_CLASSES
  c.model.dtype = dtype
  c.model.preprocess = preprocessing.default_preprocess(backbone)
  c.data.image_size = image_size or IMAGE_SIZE[backbone]
  c.data.num_classes = NUM_CLASSES
  c.data.multi_label = True
  c.data.on_device_augment = bool(augment)
  if augment:
    c.data.augment = "crop_flip"
    c.data.resize_size = int(stored_size)
  c.train.batch_size = batch
  c.train.parallel = "pmap"
  c.train.num_devices = 1
  c.loss.name = "ssdh"
  c.loss.variant = "multi_label"
  c.loss.graph_feature = "codes"
  return c


def torch_loss_cfg() -> dict[str, Any]:
  """configs/default.py's loss section as the PyTorch port reads it (a plain dict)."""
  from configs.default import get_config

  loss_cfg = get_config().loss
  return {**loss_cfg.to_dict(), "neg_window": list(loss_cfg.neg_window)}


def median_step(fn: Callable[[], Any], warmup: int, reps: int) -> tuple[float, float]:
  """(first call seconds, median seconds of `reps` calls after `warmup` untimed ones); fn() must synchronise."""
  t = time.perf_counter()
  fn()
  first = time.perf_counter() - t
  for _ in range(max(0, warmup - 1)):
    fn()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return first, statistics.median(times) if times else float("nan")
