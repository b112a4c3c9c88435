import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from ssdh_jax import optim


def _params():
  return {
    "backbone": {
      "conv": {"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.ones((2,))},
      "bn": {"scale": jnp.ones(2)},
    },
    "hash": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones((3,))},
  }


def test_weight_decay_only_on_kernels():
  mask = optim.weight_decay_mask(_params())
  assert mask["backbone"]["conv"]["kernel"] and mask["hash"]["kernel"]
  assert (
    not mask["backbone"]["conv"]["bias"] and not mask["hash"]["bias"] and not mask["backbone"]["bn"]["scale"]
  )


def test_sgd_update_matches_caffe_rule():
  cfg = default.get_config().optim
  cfg.lr, cfg.momentum, cfg.weight_decay, cfg.bias_lr_mult, cfg.backbone_lr_mult = 0.1, 0.9, 0.01, 2.0, 0.5
  cfg.schedule = "constant"
  params = _params()
  tx, _ = optim.make_optimizer(cfg, params, 100)
  grads = {
    k: {
      kk: {n: jnp.full_like(v, 0.5) for n, v in vv.items()}
      if isinstance(vv, dict)
      else jnp.full_like(vv, 0.5)
      for kk, vv in d.items()
    }
    for k, d in params.items()
  }
  state = tx.init(params)
  upd, state = tx.update(grads, state, params)
  # Caffe: v = lr * mult * (g + wd * w) on the first step (zero momentum buffer).
  np.testing.assert_allclose(upd["hash"]["kernel"], -0.1 * 1.0 * (0.5 + 0.01), rtol=1e-6)
  np.testing.assert_allclose(upd["hash"]["bias"], -0.1 * 2.0 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(upd["backbone"]["conv"]["kernel"], -0.1 * 0.5 * (0.5 + 0.01), rtol=1e-6)
  np.testing.assert_allclose(upd["backbone"]["conv"]["bias"], -0.1 * 0.5 * 2.0 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(upd["backbone"]["bn"]["scale"], -0.1 * 0.5 * 0.5, rtol=1e-6)
  upd2, _ = tx.update(grads, state, params)  # momentum: second update = 1.9x the first (same gradient)
  np.testing.assert_allclose(upd2["hash"]["bias"], 1.9 * upd["hash"]["bias"], rtol=1e-6)


def test_schedules():
  cfg = default.get_config().optim
  cfg.lr, cfg.step_every, cfg.step_gamma = 1.0, 10, 0.1
  s = optim.learning_rate_schedule(cfg, 100)
  assert (
    float(s(9)) == pytest.approx(1.0)
    and float(s(10)) == pytest.approx(0.1)
    and float(s(25)) == pytest.approx(0.01)
  )
  cfg.schedule, cfg.warmup_steps = "cosine", 10
  s = optim.learning_rate_schedule(cfg, 100)
  assert float(s(0)) == 0.0 and float(s(10)) == pytest.approx(1.0) and float(s(100)) < 1e-3
  cfg.schedule = "bogus"
  with pytest.raises(ValueError, match=r"config\.optim\.schedule"):
    optim.learning_rate_schedule(cfg, 100)
