"""Every config field is checked up front with a one-line error naming it (ssdh_jax.config_checks)."""

import importlib
import inspect
import pkgutil

import pytest

import configs
from configs import digits_demo
from ssdh_jax import config_checks


@pytest.mark.parametrize("name", [m.name for m in pkgutil.iter_modules(configs.__path__)])
def test_shipped_configs_pass(name):
  mod = importlib.import_module(f"configs.{name}")
  takes_bits = inspect.signature(mod.get_config).parameters
  for bits in ("12", "48") if takes_bits else (None,):
    config_checks.check_config(mod.get_config(bits) if takes_bits else mod.get_config())


@pytest.mark.parametrize(
  "field,value,says",
  [
    ("train.num_steps", -5, "must be ≥ 1, got -5"),
    ("model.bits", 0, "must be ≥ 1, got 0"),
    ("optim.lr", 0.0, "must be > 0.0"),
    ("data.augment", "flip", "expected one of none | crop_flip | pad_crop_flip, got 'flip'"),
    ("model.name", "resnet", "unknown backbone 'resnet'; registered: vgg_f, alexnet"),
    ("eval.topk", (10, 0), "list of integers ≥ 1"),
    ("loss.neg_window", (5, 2), "0 ≤ a < b"),
    ("model.dropout", 1.0, "must be < 1.0"),
    ("train.eval_every", -1, "must be ≥ 0, got -1"),
  ],
)
def test_bad_values_name_the_field(field, value, says):
  c = digits_demo.get_config("16")
  sect, leaf = field.split(".")
  with c.unlocked():
    c[sect][leaf] = value
  with pytest.raises(ValueError) as e:
    config_checks.check_config(c)
  assert str(e.value).startswith(f"config.{field}: ") and says in str(e.value)
  assert "\n" not in str(e.value)


def test_batch_must_split_over_devices():
  c = digits_demo.get_config("16")
  c.train.batch_size, c.train.num_devices = 30, 4
  with pytest.raises(ValueError, match=r"config\.train\.batch_size: 30 does not split"):
    config_checks.check_config(c)


def test_fields_an_older_run_lacks_are_skipped():
  d = digits_demo.get_config("16").to_dict()
  del d["loss"]["lam_rampup_steps"], d["train"]["term_grad_norms"]
  config_checks.check_config(d)
