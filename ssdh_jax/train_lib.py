"""Training: TrainState, the per-device step body, its pmap / shard_map wrappers and `train_and_evaluate`.

The step body is a pure function of (state, local batch) with a named data axis. Every device all-gathers the
model outputs, labels and masks of the whole GLOBAL batch, computes the loss terms of its own anchors against
every image (so the online graph and the triplets span the global batch) and the gradients are summed over
devices. Training is therefore the same computation on 1 or 8 devices, up to float reassociation: the
built-in backbones draw each dropout mask from its row's global index (`models.layers.RowDropout`). The
trainer knows nothing of the loss terms: it passes model outputs to `losses.get_loss(config.loss.name)` and
sums whatever additive partials come back.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssdh_jax import (
  checkpoints,
  config_checks,
  evaluate,
  losses,
  metric_writer,
  models,
  multihost,
  optim,
  plugins,
  pool_graph,
  preprocessing,
  run_dir,
)
from ssdh_jax import mesh as mesh_lib
from ssdh_jax.data import pipeline
from ssdh_jax.models.layers import ROW_DROPOUT_RNG, global_row_ids

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. `key` is fixed; step s uses fold_in(key, s), so resuming is exact."""

  step: jax.Array  # int32 scalar
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  key: jax.Array  # uint32 (2,) raw PRNG key


def trainable_mask(config: ml_collections.ConfigDict, params: PyTree) -> PyTree:
  """Bool pytree over `params`: which leaves config.model.trainable lets the optimiser change."""
  name = config.model.name
  return optim.trainable_mask(params, config.model.trainable, models.backbone_layers(name), name)


def make_tx(
  config: ml_collections.ConfigDict, params: PyTree
) -> tuple[optax.GradientTransformation, optax.Schedule, PyTree]:
  """(optimiser over the trainable leaves only, lr schedule, trainable mask) for a params tree (shapes
  suffice). Frozen leaves get neither gradients nor optimiser state."""
  mask = trainable_mask(config, params)
  trainable, _ = optim.split_params(params, mask)
  tx, schedule = optim.make_optimizer(config.optim, trainable, config.train.num_steps)
  return tx, schedule, mask


def create_train_state(
  config: ml_collections.ConfigDict,
  model: flax.linen.Module,
  tx: optax.GradientTransformation,
  key: jax.Array,
) -> TrainState:
  """Initialises parameters (and loads pretrained backbone weights when configured); the optimiser state
  covers the trainable leaves (`trainable_mask`)."""
  init_key, state_key = jax.random.split(key)
  variables = models.init_variables(model, init_key, config.data.image_size)
  if config.model.pretrained:
    from ssdh_jax import weights

    variables = weights.load_pretrained(variables, config.model.pretrained, config.model.name)
  params = variables["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(optim.split_params(params, trainable_mask(config, params))[0]),
    key=state_key,
  )


def _tree_all_finite(tree: PyTree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def train_step_body(
  state: TrainState,
  batch: Mapping[str, jax.Array],
  *,
  model: flax.linen.Module,
  tx: optax.GradientTransformation,
  loss_fn: Callable,
  loss_cfg: ml_collections.ConfigDict,
  schedule: optax.Schedule,
  preprocess_fn: Callable[[jax.Array, jax.Array], jax.Array],
  axis_name: str,
  mask: PyTree | None = None,
  term_grad_norms: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on this device's shard of the global batch.

  Args:
    state: replicated TrainState.
    batch: this device's rows: image (n,H,W,3) uint8, labels (n,C) float32, labeled (n,) bool.
    preprocess_fn: (key, uint8 images) -> float32 network input (augmentation on device, if any, lives here).
    axis_name: the named device axis (pmap's axis_name or the shard_map mesh axis).
    mask: bool pytree over params (`trainable_mask`); only True leaves are differentiated and updated, and
      tx works on that subset. None: every leaf.
    term_grad_norms: also report each additive loss term's ('loss_*' in aux) gradient norm ('gnorm_<term>')
      and its cosine with the total gradient ('gcos_<term>'), from one backward pass per term. The trainer
      runs this variant (`build_diagnostics`) on the odd step, beside the plain step.

  Returns:
    The new state (unchanged but for `step` if the loss or gradients are not finite) and the step's metrics,
    identical on every device.
  """
  n = batch["labels"].shape[0]
  dev = jax.lax.axis_index(axis_name)
  row_ids = global_row_ids(n, axis_name)
  step_key = jax.random.fold_in(state.key, state.step)
  k_aug, k_drop, k_loss = jax.random.split(step_key, 3)
  images = preprocess_fn(jax.random.fold_in(k_aug, dev), batch["image"])
  gather = functools.partial(jax.lax.all_gather, axis_name=axis_name, tiled=True)
  labels = gather(batch["labels"])
  labeled = gather(batch["labeled"])

  if mask is None:
    train_params, frozen = state.params, None
  else:
    train_params, frozen = optim.split_params(state.params, mask)

  def loss_of(train_params):
    params = train_params if frozen is None else optim.merge_params(train_params, frozen)
    variables = {"params": params}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    outputs, mutated = model.apply(
      variables,
      images,
      train=True,
      # RowDropout (the built-in backbones) keys each row by its global index: one key on every device.
      # nn.Dropout in a user's module gets a per-device key (its masks then vary with the device count).
      rngs={"dropout": jax.random.fold_in(k_drop, dev), ROW_DROPOUT_RNG: k_drop},
      mutable=["batch_stats"],
    )
    outputs = jax.tree.map(gather, dict(outputs))
    loss, aux = loss_fn(
      outputs,
      labels,
      labeled,
      k_loss,
      loss_cfg,
      anchor_ids=row_ids,
      reduce_count=lambda c: jax.lax.psum(c, axis_name),
      step=state.step,
    )
    return loss, (aux, mutated)

  term_metrics = {}
  if term_grad_norms:
    (loss, (aux, mutated)), grads, term_metrics = _grads_by_term(loss_of, train_params, axis_name)
  else:
    (loss, (aux, mutated)), grads = jax.value_and_grad(loss_of, has_aux=True)(train_params)
    # Each device's loss holds its anchors' share, normalised globally: the global loss and gradient are sums.
    grads = jax.lax.psum(grads, axis_name)
  loss = jax.lax.psum(loss, axis_name)
  aux = jax.lax.psum(aux, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, train_params)
  new_train = optax.apply_updates(train_params, updates)
  params = new_train if frozen is None else optim.merge_params(new_train, frozen)
  # Inf parameters would poison every later step: refuse the update and let the host stop the run.
  finite = jnp.isfinite(loss) & _tree_all_finite(grads) & _tree_all_finite(new_train)
  # One cond over the whole update (a per-leaf where compiles several times slower on XLA:CPU).
  params, batch_stats, opt_state = jax.lax.cond(
    finite,
    lambda: (params, mutated.get("batch_stats", state.batch_stats), opt_state),
    lambda: (state.params, state.batch_stats, state.opt_state),
  )
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
  metrics = {
    "loss": loss,
    **aux,
    "grad_norm": optax.tree.norm(grads),
    "lr": schedule(state.step),
    "finite": finite.astype(jnp.float32),
    **term_metrics,
  }
  return new_state, metrics


def _grads_by_term(loss_of: Callable, params: PyTree, axis_name: str):
  """Gradients of each additive loss term ('loss_*' in aux, plus any remainder of the loss) by one batched
  backward pass; their sum is the total gradient, returned as value_and_grad would, plus per-term metrics."""
  names: list[str] = []

  def terms(p):
    loss, (aux, mutated) = loss_of(p)
    names[:] = sorted(k.removeprefix("loss_") for k in aux if k.startswith("loss_"))
    parts = [aux[f"loss_{k}"] for k in names]
    rest = loss - sum(parts) if parts else loss  # keeps the total exact whatever the loss returns
    return jnp.stack([*parts, rest]), (loss, aux, mutated)

  vec, vjp_fn, (loss, aux, mutated) = jax.vjp(terms, params, has_aux=True)
  per_term = jax.vmap(vjp_fn)(jnp.eye(vec.shape[0], dtype=vec.dtype))[0]
  per_term = jax.lax.psum(per_term, axis_name)
  grads = jax.tree.map(lambda g: g.sum(0), per_term)
  sq = lambda t: sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(t))
  dot = sum(
    jnp.sum(g.astype(jnp.float32) * t[None].astype(jnp.float32), axis=tuple(range(1, g.ndim)))
    for g, t in zip(jax.tree.leaves(per_term), jax.tree.leaves(grads))
  )
  norms = jnp.sqrt(
    sum(
      jnp.sum(jnp.square(g.astype(jnp.float32)), axis=tuple(range(1, g.ndim)))
      for g in jax.tree.leaves(per_term)
    )
  )
  total = jnp.sqrt(sq(grads))
  n = len(names)  # the last row is the remainder, not a named term
  cosines = dot[:n] / jnp.maximum(norms[:n] * total, 1e-30)
  metrics = {f"gnorm_{name}": norms[i] for i, name in enumerate(names)}
  metrics.update({f"gcos_{name}": cosines[i] for i, name in enumerate(names)})
  return (loss, (aux, mutated)), grads, metrics


class NonFiniteError(RuntimeError):
  pass


# --------------------------------------------------------------------------- main loop


def make_preprocess_fn(config: ml_collections.ConfigDict) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """(key, uint8 images) -> network input; on-device augmentation first when configured."""
  name = config.model.preprocess

  def fn(key, images):
    if config.data.on_device_augment:
      images = pipeline.device_augment(key, images, config)
    return preprocessing.preprocess(images, name)

  return fn


def cached_prefix_layer(config: ml_collections.ConfigDict) -> int:
  """The backbone layer whose input is read from the feature cache (0: no cache, images go in).

  model.feature_cache='auto' caches when part of the backbone is frozen and that prefix sees only the
  deterministic evaluation view (data.augment='none'); a random crop or flip would change its output.
  """
  mode = config.model.feature_cache
  if mode not in ("auto", "off"):
    raise ValueError(f"config.model.feature_cache: expected auto | off, got {mode!r}")
  if mode == "off" or models.first_trainable_layer(config.model) == 0:
    return 0
  if config.data.augment != "none" or config.data.on_device_augment:
    return 0
  return models.build_prefix(config.model)[1]


def build_training(
  config: ml_collections.ConfigDict,
  dmesh: mesh_lib.DataMesh,
  input_layer: int = 0,
  *,
  term_grad_norms: bool = False,
  donate: bool = True,
  model: flax.linen.Module | None = None,
  loss_fn: Callable | None = None,
):
  """Model, optimiser, schedule and the step for `config`, wrapped for `dmesh` (`mesh.DataMesh.wrap`).

  input_layer > 0: the step's batches hold the cached activations entering that backbone layer (see
  `input_view`), not images.
  model: a Linen module used as given instead of the one config.model names (images in, a dict with at least
    'codes' out, like `models.HashingModel`; layers that need the device axis take `mesh.AXIS`).
  loss_fn: a loss with `losses.ssdh_loss`'s signature, instead of the one config.loss.name names.
  """
  if model is None:
    model = models.build_model(config.model, axis_name=mesh_lib.AXIS, input_layer=input_layer)
    init_model = models.build_model(config.model)
  else:
    init_model = model
  # The optimiser only needs the parameter tree's structure and names.
  abstract = models.variable_shapes(init_model, config.data.image_size)
  tx, schedule, mask = make_tx(config, abstract["params"])
  all_trainable = all(jax.tree.leaves(mask))
  body = functools.partial(
    train_step_body,
    model=model,
    tx=tx,
    loss_fn=loss_fn or losses.get_loss(config.loss.name),
    loss_cfg=config.loss,
    schedule=schedule,
    preprocess_fn=(lambda _, x: x.astype(jnp.float32)) if input_layer else make_preprocess_fn(config),
    mask=None if all_trainable else mask,
    term_grad_norms=term_grad_norms,
  )
  step_fn = dmesh.wrap(body, donate)
  return init_model, tx, schedule, step_fn


def build_diagnostics(
  config: ml_collections.ConfigDict, dmesh: mesh_lib.DataMesh, input_layer: int = 0, **custom: Any
) -> Callable | None:
  """(placed state, placed batch) -> metrics with per-term gradient norms, the state left as it was; None when
  config.train.term_grad_norms is 0. A separate program from the step: as a lax.cond branch inside it, the
  per-term backward slowed every step of the XLA:CPU program by more than an order of magnitude (seen with a
  development script, not a repo bench)."""
  if not int(config.train.term_grad_norms):
    return None
  _, _, _, step_fn = build_training(config, dmesh, input_layer, term_grad_norms=True, donate=False, **custom)
  return lambda state, batch: step_fn(state, batch)[1]


def feature_cache_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  if config.model.feature_cache_dir:
    return config.model.feature_cache_dir
  if config.data.cache_dir:
    return os.path.join(config.data.cache_dir, "features")
  return os.path.join(workdir, "feature_cache")


def input_view(
  config: ml_collections.ConfigDict, state: TrainState, splits: Mapping, workdir: str
) -> tuple[flax.linen.Module, Mapping, dict | None]:
  """What the step and the evaluator see: (model, splits, cache record).

  Without a cacheable frozen prefix: the full model and the image splits. With one: the model from the
  first trainable layer on, and splits whose rows are that layer's cached input (computed once from
  `state`'s frozen prefix and stored under `feature_cache_dir`). Both read the same full variables.
  """
  layer = cached_prefix_layer(config)
  if not layer:
    return models.build_model(config.model), splits, None
  from ssdh_jax import feature_cache

  prefix, _ = models.build_prefix(config.model)
  variables = {"params": state.params["backbone"]}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats["backbone"]
  name = config.model.preprocess

  @jax.jit
  def prefix_fn(images):
    return prefix.apply(variables, preprocessing.preprocess(images, name), train=False)

  batches = lambda ex: pipeline.eval_batches(ex, config, int(config.eval.batch_size))
  view, record = feature_cache.load_or_extract(
    config, layer, splits, prefix_fn, batches, feature_cache_dir(config, workdir)
  )
  logging.info(
    "frozen prefix (layers < %d) %s: %s, %.0f s",
    layer,
    "read from cache" if record["hit"] else "computed",
    record["path"],
    record["seconds"],
  )
  return models.build_model(config.model, input_layer=layer), view, record


def _pseudo_splits(
  config: ml_collections.ConfigDict,
  model: flax.linen.Module,
  state: TrainState,
  splits: Mapping,
  workdir: str,
  step: int,
  writer: metric_writer.MetricWriter,
) -> Mapping:
  """The splits training batches are drawn from at `step`: `splits`, or with pool-graph pseudo-labels
  (config.pseudo): computed from `state` at a refresh step, else the last refresh saved in the run folder."""
  if config.pseudo.mode == "off":
    return splits
  saved = pool_graph.latest_saved(workdir, step)
  if saved is not None and (saved == step or not pool_graph.refresh_due(config, step)):
    return pool_graph.load(splits, workdir, saved)
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  cache = (
    feature_cache_dir(config, workdir) if config.data.cache_dir or config.model.feature_cache_dir else ""
  )
  out, stats = pool_graph.refresh(
    config, model, variables, splits, step=step, workdir=workdir, cache_dir=cache
  )
  writer.write(step, stats)
  logging.info("step %d: %s", step, pool_graph.describe(stats))
  return out


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  """Means over steps of host-side metric dicts (scalars)."""
  return {k: float(np.mean([np.asarray(h[k]).reshape(-1)[0] for h in history])) for k in history[0]}


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  stop_after: int | None = None,
  model: flax.linen.Module | None = None,
  loss_fn: Callable | None = None,
) -> dict[str, Any]:
  """Trains SSDH per `config`, checkpointing into `workdir`, then evaluates the best checkpoint.

  Args:
    config: a locked ConfigDict (configs/*.py).
    workdir: run directory; an existing one is resumed from its latest good checkpoint.
    stop_after: stop (as if pre-empted) once this many steps are done; for resume tests.
    model, loss_fn: use these objects instead of the backbone and loss the config names, without registering
      anything (see `build_training`). config.model still sets bits, trainability and pretrained weights
      for the named backbone, so keep model.pretrained empty and model.trainable='all' with your own model;
      the frozen-prefix feature cache is off. `eval.py` rebuilds models by name: evaluate such a run here.

  Returns:
    The evaluation results dict (also written to workdir/metrics.json) or, if stopped early, {'step': s}
    ({'step': s, 'preempted': True} after a SIGTERM: every process stopped after step s, with a checkpoint).
  """
  config_checks.check_config(config)  # one-line error naming the field, before any work
  # Every name (backbone, loss, terms, graph, protocol, weights) resolves now, before the run folder exists.
  config_checks.check_names(config, loss=loss_fn is None)
  if model is not None and (config.model.pretrained or config.model.trainable != optim.ALL):
    raise ValueError(
      "config.model.pretrained / config.model.trainable: they apply to the backbone config.model.name names; "
      "with a model object keep pretrained='' and trainable='all'"
    )
  multihost.initialize(config.train)
  run = multihost.Run(config)
  # Processes started with different configs are refused before anything is written; from here on a watchdog
  # names a process that is lost, and an error here tells the others (they stop instead of waiting).
  run.check_config()
  try:
    results = _train_and_evaluate(config, workdir, run, stop_after=stop_after, model=model, loss_fn=loss_fn)
  except BaseException as e:
    run.on_error(e)
    run.close(ok=False)
    raise
  run.close(ok=True)
  return results


def _train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  run: multihost.Run,
  *,
  stop_after: int | None,
  model: flax.linen.Module | None,
  loss_fn: Callable | None,
) -> dict[str, Any]:
  is_main = jax.process_index() == 0
  run_dir.check_workdir(config, workdir)  # before anything is written: a finished run is never overwritten
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  try:
    # Bad input (missing files, corrupt images, wrong label widths, bad config) fails here, before training.
    dmesh = mesh_lib.create(config.train.parallel, config.train.num_devices, config.train.batch_size)
    splits, meta = pipeline.load_splits(config, workdir)
    custom = {"model": model, "loss_fn": loss_fn}
    layer = 0 if model is not None else cached_prefix_layer(config)
    init_model, tx, _, step_fn = build_training(config, dmesh, layer, **custom)
    diag_fn = build_diagnostics(config, dmesh, layer, **custom)
    state = create_train_state(config, init_model, tx, jax.random.PRNGKey(config.seed))
    if model is None:
      model, splits, cache_record = input_view(config, state, splits, workdir)
    else:
      cache_record = None
    if cache_record is not None:
      meta = dict(meta, feature_cache={k: v for k, v in cache_record.items() if k != "key"})
  except BaseException:
    if created and is_main:  # leave nothing half-written behind
      shutil.rmtree(workdir, ignore_errors=True)
    raise
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    with open(os.path.join(workdir, "run_meta.json"), "w") as f:
      json.dump(meta, f, indent=2, default=str)
    # User modules (--module, entry points): eval.py and ssdh-search import them again.
    plugins.record(workdir)
  ckpt = checkpoints.Checkpointer(
    workdir,
    config.train.keep_checkpoints,
    config.train.async_checkpoint,
    timeout_s=multihost.field(config.train, "checkpoint_timeout", 300),
  )
  state, start = ckpt.restore_latest(state)
  if start:
    logging.info("Resuming from step %d", start)

  num_steps = int(config.train.num_steps)
  writer = metric_writer.MetricWriter(workdir, enabled=is_main, resume_step=start)
  # Each process materialises only its rows of every global batch.
  rows = dmesh.host_rows(int(config.train.batch_size))
  pstate = dmesh.replicate(state)

  progress = None
  if config.train.progress and is_main:
    from tqdm.auto import tqdm

    progress = tqdm(total=num_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
  history: list[dict] = []
  diag_every = int(config.train.term_grad_norms)
  diag_history: list[dict] = []  # per-term gradient norms, on every diag_every-th step's batch
  t_last, imgs_since = time.perf_counter(), 0
  step = start
  # Steps dispatched but maybe not finished: the bar advances when a step's loss is ready, not when it is
  # queued (dispatch runs ahead of the device by up to this many steps).
  in_flight: collections.deque = collections.deque()
  ahead = 2

  def finished(block_all: bool) -> None:
    while in_flight and (block_all or len(in_flight) > ahead):
      jax.block_until_ready(in_flight.popleft())
      if progress is not None:
        if progress.n == start:
          progress.set_postfix_str("")
        progress.update(1)

  if progress is not None:
    progress.set_postfix_str("compiling the train step")  # the first step waits for XLA: say so

  run.start()
  failed = False  # a failure before any checkpoint (e.g. a user's loss term that fails to trace)
  try:
    train_splits = _pseudo_splits(config, model, state, splits, workdir, start, writer)
    batches: Iterator[dict] = pipeline.train_batches(train_splits, config, config.seed, start, rows=rows)
    while step < num_steps:
      if step > start and pool_graph.refresh_due(config, step):
        finished(block_all=True)
        batches.close()
        train_splits = _pseudo_splits(config, model, dmesh.to_host(pstate), splits, workdir, step, writer)
        batches = pipeline.train_batches(train_splits, config, config.seed, step, rows=rows)
      batch = next(batches)
      placed = dmesh.shard_batch({k: batch[k] for k in ("image", "labels", "labeled")})
      if diag_fn is not None and step % diag_every == 0:
        diag = diag_fn(pstate, placed)
        diag_history.append(
          dmesh.to_host({k: v for k, v in diag.items() if k.startswith(("gnorm_", "gcos_"))})
        )
      pstate, metrics = step_fn(pstate, placed)
      history.append(metrics)
      in_flight.append(metrics["loss"])
      finished(block_all=False)
      step += 1
      imgs_since += config.train.batch_size
      # SIGTERM (a preemption notice) on any process: all of them stop after the same step, with a checkpoint.
      preempted = run.preempted(step) and step < num_steps
      boundary = step % config.train.log_every == 0 or step == num_steps or preempted
      ckpt_due = step % config.train.checkpoint_every == 0 or step == num_steps or preempted
      eval_due = (config.train.eval_every and (step % config.train.eval_every == 0)) or step == num_steps
      if boundary or ckpt_due or eval_due or (stop_after is not None and step >= stop_after):
        finished(block_all=True)
        scalars = _mean_metrics(dmesh.to_host(history))
        history = []
        if diag_history:
          scalars.update(_mean_metrics(diag_history))
          diag_history = []
        if scalars["finite"] < 1.0:
          raise NonFiniteError(
            f"non-finite loss or gradients before step {step}; the update was not applied and training stops. "
            f"The last good checkpoint in {workdir} is kept. Lower config.optim.lr or check the inputs."
          )
        now = time.perf_counter()
        scalars["images_per_sec"] = imgs_since / max(now - t_last, 1e-9)
        t_last, imgs_since = now, 0
        scalars.pop("finite")
        if boundary:
          writer.write(step, scalars)
          if progress is not None:
            progress.set_postfix(loss=f"{scalars['loss']:.4f}")
        state = None
        if eval_due:
          state = dmesh.to_host(pstate)
          # Every process computes it from the same gathered codes; process 0's value decides for all.
          val = dmesh.agree(evaluate.validation_map(config, model, state, splits, dmesh))
          writer.write(step, {"val_map": val})
          ckpt.save_best(step, state, val)
        if ckpt_due:
          ckpt.save(step, state if state is not None else dmesh.to_host(pstate))
      if preempted:
        ckpt.wait()
        logging.warning("preempted (SIGTERM): stopped after step %d with a checkpoint in %s", step, workdir)
        return {"step": step, "preempted": True}
      if stop_after is not None and step >= stop_after:
        ckpt.save(step, dmesh.to_host(pstate))
        ckpt.wait()
        return {"step": step}
  except BaseException:
    failed = True
    raise
  finally:
    if progress is not None:
      progress.close()
    writer.close()
    ckpt.wait()
    if failed and created and is_main and not ckpt.any_saved():
      shutil.rmtree(workdir, ignore_errors=True)  # nothing to resume from: leave no half-made run folder

  final_state, best_step = ckpt.restore_best(dmesh.to_host(pstate))
  results = evaluate.evaluate_state(config, model, final_state, splits, meta, step=best_step, dmesh=dmesh)
  if is_main:
    evaluate.write_report(workdir, results, config)
  return results
