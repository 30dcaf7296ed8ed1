"""`nnfun.fast`: every CPU variant equals the canonical function it replaces, and the choices
that change no value (dispatch, compiler options) are made as documented. No timing here, and
no look at the compiled program (those checks are on-demand perf canaries:
experiments/benchmarks/perf_canaries.py)."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nnfun import fast, models, train
from nnfun import layers as L
from nnfun.gradcheck import relative_error
from nnfun.spec import LossSpec

TOL = 1e-10

CONV_MODELS = {
    "cnn2d": models.cnn([8, 16], [32], 10),
    "cnn2d_no_pool_valid": models.cnn([4], [], 3, kernel_size=5, pool=None, padding="VALID"),
    "cnn1d": models.cnn([8], [16], 10, rank=1, pool="avg"),
    "sequential_conv2d_only": models.sequential([{"name": "conv2d", "features": 2}, "flatten"]),
    "sequential_layer_specs": models.sequential(
        [models.layer("max_pool2d"), models.layer("conv2d", features=3, kernel_size=(3, 1)),
         models.layer("flatten"), models.layer("dense", features=2)]),
}
MLPS = [models.mlp([128, 128], 10), models.mlp([256], 10, flatten=True, dropout=0.2),
        models.mlp([], 10),
        models.sequential(["flatten", ("max_pool1d", {}), {"name": "dense", "features": 3}])]


# --------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize("name", sorted(CONV_MODELS))
def test_conv_models_of_the_autodiff_engine_get_the_loop_on_a_cpu(name):
    layers = CONV_MODELS[name].layers
    assert fast.choose_dispatch(layers, backend="cpu") == "loop"
    assert fast.choose_dispatch(layers, "auto", "manual", backend="cpu") == "scan"
    assert fast.choose_dispatch(layers, backend="gpu") == "scan"


@pytest.mark.parametrize("model", MLPS, ids=range(len(MLPS)))
def test_models_without_convolutions_get_the_scan(model):
    assert fast.choose_dispatch(model.layers, backend="cpu") == "scan"


def test_an_explicit_request_is_kept():
    layers = CONV_MODELS["cnn2d"].layers
    assert fast.choose_dispatch(layers, "scan", backend="cpu") == "scan"
    assert fast.choose_dispatch(models.mlp([4], 2).layers, "loop") == "loop"
    with pytest.raises(ValueError, match="dispatch"):
        fast.choose_dispatch(layers, "unrolled")
    with pytest.raises(ValueError, match="engine"):
        fast.choose_dispatch(layers, "auto", "symbolic")


# --------------------------------------------------------------------------- im2col vs lax.conv

CONV_CASES = [  # (x shape, w shape, stride, padding)
    ((2, 7, 7, 1), (5, 5, 1, 32), (1, 1), "SAME"),
    ((2, 7, 6, 2), (3, 2, 2, 3), (2, 2), "VALID"),
    ((1, 6, 5, 2), (3, 3, 2, 2), (2, 1), "SAME"),
    ((2, 9, 8, 2), (2, 4, 2, 3), (3, 2), "SAME"),
    ((2, 11, 2), (5, 2, 3), (2,), "SAME"),
    ((1, 9, 2), (4, 2, 2), (2,), "VALID"),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"x{c[0]}-w{c[1]}-s{c[2]}-{c[3]}"
                                                  for c in CONV_CASES])
def test_im2col_equals_lax_conv_in_values_and_gradients(case):
    x_shape, w_shape, stride, padding = case
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(11)
        x = jax.random.normal(jax.random.fold_in(key, 0), x_shape, jnp.float64)
        w = jax.random.normal(jax.random.fold_in(key, 1), w_shape, jnp.float64)
        im2col = jax.jit(lambda x, w: fast.conv_im2col(x, w, stride, padding))
        lax_conv = jax.jit(lambda x, w: L._conv(x, w, stride, padding))
        out_i, vjp_i = jax.vjp(im2col, x, w)
        out_l, vjp_l = jax.vjp(lax_conv, x, w)
        assert out_i.shape == out_l.shape and out_i.dtype == out_l.dtype
        assert relative_error(out_l, out_i)[1] <= TOL
        cot = jax.random.normal(jax.random.fold_in(key, 2), out_l.shape, jnp.float64)
        for g_i, g_l in zip(vjp_i(cot), vjp_l(cot)):
            assert g_i.shape == g_l.shape
            assert relative_error(g_l, g_i)[1] <= TOL


@pytest.mark.parametrize("name,x_shape,kw,expect_im2col", [
    ("conv2d", (2, 12, 12, 1), {"features": 32, "kernel_size": 5}, True),
    ("conv2d", (2, 6, 6, 32), {"features": 64, "kernel_size": 5}, False),
    ("conv1d", (2, 40, 1), {"features": 25, "kernel_size": 5, "stride": 2}, True),
    ("conv1d", (2, 20, 25), {"features": 25, "kernel_size": 3}, False),
])
def test_the_fast_conv_layers_follow_the_switch_and_equal_the_canonical(name, x_shape, kw,
                                                                         expect_im2col):
    rank = len(x_shape) - 2
    stride = L._pair(kw.get("stride", 1), rank, "conv stride")
    kernel = L._pair(kw["kernel_size"], rank, "conv kernel")
    w_shape = (*kernel, x_shape[-1], kw["features"])
    assert fast.use_im2col(x_shape, w_shape, stride, "SAME") == expect_im2col
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(3)
        params = {"w": jax.random.normal(key, w_shape, jnp.float64),
                  "b": jax.random.normal(jax.random.fold_in(key, 1), w_shape[-1:], jnp.float64)}
        x = jax.random.normal(jax.random.fold_in(key, 2), x_shape, jnp.float64)
        akw = {"stride": kw.get("stride", 1), "padding": "SAME"}
        out = fast.fast_layers("cpu")[name].apply(params, x, **akw)
        assert relative_error(L.LAYERS[name].apply(params, x, **akw), out)[1] <= TOL


def test_the_fast_conv_keeps_the_canonical_argument_checks():
    params = {"w": jnp.zeros((3, 3, 2, 4)), "b": jnp.zeros(4)}
    with pytest.raises(ValueError, match="conv2d: input x has 1 channels"):
        fast.conv2d_apply(params, jnp.zeros((1, 5, 5, 1)))


def test_the_switch_keeps_lax_conv_where_im2col_does_not_fit_or_is_large():
    assert not fast.use_im2col((1, 3, 3, 1), (5, 5, 1, 32), (1, 1), "VALID")
    assert not fast.use_im2col((128, 28, 28, 1), (5, 5, 1, 32), (1, 1), "SAME")  # 10 MB
    assert fast.use_im2col((8, 28, 28, 1), (5, 5, 1, 32), (1, 1), "SAME")


def test_fast_layers_change_nothing_off_a_cpu():
    assert fast.fast_layers("gpu") == L.LAYERS
    assert fast.fast_layers("cpu")["conv2d"].apply is fast.conv2d_apply
    assert fast.fast_layers("cpu")["relu"] is L.LAYERS["relu"]


def test_im2col_patch_order_matches_the_kernel_layout():
    """A one-hot kernel picks exactly one input offset and channel."""
    with jax.enable_x64(True):
        x = jnp.arange(2 * 5 * 4 * 2, dtype=jnp.float64).reshape(2, 5, 4, 2)
        for i, j, c in itertools.product(range(3), range(2), range(2)):
            w = jnp.zeros((3, 2, 2, 1), jnp.float64).at[i, j, c, 0].set(1.0)
            got = fast.conv_im2col(x, w, (1, 1), "VALID")[..., 0]
            assert jnp.array_equal(got, x[:, i:i + 3, j:j + 3, c])


@pytest.mark.parametrize("out_shape", [(4, 25, 23, 3), (2048, 5), (3, 700, 2), (8, 3)])
def test_bias_outer_product_equals_the_broadcast(out_shape):
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        out = jnp.asarray(rng.normal(size=out_shape))
        b = jnp.asarray(rng.normal(size=out_shape[-1:]))
        g = jnp.asarray(rng.normal(size=out_shape))

        def value_and_grads(fn):
            y, back = jax.vjp(lambda o, b: fn(o, {"b": b}), out, b)
            return (y, *back(g))

        for a, p in zip(value_and_grads(fast.add_bias_outer), value_and_grads(L._add_bias)):
            assert a.dtype == p.dtype == jnp.float64
            assert relative_error(a, p)[1] <= 1e-12
    assert (math.prod(out_shape[:-1]) >= fast.BIAS_OUTER_MIN_ROWS) == (out_shape[0] != 8)


# --------------------------------------------------------------------------- whole steps


def _cnn_run(engine: str, fast_paths: bool, options: dict | None, steps: int = 3):
    model = models.cnn([8, 16], [16], 10)
    opt = optax.adam(1e-3)
    state = train.init_train_state(0, model.layers, (8, 8, 1), opt)
    step = train.make_train_step(model.layers, LossSpec.make("softmax_cross_entropy"), (), opt,
                                 engine=engine, fast_paths=fast_paths, compiler_options=options)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
    for _ in range(steps):
        state, metrics = step(state, (x, y))
    return jax.tree.leaves(state.params), float(metrics["loss"])


@pytest.mark.parametrize("engine", ["autodiff", "manual"])
def test_fast_paths_train_to_the_canonical_parameters(engine):
    canonical = _cnn_run(engine, False, None)
    quick = _cnn_run(engine, True, fast.compiler_options(CONV_MODELS["cnn2d"].layers))
    for a, b in zip(canonical[0], quick[0]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert canonical[1] == pytest.approx(quick[1], rel=1e-5)


def _mlp_epochs(options: dict | None) -> tuple:
    model = models.mlp([48, 32], 10)
    opt = optax.adam(1e-3)
    state = train.init_train_state(0, model.layers, (24,), opt)
    body = train.make_step_body(model.layers, LossSpec.make("softmax_cross_entropy"), (), opt,
                                grad_norm_every=0)
    epoch = train.make_epoch_fn(body, 16, compiler_options=options)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 24)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 64), jnp.int32)
    for e in range(2):
        state, metrics = epoch(state, x, y, jnp.int32(e))
    return jax.tree.leaves(state), np.asarray(metrics["loss"])


def test_the_compiler_options_change_no_result():
    with_options, defaults = _mlp_epochs(fast.compiler_options(backend="cpu")), _mlp_epochs(None)
    for a, b in zip(with_options[0], defaults[0]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(with_options[1], defaults[1])


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_only_models_with_convolutions_get_the_conv_options():
    both = {**fast.CPU_COMPILER_OPTIONS, **fast.CPU_CONV_COMPILER_OPTIONS}
    assert fast.compiler_options(CONV_MODELS["cnn1d"].layers) == both
    assert fast.compiler_options(None) == both  # model not known
    assert fast.compiler_options(models.mlp([16], 3).layers) == fast.CPU_COMPILER_OPTIONS


def test_other_backends_get_xla_defaults():
    assert fast.compiler_options(backend="gpu") is None
    assert fast.compiler_options(CONV_MODELS["cnn2d"].layers, backend="tpu") is None


def test_options_a_jaxlib_rejects_fall_back_to_the_defaults(monkeypatch):
    monkeypatch.setattr(fast, "CPU_CONV_COMPILER_OPTIONS",
                        {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_FUSION_TYPE"})
    with pytest.warns(RuntimeWarning, match="did not accept the CPU compiler options"):
        assert fast.compiler_options(backend="cpu") is None
