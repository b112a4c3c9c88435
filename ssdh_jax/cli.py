"""absl mains behind train.py, eval.py and the console scripts ssdh-train / ssdh-eval / ssdh-search."""

from __future__ import annotations

import json
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS

# Compiled programs persist here between runs, so only the first start of a model pays XLA compile time
# (initialiser, train step, encoder). JAX_COMPILATION_CACHE_DIR, when set, wins.
DEFAULT_XLA_CACHE = os.path.join("~", ".cache", "ssdh_jax", "xla")
XLA_CACHE_MAX_BYTES = 4 << 30  # least recently used programs go first beyond this


def _define_common_flags() -> None:
  flags.DEFINE_string(
    "xla_cache",
    os.environ.get("SSDH_JAX_XLA_CACHE", DEFAULT_XLA_CACHE),
    "Persistent XLA compilation cache directory ('' disables; env SSDH_JAX_XLA_CACHE sets the default).",
  )
  flags.DEFINE_multi_string(
    "module",
    [],
    "Your Python code to import first, so the names it registers (backbones, loss terms, graph builders, "
    "losses) can be used: a file (path/to/my_ext.py) or an importable name (my_pkg.ext); repeat for several. "
    "The run folder records it (modules.json): eval.py and ssdh-search on that folder import it again. "
    "Installed packages can instead declare an 'ssdh_jax.plugins' entry point, loaded by every command.",
  )


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
  flags.DEFINE_bool(
    "distributed",
    False,
    "Evaluate on several processes (jax.distributed, the run's saved train.coordinator_address etc. or "
    "--override train.*). Default: this process alone, whatever number of processes trained the run.",
  )
  flags.DEFINE_float(
    "connect_timeout", 10.0, "With --distributed: seconds for the coordinator to answer (processes ≥ 1)."
  )
  flags.mark_flags_as_required(["workdir"])


def _define_search_flags() -> None:
  flags.DEFINE_string(
    "workdir", None, "Run directory of the model that made the index (for encoding images)."
  )
  flags.DEFINE_string(
    "index", "", "Code index (.npz); default <workdir>/database_index.npz, which eval.py writes."
  )
  flags.DEFINE_multi_string("image", None, "Query image path (repeat the flag for several).")
  flags.DEFINE_integer("k", 10, "Number of neighbours to print.")
  flags.DEFINE_integer("radius", -1, "If >= 0, print every item within this Hamming radius instead of top-k.")
  flags.DEFINE_enum("format", "table", ["table", "jsonl"], "table (for people) | jsonl (one hit per line).")
  flags.mark_flags_as_required(["workdir"])


def _train(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _start()
  _load_user_code(FLAGS.workdir)  # before any name in the config is resolved
  from ssdh_jax import multihost, train_lib

  try:
    results = train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (FileNotFoundError, ValueError, train_lib.NonFiniteError, multihost.DistributedError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if results.get("preempted"):  # SIGTERM: a checkpoint at an agreed step, a clean exit for the scheduler
    print(
      f"preempted: stopped after step {results['step']} with a checkpoint in {FLAGS.workdir}; run the same "
      "command again to resume",
      file=sys.stderr,
    )
    return
  _print_summary(results)


def _print_summary(results) -> None:
  from ssdh_jax import evaluate

  if "metrics" in results:
    print(evaluate.markdown_table([results]))


def _eval(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _start()
  _load_user_code(FLAGS.workdir)
  from ssdh_jax import evaluate_run, multihost

  try:
    results = evaluate_run.evaluate_workdir(
      FLAGS.workdir,
      FLAGS.checkpoint,
      _eval_overrides(FLAGS.override),
      log=_stderr,
      distributed=FLAGS.distributed,
      connect_timeout=FLAGS.connect_timeout,
    )
  except (FileNotFoundError, ValueError, multihost.DistributedError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  _print_summary(results)


def _stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _eval_overrides(overrides: list[str]) -> list[str]:
  # A run trained with train.progress=False (e.g. by bench/quality.py) still shows eval.py's encode bar on a
  # terminal (tqdm stays silent elsewhere), unless the user overrides it.
  if any(o.split("=", 1)[0] == "train.progress" for o in overrides):
    return list(overrides)
  return ["train.progress=True", *overrides]


def _search(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _start()
  from ssdh_jax import evaluate_run

  if not FLAGS.image:
    _fail("--image: give at least one query image (repeat --image for several)")
  _load_user_code(FLAGS.workdir)
  index_path = FLAGS.index or os.path.join(FLAGS.workdir, "database_index.npz")
  if not FLAGS.index and os.path.exists(os.path.join(FLAGS.workdir, "config.json")):
    if not os.path.exists(index_path):  # eval.py writes it (the evaluated database, encoded once)
      _fail(f"{index_path}: no search index yet; run `python eval.py --workdir {FLAGS.workdir}` first")
  try:
    rows = evaluate_run.search_images(FLAGS.workdir, index_path, FLAGS.image, FLAGS.k, FLAGS.radius)
  except (FileNotFoundError, ValueError) as e:
    _fail(str(e))
  for row in rows:
    if FLAGS.format == "jsonl":
      for hit in row["hits"]:
        print(json.dumps({"query": row["image"], **hit}))
      continue
    print(f"query: {row['image']}  ({len(row['hits'])} hits)")
    print("rank\tdistance\tid\tlabel\tpath")
    for h in row["hits"]:
      label = ",".join(str(c) for c in h["label"]) or "-"
      print(f"{h['rank']}\t{h['distance']}\t{h['id']}\t{label}\t{h['path'] or '-'}")


def _load_user_code(workdir: str | None) -> None:
  """Imports the `ssdh_jax.plugins` entry points, the --module flags, then the modules `workdir`'s run recorded
  (those not given again); a problem is one line and exit 2, a changed recorded file one warning line."""
  from ssdh_jax import plugins

  try:
    plugins.load_entry_points()
    for given in FLAGS.module:
      plugins.load_module(given)
    if workdir and os.path.isdir(workdir):
      plugins.import_recorded(workdir, warn=_stderr, replaced=bool(FLAGS.module))
  except plugins.PluginError as e:
    _fail(str(e))


def _start() -> None:
  """Console verbosity and the compilation cache, once the flags are parsed."""
  # Orbax logs every save at INFO; keep the console for the progress bar unless --verbosity asks for more.
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  _compilation_cache(FLAGS.xla_cache)


def _compilation_cache(path: str) -> None:
  """Points JAX's persistent compilation cache at `path` (unless JAX_COMPILATION_CACHE_DIR is set)."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") or not path:
    return
  import jax

  path = os.path.expanduser(path)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    _fail(f"--xla_cache={path}: cannot create the directory ({e.strerror}); pass --xla_cache= to disable")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_compilation_cache_max_size", XLA_CACHE_MAX_BYTES)


def _flags_parser(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors (exit 2) and a --help that lists this tool's own flags."""
  if any(a in ("-h", "--help", "-help", "--helpshort") for a in argv[1:]):
    doc = (sys.modules["__main__"].__doc__ or "").strip()
    print((doc + "\n\n" if doc else "") + FLAGS.module_help(sys.modules[__name__]))
    sys.exit(0)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(f"flags: {e}")
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # config_flags: unknown field, bad value
    text = str(e)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    for arg in (a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")):
      parts = arg[len("--config.") :].split(".")
      for n, part in enumerate(parts):
        if re.search(r"'" + re.escape(part) + r"'", text.replace("\\'", "'")):
          fix = ".".join([*parts[:n], hint.group(1), *parts[n + 1 :]]) if hint else ""
          _fail(f"{arg}: no such config field" + (f" (did you mean --config.{fix}?)" if fix else ""))
    _fail(f"config: {' '.join(text.split())}")
  raise AssertionError("unreachable")


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def train_main() -> None:
  """`train.py` / ssdh-train: `--config FILE --workdir DIR [--config.key=value ...] [--module M ...]`.

  Trains into DIR (resumed when it holds checkpoints) and prints the report table. Exit 2 with one line on
  bad input (flags, config values, unknown names, data), before the run folder is created.
  """
  _define_common_flags()
  _define_train_flags()
  app.run(_train, flags_parser=_flags_parser)


def eval_main() -> None:
  """`eval.py` / ssdh-eval: `--workdir DIR [--checkpoint best|latest|STEP] [--override key=value ...]`.

  Evaluates a run's checkpoint (query vs database), writes metrics.json and the search index
  (database_index.npz), and prints the report table. The run's recorded modules are imported first.
  """
  _define_common_flags()
  _define_eval_flags()
  app.run(_eval, flags_parser=_flags_parser)


def search_main() -> None:
  """ssdh-search: `--workdir DIR --image Q.png [--image ...] [--k 10 | --radius R] [--format table|jsonl]`.

  Encodes the query images with the run's best checkpoint and searches the index eval.py wrote (run eval.py
  first). The run's recorded modules are imported first.
  """
  _define_common_flags()
  _define_search_flags()
  app.run(_search, flags_parser=_flags_parser)


if __name__ == "__main__":  # pragma: no cover
  {"train": train_main, "eval": eval_main, "search": search_main}[os.environ.get("SSDH_MAIN", "train")]()
