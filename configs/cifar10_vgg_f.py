"""CIFAR-10 (`cifar10` protocol) with the paper's VGG-F (CNN-F) at 224, release optimiser settings.

Pretrained weights: an .npz converted from the authors' Caffe model (layout in ssdh_jax/weights.py).
Usage: python train.py --config configs/cifar10_vgg_f.py:48 --workdir DIR --config.data.manual_dir=... \
  --config.model.pretrained=vgg_f.npz
"""

from configs import default


def get_config(config_string: str | None = None):
  c = default.get_config()
  c.data.source = "folder"
  c.data.protocol = "cifar10"
  c.data.num_classes = 10
  c.data.resize_size = 256
  c.data.image_size = 224
  c.data.augment = "crop_flip"
  c.data.on_device_augment = True
  c.model.name = "vgg_f"
  c.model.num_classes = 10
  c.model.preprocess = "caffe_bgr"
  c.loss.variant = "single_label"
  c.optim.lr = 1e-3  # release: 1e-4 for MIRFlickr fine-tuning; heads learn faster with a x0.1 backbone
  c.optim.backbone_lr_mult = 0.1
  c.train.num_steps = 30_000
  return default.set_bits(c, default.parse_bits(config_string, 48))
