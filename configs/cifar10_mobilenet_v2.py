"""CIFAR-10 (`cifar10` protocol), MobileNetV2 with torchvision ImageNet weights at 224, for a GPU.

Usage: python train.py --config configs/cifar10_mobilenet_v2.py:48 --workdir DIR \
  --config.data.manual_dir=/path/cifar10 --config.model.pretrained=torchvision:mobilenet_v2
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
  c.model.name = "mobilenet_v2"
  c.model.num_classes = 10
  c.model.dropout = 0.2
  c.model.dtype = "bfloat16"
  c.model.preprocess = "imagenet"
  c.loss.variant = "single_label"
  c.optim.name = "sgd"
  c.optim.lr = 0.01
  c.optim.weight_decay = 4e-5
  c.optim.backbone_lr_mult = 0.1
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 200
  c.train.batch_size = 128
  c.train.num_steps = 4000
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  return default.set_bits(c, default.parse_bits(config_string, 48))
