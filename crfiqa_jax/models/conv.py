"""A convolution whose weight gradient is a matrix product (fast on XLA:CPU).

XLA:CPU can compute the weight gradient of a convolution (∂L/∂kernel) several times slower
than the convolution itself (docs/benchmarks.md, benchmarks/conv.py). That gradient is a
sum over kernel offsets of ordinary matrix products,

    ∂L/∂K[i, j] = Σ_{b,h,w} x_pad[b, s·h + i, s·w + j, :]ᵀ · ∂L/∂y[b, h, w, :],

one [Cin, N]·[N, Cout] product per offset (N = B·H_out·W_out), which XLA:CPU's dot runs near
its matmul peak. `conv_general_dilated` below is a drop-in for `lax.conv_general_dilated`
(flax's `nn.Conv(conv_general_dilated=...)`): the forward and the input gradient are XLA's
own convolution, only the weight gradient is replaced. Cases it does not cover (dilation,
feature groups, layouts other than NHWC/HWIO) fall back to `lax.conv_general_dilated`.

`models.IResNet(conv_grad=...)` chooses it: "matmul" always, "xla" never, "auto" (default)
on the CPU backend only and there only for the convolutions where it pays
(`conv_general_dilated_auto`); on GPU and TPU XLA's own convolution gradients are the fast
path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers, ndim: int) -> bool:
  if ndim != 4:
    return False
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, tuple) and all(isinstance(s, str) for s in dimension_numbers):
    return tuple(dimension_numbers) == _NHWC
  want = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
  return tuple(dimension_numbers) == tuple(want)


def _explicit_padding(padding, x_shape, k_shape, strides):
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(x_shape[1:3], k_shape[:2], strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, strides, padding, precision):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC,
                                  precision=precision)


def _conv_fwd(x, kernel, strides, padding, precision):
  return _conv(x, kernel, strides, padding, precision), (x, kernel)


def _conv_bwd(strides, padding, precision, residuals, dy):
  x, kernel = residuals
  _, vjp_x = jax.vjp(lambda x: lax.conv_general_dilated(
      x, kernel, strides, padding, dimension_numbers=_NHWC, precision=precision), x)
  (dx,) = vjp_x(dy)
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  ho, wo = dy.shape[1], dy.shape[2]
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  dy2 = dy.reshape(-1, cout)
  taps = []
  for i in range(kh):
    for j in range(kw):
      xs = lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + sh * (ho - 1) + 1,
                                        j + sw * (wo - 1) + 1, cin), (1, sh, sw, 1))
      taps.append(jnp.dot(xs.reshape(-1, cin).T, dy2, precision=precision,
                          preferred_element_type=jnp.float32))
  dk = jnp.stack(taps).reshape(kh, kw, cin, cout).astype(kernel.dtype)
  return dx, dk


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` with a matrix-product weight gradient (see module doc)."""
  plain = ((lhs_dilation is None or all(d == 1 for d in lhs_dilation))
           and (rhs_dilation is None or all(d == 1 for d in rhs_dilation))
           and feature_group_count == 1 and preferred_element_type is None
           and _is_nhwc(dimension_numbers, lhs.ndim))
  if not plain:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision,
                                    preferred_element_type=preferred_element_type)
  strides = tuple(int(s) for s in window_strides)
  pads = _explicit_padding(padding, lhs.shape, rhs.shape, strides)
  return _conv(lhs, rhs, strides, pads, precision)


def conv_general_dilated_auto(lhs, rhs, window_strides, padding, lhs_dilation=None,
                              rhs_dilation=None, dimension_numbers=None,
                              feature_group_count=1, precision=None,
                              preferred_element_type=None):
  """`conv_general_dilated` where it pays on XLA:CPU, `lax.conv_general_dilated` elsewhere.

  Measured per layer on this project's CPU (benchmarks/conv.py): the matmul weight gradient
  wins for strided convolutions and for 32 or more input channels, and loses to XLA's own
  for stride-1 convolutions on 8–16 channels (the tiny demo net's first stages).
  """
  fn = conv_general_dilated
  if all(int(s) == 1 for s in window_strides) and rhs.ndim == 4 and rhs.shape[2] < 32:
    fn = lax.conv_general_dilated
  return fn(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
            dimension_numbers, feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type)


def use_matmul_grad(conv_grad: str) -> bool:
  """Whether `conv_grad` ("auto" | "matmul" | "xla") selects the matmul weight gradient."""
  if conv_grad not in ("auto", "matmul", "xla"):
    raise ValueError(f"conv_grad must be 'auto', 'matmul' or 'xla', got {conv_grad!r}")
  if conv_grad == "auto":
    return jax.default_backend() == "cpu"
  return conv_grad == "matmul"
