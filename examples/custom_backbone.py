"""A new backbone in one file, trained by the standard trainer on the demo digits, in either of two ways.

  python examples/custom_backbone.py [--workdir DIR] [--steps N] [--unregistered]      # from Python
  python train.py --config configs/digits_demo.py --workdir RUN \\
    --module examples/custom_backbone.py --config.model.name=tiny_mlp                   # from the command line
  python eval.py --workdir RUN      # imports this file again (recorded in RUN/modules.json)

Registered: `models.register_backbone` makes the name valid for `config.model.name` everywhere (training,
evaluation, `eval.py`, the config checks); the hash and class heads, the loss and the trainer are unchanged.
--unregistered: the model object (backbone + `models.HashingModel` heads) and a loss function go straight to
`train_and_evaluate`, nothing registered (evaluation happens there; `eval.py` rebuilds models by name).
"""

import argparse
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp

from configs import digits_demo
from ssdh_jax import losses, mesh, models, train_lib
from ssdh_jax.models import spec


class TinyMLP(nn.Module):
  """Flatten → Dense(hidden) → ReLU → Dropout → Dense(features): (B, H, W, 3) -> (B, features)."""

  hidden: int = 128
  features: int = 64
  dropout: float = 0.1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = images.reshape(images.shape[0], -1).astype(self.dtype)
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.relu(nn.Dense(self.features, dtype=self.dtype)(x))


def build_tiny_mlp(*, dropout, dtype, layers, **_):
  """The registry's builder: takes the config's model fields it needs, ignores the rest. The spec lists no
  layers, so it refuses a request to run a slice of them (`BackboneSpec`)."""
  spec.no_slices("tiny_mlp", layers)
  return TinyMLP(dropout=dropout, dtype=dtype)


models.register_backbone("tiny_mlp", models.BackboneSpec(build_tiny_mlp, image_size=8, feature_dim=64))


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="")
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--unregistered", action="store_true", help="pass the model and loss objects directly")
  args = p.parse_args(argv)
  config = digits_demo.get_config("16")
  config.model.name = "tiny_mlp"
  config.model.dropout = 0.1
  config.train.num_steps = config.train.eval_every = config.train.checkpoint_every = args.steps
  config.train.log_every = max(args.steps // 4, 1)
  config.train.progress = False
  workdir = args.workdir or tempfile.mkdtemp(prefix="ssdh_tiny_mlp_")
  if args.unregistered:
    config.model.name = (
      "small_cnn"  # any registered name: only bits and num_classes are read from config.model
    )
    model = models.HashingModel(
      backbone=TinyMLP(dropout=0.1), bits=config.model.bits, num_classes=config.model.num_classes
    )
    calls = []

    def loss_fn(*args, **kwargs):  # any function with ssdh_loss's signature; this one counts its traces
      calls.append(1)
      return losses.ssdh_loss(*args, **kwargs)

    results = train_lib.train_and_evaluate(config, workdir, model=model, loss_fn=loss_fn)
    print(f"unregistered model and loss ({len(calls)} loss traces; device axis {mesh.AXIS!r})")
  else:
    results = train_lib.train_and_evaluate(config, workdir)
  print(f"tiny_mlp: mAP@all {results['metrics']['map']:.4f} (protocol digits, 16 bits); run folder {workdir}")
  return results


if __name__ == "__main__":
  main()
