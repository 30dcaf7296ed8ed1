"""Perf canaries: checks of what XLA compiles for nnfun's CPU choices (`nnfun.fast`).

They read compiled HLO text, so they test this jaxlib's XLA rather than nnfun's values, and
may break on a jaxlib upgrade while nnfun stays correct; that is why they are not in the
default test suite. Run them on demand, after a jax upgrade or a change to `nnfun.fast`::

    python -m pytest experiments/benchmarks/perf_canaries.py -q

Each check comes with the twin that shows it can fail (the same program under XLA's defaults,
or the engine that does compile a convolution). The numerical twins (the options and variants
change no value) are in tests/test_fast.py.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax
import pytest

from nnfun import fast, models, train
from nnfun.spec import LossSpec

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU programs")


def _library_calls_with_a_convolution(hlo: str) -> list[str]:
    """Names of the library (YNNPACK / XNNPACK / oneDNN) fusions whose body has a convolution."""
    bodies = dict(re.findall(r"^%?([\w.-]+) \([^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M))
    return [m.group(1) for m in re.finditer(r'calls=%?([\w.-]+),[^\n]*"kind":"__(ynn|xnn|onednn)',
                                            hlo)
            if "convolution(" in bodies.get(m.group(1), "")]


def _lenet_like_step_hlo(options: dict | None) -> str:
    model = models.cnn([16, 32], [16], 10)  # 3x3 kernels; the 8x8x16 -> 32 layer is wide enough
    opt = optax.adam(1e-3)
    state = train.init_train_state(0, model.layers, (16, 16, 1), opt)
    step = train.make_train_step(model.layers, LossSpec.make("softmax_cross_entropy"), (), opt,
                                 fast_paths=True, compiler_options=options)
    x, y = jnp.zeros((16, 16, 16, 1)), jnp.zeros((16,), jnp.int32)
    return step.lower(state, (x, y)).compile().as_text()


@pytest.mark.parametrize("options_on", [True, False])
def test_conv_options_keep_convolutions_out_of_library_calls(options_on):
    """With `CPU_CONV_COMPILER_OPTIONS` no convolution sits in a YNNPACK call; under XLA's
    defaults (the twin) this jaxlib does put them there."""
    options = fast.compiler_options(None) if options_on else dict(fast.CPU_COMPILER_OPTIONS)
    hlo = _lenet_like_step_hlo(options)
    assert "convolution(" in hlo
    assert (_library_calls_with_a_convolution(hlo) == []) is options_on


def _parameter_copies(hlo: str, params: list) -> list[str]:
    """The copy ops of the compiled program whose result has a parameter's shape."""
    shapes = {"f32[" + ",".join(map(str, leaf.shape)) + "]"
              for leaf in jax.tree.leaves(params) if leaf.ndim == 2}
    return [line for line in hlo.splitlines()
            if " copy(" in line and line.split("= ", 1)[1].split("{")[0] in shapes]


@pytest.mark.parametrize("options_on", [True, False])
def test_the_scanned_epoch_copies_no_parameters(options_on):
    """Region-analysis copy insertion drops the per-step parameter copies; XLA's defaults (the
    twin) keep them."""
    model = models.mlp([48, 32], 10)
    opt = optax.adam(1e-3)
    state = train.init_train_state(0, model.layers, (24,), opt)
    body = train.make_step_body(model.layers, LossSpec.make("softmax_cross_entropy"), (), opt,
                                grad_norm_every=0)
    epoch = train.make_epoch_fn(body, 16, compiler_options=fast.compiler_options(
        model.layers) if options_on else None)
    x, y = jnp.zeros((64, 24)), jnp.zeros((64,), jnp.int32)
    hlo = epoch.lower(state, x, y, jnp.int32(0)).compile().as_text()
    assert (_parameter_copies(hlo, state.params) == []) is options_on


@pytest.mark.parametrize(("engine", "has_convolution"), [("manual", False), ("autodiff", True)])
def test_only_the_autodiff_epoch_has_convolution_ops(engine, has_convolution):
    """What makes the manual engine's scanned conv epoch fast: no convolution op for XLA:CPU to
    run slowly inside the loop."""
    model = models.cnn([8, 16], [16], 10)
    opt = optax.adam(1e-3)
    state = train.init_train_state(0, model.layers, (8, 8, 1), opt)
    body = train.make_step_body(model.layers, LossSpec.make("softmax_cross_entropy"), (), opt,
                                engine=engine, fast_paths=True)
    epoch = train.make_epoch_fn(body, 8)
    x, y = jnp.zeros((32, 8, 8, 1)), jnp.zeros((32,), jnp.int32)
    hlo = epoch.lower(state, x, y, jnp.int32(0)).as_text(dialect="hlo")
    assert ("convolution(" in hlo) is has_convolution


def test_the_bias_product_is_used_for_tall_outputs_only():
    def lowered(shape):
        out, b = jnp.ones(shape), jnp.ones(shape[-1:])
        return jax.jit(lambda o, b: fast.add_bias_outer(o, {"b": b})).lower(out, b).as_text()

    assert "dot_general" in lowered((8, 16, 16, 4))  # 2,048 rows
    assert "dot_general" not in lowered((8, 15, 16, 4))  # 1,920 rows
    assert "dot_general" not in lowered((128, 10))


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
