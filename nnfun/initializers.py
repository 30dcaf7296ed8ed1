"""Weight initialisers: `init(key, shape, dtype) -> array`, looked up by name.

The lecture notes' rules (lecture 004), for a weight of fan-in n_in and fan-out n_out:

- zeros / constant: every unit identical, so hidden units never differ (the symmetry problem);
- uniform(eps): uniform in [-eps, eps] ("initialise Theta to a random value in [-eps, eps]");
- normal(stddev): N(0, stddev^2);
- Xavier / Glorot: randn * sqrt(2 / (n_in + n_out)) (normal) or the uniform of equal variance;
- He: randn * sqrt(2 / n_in) (normal) or the uniform of equal variance;
- LeCun: variance 1 / n_in.

The normal variants are *untruncated* normals, exactly as the notes' ``np.random.randn(n) *
sqrt(2.0/n)``. Fans follow jax's convention: for a dense weight (D, M) fan-in is D; for a conv
kernel (K, K, C_in, C_out) fan-in is K * K * C_in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["zeros", "constant", "uniform", "normal", "xavier_normal", "xavier_uniform",
           "he_normal", "he_uniform", "lecun_normal", "lecun_uniform", "INITIALIZERS",
           "get_initializer"]

Array = jax.Array
Initializer = Callable[..., Array]


def zeros() -> Initializer:
    """All zeros (shows why symmetric initialisation fails)."""
    return jax.nn.initializers.zeros


def constant(value: float = 0.0) -> Initializer:
    """Every entry equals `value`."""
    return jax.nn.initializers.constant(value)


def uniform(eps: float = 0.12) -> Initializer:
    """Uniform in [-eps, eps] (lecture 004's symmetry breaking)."""

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, minval=-eps, maxval=eps)

    return init


def normal(stddev: float = 0.01) -> Initializer:
    """N(0, stddev^2)."""
    return jax.nn.initializers.normal(stddev)


def _scaled(scale: float, mode: str, distribution: str, name: str,
            rule: str) -> Callable[..., Initializer]:
    def make(in_axis: int | tuple[int, ...] = -2, out_axis: int | tuple[int, ...] = -1,
             batch_axis: tuple[int, ...] = ()) -> Initializer:
        return jax.nn.initializers.variance_scaling(
            scale, mode, distribution, in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis
        )

    make.__name__ = name
    make.__doc__ = (f"{rule}, {distribution} (`jax.nn.initializers.variance_scaling`).\n\n"
                    "Args:\n  in_axis, out_axis, batch_axis: which axes of the weight are the "
                    "fan-in, fan-out and batch axes.\n\nReturns:\n  ``init(key, shape, "
                    "dtype) -> array``.")
    return make


#: Xavier/Glorot: variance 2 / (fan_in + fan_out).
xavier_normal = _scaled(1.0, "fan_avg", "normal", "xavier_normal",
                         "Xavier / Glorot: variance 2 / (fan_in + fan_out)")
xavier_uniform = _scaled(1.0, "fan_avg", "uniform", "xavier_uniform",
                          "Xavier / Glorot: variance 2 / (fan_in + fan_out)")
#: He: variance 2 / fan_in.
he_normal = _scaled(2.0, "fan_in", "normal", "he_normal",
                     "He: variance 2 / fan_in")
he_uniform = _scaled(2.0, "fan_in", "uniform", "he_uniform",
                      "He: variance 2 / fan_in")
#: LeCun: variance 1 / fan_in.
lecun_normal = _scaled(1.0, "fan_in", "normal", "lecun_normal",
                        "LeCun: variance 1 / fan_in")
lecun_uniform = _scaled(1.0, "fan_in", "uniform", "lecun_uniform",
                         "LeCun: variance 1 / fan_in")

INITIALIZERS: dict[str, Callable[..., Initializer]] = {
    "zeros": zeros,
    "constant": constant,
    "uniform": uniform,
    "normal": normal,
    "xavier_normal": xavier_normal,
    "xavier_uniform": xavier_uniform,
    "glorot_normal": xavier_normal,
    "glorot_uniform": xavier_uniform,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "lecun_normal": lecun_normal,
    "lecun_uniform": lecun_uniform,
}
_FAN_BASED = {"xavier_normal", "xavier_uniform", "glorot_normal", "glorot_uniform",
              "he_normal", "he_uniform", "lecun_normal", "lecun_uniform"}


def get_initializer(spec: str | Mapping[str, Any] | tuple, **axes: Any) -> Initializer:
    """Builds an initialiser from a name or a ``{"name": ..., **kwargs}`` mapping.

    Args:
      spec: ``"he_normal"``, or ``{"name": "uniform", "eps": 0.1}`` (also as sorted pairs).
      **axes: ``in_axis`` / ``out_axis`` / ``batch_axis`` for the fan-based initialisers.

    Returns:
      A function ``init(key, shape, dtype=float32) -> array``.

    Raises:
      ValueError: for an unknown name or keyword, naming it and the valid choices.
    """
    if isinstance(spec, tuple):
        spec = dict(spec)
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        name = kwargs.pop("name", None)
    else:
        name, kwargs = spec, {}
    if name not in INITIALIZERS:
        raise ValueError(
            f"initializer: unknown name {name!r}; expected one of {sorted(INITIALIZERS)}"
        )
    if name in _FAN_BASED:
        kwargs = {**axes, **kwargs}
    try:
        return INITIALIZERS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"initializer {name!r}: bad arguments {kwargs}: {e}") from None
