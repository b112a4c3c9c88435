"""Base configuration: every field any part of ssdh_jax reads, with the release's defaults.

Dataset x backbone configs import `get_config()` from here and override fields. Defaults follow the authors'
Caffe release (../shared/docs/ssdh-method.md); comments name the release value where we differ.
"""

import ml_collections

from ssdh_jax import losses


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # model init, dropout, loss sampling and batch order all derive from this key

  # ---------------------------------------------------------------- data
  c.data = d = ml_collections.ConfigDict()
  d.source = "digits"  # digits | tfds | folder | list | arrays
  d.tfds_name = "cifar10"  # for source=tfds: a tfds catalogue name
  d.data_dir = ""  # tfds data_dir (empty: tfds default)
  d.manual_dir = ""  # folder/list sources: root of the images (and list files)
  d.protocol = (
    "digits"  # digits | cifar10 | cifar10-1 | cifar10-2 | nuswide-21 | mirflickr-25k | imagenet-100 | coco
  )
  d.split_seed = 0
  d.split_dir = ""  # where split files are written/read (empty: <workdir>/splits)
  d.num_classes = 10
  d.multi_label = False
  d.labeled_fraction = 0.5  # fraction of each training batch drawn from the labeled pool (release ~0.5)
  d.include_unlabeled = True  # False: batches hold labeled images only (supervised-only baseline)
  # Label-scarce runs: keep only this many of the protocol's labeled images (class-balanced, nested: the 250
  # are among the 1,000), the rest become unlabeled training images; queries and database stay the protocol's.
  d.num_labeled = 0  # 0: every labeled image of the protocol
  d.resize_size = 0  # resize before crop (0: no resize); VGG-F/MobileNetV2: 256
  d.image_size = 8  # network input size after crop
  d.augment = "none"  # none | crop_flip | pad_crop_flip
  d.pad = 4  # for pad_crop_flip
  d.on_device_augment = False  # in-memory datasets: augment with jax.numpy on the accelerator
  d.on_bad_image = "error"  # error | skip (skipped files are counted in the run metadata)
  d.cache_dir = ""  # decoded-array cache for small datasets (empty: none)
  d.val_size = -1  # validation images for model selection (-1: the protocol's default)
  d.val_from = ""  # unlabeled (default: extra labels, labeled set keeps its protocol size) | labeled
  d.list_files = ""  # source=list: comma-separated list-file names under manual_dir (empty: *.txt)
  d.arrays_path = ""  # source=arrays: an .npz with images, labels[, ids]
  d.in_memory = "auto"  # auto | always | never: decode file datasets into a uint8 array
  d.num_workers = 0  # decode/augment threads (0: all cores)

  # ---------------------------------------------------------------- model
  c.model = m = ml_collections.ConfigDict()
  m.name = "small_cnn"  # vgg_f | alexnet | vgg16 | vgg19 | mobilenet_v2 | small_cnn
  m.bits = 48
  m.num_classes = 10  # class head width (0: no class head)
  m.dropout = 0.5
  m.width = 32  # small_cnn base width
  m.dtype = "float32"  # compute dtype: float32 | bfloat16 (hash/class outputs are always float32)
  m.param_dtype = "float32"
  # A .pth (torchvision layout) or .npz (VGG-F) path, or 'torchvision[:<model>]' (installed weight package,
  # ~/.cache/ssdh_jax, then a download); empty: random init.
  m.pretrained = ""
  m.preprocess = "unit"  # caffe_bgr | imagenet | unit
  m.depthwise = "auto"  # depthwise conv: auto (shift on CPU, conv elsewhere) | conv | shift
  m.pointwise = "auto"  # 1x1 convs (mobilenet_v2): auto (a matmul on CPU, conv elsewhere) | conv | dot
  m.trainable = "all"  # all | heads | a backbone layer (e.g. features_14): that layer onward trains
  # Frozen prefix output computed once per image and cached on disk: auto (when the prefix sees no random
  # augmentation, i.e. data.augment='none') | off. Training then runs only the trainable layers.
  m.feature_cache = "auto"
  m.feature_cache_dir = ""  # empty: <data.cache_dir>/features, or <workdir>/feature_cache

  # ---------------------------------------------------------------- loss
  # Every field of ssdh_jax.losses.SSDHLoss (documented there), with its release defaults: one source of truth.
  c.loss = ml_collections.ConfigDict({"name": "ssdh", **losses.SSDHLoss().to_dict()})  # name: ssdh | dpsh

  # ---------------------------------------------------------------- pool graph and pseudo-labels
  # Beyond the paper (ssdh_jax.pool_graph): a kNN graph over every training image, labels propagated over it,
  # and the most confident unlabeled images of each class added to the labeled set with their predicted class.
  c.pseudo = p = ml_collections.ConfigDict()
  p.mode = "off"  # off | propagate
  p.feature = "features"  # features (what the hash layer reads) | codes (sigmoid-relaxed): the graph's space
  p.k = 10  # neighbours per image
  p.alpha = 0.99  # label spread: (I - alpha S)^-1 Y
  p.gamma = 3.0  # edge weight: cosine similarity ** gamma
  p.iters = 20  # conjugate-gradient steps
  p.fraction = 0.5  # share of each predicted class's unlabeled images kept, most confident first
  p.refresh_every = 0  # steps between recomputations from the current model (0: once, before step 0)

  # ---------------------------------------------------------------- optimiser
  c.optim = o = ml_collections.ConfigDict()
  o.name = "sgd"  # sgd | adam
  o.lr = 1e-4
  o.momentum = 0.9
  o.weight_decay = 5e-4  # never applied to biases (nor BatchNorm scales)
  o.bias_lr_mult = 2.0
  o.schedule = "step"  # step | cosine | constant
  o.step_every = 30_000
  o.step_gamma = 0.1
  o.warmup_steps = 0
  o.backbone_lr_mult = 1.0  # per-layer multiplier for the backbone; heads use 1.0
  o.grad_clip = 0.0  # 0: none

  # ---------------------------------------------------------------- training
  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 128  # GLOBAL batch; the graph is built over all of it
  t.num_steps = 1000
  t.parallel = "pmap"  # pmap | shard_map
  t.num_devices = 0  # 0: all local devices
  t.distributed = False  # call jax.distributed.initialize() (multi-host; see the README)
  # One command per host: the coordinator's host:port, the process count and this process's id. Empty / 0:
  # auto-detected by jax.distributed (TPU pods, SLURM, ...).
  t.coordinator_address = ""
  t.num_processes = 0
  t.process_id = 0
  # Failure detection on several processes (seconds): how long every process waits for all of them to join at
  # start; a process silent for heartbeat_timeout is declared lost and the others stop with an error naming it;
  # at exit a process waits at most shutdown_timeout for the others; a background checkpoint save waits at most
  # checkpoint_timeout for the other processes to write their part.
  t.init_timeout = 300
  t.heartbeat_timeout = 60
  t.shutdown_timeout = 60
  t.checkpoint_timeout = 300
  t.log_every = 50
  t.eval_every = 500  # validation mAP for best-checkpoint selection (0: only at the end)
  t.checkpoint_every = 500
  t.keep_checkpoints = 3
  t.async_checkpoint = True
  t.progress = True
  # Diagnostics: every this many steps, each loss term's own gradient norm and its cosine with the total
  # gradient (one backward pass per term on those steps; 0: off).
  t.term_grad_norms = 0

  # ---------------------------------------------------------------- evaluation
  c.eval = e = ml_collections.ConfigDict()
  e.batch_size = 256
  e.map_r = 0  # mAP@R (0: whole database)
  e.topk = (1, 10, 50, 100, 500, 1000)  # precision@K points
  e.hamming_radius = 2
  e.drop_no_relevant = False  # peers' convention: drop queries with no relevant item in the top R
  e.expected_ties = False  # also report expected AP under random tie order
  # Distance ties: id_hash ranks the database in a seeded order of the item ids (independent of how the items
  # are stored; also the order of the saved search index); index: by storage position (before 2026-11-29).
  e.tie_break = "id_hash"
  e.tie_seed = 0
  e.query_chunk = 256
  e.backend = "auto"  # auto | jax | faiss: ranks mAP@R (R > 0) and top-k search; auto: FAISS where faster
  e.val_queries = 500  # validation queries used for model selection during training
  e.val_database = 5000  # database sample those validation queries search (fixed by split_seed)
  return c


def set_bits(c: ml_collections.ConfigDict, bits: int) -> ml_collections.ConfigDict:
  """Code length with the release's per-length settings (12 bits: window [120,124), margin 2.5)."""
  c.model.bits = int(bits)
  if int(bits) <= 12:
    c.loss.neg_window = (120, 124)
    c.loss.margin = 2.5
  else:
    c.loss.neg_window = (114, 124)
    c.loss.margin = 3.0
  return c


def parse_bits(config_string: str | None, default: int) -> int:
  """`configs/x.py:24` passes "24" as the config string; empty means the file's default."""
  if not config_string:
    return default
  try:
    return int(config_string)
  except ValueError:
    raise ValueError(
      f"config string {config_string!r}: expected a code length such as 12, 24, 32 or 48"
    ) from None
