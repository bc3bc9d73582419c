"""iResNet backbones with the CR-FIQA quality head (Flax linen, NHWC).

The layout is the one of the released CR-FIQA / insightface "iresnet" code (iresnet.py),
written once, as `layer_plan`: each layer's operation, stride, Flax name and released
PyTorch name. The Flax model runs it; crfiqa_jax.serve.torch_import maps released weights
and crfiqa_jax.serve.onnx_graph writes the ONNX graph by walking the same plan:

  stem   conv3x3(3→w0) → BN → PReLU
  stages IBasicBlock × n_i, first block of each stage strided by 2 (112→56→28→14→7)
  head   BN2d → flatten → Dropout(0.4) → Dense(→512) → BN1d = embedding
  qs     Dense(512→1) on the un-normalised embedding = quality (regresses CR)

`IResNet.__call__(x, train)` takes images in [-1, 1], shape [B, H, W, 3], and returns
`(embedding [B, D], quality [B])`. The flatten is in NHWC order (H, W, C); `fc_kernel_order`
permutes the FC weight to and from PyTorch's (C, H, W) order.

Mixed precision (`dtype=jnp.bfloat16`): convolutions, the FC layer, PReLU and the residual
stream run in bf16; parameters and BN running statistics stay float32, and Flax's BatchNorm
computes the batch statistics and the normalisation in float32 before rounding its output
to bf16. The last BN (the embedding) runs and returns float32, so the cosine, logit, loss
and CR-target maths downstream are float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from crfiqa_jax.models.conv import conv_general_dilated, conv_general_dilated_auto, use_matmul_grad

BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # = PyTorch momentum 0.1


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
  if not use_matmul_grad(conv_grad):
    return None
  if conv_grad == "auto":
    return conv_general_dilated_auto
  return conv_general_dilated


class PReLU(nn.Module):
  """Per-channel PReLU, slope initialised to 0.25 like torch.nn.PReLU."""

  @nn.compact
  def __call__(self, x):
    alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.where(x >= 0, x, alpha.astype(x.dtype) * x)


@dataclasses.dataclass(frozen=True)
class Layer:
  """One step of the layer plan.

  op: "conv" (3×3 or 1×1 by `kernel`, padding kernel // 2 on each side, no bias), "bn",
    "prelu", "flatten" (NHWC map → vector; `features` = the map's channels), "dropout",
    "dense" (with bias), or "residual" (`body` plus `shortcut`, the identity when empty).
  flax: the module's name inside its parent (a residual's body and shortcut are inside it).
  torch: the released PyTorch module's full name (insightface iresnet.py's attributes).
  features / kernel / stride: output channels, kernel side, stride of a conv or dense.
  f32: computes in float32 whatever the model's dtype (the embedding BN).
  """

  op: str
  flax: str = ""
  torch: str = ""
  features: int = 0
  kernel: int = 3
  stride: int = 1
  f32: bool = False
  body: tuple = ()
  shortcut: tuple = ()


def layer_plan(stage_sizes: Sequence[int], widths: Sequence[int],
               embedding_dim: int) -> tuple[Layer, ...]:
  """The iResNet up to the embedding, in the released CR-FIQA layout (iresnet.py's IResNet
  and IBasicBlock): Flax names, PyTorch names and operations, in execution order. The quality
  head QUALITY_HEAD follows it, on the embedding."""
  plan = [Layer("conv", "conv1", "conv1", widths[0]), Layer("bn", "bn1", "bn1"),
          Layer("prelu", "prelu", "prelu")]
  for i, (n_blocks, width) in enumerate(zip(stage_sizes, widths)):
    for j in range(n_blocks):
      t = f"layer{i + 1}.{j}."
      stride = 2 if j == 0 else 1  # every stage's first block (layer1's too) is strided
      body = (Layer("bn", "bn1", t + "bn1"), Layer("conv", "conv1", t + "conv1", width),
              Layer("bn", "bn2", t + "bn2"), Layer("prelu", "prelu", t + "prelu"),
              Layer("conv", "conv2", t + "conv2", width, stride=stride),
              Layer("bn", "bn3", t + "bn3"))
      shortcut = (Layer("conv", "downsample_conv", t + "downsample.0", width, 1, stride),
                  Layer("bn", "downsample_bn", t + "downsample.1")) if j == 0 else ()
      plan.append(Layer("residual", f"layer{i + 1}_{j}", t[:-1], body=body, shortcut=shortcut))
  plan += [Layer("bn", "bn2", "bn2"), Layer("flatten", features=widths[-1]),
           Layer("dropout"), Layer("dense", "fc", "fc", embedding_dim),
           Layer("bn", "features", "features", f32=True)]
  return tuple(plan)


QUALITY_HEAD = Layer("dense", "qs", "qs", 1)  # on the un-normalised embedding, in float32


def walk(plan: Sequence[Layer]):
  """Every non-residual layer of `plan` (residuals' bodies and shortcuts included), each
  with its Flax path: [(path tuple, Layer)]."""
  out = []
  for layer in plan:
    if layer.op == "residual":
      out += [((layer.flax, *p), inner) for p, inner in walk(layer.body + layer.shortcut)]
    else:
      out.append(((layer.flax,), layer))
  return out


def normalize(images):
  """uint8 RGB → float32 (x − 127.5) / 127.5, the released code's input scaling (numpy in,
  numpy out; a jax array in, inside jit, fused by XLA into the first convolution)."""
  return (images.astype(np.float32) - 127.5) / 127.5


def torch_padding(kernel: int) -> tuple:
  """PyTorch's symmetric Conv2d(padding=kernel // 2); 'SAME' would pad (0, 1) on stride 2."""
  pad = kernel // 2
  return ((pad, pad), (pad, pad))


def fc_kernel_order(kernel, channels: int, to: str):
  """The FC kernel [H·W·C, D] re-ordered between this model's NHWC flatten, (H, W, C) ("flax"),
  and PyTorch's / ONNX's NCHW flatten, (C, H, W) ("torch")."""
  kernel = np.asarray(kernel)
  side = int(round((kernel.shape[0] / channels) ** 0.5))
  if side * side * channels != kernel.shape[0]:
    raise ValueError(f"fc kernel {kernel.shape} does not flatten a {channels}-channel square map")
  if to == "torch":
    order = kernel.reshape(side, side, channels, -1).transpose(2, 0, 1, 3)
  elif to == "flax":
    order = kernel.reshape(channels, side, side, -1).transpose(1, 2, 0, 3)
  else:
    raise ValueError(f"to must be 'flax' or 'torch', got {to!r}")
  return order.reshape(kernel.shape[0], -1)


def _run(parent: nn.Module, layer: Layer, x, train: bool):
  """Applies one layer of the plan inside `parent`'s compact scope."""
  dtype = jnp.float32 if layer.f32 else parent.dtype
  if layer.op == "conv":
    return nn.Conv(layer.features, (layer.kernel,) * 2, strides=layer.stride,
                   padding=torch_padding(layer.kernel), use_bias=False, kernel_init=_conv_init,
                   dtype=dtype, conv_general_dilated=_conv_fn(parent.conv_grad),
                   name=layer.flax)(x)
  if layer.op == "bn":
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                        dtype=dtype, name=layer.flax)(x)
  if layer.op == "prelu":
    return PReLU(name=layer.flax)(x)
  if layer.op == "flatten":
    return x.reshape(x.shape[0], -1)  # (H, W, C) order
  if layer.op == "dropout":
    return nn.Dropout(parent.dropout, deterministic=not train)(x)
  if layer.op == "dense":
    init = _torch_linear_init(x.shape[-1])
    return nn.Dense(layer.features, dtype=dtype, kernel_init=init, bias_init=init,
                    name=layer.flax)(x)
  if layer.op == "residual":
    return _Residual(layer.body, layer.shortcut, dtype=parent.dtype, conv_grad=parent.conv_grad,
                     name=layer.flax)(x, train)
  raise ValueError(f"unknown layer op {layer.op!r}")


class _Residual(nn.Module):
  """body(x) + shortcut(x) (identity when the shortcut is empty); no final activation."""

  body: tuple
  shortcut: tuple
  dtype: jnp.dtype = jnp.float32
  conv_grad: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    y = x
    for layer in self.body:
      y = _run(self, layer, y, train)
    for layer in self.shortcut:
      x = _run(self, layer, x, train)
    return y + x


class IResNet(nn.Module):
  """iResNet FR backbone returning (embedding, quality), built from `layer_plan`.

  Attributes:
    stage_sizes: residual blocks per stage, e.g. (3, 4, 14, 3) for iResNet50.
    widths: channels per stage; the stem has widths[0] channels.
    embedding_dim: size of the face embedding (512 in the paper).
    dropout: dropout rate before the FC layer in training (0.4 in the released code).
    dtype: computation dtype (parameters stay float32).
    conv_grad: how convolution weight gradients are computed: "xla" (XLA's own), "matmul"
      (a matrix product per kernel offset, crfiqa_jax.models.conv; faster on XLA:CPU)
      or "auto" (matmul on the CPU backend, XLA elsewhere). Outputs and gradients agree to
      float rounding; parameters and their names are the same.
  """

  stage_sizes: Sequence[int]
  widths: Sequence[int] = (64, 128, 256, 512)
  embedding_dim: int = 512
  dropout: float = 0.4
  dtype: jnp.dtype = jnp.float32
  conv_grad: str = "auto"

  def plan(self) -> tuple[Layer, ...]:
    return layer_plan(self.stage_sizes, self.widths, self.embedding_dim)

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"IResNet expects NHWC RGB images [B, H, W, 3], got shape {x.shape}")
    x = x.astype(self.dtype)
    for layer in self.plan():
      x = _run(self, layer, x, train)
    # float32 from here on: the embedding feeds the cosine/ArcFace/CR maths.
    emb = x.astype(jnp.float32)
    head = QUALITY_HEAD
    init = _torch_linear_init(emb.shape[-1])
    quality = nn.Dense(head.features, kernel_init=init, bias_init=init, name=head.flax)(emb)
    return emb, quality[:, 0]


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


def create_model(name: str, **kwargs) -> IResNet:
  """Returns the named backbone; kwargs override its attributes (e.g. dtype, embedding_dim)."""
  if name not in ARCHS:
    raise ValueError(f"Unknown model {name!r}; choose one of {sorted(ARCHS)}")
  return ARCHS[name](**kwargs)
