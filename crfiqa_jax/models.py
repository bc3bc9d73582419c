"""iResNet backbones with the CR-FIQA quality head (Flax linen, NHWC).

The layout is the one of the released CR-FIQA / insightface "iresnet" code, so that
released PyTorch weights map one-to-one onto these modules (see `crfiqa_jax.convert`):

  stem   conv3x3(3→w0) → BN → PReLU
  stages IBasicBlock × n_i, first block of each stage strided by 2 (112→56→28→14→7)
  head   BN2d → flatten → Dropout(0.4) → Dense(→512) → BN1d = embedding
  qs     Dense(512→1) on the un-normalised embedding = quality (regresses CR)

`IResNet.__call__(x, train)` takes images in [-1, 1], shape [B, H, W, 3], and returns
`(embedding [B, D], quality [B])`. The flatten is in NHWC order (H, W, C); the converter
permutes PyTorch's (C, H, W)-ordered FC weight accordingly.

Mixed precision (`dtype=jnp.bfloat16`): convolutions, the FC layer, PReLU and the residual
stream run in bf16; parameters and BN running statistics stay float32, and Flax's BatchNorm
computes the batch statistics and the normalisation in float32 before rounding its output
to bf16. The last BN (the embedding) runs and returns float32, so the cosine, logit, loss
and CR-target maths downstream are float32.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from crfiqa_jax import conv as conv_lib

BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # = PyTorch momentum 0.1
_PAD1 = ((1, 1), (1, 1))  # PyTorch's symmetric padding; 'SAME' would pad (0, 1) on stride 2


def _conv_init(key, shape, dtype=jnp.float32):
  # The released code initialises convs with N(0, 0.1).
  return 0.1 * jax.random.normal(key, shape, dtype)


def _torch_linear_init(fan_in: int):
  # torch.nn.Linear's default for weight and bias: U(-1/√fan_in, 1/√fan_in).
  bound = fan_in ** -0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _conv_fn(conv_grad: str):
  """The conv_general_dilated that nn.Conv should use (None = lax's)."""
  if not conv_lib.use_matmul_grad(conv_grad):
    return None
  return conv_lib.conv_general_dilated_auto if conv_grad == "auto" else conv_lib.conv_general_dilated


class PReLU(nn.Module):
  """Per-channel PReLU, slope initialised to 0.25 like torch.nn.PReLU."""

  @nn.compact
  def __call__(self, x):
    alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.where(x >= 0, x, alpha.astype(x.dtype) * x)


class IBasicBlock(nn.Module):
  """BN → conv3x3 → BN → PReLU → conv3x3(stride) → BN, plus shortcut; no final activation."""

  features: int
  strides: int = 1
  downsample: bool = False
  dtype: jnp.dtype = jnp.float32
  conv_grad: str = "auto"
  folded: bool = False     # inference: the BNs after convs are folded in (fold_batchnorm)

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
                             epsilon=BN_EPS, dtype=self.dtype)
    conv = functools.partial(nn.Conv, use_bias=self.folded, kernel_init=_conv_init,
                             dtype=self.dtype, conv_general_dilated=_conv_fn(self.conv_grad))
    # Folded: the BN after each conv is already in that conv's kernel and bias.
    post = (lambda name: lambda y: y) if self.folded else (lambda name: norm(name=name))
    y = norm(name="bn1")(x)
    y = conv(self.features, (3, 3), padding=_PAD1, name="conv1")(y)
    y = post("bn2")(y)
    y = PReLU(name="prelu")(y)
    y = conv(self.features, (3, 3), strides=self.strides, padding=_PAD1, name="conv2")(y)
    y = post("bn3")(y)
    if self.downsample:
      x = conv(self.features, (1, 1), strides=self.strides, padding="VALID",
               name="downsample_conv")(x)
      x = post("downsample_bn")(x)
    return y + x


class IResNet(nn.Module):
  """iResNet FR backbone returning (embedding, quality).

  Attributes:
    stage_sizes: IBasicBlocks per stage, e.g. (3, 4, 14, 3) for iResNet50.
    widths: channels per stage; the stem has widths[0] channels.
    embedding_dim: size of the face embedding (512 in the paper).
    dropout: dropout rate before the FC layer in training (0.4 in the released code).
    dtype: computation dtype (parameters stay float32).
    conv_grad: how convolution weight gradients are computed: "xla" (XLA's own), "matmul"
      (a matrix product per kernel offset, crfiqa_jax.conv; several times faster on XLA:CPU)
      or "auto" (matmul on the CPU backend, XLA elsewhere). Outputs and gradients agree to
      float rounding; parameters and their names are the same.
    folded: inference only, with variables from `fold_batchnorm`: every BatchNorm that
      follows a convolution or the FC layer (and the BN before the FC) is folded into it,
      exact up to float rounding; only each block's first BN (before a zero-padded conv,
      where folding would be wrong at the border) stays.
  """

  stage_sizes: Sequence[int]
  widths: Sequence[int] = (64, 128, 256, 512)
  embedding_dim: int = 512
  dropout: float = 0.4
  dtype: jnp.dtype = jnp.float32
  conv_grad: str = "auto"
  folded: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"IResNet expects NHWC RGB images [B, H, W, 3], got shape {x.shape}")
    if self.folded and train:
      raise ValueError("a folded IResNet (fold_batchnorm) is for inference only")
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
                             epsilon=BN_EPS, dtype=self.dtype)
    post = (lambda name, **kw: lambda y: y) if self.folded else (
        lambda name, **kw: norm(name=name, **kw))
    x = x.astype(self.dtype)
    x = nn.Conv(self.widths[0], (3, 3), padding=_PAD1, use_bias=self.folded,
                kernel_init=_conv_init, dtype=self.dtype,
                conv_general_dilated=_conv_fn(self.conv_grad), name="conv1")(x)
    x = post("bn1")(x)
    x = PReLU(name="prelu")(x)
    for i, (n_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n_blocks):
        # Every stage's first block (layer1's too) is strided and has a projection shortcut.
        x = IBasicBlock(width, strides=2 if j == 0 else 1, downsample=j == 0, dtype=self.dtype,
                        conv_grad=self.conv_grad, folded=self.folded,
                        name=f"layer{i + 1}_{j}")(x, train)
    x = post("bn2")(x)
    x = x.reshape(x.shape[0], -1)  # (H, W, C) order
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    fc_init = _torch_linear_init(x.shape[-1])
    x = nn.Dense(self.embedding_dim, dtype=self.dtype, kernel_init=fc_init, bias_init=fc_init,
                 name="fc")(x)
    # float32 from here on: the embedding feeds the cosine/ArcFace/CR maths.
    emb = post("features", dtype=jnp.float32)(x).astype(jnp.float32)
    qs_init = _torch_linear_init(emb.shape[-1])
    quality = nn.Dense(1, kernel_init=qs_init, bias_init=qs_init, name="qs")(emb)[:, 0]
    return emb, quality


IResNet18 = functools.partial(IResNet, stage_sizes=(2, 2, 2, 2))
IResNet34 = functools.partial(IResNet, stage_sizes=(3, 4, 6, 3))
IResNet50 = functools.partial(IResNet, stage_sizes=(3, 4, 14, 3))
IResNet100 = functools.partial(IResNet, stage_sizes=(3, 13, 30, 3))
# For tests and the CPU demo only: same layout, one block per stage, narrow.
IResNetTiny = functools.partial(IResNet, stage_sizes=(1, 1, 1, 1), widths=(8, 16, 32, 64),
                                embedding_dim=64)

ARCHS = {
    "iresnet18": IResNet18,
    "iresnet34": IResNet34,
    "iresnet50": IResNet50,
    "iresnet100": IResNet100,
    "iresnet_tiny": IResNetTiny,
}


def _bn_affine(stats: dict, params: dict) -> tuple:
  """Eval-mode BatchNorm as y = a·x + b (float64)."""
  a = np.asarray(params["scale"], np.float64) / np.sqrt(
      np.asarray(stats["var"], np.float64) + BN_EPS)
  return a, np.asarray(params["bias"], np.float64) - np.asarray(stats["mean"], np.float64) * a


def _fold_conv(conv_params: dict, bn_params: dict, bn_stats: dict) -> dict:
  """conv (no bias) then BN → one conv with bias: kernel·a over output channels, bias b."""
  a, b = _bn_affine(bn_stats, bn_params)
  kernel = np.asarray(conv_params["kernel"], np.float64) * a
  return {"kernel": kernel.astype(np.float32), "bias": b.astype(np.float32)}


def fold_batchnorm(model: IResNet, variables: dict) -> tuple[IResNet, dict]:
  """(folded model, its variables) computing the same eval-mode function as (model, variables).

  Every conv → BN pair becomes one conv with a bias (the stem, each block's two convs and its
  shortcut), and the head's BN2d → flatten → FC → BN1d becomes one FC: exact algebra, done in
  float64, so outputs agree to float32 rounding. Each block's first BN stays (folding it into
  the following zero-padded conv would be wrong at the border). Saves a pass over every
  such activation at inference. `variables` holds "params" and "batch_stats".
  """
  if model.folded:
    raise ValueError("this model is already folded")
  params = jax.tree.map(np.asarray, dict(variables["params"]))
  stats = jax.tree.map(np.asarray, dict(variables["batch_stats"]))
  out_p, out_s = {}, {}
  for name, sub in params.items():
    if not name.startswith("layer"):
      continue
    sub_s = stats[name]
    block_p = {"bn1": sub["bn1"], "prelu": sub["prelu"],
               "conv1": _fold_conv(sub["conv1"], sub["bn2"], sub_s["bn2"]),
               "conv2": _fold_conv(sub["conv2"], sub["bn3"], sub_s["bn3"])}
    if "downsample_conv" in sub:
      block_p["downsample_conv"] = _fold_conv(sub["downsample_conv"], sub["downsample_bn"],
                                              sub_s["downsample_bn"])
    out_p[name], out_s[name] = block_p, {"bn1": sub_s["bn1"]}
  out_p["conv1"] = _fold_conv(params["conv1"], params["bn1"], stats["bn1"])
  out_p["prelu"] = params["prelu"]
  # Head: fc(a2·x + b2) with a2, b2 per channel, tiled over the (H, W, C)-flattened features;
  # then the embedding BN af·y + bf over its outputs.
  a2, b2 = _bn_affine(stats["bn2"], params["bn2"])
  w = np.asarray(params["fc"]["kernel"], np.float64)
  reps = w.shape[0] // a2.shape[0]
  a2, b2 = np.tile(a2, reps), np.tile(b2, reps)
  af, bf = _bn_affine(stats["features"], params["features"])
  out_p["fc"] = {"kernel": ((a2[:, None] * w) * af).astype(np.float32),
                 "bias": (((b2 @ w) + np.asarray(params["fc"]["bias"], np.float64)) * af
                          + bf).astype(np.float32)}
  out_p["qs"] = params["qs"]
  return model.clone(folded=True), {"params": out_p, "batch_stats": out_s}


def create_model(name: str, **kwargs) -> IResNet:
  """Returns the named backbone; kwargs override its attributes (e.g. dtype, embedding_dim)."""
  if name not in ARCHS:
    raise ValueError(f"Unknown model {name!r}; choose one of {sorted(ARCHS)}")
  return ARCHS[name](**kwargs)
