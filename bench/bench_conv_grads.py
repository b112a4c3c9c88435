"""Convolution forward / input-gradient / weight-gradient under XLA:CPU against PyTorch eager, per layer (paired).

For each conv shape of small_cnn (batch 32, 32 px, width 32) and a representative set of MobileNetV2 layers
(batch 8, 224 px) the four op kinds

  fwd    y = conv(x, w)
  dgrad  dx = ∂⟨g, conv(x, w)⟩/∂x        (JAX: jax.vjp w.r.t. x; torch: aten.convolution_backward, mask [1,0,0])
  wgrad  dw = ∂⟨g, conv(x, w)⟩/∂w        (JAX: jax.vjp w.r.t. w; torch: mask [0,1,0])
  all    y, dx, dw in one call            (torch: conv2d + convolution_backward, mask [1,1,0])

are timed in interleaved rounds (paired.interleave, the median of `--per-round` calls per round), one thread
per side, all on one core. Sides:

  torch      channels_last and contiguous (NCHW) memory; per layer and op the faster of the two ("best").
  JAX        `default` is what ssdh_jax runs (NHWC/HWIO lax.conv_general_dilated, jax.vjp; the 'shift' lowering
             of models/depthwise.py for depthwise layers) and the variants:
               nchw      NCHW/OIHW dimension numbers (inputs stored NCHW/OIHW), autodiff
               prec      precision=HIGHEST, preferred_element_type=float32, autodiff
               explicit  dgrad written as a transposed conv (flipped kernel, I/O swapped, lhs_dilation = stride),
                         wgrad as a conv whose contraction runs over the batch (x as CHWN, g as IHWO → HWNC)
               im2col    3×3: the k·k taps sliced and concatenated (B, Ho, Wo, k·k·C) then one matmul;
                         1×1: a plain matmul; dgrad / wgrad by autodiff of that (matmuls + col2im pads)
               patches   3×3: lax.conv_general_dilated_patches + matmul, autodiff
               hybrid    custom_vjp: conv forward, autodiff-conv dgrad, im2col matmul wgrad
               dw_conv   depthwise only: the grouped lax conv (feature_group_count = C), autodiff
  XLA_FLAGS  the default JAX side again in a separate pinned worker process per flag set (XLA_FLAGS is read at
             import): onednn (--xla_cpu_use_onednn=true); no_ynn_conv
             (--xla_cpu_experimental_ynn_fusion_type=-individual_convolution: convolutions leave the YNNPACK
             fusions XLA:CPU gives them by default and run on XLA's own Eigen-based convolution); eigen
             (--xla_cpu_experimental_ynn_fusion_type=: no YNNPACK fusion at all); onednn_eigen (both, on request).
             The workers answer the paired.Worker protocol, so t_default / t_flagset is a direct per-round ratio
             across the two processes, paired with the in-process sides.

Every variant's outputs are checked against the default's (max |Δ| / max |ref|), torch's as well.
Then the compiled HLO of the conv vjps (and of the full small_cnn forward + backward) is summarised, and the whole
small_cnn / MobileNetV2 forward + params gradient is timed with the winning variants substituted for nn.Conv's
convolution (a bench-local patch of flax.linen.linear.lax while tracing; ssdh_jax is not modified) and under the
no_ynn_conv flags (a worker), paired with the default and with torch.

  .venv/bin/python bench/bench_conv_grads.py [--quick] [--rounds 10] [--per-round 2] [--layers a,b]
      [--flags onednn,no_ynn_conv,eigen] [--model-variants auto] [--models small_cnn,mobilenet_v2]
      [--model-flags no_ynn_conv] [--core N]

--quick: 4 layers, 3 rounds, the onednn and no_ynn_conv workers, no grouped depthwise conv, no whole-network step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)
sys.path.insert(0, ROOT)

import paired  # noqa: E402


def _core() -> int:
  """--core N (read before argparse: the binding precedes the imports); default: the last core this process
  may use (flag workers inherit the binding)."""
  if "--core" in sys.argv:
    return int(sys.argv[sys.argv.index("--core") + 1])
  return sorted(os.sched_getaffinity(0))[-1] if hasattr(os, "sched_getaffinity") else 0


CORES = paired.pin_threads(1, [_core()])  # before numpy / jax / torch are imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from jax import lax  # noqa: E402

from ssdh_jax.models.depthwise import depthwise_conv  # noqa: E402

torch.set_num_threads(1)

OPS = ("fwd", "dgrad", "wgrad", "all")
NHWC = ("NHWC", "HWIO", "NHWC")
NCHW = ("NCHW", "OIHW", "NCHW")
FLAG_SETS = {
  "onednn": "--xla_cpu_use_onednn=true",
  # YNNPACK fusions: XLA:CPU hands convolutions (and some dots, reductions, elementwise ops) to YNNPACK by default.
  "no_ynn_conv": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",  # convs back to XLA/Eigen
  "eigen": "--xla_cpu_experimental_ynn_fusion_type=",  # no YNNPACK fusion at all
  "onednn_eigen": "--xla_cpu_use_onednn=true --xla_cpu_experimental_ynn_fusion_type=",
}


@dataclasses.dataclass(frozen=True)
class Layer:
  name: str
  b: int
  h: int  # input height = width
  cin: int
  cout: int
  k: int
  s: int
  depthwise: bool = False

  @property
  def p(self) -> int:
    return (self.k - 1) // 2

  @property
  def ho(self) -> int:
    return (self.h + 2 * self.p - self.k) // self.s + 1

  @property
  def gflop(self) -> float:
    per_out = self.k * self.k * (1 if self.depthwise else self.cin)
    return 2 * self.b * self.ho * self.ho * self.cout * per_out / 1e9

  def describe(self) -> str:
    kind = (
      f"depthwise {self.k}×{self.k}, C={self.cin}"
      if self.depthwise
      else f"{self.k}×{self.k} {self.cin}→{self.cout}"
    )
    return (
      f"x ({self.b}, {self.h}, {self.h}, {self.cin}) NHWC, {kind}, stride {self.s}, pad {self.p} → "
      f"{self.ho}×{self.ho}; {self.gflop:.3f} GFLOP forward"
    )


def small_cnn_layers(width: int = 32, b: int = 32, size: int = 32) -> list[Layer]:
  out, cin, h = [], 3, size
  for stage, mult in enumerate((1, 2, 4), start=1):
    for i in (1, 2):
      out.append(Layer(f"small_cnn.conv{stage}_{i}", b, h, cin, width * mult, 3, 1))
      cin = width * mult
    h //= 2
  return out


def mobilenet_layers(full: bool, b: int = 8) -> list[Layer]:
  out = [
    Layer("mbv2.f0.stem_s2", b, 224, 3, 32, 3, 2),
    Layer("mbv2.f3.expand_1x1", b, 56, 24, 144, 1, 1),
    Layer("mbv2.f3.project_1x1", b, 56, 144, 24, 1, 1),
    Layer("mbv2.f3.dw_s1", b, 56, 144, 144, 3, 1, True),
    Layer("mbv2.f2.dw_s2", b, 112, 96, 96, 3, 2, True),
  ]
  if full:
    out += [
      Layer("mbv2.f18.last_1x1", b, 7, 320, 1280, 1, 1),
      Layer("mbv2.f16.dw_s1", b, 7, 960, 960, 3, 1, True),
    ]
  return out


DEFAULT_FLAGS = "onednn,no_ynn_conv,eigen"
QUICK_LAYERS = ("small_cnn.conv1_2", "small_cnn.conv3_2", "mbv2.f3.expand_1x1", "mbv2.f3.dw_s1")


def all_layers(full: bool) -> list[Layer]:
  return small_cnn_layers() + mobilenet_layers(full)


# ------------------------------------------------------------------------------------------------ JAX convs


def conv_nhwc(layer: Layer, precision=None, pet=None) -> Callable:
  p = layer.p

  def f(x, w):
    return lax.conv_general_dilated(
      x, w, (layer.s, layer.s), ((p, p), (p, p)), dimension_numbers=NHWC, precision=precision,
      preferred_element_type=pet,
    )  # fmt: skip

  return f


def conv_nchw(layer: Layer) -> Callable:
  p = layer.p
  return lambda x, w: lax.conv_general_dilated(
    x, w, (layer.s, layer.s), ((p, p), (p, p)), dimension_numbers=NCHW
  )


def taps(layer: Layer, x):
  """The k·k shifted, strided views of the padded input, (B, Ho, Wo, C) each, in (i, j) order."""
  k, s, p, ho = layer.k, layer.s, layer.p, layer.ho
  b, _, _, c = x.shape
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x
  return [
    lax.slice(xp, (0, i, j, 0), (b, i + s * (ho - 1) + 1, j + s * (ho - 1) + 1, c), (1, s, s, 1))
    for i in range(k)
    for j in range(k)
  ]


def im2col_cols(layer: Layer, x):
  """(B·Ho·Wo, k·k·C) columns, feature order (i, j, c) = the row order of w.reshape(k·k·C, O) for HWIO."""
  t = taps(layer, x)
  cols = t[0] if len(t) == 1 else jnp.concatenate(t, axis=-1)
  return cols.reshape(-1, cols.shape[-1])


def conv_im2col(layer: Layer) -> Callable:
  def f(x, w):
    cols = im2col_cols(layer, x)
    y = jnp.dot(cols, w.reshape(-1, w.shape[-1]))
    return y.reshape(x.shape[0], layer.ho, layer.ho, w.shape[-1])

  return f


def conv_patches(layer: Layer) -> Callable:
  p = layer.p

  def f(x, w):
    pt = lax.conv_general_dilated_patches(
      x, (layer.k, layer.k), (layer.s, layer.s), ((p, p), (p, p)), dimension_numbers=NHWC
    )  # (B, Ho, Wo, C·k·k), feature order (c, i, j)
    wm = w.transpose(2, 0, 1, 3).reshape(-1, w.shape[-1])
    return jnp.dot(pt.reshape(-1, pt.shape[-1]), wm).reshape(*pt.shape[:3], w.shape[-1])

  return f


def dgrad_transposed(layer: Layer, w, g):
  """dx as a convolution of g (dilated by the stride) with the flipped, I/O-swapped kernel."""
  k, s, p, h, ho = layer.k, layer.s, layer.p, layer.h, layer.ho
  lo, hi = k - 1 - p, h - (ho - 1) * s - 1 + p
  wt = jnp.flip(w, (0, 1)).swapaxes(2, 3)
  return lax.conv_general_dilated(
    g, wt, (1, 1), ((lo, hi), (lo, hi)), lhs_dilation=(s, s), dimension_numbers=NHWC
  )


def wgrad_batch_conv(layer: Layer, x, g):
  """dw (HWIO) as a convolution over the batch: x as CHWN (batch ↔ feature), g as the IHWO window."""
  k, s, p, h, ho = layer.k, layer.s, layer.p, layer.h, layer.ho
  hi = k + (ho - 1) * s - h - p
  return lax.conv_general_dilated(
    x, g, (1, 1), ((p, hi), (p, hi)), rhs_dilation=(s, s), dimension_numbers=("CHWN", "IHWO", "HWNC")
  )


def wgrad_im2col(layer: Layer, x, g):
  cols = im2col_cols(layer, x)
  dw = jnp.dot(cols.T, g.reshape(-1, g.shape[-1]))
  return dw.reshape(layer.k, layer.k, x.shape[-1], g.shape[-1])


def conv_hybrid(layer: Layer) -> Callable:
  """custom_vjp: the default conv forward and dgrad (its autodiff), the weight gradient as an im2col matmul."""
  base = conv_nhwc(layer)

  @jax.custom_vjp
  def f(x, w):
    return base(x, w)

  def f_fwd(x, w):
    return base(x, w), (x, w)

  def f_bwd(res, g):
    x, w = res
    dx = jax.vjp(lambda x_: base(x_, w), x)[1](g)[0]
    return dx, wgrad_im2col(layer, x, g)

  f.defvjp(f_fwd, f_bwd)
  return f


def autodiff_fns(f: Callable) -> dict[str, Callable]:
  def dgrad(x, w, g):
    return jax.vjp(lambda x_: f(x_, w), x)[1](g)[0]

  def wgrad(x, w, g):
    return jax.vjp(lambda w_: f(x, w_), w)[1](g)[0]

  def both(x, w, g):
    y, vjp = jax.vjp(f, x, w)
    return (y, *vjp(g))

  return {"fwd": lambda x, w, g: f(x, w), "dgrad": dgrad, "wgrad": wgrad, "all": both}


def explicit_fns(layer: Layer) -> dict[str, Callable]:
  f = conv_nhwc(layer)
  return {
    "fwd": lambda x, w, g: f(x, w),
    "dgrad": lambda x, w, g: dgrad_transposed(layer, w, g),
    "wgrad": lambda x, w, g: wgrad_batch_conv(layer, x, g),
    "all": lambda x, w, g: (f(x, w), dgrad_transposed(layer, w, g), wgrad_batch_conv(layer, x, g)),
  }


@dataclasses.dataclass
class Impl:
  """One JAX lowering of a layer: jitted fns per op taking (x, w, g) in its own layout, and a converter of its
  outputs to the reference layout (NHWC y / dx, HWIO dw)."""

  name: str
  fns: dict[str, Callable]
  args: tuple
  to_ref: Callable[[str, Any], tuple]

  @property
  def ops(self) -> tuple[str, ...]:
    return tuple(op for op in OPS if op in self.fns)


def nhwc_to_ref(op, out):
  return tuple(out) if op == "all" else (out,)


def nchw_to_ref(op, out):
  def t(a, kind):
    return jnp.transpose(a, (0, 2, 3, 1)) if kind == "act" else jnp.transpose(a, (2, 3, 1, 0))

  kinds = {"fwd": ("act",), "dgrad": ("act",), "wgrad": ("w",), "all": ("act", "act", "w")}[op]
  outs = tuple(out) if op == "all" else (out,)
  return tuple(t(a, k) for a, k in zip(outs, kinds))


def layer_data(layer: Layer, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((layer.b, layer.h, layer.h, layer.cin), dtype=np.float32)
  wshape = (layer.k, layer.k, 1, layer.cin) if layer.depthwise else (layer.k, layer.k, layer.cin, layer.cout)
  w = (rng.standard_normal(wshape, dtype=np.float32) / math.sqrt(np.prod(wshape[:3]))).astype(np.float32)
  g = rng.standard_normal((layer.b, layer.ho, layer.ho, layer.cout), dtype=np.float32)
  return x, w, g


def jax_impls(layer: Layer, names: set[str] | None = None) -> list[Impl]:
  """The JAX sides of a layer ('default' first); `names` restricts which are built."""
  x, w, g = (jnp.asarray(a) for a in layer_data(layer))
  specs: list[tuple[str, Callable[[], dict[str, Callable]], tuple, Callable]] = []
  if layer.depthwise:
    p = layer.p
    specs += [
      (
        "default",
        lambda: autodiff_fns(lambda x, w: depthwise_conv(x, w, layer.s, p, "shift")),
        (x, w, g),
        nhwc_to_ref,
      ),
      (
        "dw_conv",
        lambda: autodiff_fns(lambda x, w: depthwise_conv(x, w, layer.s, p, "conv")),
        (x, w, g),
        nhwc_to_ref,
      ),
    ]
  else:
    nchw_args = (
      jnp.transpose(x, (0, 3, 1, 2)),
      jnp.transpose(w, (3, 2, 0, 1)),
      jnp.transpose(g, (0, 3, 1, 2)),
    )
    specs += [
      ("default", lambda: autodiff_fns(conv_nhwc(layer)), (x, w, g), nhwc_to_ref),
      ("nchw", lambda: autodiff_fns(conv_nchw(layer)), nchw_args, nchw_to_ref),
      (
        "prec",
        lambda: autodiff_fns(conv_nhwc(layer, lax.Precision.HIGHEST, jnp.float32)),
        (x, w, g),
        nhwc_to_ref,
      ),
      ("explicit", lambda: explicit_fns(layer), (x, w, g), nhwc_to_ref),
      ("im2col", lambda: autodiff_fns(conv_im2col(layer)), (x, w, g), nhwc_to_ref),
    ]
    if layer.k > 1:
      specs.append(("patches", lambda: autodiff_fns(conv_patches(layer)), (x, w, g), nhwc_to_ref))
    specs.append(("hybrid", lambda: autodiff_fns(conv_hybrid(layer)), (x, w, g), nhwc_to_ref))
  out = []
  for name, make, args, to_ref in specs:
    if names is not None and name not in names:
      continue
    # The patches' own transpose (a conv with an identity kernel run backwards) makes its dgrad 10–50× slower
    # than the default: only its forward and weight gradient (patches^T · g) are timed.
    keep = ("fwd", "wgrad") if name == "patches" else OPS
    fns = {op: jax.jit(fn) for op, fn in make().items() if op in keep}
    out.append(Impl(name, fns, args, to_ref))
  return out


def jax_callable(impl: Impl, op: str) -> Callable[[], Any]:
  fn, args = impl.fns[op], impl.args
  return lambda: jax.block_until_ready(fn(*args))


# ------------------------------------------------------------------------------------------------ torch


def torch_sides(layer: Layer) -> dict[str, dict[str, Callable[[], Any]]]:
  """'cl' (channels_last) and 'nchw' (contiguous): op -> callable."""
  x, w, g = layer_data(layer)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2)
  gt = torch.from_numpy(g).permute(0, 3, 1, 2)
  wt = torch.from_numpy(w).permute(3, 2, 0, 1)  # HWIO → OIHW; depthwise (k,k,1,C) → (C,1,k,k)
  groups = layer.cin if layer.depthwise else 1
  stride, pad = [layer.s, layer.s], [layer.p, layer.p]
  out = {}
  for name, fmt in (("cl", torch.channels_last), ("nchw", torch.contiguous_format)):
    xs, ws, gs = (a.contiguous(memory_format=fmt) for a in (xt, wt, gt))

    def fwd(xs=xs, ws=ws):
      return F.conv2d(xs, ws, None, stride, pad, 1, groups)

    def bwd(mask, xs=xs, ws=ws, gs=gs):
      return torch.ops.aten.convolution_backward(
        gs, xs, ws, None, stride, pad, [1, 1], False, [0, 0], groups, mask
      )  # fmt: skip

    def both(fwd=fwd, bwd=bwd):
      y = fwd()
      dx, dw, _ = bwd([True, True, False])
      return y, dx, dw

    out[name] = {
      "fwd": fwd,
      "dgrad": lambda bwd=bwd: bwd([True, False, False])[0],
      "wgrad": lambda bwd=bwd: bwd([False, True, False])[1],
      "all": both,
    }
  return out


def torch_to_ref(op: str, out) -> tuple:
  def t(a, kind):
    a = a.detach().numpy()
    return np.transpose(a, (0, 2, 3, 1)) if kind == "act" else np.transpose(a, (2, 3, 1, 0))

  kinds = {"fwd": ("act",), "dgrad": ("act",), "wgrad": ("w",), "all": ("act", "act", "w")}[op]
  outs = tuple(out) if op == "all" else (out,)
  return tuple(t(a, k) for a, k in zip(outs, kinds))


def global_err(out, ref) -> tuple[float, float]:
  """(‖Δ‖ / ‖ref‖ over the gradient leaves out[1:] together, |Δloss| / |loss|) for [loss, *leaves] lists."""
  num = sum(
    float(np.sum((np.asarray(a, np.float64) - np.asarray(r, np.float64)) ** 2))
    for a, r in zip(out[1:], ref[1:])
  )
  den = sum(float(np.sum(np.asarray(r, np.float64) ** 2)) for r in ref[1:])
  loss = abs(float(out[0]) - float(ref[0])) / max(abs(float(ref[0])), 1e-30)
  return math.sqrt(num / max(den, 1e-300)), loss


def rel_err(a_list, ref_list) -> float:
  worst = 0.0
  for a, r in zip(a_list, ref_list):
    a, r = np.asarray(a, np.float64), np.asarray(r, np.float64)
    assert a.shape == r.shape, (a.shape, r.shape)
    worst = max(worst, float(np.max(np.abs(a - r)) / max(np.max(np.abs(r)), 1e-30)))
  return worst


# ------------------------------------------------------------------------------------------------ HLO


HLO_KEEP = re.compile(
  r"\b(convolution|dot|transpose|copy|reverse|pad|custom-call|fusion|slice|concatenate)\("
)


def hlo_condensed(text: str) -> list[str]:
  """The ENTRY instructions plus the convolution / dot / layout ops inside fused computations, without
  metadata; fusions show their kind and library fusion config (e.g. __ynn_fusion)."""
  out, comp = [], None
  for line in text.splitlines():
    s = line.strip()
    if s.startswith("%") and "{" in s and "(" in s.split("{")[0] and "=" not in s.split("(")[0]:
      comp = s.split(" ")[0]
      continue
    if s.startswith("ENTRY"):
      comp = "ENTRY"
      continue
    if not s.startswith(("%", "ROOT")) or not HLO_KEEP.search(s):
      continue
    s = re.sub(r", metadata=\{[^}]*\}", "", s)
    s = re.sub(r", backend_config=.*?\"kind\":\"(\w+)\".*$", r" [\1]", s)
    s = re.sub(r", backend_config=.*$", "", s)
    s = re.sub(r"\]\{[0-9,]+\}", "]", s)
    if comp == "ENTRY":
      out.append("  " + s)
    elif re.search(r"\b(convolution|dot|custom-call|reverse)\(", s):
      out.append(f"    [in {comp}] " + s)
  return out


def hlo_counts(text: str) -> dict[str, int]:
  keys = {
    "convolution": r"= \S+ convolution\(",
    "dot": r"= \S+ dot\(",
    "transpose": r"= \S+ transpose\(",
    "copy": r"= \S+ copy\(",
    "reverse": r"= \S+ reverse\(",
    "custom-call": r"custom-call\(",
    "__ynn_fusion": r"\"kind\":\"__ynn_fusion\"",
    "__xnn_fusion": r"\"kind\":\"__xnn_fusion\"",
    "__onednn_fusion": r"\"kind\":\"__onednn_fusion\"",
    "loop fusions": r"kind=kLoop",
  }
  return {k: len(re.findall(v, text)) for k, v in keys.items()}


def conv_labels(text: str) -> list[str]:
  return sorted(set(re.findall(r"dim_labels=(\S+?)[,\s]", text)))


def compiled_text(fn: Callable, *args) -> str:
  return jax.jit(fn).lower(*args).compile().as_text()


# ------------------------------------------------------------------------------------------------ flag workers


def serve_flags(layer_names: list[str], dw_conv: bool) -> None:
  """Worker process (its XLA_FLAGS set by the parent): builds the default JAX sides (and, if `dw_conv`, the
  grouped conv of depthwise layers), warms them, answers `run KEY N` / `save KEY PATH` / `quit`."""
  layers = {lay.name: lay for lay in all_layers(True)}
  calls: dict[str, Callable[[], Any]] = {}
  impls: dict[str, tuple[Impl, str]] = {}
  for name in layer_names:
    lay = layers[name]
    for impl in jax_impls(lay, {"default", "dw_conv"} if dw_conv else {"default"}):
      for op in OPS:
        key = f"{name}|{impl.name}|{op}"
        calls[key] = jax_callable(impl, op)
        impls[key] = (impl, op)
        calls[key]()
        calls[key]()
  info: dict[str, Any] = {"xla_flags": os.environ.get("XLA_FLAGS", "")}
  probe = layers["small_cnn.conv1_2"]
  x, w, g = (jnp.asarray(a) for a in layer_data(probe))
  text = compiled_text(autodiff_fns(conv_nhwc(probe))["all"], x, w, g)
  info["hlo_counts_conv1_2_all"] = hlo_counts(text)
  info["hlo_conv1_2_all"] = hlo_condensed(text)

  def outputs(key: str) -> list:
    impl, op = impls[key]
    return list(impl.to_ref(op, impl.fns[op](*impl.args)))

  serve_loop(calls, outputs, info)


def serve_loop(calls: dict[str, Callable[[], Any]], outputs: Callable[[str], list], info: dict) -> None:
  """READY (with `info`), then `run KEY N` → N timings, `save KEY PATH` → outputs to an .npz, `quit`."""
  print(paired.READY + " " + json.dumps(info), flush=True)
  for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == "quit":
      return
    if cmd[0] == "run":
      fn, n = calls[cmd[1]], int(cmd[2])
      times = [paired.time_call(fn) for _ in range(n)]
      print(paired.RESULT + json.dumps({"times": times}), flush=True)
    elif cmd[0] == "save":
      np.savez(cmd[2], *[np.asarray(a) for a in outputs(cmd[1])])
      print(paired.RESULT + json.dumps({"ok": True}), flush=True)


def serve_model(backbone: str, variants: list[str]) -> None:
  """Worker process for the whole-network check: the default step and each variant's, under its XLA_FLAGS."""
  compiled, params, x = build_model_steps(backbone, variants)
  calls = {
    f"model|{backbone}|{v}": (lambda c=c: jax.block_until_ready(c(params, x))) for v, c in compiled.items()
  }
  for fn in calls.values():
    fn()
    fn()
  info = {
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "hlo_counts": {v: hlo_counts(c.as_text()) for v, c in compiled.items()},
  }

  def outputs(key: str) -> list:
    loss, grads = compiled[key.split("|")[2]](params, x)
    return [loss, *jax.tree.leaves(grads)]

  serve_loop(calls, outputs, info)


class Keyed(paired.Worker):
  """One function of a flag worker, as a paired.Worker that paired.interleave can time."""

  def __init__(self, base: paired.Worker, key: str):  # shares base's process; no new one
    self.proc, self.argv, self.info, self.key = base.proc, base.argv, base.info, key

  def __call__(self, n: int = 1) -> list[float]:
    assert self.proc.stdin is not None
    self.proc.stdin.write(f"run {self.key} {n}\n")
    self.proc.stdin.flush()
    return list(self._read(900.0)["times"])

  def save(self, path: str) -> None:
    assert self.proc.stdin is not None
    self.proc.stdin.write(f"save {self.key} {path}\n")
    self.proc.stdin.flush()
    self._read(900.0)

  def outputs(self) -> list[np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "out.npz")
      self.save(path)
      with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def start_flag_workers(
  flag_names: list[str], serve_args: Callable[[str], list[str]]
) -> dict[str, paired.Worker]:
  """One worker process per flag set (this script with `serve_args(name)`), started in parallel."""
  base = os.environ.get("XLA_FLAGS", "")
  base = re.sub(r"--xla_cpu_multi_thread_eigen=\S+|intra_op_parallelism_threads=\S+", "", base).strip()

  def start(name: str) -> tuple[str, paired.Worker | Exception]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{base} {FLAG_SETS[name]}".strip()
    argv = [sys.executable, os.path.abspath(__file__), *serve_args(name)]
    try:
      return name, paired.Worker(argv, env=env, timeout=1500.0)
    except (RuntimeError, TimeoutError) as e:
      return name, e

  out = {}
  with ThreadPoolExecutor(max(1, len(flag_names))) as pool:
    for name, w in pool.map(start, flag_names):
      if isinstance(w, Exception):
        print(f"flag worker {name} failed: {w}")
      else:
        out[name] = w
  return out


# ------------------------------------------------------------------------------------------------ report


def cell(s: dict[str, float]) -> str:
  return f"{s['median']:.2f} ({s['q1']:.2f}–{s['q3']:.2f}; {s['min']:.2f}–{s['max']:.2f})"


def med_ms(ts) -> float:
  return 1e3 * statistics.median(ts)


@dataclasses.dataclass
class LayerResult:
  layer: Layer
  torch_choice: dict[str, str]  # op -> 'cl' | 'nchw'
  ms: dict[str, dict[str, float]]  # side -> op -> median ms
  vs_torch: dict[str, dict[str, float]]  # op -> stats of t_torch_best / t_default
  vs_default: dict[str, dict[str, dict[str, float]]]  # side -> op -> stats of t_default / t_side
  err: dict[str, float]  # side -> worst relative error over ops (torch: best side vs default)


def bench_layer(layer: Layer, args, flag_workers: dict[str, paired.Worker]) -> LayerResult:
  impls = jax_impls(
    layer, None if args.dw_conv else {"default", "nchw", "prec", "explicit", "im2col", "patches", "hybrid"}
  )
  tsides = torch_sides(layer)
  # warm-up / compile (untimed) and numerics
  err: dict[str, float] = {}
  ref: dict[str, tuple] = {}
  for impl in impls:
    for op in impl.ops:
      jax_callable(impl, op)()
      out = impl.to_ref(op, impl.fns[op](*impl.args))
      if impl.name == "default":
        ref[op] = out
      else:
        err[impl.name] = max(err.get(impl.name, 0.0), rel_err(out, ref[op]))
  for tname, fns in tsides.items():
    for op in OPS:
      fns[op]()
      err[f"torch_{tname}"] = max(
        err.get(f"torch_{tname}", 0.0), rel_err(torch_to_ref(op, fns[op]()), ref[op])
      )
  flag_keys: dict[str, Keyed] = {}
  for fname, wk in flag_workers.items():
    for impl_name in (
      ("default", "dw_conv") if layer.depthwise and fname in args.dw_conv_flags else ("default",)
    ):
      side = f"{fname}" if impl_name == "default" else f"{fname}:{impl_name}"
      for op in OPS:
        kd = Keyed(wk, f"{layer.name}|{impl_name}|{op}")
        flag_keys[f"{side}|{op}"] = kd
        outs = kd.outputs()
        cmp = ref[op]
        if impl_name == "dw_conv":  # compare against the in-process grouped conv: same lowering
          dwc = next(i for i in impls if i.name == "dw_conv")
          cmp = dwc.to_ref(op, dwc.fns[op](*dwc.args))
        err[side] = max(err.get(side, 0.0), rel_err(outs, cmp))
  ms: dict[str, dict[str, float]] = {}
  vs_torch, vs_default = {}, {}
  choice = {}
  for op in OPS:
    sides: dict[str, Any] = {f"torch_{t}": fns[op] for t, fns in tsides.items()}
    for impl in impls:
      if op in impl.fns:
        sides[impl.name] = jax_callable(impl, op)
    for key, kd in flag_keys.items():
      side, kop = key.split("|")
      if kop == op:
        sides[side] = kd
    # The grouped depthwise conv takes seconds per call: it gets its own, shorter interleave with the default.
    slow = {k: sides.pop(k) for k in list(sides) if "dw_conv" in k}
    times = paired.interleave(sides, args.rounds, per_round=args.per_round)
    if slow:
      slow_times = paired.interleave({"default": sides["default"], **slow}, args.slow_rounds, per_round=1)
      for k in slow:
        times[k] = slow_times[k]
      times["default@slow"] = slow_times["default"]
    best = min(("cl", "nchw"), key=lambda t: statistics.median(times[f"torch_{t}"]))
    choice[op] = best
    times["torch_best"] = times[f"torch_{best}"]
    for side, ts in times.items():
      ms.setdefault(side, {})[op] = med_ms(ts)
    vs_torch[op] = paired.ratio_stats(times, "torch_best", "default")
    for side in times:
      if side.startswith("torch") or side.startswith("default"):
        continue
      den = "default@slow" if side == "dw_conv" else "default"
      if side.endswith(":dw_conv"):  # a flag worker's grouped conv: against the in-process grouped conv
        den = "dw_conv"
      vs_default.setdefault(side, {})[op] = paired.ratio_stats(times, den, side)
  return LayerResult(layer, choice, ms, vs_torch, vs_default, err)


def print_layer(res: LayerResult) -> None:
  lay = res.layer
  print(f"\n### {lay.name}\n\n{lay.describe()}\n")
  print("| side | " + " | ".join(OPS) + " | max rel. diff vs JAX default |")
  print("|---|" + "---|" * (len(OPS) + 1))
  print(
    "| JAX default, ms | " + " | ".join(f"{res.ms['default'][op]:.2f}" for op in OPS) + " | (reference) |"
  )
  tb = " | ".join(f"{res.ms['torch_best'][op]:.2f} ({res.torch_choice[op]})" for op in OPS)
  terr = max(res.err.get("torch_cl", 0.0), res.err.get("torch_nchw", 0.0))
  print(f"| torch best, ms (layout) | {tb} | {terr:.1e} |")
  print(
    "| **t_torch_best / t_jax_default** | "
    + " | ".join(f"**{cell(res.vs_torch[op])}**" for op in OPS)
    + " | |"
  )
  for side, per_op in res.vs_default.items():
    den = "t_dw_conv" if side.endswith(":dw_conv") else "t_default"
    cells = " | ".join(cell(per_op[op]) if op in per_op else "–" for op in OPS)
    print(f"| {den} / t_{side} | {cells} | {res.err.get(side, float('nan')):.1e} |")
  ms_line = ", ".join(
    f"{side} " + "/".join(f"{res.ms[side][op]:.1f}" if op in res.ms[side] else "–" for op in OPS)
    for side in res.ms
    if side not in ("default", "torch_best", "default@slow")
  )
  print(f"\nmedian ms fwd/dgrad/wgrad/all: {ms_line}")


def summary(results: list[LayerResult]) -> dict[str, dict[str, list[str]]]:
  """Per op kind and side: geometric mean of the median ratios over layers, and the layers where the side
  beats the default by more than the spread (q1 > 1 and median > 1.05) or loses (q3 < 1 and median < 0.95)."""
  print("\n## Summary\n")
  print(
    "Per op kind, t_default / t_variant over the layers that have the variant: geometric mean of the per-layer"
  )
  print(
    "medians, and the layers where it wins (IQR above 1 and median > 1.05) / loses (IQR below 1, median < 0.95).\n"
  )
  print("| op | variant | layers | geo-mean | wins | losses |")
  print("|---|---|---|---|---|---|")
  wins: dict[str, dict[str, list[str]]] = {}
  sides = []
  for r in results:
    sides += [s for s in r.vs_default if s not in sides]
  for op in OPS:
    rows = [("torch_best (t_torch_best / t_jax_default)", [(r.layer.name, r.vs_torch[op]) for r in results])]
    for side in sides:
      rows.append(
        (side, [(r.layer.name, r.vs_default[side][op]) for r in results if op in r.vs_default.get(side, {})])
      )
    for side, items in rows:
      if not items:
        continue
      gm = math.exp(statistics.fmean(math.log(s["median"]) for _, s in items))
      w = [n for n, s in items if s["q1"] > 1 and s["median"] > 1.05]
      lo = [n for n, s in items if s["q3"] < 1 and s["median"] < 0.95]
      wins.setdefault(op, {})[side] = w
      short = lambda names: (
        ", ".join(n.split(".", 1)[1] if n.startswith("small") else n for n in names) or "-"
      )
      print(f"| {op} | {side} | {len(items)} | {gm:.2f} | {short(w)} | {short(lo)} |")
  return wins


# ------------------------------------------------------------------------------------------------ small_cnn


@contextlib.contextmanager
def patched_flax_conv(conv_fn: Callable):
  """While active, flax.linen.linear's `lax.conv_general_dilated` is `conv_fn` (tracing only; bench-local)."""
  import flax.linen.linear as fl

  real = fl.lax
  proxy = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
  proxy.conv_general_dilated = conv_fn
  fl.lax = proxy
  try:
    yield
  finally:
    fl.lax = real


MODEL_VARIANTS = ("hybrid", "im2col")  # 'auto' candidates ('explicit' and 'patches' may be named explicitly)


def variant_conv(variant: str) -> Callable:
  """A drop-in for lax.conv_general_dilated (as nn.Conv calls it, NHWC/HWIO, 3×3 or 1×1 symmetric padding,
  no dilation, no groups) that lowers through the given variant."""
  makers = {"hybrid": conv_hybrid, "im2col": conv_im2col, "patches": conv_patches}

  def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
           feature_group_count=1, precision=None, **kw):  # fmt: skip
    k, s = rhs.shape[0], window_strides[0]
    if isinstance(padding, str):  # nn.Conv's default 'SAME' reaches lax as a string
      padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    plain = (
      feature_group_count == 1
      and rhs.shape[0] == rhs.shape[1]
      and tuple(window_strides) == (s, s)
      and [tuple(p) for p in padding] == [((k - 1) // 2,) * 2] * 2
      and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    )
    if not plain:
      return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
        precision=precision, **kw,
      )  # fmt: skip
    if variant == "explicit":
      layer = Layer("model", lhs.shape[0], lhs.shape[1], lhs.shape[3], rhs.shape[3], k, s)
      base = conv_nhwc(layer)

      @jax.custom_vjp
      def f(x, w):
        return base(x, w)

      f.defvjp(
        lambda x, w: (base(x, w), (x, w)),
        lambda r, g: (dgrad_transposed(layer, r[1], g), wgrad_batch_conv(layer, r[0], g)),
      )
      return f(lhs, rhs)
    layer = Layer("model", lhs.shape[0], lhs.shape[1], lhs.shape[3], rhs.shape[3], k, s)
    return makers[variant](layer)(lhs, rhs)

  return conv


MODELS = {"small_cnn": (32, 32), "mobilenet_v2": (8, 224)}  # batch, image size (bench_train.py's)


def build_model_steps(backbone: str, variants: list[str]):
  """Compiled value_and_grad of Σ features² for the ssdh_jax backbone in train mode: 'default' and each variant's
  conv substituted. Returns (compiled by name, params, x)."""
  from ssdh_jax.models.mobilenet_v2 import MobileNetV2
  from ssdh_jax.models.small_cnn import SmallCNN

  batch, size = MODELS[backbone]
  model = SmallCNN(width=32, dropout=0.0) if backbone == "small_cnn" else MobileNetV2(depthwise="auto")
  x = jnp.asarray(np.random.default_rng(1).standard_normal((batch, size, size, 3), dtype=np.float32))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  params, stats = variables["params"], variables["batch_stats"]

  def loss(p, x):
    out, _ = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(out * out)

  compiled = {"default": jax.jit(jax.value_and_grad(loss)).lower(params, x).compile()}
  for v in variants:
    with patched_flax_conv(variant_conv(v)):
      compiled[v] = jax.jit(jax.value_and_grad(loss)).lower(params, x).compile()
  return compiled, params, x


def model_step(backbone: str, variants: list[str], model_flags: list[str], args) -> None:
  """The ssdh_jax backbone (train mode) forward + params gradient of Σ features², with the default nn.Conv and
  with each variant's conv substituted, paired; the same under other XLA_FLAGS in worker processes; and
  bench/torch_ref.py's network (channels_last, train mode) for context. MobileNetV2's depthwise layers keep the
  project's 'shift' lowering (DepthwiseConv, not nn.Conv)."""
  import torch_ref

  workers = start_flag_workers(model_flags, lambda f: ["--serve-model", backbone, ",".join(variants)])
  try:
    compiled, params, x = build_model_steps(backbone, variants)
    batch, size = MODELS[backbone]
    v0, g0 = compiled["default"](params, x)
    ref = [v0, *jax.tree.leaves(g0)]
    others = [*variants, *(f"{f} flags" for f in workers)]
    print(
      f"\n## Whole {backbone} forward + params gradient: default vs {', '.join(others) or '-'} (paired)\n"
    )
    print(
      f"ssdh_jax {backbone} in train mode (BatchNorm batch statistics), batch {batch}, {size} px, value_and_grad"
    )
    print(
      "of Σ features²; a variant replaces nn.Conv's lax.conv_general_dilated while tracing (bench-local patch;"
    )
    print(
      "ssdh_jax unchanged; MobileNetV2's depthwise layers keep the 'shift' lowering). `flags:variant` rows run in"
    )
    print(
      "a worker process with those XLA_FLAGS. torch: bench/torch_ref.py's network, channels_last, train mode,"
    )
    print(
      "forward + backward of the same loss (grads set to None each call). Numerics: ‖Δ‖ / ‖ref‖ over all gradient"
    )
    print(
      "leaves together (a per-leaf max is meaningless here: some BatchNorm-bias gradients are ~0 in exact arithmetic,"
    )
    print(
      "e.g. MobileNetV2's project_bn biases, whose float32 values are rounding noise under every lowering), and"
    )
    print("the loss's relative difference, both against the in-process default.\n")
    sides: dict[str, Any] = {}
    errs: dict[str, float] = {}
    counts: dict[str, dict[str, int]] = {}
    for k, c in compiled.items():
      sides[k] = lambda c=c: jax.block_until_ready(c(params, x))
      counts[k] = hlo_counts(c.as_text())
      if k != "default":
        v1, g1 = c(params, x)
        errs[k] = global_err([v1, *jax.tree.leaves(g1)], ref)
    for fname, wk in workers.items():
      for v in ["default", *variants]:
        kd = Keyed(wk, f"model|{backbone}|{v}")
        sides[f"{fname}:{v}"] = kd
        errs[f"{fname}:{v}"] = global_err(kd.outputs(), ref)
        counts[f"{fname}:{v}"] = wk.info["hlo_counts"][v]
    tm = torch_ref.SmallCNN(width=32, dropout=0.0) if backbone == "small_cnn" else torch_ref.MobileNetV2()
    tm = tm.train().to(memory_format=torch.channels_last)
    xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)  # NHWC storage = channels_last NCHW

    def torch_step():
      for p in tm.parameters():
        p.grad = None
      out = tm(xt)
      (out * out).sum().backward()

    torch_step()
    sides["torch"] = torch_step
    per_round = args.per_round if backbone == "small_cnn" else 1
    times = paired.interleave(sides, args.rounds, per_round=per_round)
  finally:
    for wk in workers.values():
      wk.close()
  print(f"{args.rounds} rounds × median of {per_round} call(s).\n")
  print(
    "| side | ms (median) | t_default / t_side | t_torch / t_side | ‖Δgrad‖/‖grad‖ (loss) | HLO conv / dot / transpose / ynn |"
  )
  print("|---|---|---|---|---|---|")
  for k in sides:
    vs_def = "1 (reference)" if k == "default" else cell(paired.ratio_stats(times, "default", k))
    vs_t = "1" if k == "torch" else cell(paired.ratio_stats(times, "torch", k))
    c = counts.get(k)
    hlo = f"{c['convolution']} / {c['dot']} / {c['transpose']} / {c['__ynn_fusion']}" if c else ""
    err = f"{errs[k][0]:.1e} (loss {errs[k][1]:.0e})" if k in errs else ""
    print(f"| {k} | {med_ms(times[k]):.1f} | {vs_def} | {vs_t} | {err} | {hlo} |")
  sys.stdout.flush()


# ------------------------------------------------------------------------------------------------ main


def hlo_section(layers: list[Layer], flag_workers: dict[str, paired.Worker]) -> None:
  print("\n## Compiled HLO (XLA:CPU, default XLA_FLAGS + 1 thread)\n")
  print(
    "Condensed `jax.jit(f).lower(...).compile().as_text()`: ENTRY instructions (fusions with their kind /"
  )
  print(
    "library fusion config) and the convolutions / dots inside fused computations; metadata and layouts dropped."
  )
  by_name = {lay.name: lay for lay in layers}
  picks = [
    n for n in ("small_cnn.conv1_2", "mbv2.f0.stem_s2", "mbv2.f3.expand_1x1", "mbv2.f3.dw_s1") if n in by_name
  ]
  for name in picks:
    lay = by_name[name]
    x, w, g = (jnp.asarray(a) for a in layer_data(lay))
    impls = {"default"} if lay.depthwise else {"default", "nchw", "prec"}
    fns = {}
    if lay.depthwise:
      fns["default (shift)"] = autodiff_fns(
        lambda x, w, lay=lay: depthwise_conv(x, w, lay.s, lay.p, "shift")
      )["all"]
      fns["dw_conv (grouped)"] = autodiff_fns(
        lambda x, w, lay=lay: depthwise_conv(x, w, lay.s, lay.p, "conv")
      )["all"]
      argsets = {k: (x, w, g) for k in fns}
    else:
      fns["default"] = autodiff_fns(conv_nhwc(lay))["all"]
      argsets = {"default": (x, w, g)}
      if "nchw" in impls:
        fns["nchw"] = autodiff_fns(conv_nchw(lay))["all"]
        argsets["nchw"] = (x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), g.transpose(0, 3, 1, 2))
    for label, fn in fns.items():
      text = compiled_text(fn, *argsets[label])
      print(
        f"\n**{name}, {label}: y, dx, dw in one jit** — counts {hlo_counts(text)}; conv dim_labels {conv_labels(text)}\n"
      )
      if label in ("default", "default (shift)", "dw_conv (grouped)", "nchw") and not (
        lay.depthwise and "shift" in label
      ):
        print("```\n" + "\n".join(hlo_condensed(text)) + "\n```")
    if not lay.depthwise:
      t_def = compiled_text(autodiff_fns(conv_nhwc(lay))["all"], x, w, g)
      t_prec = compiled_text(autodiff_fns(conv_nhwc(lay, lax.Precision.HIGHEST, jnp.float32))["all"], x, w, g)
      strip = lambda t: re.sub(r"operand_precision=\{[^}]*\}, ", "", re.sub(r"metadata=\{[^}]*\}", "", t))
      same = strip(t_def).split("ENTRY")[1] == strip(t_prec).split("ENTRY")[1]
      print(
        f"\nprec (HIGHEST, preferred f32) ENTRY identical to default apart from operand_precision: {same}"
      )
  try:
    from ssdh_jax.models.small_cnn import SmallCNN

    model = SmallCNN(width=32, dropout=0.0)
    xb = jnp.zeros((32, 32, 32, 3), jnp.float32)
    v = model.init(jax.random.PRNGKey(0), xb)

    def loss(p, x):
      out, _ = model.apply(
        {"params": p, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"]
      )
      return jnp.sum(out * out)

    text = compiled_text(jax.value_and_grad(loss), v["params"], xb)
    print(
      f"\n**whole small_cnn (ssdh_jax SmallCNN, train mode) value_and_grad**: {hlo_counts(text)}; conv dim_labels {conv_labels(text)}"
    )
    convs = [s for s in hlo_condensed(text) if "convolution(" in s]
    print("\n```\n" + "\n".join(convs) + "\n```")
  except Exception as e:
    print(f"\n(small_cnn HLO skipped: {e!r})")
  for fname, wk in flag_workers.items():
    info = wk.info
    print(
      f"\n**flag worker `{fname}`** (XLA_FLAGS `{info.get('xla_flags')}`), small_cnn.conv1_2 y, dx, dw: {info.get('hlo_counts_conv1_2_all')}\n"
    )
    print("```\n" + "\n".join(info.get("hlo_conv1_2_all", [])) + "\n```")


def main() -> None:
  if len(sys.argv) > 2 and sys.argv[1] == "--serve":
    serve_flags(sys.argv[2].split(","), sys.argv[3] == "1")
    return
  if len(sys.argv) > 2 and sys.argv[1] == "--serve-model":
    serve_model(sys.argv[2], [v for v in sys.argv[3].split(",") if v])
    return
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument(
    "--quick",
    action="store_true",
    help=f"layers {', '.join(QUICK_LAYERS)}; 3 rounds; onednn and no_ynn_conv workers",
  )
  ap.add_argument("--rounds", type=int, default=10)
  ap.add_argument("--per-round", type=int, default=2)
  ap.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
  ap.add_argument(
    "--flags", default=DEFAULT_FLAGS, help="flag workers: any of " + ", ".join(FLAG_SETS) + " (empty: none)"
  )
  ap.add_argument("--no-hlo", action="store_true")
  ap.add_argument(
    "--slow-rounds",
    type=int,
    default=3,
    help="rounds (1 call each) for the seconds-long grouped depthwise conv",
  )
  ap.add_argument(
    "--dw-conv-flags", default="onednn", help="flag workers that also time the grouped depthwise conv"
  )
  ap.add_argument(
    "--model-variants", default="auto",
    help="time the whole-network step with these conv variants (comma-separated: hybrid, im2col, patches, "
    "explicit); 'auto': those that win `all` on half of that network's layers here; 'none': skip",
  )  # fmt: skip
  ap.add_argument("--models", default="small_cnn,mobilenet_v2", help="networks for the whole-step check")
  ap.add_argument(
    "--model-flags", default="no_ynn_conv", help="flag sets whose workers run the whole-step check too"
  )
  ap.add_argument(
    "--core", type=int, default=None, help="the core every side is bound to (default: the last)"
  )
  args = ap.parse_args()
  args.dw_conv = not args.quick
  args.dw_conv_flags = set(args.dw_conv_flags.split(",")) if args.dw_conv else set()
  layers = all_layers(not args.quick)
  if args.quick:
    args.rounds, args.per_round = 3, 2
    args.models = ""
    if args.flags == DEFAULT_FLAGS:
      args.flags = "onednn,no_ynn_conv"
    layers = [lay for lay in layers if lay.name in QUICK_LAYERS]
  if args.layers:
    want = args.layers.split(",")
    layers = [lay for lay in layers if lay.name in want]
  t0 = time.perf_counter()
  print("# Convolution forward / dgrad / wgrad, JAX (XLA:CPU) vs PyTorch eager, paired per layer\n")
  print(
    f"{paired.machine_header(1)}; jax {jax.__version__}, torch {torch.__version__}; XLA_FLAGS `{os.environ['XLA_FLAGS']}`"
  )
  print(
    f"{args.rounds} interleaved rounds × median of {args.per_round} calls; every side bound to core {CORES}, fp32."
  )
  print(
    "Cells: median (IQR q1–q3; min–max) of the per-round ratios. `t_torch_best / t_jax_default` > 1: JAX faster;"
  )
  print(
    "`t_default / t_variant` > 1: the variant is faster than what ssdh_jax runs. torch best = the faster of"
  )
  print(
    "channels_last (cl) and contiguous NCHW (nchw) by median, per op. Flag workers (onednn, eigen, ...) are"
  )
  print("separate pinned processes with those XLA_FLAGS, paired round by round with the in-process sides.")
  flag_names = [f for f in args.flags.split(",") if f]
  names = [lay.name for lay in layers]
  flag_workers = start_flag_workers(
    flag_names, lambda f: ["--serve", ",".join(names), str(int(f in args.dw_conv_flags))]
  )
  print(f"(flag workers ready after {time.perf_counter() - t0:.0f} s)")
  results = []
  try:
    for lay in layers:
      res = bench_layer(lay, args, flag_workers)
      print_layer(res)
      sys.stdout.flush()
      results.append(res)
    wins = summary(results)
    if not args.no_hlo:
      hlo_section(layers, flag_workers)
  finally:
    for wk in flag_workers.values():
      wk.close()
  for backbone in [m for m in args.models.split(",") if m]:
    prefix = "small_cnn" if backbone == "small_cnn" else "mbv2"
    variants = [v for v in args.model_variants.split(",") if v and v != "none"]
    if variants == ["auto"]:
      # the conv variants that win `all` (y, dx, dw) on at least half of this network's (non-depthwise) layers
      mine = [r for r in results if r.layer.name.startswith(prefix) and not r.layer.depthwise]
      variants = [
        side
        for side, names in wins.get("all", {}).items()
        if side in MODEL_VARIANTS and mine and 2 * sum(nm.startswith(prefix) for nm in names) >= len(mine)
      ]
      if not variants:
        print(f"\n(no conv variant wins `all` on half of the {backbone} layers: whole-model step not timed)")
    if variants or args.model_flags:
      model_step(backbone, variants, [f for f in args.model_flags.split(",") if f], args)
  print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
  main()
