"""The automatic train-loop dispatch and the CPU convolution switch, without any timing.

- `nnfun.train.choose_dispatch` must never put a convolution model of the autodiff engine on
  the scanned path (a scanned train step with XLA's convolutions was measured 6.6-16x slower on
  a CPU than the same jitted step in a Python loop), whichever builder made the model; an MLP
  gets the scanned epoch. The manual engine's conv models get the scanned epoch too, which is
  safe only because its compiled epoch has no convolution op in it: checked on the program.
- On a CPU, `nnfun.layers` computes small convolutions of narrow inputs as one im2col matmul
  and the rest with `lax.conv_general_dilated`; both must give the same values and gradients
  (float64, 1e-10).
- On a CPU, nnfun compiles the steps of conv models with `train.CPU_CONV_COMPILER_OPTIONS`,
  which keep every convolution out of XLA:CPU's YNNPACK library calls (measured 2.0-2.3x slower
  than XLA's own convolution on wide layers); the compiled program must show it, compute what
  XLA's defaults compute, and a jaxlib that rejects the options must fall back with a warning.
- On a CPU, every model's steps get `train.CPU_COMPILER_OPTIONS`, whose copy insertion drops
  the per-step copy of the parameters in a scanned epoch: checked on the compiled epoch (and
  that XLA's defaults do copy them), with bitwise the same parameters after an epoch.
"""

from __future__ import annotations

import itertools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nnfun import layers as L
from nnfun import models, train
from nnfun.gradcheck import relative_error
from nnfun.spec import LossSpec
from nnfun.train import choose_dispatch

TOL = 1e-10

CONV_MODELS = {
    "cnn2d": models.cnn([8, 16], [32], 10),
    "cnn2d_no_pool_valid": models.cnn([4], [], 3, kernel_size=5, pool=None, padding="VALID"),
    "cnn1d": models.cnn([8], [16], 10, rank=1, pool="avg"),
    "sequential_conv2d_only": models.sequential([{"name": "conv2d", "features": 2}, "flatten"]),
    "sequential_conv1d_deep": models.sequential(
        [{"name": "conv1d", "features": 25, "kernel_size": 5, "stride": 2}, "relu",
         {"name": "conv1d", "features": 25, "kernel_size": 3}, "relu", "flatten",
         {"name": "dense", "features": 10}]),
    "sequential_layer_specs": models.sequential(
        [models.layer("max_pool2d"), models.layer("conv2d", features=3, kernel_size=(3, 1)),
         models.layer("flatten"), models.layer("dense", features=2)]),
}


@pytest.mark.parametrize("name", sorted(CONV_MODELS))
def test_conv_models_never_get_the_scan(name):
    assert choose_dispatch(CONV_MODELS[name].layers) == "loop"
    assert choose_dispatch(CONV_MODELS[name].layers, "auto") == "loop"
    assert choose_dispatch(CONV_MODELS[name].layers, "auto", "autodiff") == "loop"


@pytest.mark.parametrize("name", sorted(CONV_MODELS))
def test_the_manual_engine_scans_conv_models(name):
    assert choose_dispatch(CONV_MODELS[name].layers, "auto", "manual") == "scan"


@pytest.mark.parametrize(("engine", "has_convolution"), [("manual", False), ("autodiff", True)])
def test_only_the_autodiff_epoch_has_convolution_ops(engine, has_convolution):
    """What makes the manual engine's scanned conv epoch safe: no convolution op for XLA to
    keep in a slow layout inside the loop. The autodiff twin shows that the check can fail."""
    model = models.cnn([8, 16], [16], 10)
    opt = optax.adam(1e-3)
    state = train.init_train_state(0, model.layers, (8, 8, 1), opt)
    body = train.make_step_body(model.layers, LossSpec.make("softmax_cross_entropy"), (), opt,
                                engine=engine)
    epoch = train.make_epoch_fn(body, 8, layers=model.layers)
    x, y = jnp.zeros((32, 8, 8, 1)), jnp.zeros((32,), jnp.int32)
    hlo = epoch.lower(state, x, y, jnp.int32(0)).as_text(dialect="hlo")
    assert ("convolution(" in hlo) is has_convolution


@pytest.mark.parametrize("model", [models.mlp([128, 128], 10),
                                   models.mlp([256], 10, flatten=True, dropout=0.2),
                                   models.mlp([], 10),
                                   models.sequential(["flatten", ("max_pool1d", {}),
                                                      {"name": "dense", "features": 3}])])
def test_models_without_convolutions_get_the_scan(model):
    assert choose_dispatch(model.layers) == "scan"


def test_an_explicit_request_is_kept():
    layers = CONV_MODELS["cnn2d"].layers
    assert choose_dispatch(layers, "scan") == "scan"
    assert choose_dispatch(models.mlp([4], 2).layers, "loop") == "loop"
    assert choose_dispatch(layers, "loop", "manual") == "loop"
    with pytest.raises(ValueError, match="dispatch"):
        choose_dispatch(layers, "unrolled")
    with pytest.raises(ValueError, match="engine"):
        choose_dispatch(layers, "auto", "symbolic")


# --------------------------------------------------------------------------- im2col vs lax.conv

CONV2D_CASES = [  # (x shape, w shape, stride, padding)
    ((2, 7, 7, 1), (5, 5, 1, 32), (1, 1), "SAME"),
    ((2, 6, 6, 3), (3, 3, 3, 4), (1, 1), "SAME"),
    ((2, 7, 6, 2), (3, 2, 2, 3), (2, 2), "VALID"),
    ((1, 6, 5, 2), (3, 3, 2, 2), (2, 1), "SAME"),
    ((2, 9, 8, 2), (2, 4, 2, 3), (3, 2), "SAME"),
    ((1, 5, 9, 1), (5, 1, 1, 2), (1, 3), "VALID"),
    ((2, 4, 4, 2), (4, 4, 2, 1), (1, 1), "VALID"),
]
CONV1D_CASES = [
    ((2, 10, 1), (5, 1, 25), (2,), "SAME"),
    ((2, 11, 2), (5, 2, 3), (2,), "SAME"),
    ((1, 9, 2), (4, 2, 2), (2,), "VALID"),
    ((2, 8, 3), (3, 3, 4), (1,), "SAME"),
    ((1, 7, 1), (7, 1, 2), (3,), "VALID"),
]


def _ids(cases):
    return [f"x{xs}-w{ws}-s{st}-{p}" for xs, ws, st, p in cases]


@pytest.mark.parametrize("case", CONV2D_CASES + CONV1D_CASES,
                         ids=_ids(CONV2D_CASES + CONV1D_CASES))
def test_im2col_and_lax_conv_agree_in_values_and_gradients(case, maybe_jit):
    x_shape, w_shape, stride, padding = case
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(11)
        x = jax.random.normal(jax.random.fold_in(key, 0), x_shape, jnp.float64)
        w = jax.random.normal(jax.random.fold_in(key, 1), w_shape, jnp.float64)
        im2col = maybe_jit(lambda x, w: L._conv_im2col(x, w, stride, padding))
        lax_conv = maybe_jit(lambda x, w: L._conv_lax(x, w, stride, padding))
        out_i, vjp_i = jax.vjp(im2col, x, w)
        out_l, vjp_l = jax.vjp(lax_conv, x, w)
        assert out_i.shape == out_l.shape and out_i.dtype == out_l.dtype
        assert relative_error(out_l, out_i)[1] <= TOL
        cot = jax.random.normal(jax.random.fold_in(key, 2), out_l.shape, jnp.float64)
        for g_i, g_l in zip(vjp_i(cot), vjp_l(cot)):
            assert g_i.shape == g_l.shape
            assert relative_error(g_l, g_i)[1] <= TOL


@pytest.mark.parametrize("apply,x_shape,kw,expect_im2col", [
    (L.conv2d_apply, (2, 12, 12, 1), {"features": 32, "kernel_size": 5}, True),
    (L.conv2d_apply, (2, 6, 6, 32), {"features": 64, "kernel_size": 5}, False),
    (L.conv1d_apply, (2, 40, 1), {"features": 25, "kernel_size": 5, "stride": 2}, True),
    (L.conv1d_apply, (2, 20, 25), {"features": 25, "kernel_size": 3}, False),
])
def test_public_conv_follows_the_switch_and_matches_lax(apply, x_shape, kw, expect_im2col):
    """The layer picks im2col on a CPU only for narrow inputs, and always equals lax.conv."""
    rank = len(x_shape) - 2
    stride = L._pair(kw.get("stride", 1), rank, "stride")
    kernel = L._pair(kw["kernel_size"], rank, "kernel")
    w_shape = (*kernel, x_shape[-1], kw["features"])
    on_cpu = jax.default_backend() == "cpu"
    assert L._use_im2col(x_shape, w_shape, stride, "SAME") == (expect_im2col and on_cpu)
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(3)
        params = {"w": jax.random.normal(key, w_shape, jnp.float64),
                  "b": jax.random.normal(jax.random.fold_in(key, 1), w_shape[-1:], jnp.float64)}
        x = jax.random.normal(jax.random.fold_in(key, 2), x_shape, jnp.float64)
        akw = {"stride": kw.get("stride", 1), "padding": "SAME"}
        out = apply(params, x, **akw)
        ref = L._add_bias(L._conv_lax(x, params["w"], stride, "SAME"), params)
        assert relative_error(ref, out)[1] <= TOL


def test_the_switch_never_picks_im2col_for_a_window_that_does_not_fit():
    assert not L._use_im2col((1, 3, 3, 1), (5, 5, 1, 32), (1, 1), "VALID")


def test_the_switch_keeps_lax_conv_for_large_patch_matrices():
    """LeNet's first layer at batch 128: narrow, but 10 MB of patches."""
    assert not L._use_im2col((128, 28, 28, 1), (5, 5, 1, 32), (1, 1), "SAME")
    small = L._use_im2col((8, 28, 28, 1), (5, 5, 1, 32), (1, 1), "SAME")
    assert small == (jax.default_backend() == "cpu")


def test_im2col_patch_order_matches_the_kernel_layout():
    """A one-hot kernel picks exactly one input offset and channel."""
    with jax.enable_x64(True):
        x = jnp.arange(2 * 5 * 4 * 2, dtype=jnp.float64).reshape(2, 5, 4, 2)
        for i, j, c in itertools.product(range(3), range(2), range(2)):
            w = jnp.zeros((3, 2, 2, 1), jnp.float64).at[i, j, c, 0].set(1.0)
            got = L._conv_im2col(x, w, (1, 1), "VALID")[..., 0]
            assert jnp.array_equal(got, x[:, i:i + 3, j:j + 3, c])


# --------------------------------------------------------------------------- XLA:CPU options


def _library_calls_with_a_convolution(hlo: str) -> list[str]:
    """Names of the library (YNNPACK / XNNPACK / oneDNN) fusions whose body has a convolution."""
    bodies = dict(re.findall(r"^%?([\w.-]+) \([^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M))
    return [m.group(1) for m in re.finditer(r'calls=%?([\w.-]+),[^\n]*"kind":"__(ynn|xnn|onednn)',
                                            hlo)
            if "convolution(" in bodies.get(m.group(1), "")]


def _lenet_like_step(options_cleared: bool, monkeypatch: pytest.MonkeyPatch) -> tuple:
    if options_cleared:
        monkeypatch.setattr(train, "CPU_CONV_COMPILER_OPTIONS", {})
    model = models.cnn([16, 32], [16], 10)  # 3x3 kernels; the 8x8x16 -> 32 layer is wide enough
    opt = optax.adam(1e-3)
    state = train.init_train_state(0, model.layers, (16, 16, 1), opt)
    body = train.make_step_body(model.layers, LossSpec.make("softmax_cross_entropy"), (), opt)
    step = train.make_indexed_step(body, layers=model.layers)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, 16, 16, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 32), jnp.int32)
    idx = jnp.arange(16)
    return step, state, x, y, idx


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_cpu_steps_keep_convolutions_out_of_library_calls(monkeypatch):
    assert train.compiler_options() == {**train.CPU_COMPILER_OPTIONS,
                                        **train.CPU_CONV_COMPILER_OPTIONS}
    step, state, x, y, idx = _lenet_like_step(False, monkeypatch)
    hlo = step.lower(state, x, y, idx).compile().as_text()
    assert "convolution(" in hlo
    assert _library_calls_with_a_convolution(hlo) == []


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_the_check_above_can_fail_under_xla_defaults(monkeypatch):
    """Under XLA's defaults this jaxlib does put convolutions into YNNPACK calls; if a future
    jaxlib stops doing so, the options (and this pair of tests) can go."""
    step, state, x, y, idx = _lenet_like_step(True, monkeypatch)
    assert train.compiler_options() == train.CPU_COMPILER_OPTIONS
    hlo = step.lower(state, x, y, idx).compile().as_text()
    assert _library_calls_with_a_convolution(hlo)


def test_steps_with_and_without_the_options_compute_the_same(monkeypatch):
    out = []
    for cleared in (False, True):
        step, state, x, y, idx = _lenet_like_step(cleared, monkeypatch)
        for i in range(3):
            state, metrics = step(state, x, y, (idx + 8 * i) % 32)
        out.append((jax.tree.leaves(state.params), float(metrics["loss"])))
    for a, b in zip(out[0][0], out[1][0]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert out[0][1] == pytest.approx(out[1][1], rel=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_only_models_with_convolutions_get_the_conv_options():
    both = {**train.CPU_COMPILER_OPTIONS, **train.CPU_CONV_COMPILER_OPTIONS}
    assert train.compiler_options(CONV_MODELS["cnn1d"].layers) == both
    assert train.compiler_options(None) == both  # model not known
    assert train.compiler_options(models.mlp([16], 3).layers) == train.CPU_COMPILER_OPTIONS


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_no_options_left_means_xla_defaults(monkeypatch):
    monkeypatch.setattr(train, "CPU_COMPILER_OPTIONS", {})
    assert train.compiler_options(models.mlp([16], 3).layers) is None
    monkeypatch.setattr(train, "CPU_CONV_COMPILER_OPTIONS", {})
    assert train.compiler_options() is None


def _scanned_mlp_epoch(cleared: bool, monkeypatch: pytest.MonkeyPatch) -> tuple:
    monkeypatch.setattr(train, "CPU_COMPILER_OPTIONS",
                        {} if cleared else dict(train.CPU_COMPILER_OPTIONS))
    model = models.mlp([48, 32], 10)
    opt = optax.adam(1e-3)
    state = train.init_train_state(0, model.layers, (24,), opt)
    body = train.make_step_body(model.layers, LossSpec.make("softmax_cross_entropy"), (), opt,
                                grad_norm_every=0)
    epoch = train.make_epoch_fn(body, 16, layers=model.layers)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 24)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 64), jnp.int32)
    return epoch, state, x, y


def _parameter_copies(hlo: str, params: list) -> list[str]:
    """The copy ops of the compiled program whose result has a parameter's shape."""
    shapes = {"f32[" + ",".join(map(str, leaf.shape)) + "]"
              for leaf in jax.tree.leaves(params) if leaf.ndim == 2}
    return [line for line in hlo.splitlines()
            if " copy(" in line and line.split("= ", 1)[1].split("{")[0] in shapes]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
@pytest.mark.parametrize("cleared", [False, True])
def test_the_scanned_epoch_copies_no_parameters(cleared, monkeypatch):
    """The hidden weights are read by the backward pass after the update could be written;
    only region-analysis copy insertion sees that the reads come first. Under XLA's defaults
    the copies are there, so the check can fail."""
    epoch, state, x, y = _scanned_mlp_epoch(cleared, monkeypatch)
    hlo = epoch.lower(state, x, y, jnp.int32(0)).compile().as_text()
    copies = _parameter_copies(hlo, state.params)
    assert (copies != []) == cleared, copies


def test_the_copy_options_change_no_result(monkeypatch):
    out = []
    for cleared in (False, True):
        epoch, state, x, y = _scanned_mlp_epoch(cleared, monkeypatch)
        for e in range(2):
            state, metrics = epoch(state, x, y, jnp.int32(e))
        out.append((jax.tree.leaves(state), np.asarray(metrics["loss"])))
    for a, b in zip(out[0][0], out[1][0]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_other_backends_get_xla_defaults():
    assert train.compiler_options(backend="gpu") is None
    assert train.compiler_options(CONV_MODELS["cnn2d"].layers, backend="tpu") is None


def test_options_a_jaxlib_rejects_fall_back_to_the_defaults(monkeypatch):
    monkeypatch.setattr(train, "CPU_CONV_COMPILER_OPTIONS",
                        {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_FUSION_TYPE"})
    with pytest.warns(RuntimeWarning, match="did not accept the CPU compiler options"):
        assert train.compiler_options(backend="cpu") is None
    step, state, x, y, idx = _lenet_like_step(False, monkeypatch)
    state, metrics = step(state, x, y, idx)
    assert np.isfinite(float(metrics["loss"]))


# --------------------------------------------------------------------------- bias as a product


@pytest.mark.parametrize("out_shape", [(4, 25, 23, 3), (2048, 5), (3, 700, 2)])
def test_bias_outer_product_equals_the_broadcast(out_shape, monkeypatch):
    """Above `BIAS_MATMUL_MIN_ROWS` rows a CPU adds the bias as ones(rows) b^T; values and
    gradients equal the broadcast (float64)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        out = jnp.asarray(rng.normal(size=out_shape))
        b = jnp.asarray(rng.normal(size=out_shape[-1:]))
        g = jnp.asarray(rng.normal(size=out_shape))

        def value_and_grads(fn):
            y, back = jax.vjp(lambda o, b: fn(o, {"b": b}), out, b)
            return (y, *back(g))

        fast = value_and_grads(L._add_bias)
        assert math.prod(out_shape[:-1]) >= L.BIAS_MATMUL_MIN_ROWS
        monkeypatch.setattr(L, "BIAS_MATMUL_MIN_ROWS", 10**9)
        plain = value_and_grads(L._add_bias)
        for a, p in zip(fast, plain):
            assert a.dtype == p.dtype == jnp.float64
            assert relative_error(a, p)[1] <= 1e-12


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU lowering")
def test_the_bias_product_is_used_for_tall_outputs_only():
    def lowered(shape):
        out, b = jnp.ones(shape), jnp.ones(shape[-1:])
        return jax.jit(lambda o, b: L._add_bias(o, {"b": b})).lower(out, b).as_text()

    assert "dot_general" in lowered((8, 16, 16, 4))  # 2,048 rows
    assert "dot_general" not in lowered((8, 15, 16, 4))  # 1,920 rows
    assert "dot_general" not in lowered((128, 10))
