"""Hand-written weight penalties over a whole parameter tree (the reference path).

Contract:

- ``<reg>_forward(params, *, lam, ..., batch_size=None) -> (penalty, cache)``: ``params`` is a
  parameter tree (a list of per-layer dicts); ``penalty`` is a scalar;
- ``<reg>_backward(dout, cache) -> dparams``: ``dout`` is the scalar upstream gradient and
  ``dparams`` has params' structure, with zeros on the leaves that are not penalised.

Only weights (leaves under the dict key ``"w"``, `nnfun.spec.is_weight_path`) are penalised,
biases not, unless ``include_biases=True``. ``batch_size`` is m of the lambda / (2 m)
convention; regularisers that do not use it accept it for a uniform call. `REG_RULES` maps every
regulariser name to its `Rule(forward, backward)`.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from nnfun.manual._checks import check_choice
from nnfun.manual.layers import Rule
from nnfun.spec import is_weight_path

Array = jax.Array
L2_CONVENTIONS = ("sum", "over_2m")


@partial(jax.tree_util.register_dataclass, data_fields=["weights", "coef"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class PenaltyCache:
    """Cache of a penalty c * sum_w phi(w).

    Attributes:
      weights: params' structure; the penalised leaves, and zeros of the same shape in place
        of the leaves that are not penalised.
      coef: scalar c (lam, or lam / (2 m)).
    """

    weights: Any
    coef: Array | float


def _penalised(params: Any, include_biases: bool) -> Any:
    """params with every leaf that is not penalised replaced by zeros."""
    def keep(path: tuple[Any, ...], leaf: Array) -> Array:
        return leaf if include_biases or is_weight_path(path) else jnp.zeros_like(leaf)

    return jax.tree_util.tree_map_with_path(keep, params)


def _total(fn: Any, weights: Any) -> Array:
    """sum over leaves of sum(fn(leaf)), a scalar (0 for a tree without leaves)."""
    return sum((jnp.sum(fn(w)) for w in jax.tree_util.tree_leaves(weights)), jnp.zeros(()))


def l2_forward(params: Any, *, lam: float, convention: str = "sum", include_biases: bool = False,
               batch_size: int | None = None) -> tuple[Array, PenaltyCache]:
    """L2 penalty c * sum w^2, with c = lam (``convention="sum"``, lectures 003/004) or
    c = lam / (2 m) (``convention="over_2m"``, lecture 000, m = batch_size).

    Args:
      params: parameter tree, e.g. a list of per-layer dicts.
      lam: regularisation strength lambda.
      convention: "sum" or "over_2m".
      include_biases: penalise every leaf, not only the weights.
      batch_size: m, required by "over_2m".

    Returns:
      (scalar penalty, cache).
    """
    check_choice("l2", "convention", convention, L2_CONVENTIONS)
    if convention == "sum":
        coef = lam
    elif batch_size is None:
        raise ValueError("l2: convention 'over_2m' needs batch_size (m), got None")
    else:
        coef = lam / (2.0 * batch_size)
    weights = _penalised(params, include_biases)
    return coef * _total(jnp.square, weights), PenaltyCache(weights, coef)


def l2_backward(dout: Array, cache: PenaltyCache) -> Any:
    """dw = dout * 2 c w on penalised leaves (2 lam w, or lam / m * w), 0 on the others.

    Args:
      dout: scalar upstream gradient.
      cache: from `l2_forward`.

    Returns:
      dparams with params' structure.
    """
    return jax.tree_util.tree_map(lambda w: dout * (2.0 * cache.coef) * w, cache.weights)


def l1_forward(params: Any, *, lam: float, include_biases: bool = False,
               batch_size: int | None = None) -> tuple[Array, PenaltyCache]:
    """L1 penalty lam * sum |w|.

    Args:
      params: parameter tree, e.g. a list of per-layer dicts.
      lam: regularisation strength lambda.
      include_biases: penalise every leaf, not only the weights.
      batch_size: accepted and unused (a uniform call with l2).

    Returns:
      (scalar penalty, cache).
    """
    weights = _penalised(params, include_biases)
    return lam * _total(jnp.abs, weights), PenaltyCache(weights, lam)


def l1_backward(dout: Array, cache: PenaltyCache) -> Any:
    """dw = dout * lam * sign(w) on penalised leaves (0 where w = 0), 0 on the others.

    Args:
      dout: scalar upstream gradient.
      cache: from `l1_forward`.

    Returns:
      dparams with params' structure.
    """
    return jax.tree_util.tree_map(lambda w: dout * cache.coef * jnp.sign(w), cache.weights)


REG_RULES: dict[str, Rule] = {
    "l2": Rule(l2_forward, l2_backward),
    "l1": Rule(l1_forward, l1_backward),
}
"""Every regulariser of the reference path: name -> Rule(forward, backward)."""

__all__ = ["REG_RULES", "L2_CONVENTIONS", "PenaltyCache", "l2_forward", "l2_backward",
           "l1_forward", "l1_backward"]
