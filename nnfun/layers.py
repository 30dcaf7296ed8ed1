"""Layers of the autodiff path, and the layer table every model is built from.

Each layer is a pure function ``<layer>_apply(params, x, *, hyper...) -> out``; a layer with
parameters also has ``init_<layer>(key, ...) -> params``. `LAYERS` declares every layer once:
its apply, its shape-driven init, whether it is stochastic or a convolution, and the examples
the three-way gradient tests run (`nnfun.registry`). Adding a layer means adding its functions
and one `Layer` entry here (and, for the three-way checks, a rule in `nnfun.manual.layers`).

Contract, shared with the hand-written reference `nnfun.manual.layers`:

- layout is batch first and channels last: dense (N, D), conv1d (N, L, C), conv2d (N, H, W, C);
- parameters are plain dicts: dense ``{"w": (D, M), "b": (M,)}``, conv2d
  ``{"w": (KH, KW, C_in, C_out), "b": (C_out,)}``,
  conv1d ``{"w": (K, C_in, C_out), "b": (C_out,)}``,
  maxout ``{"w": (D, M, P), "b": (M, P)}``; parameterless layers take ``params={}``;
- hyperparameters are keyword-only;
- every activation of `nnfun.activations` is also a layer, ``<name>_apply(params, x, **kw)``.

These are the canonical definitions: a convolution is one `lax.conv_general_dilated` call and a
bias is broadcast. Faster variants for a CPU backend live in `nnfun.fast` and are switched in
for training only; every gradient cross-check runs against the functions here.

Padding "SAME" follows XLA: per spatial dimension out = ceil(in / stride), the total padding
max((out - 1) * stride + k - in, 0) split with the smaller half before. Max pooling computes the
maximum over a stacked window axis, so at ties its gradient is split equally among the tied
elements; average pooling divides by the number of non-padding elements in each window.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nnfun import _checks
from nnfun import activations as _act
from nnfun import recurrent as _rec
from nnfun.initializers import get_initializer

__all__ = [
    "Layer", "LAYERS", "get_layer", "register_layer", "init_layer", "same_pads",
    "init_dense", "dense_apply", "init_conv2d", "conv2d_apply", "init_conv1d", "conv1d_apply",
    "max_pool2d_apply", "avg_pool2d_apply", "max_pool1d_apply", "avg_pool1d_apply",
    "flatten_apply", "dropout_apply", "init_maxout", "maxout_apply",
    "identity_apply", "step_apply", "heaviside_apply", "sign_apply", "sigmoid_apply",
    "tanh_apply", "relu_apply", "leaky_relu_apply", "elu_apply", "softplus_apply",
    "softmax_apply", "log_softmax_apply",
]

Array = jax.Array
Params = dict[str, Array]
InitSpec = str | dict[str, Any] | tuple
#: ((N, ...) input shape, layer keyword arguments): one case of the three-way gradient tests.
Example = tuple[tuple[int, ...], dict[str, Any]]


def _check_ndim(x: Array, ndim: int, layer: str, layout: str) -> None:
    _checks.check_ndim(layer, "x", x, ndim, layout)


def _check_padding(padding: str, layer: str) -> str:
    return _checks.check_padding(layer, padding)


def _pair(v: int | tuple[int, ...] | list[int], n: int, what: str) -> tuple[int, ...]:
    layer, _, name = what.partition(" ")
    return _checks.int_tuple(layer, name, v, n)


def same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
    """XLA's SAME padding (lo, hi) for one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def _add_bias(out: Array, params: Params) -> Array:
    """out + b, with b broadcast explicitly over the leading axes (rank-promotion safe)."""
    if "b" not in params:
        return out
    b = params["b"]
    return out + b.reshape((1,) * (out.ndim - b.ndim) + b.shape)


# --------------------------------------------------------------------------- dense


def init_dense(key: Array, in_features: int, out_features: int, *, bias: bool = True,
               w_init: InitSpec = "he_normal", b_init: InitSpec = "zeros",
               dtype: Any = jnp.float32) -> Params:
    """Parameters of a fully connected layer.

    Returns:
      ``{"w": (D, M), "b": (M,)}``; no ``"b"`` when ``bias`` is False.
    """
    out_features = _checks.check_positive("dense", "features", out_features)
    kw, kb = jax.random.split(key)
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


def _conv(x: Array, w: Array, stride: tuple[int, ...], padding: str) -> Array:
    """Cross-correlation of channels-last x with w (*K, C_in, C_out): one
    `lax.conv_general_dilated` call."""
    return jax.lax.conv_general_dilated(x, w, stride, padding,
                                        dimension_numbers=_CONV_DIMS[x.ndim - 2])


def init_conv2d(key: Array, in_channels: int, out_channels: int,
                kernel_size: int | tuple[int, int] = 3, *, bias: bool = True,
                w_init: InitSpec = "he_normal", b_init: InitSpec = "zeros",
                dtype: Any = jnp.float32) -> Params:
    """Parameters of a 2-D convolution: ``{"w": (KH, KW, C_in, C_out), "b": (C_out,)}``."""
    out_channels = _checks.check_positive("conv2d", "features", out_channels)
    kh, kw_ = _pair(kernel_size, 2, "conv2d kernel_size")
    k1, k2 = jax.random.split(key)
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
    out_channels = _checks.check_positive("conv1d", "features", out_channels)
    (kernel_size,) = _pair(kernel_size, 1, "conv1d kernel_size")
    k1, k2 = jax.random.split(key)
    params = {"w": get_initializer(w_init)(k1, (kernel_size, in_channels, out_channels),
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
    out_features = _checks.check_positive("maxout", "features", out_features)
    pieces = _checks.check_positive("maxout", "pieces", pieces)
    k1, k2 = jax.random.split(key)
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


# --------------------------------------------------------------------------- the layer table


class Layer(NamedTuple):
    """One layer type: everything nnfun needs to know about it, declared once.

    Attributes:
      apply: ``apply(params, x, **hyper) -> out``; a stochastic layer also takes ``key`` and
        ``train``.
      init: ``init(key, in_shape, *, dtype, **init_kw) -> params`` for inputs (N, *in_shape),
        or None for a parameterless layer (its params are ``{}``).
      stochastic: draws random numbers (takes ``key`` and ``train``).
      uses_convolution: runs a convolution (the CPU dispatch choice of `nnfun.fast` reads it).
      examples: cases for the three-way gradient tests of `nnfun.registry`.
    """

    apply: Callable[..., Array]
    init: Callable[..., Params] | None = None
    stochastic: bool = False
    uses_convolution: bool = False
    examples: tuple[Example, ...] = ()

    @property
    def has_params(self) -> bool:
        return self.init is not None


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


def _dense_init(key: Array, in_shape: tuple[int, ...], *, features: int, bias: bool = True,
                w_init: InitSpec = "he_normal", b_init: InitSpec = "zeros",
                dtype: Any = jnp.float32) -> Params:
    return init_dense(key, _in_features(in_shape, "dense"), features, bias=bias, w_init=w_init,
                      b_init=b_init, dtype=dtype)


def _maxout_init(key: Array, in_shape: tuple[int, ...], *, features: int, pieces: int = 2,
                 w_init: InitSpec = "he_normal", b_init: InitSpec = "zeros",
                 dtype: Any = jnp.float32) -> Params:
    return init_maxout(key, _in_features(in_shape, "maxout"), features, pieces, w_init=w_init,
                       b_init=b_init, dtype=dtype)


def _conv2d_init(key: Array, in_shape: tuple[int, ...], *, features: int,
                 kernel_size: int | tuple[int, int] = 3, bias: bool = True,
                 w_init: InitSpec = "he_normal", b_init: InitSpec = "zeros",
                 dtype: Any = jnp.float32) -> Params:
    return init_conv2d(key, _channels(in_shape, 2, "conv2d"), features, kernel_size, bias=bias,
                       w_init=w_init, b_init=b_init, dtype=dtype)


def _conv1d_init(key: Array, in_shape: tuple[int, ...], *, features: int, kernel_size: int = 3,
                 bias: bool = True, w_init: InitSpec = "he_normal", b_init: InitSpec = "zeros",
                 dtype: Any = jnp.float32) -> Params:
    return init_conv1d(key, _channels(in_shape, 1, "conv1d"), features, kernel_size, bias=bias,
                       w_init=w_init, b_init=b_init, dtype=dtype)


def _activation_layer(name: str, fn: Callable[..., Array]) -> Callable[..., Array]:
    """`fn` as a parameterless layer ``apply(params, x, **hyper)``, with fn's signature."""

    def apply(params: Params, x: Array, **hyper: Any) -> Array:
        return fn(x, **hyper)

    sig = inspect.signature(fn)
    hyper = [p.replace(kind=p.KEYWORD_ONLY) for p in list(sig.parameters.values())[1:]]
    apply.__signature__ = sig.replace(parameters=[
        inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("x", inspect.Parameter.POSITIONAL_OR_KEYWORD), *hyper])
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

_ROW = (((3, 5), {}),)
_POOL2D = (((2, 6, 6, 3), {}),
           ((2, 7, 7, 2), {"window": 3, "stride": 2, "padding": "SAME"}),
           ((1, 5, 6, 2), {"window": (3, 2), "stride": 1, "padding": "VALID"}))
_POOL1D = (((2, 8, 3), {}), ((2, 9, 2), {"window": 3, "stride": 2, "padding": "SAME"}))

#: Every layer type, by the name a model or config uses.
LAYERS: dict[str, Layer] = {
    "dense": Layer(dense_apply, _dense_init, examples=(
        ((3, 5), {"features": 4}), ((2, 3), {"features": 2, "bias": False}))),
    "conv2d": Layer(conv2d_apply, _conv2d_init, uses_convolution=True, examples=(
        ((2, 6, 6, 3), {"features": 4, "kernel_size": 3}),
        ((2, 7, 6, 2), {"features": 3, "kernel_size": (3, 2), "stride": 2, "padding": "VALID"}),
        ((1, 6, 5, 2), {"features": 2, "kernel_size": 3, "stride": (2, 1), "padding": "SAME",
                        "bias": False}))),
    "conv1d": Layer(conv1d_apply, _conv1d_init, uses_convolution=True, examples=(
        ((2, 10, 3), {"features": 4, "kernel_size": 3}),
        ((2, 11, 2), {"features": 3, "kernel_size": 5, "stride": 2, "padding": "SAME"}),
        ((1, 9, 2), {"features": 2, "kernel_size": 4, "stride": 2, "padding": "VALID"}))),
    "max_pool2d": Layer(max_pool2d_apply, examples=_POOL2D),
    "avg_pool2d": Layer(avg_pool2d_apply, examples=_POOL2D),
    "max_pool1d": Layer(max_pool1d_apply, examples=_POOL1D),
    "avg_pool1d": Layer(avg_pool1d_apply, examples=_POOL1D),
    "flatten": Layer(flatten_apply, examples=(((2, 3, 4, 2), {}),)),
    "dropout": Layer(dropout_apply, stochastic=True, examples=(
        ((4, 6), {"drop_rate": 0.5}), ((2, 3, 3, 2), {"drop_rate": 0.2}))),
    "maxout": Layer(maxout_apply, _maxout_init, examples=(
        ((3, 5), {"features": 4, "pieces": 3}),)),
    "identity": Layer(identity_apply, examples=_ROW),
    "step": Layer(step_apply, examples=_ROW),
    "heaviside": Layer(heaviside_apply, examples=_ROW),
    "sign": Layer(sign_apply, examples=_ROW),
    "sigmoid": Layer(sigmoid_apply, examples=_ROW),
    "tanh": Layer(tanh_apply, examples=_ROW),
    "relu": Layer(relu_apply, examples=_ROW),
    "leaky_relu": Layer(leaky_relu_apply, examples=(((3, 5), {"negative_slope": 0.2}),)),
    "elu": Layer(elu_apply, examples=(((3, 5), {"alpha": 0.7}),)),
    "softplus": Layer(softplus_apply, examples=_ROW),
    "softmax": Layer(softmax_apply, examples=(((3, 5), {}), ((2, 3, 4), {"axis": 1}))),
    "log_softmax": Layer(log_softmax_apply, examples=(((3, 5), {}), ((2, 3, 4), {"axis": 1}))),
}


def register_layer(name: str, layer: Layer, *, replace: bool = False) -> None:
    """Adds your own layer to `LAYERS`, so `nnfun.models.layer`, `sequential` and configs
    can name it. For the three-way gradient checks, also add its hand-written rule to
    `nnfun.manual.layers.RULES` under the same name.

    Args:
      name: the name models and configs use.
      layer: its `Layer`: ``apply(params, x, *, hyper...)`` and, with parameters,
        ``init(key, in_shape, *, dtype, size...)``; `examples` for the three-way tests.
      replace: allow replacing a layer of that name.

    Raises:
      ValueError: the name is taken (and not `replace`), or `layer` is not a `Layer`.
    """
    if not isinstance(layer, Layer):
        raise ValueError(f"register_layer: expected a nnfun.layers.Layer, got "
                         f"{type(layer).__name__}")
    if name in LAYERS and not replace:
        raise ValueError(f"register_layer: {name!r} is already a layer; pass replace=True")
    LAYERS[name] = layer


def get_layer(name: str) -> Layer:
    """The `LAYERS` entry `name`; ValueError naming the valid names otherwise."""
    if name not in LAYERS:
        raise ValueError(f"layer: unknown name {name!r}; expected one of {sorted(LAYERS)}")
    return LAYERS[name]


def init_layer(layer: Layer, key: Array, in_shape: tuple[int, ...], *, dtype: Any = jnp.float32,
               init_kwargs: dict[str, Any] | None = None,
               apply_kwargs: dict[str, Any] | None = None) -> tuple[tuple[int, ...], Params]:
    """``(out_shape, params)`` of `layer` for inputs (N, *in_shape), stax's init contract.

    The output shape comes from `jax.eval_shape` of the layer's apply, so no layer states its
    shape arithmetic twice.

    Raises:
      ValueError: the input shape does not fit the layer, or a parameterless layer got
        initialiser arguments.
    """
    init_kwargs = dict(init_kwargs or {})
    if layer.init is not None:
        params = layer.init(key, tuple(in_shape), dtype=dtype, **init_kwargs)
    elif init_kwargs:
        raise ValueError(f"takes no initialiser arguments, got {sorted(init_kwargs)}")
    else:
        params = {}
    extra = {"key": None, "train": False} if layer.stochastic else {}
    x = jax.ShapeDtypeStruct((1, *in_shape), dtype)
    out = jax.eval_shape(lambda p, v: layer.apply(p, v, **extra, **(apply_kwargs or {})),
                         params, x)
    return tuple(out.shape[1:]), params


# --------------------------------------------------------------------------- recurrent layers
# Sequences (N, T, D), batch first; the layers themselves live in `nnfun.recurrent`.

init_rnn, rnn_apply = _rec.init_rnn, _rec.rnn_apply
init_lstm, lstm_apply = _rec.init_lstm, _rec.lstm_apply
init_gru, gru_apply = _rec.init_gru, _rec.gru_apply
reshape_apply, gaussian_noise_apply = _rec.reshape_apply, _rec.gaussian_noise_apply


def _rnn_init(key: Array, in_shape: tuple[int, ...], *, features: int,
              w_init: InitSpec = "xavier_uniform", h_init: InitSpec = "orthogonal",
              b_init: InitSpec = "zeros", dtype: Any = jnp.float32) -> Params:
    return init_rnn(key, _rec.sequence_features(in_shape, "rnn"), features, w_init=w_init,
                    h_init=h_init, b_init=b_init, dtype=dtype)


def _lstm_init(key: Array, in_shape: tuple[int, ...], *, features: int, forget_bias: float = 1.0,
               w_init: InitSpec = "xavier_uniform", h_init: InitSpec = "orthogonal",
               b_init: InitSpec = "zeros", dtype: Any = jnp.float32) -> Params:
    return init_lstm(key, _rec.sequence_features(in_shape, "lstm"), features,
                     forget_bias=forget_bias, w_init=w_init, h_init=h_init, b_init=b_init,
                     dtype=dtype)


def _gru_init(key: Array, in_shape: tuple[int, ...], *, features: int,
              w_init: InitSpec = "xavier_uniform", h_init: InitSpec = "orthogonal",
              b_init: InitSpec = "zeros", dtype: Any = jnp.float32) -> Params:
    return init_gru(key, _rec.sequence_features(in_shape, "gru"), features, w_init=w_init,
                    h_init=h_init, b_init=b_init, dtype=dtype)


def _sequence_examples(**extra: Any) -> tuple[Example, ...]:
    """Three-way test cases of a recurrent layer: T from 1 to 4, D and H of 2 or 3, both
    return_sequences values."""
    return (((2, 3, 2), {"features": 3, **extra}),
            ((3, 2, 3), {"features": 2, "return_sequences": True, **extra}))


register_layer("rnn", Layer(rnn_apply, _rnn_init, examples=_sequence_examples()))
register_layer("lstm", Layer(lstm_apply, _lstm_init, examples=(
    ((2, 3, 2), {"features": 3}),
    ((3, 2, 3), {"features": 2, "return_sequences": True, "forget_bias": 0.0}))))
register_layer("gru", Layer(gru_apply, _gru_init, examples=_sequence_examples()))
register_layer("reshape", Layer(reshape_apply, examples=(
    ((2, 6), {"shape": (3, 2)}), ((3, 4, 2), {"shape": (-1,)}))))
register_layer("gaussian_noise", Layer(gaussian_noise_apply, stochastic=True, examples=(
    ((2, 3, 2), {"stddev": 0.5}),)))

__all__ += ["init_rnn", "rnn_apply", "init_lstm", "lstm_apply", "init_gru", "gru_apply",
            "reshape_apply", "gaussian_noise_apply"]
