"""Tests of ssdh_jax.losses against the independent NumPy reference in tests/loss_reference.py."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import loss_reference as ref
import ml_collections
import numpy as np
import pytest
from scipy import stats

from configs.default import get_config
from ssdh_jax import losses
from ssdh_jax.testing import run_with_devices

TERMS = ("loss_rank", "loss_emb", "loss_pl", "loss_cls")


def loss_cfg(**overrides):
  cfg = get_config().loss
  for name, value in overrides.items():
    setattr(cfg, name, value)
  return cfg


def make_batch(seed, n=48, k=12, c=5, *, single_label=False, frac_labeled=0.5, dtype=np.float32):
  """Random global batch: codes in (0,1), class logits, multi-hot (or one-hot) labels on a labeled subset."""
  rng = np.random.default_rng(seed)
  labeled = rng.random(n) < frac_labeled
  if single_label:
    labels = np.eye(c, dtype=np.float32)[rng.integers(0, c, n)]
  else:
    labels = (rng.random((n, c)) < 0.3).astype(np.float32)
    labels[np.arange(n), rng.integers(0, c, n)] = 1.0  # every labeled row has >= 1 label
  labels[~labeled] = 0.0
  outputs = {
    "codes": jnp.asarray(1 / (1 + np.exp(-2 * rng.normal(size=(n, k)))), dtype),
    "class_logits": jnp.asarray(rng.normal(size=(n, c)), dtype),
  }
  return outputs, jnp.asarray(labels), jnp.asarray(labeled)


def np_samples(samples):
  return {name: np.asarray(v) for name, v in samples.items()}


def run(cfg, o, y, m, key, ids=None, rid=None, total=None, name="ssdh"):
  """Jitted (samples, (loss, aux), grads w.r.t. outputs) of loss `name`; samples are ssdh_sample's ({} for dpsh).

  ids / rid default to explicit aranges so that all full-batch calls of a config and shape share one
  compilation (compiling dominates these tests). total=None: reduce_count is the identity; otherwise it
  returns `total` (the emulated psum).
  """
  n = m.shape[0]
  ids = jnp.arange(n, dtype=jnp.int32) if ids is None else jnp.asarray(ids, jnp.int32)
  rid = jnp.arange(n, dtype=jnp.int32) if rid is None else jnp.asarray(rid, jnp.int32)
  out = _jitted(name, tuple(sorted(cfg.to_dict().items())))(o, y, m, key, ids, rid, total)
  return np_samples(out[0]), out[1], out[2]


@functools.cache
def _jitted(name, items):
  cfg = ml_collections.ConfigDict(dict(items))
  fn = losses.get_loss(name)

  def loss(o, y, m, k, ids, rid, total):
    reduce = (lambda x: x) if total is None else (lambda x: total)
    return fn(o, y, m, k, cfg, anchor_ids=ids, row_ids=rid, reduce_count=reduce)

  def everything(o, y, m, k, ids, rid, total):
    samples = losses.ssdh_sample(o, y, m, k, cfg, anchor_ids=ids, row_ids=rid) if name == "ssdh" else {}
    return samples, *jax.value_and_grad(loss, has_aux=True)(o, y, m, k, ids, rid, total)

  return jax.jit(everything)


# ------------------------------------------------------------------------------------------------ reference match


@pytest.mark.parametrize(
  "variant,seed,frac",
  [("multi_label", 0, 0.5), ("multi_label", 1, 0.8), ("single_label", 2, 0.5), ("single_label", 3, 0.3)],
)
def test_terms_and_grads_match_reference(variant, seed, frac):
  cfg = loss_cfg(variant=variant)
  outputs, labels, labeled = make_batch(seed, single_label=variant == "single_label", frac_labeled=frac)
  key = jax.random.PRNGKey(seed)
  samples, (loss, aux), grads = run(cfg, outputs, labels, labeled, key)
  r = ref.ssdh_reference(
    np.asarray(outputs["codes"]),
    np.asarray(outputs["class_logits"]),
    np.asarray(labels),
    np.asarray(labeled),
    samples,
    cfg,
  )
  assert r["n_triplets"] > 0 and r["loss_emb"] > 0  # the batch exercises the terms
  if variant == "multi_label":
    assert r["n_pl_pairs"] > 0 and r["loss_cls"] > 0
  else:
    assert float(aux["loss_pl"]) == 0.0 and float(aux["loss_cls"]) == 0.0
  for name in (*TERMS, "n_triplets", "n_pl_pairs", "n_labeled", "graph_purity"):
    np.testing.assert_allclose(float(aux[name]), r[name], rtol=2e-5, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(float(loss), r["loss"], rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grads["codes"]), r["grad_codes"], rtol=1e-4, atol=2e-6)
  np.testing.assert_allclose(np.asarray(grads["class_logits"]), r["grad_logits"], rtol=1e-4, atol=2e-6)


def test_reference_gradient_matches_finite_differences():
  """The reference's release-style analytic gradient is the derivative of its own value (up to the 1e-4)."""
  cfg = loss_cfg()
  outputs, labels, labeled = make_batch(5)
  samples = run(cfg, outputs, labels, labeled, jax.random.PRNGKey(1))[0]
  logits, y, lab = np.asarray(outputs["class_logits"], np.float64), np.asarray(labels), np.asarray(labeled)
  h = np.asarray(outputs["codes"], np.float64)
  r = ref.ssdh_reference(h, logits, y, lab, samples, cfg)
  assert r["n_triplets"] > 0 and r["n_pl_pairs"] > 0
  # Central differences on a random subset of coordinates (each costs two evaluations of the loop reference).
  rng = np.random.default_rng(0)
  for x, grad, f in (
    (h, r["grad_codes"], lambda v: ref.ssdh_value(v, logits, y, lab, samples, cfg)),
    (logits, r["grad_logits"], lambda v: ref.ssdh_value(h, v, y, lab, samples, cfg)),
  ):
    idx = [tuple(rng.integers(0, d) for d in x.shape) for _ in range(40)]
    fd = ref.numeric_grad(f, x, idx)
    # The release's dist + 1e-4 moves each neg-pair gradient by a relative ~1e-4 / dist.
    np.testing.assert_allclose(
      [grad[i] for i in idx], [fd[i] for i in idx], rtol=2e-3, atol=2e-4 * np.abs(grad).max()
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_dpsh_matches_reference(seed):
  cfg = loss_cfg(name="dpsh", dpsh_eta=0.3)
  rng = np.random.default_rng(seed)
  _, labels, labeled = make_batch(seed, n=20, k=6, c=4)
  u = jnp.asarray(3 * rng.normal(size=(20, 6)), jnp.float32)
  _, (loss, aux), g = run(cfg, {"hash_logits": u}, labels, labeled, jax.random.PRNGKey(0), name="dpsh")
  r = ref.dpsh_reference(np.asarray(u), np.asarray(labels), np.asarray(labeled), 0.3)
  np.testing.assert_allclose(float(aux["loss_pair"]), r["loss_pair"], rtol=1e-5)
  np.testing.assert_allclose(float(aux["loss_quant"]), r["loss_quant"], rtol=1e-5)
  np.testing.assert_allclose(float(loss), r["loss"], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g["hash_logits"]), r["grad"], rtol=1e-4, atol=1e-6)
  assert float(aux["n_pairs"]) == int(np.sum(np.asarray(labeled))) ** 2


def test_dpsh_stable_for_large_logits():
  cfg = loss_cfg(name="dpsh", dpsh_eta=0.3)
  _, labels, labeled = make_batch(0, n=20, k=6, c=4)
  u = jnp.full((20, 6), 150.0)  # θ = 67500: a naive log(1 + e^θ) overflows
  _, (loss, _), g = run(cfg, {"hash_logits": u}, labels, labeled, jax.random.PRNGKey(0), name="dpsh")
  assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g["hash_logits"])))


# ------------------------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("variant", ["multi_label", "single_label"])
def test_graph_choices_in_knn_and_window(variant):
  cfg = loss_cfg(variant=variant)
  n = 48
  outputs, labels, labeled = make_batch(7, n=n, single_label=variant == "single_label")
  kk = ref.knn_size(n, cfg.knn_k)
  lo, hi = ref.neg_window(n, cfg)
  assert (kk, lo, hi) == ((8, 42, 46) if variant == "multi_label" else (8, 32, 48))
  h = np.asarray(outputs["codes"], np.float64)
  orders = [ref.sorted_rows(h, i) for i in range(n)]
  for seed in range(4):
    s = run(cfg, outputs, labels, labeled, jax.random.PRNGKey(seed))[0]
    for i in range(n):
      assert orders[i].index(s["emb_pos"][i]) < kk
      assert lo <= orders[i].index(s["emb_neg"][i]) < hi
      assert orders[i][s["emb_pos_rank"][i]] == s["emb_pos"][i]
      assert orders[i][s["emb_neg_rank"][i]] == s["emb_neg"][i]


@pytest.mark.parametrize("single_label", [False, True])
def test_triplet_validity(single_label):
  cfg = loss_cfg()
  outputs, labels, labeled = make_batch(11, single_label=single_label, frac_labeled=0.7)
  y, lab = np.asarray(labels), np.asarray(labeled)
  n_valid = 0
  for seed in range(3):
    s = run(cfg, outputs, labels, labeled, jax.random.PRNGKey(seed))[0]
    for a in range(len(y)):
      pos, neg = ref.triplet_sets(y, lab, a)
      if s["rank_valid"][a]:
        n_valid += 1
        p, q = s["rank_pos"][a], s["rank_neg"][a]
        assert p in pos and q in neg and not ref.shares(y[p], y[q])
      else:
        # Either no candidates, or every one of the max_tries draws could plausibly have failed.
        good = sum(not ref.shares(y[p], y[q]) for p in pos for q in neg)
        rate = good / max(len(pos) * len(neg), 1)
        assert not pos or not neg or (1 - rate) ** cfg.max_tries > 1e-4, (a, rate)
  assert n_valid > 30


def test_pseudo_label_pairs_validity():
  cfg = loss_cfg()
  outputs, labels, labeled = make_batch(12)
  z, y, lab = np.asarray(outputs["class_logits"]), np.asarray(labels), np.asarray(labeled)
  sets = [ref.pl_sets(z, y, lab, a) for a in range(len(y))]
  self_drawn, self_expected = 0, 0.0
  for seed in range(20):
    s = run(cfg, outputs, labels, labeled, jax.random.PRNGKey(seed))[0]
    for a, (pos, neg) in enumerate(sets):
      expected = (not lab[a]) and bool(pos) and bool(neg)
      assert bool(s["pl_valid"][a]) == expected, a
      if expected:
        assert s["pl_pos"][a] in pos and s["pl_neg"][a] in neg
        self_drawn += int(s["pl_pos"][a] == a)
        self_expected += 1.0 / len(pos)
  # The anchor is one of its own positives (same argmax) and is drawn as often as any other member.
  assert self_expected > 20
  assert abs(self_drawn - self_expected) < 4 * np.sqrt(self_expected), (self_drawn, self_expected)


def _chi2_ok(counts, alpha=1e-3):
  counts = np.asarray(counts, np.float64)
  expected = counts.sum() / len(counts)
  stat = float(np.sum((counts - expected) ** 2 / expected))
  return stat < stats.chi2.ppf(1 - alpha, len(counts) - 1), stat


def test_sampling_frequencies_uniform():
  """Sorted-position draws are uniform over [0, K) and the release window; set draws uniform over the set."""
  cfg = loss_cfg()
  # One-hot labels: a positive (same class) never shares a label with a negative, so the first try is kept
  # and the kept positive is an unconditioned uniform draw.
  outputs, labels, labeled = make_batch(4, n=128, c=3, single_label=True)
  fn = jax.jit(jax.vmap(lambda k: losses.ssdh_sample(outputs, labels, labeled, k, cfg)))
  s = np_samples(fn(jax.random.split(jax.random.PRNGKey(42), 80)))
  ok, stat = _chi2_ok(np.bincount(s["emb_pos_rank"].ravel(), minlength=8))
  assert ok, stat
  assert s["emb_neg_rank"].min() >= 114 and s["emb_neg_rank"].max() < 124  # the release window at N = 128
  ok, stat = _chi2_ok(np.bincount(s["emb_neg_rank"].ravel() - 114, minlength=10))
  assert ok, stat
  # Triplet positives: labeled anchors of class 0 all share one candidate set (the labeled rows of class 0).
  y, lab = np.asarray(labels), np.asarray(labeled)
  anchors = np.flatnonzero(lab & (y[:, 0] > 0))
  pos_set, _ = ref.triplet_sets(y, lab, int(anchors[0]))
  assert len(pos_set) == len(anchors) > 10
  assert s["rank_valid"][:, anchors].all()
  chosen = s["rank_pos"][:, anchors].ravel()
  assert set(chosen.tolist()) <= set(pos_set)
  ok, stat = _chi2_ok([np.sum(chosen == p) for p in pos_set])
  assert ok, stat


# ------------------------------------------------------------------------------------------------ sharding contract


def _emulate_shards(cfg, name, outputs, labels, labeled, key, shards):
  """Runs the loss once per anchor shard with reduce_count emulating lax.psum: a first pass collects each
  shard's count vector, the second feeds every shard their elementwise total."""
  names = losses.COUNT_NAMES[name]
  dummy = jnp.ones((len(names),), jnp.float32)  # pass 1 only reads the shard's own counts from aux
  local = [run(cfg, outputs, labels, labeled, key, ids, None, dummy, name)[1][1] for ids in shards]
  total = jnp.asarray([sum(float(aux[c]) for aux in local) for c in names], jnp.float32)
  return [run(cfg, outputs, labels, labeled, key, ids, None, total, name)[1:] for ids in shards], local


@pytest.mark.parametrize(
  "name,variant", [("ssdh", "multi_label"), ("ssdh", "single_label"), ("dpsh", "multi_label")]
)
def test_shards_sum_to_full_batch(name, variant):
  cfg = loss_cfg(variant=variant)
  outputs, labels, labeled = make_batch(21, single_label=variant == "single_label")
  if name == "dpsh":
    outputs = {"hash_logits": jnp.log(outputs["codes"]) - jnp.log1p(-outputs["codes"])}
  key = jax.random.PRNGKey(9)
  _, (full, full_aux), full_g = run(cfg, outputs, labels, labeled, key, name=name)
  # A non-contiguous partition into 4 shards of 12 anchors (what 4 devices of 12 rows would see, up to order).
  perm = np.random.default_rng(0).permutation(48)
  shards = [jnp.asarray(np.sort(perm[i::4]), jnp.int32) for i in range(4)]
  res, local = _emulate_shards(cfg, name, outputs, labels, labeled, key, shards)
  np.testing.assert_allclose(sum(float(r[0][0]) for r in res), float(full), rtol=1e-5)
  for aux_name in full_aux:
    np.testing.assert_allclose(
      sum(float(r[0][1][aux_name]) for r in res),
      float(full_aux[aux_name]),
      rtol=1e-5,
      atol=1e-7,
      err_msg=aux_name,
    )
  for out_name in full_g:
    g = sum(np.asarray(r[1][out_name]) for r in res)
    np.testing.assert_allclose(g, np.asarray(full_g[out_name]), rtol=1e-4, atol=1e-7, err_msg=out_name)
  if name == "ssdh":
    assert float(full_aux["n_triplets"]) > 0 and float(full_aux["loss_emb"]) > 0
    # A shard's partial loss differs from what it would report with its own counts (normalisers are global).
    own_counts = jnp.asarray([float(local[0][c]) for c in losses.COUNT_NAMES[name]], jnp.float32)
    own = run(cfg, outputs, labels, labeled, key, shards[0], None, own_counts)[1][0]
    assert abs(float(own) - float(res[0][0][0])) > 1e-6


@pytest.mark.slow
def test_pmap_psum_matches_single_device():
  """The real thing: 4 CPU devices, each computing its rows as anchors with lax.psum as reduce_count."""
  body = """
  import jax, jax.numpy as jnp, numpy as np
  from configs.default import get_config
  from ssdh_jax import losses
  cfg = get_config().loss
  rng = np.random.default_rng(3)
  n, k, c, d = 32, 8, 4, jax.device_count()
  labeled = rng.random(n) < 0.5
  labels = (rng.random((n, c)) < 0.3).astype(np.float32); labels[np.arange(n), rng.integers(0, c, n)] = 1
  labels[~labeled] = 0
  out = {"codes": jnp.asarray(1 / (1 + np.exp(-2 * rng.normal(size=(n, k)))), jnp.float32),
         "class_logits": jnp.asarray(rng.normal(size=(n, c)), jnp.float32)}
  key = jax.random.PRNGKey(5)
  full = jax.jit(jax.value_and_grad(lambda o: losses.ssdh_loss(o, labels, labeled, key, cfg), has_aux=True))
  (l1, a1), g1 = full(out)
  def local(o_shard):
    o = jax.tree_util.tree_map(lambda x: jax.lax.all_gather(x, "d", tiled=True), o_shard)
    ids = jax.lax.axis_index("d") * (n // d) + jnp.arange(n // d)
    return losses.ssdh_loss(o, labels, labeled, key, cfg, anchor_ids=ids,
                            reduce_count=lambda x: jax.lax.psum(x, "d"))
  def step(o_shard):
    (l, a), g = jax.value_and_grad(local, has_aux=True)(o_shard)
    return jax.lax.psum(l, "d"), jax.lax.psum(a, "d"), g
  sharded = jax.tree_util.tree_map(lambda x: x.reshape(d, n // d, *x.shape[1:]), out)
  l8, a8, g8 = jax.pmap(step, axis_name="d")(sharded)
  # all_gather's transpose is a reduce-scatter: each device holds the full gradient of its own rows.
  g8 = jax.tree_util.tree_map(lambda x: np.asarray(x).reshape(n, -1), g8)
  emit({"l1": float(l1), "l8": float(l8[0]), "aux1": {k: float(v) for k, v in a1.items()},
        "aux8": {k: float(v[0]) for k, v in a8.items()},
        "gerr": max(float(np.max(np.abs(g8[k] - np.asarray(g1[k])))) for k in g1),
        "gmax": max(float(np.max(np.abs(np.asarray(g1[k])))) for k in g1)})
  """
  r = run_with_devices(body, 4, timeout=300)
  assert math.isclose(r["l1"], r["l8"], rel_tol=1e-5)
  for name, v in r["aux1"].items():
    assert math.isclose(v, r["aux8"][name], rel_tol=1e-5, abs_tol=1e-7), name
  assert r["aux1"]["n_triplets"] > 0 and r["gmax"] > 0
  assert r["gerr"] <= 1e-5 * r["gmax"] + 1e-7


# ------------------------------------------------------------------------------------------------ invariances


@pytest.mark.parametrize("variant", ["multi_label", "single_label"])
def test_permutation_invariance_with_row_ids(variant):
  cfg = loss_cfg(variant=variant)
  outputs, labels, labeled = make_batch(31, single_label=variant == "single_label")
  key = jax.random.PRNGKey(2)
  perm = np.random.default_rng(1).permutation(48)
  p_out = {k: v[perm] for k, v in outputs.items()}
  _, (l0, a0), g0 = run(cfg, outputs, labels, labeled, key)
  _, (l1, a1), g1 = run(cfg, p_out, labels[perm], labeled[perm], key, None, perm)
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
  for name in a0:
    np.testing.assert_allclose(float(a1[name]), float(a0[name]), rtol=1e-5, atol=1e-7, err_msg=name)
  for name in g0:
    np.testing.assert_allclose(np.asarray(g1[name]), np.asarray(g0[name])[perm], rtol=1e-4, atol=1e-7)
  # With the positions as ids, the permuted batch draws differently (so the check above is not vacuous).
  l2 = run(cfg, p_out, labels[perm], labeled[perm], key)[1][0]
  assert abs(float(l2) - float(l0)) > 1e-6


def test_vmap_over_batches_and_keys_with_grad():
  """vmap over stacked batches and keys, differentiated, equals the per-batch jitted value and gradient."""
  cfg = loss_cfg()
  batches = [make_batch(s) for s in range(3)]
  o, y, m = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *batches)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)

  def total(o):
    vals = jax.vmap(lambda o, y, m, k: losses.ssdh_loss(o, y, m, k, cfg)[0])(o, y, m, keys)
    return jnp.sum(vals), vals

  (_, vals), g = jax.jit(jax.value_and_grad(total, has_aux=True))(o)
  for i, (oi, yi, mi) in enumerate(batches):
    _, (li, _), gi = run(cfg, oi, yi, mi, keys[i])
    np.testing.assert_allclose(float(vals[i]), float(li), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g["codes"][i]), np.asarray(gi["codes"]), rtol=1e-4, atol=1e-7)
  assert float(run(cfg, *batches[0], keys[1])[1][0]) != float(vals[0])  # keys matter


# ------------------------------------------------------------------------------------------------ edge cases


def _finite(cfg, outputs, labels, labeled, name="ssdh"):
  _, (loss, aux), g = run(cfg, outputs, labels, labeled, jax.random.PRNGKey(0), name=name)
  assert np.isfinite(float(loss))
  assert all(np.isfinite(float(v)) for v in aux.values())
  assert all(np.all(np.isfinite(np.asarray(v))) for v in g.values())
  return loss, aux, g


@pytest.mark.parametrize("name", ["ssdh", "dpsh"])
def test_no_labeled_rows(name):
  outputs, labels, labeled = make_batch(0, frac_labeled=0.0)
  if name == "dpsh":
    outputs = {"hash_logits": 3 * outputs["codes"] - 1.5}
  _, aux, _ = _finite(loss_cfg(), outputs, labels, labeled, name)
  if name == "ssdh":
    assert float(aux["loss_rank"]) == 0 and float(aux["loss_cls"]) == 0 and float(aux["n_triplets"]) == 0
    assert float(aux["loss_emb"]) > 0 and float(aux["loss_pl"]) > 0
  else:
    assert float(aux["loss_pair"]) == 0 and float(aux["loss_quant"]) > 0


def test_no_valid_triplet():
  """Every labeled row carries label 0: no negatives, so no triplet and a zero rank term."""
  outputs, labels, labeled = make_batch(0)
  labels = jnp.where(labeled[:, None], jnp.eye(5)[0][None, :], 0.0)
  _, aux, _ = _finite(loss_cfg(), outputs, labels, labeled)
  assert float(aux["n_triplets"]) == 0 and float(aux["loss_rank"]) == 0 and float(aux["loss_emb"]) > 0


def test_identical_codes_no_nan():
  cfg = loss_cfg()
  outputs, labels, labeled = make_batch(0)
  outputs["codes"] = jnp.full_like(outputs["codes"], 0.5)
  _, aux, g = _finite(cfg, outputs, labels, labeled)
  # Every distance is 0: emb = λ/(2N)·N·m², rank = ½·rank_margin, and the pair gradients vanish.
  np.testing.assert_allclose(float(aux["loss_emb"]), cfg.lam * cfg.margin**2 / 2, rtol=1e-6)
  np.testing.assert_allclose(float(aux["loss_rank"]), cfg.rank_margin / 2, rtol=1e-6)
  assert np.all(np.asarray(g["codes"]) == 0)


def test_tiny_batches():
  cfg = loss_cfg()
  for n in (1, 4):
    outputs, labels, labeled = make_batch(n, n=n, frac_labeled=0.5)
    _finite(cfg, outputs, labels, labeled)


def test_term_switches_and_lambda():
  outputs, labels, labeled = make_batch(3)
  key = jax.random.PRNGKey(0)
  aux_of = lambda cfg, o=outputs: run(cfg, o, labels, labeled, key)[1][1]
  full = aux_of(loss_cfg())
  assert all(float(full[t]) > 0 for t in TERMS)
  # λ scales the graph term (its effect on the pseudo-label term is covered by the reference tests).
  for off, lam in ((("rank", "pl"), 0.2), (("emb", "cls"), 0.1)):
    aux = aux_of(loss_cfg(lam=lam, **{f"use_{t}": False for t in off}))
    for name in TERMS:
      expected = 0.0 if name[5:] in off else float(full[name]) * (lam / 0.1 if name == "loss_emb" else 1.0)
      np.testing.assert_allclose(float(aux[name]), expected, rtol=1e-6, err_msg=(off, name))
  # Without a class head, asking for the pseudo-label or class term is an error, never a silent skip.
  with pytest.raises(ValueError, match="class_logits"):
    losses.ssdh_loss({"codes": outputs["codes"]}, labels, labeled, key, loss_cfg())
  aux = aux_of(loss_cfg(use_pl=False, use_cls=False), {"codes": outputs["codes"]})
  assert float(aux["loss_pl"]) == 0 and float(aux["loss_cls"]) == 0
  np.testing.assert_allclose(float(aux["loss_rank"]), float(full["loss_rank"]), rtol=1e-6)


def test_bf16_outputs_use_f32_math():
  cfg = loss_cfg()
  outputs, labels, labeled = make_batch(6, dtype=jnp.bfloat16)
  key = jax.random.PRNGKey(0)
  _, (loss, aux), g = run(cfg, outputs, labels, labeled, key)
  up = {k: v.astype(jnp.float32) for k, v in outputs.items()}
  _, (loss32, _), _ = run(cfg, up, labels, labeled, key)
  assert loss.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in aux.values())
  np.testing.assert_allclose(float(loss), float(loss32), rtol=1e-6)
  assert g["codes"].dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g["codes"], np.float32)))


def test_graph_on_features():
  cfg = loss_cfg(graph_feature="features")
  outputs, labels, labeled = make_batch(9)
  feats = np.random.default_rng(0).normal(size=(48, 20)).astype(np.float32)
  outputs["features"] = jnp.asarray(feats)
  s, _, g = run(cfg, outputs, labels, labeled, jax.random.PRNGKey(0))
  lo, hi = ref.neg_window(48, cfg)
  h = np.asarray(outputs["codes"], np.float64)
  moved = 0
  for i in range(48):
    order = ref.sorted_rows(feats.astype(np.float64), i)
    assert order.index(s["emb_pos"][i]) < ref.knn_size(48, cfg.knn_k)
    assert lo <= order.index(s["emb_neg"][i]) < hi
    moved += not lo <= ref.sorted_rows(h, i).index(s["emb_neg"][i]) < hi
  assert moved > 10  # the codes' order would have given other non-neighbours
  assert np.all(np.asarray(g["features"]) == 0)  # graph features are detached


def test_registry():
  assert losses.get_loss("ssdh") is losses.ssdh_loss
  assert losses.get_loss("dpsh") is losses.dpsh_loss
  assert set(losses.available_losses()) == {"ssdh", "dpsh"}
  with pytest.raises(ValueError, match="unknown loss"):
    losses.get_loss("nope")


def test_lambda_rampup_scales_only_the_unlabeled_terms():
  o, y, m = make_batch(3)
  key = jax.random.PRNGKey(0)
  base, ramped = loss_cfg(), loss_cfg(lam_rampup_steps=10)
  _, full = losses.ssdh_loss(o, y, m, key, base)
  for step, factor in ((0, 0.0), (5, 0.5), (10, 1.0), (40, 1.0)):
    _, aux = losses.ssdh_loss(o, y, m, key, ramped, step=jnp.int32(step))
    for t in ("loss_emb", "loss_pl"):
      np.testing.assert_allclose(aux[t], factor * full[t], rtol=1e-6)
    for t in ("loss_rank", "loss_cls"):
      np.testing.assert_allclose(aux[t], full[t], rtol=1e-6)
  assert float(full["loss_emb"]) > 0
  # Without a step (a call outside the trainer) the ramp is off: the release's constant λ.
  _, no_step = losses.ssdh_loss(o, y, m, key, ramped)
  np.testing.assert_allclose(no_step["loss_emb"], full["loss_emb"], rtol=1e-6)


def test_class_agreement_filter():
  o, y, m = make_batch(4, single_label=True)
  key = jax.random.PRNGKey(2)
  with pytest.raises(ValueError, match="cls_in_single_label"):
    losses.ssdh_loss(o, y, m, key, loss_cfg(variant="single_label", graph_filter="class_agree"))
  with pytest.raises(ValueError, match="graph_filter"):
    losses.ssdh_loss(o, y, m, key, loss_cfg(graph_filter="labels"))
  cfg = loss_cfg(variant="single_label", graph_filter="class_agree", cls_in_single_label=True)
  s, (_, aux), _ = run(cfg, o, y, m, key)
  pred = np.argmax(np.asarray(o["class_logits"]), axis=1)
  h = np.asarray(o["codes"], np.float64)
  lo, hi = ref.neg_window(48, cfg)
  emb = 0.0
  for i in range(48):
    order = ref.sorted_rows(h, i)
    p, q = s["emb_pos"][i], s["emb_neg"][i]
    assert order.index(p) < ref.knn_size(48, cfg.knn_k) and pred[p] == pred[i]
    window_other = [j for j in order[lo:hi] if pred[j] != pred[i]]
    assert s["emb_neg_valid"][i] == bool(window_other)
    hinge = 0.0
    if window_other:
      assert q in window_other
      hinge = max(cfg.margin - np.sqrt(np.sum((h[i] - h[q]) ** 2)), 0.0) ** 2
    emb += np.sum((h[i] - h[p]) ** 2) + hinge
  np.testing.assert_allclose(float(aux["loss_emb"]), cfg.lam * emb / (2 * 48), rtol=1e-5)
  assert float(aux["loss_cls"]) > 0 and float(aux["loss_pl"]) == 0  # class head trained; no pseudo-labels
  # Unfiltered single-label: no class term unless asked for.
  _, (_, plain), _ = run(loss_cfg(variant="single_label"), o, y, m, key)
  assert float(plain["loss_cls"]) == 0


def test_typed_settings_dicts_and_jit_static():
  o, y, m = make_batch(5)
  key = jax.random.PRNGKey(1)
  ref_loss, _ = losses.ssdh_loss(o, y, m, key, loss_cfg())
  settings = losses.SSDHLoss()
  assert hash(settings) == hash(losses.SSDHLoss()) and losses.as_settings(loss_cfg()) == settings
  jitted = jax.jit(losses.ssdh_loss, static_argnames="cfg")
  loss, _ = jitted(o, y, m, key, cfg=settings)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  plain = losses.ssdh_loss(
    o, y, m, key, {"lam": 0.1, "margin": 3.0}
  )  # a dict of some fields: the rest default
  np.testing.assert_allclose(float(plain[0]), float(ref_loss), rtol=1e-6)
  np.testing.assert_allclose(float(losses.ssdh_loss(o, y, m, key)[0]), float(ref_loss), rtol=1e-6)
  with pytest.raises(ValueError, match="unknown loss settings"):
    losses.as_settings({"lamda": 0.2})
  with pytest.raises(ValueError, match=r"SSDHLoss\.variant"):
    losses.SSDHLoss(variant="multi")


@losses.register_term("test_quant")
def _quant(t: losses.TermInputs):
  """Quantisation penalty: mean over rows of ‖h − round(h)‖², as an additive partial over the anchors."""
  h = t.codes[t.anchors]
  return jnp.sum((h - jax.lax.stop_gradient(jnp.round(h))) ** 2) / t.num_rows


def test_registered_term_is_added_and_shards_sum():
  o, y, m = make_batch(6)
  key = jax.random.PRNGKey(2)
  base = losses.SSDHLoss()
  with_q = losses.SSDHLoss(extra_terms=(("test_quant", 0.5),))
  l0, _ = losses.ssdh_loss(o, y, m, key, base)
  l1, a1 = losses.ssdh_loss(o, y, m, key, with_q)
  h = np.asarray(o["codes"], np.float64)
  expect = 0.5 * np.sum((h - np.round(h)) ** 2) / h.shape[0]
  np.testing.assert_allclose(float(a1["loss_test_quant"]), expect, rtol=1e-5)
  np.testing.assert_allclose(float(l1), float(l0) + expect, rtol=1e-5)
  halves = [losses.ssdh_loss(o, y, m, key, with_q, anchor_ids=jnp.arange(i, 48, 2))[1] for i in (0, 1)]
  np.testing.assert_allclose(sum(float(h_["loss_test_quant"]) for h_ in halves), expect, rtol=1e-5)
  with pytest.raises(ValueError, match="already registered"):
    losses.register_term("test_quant")(_quant)
  with pytest.raises(ValueError, match="unknown loss term"):
    losses.ssdh_loss(o, y, m, key, losses.SSDHLoss(extra_terms=(("nope", 1.0),)))


def test_graph_builder_is_a_parameter_and_a_registry_entry():
  from ssdh_jax import graph

  o, y, m = make_batch(7)
  key = jax.random.PRNGKey(3)

  def self_loops(feats, bits, anchor_ids, row_ids, *, k_size, window, classes=None):
    n = anchor_ids.shape[0]
    return {"pos": anchor_ids, "neg": anchor_ids[::-1], "pos_rank": jnp.zeros(n, jnp.int32),
            "neg_rank": jnp.zeros(n, jnp.int32), "neg_valid": jnp.ones(n, bool)}  # fmt: skip

  s = losses.ssdh_sample(o, y, m, key, None, graph_builder=self_loops)
  np.testing.assert_array_equal(np.asarray(s["emb_pos"]), np.arange(48))
  graph.register_graph_builder("test_self_loops", self_loops)
  s2 = losses.ssdh_sample(o, y, m, key, losses.SSDHLoss(graph="test_self_loops"))
  np.testing.assert_array_equal(np.asarray(s2["emb_neg"]), np.arange(48)[::-1])
  with pytest.raises(ValueError, match="unknown graph builder"):
    losses.ssdh_sample(o, y, m, key, losses.SSDHLoss(graph="nope"))


@pytest.mark.parametrize("single_label", [False, True])
def test_triplet_draws_bit_identical_to_two_masked_choices(single_label):
  """The shared-cumsum triplet draw picks exactly the rows of the two-mask formulation it replaced."""
  from ssdh_jax import graph

  o, y, m = make_batch(8, single_label=single_label, frac_labeled=0.6)
  rid = jnp.asarray(np.random.default_rng(1).permutation(48) * 5 + 3, jnp.int32)
  key = jax.random.PRNGKey(4)
  cfg = losses.SSDHLoss(variant="single_label" if single_label else "multi_label")
  s = losses.ssdh_sample(o, y, m, key, cfg, row_ids=rid)
  tries = cfg.max_tries
  bits = graph.anchor_bits(key, rid, 4 + 2 * tries)
  sim = losses.share_label(y, y)
  both = m[:, None] & m[None, :]
  p, p_ok = graph.masked_choice(bits[:, 2 : 2 + tries], both & sim, rid)
  q, q_ok = graph.masked_choice(bits[:, 2 + tries : 2 + 2 * tries], both & ~sim, rid)
  ok = (p_ok & q_ok)[:, None] & ~jnp.any((y[p] > 0.5) & (y[q] > 0.5), axis=-1)
  first = jnp.argmax(ok, axis=1)[:, None]
  valid = np.asarray(jnp.any(ok, axis=1))
  np.testing.assert_array_equal(np.asarray(s["rank_valid"]), valid)
  np.testing.assert_array_equal(
    np.asarray(s["rank_pos"])[valid], np.asarray(jnp.take_along_axis(p, first, 1)[:, 0])[valid]
  )
  np.testing.assert_array_equal(
    np.asarray(s["rank_neg"])[valid], np.asarray(jnp.take_along_axis(q, first, 1)[:, 0])[valid]
  )
  assert valid.sum() > 10
