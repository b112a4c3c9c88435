"""PyTorch reference of the SSDH training step, for the bench/ comparisons only (torch is the `peers` extra).

Networks written from the same specs as ssdh_jax.models (torchvision is not assumed):
  vgg_f         Caffe CNN-F: conv1 64×11×11/4 → ReLU → LRN → max-pool 3/2 (ceil) → conv2 256×5×5 p2 → ReLU → LRN
                → pool (ceil) → conv3–5 256×3×3 p1 → ReLU → pool (ceil) → fc6, fc7 4096 (ReLU, dropout 0.5).
  vgg16         torchvision layout: 13 conv 3×3 + ReLU, max-pool 2/2 per stage, adaptive avg-pool 7, fc6, fc7.
  mobilenet_v2  torchvision layout (features.0 … features.18, ReLU6, BatchNorm eps 1e-5), global average pool.
  small_cnn     the ssdh_jax from-scratch CNN (3 stages × 2 conv-BN-ReLU, fc 8w).
Heads as ssdh_jax.models.heads: hash Dense F → k + sigmoid, class Dense F → C, both in float32.

`ssdh_loss` is a vectorised port of ssdh_jax.losses.ssdh_loss with the same terms, normalisers and sampling rules
(sorted graph positions, neighbour window, scaled non-neighbour window, masked uniform draws via cumsum + binary
search, up to max_tries triplet draws, pseudo-label sets, class term) and the release's regularised √ gradient.
Its random words come from torch.randint (pass `bits` to replay ssdh_jax's words exactly).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SQRT_GRAD_EPS = 1e-4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
FEATURE_DIM = {"vgg_f": 4096, "vgg16": 4096, "mobilenet_v2": 1280}

# ------------------------------------------------------------------------------------------------ networks


def _caffe_lrn() -> nn.Module:
  # torch's LRN is Caffe's across-channel form: a / (k + alpha/n · Σ a²)^beta with zero channel padding.
  return nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)


def fc6_fc7(in_features: int, dropout: float) -> nn.Sequential:
  """The two 4096-wide fully connected layers (ReLU, dropout) of VGG-F and VGG-16."""
  return nn.Sequential(
    nn.Linear(in_features, 4096),
    nn.ReLU(inplace=True),
    nn.Dropout(dropout),
    nn.Linear(4096, 4096),
    nn.ReLU(inplace=True),
    nn.Dropout(dropout),
  )


class VGGF(nn.Module):
  """Caffe VGG-F / CNN-F backbone: (B, 3, 224, 224) BGR → (B, 4096) fc7 features."""

  def __init__(self, dropout: float = 0.5):
    super().__init__()
    self.features = nn.Sequential(
      nn.Conv2d(3, 64, 11, stride=4),
      nn.ReLU(inplace=True),
      _caffe_lrn(),
      nn.MaxPool2d(3, 2, ceil_mode=True),  # Caffe rounds pooled sizes up: 54 → 27 → 13 → 6
      nn.Conv2d(64, 256, 5, padding=2),
      nn.ReLU(inplace=True),
      _caffe_lrn(),
      nn.MaxPool2d(3, 2, ceil_mode=True),
      nn.Conv2d(256, 256, 3, padding=1),
      nn.ReLU(inplace=True),
      nn.Conv2d(256, 256, 3, padding=1),
      nn.ReLU(inplace=True),
      nn.Conv2d(256, 256, 3, padding=1),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(3, 2, ceil_mode=True),
    )
    self.classifier = fc6_fc7(256 * 6 * 6, dropout)

  def forward(self, x: Tensor) -> Tensor:
    return self.classifier(torch.flatten(self.features(x), 1))


class VGG16(nn.Module):
  """torchvision VGG-16 (configuration D, no BatchNorm) without fc8: (B, 3, H, W) → (B, 4096)."""

  def __init__(self, dropout: float = 0.5):
    super().__init__()
    layers: list[nn.Module] = []
    cin = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
      if v == "M":
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
        cin = v
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = fc6_fc7(512 * 7 * 7, dropout)

  def forward(self, x: Tensor) -> Tensor:
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class ConvBNAct(nn.Sequential):
  """torchvision Conv2dNormActivation: conv (no bias) → BatchNorm → ReLU6."""

  def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
    super().__init__(
      nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
      nn.BatchNorm2d(cout),
      nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
    super().__init__()
    hidden = cin * expand_ratio
    self.use_res_connect = stride == 1 and cin == cout
    layers: list[nn.Module] = []
    if expand_ratio != 1:
      layers.append(ConvBNAct(cin, hidden, kernel=1))
    layers += [
      ConvBNAct(hidden, hidden, stride=stride, groups=hidden),
      nn.Conv2d(hidden, cout, 1, bias=False),
      nn.BatchNorm2d(cout),
    ]
    self.conv = nn.Sequential(*layers)

  def forward(self, x: Tensor) -> Tensor:
    return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
  """torchvision MobileNetV2 (width 1.0) without its classifier: (B, 3, H, W) → (B, 1280)."""

  SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
  )

  def __init__(self):
    super().__init__()
    layers: list[nn.Module] = [ConvBNAct(3, 32, stride=2)]
    cin = 32
    for t, c, n, s in self.SETTINGS:
      for i in range(n):
        layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
        cin = c
    layers.append(ConvBNAct(cin, 1280, kernel=1))
    self.features = nn.Sequential(*layers)
    for m in self.modules():  # torchvision's init
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out")
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

  def forward(self, x: Tensor) -> Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)


class SmallCNN(nn.Module):
  """ssdh_jax's small BatchNorm CNN: 3 stages × 2 [conv 3×3 → BN → ReLU], pools, GAP, fc 8w → ReLU → dropout."""

  def __init__(self, width: int = 32, dropout: float = 0.5):
    super().__init__()
    layers: list[nn.Module] = []
    cin = 3
    for stage, mult in enumerate((1, 2, 4), start=1):
      for _ in range(2):
        layers += [
          nn.Conv2d(cin, width * mult, 3, padding=1, bias=False),
          nn.BatchNorm2d(width * mult),
          nn.ReLU(inplace=True),
        ]
        cin = width * mult
      if stage < 3:
        layers.append(nn.MaxPool2d(2, 2))
    self.features = nn.Sequential(*layers)
    self.fc = nn.Linear(4 * width, 8 * width)
    self.dropout = nn.Dropout(dropout)
    self.out_dim = 8 * width

  def forward(self, x: Tensor) -> Tensor:
    x = self.features(x).mean(dim=(2, 3))
    return self.dropout(F.relu(self.fc(x)))


class HashingModel(nn.Module):
  """Backbone → features → hash layer (k, sigmoid) and class head (C), the heads in float32."""

  def __init__(self, backbone: nn.Module, feature_dim: int, bits: int, num_classes: int):
    super().__init__()
    self.backbone = backbone
    self.hash = nn.Linear(feature_dim, bits)
    self.classifier = nn.Linear(feature_dim, num_classes) if num_classes else None

  def forward(self, x: Tensor) -> dict[str, Tensor]:
    features = self.backbone(x)
    with torch.autocast(x.device.type, enabled=False):  # heads in float32 whatever the compute dtype
      f32 = features.float()
      hash_logits = self.hash(f32)
      out = {"codes": torch.sigmoid(hash_logits), "hash_logits": hash_logits, "features": features}
      if self.classifier is not None:
        out["class_logits"] = self.classifier(f32)
    return out


def build_model(name: str, bits: int = 48, num_classes: int = 10, width: int = 32) -> HashingModel:
  """The hashing model with backbone `name` (vgg_f | vgg16 | mobilenet_v2 | small_cnn)."""
  if name == "vgg_f":
    backbone, dim = VGGF(), FEATURE_DIM[name]
  elif name == "vgg16":
    backbone, dim = VGG16(), FEATURE_DIM[name]
  elif name == "mobilenet_v2":
    backbone, dim = MobileNetV2(), FEATURE_DIM[name]
  elif name == "small_cnn":
    backbone = SmallCNN(width)
    dim = backbone.out_dim
  else:
    raise ValueError(f"torch_ref has no backbone {name!r}")
  return HashingModel(backbone, dim, bits, num_classes)


def preprocess(images: Tensor, name: str) -> Tensor:
  """uint8 NHWC (B, H, W, 3) RGB → float32 NCHW in channels_last memory (a permute of NHWC is exactly that).

  name: 'caffe_bgr' | 'imagenet' | 'unit', as ssdh_jax.preprocessing.
  """
  x = images.float()
  if name == "caffe_bgr":
    x = x.flip(-1) - x.new_tensor(CAFFE_BGR_MEAN)
  elif name == "imagenet":
    x = (x / 255.0 - x.new_tensor(IMAGENET_MEAN)) / x.new_tensor(IMAGENET_STD)
  elif name == "unit":
    x = x / 255.0 - 0.5
  else:
    raise ValueError(f"unknown preprocessing {name!r}")
  return x.permute(0, 3, 1, 2)


def make_optimizer(
  model: nn.Module,
  lr: float = 1e-4,
  momentum: float = 0.9,
  weight_decay: float = 5e-4,
  bias_lr_mult: float = 2.0,
) -> torch.optim.Optimizer:
  """SGD as ssdh_jax.optim's default: momentum, decay on weights only, biases and norm params at lr × 2."""
  decay, no_decay = [], []
  for p in model.parameters():
    (decay if p.ndim > 1 else no_decay).append(p)
  return torch.optim.SGD(
    [
      {"params": decay, "lr": lr, "weight_decay": weight_decay},
      {"params": no_decay, "lr": lr * bias_lr_mult, "weight_decay": 0.0},
    ],
    lr=lr,
    momentum=momentum,
  )


# ------------------------------------------------------------------------------------------------ loss


def _get(cfg: Any, name: str) -> Any:
  return cfg[name] if isinstance(cfg, Mapping) else getattr(cfg, name)


def safe_sqrt(x: Tensor) -> Tensor:
  """√max(x, 0) with the release's derivative 1/(2(√x + 1e-4)) (finite at 0), without an autograd.Function."""
  y = torch.sqrt(torch.clamp(x, min=0.0)).detach()
  return y + (x - x.detach()) / (2.0 * (y + SQRT_GRAD_EPS))


def row_sq_dists(a: Tensor, b: Tensor) -> Tensor:
  d = a - b
  return (d * d).sum(-1)


def contrastive(h_a: Tensor, h_p: Tensor, h_n: Tensor, margin: float) -> Tensor:
  hinge = torch.clamp(margin - safe_sqrt(row_sq_dists(h_a, h_n)), min=0.0)
  return row_sq_dists(h_a, h_p) + hinge * hinge


def knn_size(n: int, knn_k: int) -> int:
  return max(1, min(int(knn_k), n // 3))


def graph_window(n: int, cfg: Any) -> tuple[int, int]:
  """Sorted-position window of the non-neighbour (ssdh_jax.graph.graph_window)."""
  if _get(cfg, "variant") == "single_label":
    return n - max(1, n // 3), n
  a, b = (int(v) for v in _get(cfg, "neg_window"))
  ref = int(_get(cfg, "window_ref_n"))
  lo, hi = (a * n) // ref, (b * n) // ref
  hi = min(max(hi, lo + 1), n)
  lo = min(lo, hi - 1)
  return max(lo, 0), hi


def uniform_index(bits: Tensor, count: Tensor | int) -> Tensor:
  """bits (int64 words in [0, 2^32)) mod max(count, 1), as ssdh_jax.graph.uniform_index."""
  if isinstance(count, int):
    return bits % max(count, 1)
  return bits % torch.clamp(count, min=1)


def masked_choice(bits: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
  """One uniform True column of each row of `mask` (n, N) per column of `bits` (n, num): cumsum + searchsorted.

  Rows are in batch order (row ids = arange(N)); returns (idx (n, num) int64, nonempty (n,) bool).
  """
  cs = torch.cumsum(mask.to(torch.int64), dim=1)
  count = cs[:, -1]
  r = uniform_index(bits, count[:, None])
  j = torch.searchsorted(cs, r, right=True)
  return torch.clamp(j, max=mask.shape[1] - 1), count > 0


def _terms_on(cfg: Any, outputs: Mapping[str, Tensor]) -> dict[str, bool]:
  single = _get(cfg, "variant") == "single_label"
  has_cls = "class_logits" in outputs
  return {
    "rank": bool(_get(cfg, "use_rank")),
    "emb": bool(_get(cfg, "use_emb")),
    "pl": bool(_get(cfg, "use_pl")) and not single and has_cls,
    "cls": bool(_get(cfg, "use_cls")) and not single and has_cls,
  }


@torch.no_grad()
def ssdh_sample(
  outputs: Mapping[str, Tensor], labels: Tensor, labeled: Tensor, cfg: Any, *, bits: Tensor | None = None
) -> dict[str, Tensor]:
  """All index selection of the SSDH loss for every row as anchor (port of ssdh_jax.losses.ssdh_sample).

  Args:
    outputs: 'codes' (N, k); 'features' if graph_feature == 'features'; 'class_logits' (N, C) for pseudo-labels.
    labels: (N, C) float32 multi-hot (zeros for unlabeled rows); labeled: (N,) bool.
    cfg: config.loss (ConfigDict or mapping).
    bits: optional (N, 4 + 2·max_tries) int64 words in [0, 2^32), laid out as ssdh_jax.graph.anchor_bits
      ([neighbour, non-neighbour, tries × p, tries × n, pl p, pl n]); default torch.randint.

  Returns:
    dict of (N,) int64/bool tensors with ssdh_jax's keys.
  """
  h = outputs["codes"]
  n = h.shape[0]
  dev = h.device
  tries = max(1, int(_get(cfg, "max_tries")))
  if bits is None:
    bits = torch.randint(0, 2**32, (n, 4 + 2 * tries), device=dev, dtype=torch.int64)
  on = _terms_on(cfg, outputs)
  labels = labels.float()
  anchors = torch.arange(n, device=dev)
  out = {"anchors": anchors}

  # Online graph on detached float32 features; the direct-difference form keeps exact 0 self-distances and is
  # immune to TF32 / autocast matmul settings. A stable sort orders ties by row index, as ssdh_jax's (d, id) sort.
  key = {"codes": "codes", "features": "features", "fc7": "features"}[_get(cfg, "graph_feature")]
  feats = outputs[key].detach().float()
  diff = feats[:, None, :] - feats[None, :, :]
  d = (diff * diff).sum(-1)
  order = torch.sort(d, dim=1, stable=True).indices
  lo, hi = graph_window(n, cfg)
  q_pos = uniform_index(bits[:, 0], knn_size(n, _get(cfg, "knn_k")))
  q_neg = lo + uniform_index(bits[:, 1], hi - lo)
  out["emb_pos"] = order.gather(1, q_pos[:, None])[:, 0]
  out["emb_neg"] = order.gather(1, q_neg[:, None])[:, 0]
  out["emb_pos_rank"], out["emb_neg_rank"] = q_pos, q_neg
  graph_filter = (
    cfg.get("graph_filter", "none") if isinstance(cfg, Mapping) else getattr(cfg, "graph_filter", "none")
  )
  if graph_filter != "none":
    raise NotImplementedError(f"torch_ref ports loss.graph_filter='none' only, not {graph_filter!r}")
  out["emb_neg_valid"] = torch.ones(n, dtype=torch.bool, device=dev)  # no class-agreement filter: all valid

  yb = labels > 0.5
  zeros_i = torch.zeros(n, dtype=torch.int64, device=dev)
  zeros_b = torch.zeros(n, dtype=torch.bool, device=dev)
  if on["rank"]:
    yf = yb.float()
    sim = (yf @ yf.T) > 0.5
    both = labeled[:, None] & labeled[None, :]
    p, p_ok = masked_choice(bits[:, 2 : 2 + tries], both & sim)
    q, q_ok = masked_choice(bits[:, 2 + tries : 2 + 2 * tries], both & ~sim)
    pn_share = (yb[p] & yb[q]).any(-1)  # (N, tries)
    ok = (p_ok & q_ok)[:, None] & ~pn_share
    first = torch.argmax(ok.to(torch.int32), dim=1, keepdim=True)  # first maximal index
    out["rank_pos"] = p.gather(1, first)[:, 0]
    out["rank_neg"] = q.gather(1, first)[:, 0]
    out["rank_valid"] = ok.any(1)
  else:
    out["rank_pos"], out["rank_neg"], out["rank_valid"] = zeros_i, zeros_i, zeros_b

  if on["pl"]:
    z = outputs["class_logits"].detach().float()
    top, bot = torch.argmax(z, -1), torch.argmin(z, -1)
    has_top, has_bot = yb.T[top], yb.T[bot]  # (N, N): row j carries the anchor's ŷ / y̌
    unl = ~labeled[None, :]
    lab = labeled[None, :]
    pos = (unl & (top[None, :] == top[:, None])) | (lab & has_top & ~has_bot)
    neg = ((unl & (top[None, :] == bot[:, None])) | (lab & has_bot & ~has_top)) & ~pos
    p, p_ok = masked_choice(bits[:, 2 + 2 * tries : 3 + 2 * tries], pos)
    q, q_ok = masked_choice(bits[:, 3 + 2 * tries : 4 + 2 * tries], neg)
    out["pl_pos"], out["pl_neg"], out["pl_valid"] = p[:, 0], q[:, 0], ~labeled & p_ok & q_ok
  else:
    out["pl_pos"], out["pl_neg"], out["pl_valid"] = zeros_i, zeros_i, zeros_b
  return out


def ssdh_terms(
  outputs: Mapping[str, Tensor], labels: Tensor, labeled: Tensor, samples: Mapping[str, Tensor], cfg: Any
) -> tuple[Tensor, dict[str, Tensor]]:
  """The differentiable SSDH terms given the sampled indices (port of ssdh_jax.losses.ssdh_terms).

  Returns:
    loss scalar float32 and aux: 'loss_rank', 'loss_emb', 'loss_pl', 'loss_cls', counts and 'graph_purity'.
  """
  h = outputs["codes"].float()
  n = h.shape[0]
  labels = labels.float()
  yb = labels > 0.5
  on = _terms_on(cfg, outputs)
  lam = float(_get(cfg, "lam"))
  margin = float(_get(cfg, "margin"))

  e_pos = samples["emb_pos"]
  anchors = torch.arange(n, device=h.device)
  pur_mask = labeled & labeled[e_pos] & (e_pos != anchors)
  pur_hit = pur_mask & (yb & yb[e_pos]).any(-1)
  rank_valid = samples["rank_valid"] & on["rank"]
  pl_valid = samples["pl_valid"] & on["pl"]
  cls_mask = labeled & on["cls"]
  counts = torch.stack([m.sum() for m in (rank_valid, pl_valid, labeled, pur_mask)]).float()
  n_trip, n_pl, n_lab, n_pur = torch.clamp(counts, min=1.0).unbind()

  zero = h.new_zeros(())
  terms = {"loss_rank": zero, "loss_emb": zero, "loss_pl": zero, "loss_cls": zero}
  if on["rank"]:
    d_ap = row_sq_dists(h, h[samples["rank_pos"]])
    d_an = row_sq_dists(h, h[samples["rank_neg"]])
    hinge = torch.clamp(float(_get(cfg, "rank_margin")) + d_ap - d_an, min=0.0)
    terms["loss_rank"] = torch.where(rank_valid, hinge, zero).sum() / (2.0 * n_trip)
  if on["emb"]:
    f = contrastive(h, h[samples["emb_pos"]], h[samples["emb_neg"]], margin)
    terms["loss_emb"] = lam * f.sum() / (2.0 * n)
  if on["pl"]:
    f = contrastive(h, h[samples["pl_pos"]], h[samples["pl_neg"]], margin)
    terms["loss_pl"] = lam * torch.where(pl_valid, f, zero).sum() / (2.0 * n_pl)
  if on["cls"]:
    prob = torch.sigmoid(outputs["class_logits"].float())
    sq = ((prob - labels) ** 2).sum(-1)
    terms["loss_cls"] = torch.where(cls_mask, sq, zero).sum() / (2.0 * n_lab)
  loss = terms["loss_rank"] + terms["loss_emb"] + terms["loss_pl"] + terms["loss_cls"]
  aux = dict(terms)
  aux.update(
    n_triplets=counts[0], n_pl_pairs=counts[1], n_labeled=counts[2], graph_purity=pur_hit.sum() / n_pur
  )
  return loss, aux


def ssdh_loss(
  outputs: Mapping[str, Tensor], labels: Tensor, labeled: Tensor, cfg: Any, *, bits: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
  """SSDH loss over the whole batch (all rows are anchors), float32 whatever the autocast state."""
  with torch.autocast(outputs["codes"].device.type, enabled=False):
    samples = ssdh_sample(outputs, labels, labeled, cfg, bits=bits)
    return ssdh_terms(outputs, labels, labeled, samples, cfg)
