"""Shared fixtures. Silent broadcasting is an error everywhere in the suite (as in equinox).

The suite compiles hundreds of small XLA programs and runs each a few times, so XLA's
backend (LLVM) optimisation is turned down for it, and for the commands it starts: compiling
takes about half the time and the programs compute the same values, which every test checks
to its own tolerance. Benchmarks under experiments/ never run with this setting. The commands
the tests start share one JAX compilation cache in the temporary folder (as `nnfun` shares
~/.cache/nnfun/jax between runs), never the user's.
"""

from __future__ import annotations

import os
import tempfile

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"nnfun-tests-jax-cache-{os.getuid()}"))

import jax  # noqa: E402  (after XLA_FLAGS: XLA reads them once, when the backend starts)
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def maybe_jit(request):
    """Runs a test body un-jitted and jitted (chex's variants idea)."""
    return jax.jit if request.param else (lambda f, **kw: f)
