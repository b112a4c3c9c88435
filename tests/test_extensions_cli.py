"""Research extensions through the commands (issue 25): one-file modules given to train.py with --module, found
again by eval.py and ssdh-search through the run folder; ssdh_jax.plugins entry points; every config name
resolved before a run folder exists."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import digits_demo
from ssdh_jax import train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
  "--config.train.num_steps=4",
  "--config.train.batch_size=32",
  "--config.train.log_every=2",
  "--config.train.eval_every=4",
  "--config.train.checkpoint_every=4",
  "--config.train.progress=False",
]
SEARCH = ["-c", "from ssdh_jax import cli; cli.search_main()"]  # ssdh-search, without relying on the script
HOW = "in a module passed to train.py, eval.py and ssdh-search with --module"


def run(*args, env=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  return subprocess.run(
    [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600
  )


# ------------------------------------------------------------------------------- names, before the run folder


@pytest.mark.parametrize(
  "field,value,says",
  [
    ("loss.extra_terms", (("no_such_term", 0.1),), "config.loss.extra_terms: unknown loss term 'no_such_term'; "
     "registered: "),
    ("loss.graph", "no_such_graph", "config.loss.graph: unknown graph builder 'no_such_graph'; registered: knn_window"),
    ("loss.name", "no_such_loss", "config.loss.name: unknown loss 'no_such_loss'; registered: ssdh, dpsh"),
    ("model.name", "no_such_net", "config.model.name: unknown backbone 'no_such_net'; registered: vgg_f, alexnet"),
    ("data.protocol", "no_such_protocol", "config.data.protocol: unknown protocol 'no_such_protocol'; one of"),
    ("model.pretrained", "torchvision", "config.model.pretrained: 'torchvision': backbone 'small_cnn' has no "
     "torchvision checkpoint; 'torchvision:<model>' takes one of alexnet"),
    ("model.pretrained", "no_such_weights.pth", "config.model.pretrained: 'no_such_weights.pth' does not exist"),
    ("model.trainable", "conv9", "config.model.trainable='conv9': expected all, heads or a backbone layer"),
  ],
)  # fmt: skip
def test_a_bad_name_fails_in_one_line_before_the_run_folder_exists(tmp_path, field, value, says):
  c = digits_demo.get_config("16")
  section, leaf = field.split(".")
  c[section][leaf] = value
  with pytest.raises((ValueError, FileNotFoundError)) as e:
    train_lib.train_and_evaluate(c, str(tmp_path / "run"))
  message = str(e.value)
  assert message.startswith(says) and "\n" not in message
  if "unknown" in says and field != "data.protocol":  # registries: how to add one
    assert "add one with " in message and message.endswith(f"{HOW} (or an ssdh_jax.plugins entry point)")
  assert not (tmp_path / "run").exists()


def test_train_py_with_an_unknown_term_leaves_an_existing_folder_untouched(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  proc = run("train.py", "--config", "configs/digits_demo.py", "--workdir", str(tmp_path),
             "--config.loss.extra_terms=(('quant', 0.1),)")  # fmt: skip
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
    "error: config.loss.extra_terms: unknown loss term 'quant'; registered: "
    + proc.stderr.split("registered: ", 1)[1].split(";")[0]
    + "; add one with @ssdh_jax.losses.register_term(name) "
    + HOW
    + " (or an ssdh_jax.plugins entry point)"
  ]
  assert os.listdir(tmp_path) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_missing_module_file_is_one_line(tmp_path):
  proc = run("train.py", "--config", "configs/digits_demo.py", "--workdir", str(tmp_path / "run"),
             "--module", str(tmp_path / "my_ext.py"))  # fmt: skip
  assert (
    proc.returncode == 2 and proc.stderr.strip() == f"error: --module {tmp_path / 'my_ext.py'}: no such file"
  )
  assert not (tmp_path / "run").exists()


def test_train_py_resuming_a_run_imports_its_recorded_modules_first(tmp_path):
  """train.py on an existing run folder reads its modules.json before anything else: a recorded file that is
  gone stops it in one line, and the folder is left as it was."""
  record = {"modules": [{"name": "gone_ext", "kind": "path", "given": "gone_ext.py",
                         "path": str(tmp_path / "gone_ext.py"), "sha256": "0" * 64}]}  # fmt: skip
  (tmp_path / "modules.json").write_text(json.dumps(record))
  proc = run("train.py", "--config", "configs/digits_demo.py", "--workdir", str(tmp_path))
  assert proc.returncode == 2 and proc.stderr.strip() == (
    f"error: {tmp_path}/modules.json: this run was trained with module 'gone_ext' from {tmp_path}/gone_ext.py, "
    "which no longer exists; pass --module with the file's new path"
  )
  assert os.listdir(tmp_path) == ["modules.json"]


# ------------------------------------------------------------------------------- entry points


def test_entry_points_are_loaded_by_all_three_commands(tmp_path):
  """A fake installed distribution (a .dist-info folder on PYTHONPATH) declares an ssdh_jax.plugins entry point
  that registers a loss term; each command imports it before resolving names."""
  info = tmp_path / "fakeplug-0.1.dist-info"
  info.mkdir()
  (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
  (info / "entry_points.txt").write_text("[ssdh_jax.plugins]\nfake = fakeplug_ext:register\n")
  (tmp_path / "fakeplug_ext.py").write_text(
    "import sys\n"
    "def register():\n"
    "  from ssdh_jax import losses\n"
    "  losses.register_term('fake_term')(lambda t: (t.codes[t.anchors] ** 2).sum() / t.num_rows)\n"
    "  print('fakeplug: registered', file=sys.stderr)\n"
  )
  env = {"PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
  # The plugin's term resolves; the graph after it does not: the run stops there, before any folder.
  train = run("train.py", "--config", "configs/digits_demo.py", "--workdir", str(tmp_path / "run"),
              "--config.loss.extra_terms=(('fake_term', 0.1),)", "--config.loss.graph=nope", env=env)  # fmt: skip
  assert train.returncode == 2 and train.stderr.splitlines()[0] == "fakeplug: registered"
  assert train.stderr.splitlines()[-1].startswith("error: config.loss.graph: unknown graph builder 'nope'")
  assert not (tmp_path / "run").exists()
  for cmd in (["eval.py"], [*SEARCH, "--image", "q.png"]):
    proc = run(*cmd, "--workdir", str(tmp_path / "run"), env=env)
    assert proc.returncode == 2 and proc.stderr.splitlines()[0] == "fakeplug: registered", proc.stderr


# ------------------------------------------------------------------------------- one-file extensions, end to end


@pytest.mark.slow
def test_one_file_extensions_train_evaluate_and_search_through_the_commands(tmp_path):
  """The README's command-line path: examples/custom_{loss_term,graph,backbone}.py (copies, so they can be
  edited and removed) given to train.py with --module; eval.py and ssdh-search find them in the run folder."""
  ext = tmp_path / "ext"
  ext.mkdir()
  for name in ("custom_loss_term.py", "custom_graph.py", "custom_backbone.py"):
    shutil.copy(os.path.join(ROOT, "examples", name), ext / name)
  wd = str(tmp_path / "run")
  train = run(
    "train.py", "--config", "configs/digits_demo.py:16", "--workdir", wd,
    "--module", str(ext / "custom_loss_term.py"), "--config.loss.extra_terms=(('quant', 0.1),)",
    "--module", str(ext / "custom_graph.py"), "--config.loss.graph=nearest_random",
    "--module", str(ext / "custom_backbone.py"), "--config.model.name=tiny_mlp", *TINY,
  )  # fmt: skip
  assert train.returncode == 0, train.stderr[-3000:]
  assert "| digits |" in train.stdout and "| tiny_mlp |" in train.stdout
  logged = open(os.path.join(wd, "metrics.jsonl")).read()
  assert '"loss_quant"' in logged  # the term trained and was logged under its name

  from PIL import Image
  from sklearn.datasets import load_digits

  query = tmp_path / "q.png"
  Image.fromarray((load_digits().images[0] * 255 / 16).astype(np.uint8)).convert("RGB").save(query)
  search = [*SEARCH, "--workdir", wd, "--image", str(query), "--k", "3"]
  early = run(*search)  # before eval.py: no index yet
  assert early.returncode == 2 and early.stderr.strip() == (
    f"error: {wd}/database_index.npz: no search index yet; run `python eval.py --workdir {wd}` first"
  )

  ev = run("eval.py", "--workdir", wd)  # no --module: modules.json brings the three files back
  assert ev.returncode == 0, ev.stderr[-3000:]
  assert "| tiny_mlp |" in ev.stdout and "warning" not in ev.stderr

  with open(ext / "custom_loss_term.py", "a") as f:
    f.write("# edited after training\n")
  changed = run(*search)
  assert changed.returncode == 0, changed.stderr[-3000:]
  assert (
    changed.stdout.splitlines()[1] == "rank\tdistance\tid\tlabel\tpath"
    and len(changed.stdout.splitlines()) == 5
  )
  warnings = [line for line in changed.stderr.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and "module 'custom_loss_term'" in warnings[0] and "changed since" in warnings[0]

  (ext / "custom_backbone.py").unlink()
  gone = run("eval.py", "--workdir", wd)
  assert gone.returncode == 2 and gone.stderr.strip().splitlines()[-1] == (
    f"error: {wd}/modules.json: this run was trained with module 'custom_backbone' from "
    f"{ext / 'custom_backbone.py'}, which no longer exists; pass --module with the file's new path"
  )
