"""MS-COCO (5,000 queries / 10,000 labeled / the rest of ~122k database, 80 labels), VGG-F, mAP@5000.

Usage: python train.py --config configs/coco_vgg_f.py:48 --workdir DIR --config.data.manual_dir=...
"""

from configs import default


def get_config(config_string: str | None = None):
  c = default.get_config()
  c.data.source = "list"
  c.data.protocol = "coco"
  c.data.num_classes = 80
  c.data.multi_label = True
  c.data.resize_size = 256
  c.data.image_size = 224
  c.data.augment = "crop_flip"
  c.model.name = "vgg_f"
  c.model.num_classes = 80
  c.model.preprocess = "caffe_bgr"
  c.loss.variant = "multi_label"
  c.eval.map_r = 5000
  c.train.num_steps = 30_000
  return default.set_bits(c, default.parse_bits(config_string, 48))
