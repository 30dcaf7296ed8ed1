"""Activation functions: plain, elementwise (or per-row) functions of an array.

Every function here maps an array to an array of the same shape. They are used directly
(`nnfun.activations.sigmoid(x)`) and as parameterless layers (`("sigmoid", {})` in a model).
Their hand-written derivatives live in `nnfun.manual.activations`.

Conventions at the kinks, which the reference path matches exactly:
relu'(0) = 0, leaky_relu'(0) = 1, elu'(0) = alpha, step' = sign' = 0 everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["identity", "step", "sign", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "softplus",
           "softmax", "log_softmax", "ACTIVATIONS", "get_activation"]

Array = jax.Array


def identity(x: Array) -> Array:
    """f(x) = x."""
    return x


def step(x: Array) -> Array:
    """Heaviside step (the perceptron's threshold unit): 1 where x > 0, else 0."""
    return jnp.where(x > 0, 1.0, 0.0).astype(x.dtype)


def sign(x: Array) -> Array:
    """Sign unit: -1, 0 or +1."""
    return jnp.sign(x)


def sigmoid(x: Array) -> Array:
    """Logistic sigmoid 1 / (1 + exp(-x)); derivative s (1 - s)."""
    return jax.nn.sigmoid(x)


def tanh(x: Array) -> Array:
    """Hyperbolic tangent; derivative 1 - tanh(x)^2."""
    return jnp.tanh(x)


def relu(x: Array) -> Array:
    """max(0, x); derivative 1 where x > 0, else 0."""
    return jax.nn.relu(x)


def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    """x where x >= 0, else negative_slope * x."""
    return jnp.where(x >= 0, x, negative_slope * x)


def elu(x: Array, alpha: float = 1.0) -> Array:
    """x where x > 0, else alpha * (exp(x) - 1)."""
    return jnp.where(x > 0, x, alpha * jnp.expm1(jnp.where(x > 0, 0.0, x)))


def softplus(x: Array) -> Array:
    """log(1 + exp(x)), computed stably; derivative sigmoid(x)."""
    return jnp.logaddexp(x, 0.0)


def softmax(x: Array, axis: int = -1) -> Array:
    """exp(x_k) / sum_j exp(x_j) along `axis`, shifted by the max for stability."""
    z = x - jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    e = jnp.exp(z)
    return e / jnp.sum(e, axis=axis, keepdims=True)


def log_softmax(x: Array, axis: int = -1) -> Array:
    """x_k - log sum_j exp(x_j) along `axis` (log-sum-exp with max shift)."""
    z = x - jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=axis, keepdims=True))


#: Every activation by name.
ACTIVATIONS: dict[str, Callable[..., Array]] = {
    "identity": identity,
    "step": step,
    "heaviside": step,
    "sign": sign,
    "sigmoid": sigmoid,
    "tanh": tanh,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "elu": elu,
    "softplus": softplus,
    "softmax": softmax,
    "log_softmax": log_softmax,
}


def get_activation(name: str) -> Callable[..., Array]:
    """Looks an activation up by name.

    Raises:
      ValueError: naming the argument, the given name and the valid names.
    """
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"activation: unknown name {name!r}; expected one of {sorted(ACTIVATIONS)}"
        ) from None
