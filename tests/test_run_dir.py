"""A run folder refuses a conflicting config (ssdh_jax.run_dir)."""

import json

import pytest

from configs import digits_demo
from ssdh_jax import run_dir


def _stored(tmp_path, config):
  (tmp_path / "config.json").write_text(config.to_json_best_effort(indent=2))


def test_same_config_and_operational_changes_are_accepted(tmp_path):
  c = digits_demo.get_config("16")
  _stored(tmp_path, c)
  run_dir.check_workdir(c, str(tmp_path))
  c.train.progress = not c.train.progress
  c.data.manual_dir = "/elsewhere"
  c.train.term_grad_norms = 5
  run_dir.check_workdir(c, str(tmp_path))  # how it runs, not what it computes
  run_dir.check_workdir(c, str(tmp_path / "new"))  # no config.json yet


def test_conflicts_name_every_differing_field(tmp_path):
  c = digits_demo.get_config("16")
  _stored(tmp_path, c)
  d = digits_demo.get_config("12")  # bits, and the per-length loss window and margin
  d.train.num_steps += 1
  with pytest.raises(run_dir.WorkdirConflictError) as e:
    run_dir.check_workdir(d, str(tmp_path))
  msg = str(e.value)
  for field in ("model.bits: 16 (stored) vs 12 (given)", "train.num_steps", "loss.neg_window"):
    assert field in msg
  assert [k for k, _, _ in run_dir.config_conflicts(run_dir.as_json(c), run_dir.as_json(d))] == sorted(
    ["model.bits", "train.num_steps", "loss.neg_window", "loss.margin"]
  )


def test_fields_older_runs_lack_are_not_conflicts(tmp_path):
  c = digits_demo.get_config("16")
  old = run_dir.as_json(c)
  del old["loss"]["lam_rampup_steps"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  run_dir.check_workdir(c, str(tmp_path))


def test_unreadable_stored_config_is_refused(tmp_path):
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(run_dir.WorkdirConflictError, match=r"config\.json"):
    run_dir.check_workdir(digits_demo.get_config("16"), str(tmp_path))
