"""The faster kernels of `nnfun.manual.fast` equal the textbook rules they replace.

Each fast rule is run beside its textbook rule of `nnfun.manual.layers` on geometries drawn by
hypothesis (strides, XLA's "SAME" padding, windows that tile the input and windows that do not,
integer-valued inputs so that max pools see ties), in float64: forward values and backward
outputs agree to rounding. A whole network gives the same value and gradient with
``fast=True`` as with the textbook rules.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, assume, given, settings
from hypothesis import strategies as st

from nnfun.manual import fast as MF
from nnfun.manual import layers as ML
from nnfun.manual import model as MM
from nnfun.spec import LayerSpec, LossSpec

TOL = 1e-12
# Every example compiles a program, so a failure is reported as found, without shrinking.
FEW = settings(max_examples=6, deadline=None, derandomize=True,
               phases=(Phase.explicit, Phase.generate))


@pytest.fixture(autouse=True, scope="module")
def _x64():
    """float64 for this module only (never enabled globally)."""
    with jax.enable_x64(True):
        yield


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_close(got, want, tol: float = TOL) -> None:
    """Relative error ||got - want|| / ||want|| <= tol, leaf by leaf (exact when want is 0)."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert g.shape == w.shape
        assert np.linalg.norm(g - w) <= tol * max(np.linalg.norm(w), 1e-300), (g, w)


def _both(name, params, x, dout, **kw):
    """(textbook, fast): each rule's (out, dx, dparams, cache) at x for upstream dout, all in
    one jitted call."""
    def run(rule, p, v, d):
        out, cache = rule.forward(p, v, **kw)
        return (out, *rule.backward(d, cache), cache)

    return jax.jit(lambda p, v, d: (run(ML.RULES[name], p, v, d),
                                    run(MF.FAST_RULES[name], p, v, d)))(params, x, dout)


@st.composite
def geometries(draw, rank=2, tiled=None):
    """(in_hw, kernel, stride, padding) of a window that fits; a unit height when rank is 1.
    With ``tiled``, stride == kernel: the windows tile the input (and the fast pools reshape
    it) unless SAME padding pads it."""
    h = 1 if rank == 1 else draw(st.integers(1, 7))
    kh = 1 if rank == 1 else draw(st.integers(1, 3))
    w, kw = draw(st.integers(1, 8)), draw(st.integers(1, 4))
    if tiled:
        stride = (kh, kw)
    else:
        stride = (1 if rank == 1 else draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.sampled_from(["SAME", "VALID"]))
    assume(padding == "SAME" or (h >= kh and w >= kw))
    return (h, w), (kh, kw), stride, padding


@settings(FEW, max_examples=5)
@given(geometry=st.one_of(geometries(rank=1), geometries(rank=2)), c_in=st.integers(1, 3),
       bias=st.booleans())
def test_fast_convolutions_equal_the_textbook_rules(geometry, c_in, bias):
    """The two-pass patches copy the same values into the same slots (bitwise), the one-sum
    col2im and the 1^T dout bias gradient add the same terms as the textbook's."""
    (h, w), (kh, kw), (sh, sw), padding = geometry
    rng = _rng(h * 100 + w * 10 + kw)
    if h == 1 and kh == 1 and sh == 1:  # the 1-D layer
        name, x, kernel, stride = "conv1d", rng.normal(size=(2, w, c_in)), (kw,), sw
    else:
        name, x, kernel, stride = "conv2d", rng.normal(size=(2, h, w, c_in)), (kh, kw), (sh, sw)
    params = {"w": jnp.asarray(rng.normal(size=(*kernel, c_in, 3)))}
    if bias:
        params["b"] = jnp.asarray(rng.normal(size=3))
    x = jnp.asarray(x)
    out_shape = jax.eval_shape(lambda p, v: ML.RULES[name].forward(p, v, stride=stride,
                                                                   padding=padding)[0], params, x)
    dout = jnp.asarray(rng.normal(size=out_shape.shape))
    textbook, fast = _both(name, params, x, dout, stride=stride, padding=padding)
    np.testing.assert_array_equal(fast[3].cols, textbook[3].cols)
    assert fast[3].window == textbook[3].window and fast[3].has_bias == bias
    assert_close(fast[:3], textbook[:3])
    assert set(fast[2]) == set(params)


@settings(FEW, max_examples=5)
@given(kind=st.sampled_from(["max", "avg"]), rank=st.sampled_from([1, 2]),
       tiled=st.booleans(), data=st.data())
def test_fast_pools_equal_the_textbook_rules(kind, rank, tiled, data):
    """Integer inputs put ties in most windows; max pools must split dout among them alike."""
    (h, w), (kh, kw), (sh, sw), padding = data.draw(geometries(rank=rank, tiled=tiled))
    rng = _rng(h * 100 + w * 10 + kw)
    if rank == 1:
        shape, kw_args = (2, w, 3), {"window": kw, "stride": sw, "padding": padding}
    else:
        shape, kw_args = (2, h, w, 3), {"window": (kh, kw), "stride": (sh, sw),
                                        "padding": padding}
    name = f"{kind}_pool{rank}d"
    x = jnp.asarray(rng.integers(0, 3, shape), jnp.float64)
    out_shape = jax.eval_shape(lambda v: ML.RULES[name].forward({}, v, **kw_args)[0], x)
    dout = jnp.asarray(rng.normal(size=out_shape.shape))
    textbook, fast = _both(name, {}, x, dout, **kw_args)
    assert_close(fast[:3], textbook[:3])


@pytest.mark.parametrize("name, shape, kw, tiled", [
    ("max_pool2d", (2, 7, 6, 3), {}, True),                                # VALID crops row 7
    ("max_pool2d", (2, 4, 6, 3), {"window": (2, 3), "padding": "SAME"}, True),  # pads nothing
    ("max_pool2d", (2, 7, 5, 3), {"window": 2, "padding": "SAME"}, False),  # pads row and column
    ("max_pool1d", (2, 7, 3), {"window": 3}, True),
    ("avg_pool2d", (2, 7, 6, 3), {}, True),
    ("avg_pool2d", (2, 7, 5, 3), {"window": 2, "padding": "SAME"}, False),
    ("avg_pool1d", (2, 7, 3), {"window": 3}, True),
])
def test_fast_pools_reshape_only_tiling_windows(name, shape, kw, tiled):
    """Windows that tile the input take the reshape path (a tiled cache for max pools), and the
    rows and columns past the last window get no gradient; padded windows do not."""
    rng = _rng(11)
    x = jnp.asarray(rng.integers(0, 3, shape), jnp.float64)  # many ties
    out, cache = jax.eval_shape(lambda v: MF.FAST_RULES[name].forward({}, v, **kw), x)
    assert MF.tiles(cache.window) == tiled
    if name.startswith("max"):
        assert isinstance(cache, MF.TiledMaxPoolCache if tiled else ML.MaxPoolCache)
    dout = jnp.asarray(rng.normal(size=out.shape))
    textbook, fast = _both(name, {}, x, dout, **kw)
    assert_close(fast[:3], textbook[:3])
    if tiled:
        np.testing.assert_array_equal(np.asarray(fast[1])[:, 6:], 0.0)  # past the last window


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("name,biases", [("gru", ("b_x", "b_h")), ("lstm", ("b",))])
def test_fast_recurrent_rules_equal_the_textbook_rules(name, biases, return_sequences):
    """Forward values, the cache (the same fields, h_prev and c_prev rebuilt by a shift) and
    the gradients, for either cache fed to the fast backward."""
    rng, gates = _rng(7), {"gru": 3, "lstm": 4}[name]
    n, t, d, h = 3, 5, 2, 4
    params = {"w_x": rng.normal(size=(d, gates * h)), "w_h": rng.normal(size=(h, gates * h)),
              **{b: rng.normal(size=gates * h) for b in biases}}
    params = jax.tree.map(jnp.asarray, params)
    x = jnp.asarray(rng.normal(size=(n, t, d)))
    dout = jnp.asarray(rng.normal(size=(n, t, h) if return_sequences else (n, h)))
    textbook, fast = _both(name, params, x, dout, return_sequences=return_sequences)
    assert_close(fast, textbook)
    cross = jax.jit(MF.FAST_RULES[name].backward)(dout, textbook[3])
    assert_close(cross, fast[1:3])


def test_fast_rules_override_only_layers_the_textbook_has():
    assert set(MF.FAST_RULES) == {"conv1d", "conv2d", "max_pool1d", "max_pool2d", "avg_pool1d",
                                  "avg_pool2d", "gru", "lstm"}
    for name, rule in MF.FAST_RULES.items():
        assert rule.forward is not ML.RULES[name].forward
        assert rule.backward is not ML.RULES[name].backward


CNN = (
    LayerSpec.make("conv2d", apply={"stride": 1, "padding": "SAME"}),
    LayerSpec.make("relu"),
    LayerSpec.make("max_pool2d", apply={"window": 2}),                            # tiles
    LayerSpec.make("conv2d", apply={"stride": 2, "padding": "VALID"}),
    LayerSpec.make("avg_pool2d", apply={"window": 2, "stride": 1, "padding": "SAME"}),
    LayerSpec.make("flatten"),
    LayerSpec.make("dense"),
)


def test_fast_value_and_grad_equals_the_textbook_one():
    rng = _rng(3)
    params = [{"w": jnp.asarray(rng.normal(size=(3, 3, 2, 4))),
               "b": jnp.asarray(rng.normal(size=4))}, {}, {},
              {"w": jnp.asarray(rng.normal(size=(2, 2, 4, 3)))}, {}, {},
              {"w": jnp.asarray(rng.normal(size=(6, 5))), "b": jnp.asarray(rng.normal(size=5))}]
    x = jnp.asarray(rng.integers(0, 3, (3, 8, 6, 2)), jnp.float64)
    y = jnp.array([0, 4, 2])
    loss = LossSpec.make("softmax_cross_entropy")

    @jax.jit
    def run(p, v, t):
        return (MM.value_and_grad(CNN, loss, fast=True)(p, v, t),
                MM.value_and_grad(CNN, loss)(p, v, t))

    fast, textbook = run(params, x, y)
    assert_close(fast, textbook)
    caches = jax.eval_shape(lambda p, v: MM.forward(CNN, p, v, fast=True)[1], params, x)
    assert isinstance(caches[2], MF.TiledMaxPoolCache)
    caches = jax.eval_shape(lambda p, v: MM.forward(CNN, p, v)[1], params, x)
    assert isinstance(caches[2], ML.MaxPoolCache)
