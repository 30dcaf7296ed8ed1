"""Static (never traced) metadata for caches.

A cache is a pytree: when a `_forward` runs under `jax.jit` or `jax.vmap` and returns its cache,
every leaf becomes an array. Hyperparameters the backward pass needs as Python values (an axis, a
shape, a stride) are therefore wrapped in `Static`, a pytree node with no leaves whose value is
carried in the tree structure and survives every transformation unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Static:
    """Hashable Python data carried through jax transformations as static metadata.

    Attributes:
      value: any hashable Python object (an int axis, a shape tuple, a window geometry).
    """

    value: Any
