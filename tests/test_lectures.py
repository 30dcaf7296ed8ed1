"""The lecture notes' worked numbers, reproduced exactly through nnfun's public API."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnfun import activations, losses
from nnfun.gradcheck import relative_error
from nnfun.layers import dense_apply
from nnfun.manual import gates
from nnfun.manual import layers as ML
from nnfun.manual.model import value_and_grad as manual_value_and_grad
from nnfun.models import layer, sequential
from nnfun.objective import make_objective
from nnfun.spec import LossSpec


def test_add_mul_graph_lecture_000():
    # f(x, y, z) = (x + y) z at x = -2, y = 5, z = -4
    x, y, z = -2.0, 5.0, -4.0
    q, c_add = gates.add_forward(x, y)
    f, c_mul = gates.mul_forward(q, z)
    dq, dz = gates.mul_backward(1.0, c_mul)
    dx, dy = gates.add_backward(dq, c_add)
    assert (q, f) == (3.0, -12.0)
    assert (float(dx), float(dy), float(dz)) == (-4.0, -4.0, 3.0)
    auto = jax.grad(lambda a, b, c: (a + b) * c, argnums=(0, 1, 2))(x, y, z)
    assert tuple(map(float, auto)) == (-4.0, -4.0, 3.0)


def test_max_gate_routes_and_copy_gate_adds():
    out, cache = gates.max_forward(jnp.array(4.0), jnp.array(2.0))
    assert float(out) == 4.0
    assert tuple(map(float, gates.max_backward(jnp.array(5.0), cache))) == (5.0, 0.0)
    (a, b), c = gates.copy_forward(jnp.array(1.0))
    assert float(gates.copy_backward((jnp.array(2.0), jnp.array(3.0)), c)) == 5.0


def test_sigmoid_neuron_lecture_003():
    # w = (2, -3, -3) (the last is the bias), x = (-1, -2): output 0.73, local gradient 0.2
    with jax.enable_x64(True):
        params = {"w": jnp.array([[2.0], [-3.0]]), "b": jnp.array([-3.0])}
        x = jnp.array([[-1.0, -2.0]])
        z, c1 = ML.dense_forward(params, x)
        s, c2 = ML.sigmoid_forward({}, z)
        dz, _ = ML.sigmoid_backward(jnp.ones_like(s), c2)
        dx, dparams = ML.dense_backward(dz, c1)
        sig1 = 1.0 / (1.0 + np.exp(-1.0))
        assert float(z[0, 0]) == 1.0
        assert float(s[0, 0]) == pytest.approx(sig1, rel=1e-15)
        assert round(float(s[0, 0]), 2) == 0.73
        local = sig1 * (1.0 - sig1)
        assert round(local, 1) == 0.2
        np.testing.assert_allclose(dx[0], [2 * local, -3 * local], rtol=1e-14)
        np.testing.assert_allclose(dparams["w"][:, 0], [-local, -2 * local], rtol=1e-14)
        np.testing.assert_allclose(dparams["b"], [local], rtol=1e-14)
        # the slides' rounded values
        assert np.round(np.asarray(dx[0]), 2).tolist() == [0.39, -0.59]
        assert np.round(np.asarray(dparams["w"][:, 0]), 2).tolist() == [-0.2, -0.39]
        # autodiff agrees
        g = jax.grad(lambda p, v: activations.sigmoid(dense_apply(p, v))[0, 0], argnums=(0, 1))
        gp, gx = g(params, x)
        np.testing.assert_allclose(gx, dx, rtol=1e-14)
        np.testing.assert_allclose(gp["w"], dparams["w"], rtol=1e-14)


def test_hinge_table_lecture_004():
    # columns of the slide: the cat, car and frog images; rows: cat, car, frog scores
    with jax.enable_x64(True):
        scores = jnp.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])
        labels = jnp.array([0, 1, 2])
        per = [float(losses.multiclass_hinge(scores[i:i + 1], labels[i:i + 1]))
               for i in range(3)]
        assert per == pytest.approx([2.9, 0.0, 12.9], abs=1e-12)
        mean = float(losses.multiclass_hinge(scores, labels))
        assert mean == pytest.approx(15.8 / 3, abs=1e-12)
        assert round(mean, 1) == 5.3


def test_hinge_table_manual_path():
    from nnfun.manual.losses import multiclass_hinge_forward

    with jax.enable_x64(True):
        scores = jnp.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])
        value, _ = multiclass_hinge_forward(scores, jnp.array([0, 1, 2]))
        assert float(value) == pytest.approx(15.8 / 3, abs=1e-12)


def test_softmax_table_lecture_004():
    scores = jnp.array([5.1, 3.2, -1.7, -2.0])
    # the slide's table: exp 164.0, 0.18, 0.13 (truncated to two decimals), probability 0.87
    np.testing.assert_allclose(np.exp(np.asarray(scores, np.float64))[[0, 2, 3]],
                               [164.0, 0.18, 0.13], atol=0.03)
    p = activations.softmax(scores)
    assert np.round(np.asarray(p, np.float64), 2).tolist() == [0.87, 0.13, 0.0, 0.0]
    np.testing.assert_allclose(p, np.exp(scores) / np.exp(scores).sum(), rtol=1e-6)
    out, _ = ML.softmax_forward({}, scores[None])
    np.testing.assert_allclose(out[0], p, rtol=1e-6)


@pytest.mark.parametrize("bias,expected", [(-30.0, [0, 0, 0, 1]), (-10.0, [0, 1, 1, 1])],
                         ids=["AND", "OR"])
def test_and_or_from_one_neuron_lecture_004(bias, expected):
    model = sequential([layer("dense", features=1), layer("sigmoid")])
    params = [{"w": jnp.array([[20.0], [20.0]]), "b": jnp.array([bias])}, {}]
    x = jnp.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    h = model.apply(params, x)[:, 0]
    assert (np.asarray(h) > 0.5).astype(int).tolist() == expected
    sig = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
    np.testing.assert_allclose(h, sig(bias + 20 * np.asarray(x).sum(1)), rtol=1e-6)


def test_squared_norm_of_wx_gradients_lecture_001():
    # L = ||W x||^2, q = W x: dL/dx = 2 W^T q, dL/dW = 2 q x^T
    with jax.enable_x64(True):
        W = jnp.array([[0.1, 0.5], [-0.3, 0.8]])
        x = jnp.array([0.2, 0.4])
        q = W @ x
        layers = sequential([layer("dense", features=2, bias=False)]).layers
        loss = LossSpec.make("squared_error", half=False, reduction="sum")
        target = jnp.zeros((1, 2))
        params = [{"w": W.T}]  # nnfun computes x @ w, so w = W^T
        value, grads = manual_value_and_grad(layers, loss)(params, x[None], target)
        assert float(value) == pytest.approx(float(q @ q), rel=1e-15)
        np.testing.assert_allclose(grads[0]["w"].T, 2 * jnp.outer(q, x), rtol=1e-15)
        auto = jax.grad(make_objective(layers, loss))(params, x[None], target)
        np.testing.assert_allclose(auto[0]["w"].T, 2 * jnp.outer(q, x), rtol=1e-15)
        dx = jax.grad(lambda v: jnp.sum((v @ W.T) ** 2))(x)
        np.testing.assert_allclose(dx, 2 * W.T @ q, rtol=1e-15)
        np.testing.assert_allclose(q, [0.22, 0.26], rtol=1e-14)


def test_twenty_line_numpy_net_lecture_003():
    """Lecture 003's NumPy net: sigmoid hidden layer, no biases, summed squared error."""
    rng = np.random.default_rng(0)
    N, D_in, H, D_out = 64, 1000, 100, 10
    x, y = rng.standard_normal((N, D_in)), rng.standard_normal((N, D_out))
    w1, w2 = rng.standard_normal((D_in, H)), rng.standard_normal((H, D_out))
    layers = sequential([layer("dense", features=H, bias=False), layer("sigmoid"),
                         layer("dense", features=D_out, bias=False)]).layers
    loss = LossSpec.make("squared_error", half=False, reduction="sum")
    manual = jax.jit(manual_value_and_grad(layers, loss))
    auto = jax.jit(jax.value_and_grad(make_objective(layers, loss)))
    with jax.enable_x64(True):
        for _ in range(3):  # three steps of the lecture's loop, number for number
            h = 1 / (1 + np.exp(-x.dot(w1)))
            y_pred = h.dot(w2)
            loss_np = np.square(y_pred - y).sum()
            grad_y_pred = 2.0 * (y_pred - y)
            grad_w2 = h.T.dot(grad_y_pred)
            grad_h = grad_y_pred.dot(w2.T)
            grad_w1 = x.T.dot(grad_h * h * (1 - h))
            params = [{"w": jnp.asarray(w1)}, {}, {"w": jnp.asarray(w2)}]
            for engine in (manual, auto):
                value, grads = engine(params, jnp.asarray(x), jnp.asarray(y))
                assert float(value) == pytest.approx(loss_np, rel=1e-12)
                assert relative_error(grads[0]["w"], grad_w1)[1] <= 1e-12
                assert relative_error(grads[2]["w"], grad_w2)[1] <= 1e-12
            w1 -= 1e-4 * grad_w1
            w2 -= 1e-4 * grad_w2
