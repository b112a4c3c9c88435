"""A new loss term in one file: a quantization penalty registered by name and trained by the standard trainer.

  python examples/custom_loss_term.py [--workdir DIR] [--steps N] [--weight W]      # from Python
  python train.py --config configs/digits_demo.py --workdir RUN \\
    --module examples/custom_loss_term.py --config.loss.extra_terms="(('quant', 0.1),)"   # from the command line

The term pulls each relaxed code toward its nearest binary value, ‖h − round(h)‖² averaged over the batch.
Registering it makes it available to `config.loss.extra_terms`; the trainer, the per-term gradient
diagnostics and the logs pick it up as `loss_quant` without any other change.
"""

import argparse
import json
import os
import tempfile

import jax
import jax.numpy as jnp

from configs import digits_demo
from ssdh_jax import losses, train_lib


@losses.register_term("quant")
def quantization_penalty(t: losses.TermInputs) -> jax.Array:
  """Sum over this call's anchors divided by the global batch size: an additive partial, so sharded runs sum
  to the same value (see `losses.register_term`)."""
  h = t.codes[t.anchors]
  return jnp.sum((h - jax.lax.stop_gradient(jnp.round(h))) ** 2) / t.num_rows


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="")
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--weight", type=float, default=0.1)
  args = p.parse_args(argv)
  config = digits_demo.get_config("16")
  config.loss.extra_terms = (("quant", args.weight),)
  config.train.num_steps = config.train.eval_every = config.train.checkpoint_every = args.steps
  config.train.log_every = max(args.steps // 4, 1)
  config.train.progress = False
  workdir = args.workdir or tempfile.mkdtemp(prefix="ssdh_quant_")
  results = train_lib.train_and_evaluate(config, workdir)
  logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  quant = [r["loss_quant"] for r in logged if "loss_quant" in r]
  print(f"loss_quant over training: {' -> '.join(f'{q:.4f}' for q in quant)}")
  print(f"mAP@all {results['metrics']['map']:.4f} (protocol digits, 16 bits); run folder {workdir}")
  return {"loss_quant": quant, "map": results["metrics"]["map"]}


if __name__ == "__main__":
  main()
