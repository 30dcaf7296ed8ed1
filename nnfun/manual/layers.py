"""Hand-written forward and backward rules of the layers (the reference path).

Contract, shared by every layer and activation:

- ``<name>_forward(params, x, **hyper) -> (out, cache)``: ``params`` is the layer's dict
  (``{}`` for parameterless layers), hyperparameters are keyword-only, and ``cache`` holds
  what the backward pass needs.
- ``<name>_backward(dout, cache) -> (dx, dparams)``: ``dout`` has out's shape, ``dx`` has x's
  shape, and ``dparams`` mirrors ``params`` key for key, so it compares with the autodiff
  gradient tree directly.

Layout is batch first and channels last: dense (N, D), conv1d (N, L, C), conv2d (N, H, W, C),
``x @ w``. Convolutions and pools use im2col (`nnfun.manual._windows`): the KH * KW strided
slices of the padded input are stacked into patches, a convolution is one matmul with the
kernel reshaped to (KH * KW * C_in, C_out), a pool is a reduction over the patch axis, and the
backward pass adds patch gradients back where they were read from (col2im). "SAME" padding is
XLA's: out = ceil(in / stride), total padding max((out - 1) * stride + k - in, 0), the smaller
half first. The 1-D layers are the 2-D ones on a unit height. All activations of
`nnfun.manual.activations` are re-exported here as layers.

Caches are frozen dataclasses registered as pytrees: arrays are data fields, Python values (the
window geometry, an input shape, whether the layer has a bias) are meta fields, static under
`jax.jit` and `jax.vmap`. `RULES` maps every layer and activation name to its
`Rule(forward, backward)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nnfun.manual import _windows
from nnfun.manual._checks import (
    check_dim,
    check_keys,
    check_ndim,
    check_no_params,
    check_shape,
    int_tuple,
)
from nnfun.manual._windows import Window
from nnfun.manual.activations import (  # re-exported: activations are layers
    EmptyCache,
    InputCache,
    OutputCache,
    SlopeCache,
    SoftmaxCache,
    elu_backward,
    elu_forward,
    heaviside_backward,
    heaviside_forward,
    identity_backward,
    identity_forward,
    leaky_relu_backward,
    leaky_relu_forward,
    log_softmax_backward,
    log_softmax_forward,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    sign_backward,
    sign_forward,
    softmax_backward,
    softmax_forward,
    softplus_backward,
    softplus_forward,
    step_backward,
    step_forward,
    tanh_backward,
    tanh_forward,
)
from nnfun.manual.recurrent import (
    gaussian_noise_backward,
    gaussian_noise_forward,
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    reshape_backward,
    reshape_forward,
    rnn_backward,
    rnn_forward,
)

Array = jax.Array
Params = dict[str, Array]


class Rule(NamedTuple):
    """A hand-written rule: the forward, which returns its value and a cache, and the backward,
    which turns the upstream gradient and that cache into the gradients of the inputs.

    Attributes:
      forward: layers ``(params, x, **hyper) -> (out, cache)``; losses
        ``(pred, target, **hyper) -> (loss, cache)``; regularisers
        ``(params, **hyper) -> (penalty, cache)``.
      backward: layers ``(dout, cache) -> (dx, dparams)``; losses ``(dloss, cache) -> dpred``;
        regularisers ``(dout, cache) -> dparams``.
    """

    forward: Callable[..., tuple[Array, Any]]
    backward: Callable[..., Any]


# --------------------------------------------------------------------------- dense


@partial(jax.tree_util.register_dataclass, data_fields=["x", "w"], meta_fields=["has_bias"])
@dataclasses.dataclass(frozen=True)
class DenseCache:
    """Cache of `dense_forward`.

    Attributes:
      x: (N, D) input.
      w: (D, M) weights.
      has_bias: bool, whether params has "b".
    """

    x: Array
    w: Array
    has_bias: bool


def dense_forward(params: Params, x: Array) -> tuple[Array, DenseCache]:
    """Affine map out = x @ w + b.

    Args:
      params: {"w": (D, M)} and optionally "b": (M,).
      x: (N, D).

    Returns:
      (out (N, M), cache).
    """
    check_keys("dense", params, {"w"}, {"b"})
    w, b = params["w"], params.get("b")
    check_ndim("dense", "x", x, 2, "(N, D)")
    check_ndim("dense", "w", w, 2, "(D, M)")
    check_dim("dense", "x", x, 1, w.shape[0], f"D of w (shape {tuple(w.shape)})")
    out = x @ w
    if b is not None:
        check_shape("dense", "b", b, w.shape[1:])
        out = out + b[None, :]
    return out, DenseCache(x, w, b is not None)


def dense_backward(dout: Array, cache: DenseCache) -> tuple[Array, Params]:
    """dx = dout @ w^T, dw = x^T @ dout, db = sum over the batch of dout.

    Args:
      dout: (N, M) upstream gradient.
      cache: from `dense_forward`.

    Returns:
      (dx (N, D), {"w": dw (D, M)} plus "b": db (M,) when the layer has a bias).
    """
    dparams = {"w": cache.x.T @ dout}
    if cache.has_bias:
        dparams["b"] = jnp.sum(dout, axis=0)
    return dout @ cache.w.T, dparams


# --------------------------------------------------------------------------- convolutions


@partial(jax.tree_util.register_dataclass, data_fields=["cols", "w"],
         meta_fields=["window", "has_bias"])
@dataclasses.dataclass(frozen=True)
class ConvCache:
    """Cache of `conv2d_forward` (and of `conv1d_forward`, on a unit height).

    Attributes:
      cols: (N * OH * OW, KH * KW * C_in) im2col patches of the padded input.
      w: (KH, KW, C_in, C_out) kernel.
      window: Window, the window geometry.
      has_bias: bool, whether params has "b".
    """

    cols: Array
    w: Array
    window: Window
    has_bias: bool


def _conv_checks(layer: str, params: Params, x: Array, rank: int) -> None:
    layout, w_layout = ("(N, H, W, C)", "(KH, KW, C_in, C_out)") if rank == 2 else (
        "(N, L, C)", "(K, C_in, C_out)")
    check_keys(layer, params, {"w"}, {"b"})
    w = params["w"]
    check_ndim(layer, "x", x, rank + 2, layout)
    check_ndim(layer, "w", w, rank + 2, w_layout)
    check_dim(layer, "x", x, -1, w.shape[-2], f"C_in of w (shape {tuple(w.shape)})")
    if "b" in params:
        check_shape(layer, "b", params["b"], w.shape[-1:])


def _conv(layer: str, w: Array, b: Array | None, x: Array, stride: tuple[int, int],
          padding: str) -> tuple[Array, ConvCache]:
    """im2col convolution of x (N, H, W, C_in) with w (KH, KW, C_in, C_out)."""
    g = _windows.make_window(layer, x.shape[1:3], w.shape[:2], stride, padding)
    cols = _windows.patches(x, g)
    cols = cols.reshape(-1, cols.shape[3] * cols.shape[4])
    out = cols @ w.reshape(-1, w.shape[3])
    if b is not None:
        out = out + b[None, :]
    return out.reshape(x.shape[0], *g.out_hw, w.shape[3]), ConvCache(cols, w, g, b is not None)


def conv2d_forward(params: Params, x: Array, *, stride: int | tuple[int, int] = 1,
                   padding: str = "SAME") -> tuple[Array, ConvCache]:
    """2-D cross-correlation (NHWC input, HWIO kernel), as ``lax.conv_general_dilated``.

    out[n, oh, ow, :] = sum_{i, j, c} xpad[n, oh * SH + i, ow * SW + j, c] * w[i, j, c, :] + b,
    computed as patches (N * OH * OW, KH * KW * C_in) @ w reshaped (KH * KW * C_in, C_out).

    Args:
      params: {"w": (KH, KW, C_in, C_out)} and optionally "b": (C_out,).
      x: (N, H, W, C_in).
      stride: int or (SH, SW).
      padding: "SAME" (XLA's) or "VALID".

    Returns:
      (out (N, OH, OW, C_out), cache).
    """
    _conv_checks("conv2d", params, x, 2)
    stride = int_tuple("conv2d", "stride", stride, 2)
    return _conv("conv2d", params["w"], params.get("b"), x, stride, padding)


def conv2d_backward(dout: Array, cache: ConvCache) -> tuple[Array, Params]:
    """With dout reshaped to (N * OH * OW, C_out) and W = w reshaped (KH * KW * C_in, C_out):
    dw = cols^T @ dout, db = sum of dout over N, OH and OW, and dx = col2im(dout @ W^T): every
    patch gradient is added back to the input positions it was read from (overlapping windows
    accumulate), then the padding is cropped off.

    Args:
      dout: (N, OH, OW, C_out) upstream gradient.
      cache: from `conv2d_forward`.

    Returns:
      (dx (N, H, W, C_in), {"w": dw (KH, KW, C_in, C_out)} plus "b": db (C_out,) with a bias).
    """
    w, g = cache.w, cache.window
    dout2 = dout.reshape(-1, w.shape[3])
    dparams = {"w": (cache.cols.T @ dout2).reshape(w.shape)}
    if cache.has_bias:
        dparams["b"] = jnp.sum(dout, axis=(0, 1, 2))
    dcols = (dout2 @ w.reshape(-1, w.shape[3]).T).reshape(
        dout.shape[0], *g.out_hw, g.kernel[0] * g.kernel[1], w.shape[2])
    return _windows.fold(dcols, g), dparams


def conv1d_forward(params: Params, x: Array, *, stride: int | tuple[int] = 1,
                   padding: str = "SAME") -> tuple[Array, ConvCache]:
    """1-D cross-correlation, as ``lax.conv_general_dilated`` with ("NWC", "WIO", "NWC"):
    out[n, t, :] = sum_{k, c} xpad[n, t * stride + k, c] * w[k, c, :] + b.

    Args:
      params: {"w": (K, C_in, C_out)} and optionally "b": (C_out,).
      x: (N, L, C_in).
      stride: int (or a 1-tuple).
      padding: "SAME" (XLA's) or "VALID".

    Returns:
      (out (N, OL, C_out), cache of the equivalent conv2d on a unit height).
    """
    _conv_checks("conv1d", params, x, 1)
    (s,) = int_tuple("conv1d", "stride", stride, 1)
    out, cache = _conv("conv1d", params["w"][None], params.get("b"), x[:, None], (1, s), padding)
    return out[:, 0], cache


def conv1d_backward(dout: Array, cache: ConvCache) -> tuple[Array, Params]:
    """The conv2d rules on a unit height: dw = cols^T @ dout, db = sum over N, OL of dout,
    dx = col2im(dout @ W^T).

    Args:
      dout: (N, OL, C_out) upstream gradient.
      cache: from `conv1d_forward`.

    Returns:
      (dx (N, L, C_in), {"w": dw (K, C_in, C_out)} plus "b": db (C_out,) with a bias).
    """
    dx, dparams = conv2d_backward(dout[:, None], cache)
    dparams["w"] = dparams["w"][0]
    return dx[:, 0], dparams


# --------------------------------------------------------------------------- pooling


@partial(jax.tree_util.register_dataclass, data_fields=["share"], meta_fields=["window"])
@dataclasses.dataclass(frozen=True)
class MaxPoolCache:
    """Cache of `max_pool2d_forward` (and `max_pool1d_forward`, on a unit height).

    Attributes:
      share: (N, OH, OW, KH * KW, C), each window element's share of its window's gradient
        (patches layout): 1 / (number of tied maxima) on the maxima, 0 elsewhere.
      window: Window, the window geometry.
    """

    share: Array
    window: Window


@partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["window"])
@dataclasses.dataclass(frozen=True)
class AvgPoolCache:
    """Cache of `avg_pool2d_forward` (and `avg_pool1d_forward`, on a unit height).

    Attributes:
      window: Window, the window geometry (the counts of real elements follow from it).
    """

    window: Window


def _pool_window(layer: str, x: Array, rank: int, window: int | tuple[int, ...],
                 stride: int | tuple[int, ...] | None, padding: str) -> Window:
    """Geometry of a pooling window over x (N, H, W, C), for a rank-1 or rank-2 layer."""
    kernel = int_tuple(layer, "window", window, rank)
    strides = kernel if stride is None else int_tuple(layer, "stride", stride, rank)
    if rank == 1:
        kernel, strides = (1, *kernel), (1, *strides)
    return _windows.make_window(layer, x.shape[1:3], kernel, strides, padding)


def _max_pool(x: Array, g: Window) -> tuple[Array, MaxPoolCache]:
    """Max over the patch axis of x's (-inf padded) patches, and each element's share."""
    out, share = _windows.max_and_share(_windows.patches(x, g, fill=-jnp.inf), axis=3)
    return out, MaxPoolCache(share, g)


def _avg_pool(x: Array, g: Window) -> tuple[Array, AvgPoolCache]:
    """Sum over the patch axis of x's (zero padded) patches, over each window's real count."""
    counts = jnp.asarray(_windows.real_counts(g), x.dtype)[None, :, :, None]
    return jnp.sum(_windows.patches(x, g), axis=3) / counts, AvgPoolCache(g)


def max_pool2d_forward(params: Params, x: Array, *, window: int | tuple[int, int] = 2,
                       stride: int | tuple[int, int] | None = None,
                       padding: str = "VALID") -> tuple[Array, MaxPoolCache]:
    """Max over each window; "SAME" pads with -inf, so padding never wins.

    Args:
      params: {}.
      x: (N, H, W, C).
      window: int or (KH, KW).
      stride: int or (SH, SW); None means the window.
      padding: "VALID" or "SAME" (XLA's).

    Returns:
      (out (N, OH, OW, C), cache).
    """
    check_no_params("max_pool2d", params)
    check_ndim("max_pool2d", "x", x, 4, "(N, H, W, C)")
    return _max_pool(x, _pool_window("max_pool2d", x, 2, window, stride, padding))


def max_pool2d_backward(dout: Array, cache: MaxPoolCache) -> tuple[Array, Params]:
    """The max gate routes the gradient: each window's dout goes to its maximum, split equally
    among tied maxima (dpatch = share * dout, share = [x == max] / count); overlapping windows
    accumulate when the patch gradients are added back (col2im).

    Args:
      dout: (N, OH, OW, C) upstream gradient.
      cache: from `max_pool2d_forward`.

    Returns:
      (dx (N, H, W, C), {}).
    """
    return _windows.fold(cache.share * dout[:, :, :, None, :], cache.window), {}


def avg_pool2d_forward(params: Params, x: Array, *, window: int | tuple[int, int] = 2,
                       stride: int | tuple[int, int] | None = None,
                       padding: str = "VALID") -> tuple[Array, AvgPoolCache]:
    """Mean over the non-padding elements of each window (TensorFlow's "SAME" semantics).

    Args:
      params: {}.
      x: (N, H, W, C).
      window: int or (KH, KW).
      stride: int or (SH, SW); None means the window.
      padding: "VALID" or "SAME" (XLA's).

    Returns:
      (out (N, OH, OW, C), cache).
    """
    check_no_params("avg_pool2d", params)
    check_ndim("avg_pool2d", "x", x, 4, "(N, H, W, C)")
    return _avg_pool(x, _pool_window("avg_pool2d", x, 2, window, stride, padding))


def avg_pool2d_backward(dout: Array, cache: AvgPoolCache) -> tuple[Array, Params]:
    """Each real element of a window receives dout / count (count = the window's number of
    non-padding elements); overlapping windows accumulate (col2im).

    Args:
      dout: (N, OH, OW, C) upstream gradient.
      cache: from `avg_pool2d_forward`.

    Returns:
      (dx (N, H, W, C), {}).
    """
    g = cache.window
    counts = jnp.asarray(_windows.real_counts(g), dout.dtype)[None, :, :, None]
    per_window = (dout / counts)[:, :, :, None, :]
    shape = (*dout.shape[:3], g.kernel[0] * g.kernel[1], dout.shape[3])
    return _windows.fold(jnp.broadcast_to(per_window, shape), g), {}


def max_pool1d_forward(params: Params, x: Array, *, window: int = 2, stride: int | None = None,
                       padding: str = "VALID") -> tuple[Array, MaxPoolCache]:
    """Max over each window of a sequence (`max_pool2d_forward` on a unit height).

    Args:
      params: {}.
      x: (N, L, C).
      window: int K.
      stride: int; None means the window.
      padding: "VALID" or "SAME" (XLA's).

    Returns:
      (out (N, OL, C), cache).
    """
    check_no_params("max_pool1d", params)
    check_ndim("max_pool1d", "x", x, 3, "(N, L, C)")
    g = _pool_window("max_pool1d", x[:, None], 1, window, stride, padding)
    out, cache = _max_pool(x[:, None], g)
    return out[:, 0], cache


def max_pool1d_backward(dout: Array, cache: MaxPoolCache) -> tuple[Array, Params]:
    """As `max_pool2d_backward`: dout goes to each window's maximum, split equally at ties.

    Args:
      dout: (N, OL, C) upstream gradient.
      cache: from `max_pool1d_forward`.

    Returns:
      (dx (N, L, C), {}).
    """
    dx, dparams = max_pool2d_backward(dout[:, None], cache)
    return dx[:, 0], dparams


def avg_pool1d_forward(params: Params, x: Array, *, window: int = 2, stride: int | None = None,
                       padding: str = "VALID") -> tuple[Array, AvgPoolCache]:
    """Mean over the non-padding elements of each window of a sequence.

    Args:
      params: {}.
      x: (N, L, C).
      window: int K.
      stride: int; None means the window.
      padding: "VALID" or "SAME" (XLA's).

    Returns:
      (out (N, OL, C), cache).
    """
    check_no_params("avg_pool1d", params)
    check_ndim("avg_pool1d", "x", x, 3, "(N, L, C)")
    out, cache = _avg_pool(x[:, None], _pool_window("avg_pool1d", x[:, None], 1, window,
                                                    stride, padding))
    return out[:, 0], cache


def avg_pool1d_backward(dout: Array, cache: AvgPoolCache) -> tuple[Array, Params]:
    """As `avg_pool2d_backward`: each real element of a window receives dout / count.

    Args:
      dout: (N, OL, C) upstream gradient.
      cache: from `avg_pool1d_forward`.

    Returns:
      (dx (N, L, C), {}).
    """
    dx, dparams = avg_pool2d_backward(dout[:, None], cache)
    return dx[:, 0], dparams


# --------------------------------------------------------------------------- the rest


@partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["in_shape"])
@dataclasses.dataclass(frozen=True)
class FlattenCache:
    """Cache of `flatten_forward`.

    Attributes:
      in_shape: tuple of ints, the input shape (N, ...).
    """

    in_shape: tuple[int, ...]


def flatten_forward(params: Params, x: Array) -> tuple[Array, FlattenCache]:
    """(N, ...) -> (N, prod(...)).

    Args:
      params: {}.
      x: (N, ...).

    Returns:
      (out (N, prod(...)), cache).
    """
    check_no_params("flatten", params)
    return x.reshape(x.shape[0], -1), FlattenCache(tuple(x.shape))


def flatten_backward(dout: Array, cache: FlattenCache) -> tuple[Array, Params]:
    """dx = dout reshaped back to the input shape.

    Args:
      dout: (N, prod(...)) upstream gradient.
      cache: from `flatten_forward`.

    Returns:
      (dx (N, ...), {}).
    """
    return dout.reshape(cache.in_shape), {}


@partial(jax.tree_util.register_dataclass, data_fields=["mask"], meta_fields=["keep"])
@dataclasses.dataclass(frozen=True)
class DropoutCache:
    """Cache of `dropout_forward`.

    Attributes:
      mask: x's shape, True where the unit is kept; None when dropout is the identity.
      keep: float, the keep probability 1 - drop_rate.
    """

    mask: Array | None
    keep: float


def dropout_forward(params: Params, x: Array, *, drop_rate: float, key: Array | None = None,
                    train: bool = True) -> tuple[Array, DropoutCache]:
    """Inverted dropout: out = x / (1 - drop_rate) where kept, else 0, with the keep mask
    ``jax.random.bernoulli(key, 1 - drop_rate, x.shape)``. The identity when ``train`` is False
    or ``drop_rate`` is 0.

    Args:
      params: {}.
      x: any shape (N, ...).
      drop_rate: probability of zeroing a unit, in [0, 1).
      key: PRNG key, required when training with drop_rate > 0.
      train: whether dropout is active.

    Returns:
      (out of x's shape, cache).
    """
    check_no_params("dropout", params)
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"dropout: drop_rate must be in [0, 1), got {drop_rate!r}")
    if not train or drop_rate == 0.0:
        return x, DropoutCache(None, 1.0)
    if key is None:
        raise ValueError("dropout: key is required when train=True and drop_rate > 0, got None")
    keep = 1.0 - drop_rate
    mask = jax.random.bernoulli(key, keep, x.shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x)), DropoutCache(mask, keep)


def dropout_backward(dout: Array, cache: DropoutCache) -> tuple[Array, Params]:
    """dx = dout / (1 - drop_rate) where the unit was kept, else 0 (dx = dout when inactive).

    Args:
      dout: upstream gradient, x's shape.
      cache: from `dropout_forward`.

    Returns:
      (dx of x's shape, {}).
    """
    if cache.mask is None:
        return dout, {}
    return jnp.where(cache.mask, dout / cache.keep, jnp.zeros_like(dout)), {}


@partial(jax.tree_util.register_dataclass, data_fields=["x", "w", "share"],
         meta_fields=["has_bias"])
@dataclasses.dataclass(frozen=True)
class MaxoutCache:
    """Cache of `maxout_forward`.

    Attributes:
      x: (N, D) input.
      w: (D, M, P) weights.
      share: (N, M, P) each piece's share of its unit's gradient: 1 / (number of tied maxima)
        on the maximal pieces, 0 elsewhere.
      has_bias: bool, whether params has "b".
    """

    x: Array
    w: Array
    share: Array
    has_bias: bool


def maxout_forward(params: Params, x: Array) -> tuple[Array, MaxoutCache]:
    """Maxout: z = einsum("nd,dmp->nmp", x, w) + b, out = max over the P pieces of z.

    Args:
      params: {"w": (D, M, P), "b": (M, P)} (the bias may be left out).
      x: (N, D).

    Returns:
      (out (N, M), cache).
    """
    check_keys("maxout", params, {"w"}, {"b"})
    w = params["w"]
    check_ndim("maxout", "x", x, 2, "(N, D)")
    check_ndim("maxout", "w", w, 3, "(D, M, P)")
    check_dim("maxout", "x", x, 1, w.shape[0], f"D of w (shape {tuple(w.shape)})")
    z = jnp.einsum("nd,dmp->nmp", x, w)
    if "b" in params:
        check_shape("maxout", "b", params["b"], w.shape[1:])
        z = z + params["b"][None]
    out, share = _windows.max_and_share(z, axis=-1)
    return out, MaxoutCache(x, w, share, "b" in params)


def maxout_backward(dout: Array, cache: MaxoutCache) -> tuple[Array, Params]:
    """dz = share * dout (the max routes dout to the maximal piece, split equally at ties);
    then dx = einsum("nmp,dmp->nd", dz, w), dw = einsum("nd,nmp->dmp", x, dz),
    db = sum over the batch of dz.

    Args:
      dout: (N, M) upstream gradient.
      cache: from `maxout_forward`.

    Returns:
      (dx (N, D), {"w": dw (D, M, P), "b": db (M, P)}; no "b" when the layer has none).
    """
    dz = cache.share * dout[:, :, None]
    dparams = {"w": jnp.einsum("nd,nmp->dmp", cache.x, dz)}
    if cache.has_bias:
        dparams["b"] = jnp.sum(dz, axis=0)
    return jnp.einsum("nmp,dmp->nd", dz, cache.w), dparams


# --------------------------------------------------------------------------- the table


RULES: dict[str, Rule] = {
    "dense": Rule(dense_forward, dense_backward),
    "conv1d": Rule(conv1d_forward, conv1d_backward),
    "conv2d": Rule(conv2d_forward, conv2d_backward),
    "max_pool1d": Rule(max_pool1d_forward, max_pool1d_backward),
    "max_pool2d": Rule(max_pool2d_forward, max_pool2d_backward),
    "avg_pool1d": Rule(avg_pool1d_forward, avg_pool1d_backward),
    "avg_pool2d": Rule(avg_pool2d_forward, avg_pool2d_backward),
    "flatten": Rule(flatten_forward, flatten_backward),
    "dropout": Rule(dropout_forward, dropout_backward),
    "maxout": Rule(maxout_forward, maxout_backward),
    "identity": Rule(identity_forward, identity_backward),
    "step": Rule(step_forward, step_backward),
    "heaviside": Rule(heaviside_forward, heaviside_backward),
    "sign": Rule(sign_forward, sign_backward),
    "sigmoid": Rule(sigmoid_forward, sigmoid_backward),
    "tanh": Rule(tanh_forward, tanh_backward),
    "relu": Rule(relu_forward, relu_backward),
    "leaky_relu": Rule(leaky_relu_forward, leaky_relu_backward),
    "elu": Rule(elu_forward, elu_backward),
    "softplus": Rule(softplus_forward, softplus_backward),
    "softmax": Rule(softmax_forward, softmax_backward),
    "log_softmax": Rule(log_softmax_forward, log_softmax_backward),
    "rnn": Rule(rnn_forward, rnn_backward),
    "lstm": Rule(lstm_forward, lstm_backward),
    "gru": Rule(gru_forward, gru_backward),
    "reshape": Rule(reshape_forward, reshape_backward),
    "gaussian_noise": Rule(gaussian_noise_forward, gaussian_noise_backward),
}
"""Every layer and activation of the reference path: name -> Rule(forward, backward)."""

__all__ = ["Rule", "RULES", "DenseCache", "ConvCache", "MaxPoolCache", "AvgPoolCache",
           "FlattenCache", "DropoutCache", "MaxoutCache", "EmptyCache", "InputCache",
           "OutputCache", "SlopeCache", "SoftmaxCache",
           *(f"{name}_{part}" for name in RULES for part in ("forward", "backward"))]
