"""absl mains behind train.py, eval.py and the console scripts ssdh-train / ssdh-eval / ssdh-search."""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def _define_train_flags() -> None:
  config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py).", lock_config=True
  )
  flags.DEFINE_string("workdir", None, "Run directory (resumed when it holds checkpoints).")
  flags.mark_flags_as_required(["config", "workdir"])


def _define_eval_flags() -> None:
  flags.DEFINE_string("workdir", None, "Run directory written by train.py.")
  flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.")
  flags.DEFINE_list("override", [], "Eval-time config overrides key=value (e.g. eval.map_r=5000).")
  flags.mark_flags_as_required(["workdir"])


def _define_search_flags() -> None:
  flags.DEFINE_string("index", None, "Index file written by `ssdh-eval --write_index` (.npz).")
  flags.DEFINE_string(
    "workdir", None, "Run directory of the model that made the index (for encoding images)."
  )
  flags.DEFINE_multi_string("image", [], "Query image path(s).")
  flags.DEFINE_integer("k", 10, "Number of neighbours to print.")
  flags.DEFINE_integer("radius", -1, "If >= 0, print every item within this Hamming radius instead of top-k.")
  flags.mark_flags_as_required(["index", "workdir", "image"])


def _train(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _quiet_by_default()
  from ssdh_jax import train_lib

  try:
    results = train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (FileNotFoundError, ValueError, train_lib.NonFiniteError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  _print_summary(results)


def _print_summary(results) -> None:
  from ssdh_jax import evaluate

  if "metrics" in results:
    print(evaluate.markdown_table([results]))


def _eval(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _quiet_by_default()
  from ssdh_jax import evaluate_run

  try:
    results = evaluate_run.evaluate_workdir(FLAGS.workdir, FLAGS.checkpoint, FLAGS.override)
  except (FileNotFoundError, ValueError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  _print_summary(results)


def _search(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _quiet_by_default()
  from ssdh_jax import evaluate_run

  try:
    rows = evaluate_run.search_images(FLAGS.workdir, FLAGS.index, FLAGS.image, FLAGS.k, FLAGS.radius)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for row in rows:
    print(json.dumps(row))


def _quiet_by_default() -> None:
  # Orbax logs every save at INFO; keep the console for the progress bar unless --verbosity asks for more.
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def train_main() -> None:
  _define_train_flags()
  app.run(_train)


def eval_main() -> None:
  _define_eval_flags()
  app.run(_eval)


def search_main() -> None:
  _define_search_flags()
  app.run(_search)


if __name__ == "__main__":  # pragma: no cover
  {"train": train_main, "eval": eval_main, "search": search_main}[os.environ.get("SSDH_MAIN", "train")]()
