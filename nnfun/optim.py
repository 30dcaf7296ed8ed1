"""Optimisers and learning-rate schedules: a thin layer over optax, by optax's own names.

Optimisers (`OPTIMIZERS`): ``sgd`` (with ``momentum`` and ``nesterov``; full-batch gradient
descent is sgd with the whole set as one batch), ``rmsprop``, ``adagrad``, ``adam``, ``adamw``.
Lecture 001's momentum rule W(j+1) = W(j) - eta grad + gamma (W(j) - W(j-1)) is optax's
``sgd(eta, momentum=gamma)`` under a constant learning rate.

Schedules (`SCHEDULES`): optax's ``constant_schedule``, ``piecewise_constant_schedule`` (the step
decay: x0.1 at epochs 30, 60, 90), ``cosine_decay_schedule``, ``linear_schedule``,
``polynomial_schedule``, ``exponential_decay``, ``warmup_cosine_decay_schedule``, and the one
optax lacks, ``inverse_sqrt_schedule`` (lecture 003's alpha_0 / sqrt(t)). Any schedule can get a
linear warmup in front (`with_warmup`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import optax

__all__ = ["make_optimizer", "make_schedule", "inverse_sqrt_schedule", "OPTIMIZERS", "SCHEDULES",
           "STEP_ARGUMENTS"]

Schedule = Callable[[Any], Any]


def inverse_sqrt_schedule(init_value: float, timescale: int = 1) -> Schedule:
    """lr(step) = init_value / sqrt(1 + step / timescale).

    With ``timescale=1`` this is lecture 003's alpha_t = alpha_0 / sqrt(t) for t = step + 1.
    """
    if timescale < 1:
        raise ValueError(f"inverse_sqrt_schedule: timescale must be >= 1, got {timescale}")
    return lambda step: init_value * jnp.reciprocal(jnp.sqrt(1.0 + step / timescale))


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "rmsprop": optax.rmsprop,
    "adagrad": optax.adagrad,
    "adam": optax.adam,
    "adamw": optax.adamw,
}

SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant_schedule": optax.constant_schedule,
    "piecewise_constant_schedule": optax.piecewise_constant_schedule,
    "cosine_decay_schedule": optax.cosine_decay_schedule,
    "linear_schedule": optax.linear_schedule,
    "polynomial_schedule": optax.polynomial_schedule,
    "exponential_decay": optax.exponential_decay,
    "warmup_cosine_decay_schedule": optax.warmup_cosine_decay_schedule,
    "inverse_sqrt_schedule": inverse_sqrt_schedule,
}

#: Schedule arguments that count steps (scaled by steps per epoch when given in epochs).
STEP_ARGUMENTS = frozenset({"decay_steps", "transition_steps", "transition_begin",
                            "warmup_steps", "timescale", "boundaries_and_scales"})


def _lookup(table: Mapping[str, Callable[..., Any]], name: str, what: str) -> Callable[..., Any]:
    if name not in table:
        raise ValueError(f"{what}: unknown name {name!r}; expected one of {sorted(table)}")
    return table[name]


def _call(fn: Callable[..., Any], name: str, kwargs: Mapping[str, Any]) -> Any:
    params = inspect.signature(fn).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"{name}: unknown argument(s) {unknown}; expected some of "
                         f"{sorted(params)}")
    return fn(**kwargs)


def make_schedule(name: str, *, warmup_steps: int = 0, warmup_init_value: float = 0.0,
                  **kwargs: Any) -> Schedule:
    """Builds an optax schedule by name, optionally with a linear warmup in front.

    Args:
      name: a key of `SCHEDULES`.
      warmup_steps: length of a linear ramp from `warmup_init_value` to the schedule's first
        value; the schedule then starts (at its own step 0) after the ramp.
      **kwargs: the schedule's own arguments, by optax's names. ``boundaries_and_scales`` keys
        may be strings (TOML keys) and are converted to ints.
    """
    fn = _lookup(SCHEDULES, name, "schedule")
    if "boundaries_and_scales" in kwargs:
        kwargs = {**kwargs, "boundaries_and_scales": {
            int(k): float(v) for k, v in dict(kwargs["boundaries_and_scales"]).items()}}
    schedule = _call(fn, name, kwargs)
    if warmup_steps <= 0:
        return schedule
    ramp = optax.linear_schedule(warmup_init_value, schedule(0), warmup_steps)
    return optax.join_schedules([ramp, schedule], [warmup_steps])


def make_optimizer(name: str, learning_rate: float | Schedule, *,
                   clip_global_norm: float | None = None,
                   **kwargs: Any) -> optax.GradientTransformation:
    """Builds an optax optimiser by name, optionally clipping gradients by global norm first.

    Args:
      name: a key of `OPTIMIZERS`.
      learning_rate: a float or a schedule (step -> learning rate).
      clip_global_norm: if set, `optax.clip_by_global_norm(clip_global_norm)` runs first.
      **kwargs: the optimiser's own arguments by optax's names (``momentum``, ``nesterov``,
        ``b1``, ``b2``, ``eps``, ``decay``, ``weight_decay``, ...).
    """
    fn = _lookup(OPTIMIZERS, name, "optimizer")
    opt = _call(fn, name, {"learning_rate": learning_rate, **kwargs})
    if clip_global_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(clip_global_norm), opt)
    return opt
