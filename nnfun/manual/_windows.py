"""Sliding-window machinery shared by convolution and pooling: geometry, im2col and col2im.

Everything is 2-D on NHWC arrays; the 1-D layers insert a unit height. A window of size
(KH, KW) with stride (SH, SW) visits the padded input at offsets (oh * SH + i, ow * SW + j).

- `patches` (im2col) gathers the KH * KW strided slices of the padded input into
  (N, OH, OW, KH * KW, C): slot ``i * KW + j`` holds the window element at offset (i, j).
- `fold` (col2im) is its adjoint: it adds each slot back onto the padded input at the
  positions it was read from (overlapping windows accumulate) and crops the padding, giving
  (N, H, W, C).
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from nnfun.manual._checks import check_choice

Array = jax.Array
PADDINGS = ("SAME", "VALID")


@dataclasses.dataclass(frozen=True)
class Window:
    """Geometry of a 2-D sliding window over an (N, H, W, C) input (hashable, so caches carry
    it as static metadata).

    Attributes:
      in_hw: (H, W), the unpadded input size.
      kernel: (KH, KW).
      stride: (SH, SW).
      pads: ((top, bottom), (left, right)) padding.
      out_hw: (OH, OW).
    """

    in_hw: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]
    out_hw: tuple[int, int]


def _pads_1d(size: int, k: int, stride: int, padding: str) -> tuple[int, int]:
    """(lo, hi) padding of one dimension, as XLA: SAME pads to out = ceil(size / stride)."""
    if padding == "VALID":
        return 0, 0
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def make_window(layer: str, in_hw: tuple[int, int], kernel: tuple[int, int],
                stride: tuple[int, int], padding: str) -> Window:
    """The geometry of `kernel` sliding over `in_hw`; ValueError if no window fits."""
    check_choice(layer, "padding", padding, PADDINGS)
    pads = tuple(_pads_1d(n, k, s, padding) for n, k, s in zip(in_hw, kernel, stride))
    out = tuple((n + lo + hi - k) // s + 1
                for n, (lo, hi), k, s in zip(in_hw, pads, kernel, stride))
    if min(out) < 1:
        raise ValueError(f"{layer}: window {tuple(kernel)} does not fit the input's spatial size "
                         f"{tuple(in_hw)} with padding {padding!r}")
    return Window(tuple(in_hw), tuple(kernel), tuple(stride), pads, out)


def offsets(g: Window) -> list[tuple[int, int]]:
    """The kernel offsets (i, j) in slot order: slot ``i * KW + j``."""
    return list(itertools.product(range(g.kernel[0]), range(g.kernel[1])))


def pad(x: Array, g: Window, fill: float = 0.0) -> Array:
    """x (N, H, W, C) padded with `fill` to (N, H + top + bottom, W + left + right, C)."""
    return jnp.pad(x, ((0, 0), *g.pads, (0, 0)), constant_values=fill)


def patches(x: Array, g: Window, fill: float = 0.0) -> Array:
    """im2col: pads x (N, H, W, C) with `fill`, returns (N, OH, OW, KH * KW, C).

    Slot (i, j) is the strided slice of the padded input that starts at (i, j) and steps by
    the stride, cut to (OH, OW): the element at offset (i, j) of every window.
    """
    xp = pad(x, g, fill)
    (oh, ow), (sh, sw) = g.out_hw, g.stride
    return jnp.stack([xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
                      for i, j in offsets(g)], axis=3)


def fold(dpatches: Array, g: Window) -> Array:
    """col2im, the adjoint of `patches`: adds slot (i, j) of dpatches (N, OH, OW, KH * KW, C)
    back onto the padded input at the positions it was read from (overlapping windows
    accumulate), then crops the padding; returns (N, H, W, C).
    """
    n, c = dpatches.shape[0], dpatches.shape[-1]
    (oh, ow), (sh, sw) = g.out_hw, g.stride
    (h, w), ((top, bottom), (left, right)) = g.in_hw, g.pads
    dx_pad = jnp.zeros((n, h + top + bottom, w + left + right, c), dpatches.dtype)
    for slot, (i, j) in enumerate(offsets(g)):
        dx_pad = dx_pad.at[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :].add(
            dpatches[:, :, :, slot, :])
    return dx_pad[:, top:top + h, left:left + w, :]


def real_counts(g: Window) -> np.ndarray:
    """(OH, OW) number of non-padding input elements in each window (a static constant)."""
    per_dim = []
    for size, k, s, (lo, _), out in zip(g.in_hw, g.kernel, g.stride, g.pads, g.out_hw):
        start = np.arange(out) * s - lo
        per_dim.append(np.minimum(start + k, size) - np.maximum(start, 0))
    return np.outer(*per_dim)


def max_and_share(z: Array, axis: int | tuple[int, ...]) -> tuple[Array, Array]:
    """Max of z over `axis` (one axis or several), and each element's share of the max's
    gradient.

    The share is 1 / (number of ties) on every element equal to the max and 0 elsewhere, so
    dz = share * dout splits dout equally among tied maxima (the rule of a max reduction).

    Returns:
      (max with the `axis` axes removed, share of z's shape).
    """
    zmax = jnp.max(z, axis=axis)
    hit = (z == jnp.expand_dims(zmax, axis)).astype(z.dtype)
    return zmax, hit / jnp.sum(hit, axis=axis, keepdims=True)
