"""Hand-written forward and backward rules of the activations, as parameterless layers.

Every activation ``<name>`` has

- ``<name>_forward(params, x, **hyper) -> (out, cache)`` with ``params == {}`` and ``out`` of
  x's shape (any shape; softmax and log_softmax work along ``axis``);
- ``<name>_backward(dout, cache) -> (dx, {})``: dx has dout's shape, the gradient of
  sum(dout * out) with respect to x, and the empty dict mirrors the empty params.

They compute the same functions as `nnfun.activations`, with the same conventions at kinks:
relu'(0) = 0, leaky_relu'(0) = 1, elu'(0) = alpha, and step' = sign' = 0 everywhere.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

from nnfun.manual._checks import check_no_params

__all__ = ["EmptyCache", "OutputCache", "InputCache", "SlopeCache", "SoftmaxCache",
           *(f"{name}_{part}" for name in ("identity", "step", "heaviside", "sign", "sigmoid",
                                           "tanh", "relu", "leaky_relu", "elu", "softplus",
                                           "softmax", "log_softmax")
             for part in ("forward", "backward"))]

Array = jax.Array
NoParams = dict[str, Array]


@partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class EmptyCache:
    """Cache of an activation whose backward needs nothing (identity, step, sign)."""


@partial(jax.tree_util.register_dataclass, data_fields=["out"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class OutputCache:
    """Cache of sigmoid and tanh, whose derivative is a function of the output.

    Attributes:
      out: the forward output, x's shape.
    """

    out: Array


@partial(jax.tree_util.register_dataclass, data_fields=["x"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class InputCache:
    """Cache of relu and softplus, whose derivative is a function of the input.

    Attributes:
      x: the forward input, any shape.
    """

    x: Array


@partial(jax.tree_util.register_dataclass, data_fields=["x", "coef"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class SlopeCache:
    """Cache of leaky_relu and elu.

    Attributes:
      x: the forward input, any shape.
      coef: scalar hyperparameter (leaky_relu's negative_slope, elu's alpha).
    """

    x: Array
    coef: Array | float


@partial(jax.tree_util.register_dataclass, data_fields=["probs"], meta_fields=["axis"])
@dataclasses.dataclass(frozen=True)
class SoftmaxCache:
    """Cache of softmax and log_softmax.

    Attributes:
      probs: softmax(x) along `axis`, x's shape.
      axis: int, the normalised axis (static metadata).
    """

    probs: Array
    axis: int


def identity_forward(params: NoParams, x: Array) -> tuple[Array, EmptyCache]:
    """f(x) = x.

    Args:
      params: {}.
      x: any shape.

    Returns:
      (x, cache).
    """
    check_no_params("identity", params)
    return x, EmptyCache()


def identity_backward(dout: Array, cache: EmptyCache) -> tuple[Array, NoParams]:
    """dx = dout.

    Args:
      dout: upstream gradient, any shape.
      cache: from `identity_forward`.

    Returns:
      (dx of dout's shape, {}).
    """
    return dout, {}


def step_forward(params: NoParams, x: Array) -> tuple[Array, EmptyCache]:
    """Heaviside step: 1 where x > 0, else 0 (in x's dtype).

    Args:
      params: {}.
      x: any shape.

    Returns:
      (out of x's shape, cache).
    """
    check_no_params("step", params)
    return jnp.where(x > 0, 1.0, 0.0).astype(x.dtype), EmptyCache()


def step_backward(dout: Array, cache: EmptyCache) -> tuple[Array, NoParams]:
    """dx = 0 everywhere (the step is piecewise constant; its derivative at 0 is taken as 0).

    Args:
      dout: upstream gradient, any shape.
      cache: from `step_forward`.

    Returns:
      (zeros of dout's shape, {}).
    """
    return jnp.zeros_like(dout), {}


heaviside_forward = step_forward
heaviside_backward = step_backward


def sign_forward(params: NoParams, x: Array) -> tuple[Array, EmptyCache]:
    """Sign unit: -1, 0 or +1.

    Args:
      params: {}.
      x: any shape.

    Returns:
      (out of x's shape, cache).
    """
    check_no_params("sign", params)
    return jnp.sign(x), EmptyCache()


def sign_backward(dout: Array, cache: EmptyCache) -> tuple[Array, NoParams]:
    """dx = 0 everywhere (piecewise constant; derivative at 0 taken as 0).

    Args:
      dout: upstream gradient, any shape.
      cache: from `sign_forward`.

    Returns:
      (zeros of dout's shape, {}).
    """
    return jnp.zeros_like(dout), {}


def sigmoid_forward(params: NoParams, x: Array) -> tuple[Array, OutputCache]:
    """s = 1 / (1 + exp(-x)).

    Args:
      params: {}.
      x: any shape.

    Returns:
      (s of x's shape, cache holding s).
    """
    check_no_params("sigmoid", params)
    s = jax.nn.sigmoid(x)
    return s, OutputCache(s)


def sigmoid_backward(dout: Array, cache: OutputCache) -> tuple[Array, NoParams]:
    """dx = dout * s * (1 - s) (lecture 003's sigmoid gate).

    Args:
      dout: upstream gradient, x's shape.
      cache: from `sigmoid_forward`.

    Returns:
      (dx of x's shape, {}).
    """
    s = cache.out
    return dout * s * (1 - s), {}


def tanh_forward(params: NoParams, x: Array) -> tuple[Array, OutputCache]:
    """t = tanh(x).

    Args:
      params: {}.
      x: any shape.

    Returns:
      (t of x's shape, cache holding t).
    """
    check_no_params("tanh", params)
    t = jnp.tanh(x)
    return t, OutputCache(t)


def tanh_backward(dout: Array, cache: OutputCache) -> tuple[Array, NoParams]:
    """dx = dout * (1 - t^2).

    Args:
      dout: upstream gradient, x's shape.
      cache: from `tanh_forward`.

    Returns:
      (dx of x's shape, {}).
    """
    t = cache.out
    return dout * (1 - t * t), {}


def relu_forward(params: NoParams, x: Array) -> tuple[Array, InputCache]:
    """max(0, x).

    Args:
      params: {}.
      x: any shape.

    Returns:
      (out of x's shape, cache holding x).
    """
    check_no_params("relu", params)
    return jnp.where(x > 0, x, jnp.zeros_like(x)), InputCache(x)


def relu_backward(dout: Array, cache: InputCache) -> tuple[Array, NoParams]:
    """dx = dout where x > 0, else 0 (so 0 at x = 0): the max gate routes the gradient.

    Args:
      dout: upstream gradient, x's shape.
      cache: from `relu_forward`.

    Returns:
      (dx of x's shape, {}).
    """
    return jnp.where(cache.x > 0, dout, jnp.zeros_like(dout)), {}


def leaky_relu_forward(params: NoParams, x: Array, *,
                       negative_slope: float = 0.01) -> tuple[Array, SlopeCache]:
    """x where x >= 0, else negative_slope * x.

    Args:
      params: {}.
      x: any shape.
      negative_slope: the slope a on the negative side.

    Returns:
      (out of x's shape, cache).
    """
    check_no_params("leaky_relu", params)
    return jnp.where(x >= 0, x, negative_slope * x), SlopeCache(x, negative_slope)


def leaky_relu_backward(dout: Array, cache: SlopeCache) -> tuple[Array, NoParams]:
    """dx = dout where x >= 0, else negative_slope * dout (so slope 1 at x = 0).

    Args:
      dout: upstream gradient, x's shape.
      cache: from `leaky_relu_forward`.

    Returns:
      (dx of x's shape, {}).
    """
    return jnp.where(cache.x >= 0, dout, cache.coef * dout), {}


def elu_forward(params: NoParams, x: Array, *, alpha: float = 1.0) -> tuple[Array, SlopeCache]:
    """x where x > 0, else alpha * (exp(x) - 1).

    Args:
      params: {}.
      x: any shape.
      alpha: the negative saturation value is -alpha.

    Returns:
      (out of x's shape, cache).
    """
    check_no_params("elu", params)
    negative = alpha * jnp.expm1(jnp.where(x > 0, 0.0, x))
    return jnp.where(x > 0, x, negative), SlopeCache(x, alpha)


def elu_backward(dout: Array, cache: SlopeCache) -> tuple[Array, NoParams]:
    """dx = dout where x > 0, else dout * alpha * exp(x) (so alpha at x = 0).

    Args:
      dout: upstream gradient, x's shape.
      cache: from `elu_forward`.

    Returns:
      (dx of x's shape, {}).
    """
    x = cache.x
    negative = dout * (cache.coef * jnp.exp(jnp.where(x > 0, 0.0, x)))
    return jnp.where(x > 0, dout, negative), {}


def softplus_forward(params: NoParams, x: Array) -> tuple[Array, InputCache]:
    """log(1 + exp(x)), computed stably as logaddexp(x, 0).

    Args:
      params: {}.
      x: any shape.

    Returns:
      (out of x's shape, cache holding x).
    """
    check_no_params("softplus", params)
    return jnp.logaddexp(x, 0.0), InputCache(x)


def softplus_backward(dout: Array, cache: InputCache) -> tuple[Array, NoParams]:
    """dx = dout * sigmoid(x).

    Args:
      dout: upstream gradient, x's shape.
      cache: from `softplus_forward`.

    Returns:
      (dx of x's shape, {}).
    """
    return dout * jax.nn.sigmoid(cache.x), {}


def _softmax(x: Array, axis: int) -> tuple[Array, Array]:
    """(log_softmax(x), softmax(x)) along `axis`, shifted by the max for stability."""
    z = x - jnp.max(x, axis=axis, keepdims=True)
    e = jnp.exp(z)
    total = jnp.sum(e, axis=axis, keepdims=True)
    return z - jnp.log(total), e / total


def softmax_forward(params: NoParams, x: Array, *, axis: int = -1) -> tuple[Array, SoftmaxCache]:
    """s_k = exp(x_k) / sum_j exp(x_j) along `axis`.

    Args:
      params: {}.
      x: any shape, e.g. (N, K).
      axis: the axis that is normalised.

    Returns:
      (s of x's shape, cache holding s).
    """
    check_no_params("softmax", params)
    s = _softmax(x, axis)[1]
    return s, SoftmaxCache(s, axis)


def softmax_backward(dout: Array, cache: SoftmaxCache) -> tuple[Array, NoParams]:
    """dx = s * (dout - sum_axis(dout * s)), the softmax Jacobian diag(s) - s s^T applied to dout.

    Args:
      dout: upstream gradient, x's shape.
      cache: from `softmax_forward`.

    Returns:
      (dx of x's shape, {}).
    """
    s, axis = cache.probs, cache.axis
    return s * (dout - jnp.sum(dout * s, axis=axis, keepdims=True)), {}


def log_softmax_forward(params: NoParams, x: Array, *,
                        axis: int = -1) -> tuple[Array, SoftmaxCache]:
    """x_k - log sum_j exp(x_j) along `axis` (log-sum-exp with a max shift).

    Args:
      params: {}.
      x: any shape, e.g. (N, K).
      axis: the axis that is normalised.

    Returns:
      (out of x's shape, cache holding softmax(x)).
    """
    check_no_params("log_softmax", params)
    out, s = _softmax(x, axis)
    return out, SoftmaxCache(s, axis)


def log_softmax_backward(dout: Array, cache: SoftmaxCache) -> tuple[Array, NoParams]:
    """dx = dout - softmax(x) * sum_axis(dout).

    Args:
      dout: upstream gradient, x's shape.
      cache: from `log_softmax_forward`.

    Returns:
      (dx of x's shape, {}).
    """
    return dout - cache.probs * jnp.sum(dout, axis=cache.axis, keepdims=True), {}
