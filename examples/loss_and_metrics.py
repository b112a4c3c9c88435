"""The SSDH loss and the retrieval metrics as pure functions on NumPy arrays: no model, no trainer.

  python examples/loss_and_metrics.py

A batch of relaxed codes (what a hash layer's sigmoid gives), half of it labeled, goes through the jitted SSDH
loss and its gradient; then random codes are scored with mAP@all, the way `eval.py` scores a database.
"""

import jax
import jax.numpy as jnp
import numpy as np

from ssdh_jax import hashing, losses, metrics


def main(seed: int = 0) -> dict[str, float]:
  rng = np.random.default_rng(seed)
  n, bits, classes = 64, 32, 5
  y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
  labeled = rng.random(n) < 0.5
  y[~labeled] = 0.0  # unlabeled rows carry no label
  outputs = {
    "codes": jnp.asarray(1 / (1 + np.exp(-rng.normal(size=(n, bits)))), jnp.float32),
    "class_logits": jnp.asarray(rng.normal(size=(n, classes)), jnp.float32),
  }
  settings = losses.SSDHLoss(variant="single_label", lam=0.1)  # hashable: a static argument of jit

  @jax.jit
  def loss_and_grad(outputs, key):
    fn = lambda o: losses.ssdh_loss(o, y, labeled, key, settings)
    return jax.value_and_grad(fn, has_aux=True)(outputs)

  (loss, aux), grads = loss_and_grad(outputs, jax.random.PRNGKey(seed))
  print(
    f"SSDH loss {float(loss):.4f}: " + ", ".join(f"{k} {float(v):.4f}" for k, v in aux.items() if "loss" in k)
  )
  print(f"gradient norm w.r.t. the codes: {float(jnp.linalg.norm(grads['codes'])):.4f}")

  # Retrieval metrics on binary codes: 100 queries against 2,000 database items, 10 classes.
  q_codes = hashing.pack_bits(jnp.asarray(rng.random((100, bits)) < 0.5))
  db_codes = hashing.pack_bits(jnp.asarray(rng.random((2000, bits)) < 0.5))
  res = metrics.evaluate_codes(
    q_codes, db_codes, rng.integers(0, 10, 100), rng.integers(0, 10, 2000), bits=bits, R=0
  )
  print(f"mAP@all of random codes: {res['map']:.4f} (chance is about 0.10)")
  return {"loss": float(loss), "map": float(res["map"])}


if __name__ == "__main__":
  main()
