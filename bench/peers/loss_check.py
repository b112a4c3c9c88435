"""That the PyTorch port computes the same SSDH loss as ssdh_jax, before their speeds are compared."""

from __future__ import annotations

import numpy as np

from bench.train_setup import BITS, synthetic_batch


def sanity_check(loss_cfg, n: int = 32, k: int = BITS, c: int = 10, tol: float = 1e-4) -> str:
  """ssdh_jax vs torch_ref on CPU: same random words → same sampled indices; same indices → same loss/grads.

  Returns one line starting PASS or FAIL; raises ImportError when torch is missing."""
  import jax
  import jax.numpy as jnp
  import torch

  from bench.peers import torch_ref
  from ssdh_jax import graph, losses

  cpu = jax.devices("cpu")[0]
  rng = np.random.default_rng(3)
  b = synthetic_batch(n, 1, c, seed=3)
  codes = (1 / (1 + np.exp(-rng.normal(size=(n, k))))).astype(np.float32)
  logits = rng.normal(size=(n, c)).astype(np.float32)
  tries = max(1, int(loss_cfg.max_tries))
  with jax.default_device(cpu):
    key = jax.random.PRNGKey(7)
    out_j = {"codes": jnp.asarray(codes), "class_logits": jnp.asarray(logits)}
    sample = jax.jit(lambda o, y, m, kk: losses.ssdh_sample(o, y, m, kk, loss_cfg))
    s_j = {kk: np.array(v) for kk, v in jax.device_get(sample(out_j, b["labels"], b["labeled"], key)).items()}
    bits = np.asarray(graph.anchor_bits(key, jnp.arange(n, dtype=jnp.int32), 4 + 2 * tries)).astype(np.int64)

    def jl(o):
      return losses.ssdh_terms(o, b["labels"], b["labeled"], s_j, loss_cfg)

    (loss_j, aux_j), grad_j = jax.jit(jax.value_and_grad(jl, has_aux=True))(out_j)
  cfg_t = loss_cfg.to_dict()
  lab_t, msk_t = torch.from_numpy(b["labels"]), torch.from_numpy(b["labeled"])
  out_t = {
    "codes": torch.from_numpy(codes).requires_grad_(),
    "class_logits": torch.from_numpy(logits).requires_grad_(),
  }
  s_t = torch_ref.ssdh_sample(out_t, lab_t, msk_t, cfg_t, bits=torch.from_numpy(bits))
  idx_keys = [kk for kk in s_j if kk != "anchors"]
  same = sum(bool(np.array_equal(np.asarray(s_j[kk]), s_t[kk].numpy())) for kk in idx_keys)
  loss_t, aux_t = torch_ref.ssdh_terms(
    out_t, lab_t, msk_t, {kk: torch.from_numpy(v) for kk, v in s_j.items()}, cfg_t
  )
  loss_t.backward()
  d_loss = max(
    abs(float(loss_j) - loss_t.item()),
    *(abs(float(aux_j[t]) - aux_t[t].item()) for t in ("loss_rank", "loss_emb", "loss_pl", "loss_cls")),
  )
  grad_t = {
    kk: np.zeros_like(v) if out_t[kk].grad is None else out_t[kk].grad.numpy() for kk, v in grad_j.items()
  }
  d_grad = max(float(np.max(np.abs(np.asarray(grad_j[kk]) - grad_t[kk]))) for kk in grad_j)
  ok = same == len(idx_keys) and d_loss <= tol and d_grad <= tol
  return (
    f"{'PASS' if ok else 'FAIL'}: with ssdh_jax's random words torch_ref samples {same}/{len(idx_keys)} index "
    f"arrays identically (N={n}); with the same indices loss/term max |Δ| = {d_loss:.1e}, output-gradient "
    f"max |Δ| = {d_grad:.1e} (tol {tol:g})"
  )
