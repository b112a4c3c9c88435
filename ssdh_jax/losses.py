"""SSDH objective (and the DPSH baseline) as pure, jit/grad/vmap-able JAX functions.

Spec: ../shared/docs/ssdh-method.md, section Loss (the authors' Caffe release). With D_ij = ‖h_i − h_j‖² on the
relaxed codes h (float32) and the contrastive pair term f(i, p, n) = D_ip + max(0, m − √D_in)²:

  L_rank = 1/(2T)    Σ_{triplets (a,p,n)}   max(0, rank_margin + D_ap − D_an)     (labeled anchors)
  L_emb  = λ/(2N)    Σ_{all rows i}         f(i, p(i), n(i))                       (online graph)
  L_pl   = λ/(2P)    Σ_{unlabeled u w/ pair} f(u, p_u, n_u)                        (pseudo-labels)
  L_cls  = 1/(2|L|)  Σ_{labeled i}          ‖σ(z_i) − y_i‖²
  L      = use_rank·L_rank + use_emb·L_emb + use_pl·L_pl + use_cls·L_cls

Sharding contract (see the project contract): `outputs`, `labels`, `labeled` hold the GLOBAL batch; a call
computes the per-anchor terms of `anchor_ids` only, each anchor's random choices come from
fold_in(key, row_ids[anchor]) (row_ids defaults to arange(N), i.e. the global row index), and the count
normalisers (T, P, |L|, purity denominator) go through ONE call `reduce_count(counts)` with a float32 vector
of the shard's counts (the trainer passes lax.psum; elementwise sum is all it must do). Every returned value
is an additive partial: summing over shards that partition the anchors gives the full-batch value and, because
the counts are not differentiated, the full-batch gradient.

√D uses the release's regularised derivative d√D/dD = 1/(2(√D + 1e-4)) (its backward divides by
dist + 1e-4), which keeps the gradient finite, and zero, at coincident codes.

Not in the release (remedy options, off by default): `lam_rampup_steps` ramps λ up from 0; `graph_filter=
'class_agree'` draws p(i) only among the k nearest rows predicted in i's class and n(i) only among window rows
predicted in another class (no such row: the hinge is dropped); `cls_in_single_label` trains L_cls in the
single-label variant, whose class head the filter reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from ssdh_jax import graph
from ssdh_jax.registry import Registry

LossFn = Callable[..., tuple[Array, dict[str, Array]]]
ReduceCount = Callable[[Array], Array]

SQRT_GRAD_EPS = 1e-4  # the release's backward: beta = -gamma * (m - dist) / (dist + 1e-4)
_HIGHEST = jax.lax.Precision.HIGHEST

# Per loss: the aux entries, in order, that form the vector the loss passes to `reduce_count` (each is this
# shard's count; stacking their sums over shards gives what lax.psum hands back).
COUNT_NAMES = {
  "ssdh": ("n_triplets", "n_pl_pairs", "n_labeled", "n_purity_pairs"),
  "dpsh": ("n_pairs",),
}


def _identity(x: Array) -> Array:
  return x


# ------------------------------------------------------------------------------------------------ settings


@dataclasses.dataclass(frozen=True)
class SSDHLoss:
  """Settings of the SSDH loss (and DPSH's `dpsh_eta`): the release's values at 48 bits. Frozen and hashable, so
  it can be a static argument of `jax.jit`; `configs/default.py` builds `config.loss` from these defaults and
  `as_settings` turns a config section (or a plain dict) back into one, the only place that fills defaults.

  Attributes:
    variant: 'multi_label' (release: window non-neighbours, pseudo-label and class terms) | 'single_label'
      (farthest-third non-neighbours; no pseudo-label term, no class term unless cls_in_single_label).
    graph_feature: what the online graph is built on: 'codes' (release: detached hash outputs) | 'features'.
    graph: registered graph builder (`graph.get_graph_builder`); 'knn_window' is the release's.
    graph_filter: 'none' (release) | 'class_agree' (edges only between rows predicted in the same class).
    knn_k: the neighbour is drawn from the first min(knn_k, N/3) sorted positions.
    neg_window: non-neighbour window (a, b) at window_ref_n, scaled linearly with the global batch.
    window_ref_n: batch size neg_window is defined at.
    lam: weight λ of the graph-embedding and pseudo-label terms.
    lam_rampup_steps: λ grows linearly from 0 over these steps (0: the release's constant λ).
    margin: contrastive margin m (release: 2.5 for 12 bits). rank_margin: triplet margin.
    max_tries: draws to find a triplet negative sharing no label with the positive.
    use_rank, use_emb, use_pl, use_cls: term switches (pl/cls need outputs['class_logits']).
    cls_in_single_label: train the class head (L_cls) in the single-label variant too.
    extra_terms: ((name, weight), ...) registered terms (`register_term`) added to the loss.
    dpsh_eta: DPSH quantisation weight (loss 'dpsh' only).
  """

  variant: str = "multi_label"
  graph_feature: str = "codes"
  graph: str = "knn_window"
  graph_filter: str = "none"
  knn_k: int = 8
  neg_window: tuple[int, int] = (114, 124)
  window_ref_n: int = 128
  lam: float = 0.1
  lam_rampup_steps: int = 0
  margin: float = 3.0
  rank_margin: float = 1.0
  max_tries: int = 10
  use_rank: bool = True
  use_emb: bool = True
  use_pl: bool = True
  use_cls: bool = True
  cls_in_single_label: bool = False
  extra_terms: tuple[tuple[str, float], ...] = ()
  dpsh_eta: float = 0.1

  def __post_init__(self):
    set_ = lambda name, v: object.__setattr__(self, name, v)  # frozen: normalise in place
    set_("neg_window", tuple(int(x) for x in self.neg_window))
    set_("extra_terms", tuple((str(n), float(w)) for n, w in self.extra_terms))
    for field, options in (
      ("variant", ("multi_label", "single_label")),
      ("graph_feature", ("codes", "features", "fc7")),
      ("graph_filter", ("none", "class_agree")),
    ):
      if getattr(self, field) not in options:
        raise ValueError(f"SSDHLoss.{field}: {getattr(self, field)!r}; expected one of {' | '.join(options)}")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


_FIELDS = {f.name for f in dataclasses.fields(SSDHLoss)}


def as_settings(cfg: SSDHLoss | Mapping[str, Any] | None) -> SSDHLoss:
  """`cfg` as SSDHLoss: a config.loss section or a plain dict (fields it lacks, e.g. in an older run's saved
  config, take the release's defaults; 'name' is the loss's registry name and ignored here); None: defaults.
  An unknown field is an error, so a typo cannot be ignored silently."""
  if isinstance(cfg, SSDHLoss):
    return cfg
  if cfg is None:
    return SSDHLoss()
  items = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
  items.pop("name", None)
  unknown = sorted(set(items) - _FIELDS)
  if unknown:
    raise ValueError(f"unknown loss settings {unknown}; SSDHLoss has {sorted(_FIELDS)}")
  return SSDHLoss(**items)


# ------------------------------------------------------------------------------------------------ extra terms


@dataclasses.dataclass(frozen=True)
class TermInputs:
  """What a registered term reads. Arrays hold the GLOBAL batch; `anchors` are this call's rows.

  codes: (N, k) float32 relaxed codes; outputs: every model output; labels (N, C) float32; labeled (N,) bool;
  anchors (n,) int32; samples: `ssdh_sample`'s indices; settings: the SSDHLoss; num_rows: N.
  """

  codes: Array
  outputs: Mapping[str, Array]
  labels: Array
  labeled: Array
  anchors: Array
  samples: Mapping[str, Array]
  settings: SSDHLoss
  num_rows: int


TermFn = Callable[[TermInputs], Array]
_TERMS: Registry[TermFn] = Registry(
  "loss term",
  reserved=("rank", "emb", "pl", "cls"),  # the built-in terms' log names
  how="@ssdh_jax.losses.register_term(name)",
)


def register_term(name: str) -> Callable[[TermFn], TermFn]:
  """Decorator: registers `fn(TermInputs) -> scalar` under `name` for config.loss.extra_terms.

  `--config.loss.extra_terms="(('name', weight),)"` (loss 'ssdh') then adds `weight * fn(inputs)` to the loss.

  Return value: the UNWEIGHTED term, a float32 scalar; the loss multiplies it by the weight. Must trace under
  jit (no Python branching on array values, no host callbacks).

  Batch fields it may read (`TermInputs`; arrays hold the GLOBAL batch of N rows): `codes` (N, k) relaxed codes
  in (0, 1), differentiable; `outputs`, every model output: 'codes', 'hash_logits' (N, k) pre-sigmoid,
  'features' (N, F) backbone features and 'class_logits' (N, C) when model.num_classes > 0; `labels` (N, C)
  multi-hot (zeros for unlabeled rows, not differentiated); `labeled` (N,) bool; `anchors` (n,) the rows this
  call owns; `samples`, `ssdh_sample`'s indices (graph neighbour 'emb_pos', non-neighbour 'emb_neg', triplets,
  pseudo-label pairs); `settings` (SSDHLoss); `num_rows` N. No images, PRNG key or step number.

  Sharding contract: the value must be an additive partial over the anchors (a sum over `anchors` divided by a
  constant or by `num_rows`), so that shards partitioning the anchors sum to the full-batch value.

  Logging: the weighted value appears as 'loss_<name>' in the loss's aux, hence in metrics.jsonl and
  TensorBoard (mean over the train.log_every steps), and with train.term_grad_norms > 0 its gradient norm and
  cosine with the total gradient as 'gnorm_<name>' / 'gcos_<name>'. The names 'rank', 'emb', 'pl' and 'cls'
  are the built-in terms'.

  From the command line: register it in a module and pass `--module path/to/file.py` to train.py; the run
  folder records the module (modules.json) so eval.py and ssdh-search import it again.
  """

  return lambda fn: _TERMS.add(name, fn)


def get_term(name: str) -> TermFn:
  """The term registered under `name`; ValueError listing the registered terms if none."""
  return _TERMS.get(name)


def available_terms() -> tuple[str, ...]:
  """Names registered with `register_term` (the built-in terms are not in it)."""
  return _TERMS.names()


@jax.custom_jvp
def safe_sqrt(x: Array) -> Array:
  """√max(x, 0) whose derivative is 1/(2(√x + SQRT_GRAD_EPS)) (the release's), finite at 0."""
  return jnp.sqrt(jnp.maximum(x, 0.0))


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  y = safe_sqrt(x)
  return y, t / (2.0 * (y + SQRT_GRAD_EPS))


def row_sq_dists(a: Array, b: Array) -> Array:
  """‖a_i − b_i‖² for paired rows: (n, k), (n, k) -> (n,) float32 (direct difference, exact 0 at a == b)."""
  diff = a.astype(jnp.float32) - b.astype(jnp.float32)
  return jnp.sum(diff * diff, axis=-1)


def contrastive(h_a: Array, h_p: Array, h_n: Array, margin: float, neg_valid: Array | None = None) -> Array:
  """Per-anchor pair term D_ap + max(0, m − √D_an)²: (n, k) ×3 -> (n,) float32; the hinge is dropped where
  `neg_valid` (n,) bool is False."""
  hinge = jnp.maximum(margin - safe_sqrt(row_sq_dists(h_a, h_n)), 0.0)
  if neg_valid is not None:
    hinge = jnp.where(neg_valid, hinge, 0.0)
  return row_sq_dists(h_a, h_p) + hinge * hinge


def share_label(y_a: Array, y: Array) -> Array:
  """(n, C), (N, C) multi-hot -> (n, N) bool: rows share at least one label."""
  ya = (y_a > 0.5).astype(jnp.float32)
  yb = (y > 0.5).astype(jnp.float32)
  return jnp.matmul(ya, yb.T, precision=_HIGHEST) > 0.5


def _defaults(n_rows: int, anchor_ids: Array | None, row_ids: Array | None) -> tuple[Array, Array]:
  anchors = jnp.arange(n_rows, dtype=jnp.int32) if anchor_ids is None else jnp.asarray(anchor_ids, jnp.int32)
  rids = jnp.arange(n_rows, dtype=jnp.int32) if row_ids is None else jnp.asarray(row_ids, jnp.int32)
  return anchors, rids


def _terms_on(cfg: SSDHLoss, outputs: Mapping[str, Array]) -> dict[str, bool]:
  """The built-in terms this loss computes. The variant defines which exist; a term that is on but lacks its
  inputs is an error (never dropped silently)."""
  single = cfg.variant == "single_label"
  on = {
    "rank": bool(cfg.use_rank),
    "emb": bool(cfg.use_emb),
    "pl": bool(cfg.use_pl) and not single,
    "cls": bool(cfg.use_cls) and (not single or bool(cfg.cls_in_single_label)),
  }
  need = [t for t in ("pl", "cls") if on[t]]
  if need and "class_logits" not in outputs:
    raise ValueError(
      f"loss terms {need} need outputs['class_logits'] (a class head: model.num_classes > 0); switch them "
      f"off with use_pl=False / use_cls=False, or use variant='single_label'"
    )
  if cfg.graph_filter == "class_agree" and on["emb"] and not on["cls"]:
    raise ValueError(
      "loss.graph_filter='class_agree' filters graph edges by class predictions, so it needs a trained class "
      "head: model.num_classes > 0, loss.use_cls=True and, in the single-label variant, "
      "loss.cls_in_single_label=True"
    )
  return on


def graph_classes(outputs: Mapping[str, Array], cfg: SSDHLoss | Mapping) -> Array | None:
  """(N, C) bool one-hot predicted class per row (argmax of the detached class logits) for the class-agreement
  graph filter (config.loss.graph_filter='class_agree'); None without the filter. Predictions only, never the
  labels, so the logged graph purity stays a measurement."""
  cfg = as_settings(cfg)
  if cfg.graph_filter == "none":
    return None
  z = jax.lax.stop_gradient(outputs["class_logits"].astype(jnp.float32))
  return jax.nn.one_hot(jnp.argmax(z, axis=-1), z.shape[-1], dtype=bool)


def lam_ramp(cfg: SSDHLoss | Mapping, step: Array | int | None) -> Array:
  """Factor on λ at `step`: linear from 0 to 1 over cfg.lam_rampup_steps (0 or step None: always 1), so the
  unlabeled terms start once the codes, hence the online graph, carry some class structure."""
  ramp = int(as_settings(cfg).lam_rampup_steps)
  if ramp <= 0 or step is None:
    return jnp.float32(1.0)
  return jnp.minimum(jnp.asarray(step, jnp.float32) / ramp, 1.0)


# ------------------------------------------------------------------------------------------------ sampling


def online_graph(
  outputs: Mapping[str, Array],
  cfg: SSDHLoss | Mapping | None,
  bits: Array,
  anchors: Array,
  row_ids: Array,
  *,
  builder: graph.GraphBuilder | None = None,
  classes: Array | None = None,
) -> dict[str, Array]:
  """Each anchor's graph neighbour and non-neighbour over the global batch (`graph.sample_graph_pairs`'s
  dict), from the registered builder cfg.graph unless `builder` is given; bits: (n, 2) uint32 draws."""
  cfg = as_settings(cfg)
  big_n = outputs["codes"].shape[0]
  return (builder or graph.get_graph_builder(cfg.graph))(
    graph.graph_features(outputs, cfg),
    bits,
    anchors,
    row_ids,
    k_size=graph.knn_size(big_n, cfg.knn_k),
    window=graph.graph_window(big_n, cfg),
    classes=classes,
  )


def ssdh_sample(
  outputs: Mapping[str, Array],
  labels: Array,
  labeled: Array,
  key: Array,
  cfg: SSDHLoss | Mapping | None = None,
  *,
  anchor_ids: Array | None = None,
  row_ids: Array | None = None,
  graph_builder: graph.GraphBuilder | None = None,
) -> dict[str, Array]:
  """All index selection of the SSDH loss (never differentiated).

  Args:
    outputs: model outputs for the global batch ('codes' (N,k); 'features' if graph_feature='features';
      'class_logits' (N,C) for the pseudo-label term).
    labels: (N, C) float32 multi-hot (zeros for unlabeled rows).
    labeled: (N,) bool.
    key: PRNG key of this step.
    cfg: SSDHLoss (or a config.loss section / dict; see `as_settings`).
    anchor_ids: (n,) int32 rows whose choices to draw (default all N).
    row_ids: (N,) int unique global row ids used for fold_in, tie-breaks and set order (default arange(N)).
    graph_builder: draws the graph pairs (signature of `graph.sample_graph_pairs`); default: the builder
      registered under cfg.graph.

  Returns:
    dict of (n,) arrays: 'anchors'; graph 'emb_pos', 'emb_neg', 'emb_pos_rank', 'emb_neg_rank',
    'emb_neg_valid' (False only where the class-agreement filter left no non-neighbour);
    triplets 'rank_pos', 'rank_neg', 'rank_valid'; pseudo-label pairs 'pl_pos', 'pl_neg', 'pl_valid'.
    Index entries are batch positions; where the matching *_valid is False they are arbitrary.
  """
  cfg = as_settings(cfg)
  h = outputs["codes"]
  big_n = h.shape[0]
  anchors, rids = _defaults(big_n, anchor_ids, row_ids)
  labeled = jnp.asarray(labeled, bool)
  labels = jax.lax.stop_gradient(jnp.asarray(labels, jnp.float32))
  on = _terms_on(cfg, outputs)
  tries = max(1, int(cfg.max_tries))
  # Word layout per anchor: [neighbour, non-neighbour, tries × triplet p, tries × triplet n, pl p, pl n].
  bits = graph.anchor_bits(key, rids[anchors], 4 + 2 * tries)
  b_graph, b_rank_pos = bits[:, :2], bits[:, 2 : 2 + tries]
  b_rank_neg, b_pl = bits[:, 2 + tries : 2 + 2 * tries], bits[:, 2 + 2 * tries :]
  n = anchors.shape[0]
  out = {"anchors": anchors}

  # Online graph: one neighbour and one non-neighbour for every anchor (also used for purity diagnostics).
  classes = graph_classes(outputs, cfg) if on["emb"] else None
  g = online_graph(outputs, cfg, b_graph, anchors, rids, builder=graph_builder, classes=classes)
  unknown_rank = jnp.full((n,), -1, jnp.int32)  # a builder that draws without sorting has no rank to give
  out.update(
    emb_pos=g["pos"],
    emb_neg=g["neg"],
    emb_pos_rank=g.get("pos_rank", unknown_rank),
    emb_neg_rank=g.get("neg_rank", unknown_rank),
    emb_neg_valid=g.get("neg_valid", jnp.ones((n,), bool)),
  )

  y_a = labels[anchors]
  lab_a = labeled[anchors]
  zeros_i = jnp.zeros((n,), jnp.int32)
  zeros_b = jnp.zeros((n,), bool)

  # Triplets: p ~ labeled rows sharing a label with a (a itself allowed), n ~ labeled rows sharing none; up to
  # max_tries (p, n) draws, the first with p and n sharing no label is kept.
  if on["rank"]:
    # One (n, N) cumsum for both draws: among labeled columns (all of them for a labeled anchor, none for an
    # unlabeled one), the counts of the dissimilar set are the labeled counts minus the similar set's.
    canon = jnp.argsort(rids).astype(jnp.int32)
    sim_c = share_label(y_a, labels[canon]) & labeled[canon][None, :] & lab_a[:, None]
    cs_sim = jnp.cumsum(sim_c.astype(jnp.int32), axis=1)
    cs_lab = jnp.cumsum(labeled[canon].astype(jnp.int32))[None, :] * lab_a[:, None].astype(jnp.int32)
    p, p_ok = graph.choice_from_counts(b_rank_pos, cs_sim, canon)
    q, q_ok = graph.choice_from_counts(b_rank_neg, cs_lab - cs_sim, canon)
    pn_share = jnp.any((labels[p] > 0.5) & (labels[q] > 0.5), axis=-1)  # (n, tries)
    ok = (p_ok & q_ok)[:, None] & ~pn_share
    first = jnp.argmax(ok, axis=1)[:, None]
    out.update(
      rank_pos=jnp.take_along_axis(p, first, 1)[:, 0],
      rank_neg=jnp.take_along_axis(q, first, 1)[:, 0],
      rank_valid=jnp.any(ok, axis=1),
    )
  else:
    out.update(rank_pos=zeros_i, rank_neg=zeros_i, rank_valid=zeros_b)

  # Pseudo-label pairs for unlabeled anchors, from argmax ŷ / argmin y̌ of the class logits (ties: first index,
  # as the release's strict comparisons).
  if on["pl"]:
    z = jax.lax.stop_gradient(outputs["class_logits"].astype(jnp.float32))
    top = jnp.argmax(z, axis=-1)  # (N,)
    bot = jnp.argmin(z, axis=-1)
    top_a, bot_a = top[anchors], bot[anchors]
    yb = labels > 0.5
    has_top = yb.T[top_a]  # (n, N): row j carries the anchor's ŷ
    has_bot = yb.T[bot_a]
    unl = ~labeled[None, :]
    pos = (unl & (top[None, :] == top_a[:, None])) | (labeled[None, :] & has_top & ~has_bot)
    neg = (unl & (top[None, :] == bot_a[:, None])) | (labeled[None, :] & has_bot & ~has_top)
    neg = neg & ~pos  # release: the positive test runs first
    p, p_ok = graph.masked_choice(b_pl[:, :1], pos, rids)
    q, q_ok = graph.masked_choice(b_pl[:, 1:], neg, rids)
    out.update(pl_pos=p[:, 0], pl_neg=q[:, 0], pl_valid=~lab_a & p_ok & q_ok)
  else:
    out.update(pl_pos=zeros_i, pl_neg=zeros_i, pl_valid=zeros_b)
  return out


# ------------------------------------------------------------------------------------------------ terms


def ssdh_terms(
  outputs: Mapping[str, Array],
  labels: Array,
  labeled: Array,
  samples: Mapping[str, Array],
  cfg: SSDHLoss | Mapping | None = None,
  *,
  reduce_count: ReduceCount = _identity,
  step: Array | int | None = None,
) -> tuple[Array, dict[str, Array]]:
  """The differentiable SSDH terms given `ssdh_sample`'s indices. See `ssdh_loss` for args and returns."""
  cfg = as_settings(cfg)
  h = outputs["codes"].astype(jnp.float32)
  big_n = h.shape[0]
  labels = jax.lax.stop_gradient(jnp.asarray(labels, jnp.float32))
  labeled = jnp.asarray(labeled, bool)
  on = _terms_on(cfg, outputs)
  a = samples["anchors"]
  lab_a = labeled[a]
  h_a = h[a]
  lam = jnp.float32(cfg.lam) * lam_ramp(cfg, step)
  f32 = lambda x: jnp.asarray(x, jnp.float32)

  # Graph purity: sampled neighbours p(i) != i with both rows labeled; numerator: they share a label.
  e_pos = samples["emb_pos"]
  pur_mask = lab_a & labeled[e_pos] & (e_pos != a)
  pur_hit = pur_mask & jnp.any((labels[a] > 0.5) & (labels[e_pos] > 0.5), axis=-1)

  rank_valid = samples["rank_valid"] & on["rank"]
  pl_valid = samples["pl_valid"] & on["pl"]
  cls_mask = lab_a & on["cls"]
  counts = jnp.stack(
    [f32(jnp.sum(rank_valid)), f32(jnp.sum(pl_valid)), f32(jnp.sum(lab_a)), f32(jnp.sum(pur_mask))]
  )
  g_counts = jax.lax.stop_gradient(reduce_count(counts))
  n_trip, n_pl, n_lab, n_pur = (jnp.maximum(g_counts[i], 1.0) for i in range(4))

  zero = jnp.zeros((), jnp.float32)
  terms = {"loss_rank": zero, "loss_emb": zero, "loss_pl": zero, "loss_cls": zero}
  if on["rank"]:
    d_ap = row_sq_dists(h_a, h[samples["rank_pos"]])
    d_an = row_sq_dists(h_a, h[samples["rank_neg"]])
    hinge = jnp.maximum(jnp.float32(cfg.rank_margin) + d_ap - d_an, 0.0)
    terms["loss_rank"] = jnp.sum(jnp.where(rank_valid, hinge, 0.0)) / (2.0 * n_trip)
  if on["emb"]:
    neg_ok = samples.get("emb_neg_valid")
    f = contrastive(h_a, h[samples["emb_pos"]], h[samples["emb_neg"]], cfg.margin, neg_ok)
    terms["loss_emb"] = lam * jnp.sum(f) / (2.0 * big_n)
  if on["pl"]:
    f = contrastive(h_a, h[samples["pl_pos"]], h[samples["pl_neg"]], cfg.margin)
    terms["loss_pl"] = lam * jnp.sum(jnp.where(pl_valid, f, 0.0)) / (2.0 * n_pl)
  if on["cls"]:
    prob = jax.nn.sigmoid(outputs["class_logits"][a].astype(jnp.float32))
    sq = jnp.sum((prob - labels[a]) ** 2, axis=-1)
    terms["loss_cls"] = jnp.sum(jnp.where(cls_mask, sq, 0.0)) / (2.0 * n_lab)

  if cfg.extra_terms:
    inputs = TermInputs(h, outputs, labels, labeled, a, samples, cfg, big_n)
    for name, weight in cfg.extra_terms:
      terms[f"loss_{name}"] = jnp.float32(weight) * jnp.asarray(get_term(name)(inputs), jnp.float32)
  loss = sum(terms.values())
  aux = dict(terms)
  aux.update(
    n_triplets=counts[0],
    n_pl_pairs=counts[1],
    n_labeled=counts[2],
    n_purity_pairs=counts[3],
    graph_purity=f32(jnp.sum(pur_hit)) / n_pur,
  )
  return loss, aux


def ssdh_loss(
  outputs: Mapping[str, Array],
  labels: Array,
  labeled: Array,
  key: Array,
  cfg: SSDHLoss | Mapping | None = None,
  *,
  anchor_ids: Array | None = None,
  reduce_count: ReduceCount = _identity,
  row_ids: Array | None = None,
  step: Array | int | None = None,
) -> tuple[Array, dict[str, Array]]:
  """SSDH loss (release form; cfg.variant 'single_label' has no pseudo-label term and no class term).

  `jax.jit(ssdh_loss, static_argnames="cfg")` works with an SSDHLoss (hashable).

  Args:
    outputs: model outputs of the GLOBAL batch: 'codes' (N, k) in (0,1); 'class_logits' (N, C) (required by
      the pseudo-label and class terms: a ValueError when they are on and it is absent); 'features' (N, F) if
      cfg.graph_feature == 'features'. Any float dtype; all loss math is float32.
    labels: (N, C) float32 multi-hot, zeros for unlabeled rows.
    labeled: (N,) bool.
    key: PRNG key of this step (same on every shard).
    cfg: SSDHLoss, or a config.loss section / dict of its fields (`as_settings`); None: release defaults.
    anchor_ids: (n,) int32 rows whose per-anchor terms this call computes (default: all N).
    reduce_count: sums a (4,) float32 vector of counts over shards (lax.psum); called exactly once, with
      aux[name] for name in COUNT_NAMES['ssdh'].
    row_ids: (N,) int unique global row ids for fold_in / tie-breaks (default arange(N)); permuting the batch
      together with row_ids leaves every choice, hence the loss, unchanged.
    step: the training step, for the λ ramp-up (cfg.lam_rampup_steps); None: no ramp.

  Returns:
    loss: scalar float32 partial.
    aux: scalar float32 partials: 'loss_rank', 'loss_emb', 'loss_pl', 'loss_cls' and 'loss_<name>' per extra
      term (term values, weights included; the loss is their sum), 'n_triplets', 'n_pl_pairs', 'n_labeled', 'n_purity_pairs' (this shard's counts),
      'graph_purity' (this shard's share of the fraction of sampled neighbours p(i) != i that share a label,
      among anchors i with both i and p(i) labeled).
  """
  cfg = as_settings(cfg)
  samples = ssdh_sample(outputs, labels, labeled, key, cfg, anchor_ids=anchor_ids, row_ids=row_ids)
  return ssdh_terms(outputs, labels, labeled, samples, cfg, reduce_count=reduce_count, step=step)


# ------------------------------------------------------------------------------------------------ DPSH


def dpsh_loss(
  outputs: Mapping[str, Array],
  labels: Array,
  labeled: Array,
  key: Array,
  cfg: SSDHLoss | Mapping | None = None,
  *,
  anchor_ids: Array | None = None,
  reduce_count: ReduceCount = _identity,
  row_ids: Array | None = None,
  step: Array | int | None = None,
) -> tuple[Array, dict[str, Array]]:
  """DPSH (Li et al., IJCAI 2016) pairwise likelihood on the pre-sigmoid hash layer u = 'hash_logits'.

  θ_ij = ½ u_i·u_j, s_ij = 1 iff rows share a label;
  L = mean_{i anchor, j; both labeled} [softplus(θ_ij) − s_ij θ_ij] + dpsh_eta · (1/N) Σ_{i anchor} ‖u_i − sign(u_i)‖².
  Pairs include i = j. The pair count goes through `reduce_count` (a (1,) vector); the quantisation mean is
  over all N rows. `key` and `row_ids` are unused (no sampling); they keep the registry signature.

  Returns:
    loss: scalar float32 partial; aux: 'loss_pair', 'loss_quant', 'n_pairs' (additive partials).
  """
  del key, row_ids, step
  cfg = as_settings(cfg)
  u = outputs["hash_logits"].astype(jnp.float32)
  big_n = u.shape[0]
  anchors, _ = _defaults(big_n, anchor_ids, None)
  labels = jnp.asarray(labels, jnp.float32)
  labeled = jnp.asarray(labeled, bool)
  u_a = u[anchors]
  theta = 0.5 * jnp.matmul(u_a, u.T, precision=_HIGHEST)
  s = share_label(labels[anchors], labels).astype(jnp.float32)
  pair = labeled[anchors][:, None] & labeled[None, :]
  n_local = jnp.sum(pair).astype(jnp.float32)
  n_pairs = jnp.maximum(jax.lax.stop_gradient(reduce_count(n_local[None]))[0], 1.0)
  nll = jax.nn.softplus(theta) - s * theta
  loss_pair = jnp.sum(jnp.where(pair, nll, 0.0)) / n_pairs
  b = jax.lax.stop_gradient(jnp.sign(u_a))
  loss_quant = jnp.float32(cfg.dpsh_eta) * jnp.sum((u_a - b) ** 2) / big_n
  aux = {"loss_pair": loss_pair, "loss_quant": loss_quant, "n_pairs": n_local}
  return loss_pair + loss_quant, aux


# ------------------------------------------------------------------------------------------------ registry

_REGISTRY: Registry[LossFn] = Registry(
  "loss", {"ssdh": ssdh_loss, "dpsh": dpsh_loss}, how="ssdh_jax.losses.register_loss(name, fn)"
)


def register_loss(name: str, fn: LossFn) -> LossFn:
  """Makes `name` a valid config.loss.name. `fn` has `ssdh_loss`'s signature and contract (global batch in,
  additive partials over `anchor_ids` out, counts through one `reduce_count` call); its aux entries named
  'loss_*' are logged and covered by the per-term gradient diagnostics. Returns `fn`."""
  return _REGISTRY.add(name, fn)


def get_loss(name: str) -> LossFn:
  """Loss function by name ('ssdh' | 'dpsh' | a registered one); ValueError listing the registered losses if
  none. Every entry has `ssdh_loss`'s signature."""
  return _REGISTRY.get(name)


def available_losses() -> tuple[str, ...]:
  """Names accepted by `get_loss`."""
  return tuple(sorted(_REGISTRY.names()))


# ------------------------------------------------------------------------------------------------ code terms
# Registered extra terms (SSDHLoss.extra_terms) that make every bit carry information. Both are functions of
# the whole global batch's codes (a mean and a covariance over rows), not sums over anchors: each call returns
# the full-batch value times its anchors' share of the rows, so the shards' partials add up to the value and
# its gradient (the codes are all-gathered, so every shard sees the same batch).


def _signed_codes(inputs: TermInputs) -> Array:
  return 2.0 * inputs.codes.astype(jnp.float32) - 1.0  # (N, k) in (-1, 1): 0 is the threshold


def _anchor_share(inputs: TermInputs) -> Array:
  return jnp.float32(inputs.anchors.shape[0]) / jnp.float32(inputs.num_rows)


@register_term("bit_balance")
def bit_balance(inputs: TermInputs) -> Array:
  """(1/k) Σ_j (mean_i s_ij)² with s = 2h − 1: 0 when every bit is on for half the batch, 1 when every bit is
  saturated to the same side for every row (a constant bit)."""
  mean = jnp.mean(_signed_codes(inputs), axis=0)
  return _anchor_share(inputs) * jnp.mean(mean * mean)


@register_term("bit_decorrelation")
def bit_decorrelation(inputs: TermInputs) -> Array:
  """Mean squared off-diagonal entry of the bits' covariance over the batch, (1/(k(k−1))) Σ_{j≠l} C_jl² with
  C = (1/N) Σ_i (s_i − s̄)(s_i − s̄)ᵀ, s = 2h − 1: 0 when no bit is a linear function of another."""
  s = _signed_codes(inputs)
  centred = s - jnp.mean(s, axis=0)
  cov = jnp.matmul(centred.T, centred, precision=_HIGHEST) / s.shape[0]
  k = cov.shape[0]
  off = cov * (1.0 - jnp.eye(k, dtype=cov.dtype))
  return _anchor_share(inputs) * jnp.sum(off * off) / max(k * (k - 1), 1)
