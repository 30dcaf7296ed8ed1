"""Weight penalties over a whole parameter tree: `<reg>(params, *, lam, ...) -> scalar`.

Only weights (dict key ``"w"``) are penalised by default, biases not, as in the lecture notes;
``include_biases=True`` penalises every leaf. Two L2 conventions appear in the notes:

- ``convention="sum"``: lam * sum w^2 (lectures 003 and 004, R(W) = sum_k sum_l W_kl^2);
- ``convention="over_2m"``: lam / (2 m) * sum w^2 with m the batch size (lecture 000's cost).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from nnfun.spec import is_weight_path

__all__ = ["l2", "l1", "REGULARIZERS", "L2_CONVENTIONS", "get_regularizer"]

Array = jax.Array
L2_CONVENTIONS = ("sum", "over_2m")


def _penalised(params: Any, include_biases: bool) -> list[Array]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return [leaf for path, leaf in leaves if include_biases or is_weight_path(path)]


def l2(params: Any, *, lam: float, convention: str = "sum", include_biases: bool = False,
       batch_size: int | None = None) -> Array:
    """L2 penalty: lam * sum w^2, or lam / (2 m) * sum w^2 with ``convention="over_2m"``.

    Args:
      params: a parameter tree (list of per-layer dicts).
      lam: the regularisation strength lambda.
      batch_size: m, required by the "over_2m" convention.
    """
    total = sum((jnp.sum(jnp.square(w)) for w in _penalised(params, include_biases)),
                jnp.zeros(()))
    if convention == "sum":
        return lam * total
    if convention == "over_2m":
        if batch_size is None:
            raise ValueError("l2: convention 'over_2m' needs batch_size (m), got None")
        return lam / (2.0 * batch_size) * total
    raise ValueError(f"l2: convention must be one of {list(L2_CONVENTIONS)}, got {convention!r}")


def l1(params: Any, *, lam: float, include_biases: bool = False,
       batch_size: int | None = None) -> Array:
    """L1 penalty lam * sum |w|; its gradient is lam * sign(w), 0 at w = 0 (`batch_size` is
    accepted and unused, for a uniform call)."""
    # |w| written as w * sign(w): its derivative is sign(w), 0 at w = 0 (jnp.abs gives 1 there)
    return lam * sum((jnp.sum(w * jnp.sign(w)) for w in _penalised(params, include_biases)),
                     jnp.zeros(()))


REGULARIZERS: dict[str, Callable[..., Array]] = {"l2": l2, "l1": l1}


def get_regularizer(name: str) -> Callable[..., Array]:
    """Looks a regulariser up by name; ValueError naming the valid names otherwise."""
    if name not in REGULARIZERS:
        raise ValueError(f"regularizer: unknown name {name!r}; expected one of "
                         f"{sorted(REGULARIZERS)}")
    return REGULARIZERS[name]
