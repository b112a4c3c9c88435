"""The representation's ceiling (issue 23, section 2): a linear probe on a backbone's frozen pooled features.

  python bench/ceiling.py --config configs/cifar10_mobilenet_v2_cpu.py:48 --workdir workdir/ceiling \
    --config.data.manual_dir=DIR --config.data.cache_dir=DIR/cache --config.model.pretrained=torchvision:mobilenet_v2

Reads the config the runs use, with `model.trainable='heads'` (so the whole frozen backbone is the cached
prefix and its rows are the pooled features the hash head sees), computes or reads that feature cache, fits
`ssdh_jax.probe.ceiling` (C chosen on the validation split) and prints one Markdown row: protocol, split hash,
backbone and input size, probe accuracy on the queries and the mAP@all of the probe's class-probability
embedding over the database. `--features-of RUN` instead takes a trained run's backbone (its best checkpoint)
up to the pooled features, so a partly fine-tuned representation gets its own ceiling.
"""

from __future__ import annotations

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Run config (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where the split files go (and the feature cache, if not configured).")
flags.DEFINE_string("features_of", "", "A trained run folder: probe its fine-tuned backbone instead.")
flags.DEFINE_string("out", "", "Append the row (JSON) to this file too.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def frozen_pooled(config, workdir: str):
  import jax

  from ssdh_jax import models, train_lib
  from ssdh_jax.data import pipeline

  c = config.copy_and_resolve_references()
  c.model.trainable = "heads"
  splits, meta = pipeline.load_splits(c, workdir)
  init_model = models.build_model(c.model)
  tx, _, _ = train_lib.make_tx(c, models.variable_shapes(init_model, c.data.image_size)["params"])
  state = train_lib.create_train_state(c, init_model, tx, jax.random.PRNGKey(c.seed))
  _, view, _ = train_lib.input_view(c, state, splits, workdir)
  return {k: v.images for k, v in view.items()}, {k: v.labels for k, v in view.items()}, meta


def run_pooled(run: str, workdir: str):
  """Pooled backbone features of a trained run's best checkpoint (through its own cached prefix, if any)."""
  import jax
  import ml_collections
  import numpy as np

  from ssdh_jax import checkpoints, models, train_lib
  from ssdh_jax.data import pipeline

  with open(os.path.join(run, "config.json")) as f:
    c = ml_collections.ConfigDict(json.load(f))
  splits, meta = pipeline.load_splits(c, workdir)
  init_model = models.build_model(c.model)
  tx, _, _ = train_lib.make_tx(c, models.variable_shapes(init_model, c.data.image_size)["params"])
  state = train_lib.create_train_state(c, init_model, tx, jax.random.PRNGKey(c.seed))
  state, _ = checkpoints.Checkpointer(run, async_save=False).restore_best(state)
  _, view, _ = train_lib.input_view(c, state, splits, workdir)
  layer = train_lib.cached_prefix_layer(c)
  n_layers = len(models.backbone_layers(c.model.name))
  rest = models.build_backbone(c.model.name, layers=(layer, n_layers, 99))
  variables = {"params": state.params["backbone"]}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats["backbone"]
  apply = jax.jit(lambda x: rest.apply(variables, x, train=False))
  feats = {
    k: np.concatenate([np.asarray(apply(v.images[i : i + 500])) for i in range(0, len(v), 500)])
    for k, v in view.items()
  }
  return feats, {k: v.labels for k, v in view.items()}, meta, c


def main(argv) -> None:
  del argv
  from ssdh_jax import probe

  t0 = time.perf_counter()
  config = FLAGS.config
  if FLAGS.features_of:
    feats, labels, meta, config = run_pooled(FLAGS.features_of, FLAGS.workdir)
    what = f"{config.model.name} {config.data.image_size}px, fine-tuned from {config.model.trainable} ({FLAGS.features_of})"
  else:
    feats, labels, meta = frozen_pooled(config, FLAGS.workdir)
    what = f"{config.model.name} {config.data.image_size}px, frozen ({config.model.pretrained})"
  res = probe.ceiling(feats, labels)
  row = {
    "protocol": meta["protocol"],
    "split_hash": meta["split_hash"][:12],
    "representation": what,
    "dim": res["dim"],
    "C": res["C"],
    "val_accuracy": res["val_accuracy"][res["C"]],
    "probe_accuracy": res["probe_accuracy"],
    "probe_map_all": res["probe_map"],
    "seconds": time.perf_counter() - t0,
  }
  print(
    "| protocol | split hash | representation | probe acc. (queries) | class-prob. mAP@all | C (by val.) |\n"
    "|---|---|---|---|---|---|\n"
    f"| {row['protocol']} | {row['split_hash']} | {what} | {row['probe_accuracy']:.4f} | "
    f"{row['probe_map_all']:.4f} | {row['C']} |"
  )
  if FLAGS.out:
    with open(FLAGS.out, "a") as f:
      f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  app.run(main)
