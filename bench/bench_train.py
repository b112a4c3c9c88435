"""Train-step throughput of the full SSDH step, JAX (ssdh_jax.train_lib) against a PyTorch port, paired.

One timed step = uint8 batch → (on-device crop + flip, when asked) → preprocessing → model (train mode: dropout,
BatchNorm batch statistics) → the full SSDH loss (multi_label variant, graph on the codes, all four terms) →
gradients → SGD update. The JAX step is exactly the trainer's: `train_lib.build_training` from
configs/default.py (pmap over 1 device, the psum / all_gather collectives included). The PyTorch step
(bench/torch_ref.py) is the same network, the same loss and SGD with momentum. A fixed synthetic batch
(multi-hot labels, every other row labeled) is fed, so the host input pipeline is not measured.

How it is measured (bench/paired.py): every side (the JAX step, and each PyTorch configuration) is a persistent
subprocess with the same thread count (--threads; default 1 on CPU, every core on a GPU). All of them build,
compile and warm up at once (not timed; spread over every core; --sequential-warmup: one by one), then every
thread of every side is bound to the same cores (the first --threads), and the parent times one backbone's
sides in alternating rounds (A B C, then C B A, ...), each round the median of --per-round steps, while the
other sides wait idle. Reported per backbone: each PyTorch configuration's step time / the JAX step time per
round, median (IQR; min–max) over the rounds (> 1: JAX is faster), images/s as context, the best PyTorch
configuration (highest images/s) and JAX against it. --quick (mobilenet_v2 + small_cnn, small batches, 8
rounds of 2 steps) takes about 7.5 min on a loaded 2-core machine, most of it compiling.

PyTorch, each at its best: eager with explicit threads (CPU), channels_last and contiguous memory (model and
input; both are timed, the faster counts), torch.compile (channels_last), bf16 autocast where the dtype is
bf16 (GPU: cudnn.benchmark, TF32 allowed as JAX's default precision allows it). --quick skips torch.compile of
the 224-px nets on CPU (inductor takes minutes there) and says so.

  .venv/bin/python bench/bench_train.py [--quick] [--backbones vgg_f,mobilenet_v2] [--batch N] [--threads N]
                                        [--rounds N] [--per-round N] [--no-compile] [--no-torch]
                                        [--dtypes float32,bfloat16] [--augment] [--peak-tflops FP32[,BF16]]
  .venv/bin/python bench/bench_train.py --wrappers [--backbones small_cnn,mobilenet_v2] [--rounds N]
      (pmap vs jit + shard_map around the same step body, alternating in one process)

MFU = model FLOPs per step / step time / peak, with model FLOPs = 3 × XLA's cost_analysis of the train-mode
forward (XLA's count of the whole compiled step is shown too, but it counts depthwise-conv weight gradients as
dense convolutions); PyTorch rows use the JAX counts at the same batch. "loss share" = time of the jitted (or
eager, for torch) loss + gradient on outputs of the same shapes, divided by the step time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, ROOT)
sys.path.insert(0, BENCH_DIR)
import paired  # noqa: E402  (bench/paired.py)


def _argv_value(flag: str, default: str = "") -> str:
  argv = sys.argv[1:]
  for i, a in enumerate(argv):
    if a == flag and i + 1 < len(argv):
      return argv[i + 1]
    if a.startswith(flag + "="):
      return a.split("=", 1)[1]
  return default


def _likely_gpu() -> bool:
  """Before JAX is imported: is a CUDA device likely what JAX will use? (Only picks default thread counts.)"""
  return "cpu" not in os.environ.get("JAX_PLATFORMS", "").lower() and os.path.exists("/dev/nvidiactl")


def default_threads(gpu: bool) -> int:
  return (os.cpu_count() or 1) if gpu else 1


def _early_setup() -> None:
  """Pins the threads of a worker (or of the in-process --wrappers comparison) before numpy / jax / torch
  start their thread pools: threads started before sched_setaffinity keep the old affinity."""
  if __name__ != "__main__":
    return
  if "--worker" in sys.argv:
    spec = json.loads(_argv_value("--worker"))
    try:
      os.setsid()  # its own process group: a worker past its warm-up timeout is killed with its children
    except OSError:
      pass
    # Warm-up (build, compile) may spread over `warm_cores`; the timed steps run on `cores` (pin_all_threads).
    paired.pin_threads(int(spec["threads"]), spec.get("warm_cores") or spec.get("cores") or None)
  elif "--wrappers" in sys.argv:
    paired.pin_threads(int(_argv_value("--threads", "0")) or default_threads(_likely_gpu()))


_early_setup()

import numpy as np  # noqa: E402

# JAX must not pre-allocate 75% of a GPU in the orchestrating process, nor in any worker: the JAX worker and
# the PyTorch workers are alive at the same time. (An explicit user setting is kept.)
USER_PREALLOCATE = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

BACKBONES = ("vgg_f", "vgg16", "mobilenet_v2", "small_cnn")
QUICK = ("mobilenet_v2", "small_cnn")
IMAGE_SIZE = {"vgg_f": 224, "vgg16": 224, "mobilenet_v2": 224, "small_cnn": 32}
CPU_BATCH = {"vgg_f": 16, "vgg16": 8, "mobilenet_v2": 16, "small_cnn": 64}
QUICK_CPU_BATCH = {"vgg_f": 8, "vgg16": 4, "mobilenet_v2": 8, "small_cnn": 32}
GPU_BATCH = 128
BITS = 48
NUM_CLASSES = 21  # NUS-WIDE-21-like multi-label batch
# Dense peak TFLOP/s (SXM parts) by device-kind substring: {compute dtype: peak}.
PEAK_TFLOPS = {
  "H100": {"bfloat16": 989.0, "float32": 67.0},
  "H200": {"bfloat16": 989.0, "float32": 67.0},
  "A100": {"bfloat16": 312.0, "float32": 19.5},
}
SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16"}


# ------------------------------------------------------------------------------------------------ shared


def synthetic_batch(
  batch: int, size: int, num_classes: int = NUM_CLASSES, seed: int = 0
) -> dict[str, np.ndarray]:
  """A fixed random batch: uint8 images (B,size,size,3), 1–3 labels per row, every other row labeled.

  Returns:
    dict image uint8 (B,H,W,3), labels float32 (B,C) (zeros on unlabeled rows), labeled bool (B,).
  """
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  labels = np.zeros((batch, num_classes), np.float32)
  for i in range(batch):
    labels[i, rng.choice(num_classes, size=rng.integers(1, 4), replace=False)] = 1.0
  labeled = np.arange(batch) % 2 == 0
  labels[~labeled] = 0.0
  return {"image": images, "labels": labels, "labeled": labeled}


def make_config(
  backbone: str,
  batch: int,
  dtype: str,
  image_size: int | None = None,
  augment: bool = False,
  stored_size: int = 0,
):
  """configs/default.py with the bench's overrides (1 device, pmap, full multi-label SSDH loss).

  augment: on-device crop_flip of `stored_size`-px images to `image_size` (data.on_device_augment), as the
  GPU configs train; otherwise the batch is already `image_size` and only preprocessed.
  """
  from configs.default import get_config
  from ssdh_jax import preprocessing

  c = get_config()
  c.model.name = backbone
  c.model.bits = BITS
  c.model.num_classes = NUM_CLASSES
  c.model.dtype = dtype
  c.model.preprocess = preprocessing.default_preprocess(backbone)
  c.data.image_size = image_size or IMAGE_SIZE[backbone]
  c.data.num_classes = NUM_CLASSES
  c.data.multi_label = True
  c.data.on_device_augment = bool(augment)
  if augment:
    c.data.augment = "crop_flip"
    c.data.resize_size = int(stored_size)
  c.train.batch_size = batch
  c.train.parallel = "pmap"
  c.train.num_devices = 1
  c.loss.name = "ssdh"
  c.loss.variant = "multi_label"
  c.loss.graph_feature = "codes"
  return c


def _median_step(fn, warmup: int, reps: int) -> tuple[float, float]:
  """(first call seconds, median seconds of `reps` calls after `warmup` untimed ones); fn() must synchronise."""
  t = time.perf_counter()
  fn()
  first = time.perf_counter() - t
  for _ in range(max(0, warmup - 1)):
    fn()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return first, statistics.median(times) if times else float("nan")


# ------------------------------------------------------------------------------------------------ JAX worker


def _jax_loss_ms(cfg, n: int, reps: int) -> tuple[float, str]:
  """Median ms of the jitted SSDH loss + gradient w.r.t. the outputs at this batch (bench_loss.time_loss)."""
  try:
    from bench_loss import time_loss

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
  _, med = _median_step(lambda: jax.block_until_ready(step(outputs, key)), 1, reps)
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

  first, _ = _median_step(one_step, spec["warmup"], 0)
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


# ------------------------------------------------------------------------------------------------ torch worker


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
  import torch_ref

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

  first, _ = _median_step(one_step, spec["warmup"], 0)
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

    loss_ms = 1e3 * _median_step(one_loss, 2, spec["loss_reps"])[1]
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


def pin_all_threads(cores: list[int]) -> bool:
  """Binds every thread of this process (the thread pools XLA and PyTorch started too) to `cores`; a new
  thread inherits its creator's binding, so sched_setaffinity on the main thread alone would not do it."""
  ok = True
  for tid in os.listdir("/proc/self/task"):
    try:
      os.sched_setaffinity(int(tid), set(cores))
    except OSError:  # the thread ended meanwhile
      ok = False
  return ok


def worker_main(spec_json: str) -> None:
  """A side of the paired comparison: build and warm up, then answer the parent's timing requests."""
  spec = json.loads(spec_json)
  step, info = (jax_worker if spec["framework"] == "jax" else torch_worker)(spec)
  if spec.get("warm_cores") and spec.get("cores") and hasattr(os, "sched_setaffinity"):
    info["all_threads_pinned"] = pin_all_threads(spec["cores"])
    step()  # one more untimed step on the timing cores
  info["cores"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  info["process_threads"] = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None
  paired.serve(step, info)


# ------------------------------------------------------------------------------------------------ orchestration


class TimedWorker(paired.Worker):
  """paired.Worker whose warm-up is bounded by `timeout` (the worker's process group is killed when it runs
  over), and whose failure while timing marks this side failed (NaN rounds) instead of ending every side."""

  def __init__(self, argv: list[str], env: dict[str, str], timeout: float):
    self.error = ""
    try:
      super().__init__(argv, env=env, timeout=timeout)  # paired.Worker's deadline calls self.kill()
    except TimeoutError:
      raise TimeoutError(f"not ready after {timeout:.0f} s (build + compile + warm-up); killed") from None
    except BaseException:
      self.kill()
      raise

  def kill(self) -> None:
    proc = getattr(self, "proc", None)
    if proc is None or proc.poll() is not None:
      return
    try:
      os.killpg(proc.pid, signal.SIGKILL)  # the worker leads its own process group (os.setsid at start)
    except (ProcessLookupError, PermissionError):
      proc.kill()
    proc.wait()

  def __call__(self, n: int = 1) -> list[float]:
    if self.error:
      return [math.nan] * n
    try:
      return super().__call__(n)
    except (RuntimeError, TimeoutError, OSError, ValueError) as e:
      self.error = f"failed while timing: {e}"
      self.kill()
      return [math.nan] * n

  def close(self) -> None:
    try:
      super().close()
    finally:
      self.kill()


@dataclasses.dataclass
class Side:
  """One side of a paired comparison: a worker spec (None: not run, `error` says why) and what came back."""

  key: str
  label: str
  framework: str
  spec: dict[str, Any] | None
  timeout: float = 900.0
  error: str = ""
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  worker: TimedWorker | None = None
  start_s: float = 0.0


@dataclasses.dataclass
class Group:
  """The sides compared with one another: one backbone, one compute dtype, one batch."""

  backbone: str
  dtype: str
  batch: int
  image_size: int
  augment: bool
  sides: list[Side]


def worker_env(gpu: bool) -> dict[str, str]:
  env = dict(os.environ)
  if USER_PREALLOCATE is None:
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # JAX and PyTorch workers share the GPU
  if not gpu:
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no inductor pool fighting the pinned cores
  return env


def _start(side: Side, env: dict[str, str], deadline: float | None) -> None:
  if side.spec is None or side.error:
    return
  timeout = side.timeout
  if deadline is not None:
    timeout = min(timeout, deadline - time.monotonic())
    if timeout < 5:
      side.error = "skipped: time budget spent before this side started"
      return
  argv = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(side.spec)]
  t = time.perf_counter()
  try:
    side.worker = TimedWorker(argv, env, timeout)
    side.info = dict(side.worker.info)
  except TimeoutError as e:
    side.error = f"skipped: {e}"
  except Exception as e:
    side.error = f"failed to start: {type(e).__name__}: {str(e)[:200]}"
  side.start_s = time.perf_counter() - t
  state = side.error or "ready"
  print(f"[bench_train] {side.spec['backbone']} {side.label}: {state} after {side.start_s:.0f} s",
        file=sys.stderr, flush=True)  # fmt: skip


def start_sides(sides: list[Side], env: dict[str, str], parallel: bool, deadline: float | None) -> None:
  """Starts (builds, compiles, warms up) every side's worker: one after another, or all at once (GPU: the
  compiles are CPU work in separate processes; nothing is timed until every side is ready)."""
  if parallel and len(sides) > 1:
    with ThreadPoolExecutor(len(sides)) as pool:
      list(pool.map(lambda s: _start(s, env, deadline), sides))
  else:
    for s in sides:
      _start(s, env, deadline)


def _finite_pairs(times: dict[str, list[float]], num: str, den: str) -> dict[str, list[float]]:
  pairs = [(a, b) for a, b in zip(times[num], times[den]) if math.isfinite(a) and math.isfinite(b)]
  return {num: [a for a, _ in pairs], den: [b for _, b in pairs]}


def time_group(group: Group, rounds: int, per_round: int) -> dict[str, Any]:
  """Interleaves the group's ready sides, closes their workers and returns the group's JSON-able result."""
  live = {s.key: s.worker for s in group.sides if s.worker is not None}
  times: dict[str, list[float]] = {}
  try:
    if live:
      times = paired.interleave(live, rounds, per_round=per_round)
  finally:
    for s in group.sides:
      if s.worker is not None:
        if s.worker.error and not s.error:
          s.error = s.worker.error
        s.worker.close()
        s.worker = None
  rows = []
  for s in group.sides:
    row: dict[str, Any] = {
      "key": s.key,
      "label": s.label,
      "framework": s.framework,
      "mode": (s.spec or {}).get("mode", "jit" if s.framework == "jax" else ""),
      "memory_format": (s.spec or {}).get("memory_format", ""),
      "warmup_s": round(s.start_s, 2),
      **s.info,
    }
    finite = [t for t in times.get(s.key, []) if math.isfinite(t)]
    if s.error or not finite:
      row["error"] = s.error or "no timed rounds"
    else:
      row["round_s"] = times[s.key]
      row["step_s"] = statistics.median(finite)
      row["images_s"] = group.batch / row["step_s"]
    rows.append(row)
  ok = {r["key"]: r for r in rows if "step_s" in r}
  if "jax" in ok:
    for r in rows:
      if r["framework"] == "torch" and r["key"] in ok:
        pairs = _finite_pairs(times, r["key"], "jax")
        if pairs["jax"]:
          r["ratio_vs_jax"] = paired.ratio_stats(pairs, r["key"], "jax")
          r["ratio_summary"] = paired.ratio_summary(pairs, r["key"], "jax")
  torch_ok = [r for r in rows if r["framework"] == "torch" and "step_s" in r]
  best = min(torch_ok, key=lambda r: r["step_s"]) if torch_ok else None
  out = {
    "backbone": group.backbone,
    "dtype": group.dtype,
    "batch": group.batch,
    "image_size": group.image_size,
    "augment": group.augment,
    "rounds": rounds,
    "per_round": per_round,
    "rows": rows,
    "best_torch": best["key"] if best else None,
    "best_torch_label": best["label"] if best else None,
  }
  if best is not None and "ratio_vs_jax" in best:
    out["jax_vs_best"] = best["ratio_vs_jax"]
    out["jax_vs_best_summary"] = best["ratio_summary"]
  return out


def run_groups(
  groups: list[Group],
  rounds: int,
  per_round: int,
  env: dict[str, str],
  *,
  parallel_warmup: bool = False,
  warm_all_first: bool = False,
  deadline: float | None = None,
) -> list[dict[str, Any]]:
  """Each group: start its sides, interleave them, close them. warm_all_first: every group's workers are
  started before any timing (GPU: the slow compiles overlap; idle workers hold memory but run nothing)."""
  results = []
  try:
    if warm_all_first:
      start_sides([s for g in groups for s in g.sides], env, parallel_warmup, deadline)
    for g in groups:
      if not warm_all_first:
        if deadline is not None and time.monotonic() > deadline:
          for s in g.sides:
            s.error = s.error or "skipped: time budget spent"
        else:
          start_sides(g.sides, env, parallel_warmup, deadline)
      results.append(time_group(g, rounds, per_round))
  finally:
    for g in groups:
      for s in g.sides:
        if s.worker is not None:
          s.worker.close()
  return results


def torch_loss_cfg() -> dict[str, Any]:
  from configs.default import get_config

  loss_cfg = get_config().loss
  return {**loss_cfg.to_dict(), "neg_window": list(loss_cfg.neg_window)}


def build_group(
  backbone: str,
  dtype: str,
  batch: int,
  *,
  image_size: int,
  threads: int,
  torch_dev: str | None,
  warmup: int,
  loss_reps: int,
  augment: bool = False,
  stored_size: int = 0,
  compile_: bool | str = True,
  compile_backend: str = "inductor",
  memory_formats: tuple[str, ...] = ("channels_last", "contiguous"),
  timeout: float = 900.0,
  compile_timeout: float = 600.0,
  cores: list[int] | None = None,
  warm_cores: list[int] | None = None,
  loss_cfg: dict[str, Any] | None = None,
  torch_skip: str = "",
) -> Group:
  """The JAX side and the PyTorch sides (eager in each memory format, torch.compile channels_last) for one
  backbone and dtype. compile_: False or a reason string skips the torch.compile side (recorded).
  torch_dev None: no PyTorch sides, or, with `torch_skip` (why), each recorded as skipped.
  cores: the cores every side is timed on (None: the first `threads` the worker may use); warm_cores: the
  cores it may build and compile on before that (`core_plan`)."""
  stored = stored_size or image_size
  common = {
    "backbone": backbone,
    "batch": batch,
    "dtype": dtype,
    "image_size": image_size,
    "stored_size": stored,
    "augment": augment,
    "warmup": warmup,
    "loss_reps": loss_reps,
    "threads": threads,
    "cores": cores,
    "warm_cores": warm_cores,
  }
  short = SHORT_DTYPE.get(dtype, dtype)
  sides = [Side("jax", f"JAX jit (pmap, 1 device), {short}", "jax", {**common, "framework": "jax"}, timeout)]
  amp = "bf16 autocast" if dtype == "bfloat16" else "fp32"
  label = f"PyTorch torch.compile {amp}, channels_last"
  if compile_backend != "inductor":
    label += f" (backend {compile_backend})"
  if torch_dev is None and torch_skip:
    for fmt in memory_formats:
      sides.append(
        Side(
          f"torch_eager_{fmt}", f"PyTorch eager {amp}, {fmt}", "torch", None, error=f"skipped: {torch_skip}"
        )
      )
    sides.append(Side("torch_compile_channels_last", label, "torch", None, error=f"skipped: {torch_skip}"))
  if torch_dev is not None:
    tcommon = {**common, "framework": "torch", "device": torch_dev, "loss_cfg": loss_cfg or torch_loss_cfg()}
    for i, fmt in enumerate(memory_formats):
      spec = {**tcommon, "mode": "eager", "memory_format": fmt, "count_flops": i == 0}
      sides.append(Side(f"torch_eager_{fmt}", f"PyTorch eager {amp}, {fmt}", "torch", spec, timeout))
    if compile_ is True:
      spec = {
        **tcommon,
        "mode": "compile",
        "memory_format": "channels_last",
        "compile_backend": compile_backend,
      }
      sides.append(Side("torch_compile_channels_last", label, "torch", spec, compile_timeout))
    else:
      sides.append(Side("torch_compile_channels_last", label, "torch", None, error=f"skipped: {compile_}"))
  return Group(backbone, dtype, batch, image_size, augment, sides)


def core_plan(threads: int, spread_warmup: bool) -> tuple[list[int] | None, list[int] | None]:
  """(timing cores: the first `threads` this process may use, the same for every side; warm-up cores: every
  core it may use when spread_warmup and there are more, else None)."""
  if not hasattr(os, "sched_getaffinity"):
    return None, None
  allowed = sorted(os.sched_getaffinity(0))
  cores = allowed[:threads]
  return cores, (allowed if spread_warmup and len(allowed) > len(cores) else None)


def _peak(kind: str, dtype: str, override: list[float] | None) -> float | None:
  if override:
    return override[1 if dtype == "bfloat16" and len(override) > 1 else 0]
  for sub, peaks in PEAK_TFLOPS.items():
    if sub in kind:
      return peaks[dtype]
  return None


def derive(results: list[dict[str, Any]], device_kind: str, peak_override: list[float] | None) -> None:
  """MFU and loss share per row; PyTorch rows take the JAX FLOP counts of the same group."""
  for g in results:
    jax_row = next((r for r in g["rows"] if r["framework"] == "jax"), {})
    for r in g["rows"]:
      for key in ("flops", "model_flops"):
        if r.get(key) is None:
          r[key] = jax_row.get(key)
      if "step_s" not in r:
        continue
      flops = r.get("model_flops")
      peak = _peak(device_kind, g["dtype"], peak_override)
      r["mfu"] = flops / r["step_s"] / (peak * 1e12) if flops and peak else None
      r["loss_share"] = r["loss_ms"] / (1e3 * r["step_s"]) if r.get("loss_ms") else None


def markdown_tables(results: list[dict[str, Any]], header: str) -> list[str]:
  """The per-side table and the best-configuration summary (Markdown lines)."""
  fmt = lambda v, f: "n/a" if v is None else format(v, f)
  pct = lambda v: "n/a" if v is None else (f"{100 * v:.1f}%" if v >= 0.01 else f"{100 * v:.2g}%")
  lines = [
    f"Paired, interleaved: {header}.",
    "",
    "| backbone | batch | dtype | side | t_side / t_JAX median (IQR; min–max), n | step ms (median) | images/s "
    "| warm-up s | compile s | model GFLOP/step | XLA step GFLOP | MFU | loss share |",
    "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for g in results:
    for r in g["rows"]:
      head = f"| {g['backbone']} | {g['batch']} | {g['dtype']} | {r['label']}"
      if "error" in r:
        lines.append(f"{head} | {r['error']} | | | | | | | | |")
        continue
      ratio = "1 (reference)" if r["framework"] == "jax" else r.get("ratio_summary", "n/a (no JAX side)")
      best = " **best PyTorch**" if r["key"] == g["best_torch"] else ""
      mflops, xflops = r.get("model_flops"), r.get("flops")
      lines.append(
        f"{head}{best} | {ratio} | {1e3 * r['step_s']:.1f} | {r['images_s']:,.1f} | {r.get('warmup_s', 0):.0f} | "
        f"{fmt(r.get('compile_s'), '.1f')} | {fmt(mflops and mflops / 1e9, ',.1f')} | "
        f"{fmt(xflops and xflops / 1e9, ',.1f')} | {pct(r.get('mfu'))} | {pct(r.get('loss_share'))} |"
      )
  lines += [
    "",
    "| backbone | dtype | best PyTorch configuration (highest images/s) | t_best / t_JAX median (IQR; min–max), n "
    "| JAX images/s | best PyTorch images/s |",
    "|---|---|---|---|---:|---:|",
  ]
  for g in results:
    by = {r["key"]: r for r in g["rows"]}
    jax_ips = by.get("jax", {}).get("images_s")
    best = by.get(g["best_torch"] or "", {})
    lines.append(
      f"| {g['backbone']} | {g['dtype']} | {g['best_torch_label'] or 'none ran'} | "
      f"{g.get('jax_vs_best_summary', 'n/a')} | {fmt(jax_ips, ',.1f')} | {fmt(best.get('images_s'), ',.1f')} |"
    )
  return lines


def sanity_check(loss_cfg, n: int = 32, k: int = BITS, c: int = 10, tol: float = 1e-4) -> str:
  """ssdh_jax vs torch_ref on CPU: same random words → same sampled indices; same indices → same loss/grads."""
  import jax
  import jax.numpy as jnp
  import torch
  import torch_ref

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


def torch_device(gpu: bool, notes: list[str]) -> tuple[str | None, str | None]:
  """(torch device for the PyTorch sides or None, torch version or None); why not, appended to notes."""
  try:
    import torch
  except ImportError as e:
    notes.append(f"PyTorch rows skipped: torch is not importable ({e}).")
    return None, None
  if gpu and not torch.cuda.is_available():
    notes.append(f"PyTorch rows skipped: torch {torch.__version__} sees no CUDA device (a CPU wheel?).")
    return None, torch.__version__
  return ("cuda" if gpu else "cpu"), torch.__version__


# ------------------------------------------------------------------------------------------------ --wrappers


def compare_wrappers(
  backbone: str, batch: int, rounds: int, per_round: int = 1, num_devices: int = 1
) -> dict[str, Any]:
  """pmap vs jit + shard_map around the same train step body, in this process: compile time of each, then
  `rounds` paired rounds (paired.interleave). Returns compile seconds, the per-round ratio
  t(shard_map) / t(pmap) (paired.ratio_stats) and both median step times."""
  import jax

  from ssdh_jax import mesh, train_lib

  cfg = make_config(backbone, batch, "float32")
  b = synthetic_batch(batch, IMAGE_SIZE[backbone])
  runs: dict[str, dict[str, Any]] = {}
  for mode in mesh.MODES:
    dm = mesh.create(mode, num_devices)
    model, tx, _, step_fn = train_lib.build_training(cfg, dm)
    state = dm.replicate(train_lib.create_train_state(cfg, model, tx, jax.random.PRNGKey(cfg.seed)))
    placed = dm.shard_batch(b)
    t = time.perf_counter()
    state, m = step_fn(state, placed)
    jax.block_until_ready((state, m))
    runs[mode] = {"fn": step_fn, "state": state, "batch": placed, "compile_s": time.perf_counter() - t}

  def stepper(r: dict[str, Any]):
    def go():
      r["state"], m = r["fn"](r["state"], r["batch"])
      jax.block_until_ready((r["state"], m))

    return go

  times = paired.interleave({m: stepper(runs[m]) for m in mesh.MODES}, rounds, per_round=per_round)
  return {
    "backbone": backbone,
    "batch": batch,
    "devices": num_devices,
    "compile_s": {m: runs[m]["compile_s"] for m in mesh.MODES},
    "step_s": {m: statistics.median(times[m]) for m in mesh.MODES},
    "ratio": paired.ratio_stats(times, "shard_map", "pmap"),
    "ratio_summary": paired.ratio_summary(times, "shard_map", "pmap"),
  }


def wrappers_main(names: list[str], batch: int, rounds: int, per_round: int, threads: int) -> None:
  import jax

  print(
    f"\n## Train step: jit + shard_map vs pmap (same body), {jax.default_backend()}; paired in one process: "
    f"{paired.machine_header(threads)}; {rounds} alternating rounds of {per_round} step(s)\n"
  )
  print("| backbone | batch | pmap step ms | shard_map step ms | t(shard_map) / t(pmap) median (IQR; min–max), n | "
        "compile s pmap / shard_map |")  # fmt: skip
  print("|---|---|---|---|---|---|")
  for name in names:
    bsz = batch or QUICK_CPU_BATCH[name]
    r = compare_wrappers(name, bsz, rounds, per_round)
    print(
      f"| {name} | {bsz} | {1e3 * r['step_s']['pmap']:.1f} | {1e3 * r['step_s']['shard_map']:.1f} | "
      f"{r['ratio_summary']} | {r['compile_s']['pmap']:.1f} / {r['compile_s']['shard_map']:.1f} |"
    )


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="mobilenet_v2 + small_cnn, small batches, 8 rounds")
  ap.add_argument("--backbones", default="", help=f"comma-separated subset of {','.join(BACKBONES)}")
  ap.add_argument(
    "--batch", type=int, default=0, help="batch for every backbone (default: per device/backbone)"
  )
  ap.add_argument(
    "--threads", type=int, default=0, help="threads (and cores) per side (default 1 on CPU, all on GPU)"
  )
  ap.add_argument("--rounds", type=int, default=0, help="paired rounds (default 8 quick, 10 CPU, 20 GPU)")
  ap.add_argument(
    "--per-round", type=int, default=0, help="steps per side per round, median (default 2, 5 GPU)"
  )
  ap.add_argument(
    "--warmup", type=int, default=0, help="untimed steps after compile (default 1 quick, 2; GPU 5)"
  )
  ap.add_argument(
    "--dtypes", default="", help="compute dtypes (default float32 on CPU, float32,bfloat16 GPU)"
  )
  ap.add_argument("--augment", action="store_true", help="on-device crop_flip from 256 px (224-px nets)")
  ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile sides")
  ap.add_argument("--no-torch", action="store_true", help="JAX rows only")
  ap.add_argument("--timeout", type=float, default=900.0, help="seconds for a JAX / eager side to be ready")
  ap.add_argument(
    "--compile-timeout",
    type=float,
    default=0.0,
    help="seconds for a torch.compile side to be ready (default 240 CPU quick, 900 else)",
  )
  ap.add_argument(
    "--peak-tflops", default="", help="peak TFLOP/s for MFU: FP32[,BF16] (default by device kind)"
  )
  ap.add_argument(
    "--wrappers", action="store_true", help="only pmap vs jit+shard_map around the same step, paired"
  )
  ap.add_argument(
    "--sequential-warmup",
    action="store_true",
    help="start the sides one after another, each group just before its timing (default: every side of "
    "every group at once, spread over all cores, then each group timed on the pinned cores)",
  )
  ap.add_argument("--json", default="", help="also write the results as JSON here")
  ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.worker:
    worker_main(args.worker)
    return
  if args.wrappers:
    names = args.backbones.split(",") if args.backbones else ["small_cnn"]
    threads = args.threads or default_threads(_likely_gpu())
    wrappers_main(names, args.batch, args.rounds or 16, args.per_round or 1, threads)
    return

  t_start = time.perf_counter()
  import jax

  gpu = jax.default_backend() == "gpu"
  threads = args.threads or default_threads(gpu)
  names = args.backbones.split(",") if args.backbones else list(QUICK if args.quick else BACKBONES)
  rounds = args.rounds or (8 if args.quick else (20 if gpu else 10))
  per_round = args.per_round or (5 if gpu else 2)
  warmup = args.warmup or (5 if gpu else (1 if args.quick else 2))
  loss_reps = 3 if args.quick else 10
  dtypes = args.dtypes.split(",") if args.dtypes else (["float32", "bfloat16"] if gpu else ["float32"])
  peak_override = [float(v) for v in args.peak_tflops.split(",")] if args.peak_tflops else None
  compile_timeout = args.compile_timeout or (240.0 if args.quick and not gpu else 900.0)
  notes: list[str] = []
  load_start = os.getloadavg()

  torch_dev, torch_ver = None, None
  if args.no_torch:
    notes.append("PyTorch rows disabled (--no-torch).")
  else:
    torch_dev, torch_ver = torch_device(gpu, notes)
  sanity = None
  if torch_dev is not None:
    from configs.default import get_config

    try:
      sanity = sanity_check(get_config().loss)
    except Exception as e:
      sanity = f"not run: {type(e).__name__}: {e}"

  loss_cfg = torch_loss_cfg() if torch_dev else None
  spread = not args.sequential_warmup
  cores, warm_cores = core_plan(threads, spread)
  groups = []
  for name in names:
    size = IMAGE_SIZE[name]
    batch = args.batch or (GPU_BATCH if gpu else (QUICK_CPU_BATCH if args.quick else CPU_BATCH)[name])
    compile_: bool | str = True
    if args.no_compile:
      compile_ = "--no-compile"
    elif args.quick and not gpu and size > 64:
      compile_ = "--quick on CPU (inductor takes minutes on a 224-px net; run without --quick)"
    augment = args.augment and size > 64
    for dtype in dtypes:
      groups.append(
        build_group(
          name,
          dtype,
          batch,
          image_size=size,
          threads=threads,
          torch_dev=torch_dev,
          warmup=warmup,
          loss_reps=loss_reps,
          augment=augment,
          stored_size=256 if augment else size,
          compile_=compile_,
          timeout=args.timeout,
          compile_timeout=compile_timeout,
          loss_cfg=loss_cfg,
          cores=cores,
          warm_cores=warm_cores,
        )
      )
  results = run_groups(
    groups, rounds, per_round, worker_env(gpu), parallel_warmup=spread, warm_all_first=spread
  )

  device_kind = (
    jax.devices()[0].device_kind
    if gpu
    else f"CPU ({os.cpu_count()} cores, {platform.processor() or 'x86_64'})"
  )
  derive(results, device_kind if gpu else "", peak_override)
  import jaxlib

  header = paired.machine_header(threads)
  print(f"\n## SSDH train step: JAX vs PyTorch ({device_kind})\n")
  print(
    f"jax {jax.__version__} / jaxlib {jaxlib.__version__}; torch {torch_ver or 'not installed'}; "
    f"loss: ssdh multi_label, graph on codes, k={BITS}, C={NUM_CLASSES}, half the batch labeled; "
    f"{rounds} rounds × median of {per_round} step(s) per side after compile + {warmup} warm-up step(s); "
    f"load average at the start {', '.join(f'{v:.1f}' for v in load_start)}.\n"
  )
  for line in markdown_tables(results, header):
    print(line)
  print()
  print("- t_side / t_JAX > 1: JAX is faster. Absolute step times and images/s are context only: the ratio is "
        "taken per round, with both sides timed back to back under the same load.")  # fmt: skip
  if sanity:
    print(f"- Numeric sanity (CPU, JAX loss vs torch_ref loss): {sanity}")
  if not gpu:
    peak_txt = "given by --peak-tflops" if peak_override else "n/a on CPU unless --peak-tflops is given"
    print(f"- No GPU visible to JAX: CPU rows, MFU {peak_txt}.")
  else:
    print("- MFU peaks (dense): H100/H200 989 bf16 / 67 fp32, A100 312 / 19.5 TFLOP/s, or --peak-tflops.")
    print("- fp32 rows: JAX's default precision and torch (TF32 enabled here) may use TF32 on Ampere+.")
  print(
    "- model GFLOP/step = 3 × XLA's count of the train-mode forward (the MFU numerator); XLA step GFLOP = "
    "cost_analysis of the whole compiled step (forward, backward, loss, update), which counts a grouped "
    "(depthwise) convolution's weight gradient as a dense one and so overstates MobileNetV2 several-fold."
  )
  for g in results:
    cnt = [r["torch_flops"] for r in g["rows"] if r.get("torch_flops")]
    if cnt:
      dense = (
        " (it counts a depthwise convolution's backward as dense)" if g["backbone"] == "mobilenet_v2" else ""
      )
      print(
        f"- {g['backbone']}: torch FlopCounterMode counts {cnt[0] / 1e9:,.1f} GFLOP for one eager step{dense}."
      )
    for r in g["rows"]:
      if r.get("finite", 1.0) < 1.0:
        notes.append(f"{g['backbone']} {r['label']}: non-finite loss/gradients on the synthetic batch.")
      if r.get("note"):
        notes.append(f"{g['backbone']} {r['label']}: {r['note']}")
  srcs = sorted({r["loss_src"] for g in results for r in g["rows"] if r.get("loss_src")})
  if srcs:
    print(f"- loss share from {', '.join(srcs)} (loss + grad w.r.t. the outputs, same N, k, C); n/a for "
          "torch.compile sides.")  # fmt: skip
  print("- warm-up s: build + compile + warm-up steps of each side (not timed); compile s: AOT compile of the "
        "JAX step / first torch.compile step.")  # fmt: skip
  for n in notes:
    print(f"- {n}")
  print(f"- wall time of this command: {time.perf_counter() - t_start:.0f} s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        {"header": header, "device_kind": device_kind, "groups": results, "notes": notes}, f, indent=1
      )


if __name__ == "__main__":
  main()
