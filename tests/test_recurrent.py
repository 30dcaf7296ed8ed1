"""Recurrent layers (rnn, lstm, gru) and their helpers (reshape, gaussian_noise): random stacks
checked three ways, the forward against a per-time-step loop written here from the equations,
the initialisers, one-line errors, and a MNIST-1D-shaped model that trains with both engines.
(tests/test_registry.py runs every layer's examples three ways as well.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from nnfun import layers as L
from nnfun import recurrent as R
from nnfun import train
from nnfun.gradcheck import check_gradients
from nnfun.manual import layers as ML
from nnfun.manual import recurrent as MR
from nnfun.models import layer, sequential
from nnfun.spec import LossSpec, RegSpec

# no shrinking: each example compiles several programs, so shrinking a failure takes minutes;
# the failing stack is printed in full instead
SETTINGS = settings(max_examples=3, deadline=None, derandomize=True,
                    phases=(Phase.explicit, Phase.reuse, Phase.generate),
                    suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- random stacks


@st.composite
def recurrent_stacks(draw):
    """(layer specs, input shape (N, ...), classes): [reshape] [gaussian_noise], one or two
    recurrent layers (all but the last return sequences), [flatten], dense."""
    n, t, d = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 4))
    specs, shape = [], (n, t, d)
    if draw(st.booleans()):
        specs.append(layer("reshape", shape=(t, d)))
        shape = (n, t * d)
    if draw(st.booleans()):
        specs.append(layer("gaussian_noise", stddev=0.3))
    depth = draw(st.integers(1, 2))
    for i in range(depth):
        kind = draw(st.sampled_from(["rnn", "lstm", "gru"]))
        seq = True if i < depth - 1 else draw(st.booleans())
        kw = {"features": draw(st.integers(1, 4)), "return_sequences": seq}
        if kind == "lstm":
            kw["forget_bias"] = draw(st.sampled_from([0.0, 1.0]))
        specs.append(layer(kind, **kw))
    if seq:
        specs.append(layer("flatten"))
    classes = draw(st.integers(2, 3))
    specs.append(layer("dense", features=classes))
    return tuple(specs), shape, classes


@pytest.mark.slow  # about 20 s of compilation: hypothesis stacks run with -m slow
@SETTINGS
@given(stack=recurrent_stacks(), seed=st.integers(0, 2**16))
def test_random_recurrent_stacks_three_ways(stack, seed):
    specs, shape, classes = stack
    loss = LossSpec.make("softmax_cross_entropy")
    regs = (RegSpec.make("l2", lam=0.05),)  # w_x and w_h are weights, the biases are not
    key = jax.random.PRNGKey(seed)
    with jax.enable_x64(True):
        params = sequential(specs).init(key, shape[1:], jnp.float64)
        x = jax.random.normal(jax.random.fold_in(key, 1), shape, jnp.float64)
        y = jax.random.randint(jax.random.fold_in(key, 2), (shape[0],), 0, classes)
        report = check_gradients(specs, loss, params, x, y, regularizers=regs,
                                 key=jax.random.fold_in(key, 3))
    assert report.passed, f"{[s.name for s in specs]}\n{report}"


# --------------------------------------------------------------------------- the equations


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _loop_lstm(p, x):
    """The LSTM, one time step at a time in numpy: every h_t, (N, T, H)."""
    w_x, w_h, b = (np.asarray(p[k]) for k in ("w_x", "w_h", "b"))
    hid = w_h.shape[0]
    h = c = np.zeros((x.shape[0], hid))
    out = []
    for t in range(x.shape[1]):
        a = x[:, t] @ w_x + h @ w_h + b
        i, f = _sigmoid(a[:, :hid]), _sigmoid(a[:, hid:2 * hid])
        g, o = np.tanh(a[:, 2 * hid:3 * hid]), _sigmoid(a[:, 3 * hid:])
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1)


def _loop_gru(p, x):
    """PyTorch's GRU, one time step at a time in numpy: every h_t, (N, T, H)."""
    w_x, w_h, b_x, b_h = (np.asarray(p[k]) for k in ("w_x", "w_h", "b_x", "b_h"))
    hid = w_h.shape[0]
    wxr, wxz, wxn = w_x[:, :hid], w_x[:, hid:2 * hid], w_x[:, 2 * hid:]
    whr, whz, whn = w_h[:, :hid], w_h[:, hid:2 * hid], w_h[:, 2 * hid:]
    bxr, bxz, bxn = b_x[:hid], b_x[hid:2 * hid], b_x[2 * hid:]
    bhr, bhz, bhn = b_h[:hid], b_h[hid:2 * hid], b_h[2 * hid:]
    h, out = np.zeros((x.shape[0], hid)), []
    for t in range(x.shape[1]):
        xt = x[:, t]
        r = _sigmoid(xt @ wxr + bxr + h @ whr + bhr)
        z = _sigmoid(xt @ wxz + bxz + h @ whz + bhz)
        n = np.tanh(xt @ wxn + bxn + r * (h @ whn + bhn))
        h = (1.0 - z) * n + z * h
        out.append(h)
    return np.stack(out, axis=1)


def _loop_rnn(p, x):
    """The Elman RNN, one time step at a time in numpy: every h_t, (N, T, H)."""
    w_x, w_h, b = (np.asarray(p[k]) for k in ("w_x", "w_h", "b"))
    h, out = np.zeros((x.shape[0], w_h.shape[0])), []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ w_x + h @ w_h + b)
        out.append(h)
    return np.stack(out, axis=1)


LOOPS = {"rnn": _loop_rnn, "lstm": _loop_lstm, "gru": _loop_gru}


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_forward_equals_a_loop_over_time_steps(name):
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(4)
        params = sequential([layer(name, features=3)]).init(key, (5, 2), jnp.float64)[0]
        params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(key, p.shape, p.dtype),
                              params)  # nonzero biases, so every bias enters the check
        x = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (4, 5, 2), jnp.float64))
        want = LOOPS[name](params, x)
        apply, forward = L.LAYERS[name].apply, ML.RULES[name].forward
        for seq in (False, True):
            expected = want if seq else want[:, -1]
            np.testing.assert_allclose(apply(params, x, return_sequences=seq), expected,
                                       rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(forward(params, x, return_sequences=seq)[0], expected,
                                       rtol=1e-12, atol=1e-13)


def test_initialisers_forget_bias_and_orthogonal_recurrent_weights():
    key = jax.random.PRNGKey(0)
    p = sequential([layer("lstm", features=3)]).init(key, (7, 2))[0]
    assert {k: v.shape for k, v in p.items()} == {"w_x": (2, 12), "w_h": (3, 12), "b": (12,)}
    np.testing.assert_array_equal(p["b"], [0.0] * 3 + [1.0] * 3 + [0.0] * 6)  # (i, f, g, o)
    p0 = sequential([layer("lstm", features=3, forget_bias=0.0)]).init(key, (7, 2))[0]
    np.testing.assert_array_equal(p0["b"], np.zeros(12))
    for name, gates in (("rnn", 1), ("lstm", 4), ("gru", 3)):
        w_h = np.asarray(sequential([layer(name, features=4)]).init(key, (7, 2))[0]["w_h"])
        for block in np.split(w_h, gates, axis=1):
            np.testing.assert_allclose(block.T @ block, np.eye(4), atol=1e-5)
    w_h = sequential([layer("gru", features=4, h_init="zeros")]).init(key, (7, 2))[0]["w_h"]
    assert w_h.shape == (4, 12) and not np.any(w_h)
    g = sequential([layer("gru", features=4)]).init(key, (7, 2))[0]
    assert not np.any(g["b_x"]) and not np.any(g["b_h"])


# --------------------------------------------------------------------------- helpers


def test_reshape_and_gaussian_noise():
    x = jnp.arange(24.0).reshape(2, 12)
    out = L.reshape_apply({}, x, shape=(-1, 3))
    assert out.shape == (2, 4, 3)
    out_m, cache = ML.RULES["reshape"].forward({}, x, shape=(4, 3))
    np.testing.assert_array_equal(out_m, out)
    assert ML.RULES["reshape"].backward(out_m, cache)[0].shape == (2, 12)
    key = jax.random.PRNGKey(1)
    noisy = L.gaussian_noise_apply({}, x, stddev=0.5, key=key)
    np.testing.assert_array_equal(noisy, x + 0.5 * jax.random.normal(key, x.shape, x.dtype))
    np.testing.assert_array_equal(ML.RULES["gaussian_noise"].forward({}, x, stddev=0.5,
                                                                     key=key)[0], noisy)
    assert L.gaussian_noise_apply({}, x, stddev=0.5, key=key, train=False) is x
    model = sequential([layer("gaussian_noise", stddev=1.0), layer("flatten")])
    assert model.layers[0].stochastic
    np.testing.assert_array_equal(model.apply([{}, {}], x), x)  # evaluation: the identity


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_a_wrong_rank_input_is_one_line_naming_the_layer(name):
    params = sequential([layer(name, features=3)]).init(jax.random.PRNGKey(0), (4, 2))[0]
    x = jnp.ones((5, 2))
    want = rf"^{name}: x must have shape \(N, T, D\), got shape \(5, 2\)$"
    for fn in (L.LAYERS[name].apply, ML.RULES[name].forward):
        with pytest.raises(ValueError, match=want):
            fn(params, x)
    with pytest.raises(ValueError, match=rf"{name}: expects a sequence \(N, T, D\) but the "
                                         r"previous layer gives \(N, 40\); add a 'reshape'"):
        sequential([layer(name, features=3)]).init(jax.random.PRNGKey(0), (40,))
    with pytest.raises(ValueError, match=rf"layer '{name}': missing required argument "
                                         "'features'"):
        layer(name)
    with pytest.raises(ValueError, match=rf"{name}: w_x must have shape \(3, "):
        L.LAYERS[name].apply(params, jnp.ones((5, 4, 3)))


def test_helper_errors_are_one_line():
    x = jnp.ones((2, 40))
    for fn in (R.reshape_apply, MR.reshape_forward):
        with pytest.raises(ValueError, match=r"reshape: cannot reshape \(N, 40\) \(40 values "
                                             r"per example\) to \(N, 3, 7\)"):
            fn({}, x, shape=(3, 7))
    for fn in (R.gaussian_noise_apply, MR.gaussian_noise_forward):
        with pytest.raises(ValueError, match="gaussian_noise: .*key is required"):
            fn({}, x, stddev=0.1)
        with pytest.raises(ValueError, match="gaussian_noise: stddev must be >= 0"):
            fn({}, x, stddev=-1.0)


# --------------------------------------------------------------------------- training


def test_a_mnist1d_shaped_gru_trains_with_both_engines():
    """reshape (N, 40) -> (N, 40, 1), gru, dense: a few Adam steps on a batch of MNIST-1D's
    shape lower the loss with the autodiff and the hand-written gradients alike."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 40)).astype(np.float32)
    y = (x[:, :20].mean(axis=1) > x[:, 20:].mean(axis=1)).astype(np.int32)
    model = sequential([layer("reshape", shape=(40, 1)), layer("gru", features=8),
                        layer("dense", features=2)])
    loss = LossSpec.make("softmax_cross_entropy")
    batch, losses = (jnp.asarray(x), jnp.asarray(y)), {}
    for engine in train.ENGINES:
        state = train.init_train_state(0, model.layers, (40,), optax.adam(0.02))
        step = train.make_train_step(model.layers, loss, (), optax.adam(0.02), engine=engine)
        losses[engine] = []
        for _ in range(25):
            state, metrics = step(state, batch)
            losses[engine].append(float(metrics["loss"]))
        assert losses[engine][-1] < 0.8 * losses[engine][0], (engine, losses[engine])
    np.testing.assert_allclose(losses["manual"], losses["autodiff"], rtol=1e-3)


@pytest.mark.parametrize("layers, expected", [
    ('[{ name = "gru", features = 4 }, { name = "dense", features = 2 }]',
     "gru: expects a sequence (N, T, D) but the previous layer gives (N, 2); add a 'reshape'"),
    ('[{ name = "reshape", shape = [2, 1] }, { name = "lstm" }, { name = "dense", features = 2 }]',
     "layer 'lstm': missing required argument 'features'"),
])
def test_a_misfit_recurrent_config_is_exit_2_with_one_line(tmp_path, capsys, layers, expected):
    from nnfun.cli import main

    (tmp_path / "seq.toml").write_text(
        f'[data]\nname = "xor"\n[model]\nname = "sequential"\nlayers = {layers}\n'
        '[loss]\nname = "softmax_cross_entropy"\n[optimizer]\nname = "adam"\n'
        'learning_rate = 0.01\n[training]\nbatch_size = 4\n')
    assert main(["train", str(tmp_path / "seq.toml"), "--out", str(tmp_path / "r"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "seq.toml" in err, err
    assert not (tmp_path / "r").exists()
