"""One side of bench_inference, as a worker process: `python -m bench.inference_worker SPEC_JSON`.

It loads the weights bench_inference prepared, builds the JAX side (backbone, frozen-prefix extraction or
`evaluate.encode`) or one PyTorch configuration (bench/peers/torch_ref.py), saves its output on the timed batch
for the parent's check, warms up, then answers the parent's timing requests (`harness.serve`). Its threads are
pinned before numpy / jax / torch start their pools.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from bench import harness

if __name__ == "__main__":
  _SPEC = json.loads(sys.argv[1])
  harness.pin_threads(int(_SPEC["threads"]), _SPEC.get("cores") or None)
  _EXTRA = (_SPEC.get("overrides") or {}).get("xla_flags", "")
  if _EXTRA:  # a JAX variant with more XLA flags (read when the backend starts)
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_EXTRA}".strip()

import numpy as np

BITS = 48
NUM_CLASSES = 10
USER_IMAGES = 256
PREPROCESS = {"mobilenet_v2": "imagenet", "vgg_f": "caffe_bgr", "vgg16": "imagenet"}


def images_for(n: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def user_config(row: str, batch: int):
  """configs/cifar10_mobilenet_v2_cpu.py for the extraction / encode rows (in-memory 32-px images), with the
  side's batch as the eval batch."""
  from configs.cifar10_mobilenet_v2_cpu import get_config

  c = get_config()
  c.eval.batch_size = batch
  if row.startswith("encode"):
    c.model.trainable = "all"  # eval.py on a run that trained the whole network encodes from the images
  else:  # the prefix up to features_18's input (the shipped config trains the heads only: its prefix is all)
    c.model.trainable = "features_18"
  return c


def user_examples(n: int):
  from ssdh_jax.data.sources import Examples

  labels = np.eye(NUM_CLASSES, dtype=np.float32)[np.arange(n) % NUM_CLASSES]
  return Examples(images_for(n, 32, seed=5), labels, np.arange(n, dtype=np.int64))


def jax_worker(spec: dict[str, Any]):
  """(one synchronised call, its output for the check, info)."""
  import jax
  from flax import traverse_util

  from ssdh_jax import feature_cache, models, preprocessing
  from ssdh_jax.models import depthwise, pointwise

  flat = dict(np.load(spec["weights"]))
  variables = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
  name, size, batch, task = spec["backbone"], spec["size"], spec["batch"], spec["task"]
  over = dict(spec.get("overrides") or {})
  over.pop("xla_flags", None)  # applied before JAX started (at the top of this module)
  if "stem_max_channels" in over:  # 0: the RGB stem as the convolution, the lowering before issue 27
    depthwise.STEM_MAX_CHANNELS = int(over.pop("stem_max_channels"))
  info = {
    "depthwise": depthwise.resolve_impl(over.get("depthwise", "auto")),
    "pointwise": pointwise.resolve_impl(over.get("pointwise", "auto")),
  }
  t0 = time.perf_counter()
  constants = over.pop("constants", "0") == "1"
  if task == "backbone":
    model = models.build_backbone(name, **over)
    pre = PREPROCESS[name]
    fn = jax.jit(lambda v, x: model.apply(v, preprocessing.preprocess(x, pre), train=False))
    images = jax.device_put(images_for(batch, size))
    variables = jax.device_put(variables)
    if constants:  # the variables closed over: compile-time constants, as train_lib's prefix_fn has them
      const = jax.jit(lambda x: model.apply(variables, preprocessing.preprocess(x, pre), train=False))
      compiled_c = const.lower(images).compile()

      def call():
        return jax.block_until_ready(compiled_c(images))

    else:
      compiled = fn.lower(variables, images).compile()

      def call():
        return jax.block_until_ready(compiled(variables, images))

    out = np.asarray(call())
  else:
    from ssdh_jax import evaluate
    from ssdh_jax.data import pipeline

    cfg = user_config(spec["row"], batch)
    for k, v in over.items():
      cfg.model[k] = v
    pool = user_examples(USER_IMAGES)
    if task == "extract":
      prefix, _ = models.build_prefix(cfg.model)
      bvars = {"params": variables["params"], "batch_stats": variables["batch_stats"]}

      @jax.jit  # as train_lib.input_view: the variables are closed over
      def prefix_fn(images):
        return prefix.apply(bvars, preprocessing.preprocess(images, cfg.model.preprocess), train=False)

      batches = lambda ex: pipeline.eval_batches(ex, cfg, int(cfg.eval.batch_size))

      def call():
        return feature_cache.extract(prefix_fn, pool, batches, progress=False)

      out = call()
    else:
      model = models.build_model(cfg.model)
      state = evaluate.ModelState(variables["params"], variables["batch_stats"])

      def call():
        return evaluate.encode(cfg, model, state, pool, return_relaxed=True)

      out = call()["relaxed"]
  info["first_call_s"] = time.perf_counter() - t0
  return call, out, info


def torch_worker(spec: dict[str, Any]):
  import torch

  from bench.peers import torch_ref

  torch.set_num_threads(int(spec["threads"]))
  try:
    torch.set_num_interop_threads(1)
  except RuntimeError:
    pass
  name, size, batch, task, side = spec["backbone"], spec["size"], spec["batch"], spec["task"], spec["side"]
  cl = side.endswith("_cl")
  fmt = torch.channels_last if cl else torch.contiguous_format
  sd = {k: torch.from_numpy(v) for k, v in np.load(spec["weights"]).items()}
  if task == "encode":
    model = torch_ref.build_model(name, BITS, NUM_CLASSES)
  else:
    model = {"mobilenet_v2": torch_ref.MobileNetV2, "vgg_f": torch_ref.VGGF, "vgg16": torch_ref.VGG16}[name]()
  model.load_state_dict(sd, strict=True)
  model.eval()
  if task == "extract":
    model = model.features[:18]  # the activation entering features.18, as build_prefix(trainable=features_18)
  model = model.to(memory_format=fmt)
  pre = PREPROCESS[name]

  def forward(x):
    return model(torch_ref.preprocess(x, pre).contiguous(memory_format=fmt))

  if side.startswith("compile"):
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # inference: fold BatchNorm into the convs, prepack weights
    forward = torch.compile(forward)
  t0 = time.perf_counter()
  if task == "backbone":
    images = torch.from_numpy(images_for(batch, size))

    def call():
      with torch.inference_mode():
        return forward(images)

    out = call().numpy()
  else:
    from ssdh_jax import feature_cache
    from ssdh_jax.data import pipeline

    cfg = user_config(spec["row"], batch)
    pool = user_examples(USER_IMAGES)
    batches = lambda ex: pipeline.eval_batches(ex, cfg, int(cfg.eval.batch_size))
    if task == "extract":

      def prefix_fn(images):  # NCHW in channels_last memory: permuted back to NHWC it is contiguous
        with torch.inference_mode():
          return forward(torch.from_numpy(images)).permute(0, 2, 3, 1).numpy()

      def call():
        return feature_cache.extract(prefix_fn, pool, batches, progress=False)

      out = call()
    else:

      def call():
        codes, relaxed = [], []
        for b in batches(pool):
          with torch.inference_mode():
            h = forward(torch.from_numpy(b["image"]))["codes"].numpy()
          codes.append(np.packbits(h >= 0.5, axis=1, bitorder="little"))
          relaxed.append(h)
        return {"codes": np.concatenate(codes), "relaxed": np.concatenate(relaxed)}

      out = call()["relaxed"]
  info = {"first_call_s": time.perf_counter() - t0, "torch_threads": torch.get_num_threads()}
  return call, out, info


def worker_main(spec: dict[str, Any]) -> None:
  """Builds the side, saves its output on the timed batch for the parent's check, then answers timing
  requests."""
  call, out, info = (jax_worker if spec["framework"] == "jax" else torch_worker)(spec)
  np.save(spec["check_path"], np.asarray(out, np.float32))
  for _ in range(int(spec.get("warmup", 1))):
    call()
  info["cores"] = harness.bound_cores()
  harness.serve(call, info)


if __name__ == "__main__":
  worker_main(_SPEC)
