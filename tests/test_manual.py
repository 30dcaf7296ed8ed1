"""The hand-written reference path (`nnfun.manual`) against independent implementations.

Every rule is checked in float64 against autodiff (jax.grad / jax.vjp) of a straightforward jnp
implementation written *here* (lax.conv_general_dilated for convolutions, lax.reduce_window for
average pooling, plain formulas for losses), with random cotangents and a relative error of at
most 1e-10, and against elementwise central finite differences on a tiny case. The autodiff
path's own modules are not used (the registry test compares the two paths); this file pins the
semantics down independently, including kinks and ties, and the lecture notes' worked examples.
"""

from __future__ import annotations

import ast
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax import lax

from nnfun.manual import _windows as MW
from nnfun.manual import activations as MA
from nnfun.manual import layers as ML
from nnfun.manual import losses as MLoss
from nnfun.manual import model as MM
from nnfun.manual import regularizers as MR
from nnfun.spec import LayerSpec, LossSpec, RegSpec

TOL = 1e-10
FD_TOL = 1e-6
MANUAL_DIR = pathlib.Path(__file__).resolve().parents[1] / "nnfun" / "manual"
FEW = settings(max_examples=5, deadline=None, derandomize=True)


@pytest.fixture(autouse=True, scope="module")
def _x64():
    """float64 for this module only (never enabled globally)."""
    with jax.enable_x64(True):
        yield


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _randn(rng: np.random.Generator, *shape: int) -> jax.Array:
    return jnp.asarray(rng.standard_normal(shape))


def assert_close(got, want, tol: float = TOL) -> None:
    """Relative error ||got - want|| / ||want|| <= tol, leaf by leaf (exact when want is 0)."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert g.shape == w.shape
        assert np.linalg.norm(g - w) <= tol * max(np.linalg.norm(w), 1e-300), (g, w)


def assert_matches_fd(f, args, grads, h: float = 1e-6) -> None:
    """Elementwise central differences of the scalar f(*args) against the hand-written grads."""
    f = jax.jit(f)
    leaves, treedef = jax.tree.flatten(args)
    for li, leaf in enumerate(leaves):
        base = np.asarray(leaf, np.float64)
        numeric = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            vals = []
            for step in (h, -h):
                moved = base.copy()
                moved[idx] += step
                new = [*leaves[:li], jnp.asarray(moved), *leaves[li + 1:]]
                vals.append(float(f(*jax.tree.unflatten(treedef, new))))
            numeric[idx] = (vals[0] - vals[1]) / (2 * h)
        analytic = np.asarray(jax.tree.leaves(grads)[li], np.float64)
        err = np.max(np.abs(numeric - analytic), initial=0.0)
        assert err <= FD_TOL * max(1.0, np.max(np.abs(analytic), initial=0.0)), (li, err)


# --------------------------------------------------------------------------- independence


FORBIDDEN_MODULES = {"nnfun.layers", "nnfun.losses", "nnfun.models", "nnfun.objective",
                     "nnfun.regularizers", "nnfun.registry", "nnfun.activations"}
FORBIDDEN_NAMES = {"grad", "vjp", "jvp", "value_and_grad", "jacrev", "jacfwd", "linearize",
                   "linear_transpose", "custom_vjp", "custom_jvp", "conv_general_dilated",
                   "reduce_window"}
# Not even in comments or docstrings (the primitives below may be named in prose, not used).
FORBIDDEN_TEXT = re.compile(r"\b(vjp|jvp|jacrev|jacfwd|linearize|linear_transpose|custom_vjp|"
                            r"custom_jvp)\b|\bjax\s*\.\s*(grad|value_and_grad)\b")


def _manual_sources() -> list[pathlib.Path]:
    files = sorted(MANUAL_DIR.glob("*.py"))
    assert files
    return files


@pytest.mark.parametrize("path", _manual_sources(), ids=lambda p: p.name)
def test_reference_path_is_independent_of_autodiff(path):
    text = path.read_text()
    assert not FORBIDDEN_TEXT.search(text), FORBIDDEN_TEXT.search(text)
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            assert not {a.name for a in node.names} & FORBIDDEN_MODULES
        elif isinstance(node, ast.ImportFrom):
            mods = {f"{node.module}.{a.name}" for a in node.names} | {node.module}
            assert not mods & FORBIDDEN_MODULES, mods
            assert not {a.name for a in node.names} & FORBIDDEN_NAMES
        elif isinstance(node, ast.Attribute):
            assert node.attr not in FORBIDDEN_NAMES, node.attr
        elif isinstance(node, ast.Name):
            assert node.id not in FORBIDDEN_NAMES, node.id


# --------------------------------------------------------------------------- activations


ACTIVATION_REFS = {
    "identity": (lambda x: x, {}),
    "step": (lambda x: jnp.where(x > 0, 1.0, 0.0), {}),
    "heaviside": (lambda x: jnp.where(x > 0, 1.0, 0.0), {}),
    "sign": (jnp.sign, {}),
    "sigmoid": (lambda x: 1.0 / (1.0 + jnp.exp(-x)), {}),
    "tanh": (lambda x: (jnp.exp(x) - jnp.exp(-x)) / (jnp.exp(x) + jnp.exp(-x)), {}),
    "relu": (lambda x: jnp.where(x > 0, x, 0.0), {}),
    "leaky_relu": (lambda x: jnp.where(x >= 0, x, 0.2 * x), {"negative_slope": 0.2}),
    "elu": (lambda x: jnp.where(x > 0, x, 0.7 * (jnp.exp(jnp.where(x > 0, 0.0, x)) - 1.0)),
            {"alpha": 0.7}),
    "softplus": (lambda x: jnp.log(1.0 + jnp.exp(x)), {}),
    "softmax": (lambda x: jnp.exp(x) / jnp.sum(jnp.exp(x), axis=0, keepdims=True), {"axis": 0}),
    "log_softmax": (lambda x: x - jnp.log(jnp.sum(jnp.exp(x), axis=-1, keepdims=True)), {}),
}


def _forward_backward(name: str, params, x, dout, jit: bool, **kw):
    """Runs <name>_forward then <name>_backward of the layers module, optionally jitted."""
    layer_forward, bwd = getattr(ML, f"{name}_forward"), getattr(ML, f"{name}_backward")
    fwd = (lambda p, v: layer_forward(p, v, **kw))
    if jit:
        fwd, bwd = jax.jit(fwd), jax.jit(bwd)
    out, cache = fwd(params, x)
    return (out, *bwd(dout, cache))


def _check_layer(name, ref, params, x, rng, *, jit=True, fd=False, **kw):
    """Layer `name`'s forward value and backward (dx, dparams) for a random cotangent against
    autodiff of ``ref(params, x, **kw)``, all in one call (jitted unless ``jit=False``); with
    ``fd``, also against central finite differences. Returns (out, dx, dparams)."""
    fwd, bwd = getattr(ML, f"{name}_forward"), getattr(ML, f"{name}_backward")
    dout = _randn(rng, *jax.eval_shape(lambda p, v: ref(p, v, **kw), params, x).shape)

    def run(p, v, d):
        out, cache = fwd(p, v, **kw)
        want, pullback = jax.vjp(lambda p_, v_: ref(p_, v_, **kw), p, v)
        return (out, *bwd(d, cache)), (want, *pullback(d)[::-1])

    got, want = (jax.jit(run) if jit else run)(params, x, dout)
    assert_close(got, want)
    assert got[0].dtype == want[0].dtype and got[1].dtype == x.dtype
    if fd:
        assert_matches_fd(lambda p, v: jnp.sum(dout * ref(p, v, **kw)), (params, x),
                          (got[2], got[1]))
    return got


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", sorted(ACTIVATION_REFS))
def test_activation_matches_autodiff_of_plain_formula(name, jit):
    ref, kw = ACTIVATION_REFS[name]
    rng = _rng(1)
    x = _randn(rng, 3, 4).at[0, :2].set(0.0)  # includes the kinks
    _, _, dparams = _check_layer(name, lambda p, v, **_: ref(v), {}, x, rng, jit=jit, **kw)
    assert dparams == {}


@pytest.mark.parametrize("name", sorted(ACTIVATION_REFS))
def test_activation_finite_differences(name):
    ref, kw = ACTIVATION_REFS[name]
    rng = _rng(2)
    _check_layer(name, lambda p, v, **_: ref(v), {}, _randn(rng, 2, 3), rng, fd=True, **kw)


def test_activations_are_reexported_as_layers():
    for name in ACTIVATION_REFS:
        assert getattr(ML, f"{name}_forward") is getattr(MA, f"{name}_forward")
        assert getattr(ML, f"{name}_backward") is getattr(MA, f"{name}_backward")


def test_activation_derivatives_at_kinks():
    x, ones = jnp.array([-1.0, 0.0, 2.0]), jnp.ones(3)

    def dx(name, **kw):
        return np.asarray(getattr(ML, f"{name}_backward")(
            ones, getattr(ML, f"{name}_forward")({}, x, **kw)[1])[0])

    np.testing.assert_array_equal(dx("relu"), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(dx("leaky_relu", negative_slope=0.1), [0.1, 1.0, 1.0])
    np.testing.assert_allclose(dx("elu", alpha=0.5), [0.5 * math.exp(-1.0), 0.5, 1.0], rtol=1e-15)
    np.testing.assert_array_equal(dx("step"), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(dx("heaviside"), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(dx("sign"), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(ML.step_forward({}, x)[0], [0.0, 0.0, 1.0])


def test_parameterless_layer_rejects_params():
    with pytest.raises(ValueError, match="relu: params"):
        ML.relu_forward({"w": jnp.ones(2)}, jnp.ones(2))


# --------------------------------------------------------------------------- lecture examples


def test_lecture_003_sigmoid_gate():
    """[upstream 1.00] x [local (1 - 0.73)(0.73)] = 0.2 at the sigmoid's input 1."""
    s, cache = ML.sigmoid_forward({}, jnp.asarray(1.0))
    assert round(float(s), 2) == 0.73
    dx, dparams = ML.sigmoid_backward(jnp.asarray(1.0), cache)
    exact = math.exp(-1.0) / (1.0 + math.exp(-1.0)) ** 2  # 0.19661...
    assert dparams == {}
    assert abs(float(dx) - exact) <= 1e-15
    assert abs(float(dx) - float(s) * (1.0 - float(s))) <= 1e-15
    assert round(float(dx), 1) == 0.2


def test_lecture_003_sigmoid_neuron():
    """f(w, x) = sigma(w0 x0 + w1 x1 + w2) with w0 = 2, x0 = -1 and the input 1 to the sigmoid:
    the slide's w0 gradient [0.2] x [-1] = -0.2 and x0 gradient [0.2] x [2] = 0.4 (the other
    values are the classic ones, w1 = -3, x1 = -2, w2 = -3, giving the sigmoid input 1)."""
    params = {"w": jnp.array([[2.0], [-3.0]]), "b": jnp.array([-3.0])}
    z, dense_cache = ML.dense_forward(params, jnp.array([[-1.0, -2.0]]))
    assert float(z[0, 0]) == 1.0
    _, sig_cache = ML.sigmoid_forward({}, z)
    dz, _ = ML.sigmoid_backward(jnp.ones((1, 1)), sig_cache)
    dx, dparams = ML.dense_backward(dz, dense_cache)
    local = float(dz[0, 0])
    np.testing.assert_allclose(dparams["w"][:, 0], [-local, -2.0 * local], rtol=1e-15)
    np.testing.assert_allclose(dx[0], [2.0 * local, -3.0 * local], rtol=1e-15)
    assert round(float(dparams["w"][0, 0]), 1) == -0.2
    assert round(float(dx[0, 0]), 1) == 0.4
    assert round(float(dparams["b"][0]), 1) == 0.2


def test_lecture_003_twenty_line_numpy_net():
    """Lines 9-17 of the notes' 2-layer net (no biases, sigmoid hidden layer, squared error
    summed without the 1/2): value_and_grad equals the hand-written NumPy gradients."""
    N, D_in, H, D_out = 64, 1000, 100, 10
    rs = np.random.RandomState(0)
    x, y = rs.randn(N, D_in), rs.randn(N, D_out)
    w1, w2 = rs.randn(D_in, H), rs.randn(H, D_out)

    h = 1 / (1 + np.exp(-x.dot(w1)))
    y_pred = h.dot(w2)
    loss = np.square(y_pred - y).sum()
    grad_y_pred = 2.0 * (y_pred - y)
    grad_w2 = h.T.dot(grad_y_pred)
    grad_h = grad_y_pred.dot(w2.T)
    grad_w1 = x.T.dot(grad_h * h * (1 - h))

    layers = (LayerSpec("dense"), LayerSpec("sigmoid"), LayerSpec("dense"))
    objective = MM.value_and_grad(layers, LossSpec.make("squared_error", half=False,
                                                        reduction="sum"))
    value, grads = objective([{"w": jnp.asarray(w1)}, {}, {"w": jnp.asarray(w2)}],
                             jnp.asarray(x), jnp.asarray(y))
    assert abs(float(value) - loss) <= 1e-12 * loss
    assert_close(grads, [{"w": grad_w1}, {}, {"w": grad_w2}], tol=1e-12)


# --------------------------------------------------------------------------- dense, maxout


def _dense_ref(p, v):
    out = v @ p["w"]
    return out + p["b"][None, :] if "b" in p else out


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_dense(bias, jit):
    rng = _rng(3)
    params = {"w": _randn(rng, 3, 4), "b": _randn(rng, 4)} if bias else {"w": _randn(rng, 3, 4)}
    _check_layer("dense", _dense_ref, params, _randn(rng, 5, 3), rng, jit=jit)


def test_dense_finite_differences():
    rng = _rng(4)
    params = {"w": _randn(rng, 2, 3), "b": _randn(rng, 3)}
    _check_layer("dense", _dense_ref, params, _randn(rng, 2, 2), rng, fd=True)


def test_dense_shape_errors():
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    with pytest.raises(ValueError, match=r"dense: x must have shape \(N, D\), got shape \(3,\)"):
        ML.dense_forward(params, jnp.ones(3))
    with pytest.raises(ValueError, match=r"dense: x has size 2 .* D of w \(shape \(3, 4\)\)"):
        ML.dense_forward(params, jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="dense: b must have shape"):
        ML.dense_forward({"w": jnp.ones((3, 4)), "b": jnp.ones(3)}, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match="dense: params must have keys"):
        ML.dense_forward({"w": jnp.ones((3, 4)), "gamma": jnp.ones(4)}, jnp.ones((5, 3)))


def _maxout_ref(p, v):
    return jnp.max(jnp.einsum("nd,dmp->nmp", v, p["w"]) + p["b"][None], axis=-1)


def test_maxout():
    rng = _rng(4)
    params = {"w": _randn(rng, 3, 4, 2), "b": _randn(rng, 4, 2)}
    _check_layer("maxout", _maxout_ref, params, _randn(rng, 5, 3), rng)
    params = {"w": _randn(rng, 2, 2, 2), "b": _randn(rng, 2, 2)}
    _check_layer("maxout", _maxout_ref, params, _randn(rng, 2, 2), rng, fd=True)


def test_maxout_splits_ties_equally():
    params = {"w": jnp.zeros((2, 1, 3)), "b": jnp.array([[1.0, 1.0, 0.0]])}
    x = jnp.ones((1, 2))
    _, cache = ML.maxout_forward(params, x)
    _, dparams = ML.maxout_backward(jnp.ones((1, 1)), cache)
    np.testing.assert_array_equal(dparams["b"], [[0.5, 0.5, 0.0]])
    assert_close(dparams, jax.grad(lambda p: jnp.sum(_maxout_ref(p, x)))(params))


# --------------------------------------------------------------------------- convolutions


def _conv2d_ref(p, v, stride, padding):
    out = lax.conv_general_dilated(v, p["w"], stride, padding,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out + p["b"][None, None, None, :] if "b" in p else out


def _conv1d_ref(p, v, stride, padding):
    out = lax.conv_general_dilated(v, p["w"], (stride,), padding,
                                   dimension_numbers=("NWC", "WIO", "NWC"))
    return out + p["b"][None, None, :] if "b" in p else out


@FEW
@given(h=st.integers(1, 7), w=st.integers(1, 7), kh=st.integers(1, 4), kw=st.integers(1, 3),
       sh=st.integers(1, 3), sw=st.integers(1, 3), c_in=st.integers(1, 3),
       padding=st.sampled_from(["SAME", "VALID"]), bias=st.booleans())
def test_conv2d_matches_conv_general_dilated(h, w, kh, kw, sh, sw, c_in, padding, bias):
    assume(padding == "SAME" or (h >= kh and w >= kw))
    rng = _rng(h * 100 + w)
    params = {"w": _randn(rng, kh, kw, c_in, 2)} | ({"b": _randn(rng, 2)} if bias else {})
    stride = (sh, sw) if sh != sw else sh  # both spellings
    _check_layer("conv2d", lambda p, v, **_: _conv2d_ref(p, v, (sh, sw), padding), params,
                 _randn(rng, 2, h, w, c_in), rng, stride=stride, padding=padding)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(h=st.integers(1, 8), w=st.integers(1, 8), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), padding=st.sampled_from(["SAME", "VALID"]))
def test_col2im_is_the_adjoint_of_im2col(h, w, kh, kw, sh, sw, padding):
    """<patches(x), d> == <x, fold(d)> for every geometry (float64): col2im is im2col's
    transpose, which is what the convolution and pooling backward rules rely on."""
    from nnfun.manual import _windows as W

    assume(padding == "SAME" or (h >= kh and w >= kw))
    with jax.enable_x64(True):
        g = W.make_window("t", (h, w), (kh, kw), (sh, sw), padding)
        rng = _rng(h * 1000 + w * 100 + kh * 10 + kw)
        x = jnp.asarray(rng.normal(size=(2, h, w, 3)))
        d = jnp.asarray(rng.normal(size=(2, *g.out_hw, kh * kw, 3)))
        lhs, rhs = jnp.vdot(W.patches(x, g), d), jnp.vdot(x, W.fold(d, g))
        assert abs(float(lhs - rhs)) <= 1e-12 * max(1.0, abs(float(lhs)))


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv2d_finite_differences(padding):
    rng = _rng(5)
    params = {"w": _randn(rng, 2, 2, 2, 2), "b": _randn(rng, 2)}
    _check_layer("conv2d", lambda p, v, **_: _conv2d_ref(p, v, (2, 1), padding), params,
                 _randn(rng, 1, 3, 3, 2), rng, fd=True, stride=(2, 1), padding=padding)


@FEW
@given(length=st.integers(1, 9), k=st.integers(1, 4), stride=st.integers(1, 3),
       padding=st.sampled_from(["SAME", "VALID"]), bias=st.booleans())
def test_conv1d_matches_conv_general_dilated(length, k, stride, padding, bias):
    assume(padding == "SAME" or length >= k)
    rng = _rng(length * 10 + k)
    params = {"w": _randn(rng, k, 2, 3)} | ({"b": _randn(rng, 3)} if bias else {})
    _check_layer("conv1d", _conv1d_ref, params, _randn(rng, 2, length, 2), rng, stride=stride,
                 padding=padding)


def test_conv1d_finite_differences():
    rng = _rng(6)
    params = {"w": _randn(rng, 3, 2, 2), "b": _randn(rng, 2)}
    _check_layer("conv1d", _conv1d_ref, params, _randn(rng, 1, 5, 2), rng, fd=True, stride=2,
                 padding="SAME")


def test_conv_shape_errors():
    w = jnp.ones((3, 3, 2, 4))
    with pytest.raises(ValueError, match=r"conv2d: x must have shape \(N, H, W, C\), got shape"):
        ML.conv2d_forward({"w": w}, jnp.ones((1, 5, 2)))
    with pytest.raises(ValueError, match=r"conv2d: x has size 3 .* C_in of w"):
        ML.conv2d_forward({"w": w}, jnp.ones((1, 5, 5, 3)))
    with pytest.raises(ValueError, match="conv2d: padding must be one of"):
        ML.conv2d_forward({"w": w}, jnp.ones((1, 5, 5, 2)), padding="FULL")
    with pytest.raises(ValueError, match="conv2d: window .* does not fit"):
        ML.conv2d_forward({"w": w}, jnp.ones((1, 2, 5, 2)), padding="VALID")
    with pytest.raises(ValueError, match="conv2d: stride must be a positive int"):
        ML.conv2d_forward({"w": w}, jnp.ones((1, 5, 5, 2)), stride=0)
    with pytest.raises(ValueError, match=r"conv1d: x must have shape \(N, L, C\)"):
        ML.conv1d_forward({"w": jnp.ones((3, 2, 4))}, jnp.ones((1, 5, 5, 2)))


# --------------------------------------------------------------------------- pooling


def _pads(size, k, s, padding):
    return lax.padtype_to_pads((size,), (k,), (s,), padding)[0]


def _max_pool_ref(v, window, stride, padding):
    """Max over each window's elements gathered onto one axis (autodiff of a max reduction
    splits the gradient equally among ties); v (N, *spatial, C)."""
    spatial = v.shape[1:-1]
    pads = [_pads(n, k, s, padding) for n, k, s in zip(spatial, window, stride)]
    vp = jnp.pad(v, [(0, 0), *pads, (0, 0)], constant_values=-jnp.inf)
    index = []
    for d, (n, k, s, (lo, hi)) in enumerate(zip(spatial, window, stride, pads)):
        out = (n + lo + hi - k) // s + 1
        idx = np.arange(out)[:, None] * s + np.arange(k)[None, :]  # (out, k)
        shape = [1] * (2 * len(spatial))
        shape[d], shape[len(spatial) + d] = out, k
        index.append(idx.reshape(shape))
    windows = vp[(slice(None), *index)]  # (N, *out, *window, C)
    return jnp.max(windows, axis=tuple(range(1 + len(spatial), 1 + 2 * len(spatial))))


def _avg_pool_ref(v, window, stride, padding):
    dims, strides = (1, *window, 1), (1, *stride, 1)
    total = lax.reduce_window(v, 0.0, lax.add, dims, strides, padding)
    counts = lax.reduce_window(jnp.ones(v.shape[1:-1])[None, ..., None], 0.0, lax.add, dims,
                               strides, padding)
    return total / counts


POOLS = {"max": _max_pool_ref, "avg": _avg_pool_ref}


@FEW
@given(kind=st.sampled_from(["max", "avg"]), h=st.integers(1, 6), w=st.integers(1, 6),
       kh=st.integers(1, 3), kw=st.integers(1, 3), stride=st.sampled_from([None, 1, 2, (1, 2)]),
       padding=st.sampled_from(["SAME", "VALID"]))
def test_pool2d(kind, h, w, kh, kw, stride, padding):
    assume(padding == "SAME" or (h >= kh and w >= kw))
    rng = _rng(h * 10 + w)
    strides = (kh, kw) if stride is None else (stride, stride) if isinstance(stride, int) \
        else stride
    ref = POOLS[kind]
    _check_layer(f"{kind}_pool2d", lambda p, v, **_: ref(v, (kh, kw), strides, padding), {},
                 _randn(rng, 2, h, w, 2), rng, window=(kh, kw), stride=stride, padding=padding)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool2d_overlapping_finite_differences(kind, padding):
    rng = _rng(7)
    x = _randn(rng, 1, 4, 3, 1)
    ref = POOLS[kind]
    out, _, _ = _check_layer(f"{kind}_pool2d", lambda p, v, **_: ref(v, (3, 2), (1, 2), padding),
                             {}, x, rng, fd=True, window=(3, 2), stride=(1, 2), padding=padding)
    if kind == "max":
        assert_close(out, lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 2, 1), (1, 1, 2, 1),
                                            padding))


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("stride", [None, 1, 2])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool1d(kind, stride, padding):
    rng = _rng(8)
    ref = POOLS[kind]
    _check_layer(f"{kind}_pool1d", lambda p, v, **_: ref(v, (3,), (stride or 3,), padding), {},
                 _randn(rng, 1, 5, 2), rng, fd=stride == 2, window=3, stride=stride,
                 padding=padding)


def _manual_dx(name, x, dout, **kw):
    """dx of layer `name` (parameterless) at x for upstream dout, forward and backward jitted."""
    fwd, bwd = getattr(ML, f"{name}_forward"), getattr(ML, f"{name}_backward")
    return jax.jit(lambda v, d: bwd(d, fwd({}, v, **kw)[1])[0])(x, dout)


def test_max_pool_splits_ties_equally():
    x = jnp.zeros((1, 4, 4, 1))
    dx = _manual_dx("max_pool2d", x, jnp.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(dx, np.full((1, 4, 4, 1), 0.25))
    # overlapping SAME windows: each window's share is 1 / (its real elements), accumulated
    dout = jnp.ones((1, 4, 4, 1))
    dx = _manual_dx("max_pool2d", x, dout, window=3, stride=1, padding="SAME")
    want = jax.vjp(lambda v: _max_pool_ref(v, (3, 3), (1, 1), "SAME"), x)[1](dout)[0]
    assert_close(dx, want)
    assert abs(float(dx[0, 0, 0, 0]) - (1 / 4 + 2 / 6 + 1 / 9)) <= 1e-15
    # a partial tie: two maxima of one window share its gradient, the rest get none
    x = jnp.array([1.0, 3.0, 3.0, 0.0]).reshape(1, 4, 1)
    dx = _manual_dx("max_pool1d", x, jnp.full((1, 1, 1), 2.0), window=4)
    np.testing.assert_array_equal(dx.ravel(), [0.0, 1.0, 1.0, 0.0])


def test_avg_pool_same_divides_by_real_elements():
    out, _ = ML.avg_pool2d_forward({}, jnp.ones((1, 3, 3, 1)), window=2, stride=2,
                                   padding="SAME")
    np.testing.assert_array_equal(out, np.ones((1, 2, 2, 1)))


@pytest.mark.parametrize("name, shape, kw", [
    ("max_pool2d", (2, 7, 6, 3), {}),                                      # VALID crops row 7
    ("max_pool2d", (2, 4, 6, 3), {"window": (2, 3), "padding": "SAME"}),  # SAME, no padding
    ("max_pool1d", (2, 7, 3), {"window": 3}),
    ("avg_pool2d", (2, 7, 6, 3), {}),
    ("avg_pool1d", (2, 7, 3), {"window": 3}),
])
def test_tiling_pools_match_the_patch_path(name, shape, kw):
    """Windows that tile the input (stride == window, no padding) are reduced on a reshape of x
    (`_windows.to_tiles`); forward and backward equal the im2col / col2im rules, ties and the
    uncovered last rows included."""
    rng = _rng(11)
    x = jnp.asarray(rng.integers(0, 3, shape), jnp.float64)  # many ties
    fwd, bwd = getattr(ML, f"{name}_forward"), getattr(ML, f"{name}_backward")
    out, cache = fwd({}, x, **kw)
    dout = _randn(rng, *out.shape)
    dx, _ = bwd(dout, cache)
    g = cache.window.value
    assert MW.tiles(g)
    x4, d4 = (x, dout) if x.ndim == 4 else (x[:, None], dout[:, None])
    if name.startswith("max"):
        assert cache.share.ndim == 6  # the tiled path was taken
        want_out, share = MW.max_and_share(MW.patches(x4, g, fill=-jnp.inf), axis=3)
        want_dx = MW.fold(share * d4[:, :, :, None, :], g)
    else:
        want_out = jnp.mean(MW.patches(x4, g), axis=3)
        want_dx = MW.fold(jnp.repeat(d4[:, :, :, None, :] / (g.kernel[0] * g.kernel[1]),
                                     g.kernel[0] * g.kernel[1], axis=3), g)
    if x.ndim == 3:
        want_out, want_dx = want_out[:, 0], want_dx[:, 0]
    assert_close(out, want_out, 1e-15)
    assert_close(dx, want_dx, 1e-15)
    np.testing.assert_array_equal(np.asarray(dx)[:, 6:], 0.0)  # past the last window


# --------------------------------------------------------------------------- flatten, dropout


def test_flatten():
    rng = _rng(9)
    _check_layer("flatten", lambda p, v: v.reshape(v.shape[0], -1), {}, _randn(rng, 2, 3, 2, 2),
                 rng)


def _dropout_ref(v, key, rate):
    keep = jax.random.bernoulli(key, 1.0 - rate, v.shape)
    return jnp.where(keep, v / (1.0 - rate), 0.0)


def test_dropout():
    rng, key = _rng(10), jax.random.key(3)
    x = _randn(rng, 2, 3)
    _check_layer("dropout", lambda p, v, **_: _dropout_ref(v, key, 0.4), {}, x, rng, fd=True,
                 drop_rate=0.4, key=key)
    out, _ = ML.dropout_forward({}, _randn(rng, 4, 6), drop_rate=0.4, key=key)
    assert 0 < int(jnp.sum(out == 0)) < out.size
    for kw in ({"drop_rate": 0.4, "train": False}, {"drop_rate": 0.0, "key": key}):
        out, dx, dparams = _forward_backward("dropout", {}, x, x, False, **kw)
        assert out is x and dx is x and dparams == {}
    with pytest.raises(ValueError, match="dropout: key is required"):
        ML.dropout_forward({}, x, drop_rate=0.4)
    with pytest.raises(ValueError, match="dropout: drop_rate must be in"):
        ML.dropout_forward({}, x, drop_rate=1.0, key=key)


def test_caches_survive_jit_and_vmap():
    """A forward pass may be transformed on its own: its cache keeps static data static."""
    rng = _rng(11)
    params = {"w": _randn(rng, 2, 2, 1, 2)}
    xs = _randn(rng, 3, 1, 4, 4, 1)
    fwd = jax.vmap(lambda v: ML.conv2d_forward(params, v, stride=2, padding="SAME"))
    outs, caches = jax.jit(fwd)(xs)
    dx, dparams = jax.jit(jax.vmap(ML.conv2d_backward))(outs, caches)
    single = jax.jit(lambda v, d: ML.conv2d_backward(
        d, ML.conv2d_forward(params, v, stride=2, padding="SAME")[1]))
    for i in range(3):
        assert_close((dx[i], {"w": dparams["w"][i]}), single(xs[i], outs[i]))
    out, cache = jax.jit(lambda v: ML.softmax_forward({}, v, axis=0))(xs[0, 0, 0])
    assert_close(jax.jit(ML.softmax_backward)(out, cache)[0], ML.softmax_backward(out, cache)[0])


# --------------------------------------------------------------------------- losses


def _per_example(v):
    return jnp.sum(v.reshape(v.shape[0], -1), axis=1)


def _reduce(per, reduction):
    return jnp.mean(per) if reduction == "mean" else jnp.sum(per)


def _onehot(labels, k):
    return (labels[:, None] == jnp.arange(k)[None, :]).astype(jnp.float64)


def _sigmoid(z):
    return 1.0 / (1.0 + jnp.exp(-z))


def _log_softmax(z):
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=1, keepdims=True))


def _hinge(s, labels, margin=1.0):
    y = _onehot(labels, s.shape[1])
    correct = jnp.sum(s * y, axis=1, keepdims=True)
    return jnp.sum(jnp.where(y > 0, 0.0, jnp.where(s - correct + margin > 0,
                                                   s - correct + margin, 0.0)), axis=1)


LOSS_REFS = {
    "squared_error": (lambda p, t, half=True: (0.5 if half else 1.0) * _per_example((p - t) ** 2),
                      "real", [{}, {"half": False}]),
    "mean_squared_error": (lambda p, t: _per_example((p - t) ** 2) / (p[0].size), "real", [{}]),
    "binary_cross_entropy_with_logits": (
        lambda z, y: _per_example(-(y * jnp.log(_sigmoid(z)) + (1 - y) * jnp.log(1 - _sigmoid(z)))),
        "unit", [{}]),
    "binary_cross_entropy": (
        lambda p, y: _per_example(-(y * jnp.log(p) + (1 - y) * jnp.log(1 - p))), "unit", [{}]),
    "logistic_loss": (lambda s, y: _per_example(jnp.log(1 + jnp.exp(-y * s))), "pm1", [{}]),
    "softmax_cross_entropy": (
        lambda z, y: -jnp.sum((_onehot(y, z.shape[1]) if y.ndim == 1 else y) * _log_softmax(z),
                              axis=1), "labels", [{}]),
    "multiclass_hinge": (_hinge, "labels", [{}, {"margin": 0.5}]),
}


def _loss_case(name, rng, shape):
    kind = LOSS_REFS[name][1]
    pred = _randn(rng, *shape)
    if name == "binary_cross_entropy":
        pred = _sigmoid(pred)
    if kind == "real":
        target = _randn(rng, *shape)
    elif kind == "unit":
        target = jnp.asarray(rng.uniform(size=shape))
    elif kind == "pm1":
        target = jnp.asarray(rng.choice([-1.0, 1.0], size=shape))
    else:
        target = jnp.asarray(rng.integers(0, shape[1], size=shape[0]))
    return pred, target


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", sorted(LOSS_REFS))
def test_loss_matches_autodiff_of_plain_formula(name, reduction, jit):
    ref, _, kwargs = LOSS_REFS[name]
    rng = _rng(12)
    pred, target = _loss_case(name, rng, (5, 4))
    dloss = jnp.asarray(rng.standard_normal())
    fwd = getattr(MLoss, f"{name}_forward")
    bwd = getattr(MLoss, f"{name}_backward")
    for kw in kwargs:
        f = (lambda p, t, kw=kw: fwd(p, t, reduction=reduction, **kw))
        value, cache = (jax.jit(f) if jit else f)(pred, target)
        dpred = (jax.jit(bwd) if jit else bwd)(dloss, cache)
        want, pullback = jax.vjp(lambda p, kw=kw: _reduce(ref(p, target, **kw), reduction), pred)
        assert_close(value, want)
        assert_close(dpred, pullback(dloss)[0])
        assert dpred.shape == pred.shape and value.shape == ()


@pytest.mark.parametrize("name", sorted(LOSS_REFS))
def test_loss_finite_differences(name):
    ref, _, kwargs = LOSS_REFS[name]
    rng = _rng(13)
    pred, target = _loss_case(name, rng, (2, 3))
    for kw in kwargs:
        _, cache = getattr(MLoss, f"{name}_forward")(pred, target, **kw)
        dpred = getattr(MLoss, f"{name}_backward")(jnp.asarray(1.0), cache)
        assert_matches_fd(lambda p, kw=kw: jnp.mean(ref(p, target, **kw)), (pred,), (dpred,))


def test_softmax_cross_entropy_with_probability_labels():
    rng = _rng(14)
    z = _randn(rng, 4, 3)
    y = jnp.asarray(rng.uniform(size=(4, 3)))  # rows need not sum to one
    value, cache = MLoss.softmax_cross_entropy_forward(z, y)
    ref = LOSS_REFS["softmax_cross_entropy"][0]
    want, g = jax.value_and_grad(lambda v: jnp.mean(ref(v, y)))(z)
    assert_close(value, want)
    assert_close(MLoss.softmax_cross_entropy_backward(jnp.asarray(1.0), cache), g)
    # one-hot rows give the same loss as the class indices
    labels = jnp.array([0, 2, 1, 2])
    assert_close(MLoss.softmax_cross_entropy_forward(z, _onehot(labels, 3))[0],
                 MLoss.softmax_cross_entropy_forward(z, labels)[0])


def test_hinge_gradient_is_zero_at_a_zero_margin():
    scores = jnp.array([[2.0, 1.0, 3.0]])  # class 1 at margin 1: j = 0 is exactly at 0
    _, cache = MLoss.multiclass_hinge_forward(scores, jnp.array([0]), reduction="sum")
    np.testing.assert_array_equal(MLoss.multiclass_hinge_backward(jnp.asarray(1.0), cache),
                                  [[-1.0, 0.0, 1.0]])


def test_loss_argument_errors():
    with pytest.raises(ValueError, match="squared_error: reduction must be one of"):
        MLoss.squared_error_forward(jnp.ones((2, 3)), jnp.ones((2, 3)), reduction="none")
    with pytest.raises(ValueError, match=r"squared_error: target must have shape \(2, 3\)"):
        MLoss.squared_error_forward(jnp.ones((2, 3)), jnp.ones((3, 2)))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: labels must have shape \(2,\)"):
        MLoss.softmax_cross_entropy_forward(jnp.ones((2, 3)), jnp.ones(3, int))


# --------------------------------------------------------------------------- regularisers


def _reg_params(rng):
    return [{"w": _randn(rng, 3, 2), "b": _randn(rng, 2)}, {},
            {"w": _randn(rng, 2, 2, 1, 2)}]


def _reg_ref(params, fn, coef, include_biases):
    return coef * sum(jnp.sum(fn(leaf)) for layer in params for key, leaf in layer.items()
                      if key == "w" or include_biases)


REG_CASES = [
    ("l2", {"lam": 0.3}, jnp.square, 0.3),
    ("l2", {"lam": 0.3, "convention": "over_2m", "batch_size": 4}, jnp.square, 0.3 / 8),
    ("l2", {"lam": 0.3, "include_biases": True}, jnp.square, 0.3),
    ("l1", {"lam": 0.2}, lambda w: w * jnp.sign(w), 0.2),  # |w|, with derivative 0 at 0
    ("l1", {"lam": 0.2, "include_biases": True, "batch_size": 4}, lambda w: w * jnp.sign(w), 0.2),
]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", REG_CASES, ids=lambda c: f"{c[0]}-{sorted(c[1])}")
def test_regularizer_matches_autodiff(case, jit):
    name, kw, fn, coef = case
    params = _reg_params(_rng(15))
    params[0]["w"] = params[0]["w"].at[0, 0].set(0.0)  # |w|' = 0 at 0
    f = (lambda p: getattr(MR, f"{name}_forward")(p, **kw))
    bwd = getattr(MR, f"{name}_backward")
    penalty, cache = (jax.jit(f) if jit else f)(params)
    grads = (jax.jit(bwd) if jit else bwd)(jnp.asarray(1.5), cache)
    include = kw.get("include_biases", False)
    want, g = jax.value_and_grad(lambda p: 1.5 * _reg_ref(p, fn, coef, include))(params)
    assert_close(penalty, want / 1.5)
    assert_close(grads, g)
    if not include:
        np.testing.assert_array_equal(grads[0]["b"], np.zeros(2))
    if name == "l1":
        assert float(grads[0]["w"][0, 0]) == 0.0
    if not jit:
        small = [{"w": params[0]["w"][1:], "b": params[0]["b"]}]
        _, cache = getattr(MR, f"{name}_forward")(small, **kw)
        assert_matches_fd(lambda p: _reg_ref(p, fn, coef, include), (small,),
                          (bwd(jnp.asarray(1.0), cache),))


def test_l2_over_2m_needs_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        MR.l2_forward([{"w": jnp.ones(2)}], lam=0.1, convention="over_2m")
    with pytest.raises(ValueError, match="l2: convention must be one of"):
        MR.l2_forward([{"w": jnp.ones(2)}], lam=0.1, convention="mean")


# --------------------------------------------------------------------------- model


MODEL = (
    LayerSpec.make("conv2d", apply={"stride": 1, "padding": "SAME"}),
    LayerSpec.make("relu"),
    LayerSpec.make("max_pool2d", apply={"window": 2}),
    LayerSpec.make("flatten"),
    LayerSpec.make("dense"),
    LayerSpec.make("tanh"),
    LayerSpec.make("dropout", apply={"drop_rate": 0.25}),
    LayerSpec.make("maxout"),
    LayerSpec.make("dense"),
)
LOSS = LossSpec.make("softmax_cross_entropy")
REGS = (RegSpec.make("l2", lam=0.01, convention="over_2m"), RegSpec.make("l1", lam=0.001))


def _model_params(seed):
    rng = _rng(seed)
    return [{"w": 0.5 * _randn(rng, 3, 3, 1, 2), "b": _randn(rng, 2)}, {}, {}, {},
            {"w": 0.5 * _randn(rng, 8, 5), "b": _randn(rng, 5)}, {}, {},
            {"w": _randn(rng, 5, 4, 2), "b": _randn(rng, 4, 2)},
            {"w": _randn(rng, 4, 3)}]


def _model_ref(params, x, key):
    """The same network, written out with the independent reference functions."""
    h = jnp.maximum(_conv2d_ref(params[0], x, (1, 1), "SAME"), 0.0)
    h = _max_pool_ref(h, (2, 2), (2, 2), "VALID").reshape(x.shape[0], -1)
    h = jnp.tanh(h @ params[4]["w"] + params[4]["b"][None, :])
    h = _dropout_ref(h, jax.random.fold_in(key, 6), 0.25)
    return _maxout_ref(params[7], h) @ params[8]["w"]


def _objective_ref(params, x, y, key):
    value = jnp.mean(LOSS_REFS["softmax_cross_entropy"][0](_model_ref(params, x, key), y))
    weights = [layer["w"] for layer in params if "w" in layer]
    value = value + 0.01 / (2 * x.shape[0]) * sum(jnp.sum(w ** 2) for w in weights)
    return value + 0.001 * sum(jnp.sum(jnp.abs(w)) for w in weights)


def _model_data():
    rng = _rng(16)
    return _randn(rng, 3, 4, 4, 1), jnp.array([0, 2, 1]), jax.random.key(5)


def test_model_value_and_grad_matches_autodiff_jit_and_vmap():
    x, y, key = _model_data()
    sets = [_model_params(s) for s in (20, 21, 22)]
    f = MM.value_and_grad(MODEL, LOSS, REGS)
    value, grads = jax.jit(f)(sets[0], x, y, key)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *sets)
    values, stacked_grads = jax.jit(jax.vmap(f, in_axes=(0, None, None, None)))(
        stacked, x, y, key)
    want, want_grads = jax.jit(jax.vmap(jax.value_and_grad(_objective_ref),
                                        in_axes=(0, None, None, None)))(stacked, x, y, key)
    assert_close((values, stacked_grads), (want, want_grads))
    first = jax.tree.map(lambda g: g[0], want_grads)
    assert_close((value, grads), (want[0], first))
    # exactly the autodiff gradient tree: list of dicts, same keys, same dtypes
    assert jax.tree.structure(grads) == jax.tree.structure(sets[0])
    assert [g.dtype for g in jax.tree.leaves(grads)] == [
        p.dtype for p in jax.tree.leaves(sets[0])]


def test_model_forward_backward_give_dx():
    params = _model_params(18)
    x, _, key = _model_data()
    dout = _randn(_rng(19), 3, 3)

    @jax.jit
    def run(p, v, d):
        out, caches = MM.forward(MODEL, p, v, key=key, train=True)
        want, pullback = jax.vjp(lambda p_, v_: _model_ref(p_, v_, key), p, v)
        return (out, *MM.backward(MODEL, d, caches)), (want, *pullback(d)[::-1])

    got, want = run(params, x, dout)
    assert_close(got, want)
    # evaluation mode: dropout is the identity and needs no key
    out_eval = jax.eval_shape(lambda p, v: MM.forward(MODEL, p, v)[0], params, x)
    assert out_eval.shape == (3, 3)


def test_model_errors():
    params = _model_params(23)
    x, y, _ = _model_data()
    with pytest.raises(ValueError, match="layer 6 \\(dropout\\) needs key"):
        MM.value_and_grad(MODEL, LOSS)(params, x, y)
    with pytest.raises(ValueError, match="layer: unknown name 'conv3d'"):
        MM.value_and_grad((LayerSpec("conv3d"),), LOSS)
    with pytest.raises(ValueError, match="loss: unknown name 'huber'"):
        MM.value_and_grad(MODEL, LossSpec.make("huber"))
    with pytest.raises(ValueError, match="regularizer: unknown name 'l3'"):
        MM.value_and_grad(MODEL, LOSS, (RegSpec.make("l3", lam=1.0),))
    with pytest.raises(ValueError, match="params must have 9 entries"):
        MM.forward(MODEL, params[:-1], x)
