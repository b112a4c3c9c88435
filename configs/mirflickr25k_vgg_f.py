"""MIRFlickr-25k (38 labels; 1,000 queries / 5,000 labeled / 19,000 unlabeled), VGG-F, the release setting.

Users bring the images and a list file (`relpath 0 1 0 ...`) under data.manual_dir.
Usage: python train.py --config configs/mirflickr25k_vgg_f.py:48 --workdir DIR --config.data.manual_dir=...
"""

from configs import default


def get_config(config_string: str | None = None):
  c = default.get_config()
  c.data.source = "list"
  c.data.protocol = "mirflickr-25k"
  c.data.num_classes = 38
  c.data.multi_label = True
  c.data.resize_size = 256
  c.data.image_size = 224
  c.data.augment = "crop_flip"
  c.model.name = "vgg_f"
  c.model.num_classes = 38
  c.model.preprocess = "caffe_bgr"
  c.loss.variant = "multi_label"
  c.train.num_steps = 30_000
  return default.set_bits(c, default.parse_bits(config_string, 48))
