"""ssdh_jax.plugins in-process: importing user files and names, the run folder's record of them, entry points.

Each test starts from an empty set of loaded modules and restores sys.modules and sys.path afterwards, so
nothing here reaches another test's run folder (train_and_evaluate records what `plugins` loaded).
"""

import hashlib
import json
import sys

import pytest

from ssdh_jax import plugins


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
  monkeypatch.setattr(plugins, "_LOADED", {})
  monkeypatch.setattr(plugins, "_ENTRY_POINTS_DONE", set())
  monkeypatch.setattr(sys, "path", list(sys.path))
  before = set(sys.modules)
  yield
  for name in set(sys.modules) - before:
    del sys.modules[name]


def _write(path, text):
  path.write_text(text)
  return str(path)


def test_a_file_is_imported_once_and_recorded(tmp_path):
  f = _write(
    tmp_path / "plug_once.py",
    "import sys\nCOUNT = getattr(sys, '_plug_once', 0) + 1\nsys._plug_once = COUNT\n",
  )
  rec = plugins.load_module(f)
  assert rec == {"name": "plug_once", "kind": "path", "given": f, "path": f,
                 "sha256": hashlib.sha256((tmp_path / "plug_once.py").read_bytes()).hexdigest()}  # fmt: skip
  assert (
    plugins.load_module(f)["sha256"] == rec["sha256"] and sys.modules["plug_once"].COUNT == 1
  )  # not rerun
  del sys._plug_once
  assert plugins.loaded() == [rec]


@pytest.mark.parametrize(
  "source,says",
  [
    (None, "no such file"),
    ("def f(:\n", "importing it raised SyntaxError: {any} ({path}:1)"),
    ("x = 1\nraise RuntimeError('boom')\n", "importing it raised RuntimeError: boom ({path}:2)"),
  ],
)
def test_a_file_that_does_not_import_is_one_line(tmp_path, source, says):
  path = tmp_path / "plug_bad.py"
  if source is not None:
    path.write_text(source)
  with pytest.raises(plugins.PluginError) as e:
    plugins.load_module(str(path))
  head, _, tail = (f"--module {path}: " + says.format(path=path, any="\0")).partition("\0")
  assert str(e.value).startswith(head) and str(e.value).endswith(tail) and "\n" not in str(e.value)
  assert "plug_bad" not in sys.modules and plugins.loaded() == []


def test_a_file_named_like_a_loaded_module_is_refused(tmp_path):
  f = _write(tmp_path / "json.py", "")
  with pytest.raises(
    plugins.PluginError, match=r"the module name 'json' is already taken by .*; rename the file"
  ):
    plugins.load_module(f)


def test_a_name_is_imported_from_the_current_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
  _write(tmp_path / "plug_by_name.py", "X = 7\n")
  rec = plugins.load_module("plug_by_name")
  assert rec["kind"] == "name" and rec["path"] == str(tmp_path / "plug_by_name.py")
  with pytest.raises(plugins.PluginError, match="--module plug_missing: no module named 'plug_missing'"):
    plugins.load_module("plug_missing")


def _recorded_run(tmp_path, text="X = 1\n"):
  """A run folder whose modules.json records one file, as a finished training process leaves it."""
  f = _write(tmp_path / "plug_rec.py", text)
  plugins.load_module(f)
  run = tmp_path / "run"
  run.mkdir()
  plugins.record(str(run))
  plugins._LOADED.clear()  # a new process (eval.py): nothing imported yet
  del sys.modules["plug_rec"]
  return str(run), f


def test_a_recorded_file_is_imported_again(tmp_path):
  run, f = _recorded_run(tmp_path)
  assert json.load(open(f"{run}/modules.json"))["modules"][0]["path"] == f
  warnings = []
  assert [r["name"] for r in plugins.import_recorded(run, warnings.append)] == ["plug_rec"]
  assert sys.modules["plug_rec"].X == 1 and warnings == []


def test_a_changed_recorded_file_warns_once_and_is_used(tmp_path):
  run, f = _recorded_run(tmp_path)
  with open(f, "a") as fh:
    fh.write("X = 2\n")
  warnings = []
  plugins.import_recorded(run, warnings.append)
  assert sys.modules["plug_rec"].X == 2
  assert len(warnings) == 1 and warnings[0].startswith(
    f"warning: module 'plug_rec' ({f}) changed since this run"
  )


def test_a_missing_recorded_file_is_an_error_unless_replaced(tmp_path):
  run, f = _recorded_run(tmp_path)
  (tmp_path / "plug_rec.py").unlink()
  with pytest.raises(plugins.PluginError) as e:
    plugins.import_recorded(run, print)
  assert str(e.value) == (
    f"{run}/modules.json: this run was trained with module 'plug_rec' from {f}, which no longer exists; "
    "pass --module with the file's new path"
  )
  warnings = []
  assert plugins.import_recorded(run, warnings.append, replaced=True) == []
  assert "no longer exists; relying on the --module given instead" in warnings[0]


def test_an_unreadable_record_is_one_line(tmp_path):
  (tmp_path / "modules.json").write_text("{not json")
  with pytest.raises(plugins.PluginError, match=r"modules\.json: unreadable record of the run's modules"):
    plugins.import_recorded(str(tmp_path), print)
  assert plugins.import_recorded(str(tmp_path / "none"), print) == []  # no record: nothing to import


def test_record_writes_nothing_without_modules(tmp_path):
  plugins.record(str(tmp_path))
  assert not (tmp_path / "modules.json").exists()


def _fake_distribution(root, name, entry, module_source):
  """A distribution as pip leaves it in site-packages: NAME-0.1.dist-info (METADATA, entry_points.txt) plus
  its module, so importlib.metadata finds it on sys.path without installing anything."""
  info = root / f"{name}-0.1.dist-info"
  info.mkdir(parents=True)
  (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
  (info / "entry_points.txt").write_text(f"[{plugins.ENTRY_POINT_GROUP}]\n{entry}\n")
  (root / f"{name}_ext.py").write_text(module_source)


def test_entry_points_are_loaded_and_a_function_is_called_once(tmp_path, monkeypatch):
  src = "import sys\ndef register():\n  sys._plug_calls = getattr(sys, '_plug_calls', 0) + 1\n"
  _fake_distribution(tmp_path, "okplug", "ok = okplug_ext:register", src)
  monkeypatch.syspath_prepend(str(tmp_path))
  recs = plugins.load_entry_points()
  plugins.load_entry_points()
  assert sys._plug_calls == 1
  del sys._plug_calls
  assert recs == [{"name": "okplug_ext", "kind": "entry_point", "given": "ok = okplug_ext:register",
                   "path": str(tmp_path / "okplug_ext.py"), "distribution": "okplug 0.1",
                   "sha256": hashlib.sha256((tmp_path / "okplug_ext.py").read_bytes()).hexdigest()}]  # fmt: skip


def test_a_broken_entry_point_names_itself_and_its_distribution(tmp_path, monkeypatch):
  _fake_distribution(tmp_path, "badplug", "bad = badplug_ext", "x = 1 / 0\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(plugins.PluginError) as e:
    plugins.load_entry_points()
  assert str(e.value) == (
    f"entry point bad = badplug_ext (group ssdh_jax.plugins, from badplug 0.1): importing it raised "
    f"ZeroDivisionError: division by zero ({tmp_path / 'badplug_ext.py'}:1)"
  )
