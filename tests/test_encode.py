"""`evaluate.encode`: one compiled encoder per model, reused by every call (validation passes, eval.py's
query and database), and the same codes whichever batch is in flight."""

import jax
import numpy as np

from configs import digits_demo
from ssdh_jax import evaluate, models
from ssdh_jax.data import pipeline


def _setup(tmp_path):
  c = digits_demo.get_config("16")
  c.model.width = 8
  splits, _ = pipeline.load_splits(c, str(tmp_path))
  model = models.build_model(c.model)
  variables = models.init_variables(model, jax.random.PRNGKey(0), c.data.image_size)
  state = evaluate.ModelState(variables["params"], variables.get("batch_stats", {}))
  return c, model, state, splits


def test_encoder_is_built_and_traced_once(tmp_path):
  c, model, state, splits = _setup(tmp_path)
  again = models.build_model(c.model)  # another object, equal fields
  assert evaluate.make_encoder(model, "unit") is evaluate.make_encoder(again, "unit")
  assert evaluate.make_encoder(model, "unit") is not evaluate.make_encoder(model, "imagenet")
  traces = []
  apply = model.apply
  object.__setattr__(model, "apply", lambda *a, **k: traces.append(1) or apply(*a, **k))
  try:
    evaluate._cached_encoder.cache_clear()
    ex = splits["query"].subset(np.arange(40))
    evaluate.encode(c, model, state, ex, batch_size=16)
    first = len(traces)
    evaluate.encode(c, model, state, ex, batch_size=16)
  finally:
    object.__delattr__(model, "apply")
  assert first >= 1 and len(traces) == first  # the second call compiled nothing


def test_codes_do_not_depend_on_the_batch_size(tmp_path):
  c, model, state, splits = _setup(tmp_path)
  ex = splits["query"].subset(np.arange(50))
  a = evaluate.encode(c, model, state, ex, batch_size=16, return_relaxed=True)  # 3 full batches + 2 rows
  b = evaluate.encode(c, model, state, ex, batch_size=64, return_relaxed=True)  # one batch
  np.testing.assert_array_equal(a["codes"], b["codes"])
  np.testing.assert_array_equal(a["ids"], ex.ids)
  np.testing.assert_allclose(a["relaxed"], b["relaxed"], rtol=1e-6, atol=1e-6)
