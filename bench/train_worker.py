"""One side of a train-step comparison, as a worker process: `python -m bench.train_worker SPEC_JSON`.

It builds and warms up the JAX step (exactly the trainer's: `train_lib.build_training`) or one PyTorch
configuration (bench/peers/torch_ref.py: the same network, loss and SGD), untimed, then answers the parent's
timing requests (`harness.serve`). Its threads are pinned before numpy / jax / torch start their pools:
threads started before sched_setaffinity keep the old affinity. bench/train_sides.py starts these workers.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any

from bench import harness

if __name__ == "__main__":
  _SPEC = json.loads(sys.argv[1])
  # Warm-up (build, compile) may spread over `warm_cores`; the timed steps run on `cores` (pin_all_threads).
  harness.pin_threads(int(_SPEC["threads"]), _SPEC.get("warm_cores") or _SPEC.get("cores") or None)

import numpy as np

from bench.train_setup import BITS, NUM_CLASSES, make_config, median_step, synthetic_batch

# ------------------------------------------------------------------------------------------------ JAX


def _jax_loss_ms(cfg, n: int, reps: int) -> tuple[float, str]:
  """Median ms of the jitted SSDH loss + gradient w.r.t. the outputs at this batch (bench_loss.time_loss)."""
  try:
    from bench.bench_loss import time_loss

    r = time_loss(n, BITS, reps=reps, loss_cfg=cfg.loss, num_classes=cfg.model.num_classes)
    return float(r["step_ms"]), "bench_loss.time_loss"
  except (ImportError, TypeError, KeyError):
    pass
  import jax
  import jax.numpy as jnp

  from ssdh_jax import losses

  b = synthetic_batch(n, 1, cfg.model.num_classes)
  rng = np.random.default_rng(1)
  outputs = {
    "codes": jnp.asarray(1 / (1 + np.exp(-rng.normal(size=(n, BITS)))), jnp.float32),
    "class_logits": jnp.asarray(rng.normal(size=(n, cfg.model.num_classes)), jnp.float32),
  }
  fn = losses.get_loss(cfg.loss.name)
  step = jax.jit(jax.value_and_grad(lambda o, key: fn(o, b["labels"], b["labeled"], key, cfg.loss)[0]))
  key = jax.random.PRNGKey(0)
  _, med = median_step(lambda: jax.block_until_ready(step(outputs, key)), 1, reps)
  return 1e3 * med, "ssdh_jax.losses"


def _cost_flops(obj) -> float | None:
  cost = obj.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  if not cost:
    return None
  return float(cost.get("flops", 0.0)) or None


def _forward_flops(model, state, batch: int, size: int) -> float | None:
  """XLA's FLOP count of one train-mode forward pass of the batch (lowered, not compiled)."""
  import jax
  import jax.numpy as jnp

  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  fwd = jax.jit(
    lambda v, x: model.apply(
      v, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)}, mutable=["batch_stats"]
    )
  )
  try:
    return _cost_flops(fwd.lower(variables, x))
  except Exception:
    return None


def jax_worker(spec: dict[str, Any]):
  """(one synchronised train step, info) for the JAX side; compile and warm-up done here, untimed."""
  import jax

  from ssdh_jax import mesh, train_lib

  size = spec["image_size"]
  cfg = make_config(
    spec["backbone"], spec["batch"], spec["dtype"], size, spec["augment"], spec["stored_size"]
  )
  dm = mesh.create("pmap", 1)
  model, tx, _, step_fn = train_lib.build_training(cfg, dm)
  state = train_lib.create_train_state(cfg, model, tx, jax.random.PRNGKey(cfg.seed))
  batch = synthetic_batch(spec["batch"], spec["stored_size"])
  fwd_flops = _forward_flops(model, state, spec["batch"], size)
  pstate = dm.replicate(state)
  pbatch = dm.shard_batch(batch)
  del state

  t = time.perf_counter()
  flops, note = None, ""
  try:
    compiled = step_fn.lower(pstate, pbatch).compile()
    try:
      flops = _cost_flops(compiled)
    except Exception as e:
      note = f"no cost_analysis ({type(e).__name__})"
  except Exception as e:
    compiled, note = step_fn, f"AOT lower failed ({type(e).__name__}); timed via pmap"
  compile_s = time.perf_counter() - t

  holder = {"state": pstate, "metrics": None}

  def one_step():
    holder["state"], holder["metrics"] = compiled(holder["state"], pbatch)
    jax.block_until_ready((holder["state"], holder["metrics"]))

  first, _ = median_step(one_step, spec["warmup"], 0)
  metrics = jax.device_get(holder["metrics"])
  loss_ms, loss_src = (None, "")
  if spec["loss_reps"]:
    loss_ms, loss_src = _jax_loss_ms(cfg, spec["batch"], spec["loss_reps"])
  info = {
    "compile_s": compile_s + (first if compiled is step_fn else 0.0),
    "first_step_s": first,
    "flops": flops,
    "model_flops": 3.0 * fwd_flops if fwd_flops else None,
    "loss_ms": loss_ms,
    "loss_src": loss_src,
    "loss": float(np.asarray(metrics["loss"]).reshape(-1)[0]),
    "finite": float(np.asarray(metrics["finite"]).reshape(-1)[0]),
    "note": note,
    "device_kind": dm.local_devices[0].device_kind,
    "version": jax.__version__,
  }
  return one_step, info


# ------------------------------------------------------------------------------------------------ PyTorch


def _torch_crop_flip(images, size: int):
  """ssdh_jax.data.pipeline.device_augment's crop_flip in torch: a random size×size crop per row and a
  random horizontal flip per row, on the images' device (uint8 NHWC in, uint8 NHWC out)."""
  import torch

  b, h, w, _ = images.shape
  dev = images.device
  ys = torch.randint(0, h - size + 1, (b,), device=dev)
  xs = torch.randint(0, w - size + 1, (b,), device=dev)
  ar = torch.arange(size, device=dev)
  rows = (ys[:, None] + ar)[:, :, None]
  cols = (xs[:, None] + ar)[:, None, :]
  crop = images[torch.arange(b, device=dev)[:, None, None], rows, cols]
  flip = torch.rand(b, device=dev) < 0.5
  return torch.where(flip[:, None, None, None], crop.flip(2), crop)


def torch_worker(spec: dict[str, Any]):
  """(one synchronised train step, info) for one PyTorch configuration; warm-up (compile) done here."""
  import torch

  from bench.peers import torch_ref

  dev = torch.device(spec["device"])
  torch.manual_seed(0)
  if dev.type == "cuda":
    torch.backends.cudnn.benchmark = True
    # JAX's default fp32 precision on Ampere+ lets convolutions and matmuls use TF32; do the same here.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  else:
    torch.set_num_threads(int(spec["threads"]))
    try:
      torch.set_num_interop_threads(1)
    except RuntimeError:
      pass
  bf16 = spec["dtype"] == "bfloat16"
  compile_ = spec["mode"] == "compile"
  channels_last = spec["memory_format"] == "channels_last"
  name, size = spec["backbone"], spec["image_size"]
  pre = {"vgg_f": "caffe_bgr", "small_cnn": "unit"}.get(name, "imagenet")
  model = torch_ref.build_model(name, BITS, NUM_CLASSES).to(dev)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  model.train()
  opt = torch_ref.make_optimizer(model)
  b = synthetic_batch(spec["batch"], spec["stored_size"])
  images = torch.from_numpy(b["image"]).to(dev)
  labels = torch.from_numpy(b["labels"]).to(dev)
  labeled = torch.from_numpy(b["labeled"]).to(dev)
  loss_cfg = spec["loss_cfg"]
  loss_of = lambda out, labels, labeled: torch_ref.ssdh_loss(out, labels, labeled, loss_cfg)[0]
  augment = spec["augment"]

  def forward_loss(images, labels, labeled):
    if augment:
      images = _torch_crop_flip(images, size)
    x = torch_ref.preprocess(images, pre)  # NCHW view of NHWC memory: channels_last strides
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
      out = model(x)
    return loss_of(out, labels, labeled)

  if compile_:
    forward_loss = torch.compile(forward_loss, backend=spec.get("compile_backend") or "inductor")
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  holder = {}

  def one_step():
    opt.zero_grad(set_to_none=True)
    loss = forward_loss(images, labels, labeled)
    loss.backward()
    opt.step()
    holder["loss"] = loss.detach()
    sync()

  first, _ = median_step(one_step, spec["warmup"], 0)
  loss = float(holder["loss"])
  counted = None
  if spec.get("count_flops"):  # an independent FLOP count (convs + matmuls, forward + backward)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
      one_step()
    counted = float(counter.get_total_flops())

  loss_ms = None
  if spec["loss_reps"] and not compile_:  # loss + backward alone on outputs of the same shapes, eager
    g = torch.Generator().manual_seed(1)
    n = spec["batch"]
    codes = torch.sigmoid(torch.randn(n, BITS, generator=g)).to(dev).requires_grad_()
    logits = torch.randn(n, NUM_CLASSES, generator=g).to(dev).requires_grad_()

    def one_loss():
      loss_of({"codes": codes, "class_logits": logits}, labels, labeled).backward()
      sync()

    loss_ms = 1e3 * median_step(one_loss, 2, spec["loss_reps"])[1]
  info = {
    "compile_s": first if compile_ else None,
    "first_step_s": first,
    "torch_flops": counted,
    "loss_ms": loss_ms,
    "loss_src": "torch_ref.ssdh_loss (eager)" if loss_ms is not None else "",
    "loss": loss,
    "finite": float(np.isfinite(loss)),
    "note": "",
    "torch_threads": torch.get_num_threads(),
    "device_kind": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
    "version": torch.__version__,
  }
  return one_step, info


def worker_main(spec: dict[str, Any]) -> None:
  """A side of the paired comparison: build and warm up, then answer the parent's timing requests."""
  step, info = (jax_worker if spec["framework"] == "jax" else torch_worker)(spec)
  if spec.get("warm_cores") and spec.get("cores") and hasattr(os, "sched_setaffinity"):
    info["all_threads_pinned"] = harness.pin_all_threads(spec["cores"])
    step()  # one more untimed step on the timing cores
  info["cores"] = harness.bound_cores()
  info["process_threads"] = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None
  harness.serve(step, info)


if __name__ == "__main__":
  worker_main(_SPEC)
