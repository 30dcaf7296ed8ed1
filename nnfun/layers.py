"""Layers of the autodiff path: `init_<layer>(key, ...) -> params` and
`<layer>_apply(params, x, *, hyper...) -> out`.

Contract, shared with the hand-written reference `nnfun.manual.layers`:

- layout is batch first and channels last: dense (N, D), conv1d (N, L, C), conv2d (N, H, W, C);
- parameters are plain dicts: dense ``{"w": (D, M), "b": (M,)}``, conv2d
  ``{"w": (KH, KW, C_in, C_out), "b": (C_out,)}``,
  conv1d ``{"w": (K, C_in, C_out), "b": (C_out,)}``,
  maxout ``{"w": (D, M, P), "b": (M, P)}``; parameterless layers take ``params={}``;
- hyperparameters are keyword-only;
- every activation of `nnfun.activations` is also a layer, ``<name>_apply(params, x, **kw)``.

Convolutions are `lax.conv_general_dilated`, except on a CPU backend for small convolutions of
narrow inputs (a patch row of prod(K) * C_in values no longer than C_out, patches of at most
`IM2COL_MAX_BYTES`), where one im2col matmul runs faster; the choice is made at trace time
(`_use_im2col`) and both give the same result. Likewise a CPU adds a bias to a tall output as
an outer product (`_add_bias`, `BIAS_MATMUL_MIN_ROWS`), so that its gradient is a matmul.

Padding "SAME" follows XLA: per spatial dimension out = ceil(in / stride), the total padding
max((out - 1) * stride + k - in, 0) split with the smaller half before. Max pooling computes the
maximum over a stacked window axis, so at ties its gradient is split equally among the tied
elements; average pooling divides by the number of non-padding elements in each window.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from nnfun import activations as _act
from nnfun.initializers import get_initializer, split_keys

Array = jax.Array
Params = dict[str, Array]
InitSpec = str | dict[str, Any] | tuple


def _check_ndim(x: Array, ndim: int, layer: str, layout: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{layer}: input x must have shape {layout}, got shape {tuple(x.shape)}")


def _pair(v: int | tuple[int, ...] | list[int], n: int, what: str) -> tuple[int, ...]:
    t = (int(v),) * n if isinstance(v, int) else tuple(int(i) for i in v)
    if len(t) != n or min(t) < 1:
        raise ValueError(f"{what}: expected a positive int or {n} positive ints, got {v!r}")
    return t


def same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
    """XLA's SAME padding (lo, hi) for one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


#: Rows (product of the leading axes) from which a CPU adds a bias as an outer product.
BIAS_MATMUL_MIN_ROWS = 2048


def _add_bias(out: Array, params: Params) -> Array:
    """out + b, with b broadcast explicitly over the leading axes (rank-promotion safe).

    On a CPU backend, for outputs of at least `BIAS_MATMUL_MIN_ROWS` rows (convolutions), the
    broadcast is written as the outer product ones(rows) b^T, the same values, so that the
    bias gradient is the matrix-vector product 1^T dout: XLA:CPU's reduction of a tall
    (rows, C) array ran about 4x slower than that product (LeNet's first layer, 100,352 x 32:
    7.7 vs 2.0 ms). Interleaved A/B of whole train steps on 2 cores: LeNet-like 159 -> 150 ms,
    MNIST-1D CNN 5.8 -> 5.1 ms, digits CNN unchanged.
    """
    if "b" not in params:
        return out
    b = params["b"]
    rows = math.prod(out.shape[:out.ndim - b.ndim])
    if b.ndim == 1 and rows >= BIAS_MATMUL_MIN_ROWS and jax.default_backend() == "cpu":
        return out + (jnp.ones((rows, 1), b.dtype) @ b[None, :]).reshape(out.shape)
    return out + b.reshape((1,) * (out.ndim - b.ndim) + b.shape)


def _check_padding(padding: str, layer: str) -> str:
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"{layer}: padding must be 'SAME' or 'VALID', got {padding!r}")
    return padding


# --------------------------------------------------------------------------- dense


def init_dense(key: Array, in_features: int, out_features: int, *, bias: bool = True,
               w_init: InitSpec = "he_normal", b_init: InitSpec = "zeros",
               dtype: Any = jnp.float32) -> Params:
    """Parameters of a fully connected layer.

    Returns:
      ``{"w": (D, M), "b": (M,)}``; no ``"b"`` when ``bias`` is False.
    """
    kw, kb = split_keys(key)
    params = {"w": get_initializer(w_init)(kw, (in_features, out_features), dtype)}
    if bias:
        params["b"] = get_initializer(b_init)(kb, (out_features,), dtype)
    return params


def dense_apply(params: Params, x: Array) -> Array:
    """Affine map ``x @ w + b``.

    Args:
      params: ``{"w": (D, M)}`` and optionally ``"b": (M,)``.
      x: (N, D).

    Returns:
      (N, M).
    """
    w = params["w"]
    _check_ndim(x, 2, "dense", "(N, D)")
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"dense: input x has {x.shape[1]} features (shape {tuple(x.shape)}), "
                         f"but w expects D={w.shape[0]} (w shape {tuple(w.shape)})")
    return _add_bias(x @ w, params)


# --------------------------------------------------------------------------- convolutions


_CONV_DIMS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}


def _conv_lax(x: Array, w: Array, stride: tuple[int, ...], padding: str) -> Array:
    """Cross-correlation by `lax.conv_general_dilated` (channels last, kernel (*K, C_in, C_out))."""
    return jax.lax.conv_general_dilated(x, w, stride, padding,
                                        dimension_numbers=_CONV_DIMS[x.ndim - 2])


def _conv_geometry(spatial: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
                   padding: str) -> tuple[list[tuple[int, int]], list[int]]:
    """(pads, output sizes) per spatial dimension, as XLA computes them."""
    pads = [same_pads(s, k, st) if padding == "SAME" else (0, 0)
            for s, k, st in zip(spatial, kernel, stride)]
    return pads, [(s + lo + hi - k) // st + 1
                  for s, (lo, hi), k, st in zip(spatial, pads, kernel, stride)]


def _conv_im2col(x: Array, w: Array, stride: tuple[int, ...], padding: str) -> Array:
    """The same cross-correlation as one matmul: the prod(K) strided slices of the padded input
    are concatenated along channels into patches (N * prod(out), prod(K) * C_in), slot
    ``offset * C_in + c`` in the order of ``w.reshape(-1, C_out)``, times that matrix."""
    kernel = w.shape[:-2]
    pads, outs = _conv_geometry(x.shape[1:-1], kernel, stride, padding)
    xp = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    cols = jnp.concatenate(
        [xp[(slice(None),) + tuple(slice(o, o + (n - 1) * st + 1, st)
                                   for o, n, st in zip(offs, outs, stride))]
         for offs in itertools.product(*[range(k) for k in kernel])], axis=-1)
    out = cols.reshape(-1, cols.shape[-1]) @ w.reshape(-1, w.shape[-1])
    return out.reshape(x.shape[0], *outs, w.shape[-1])


#: Largest im2col patch matrix (bytes) built instead of calling lax.conv on a CPU.
IM2COL_MAX_BYTES = 2 * 2**20


def _use_im2col(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: tuple[int, ...],
                padding: str, itemsize: int = 4) -> bool:
    """im2col on a CPU backend for narrow, small convolutions: a patch row (prod(K) * C_in
    values) no longer than the C_out outputs it produces, and the whole patch matrix at most
    `IM2COL_MAX_BYTES`. Other backends always use lax.conv.

    Measured on 2 CPU cores (experiments/benchmarks, A/B against lax.conv in whole train steps):
    a win of about 10% on the digits CNN's 3x3x1 -> 32 layer (74 KB of patches) and the
    MNIST-1D CNN's 5x1 -> 25 layer (40 KB); a loss of about 5% on LeNet's 5x5x1 -> 32 layer at
    batch 128 (10 MB of patches), and a large loss wherever the patches are many times the
    output (5x5x32 -> 64: the 25-fold patches cost more than XLA's convolution).
    """
    _, outs = _conv_geometry(x_shape[1:-1], w_shape[:-2], stride, padding)
    patch_bytes = x_shape[0] * math.prod(outs) * math.prod(w_shape[:-1]) * itemsize
    return (jax.default_backend() == "cpu" and min(outs) >= 1
            and math.prod(w_shape[:-1]) <= w_shape[-1] and patch_bytes <= IM2COL_MAX_BYTES)


def _conv(x: Array, w: Array, stride: tuple[int, ...], padding: str) -> Array:
    """Cross-correlation of channels-last x with w (*K, C_in, C_out), the implementation chosen
    at trace time by `_use_im2col`; both give `lax.conv_general_dilated`'s result."""
    if _use_im2col(tuple(x.shape), tuple(w.shape), stride, padding, x.dtype.itemsize):
        return _conv_im2col(x, w, stride, padding)
    return _conv_lax(x, w, stride, padding)


def init_conv2d(key: Array, in_channels: int, out_channels: int,
                kernel_size: int | tuple[int, int] = 3, *, bias: bool = True,
                w_init: InitSpec = "he_normal", b_init: InitSpec = "zeros",
                dtype: Any = jnp.float32) -> Params:
    """Parameters of a 2-D convolution: ``{"w": (KH, KW, C_in, C_out), "b": (C_out,)}``."""
    kh, kw_ = _pair(kernel_size, 2, "conv2d kernel_size")
    k1, k2 = split_keys(key)
    params = {"w": get_initializer(w_init)(k1, (kh, kw_, in_channels, out_channels), dtype)}
    if bias:
        params["b"] = get_initializer(b_init)(k2, (out_channels,), dtype)
    return params


def conv2d_apply(params: Params, x: Array, *, stride: int | tuple[int, int] = 1,
                 padding: str = "SAME") -> Array:
    """2-D cross-correlation, NHWC input and HWIO kernel.

    Args:
      params: ``{"w": (KH, KW, C_in, C_out)}``, optionally ``"b": (C_out,)``.
      x: (N, H, W, C_in).
      stride: int or (sh, sw).
      padding: "SAME" or "VALID".

    Returns:
      (N, OH, OW, C_out).
    """
    w = params["w"]
    _check_ndim(x, 4, "conv2d", "(N, H, W, C)")
    if x.shape[-1] != w.shape[2]:
        raise ValueError(f"conv2d: input x has {x.shape[-1]} channels (shape {tuple(x.shape)}), "
                         f"but w expects C_in={w.shape[2]} (w shape {tuple(w.shape)})")
    out = _conv(x, w, _pair(stride, 2, "conv2d stride"), _check_padding(padding, "conv2d"))
    return _add_bias(out, params)


def init_conv1d(key: Array, in_channels: int, out_channels: int, kernel_size: int = 3, *,
                bias: bool = True, w_init: InitSpec = "he_normal", b_init: InitSpec = "zeros",
                dtype: Any = jnp.float32) -> Params:
    """Parameters of a 1-D convolution: ``{"w": (K, C_in, C_out), "b": (C_out,)}``."""
    k1, k2 = split_keys(key)
    params = {"w": get_initializer(w_init)(k1, (int(kernel_size), in_channels, out_channels),
                                           dtype)}
    if bias:
        params["b"] = get_initializer(b_init)(k2, (out_channels,), dtype)
    return params


def conv1d_apply(params: Params, x: Array, *, stride: int = 1, padding: str = "SAME") -> Array:
    """1-D cross-correlation over (N, L, C_in) with kernel (K, C_in, C_out) -> (N, OL, C_out)."""
    w = params["w"]
    _check_ndim(x, 3, "conv1d", "(N, L, C)")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"conv1d: input x has {x.shape[-1]} channels (shape {tuple(x.shape)}), "
                         f"but w expects C_in={w.shape[1]} (w shape {tuple(w.shape)})")
    out = _conv(x, w, _pair(stride, 1, "conv1d stride"), _check_padding(padding, "conv1d"))
    return _add_bias(out, params)


# --------------------------------------------------------------------------- pooling


def _pool(x: Array, window: Any, stride: Any, padding: str, layer: str, kind: str) -> Array:
    nd = x.ndim - 2
    window = _pair(window, nd, f"{layer} window")
    stride = window if stride is None else _pair(stride, nd, f"{layer} stride")
    _check_padding(padding, layer)
    spatial = x.shape[1:-1]
    if padding == "VALID" and window == stride:  # non-overlapping: one reshape
        outs = [s // w for s, w in zip(spatial, window)]
        if min(outs) < 1:
            raise ValueError(f"{layer}: window {window} larger than input {tuple(x.shape)}")
        x = x[(slice(None),) + tuple(slice(0, o * w) for o, w in zip(outs, window))]
        split = sum(((o, w) for o, w in zip(outs, window)), ())
        xr = x.reshape((x.shape[0],) + split + (x.shape[-1],))
        axes = tuple(2 + 2 * i for i in range(nd))
        return jnp.max(xr, axis=axes) if kind == "max" else jnp.mean(xr, axis=axes)
    pads = [same_pads(s, w, st) if padding == "SAME" else (0, 0)
            for s, w, st in zip(spatial, window, stride)]
    fill = -jnp.inf if kind == "max" else 0.0
    xp = jnp.pad(x, [(0, 0)] + pads + [(0, 0)], constant_values=fill)
    outs = [(s + lo + hi - w) // st + 1
            for s, (lo, hi), w, st in zip(spatial, pads, window, stride)]
    if min(outs) < 1:
        raise ValueError(f"{layer}: window {window} larger than input {tuple(x.shape)}")
    views = []
    for offs in itertools.product(*[range(w) for w in window]):
        idx = tuple(slice(o, o + (n - 1) * st + 1, st) for o, n, st in zip(offs, outs, stride))
        views.append(xp[(slice(None),) + idx])
    stacked = jnp.stack(views, axis=-1)
    if kind == "max":
        return jnp.max(stacked, axis=-1)
    ones = jnp.pad(jnp.ones(spatial, x.dtype), pads)
    counts = sum(ones[tuple(slice(o, o + (n - 1) * st + 1, st)
                            for o, n, st in zip(offs, outs, stride))]
                 for offs in itertools.product(*[range(w) for w in window]))
    return jnp.sum(stacked, axis=-1) / counts[None, ..., None]


def max_pool2d_apply(params: Params, x: Array, *, window: int | tuple[int, int] = 2,
                     stride: int | tuple[int, int] | None = None,
                     padding: str = "VALID") -> Array:
    """Max over each (window) patch of (N, H, W, C); stride defaults to the window."""
    _check_ndim(x, 4, "max_pool2d", "(N, H, W, C)")
    return _pool(x, window, stride, padding, "max_pool2d", "max")


def avg_pool2d_apply(params: Params, x: Array, *, window: int | tuple[int, int] = 2,
                     stride: int | tuple[int, int] | None = None,
                     padding: str = "VALID") -> Array:
    """Mean over the non-padding elements of each patch of (N, H, W, C)."""
    _check_ndim(x, 4, "avg_pool2d", "(N, H, W, C)")
    return _pool(x, window, stride, padding, "avg_pool2d", "avg")


def max_pool1d_apply(params: Params, x: Array, *, window: int = 2, stride: int | None = None,
                     padding: str = "VALID") -> Array:
    """Max over each window of (N, L, C)."""
    _check_ndim(x, 3, "max_pool1d", "(N, L, C)")
    return _pool(x, window, stride, padding, "max_pool1d", "max")


def avg_pool1d_apply(params: Params, x: Array, *, window: int = 2, stride: int | None = None,
                     padding: str = "VALID") -> Array:
    """Mean over the non-padding elements of each window of (N, L, C)."""
    _check_ndim(x, 3, "avg_pool1d", "(N, L, C)")
    return _pool(x, window, stride, padding, "avg_pool1d", "avg")


# --------------------------------------------------------------------------- the rest


def flatten_apply(params: Params, x: Array) -> Array:
    """(N, ...) -> (N, prod(...))."""
    return x.reshape(x.shape[0], -1)


def dropout_apply(params: Params, x: Array, *, drop_rate: float, key: Array | None = None,
                  train: bool = True) -> Array:
    """Inverted dropout: zero each unit with probability `drop_rate`, scale the rest by
    1 / (1 - drop_rate). The identity when ``train`` is False or ``drop_rate`` is 0.

    The mask is ``jax.random.bernoulli(key, 1 - drop_rate, x.shape)``.
    """
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"dropout: drop_rate must be in [0, 1), got {drop_rate!r}")
    if not train or drop_rate == 0.0:
        return x
    if key is None:
        raise ValueError("dropout: a key is required when train=True and drop_rate > 0")
    keep = 1.0 - drop_rate
    mask = jax.random.bernoulli(key, keep, x.shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def init_maxout(key: Array, in_features: int, out_features: int, pieces: int = 2, *,
                w_init: InitSpec = "he_normal", b_init: InitSpec = "zeros",
                dtype: Any = jnp.float32) -> Params:
    """Parameters of a maxout layer: ``{"w": (D, M, P), "b": (M, P)}``."""
    k1, k2 = split_keys(key)
    w = get_initializer(w_init, in_axis=0, out_axis=1, batch_axis=(2,))(
        k1, (in_features, out_features, pieces), dtype)
    return {"w": w, "b": get_initializer(b_init)(k2, (out_features, pieces), dtype)}


def maxout_apply(params: Params, x: Array) -> Array:
    """Maxout (Goodfellow et al. 2013): out_m = max_p (x @ w[:, m, p] + b[m, p]).

    Args:
      params: ``{"w": (D, M, P), "b": (M, P)}``.
      x: (N, D).

    Returns:
      (N, M).
    """
    w = params["w"]
    _check_ndim(x, 2, "maxout", "(N, D)")
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"maxout: input x has {x.shape[1]} features, w expects D={w.shape[0]}")
    z = _add_bias(jnp.einsum("nd,dmp->nmp", x, w), params)
    return jnp.max(z, axis=-1)


def _activation_layer(name: str, fn: Callable[..., Array]) -> Callable[..., Array]:
    def apply(params: Params, x: Array, **hyper: Any) -> Array:
        return fn(x, **hyper)

    apply.__name__ = f"{name}_apply"
    apply.__doc__ = f"The `{name}` activation as a parameterless layer (params={{}}).\n\n" + (
        fn.__doc__ or "")
    return apply


identity_apply = _activation_layer("identity", _act.identity)
step_apply = _activation_layer("step", _act.step)
heaviside_apply = _activation_layer("heaviside", _act.step)
sign_apply = _activation_layer("sign", _act.sign)
sigmoid_apply = _activation_layer("sigmoid", _act.sigmoid)
tanh_apply = _activation_layer("tanh", _act.tanh)
relu_apply = _activation_layer("relu", _act.relu)
leaky_relu_apply = _activation_layer("leaky_relu", _act.leaky_relu)
elu_apply = _activation_layer("elu", _act.elu)
softplus_apply = _activation_layer("softplus", _act.softplus)
softmax_apply = _activation_layer("softmax", _act.softmax)
log_softmax_apply = _activation_layer("log_softmax", _act.log_softmax)


# --------------------------------------------------------------------------- shape-driven init


def _in_features(in_shape: tuple[int, ...], layer: str) -> int:
    if len(in_shape) != 1:
        raise ValueError(f"{layer}: expects input (N, D) but the previous layer gives "
                         f"(N, {', '.join(map(str, in_shape))}); add a 'flatten' layer before it")
    return in_shape[0]


def _channels(in_shape: tuple[int, ...], rank: int, layer: str) -> int:
    if len(in_shape) != rank + 1:
        want = "(N, H, W, C)" if rank == 2 else "(N, L, C)"
        raise ValueError(f"{layer}: expects input {want} but the previous layer gives "
                         f"(N, {', '.join(map(str, in_shape))})")
    return in_shape[-1]


def init_layer_from_shape(name: str, key: Array, in_shape: tuple[int, ...],
                          **init_kwargs: Any) -> Params:
    """Initialises layer `name` for inputs of shape (N, *in_shape); ``{}`` if parameterless.

    The size keyword is ``features`` for dense, maxout and the convolutions.
    """
    kw = dict(init_kwargs)
    if name == "dense":
        return init_dense(key, _in_features(in_shape, name), kw.pop("features"), **kw)
    if name == "maxout":
        return init_maxout(key, _in_features(in_shape, name), kw.pop("features"), **kw)
    if name == "conv2d":
        return init_conv2d(key, _channels(in_shape, 2, name), kw.pop("features"), **kw)
    if name == "conv1d":
        return init_conv1d(key, _channels(in_shape, 1, name), kw.pop("features"), **kw)
    if kw:
        raise ValueError(f"{name}: takes no initialiser arguments, got {sorted(kw)}")
    return {}
