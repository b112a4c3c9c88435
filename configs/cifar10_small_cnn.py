"""CIFAR-10 (protocol `cifar10`: 1,000 queries / 5,000 labeled / 54,000 unlabeled + database), a 32x32 CNN
from scratch, single-label SSDH variant. CPU-friendly; used by `bench/quality.py --quick`.

Usage: python train.py --config configs/cifar10_small_cnn.py:48 --workdir DIR
"""

from configs import default


def get_config(config_string: str | None = None):
  c = default.get_config()
  c.data.source = "folder"
  c.data.manual_dir = (
    ""  # a folder with train/<class>/*.jpg and test/<class>/*.jpg (the shared archive unpacked)
  )
  c.data.protocol = "cifar10"
  c.data.num_classes = 10
  c.data.image_size = 32
  c.data.augment = "pad_crop_flip"
  c.data.on_device_augment = True
  c.model.name = "small_cnn"
  c.model.num_classes = 10
  c.model.width = 64
  c.model.dropout = 0.3
  c.model.preprocess = "unit"
  c.loss.variant = "single_label"
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.0
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 100
  c.train.batch_size = 128
  c.train.num_steps = 3000
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  return default.set_bits(c, default.parse_bits(config_string, 48))
