"""The gates of a computational graph (lecture 003), each a forward that keeps a cache and a
backward that turns the upstream gradient into one gradient per input.

- add gate: gradient *distributor*, d(x + y) passes `dout` unchanged to both inputs;
- mul gate: gradient *swapper*, d(x * y) gives `dout * y` to x and `dout * x` to y;
- max gate: gradient *router*, d max(x, y) sends `dout` to the larger input only (to x at a tie);
- copy gate: gradient *adder*, a value used twice receives the sum of both gradients.

Example, lecture 000's f(x, y, z) = (x + y) z at (-2, 5, -4)::

    q, c1 = add_forward(x, y)           # q = 3
    f, c2 = mul_forward(q, z)           # f = -12
    dq, dz = mul_backward(1.0, c2)      # dq = -4, dz = 3
    dx, dy = add_backward(dq, c1)       # dx = dy = -4
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["add_forward", "add_backward", "mul_forward", "mul_backward", "max_forward",
           "max_backward", "copy_forward", "copy_backward", "MulCache", "MaxCache"]

Array = jax.Array


class MulCache(NamedTuple):
    """x, y: the two inputs (any equal shapes)."""

    x: Array
    y: Array


class MaxCache(NamedTuple):
    """x_wins: boolean mask, True where x >= y (x gets the gradient)."""

    x_wins: Array


def add_forward(x: Array, y: Array) -> tuple[Array, tuple[()]]:
    """out = x + y; nothing to cache."""
    return jnp.add(x, y), ()


def add_backward(dout: Array, cache: tuple[()]) -> tuple[Array, Array]:
    """dx = dout, dy = dout (the add gate distributes)."""
    return dout, dout


def mul_forward(x: Array, y: Array) -> tuple[Array, MulCache]:
    """out = x * y; caches both inputs."""
    return jnp.multiply(x, y), MulCache(jnp.asarray(x), jnp.asarray(y))


def mul_backward(dout: Array, cache: MulCache) -> tuple[Array, Array]:
    """dx = dout * y, dy = dout * x (the mul gate swaps)."""
    return dout * cache.y, dout * cache.x


def max_forward(x: Array, y: Array) -> tuple[Array, MaxCache]:
    """out = max(x, y); caches which input won."""
    return jnp.maximum(x, y), MaxCache(jnp.asarray(x) >= jnp.asarray(y))


def max_backward(dout: Array, cache: MaxCache) -> tuple[Array, Array]:
    """dx = dout where x won, dy = dout where y won (the max gate routes)."""
    zero = jnp.zeros_like(dout)
    return jnp.where(cache.x_wins, dout, zero), jnp.where(cache.x_wins, zero, dout)


def copy_forward(x: Array) -> tuple[tuple[Array, Array], tuple[()]]:
    """A value used twice: (x, x)."""
    return (x, x), ()


def copy_backward(douts: tuple[Array, Array], cache: tuple[()]) -> Array:
    """dx = dout_1 + dout_2 (gradients add at branches)."""
    return douts[0] + douts[1]
