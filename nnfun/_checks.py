"""Argument checks shared by both gradient paths (`nnfun.layers` and `nnfun.manual`).

Checks are not gradient math, so both implementations use these and a user's mistake reads the
same whichever engine runs; every error names the layer, the argument, what was expected and
what was found.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import jax

Array = jax.Array


def check_ndim(layer: str, name: str, a: Array, ndim: int, layout: str) -> None:
    """Raises ValueError unless `a` has `ndim` dimensions (`layout` describes them)."""
    if a.ndim != ndim:
        raise ValueError(f"{layer}: {name} must have shape {layout}, got shape {tuple(a.shape)}")


def check_dim(layer: str, name: str, a: Array, axis: int, size: int, what: str) -> None:
    """Raises ValueError unless ``a.shape[axis] == size`` (`what` says where `size` comes from)."""
    if a.shape[axis] != size:
        raise ValueError(f"{layer}: {name} has size {a.shape[axis]} on axis {axis} (shape "
                         f"{tuple(a.shape)}), but {what} is {size}")


def check_shape(layer: str, name: str, a: Array, shape: tuple[int, ...]) -> None:
    """Raises ValueError unless `a` has exactly `shape`."""
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{layer}: {name} must have shape {tuple(shape)}, "
                         f"got shape {tuple(a.shape)}")


def check_keys(layer: str, params: Mapping[str, Any], required: set[str],
               optional: set[str] = frozenset()) -> None:
    """Raises ValueError unless `params` is a dict holding `required` and only known keys."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{layer}: params must be a dict, got {type(params).__name__}")
    keys = set(params)
    if not required <= keys or not keys <= required | optional:
        raise ValueError(f"{layer}: params must have keys {sorted(required)} (optionally "
                         f"{sorted(optional)}), got {sorted(keys)}")


def check_no_params(layer: str, params: Mapping[str, Any]) -> None:
    """Raises ValueError unless `params` is the empty dict of a parameterless layer."""
    check_keys(layer, params, set())


def int_tuple(layer: str, name: str, value: int | Sequence[int], n: int) -> tuple[int, ...]:
    """`value` (an int, or `n` ints) as a tuple of `n` positive ints; ValueError otherwise."""
    try:
        t = (operator.index(value),) * n if not isinstance(value, Sequence) else tuple(
            operator.index(v) for v in value)
    except TypeError:
        t = ()
    if len(t) != n or min(t) < 1:
        raise ValueError(f"{layer}: {name} must be a positive int or {n} positive ints, "
                         f"got {value!r}")
    return t


def check_choice(layer: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raises ValueError unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{layer}: {name} must be one of {list(choices)}, got {value!r}")


PADDINGS = ("SAME", "VALID")


def check_padding(layer: str, padding: str) -> str:
    """`padding` if it is "SAME" or "VALID"; ValueError otherwise."""
    check_choice(layer, "padding", padding, PADDINGS)
    return padding


def check_positive(layer: str, name: str, value: Any) -> int:
    """`value` as an int if it is a positive integer; ValueError otherwise."""
    try:
        v = operator.index(value)
    except TypeError:
        v = 0
    if isinstance(value, bool) or v < 1:
        raise ValueError(f"{layer}: {name} must be a positive int, got {value!r}")
    return v


def reshape_target(layer: str, in_shape: tuple[int, ...], shape: Sequence[int]) -> tuple[int, ...]:
    """The output shape (N, *shape) of reshaping (N, *in_shape[1:]); at most one entry of
    `shape` may be -1 (inferred). A one-line ValueError when the sizes do not match."""
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"{layer}: shape must be a list of ints, got {shape!r}") from None
    size = math.prod(in_shape[1:])
    known = math.prod(s for s in shape if s != -1)
    if shape.count(-1) == 1 and known > 0 and size % known == 0:
        shape = tuple(size // known if s == -1 else s for s in shape)
    if any(s < 1 for s in shape) or math.prod(shape) != size:
        raise ValueError(f"{layer}: cannot reshape (N, {', '.join(map(str, in_shape[1:]))}) "
                         f"({size} values per example) to (N, {', '.join(map(str, shape))})")
    return (in_shape[0], *shape)
