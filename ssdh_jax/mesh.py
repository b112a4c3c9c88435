"""The run's device mesh: one data axis over the devices of every process, and the helpers that put state and
batches on it and bring arrays back to the host.

A run uses `num_devices` local devices on each of P processes (jax.distributed; P = 1 on one host). Global
batch row r lives on global device r // n (n rows per device), and process p's devices are its contiguous
block, so process p materialises only rows [p·B/P, (p+1)·B/P) of each global batch (`host_rows`).

The per-device step body runs under either wrapper:
  pmap       jax.pmap over the devices; state carries a leading device axis.
  shard_map  jax.jit(jax.shard_map(...)) over a one-axis Mesh; state is replicated (P()).
Both run the same body with the same named axis and the same collectives. Default: pmap, the wrapper the
design names, because the measurement does not favour either: `python -m bench.bench_wrappers` (small_cnn,
batch 32, 1 CPU device, 16 alternating rounds on a loaded 2-core machine) gave t(shard_map)/t(pmap) = 1.06,
spread 0.47–1.67, and equal compile times (36 s each). pmap has been in maintenance since JAX 0.8; should the
two part ways, shard_map is one config value away (train.parallel).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ssdh_jax.data import pipeline

PyTree = Any
AXIS = "data"
MODES = ("pmap", "shard_map")


@dataclasses.dataclass(frozen=True)
class DataMesh:
  """Attributes:
  mode: 'pmap' or 'shard_map'.
  devices: the global devices in axis order, process-major (process p's are devices[p·n:(p+1)·n]).
  local_devices: this process's devices in axis order.
  """

  mode: str
  devices: tuple
  local_devices: tuple

  @property
  def mesh(self) -> Mesh:
    return Mesh(np.asarray(self.devices), (AXIS,))

  @property
  def num_processes(self) -> int:
    return len(self.devices) // len(self.local_devices)

  @property
  def process_index(self) -> int:
    return jax.process_index() if self.num_processes > 1 else 0

  @property
  def is_main(self) -> bool:
    return self.process_index == 0

  def host_rows(self, global_batch: int) -> tuple[int, int]:
    """[lo, hi) rows of a global batch that this process materialises."""
    per = global_batch // self.num_processes
    return self.process_index * per, (self.process_index + 1) * per

  def wrap(self, body: Callable, donate: bool = True) -> Callable:
    """The per-device `body(state, batch, axis_name=...)` as a step over the mesh.

    shard_map runs with check_vma=False so that, as under pmap, gradients of replicated parameters are not
    summed implicitly: the body's explicit psum is the one reduction in both modes. donate: the input state's
    buffers are reused for the output (the training step); False leaves the input state valid.
    """
    fn = functools.partial(body, axis_name=AXIS)
    donate_argnums = (0,) if donate else ()
    if self.mode == "pmap":
      return jax.pmap(fn, axis_name=AXIS, devices=list(self.devices), donate_argnums=donate_argnums)
    mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()), check_vma=False)
    return jax.jit(mapped, donate_argnums=donate_argnums)

  def replicate(self, tree: PyTree) -> PyTree:
    """A host pytree (equal on every process) on every device, in the layout the wrapped step returns: any
    other layout makes the second step compile the whole step again."""
    n = len(self.devices)
    if self.mode == "pmap":
      spec = P(AXIS)
      lift = lambda x: np.broadcast_to(x, (n, *x.shape))
    else:
      spec, lift = P(), lambda x: x
    sharding = NamedSharding(self.mesh, spec)

    def put(x):
      x = lift(np.asarray(x))
      return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)

  def shard_batch(self, rows: Mapping[str, np.ndarray]) -> dict:
    """This process's rows of the global batch (`host_rows`) laid out over its devices."""
    n = len(self.local_devices)
    if self.mode == "pmap":
      return pipeline.shard(rows, n)
    sharding = NamedSharding(self.mesh, P(AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in rows.items()}

  def to_host(self, tree: PyTree) -> PyTree:
    """One host copy (numpy) of a replicated pytree the wrapped step returned (state or metrics): this
    process's first replica, so it works when the arrays span several processes."""

    def first(x):
      if not isinstance(x, jax.Array):
        return np.asarray(x)
      local = np.asarray(x.addressable_shards[0].data)
      return local[0] if self.mode == "pmap" else local

    return jax.tree.map(first, tree)

  def gather_rows(self, local: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenates every process's rows (any lengths) in process order; identity on one process."""
    if self.num_processes == 1:
      return {k: np.asarray(v) for k, v in local.items()}
    sizes = multihost_utils.process_allgather(np.int64(len(next(iter(local.values())))))
    width = int(np.max(sizes))
    out = {}
    for k, v in local.items():
      v = np.asarray(v)
      padded = np.zeros((width, *v.shape[1:]), v.dtype)
      padded[: len(v)] = v
      every = np.asarray(multihost_utils.process_allgather(padded))  # (P, width, ...)
      out[k] = np.concatenate([every[p, : int(s)] for p, s in enumerate(np.asarray(sizes).reshape(-1))])
    return out

  def share(self, n: int) -> slice:
    """This process's contiguous share of n rows (the first n mod P processes get one more)."""
    base, extra = divmod(n, self.num_processes)
    p = self.process_index
    lo = p * base + min(p, extra)
    return slice(lo, lo + base + (p < extra))

  def agree(self, value: float) -> float:
    """Process 0's value on every process (a decision all of them must take the same way)."""
    if self.num_processes == 1:
      return float(value)
    return float(multihost_utils.broadcast_one_to_all(np.float64(value)))


def create(mode: str = "pmap", num_devices: int = 0, batch_size: int | None = None) -> DataMesh:
  """The mesh over `num_devices` local devices of every process (0: all of them).

  Raises ValueError naming the config field when there are too few devices or the batch does not split.
  """
  if mode not in MODES:
    raise ValueError(f"config.train.parallel: unknown mode {mode!r} (pmap | shard_map)")
  local = jax.local_devices()
  n = int(num_devices) or len(local)
  if n > len(local):
    raise ValueError(f"config.train.num_devices={n} but only {len(local)} local devices are visible")
  total = n * jax.process_count()
  if batch_size is not None and batch_size % total:
    raise ValueError(f"config.train.batch_size={batch_size} is not divisible by the {total} devices")
  by_process: dict[int, list] = {}
  for d in jax.devices():
    by_process.setdefault(d.process_index, []).append(d)
  devices = tuple(d for p in sorted(by_process) for d in sorted(by_process[p], key=lambda d: d.id)[:n])
  own = tuple(d for d in devices if d.process_index == jax.process_index())
  return DataMesh(mode=mode, devices=devices, local_devices=own)
