"""ImageNet-100 (5,000 queries / ~13,000 labeled / ~128.5k database), MobileNetV2, mAP@1000.

Usage: python train.py --config configs/imagenet100_mobilenet_v2.py:48 --workdir DIR --config.data.manual_dir=...
"""

from configs import default


def get_config(config_string: str | None = None):
  c = default.get_config()
  c.data.source = "list"
  c.data.protocol = "imagenet-100"
  c.data.num_classes = 100
  c.data.resize_size = 256
  c.data.image_size = 224
  c.data.augment = "crop_flip"
  c.model.name = "mobilenet_v2"
  c.model.num_classes = 100
  c.model.dtype = "bfloat16"
  c.model.preprocess = "imagenet"
  c.loss.variant = "single_label"
  c.optim.lr = 0.01
  c.optim.backbone_lr_mult = 0.1
  c.optim.schedule = "cosine"
  c.eval.map_r = 1000
  c.train.num_steps = 10_000
  return default.set_bits(c, default.parse_bits(config_string, 48))
