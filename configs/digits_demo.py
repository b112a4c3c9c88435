"""The embedded demo: scikit-learn's bundled 8x8 digits (1,797 real images, 10 classes).

Protocol `digits`: 100 queries (10/class), 300 labeled training images (30/class), 100 validation images
from the labeled pool, the rest unlabeled + database. Trains in well under a minute per code length on 2 cores.
"""

from configs import default


def get_config(config_string: str | None = None):
  c = default.get_config()
  c.data.source = "digits"
  c.data.protocol = "digits"
  c.data.num_classes = 10
  c.data.image_size = 8
  c.data.augment = "none"
  c.model.name = "small_cnn"
  c.model.num_classes = 10
  c.model.bits = 32
  c.model.width = 32
  c.model.dropout = 0.1
  c.model.preprocess = "unit"
  c.loss.variant = "single_label"
  c.loss.margin = 3.0
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"
  c.optim.weight_decay = 0.0
  c.optim.warmup_steps = 20
  c.train.batch_size = 128
  c.train.num_steps = 300
  c.train.log_every = 25
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  return default.set_bits(c, default.parse_bits(config_string, 32))
