"""CIFAR-10 (`cifar10` protocol), ImageNet MobileNetV2 partly frozen, sized for a 2-core CPU.

The paper's regime (an ImageNet-pretrained CNN) made affordable: images upsampled to 160 px, the backbone
frozen up to `model.trainable` and no random augmentation, so the frozen prefix runs once per image (feature
cache) and every step trains only the last layers and the heads. Used by `bench/quality.py --pretrained`.

Usage: python train.py --config configs/cifar10_mobilenet_v2_cpu.py:48 --workdir DIR \
  --config.data.manual_dir=/path/cifar10 --config.model.pretrained=torchvision:mobilenet_v2
"""

from configs import default


def get_config(config_string: str | None = None):
  c = default.get_config()
  c.data.source = "folder"
  c.data.protocol = "cifar10"
  c.data.num_classes = 10
  c.data.resize_size = 160
  c.data.image_size = 160
  c.data.augment = "none"  # the frozen prefix sees one fixed view per image: it is cached
  c.model.name = "mobilenet_v2"
  c.model.num_classes = 10
  c.model.preprocess = "imagenet"
  c.model.trainable = "features_18"
  c.loss.variant = "single_label"
  c.optim.name = "sgd"
  c.optim.lr = 0.01
  c.optim.weight_decay = 4e-5
  c.optim.backbone_lr_mult = 0.1
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 50
  c.train.batch_size = 128
  c.train.num_steps = 600
  c.train.eval_every = 600
  c.train.checkpoint_every = 600
  c.train.log_every = 50
  c.eval.val_database = 5000
  return default.set_bits(c, default.parse_bits(config_string, 48))
