"""The embedded demo: SSDH on scikit-learn's bundled digits, several code lengths, one mAP table.

`python demo.py --workdir workdir/demo` (what `make demo` runs). Each code length trains in its own
run directory (resumable, with checkpoints, metrics.jsonl, TensorBoard events, metrics.json and plots);
the summary table is printed and written to <workdir>/summary.md.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "workdir/demo", "Where the runs, reports and plots go.")
flags.DEFINE_list("bits", ["16", "32"], "Code lengths to train.")
flags.DEFINE_integer("steps", 0, "Override train.num_steps (0: the config's).")
flags.DEFINE_bool(
  "compare_supervised", False, "Also train the supervised-only ablation (labeled images, lambda=0)."
)


def run(workdir: str, bits: list[int], steps: int = 0, compare_supervised: bool = False) -> list[dict]:
  from configs import digits_demo
  from ssdh_jax import evaluate, train_lib

  rows = []
  for b in bits:
    variants = [("ssdh", {})]
    if compare_supervised:
      variants.append(("supervised", {"lam": 0.0, "include_unlabeled": False}))
    for name, change in variants:
      config = digits_demo.get_config(str(b))
      if steps:
        config.train.num_steps = steps
      if change:
        config.loss.lam = change["lam"]
        config.data.include_unlabeled = change["include_unlabeled"]
      config.lock()
      run_dir = os.path.join(workdir, f"{name}_{b}bits")
      print(f"== {name}, {b} bits -> {run_dir}", flush=True)
      t0 = time.perf_counter()
      results = train_lib.train_and_evaluate(config, run_dir)
      results["key"]["loss"] = f"{config.loss.name}" + ("" if name == "ssdh" else " (supervised-only)")
      results["key"]["wall_s"] = round(time.perf_counter() - t0, 1)
      rows.append(results)
  table = evaluate.markdown_table(rows)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write("# ssdh_jax demo: protocol digits (sklearn), small_cnn\n\n" + table)
  print("\n" + table)
  print(
    f"Reports and plots: {workdir}/*/metrics.json, results.md, eval_curves.png; summary: {workdir}/summary.md"
  )
  return rows


def main(argv) -> None:
  del argv
  from absl import logging

  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  os.makedirs(FLAGS.workdir, exist_ok=True)
  run(FLAGS.workdir, [int(b) for b in FLAGS.bits], FLAGS.steps, FLAGS.compare_supervised)


if __name__ == "__main__":
  app.run(main)
