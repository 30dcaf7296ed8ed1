"""The hand-written reference path (`nnfun.manual`) against the textbook.

tests/test_registry.py checks every registered primitive three ways (values, manual backward vs
`jax.vjp` of the autodiff path, finite differences). This file checks what only it can, in
float64: the rules against formulas written out here (activations, losses, a convolution and
pools on random geometries against `lax.conv_general_dilated` and independent pools), the
lecture notes' worked numbers as exact expectations, kinks and ties, col2im as the adjoint of
im2col, the rule tables, the caches' static metadata, and a whole network against the same
network written out with independent functions.
"""

from __future__ import annotations

import ast
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, assume, given, settings
from hypothesis import strategies as st
from jax import lax

from nnfun.manual import _windows as MW
from nnfun.manual import activations as MA
from nnfun.manual import layers as ML
from nnfun.manual import losses as MLoss
from nnfun.manual import model as MM
from nnfun.manual import recurrent as MRec
from nnfun.manual import regularizers as MR
from nnfun.spec import LayerSpec, LossSpec, RegSpec

TOL = 1e-10
MANUAL_DIR = pathlib.Path(__file__).resolve().parents[1] / "nnfun" / "manual"
# Every example compiles a program, so a failure is reported as found, without shrinking.
FEW = settings(max_examples=5, deadline=None, derandomize=True,
               phases=(Phase.explicit, Phase.generate))


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


def _check_layer(name, ref, params, x, rng, **kw):
    """Layer `name`'s forward value and backward (dx, dparams) for a random cotangent against
    autodiff of the formula ``ref(params, x)``, in one jitted call. Returns (out, dx, dparams)."""
    rule = ML.RULES[name]
    dout = _randn(rng, *jax.eval_shape(ref, params, x).shape)

    @jax.jit
    def run(p, v, d):
        out, cache = rule.forward(p, v, **kw)
        want, pullback = jax.vjp(ref, p, v)
        return (out, *rule.backward(d, cache)), (want, *pullback(d)[::-1])

    got, want = run(params, x, dout)
    assert_close(got, want)
    assert got[0].dtype == want[0].dtype and got[1].dtype == x.dtype
    return got


# --------------------------------------------------------------------------- independence


def test_reference_never_calls_the_autodiff_paths_primitives():
    """A convolution or pool of the reference is im2col, never the primitive the autodiff path
    uses (tests/test_imports.py keeps out autodiff itself and the autodiff modules)."""
    forbidden = {"conv_general_dilated", "conv", "reduce_window"}
    files = sorted(MANUAL_DIR.glob("*.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else \
                node.id if isinstance(node, ast.Name) else None
            assert name not in forbidden, f"{path.name}:{node.lineno} uses {name}"


# --------------------------------------------------------------------------- the tables


def test_rule_tables_pair_each_name_with_its_functions():
    """RULES, LOSS_RULES and REG_RULES hold exactly the module's <name>_forward/_backward pairs
    (activations re-exported as layers), and the model lists their names."""
    for module, table, homes in ((ML, ML.RULES, {ML.__name__, MA.__name__, MRec.__name__}),
                                 (MLoss, MLoss.LOSS_RULES, {MLoss.__name__}),
                                 (MR, MR.REG_RULES, {MR.__name__})):
        stems = {n[: -len("_forward")] for n, f in vars(module).items()
                 if n.endswith("_forward") and not n.startswith("_") and f.__module__ in homes}
        assert set(table) == stems
        for name, rule in table.items():
            assert rule == (getattr(module, f"{name}_forward"), getattr(module, f"{name}_backward"))
    for name in ("relu", "softmax", "heaviside"):
        assert ML.RULES[name].forward is getattr(MA, f"{name}_forward")
    assert MM.implemented_layers() == sorted(ML.RULES)
    assert MM.loss_names() == sorted(MLoss.LOSS_RULES)
    assert MM.regularizer_names() == ["l1", "l2"]


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


@pytest.mark.parametrize("name", sorted(ACTIVATION_REFS))
def test_activation_matches_its_formula(name):
    ref, kw = ACTIVATION_REFS[name]
    rng = _rng(1)
    x = _randn(rng, 3, 4).at[0, :2].set(0.0)  # includes the kinks
    _, _, dparams = _check_layer(name, lambda p, v: ref(v), {}, x, rng, **kw)
    assert dparams == {}


def test_activation_derivatives_at_kinks():
    x, ones = jnp.array([-1.0, 0.0, 2.0]), jnp.ones(3)

    def dx(name, **kw):
        rule = ML.RULES[name]
        return np.asarray(rule.backward(ones, rule.forward({}, x, **kw)[1])[0])

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


def test_maxout_splits_ties_equally():
    params = {"w": jnp.zeros((2, 1, 3)), "b": jnp.array([[1.0, 1.0, 0.0]])}
    x = jnp.ones((1, 2))
    dparams, want = jax.jit(lambda p: (
        ML.maxout_backward(jnp.ones((1, 1)), ML.maxout_forward(p, x)[1])[1],
        jax.grad(lambda p_: jnp.sum(_maxout_ref(p_, x)))(p)))(params)
    np.testing.assert_array_equal(dparams["b"], [[0.5, 0.5, 0.0]])
    assert_close(dparams, want)


# --------------------------------------------------------------------------- convolutions


def _conv2d_ref(p, v, stride, padding):
    out = lax.conv_general_dilated(v, p["w"], stride, padding,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out + p["b"][None, None, None, :] if "b" in p else out


@settings(FEW, max_examples=4)
@given(h=st.integers(1, 7), w=st.integers(1, 7), kh=st.integers(1, 4), kw=st.integers(1, 3),
       sh=st.integers(1, 3), sw=st.integers(1, 3), c_in=st.integers(1, 3),
       padding=st.sampled_from(["SAME", "VALID"]), bias=st.booleans())
def test_conv2d_matches_conv_general_dilated(h, w, kh, kw, sh, sw, c_in, padding, bias):
    """Every window geometry (strides, XLA's SAME padding, kernels wider than the input)."""
    assume(padding == "SAME" or (h >= kh and w >= kw))
    rng = _rng(h * 100 + w)
    params = {"w": _randn(rng, kh, kw, c_in, 2)} | ({"b": _randn(rng, 2)} if bias else {})
    stride = (sh, sw) if sh != sw else sh  # both spellings
    _check_layer("conv2d", lambda p, v: _conv2d_ref(p, v, (sh, sw), padding), params,
                 _randn(rng, 2, h, w, c_in), rng, stride=stride, padding=padding)


@settings(FEW, max_examples=4)
@given(h=st.integers(1, 8), w=st.integers(1, 8), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), padding=st.sampled_from(["SAME", "VALID"]))
def test_col2im_is_the_adjoint_of_im2col(h, w, kh, kw, sh, sw, padding):
    """<patches(x), d> == <x, fold(d)> for every geometry (float64): col2im is im2col's
    transpose, which is what the convolution and pooling backward rules rely on."""
    assume(padding == "SAME" or (h >= kh and w >= kw))
    g = MW.make_window("t", (h, w), (kh, kw), (sh, sw), padding)
    rng = _rng(h * 1000 + w * 100 + kh * 10 + kw)
    x = jnp.asarray(rng.normal(size=(2, h, w, 3)))
    d = jnp.asarray(rng.normal(size=(2, *g.out_hw, kh * kw, 3)))
    lhs, rhs = jax.jit(lambda x, d: (jnp.vdot(MW.patches(x, g), d),
                                     jnp.vdot(x, MW.fold(d, g))))(x, d)
    assert abs(float(lhs - rhs)) <= 1e-12 * max(1.0, abs(float(lhs)))


def test_col2im_counts_the_windows_over_each_pixel():
    """fold of all-ones patches counts, for every input pixel, the windows that read it."""
    def coverage(size, kernel, stride, padding):
        g = MW.make_window("t", size, kernel, stride, padding)
        ones = jnp.ones((1, *g.out_hw, kernel[0] * kernel[1], 1))
        return np.asarray(jax.jit(MW.fold, static_argnums=1)(ones, g))[0, :, :, 0]

    # 3x3 SAME on 4x4: an interior pixel is in 9 windows, an edge pixel in 6, a corner in 4
    np.testing.assert_array_equal(coverage((4, 4), (3, 3), (1, 1), "SAME"),
                                  np.outer([2, 3, 3, 2], [2, 3, 3, 2]))
    # 3 wide, stride 2, VALID on 5 columns: the middle column is shared; 2 x 1 windows on 3 rows,
    # the last row read by none
    np.testing.assert_array_equal(coverage((3, 5), (1, 3), (2, 2), "VALID"),
                                  np.outer([1, 0, 1], [1, 1, 2, 1, 1]))


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
def test_pool2d_matches_independent_pools(kind, h, w, kh, kw, stride, padding):
    assume(padding == "SAME" or (h >= kh and w >= kw))
    rng = _rng(h * 10 + w)
    strides = (kh, kw) if stride is None else (stride, stride) if isinstance(stride, int) \
        else stride
    ref = POOLS[kind]
    _check_layer(f"{kind}_pool2d", lambda p, v: ref(v, (kh, kw), strides, padding), {},
                 _randn(rng, 2, h, w, 2), rng, window=(kh, kw), stride=stride, padding=padding)


def _manual_dx(name, x, dout, **kw):
    """dx of layer `name` (parameterless) at x for upstream dout, in one jitted call."""
    rule = ML.RULES[name]
    return jax.jit(lambda v, d: rule.backward(d, rule.forward({}, v, **kw)[1])[0])(x, dout)


def test_max_pool_splits_ties_equally():
    x = jnp.zeros((1, 4, 4, 1))
    dx = _manual_dx("max_pool2d", x, jnp.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(dx, np.full((1, 4, 4, 1), 0.25))
    # overlapping SAME windows: each window's share is 1 / (its real elements), accumulated;
    # a window centred on row (column) 0 has 2 real rows (columns), on rows 1 and 2 it has 3
    dx = _manual_dx("max_pool2d", x, jnp.ones((1, 4, 4, 1)), window=3, stride=1, padding="SAME")
    assert abs(float(dx[0, 0, 0, 0]) - (1 / 2 + 1 / 3) ** 2) <= 1e-15
    assert abs(float(dx[0, 1, 1, 0]) - (1 / 2 + 1 / 3 + 1 / 3) ** 2) <= 1e-15
    # a partial tie: two maxima of one window share its gradient, the rest get none
    x = jnp.array([1.0, 3.0, 3.0, 0.0]).reshape(1, 4, 1)
    dx = _manual_dx("max_pool1d", x, jnp.full((1, 1, 1), 2.0), window=4)
    np.testing.assert_array_equal(dx.ravel(), [0.0, 1.0, 1.0, 0.0])


def test_avg_pool_same_divides_by_real_elements():
    @jax.jit
    def run(x, dout):
        out, cache = ML.avg_pool2d_forward({}, x, window=2, stride=2, padding="SAME")
        return out, ML.avg_pool2d_backward(dout, cache)[0]

    out, dx = run(jnp.ones((1, 3, 3, 1)), jnp.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(out, np.ones((1, 2, 2, 1)))
    # windows of 4, 2, 2 and 1 real elements: each element gets dout / count
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0.25, 0.25, 0.5], [0.25, 0.25, 0.5],
                                                   [0.5, 0.5, 1.0]])


# --------------------------------------------------------------------------- dropout, caches


def test_dropout_identity_and_errors():
    rng, key = _rng(10), jax.random.key(3)
    x = _randn(rng, 2, 3)
    out, _ = ML.dropout_forward({}, _randn(rng, 4, 6), drop_rate=0.4, key=key)
    assert 0 < int(jnp.sum(out == 0)) < out.size
    for kw in ({"drop_rate": 0.4, "train": False}, {"drop_rate": 0.0, "key": key}):
        out, cache = ML.dropout_forward({}, x, **kw)
        dx, dparams = ML.dropout_backward(x, cache)
        assert out is x and dx is x and dparams == {}
    with pytest.raises(ValueError, match="dropout: key is required"):
        ML.dropout_forward({}, x, drop_rate=0.4)
    with pytest.raises(ValueError, match="dropout: drop_rate must be in"):
        ML.dropout_forward({}, x, drop_rate=1.0, key=key)


def test_caches_keep_static_data_static_through_jit_and_vmap():
    """A forward pass may be transformed on its own: its cache's window, bias flag and shapes
    stay plain Python values (meta fields), and only arrays are leaves."""
    rng = _rng(11)
    params = {"w": _randn(rng, 2, 2, 1, 2)}
    xs = _randn(rng, 3, 1, 4, 4, 1)
    fwd = jax.vmap(lambda v: ML.conv2d_forward(params, v, stride=2, padding="SAME"))
    outs, caches = jax.jit(fwd)(xs)
    assert isinstance(caches.window, MW.Window) and caches.window.out_hw == (2, 2)
    assert caches.has_bias is False
    assert len(jax.tree.leaves(caches)) == 2  # cols and w
    dx, dparams = jax.jit(jax.vmap(ML.conv2d_backward))(outs, caches)
    single = jax.jit(lambda v, d: ML.conv2d_backward(
        d, ML.conv2d_forward(params, v, stride=2, padding="SAME")[1]))
    for i in range(3):
        assert_close((dx[i], {"w": dparams["w"][i]}), single(xs[i], outs[i]))
    # tracing (as jit does) leaves the other caches' Python values Python values too
    _, cache = jax.eval_shape(lambda v: ML.flatten_forward({}, v), xs[0])
    assert cache.in_shape == (1, 4, 4, 1) and jax.tree.leaves(cache) == []
    _, cache = jax.eval_shape(lambda v: ML.softmax_forward({}, v, axis=0), xs[0, 0, 0])
    assert cache.axis == 0
    _, cache = jax.eval_shape(lambda v: ML.dense_forward({"w": params["w"][0, 0],
                                                          "b": jnp.ones(2)}, v), xs[0, 0, 0])
    assert cache.has_bias is True


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


def test_loss_tables_cover_every_loss():
    assert sorted(LOSS_REFS) == MM.loss_names()


@pytest.mark.parametrize("name", sorted(LOSS_REFS))
def test_loss_matches_its_formula(name):
    """Value and dpred of every reduction and variant against the formula written above."""
    ref, _, kwargs = LOSS_REFS[name]
    rule = MLoss.LOSS_RULES[name]
    rng = _rng(12)
    pred, target = _loss_case(name, rng, (5, 4))
    dloss = jnp.asarray(rng.standard_normal())

    @jax.jit
    def run(p, t, d):
        got, want = [], []
        for kw in kwargs:
            for reduction in ("mean", "sum"):
                value, cache = rule.forward(p, t, reduction=reduction, **kw)
                got.append((value, rule.backward(d, cache)))
                ref_value, pullback = jax.vjp(
                    lambda p_, kw=kw, r=reduction: _reduce(ref(p_, t, **kw), r), p)
                want.append((ref_value, pullback(d)[0]))
        return got, want

    got, want = run(pred, target, dloss)
    assert_close(got, want)
    assert all(dpred.shape == pred.shape and value.shape == () for value, dpred in got)


LOSS_WORKED = [
    # 2h (p - t) with h = 1/2, mean over N = 1
    ("squared_error", [[3.0, 0.0]], [[1.0, 0.5]], {}, 1.0, [[2.0, -0.5]]),
    # (2 / K) (p - t) with K = 2, summed
    ("mean_squared_error", [[3.0, 0.0]], [[1.0, 0.5]], {"reduction": "sum"}, 1.0,
     [[2.0, -0.5]]),
    # softmax(0, 0) = (1/2, 1/2): p - y = (-1/2, 1/2), halved by the mean over N = 2
    ("softmax_cross_entropy", [[0.0, 0.0], [0.0, 0.0]], [0, 1], {}, 1.0,
     [[-0.25, 0.25], [0.25, -0.25]]),
    # s(0) = 1/2: s(z) - y = -1/2 for y = 1 and 1/2 for y = 0
    ("binary_cross_entropy_with_logits", [[0.0, 0.0]], [[1.0, 0.0]], {}, 1.0, [[-0.5, 0.5]]),
    # -y s(-y s) = -y / 2 at s = 0, times dloss = 2
    ("logistic_loss", [[0.0, 0.0]], [[1.0, -1.0]], {}, 2.0, [[-1.0, 1.0]]),
    # p = 1/4, y = 1: -y / p = -4; p = 1/2, y = 0: (1 - y) / (1 - p) = 2
    ("binary_cross_entropy", [[0.25, 0.5]], [[1.0, 0.0]], {}, 1.0, [[-4.0, 2.0]]),
    # margins (1, 0, 2) for j != y = 0 at Delta 1: j = 2 is active, j = 1 sits at the kink
    ("multiclass_hinge", [[2.0, 1.0, 3.0]], [0], {"reduction": "sum"}, 1.0, [[-1.0, 0.0, 1.0]]),
]


def test_loss_backward_worked_numbers():
    """Exact derivatives on tiny inputs: the textbook's 2h (p - t), p - y, s(z) - y, ..."""
    cases = [(MLoss.LOSS_RULES[name], jnp.asarray(pred), jnp.asarray(target), kw, dloss)
             for name, pred, target, kw, dloss, _ in LOSS_WORKED]

    @jax.jit
    def run():
        return [rule.backward(jnp.asarray(dloss), rule.forward(pred, target, **kw)[1])
                for rule, pred, target, kw, dloss in cases]

    for (name, *_, want), got in zip(LOSS_WORKED, run()):
        np.testing.assert_array_equal(got, want, err_msg=name)
    value, _ = MLoss.softmax_cross_entropy_forward(jnp.zeros((2, 2)), jnp.array([0, 1]))
    assert float(value) == math.log(2.0)


def test_softmax_cross_entropy_with_probability_labels():
    """Rows that do not sum to one: dz = p * sum_k y_k - y, not p - y."""
    rng = _rng(14)
    z = _randn(rng, 4, 3)
    y = jnp.asarray(rng.uniform(size=(4, 3)))  # rows need not sum to one
    labels = jnp.array([0, 2, 1, 2])
    ref = LOSS_REFS["softmax_cross_entropy"][0]

    @jax.jit
    def run(z, y):
        value, cache = MLoss.softmax_cross_entropy_forward(z, y)
        got = (value, MLoss.softmax_cross_entropy_backward(jnp.asarray(1.0), cache))
        # one-hot rows give the same loss as the class indices
        same = (MLoss.softmax_cross_entropy_forward(z, _onehot(labels, 3))[0],
                MLoss.softmax_cross_entropy_forward(z, labels)[0])
        return got, jax.value_and_grad(lambda v: jnp.mean(ref(v, y)))(z), same

    got, want, same = run(z, y)
    assert_close(got, want)
    assert_close(*same)


def test_loss_argument_errors():
    with pytest.raises(ValueError, match="squared_error: reduction must be one of"):
        MLoss.squared_error_forward(jnp.ones((2, 3)), jnp.ones((2, 3)), reduction="none")
    with pytest.raises(ValueError, match=r"squared_error: target must have shape \(2, 3\)"):
        MLoss.squared_error_forward(jnp.ones((2, 3)), jnp.ones((3, 2)))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: labels must have shape \(2,\)"):
        MLoss.softmax_cross_entropy_forward(jnp.ones((2, 3)), jnp.ones(3, int))


# --------------------------------------------------------------------------- regularisers


def test_regularizer_worked_numbers():
    """l1: lam * sum |w|, dw = lam * sign(w) (0 at w = 0); l2 over_2m: lam / (2m) * sum w^2,
    dw = lam / m * w; biases untouched unless include_biases."""
    params = [{"w": jnp.array([[0.0, -2.0], [3.0, 1.0]]), "b": jnp.array([5.0, -5.0])}, {}]
    penalty, cache = MR.l1_forward(params, lam=0.5)
    assert float(penalty) == 3.0
    grads = MR.l1_backward(jnp.asarray(2.0), cache)
    np.testing.assert_array_equal(grads[0]["w"], [[0.0, -1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(grads[0]["b"], [0.0, 0.0])
    assert grads[1] == {}
    _, cache = MR.l1_forward(params, lam=0.5, include_biases=True)
    np.testing.assert_array_equal(MR.l1_backward(jnp.asarray(1.0), cache)[0]["b"], [0.5, -0.5])
    penalty, cache = MR.l2_forward(params, lam=0.5, convention="over_2m", batch_size=4)
    assert float(penalty) == 0.5 / 8 * 14
    grads = MR.l2_backward(jnp.asarray(1.0), cache)
    np.testing.assert_array_equal(grads[0]["w"], 0.5 / 4 * np.asarray(params[0]["w"]))
    penalty, cache = MR.l2_forward(params, lam=0.5, include_biases=True)
    assert float(penalty) == 0.5 * 64
    np.testing.assert_array_equal(MR.l2_backward(jnp.asarray(1.0), cache)[0]["b"], [5.0, -5.0])


def test_l2_over_2m_needs_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        MR.l2_forward([{"w": jnp.ones(2)}], lam=0.1, convention="over_2m")
    with pytest.raises(ValueError, match="l2: convention must be one of"):
        MR.l2_forward([{"w": jnp.ones(2)}], lam=0.1, convention="mean")


# --------------------------------------------------------------------------- model


def _dropout_spec(rate):
    """A dropout layer's spec, marked stochastic (it takes key and train) where `LayerSpec` has
    that field; older specs derive it from the name."""
    spec = LayerSpec.make("dropout", apply={"drop_rate": rate})
    return spec._replace(stochastic=True) if "stochastic" in LayerSpec._fields else spec


MODEL = (
    LayerSpec.make("conv2d", apply={"stride": 1, "padding": "SAME"}),
    LayerSpec.make("relu"),
    LayerSpec.make("max_pool2d", apply={"window": 2}),
    LayerSpec.make("flatten"),
    LayerSpec.make("dense"),
    LayerSpec.make("tanh"),
    _dropout_spec(0.25),
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


def _dropout_ref(v, key, rate):
    keep = jax.random.bernoulli(key, 1.0 - rate, v.shape)
    return jnp.where(keep, v / (1.0 - rate), 0.0)


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


def test_model_matches_autodiff_of_the_written_out_network():
    """value_and_grad against autodiff of the objective of `_model_ref`; the gradient tree
    mirrors params, leaf dtypes included."""
    x, y, key = _model_data()
    params = _model_params(20)
    f = MM.value_and_grad(MODEL, LOSS, REGS)
    got, want = jax.jit(lambda p, v, t: (f(p, v, t, key), jax.value_and_grad(_objective_ref)(
        p, v, t, key)))(params, x, y)
    assert_close(got, want)
    grads = got[1]
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert [g.dtype for g in jax.tree.leaves(grads)] == [p.dtype for p in jax.tree.leaves(params)]
    # evaluation mode: dropout is the identity and needs no key
    assert jax.eval_shape(lambda p, v: MM.forward(MODEL, p, v)[0], params, x).shape == (3, 3)


def test_model_errors():
    layers = (LayerSpec.make("dense"), _dropout_spec(0.5))
    params, x, y = [{"w": jnp.ones((2, 3))}, {}], jnp.ones((4, 2)), jnp.array([0, 1, 2, 0])
    with pytest.raises(ValueError, match="layer 1 \\(dropout\\) needs key"):
        MM.value_and_grad(layers, LOSS)(params, x, y)
    with pytest.raises(ValueError, match="layer: unknown name 'conv3d'"):
        MM.value_and_grad((LayerSpec("conv3d"),), LOSS)
    with pytest.raises(ValueError, match="loss: unknown name 'huber'"):
        MM.value_and_grad(MODEL, LossSpec.make("huber"))
    with pytest.raises(ValueError, match="regularizer: unknown name 'l3'"):
        MM.value_and_grad(MODEL, LOSS, (RegSpec.make("l3", lam=1.0),))
    with pytest.raises(ValueError, match="params must have 2 entries"):
        MM.forward(layers, params[:-1], x)
