"""A new online graph in one file: each row's neighbour is its nearest other row, its non-neighbour a random row.

  python train.py --config configs/digits_demo.py --workdir RUN \\
    --module examples/custom_graph.py --config.loss.graph=nearest_random
  python eval.py --workdir RUN                # imports this file again (recorded in RUN/modules.json)

Importing the file registers the builder (`graph.register_graph_builder`); nothing else changes: the SSDH loss
pulls each row towards 'pos' and pushes 'neg' beyond the margin (see `register_graph_builder` for the fields).
"""

import jax
import jax.numpy as jnp

from ssdh_jax import graph


def nearest_and_random(feats, bits, anchor_ids, row_ids, *, k_size, window, classes=None):
  """pos: the nearest row other than the anchor (ties: lower row id); neg: a uniform row other than the
  anchor. Both depend on a row only through its features and global id, so sharded runs draw the same."""
  del k_size, window, classes  # this graph has no neighbour window and ignores the class filter
  big_n = feats.shape[0]
  near, _ = graph.window_neighbours(feats, anchor_ids, row_ids, 2, (1, 2))
  # Sorted position 0 is the anchor itself unless another row has identical features and a smaller id.
  pos = jnp.where(near[:, 0] == anchor_ids, near[:, 1], near[:, 0])
  # A uniform draw among the other N - 1 rows in row-id order (`masked_choice`: permutation-invariant).
  others = jnp.arange(big_n)[None, :] != anchor_ids[:, None]
  neg, _ = graph.masked_choice(bits[:, 1:], others, row_ids)
  # pos_rank / neg_rank (sorted positions) are omitted: training never reads them (ssdh_sample fills -1).
  return {"pos": pos.astype(jnp.int32), "neg": neg[:, 0], "neg_valid": jnp.full(pos.shape, big_n > 1)}


graph.register_graph_builder("nearest_random", nearest_and_random)


if __name__ == "__main__":  # a look at what it draws on random features
  feats = jax.random.normal(jax.random.key(0), (6, 4))
  ids = jnp.arange(6, dtype=jnp.int32)
  out = nearest_and_random(
    feats, graph.anchor_bits(jax.random.key(1), ids, 2), ids, ids, k_size=2, window=(4, 6)
  )
  print({k: v.tolist() for k, v in out.items()})
