"""A run that fails before its first checkpoint (here: a user's loss term that raises while the train step is
traced) leaves no run folder behind; an existing folder is left in place."""

import os

import pytest

from ssdh_jax import losses, train_lib
from tests.test_freeze import _digits_config


@losses.register_term("test_fails_to_trace")
def _broken(inputs: losses.TermInputs):
  return inputs.outputs["no_such_output"].sum()


def test_failure_while_tracing_the_step_leaves_no_folder(tmp_path):
  c = _digits_config(steps=2)
  c.loss.extra_terms = (("test_fails_to_trace", 1.0),)
  wd = tmp_path / "run"
  with pytest.raises(KeyError, match="no_such_output"):
    train_lib.train_and_evaluate(c, str(wd))
  assert not os.path.exists(wd)
  os.makedirs(wd)  # a folder the user made: kept (only what this call created is removed)
  with pytest.raises(KeyError):
    train_lib.train_and_evaluate(c, str(wd))
  assert os.path.isdir(wd)
