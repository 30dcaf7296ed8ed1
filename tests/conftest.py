"""Shared fixtures. Silent broadcasting is an error everywhere in the suite (as in equinox)."""

from __future__ import annotations

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def maybe_jit(request):
    """Runs a test body un-jitted and jitted (chex's variants idea)."""
    return jax.jit if request.param else (lambda f, **kw: f)
