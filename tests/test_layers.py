"""The autodiff path's building blocks: initialisers, layers, models, and their errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnfun import activations, initializers, layers, losses, models, regularizers


@pytest.mark.parametrize("name,shape,std", [
    ("he_normal", (400, 300), np.sqrt(2 / 400)),
    ("xavier_normal", (400, 300), np.sqrt(2 / 700)),
    ("lecun_normal", (400, 300), np.sqrt(1 / 400)),
    ("he_uniform", (400, 300), np.sqrt(2 / 400)),
    ("xavier_uniform", (400, 300), np.sqrt(2 / 700)),
    ("he_normal", (5, 5, 3, 64), np.sqrt(2 / 75)),
])
def test_initializer_scales_follow_the_notes(name, shape, std):
    w = initializers.get_initializer(name)(jax.random.key(0), shape)
    assert float(jnp.std(w)) == pytest.approx(std, rel=0.05)
    assert abs(float(jnp.mean(w))) < 0.1 * std


def test_uniform_zeros_constant():
    w = initializers.get_initializer({"name": "uniform", "eps": 0.3})(jax.random.key(1), (1000,))
    assert -0.3 <= float(w.min()) and float(w.max()) <= 0.3 and float(w.max()) > 0.29
    assert float(jnp.abs(initializers.zeros()(jax.random.key(0), (3,))).sum()) == 0.0
    assert initializers.get_initializer({"name": "constant", "value": 2.0})(
        jax.random.key(0), (2,)).tolist() == [2.0, 2.0]


def test_bad_names_raise_naming_the_argument():
    with pytest.raises(ValueError, match=r"initializer: unknown name 'hee'.*he_normal"):
        initializers.get_initializer("hee")
    with pytest.raises(ValueError, match=r"activation: unknown name 'relu6'.*sigmoid"):
        activations.get_activation("relu6")
    with pytest.raises(ValueError, match=r"loss: unknown name"):
        losses.get_loss("cross_entropy")
    with pytest.raises(ValueError, match=r"regularizer: unknown name"):
        regularizers.get_regularizer("l3")
    with pytest.raises(ValueError, match=r"layer: unknown name 'dens'"):
        models.layer("dens", features=3)
    with pytest.raises(ValueError, match=r"layers\[1\].*unknown argument.*'window_size'"):
        models.sequential([("dense", {"features": 3}), ("max_pool2d", {"window_size": 2})])
    with pytest.raises(ValueError, match="missing required argument 'features'"):
        models.layer("dense")
    with pytest.raises(ValueError, match="reduction"):
        losses.squared_error(jnp.ones((2, 1)), jnp.ones((2, 1)), reduction="avg")


def test_shapes_that_do_not_fit_name_the_input():
    with pytest.raises(ValueError, match=r"dense: input x has 3 features.*D=4"):
        layers.dense_apply({"w": jnp.ones((4, 2))}, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match=r"conv2d: x must have shape \(N, H, W, C\)"):
        layers.conv2d_apply({"w": jnp.ones((3, 3, 1, 2))}, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match=r"conv2d: input x has 2 channels"):
        layers.conv2d_apply({"w": jnp.ones((3, 3, 1, 2))}, jnp.ones((1, 4, 4, 2)))
    with pytest.raises(ValueError, match="softmax_cross_entropy: labels has 3 entries"):
        losses.softmax_cross_entropy(jnp.ones((2, 4)), jnp.array([0, 1, 2]))
    model = models.cnn([4], [], 10)
    with pytest.raises(ValueError, match=r"layers\[0\] \(conv2d\) with input shape \(N, 64\)"):
        model.init(jax.random.key(0), (64,))


def test_builders_and_param_count():
    model = models.mlp([100], 3, activation="sigmoid", dropout=0.5)
    assert [s.name for s in model.layers] == ["dense", "sigmoid", "dropout", "dense"]
    params = model.init(jax.random.key(0), (2,))
    assert models.param_count(params) == 2 * 100 + 100 + 100 * 3 + 3
    assert model.layers[0].init_kwargs["w_init"] == "xavier_normal"
    lenet = models.cnn([32, 64], [1024], 10, kernel_size=5)
    p = jax.eval_shape(lambda k: lenet.init(k, (28, 28, 1)), jax.random.key(0))
    conv = (5 * 5 * 1 * 32 + 32) + (5 * 5 * 32 * 64 + 64)
    assert models.param_count(p) == conv + (7 * 7 * 64 * 1024 + 1024) + (1024 * 10 + 10)
    assert lenet.output_shape(p, (28, 28, 1)) == (10,)
    rows = models.summary(lenet.layers, (28, 28, 1))
    assert rows[0] == ("conv2d", (28, 28, 32), 5 * 5 * 32 + 32)
    assert rows[3] == ("conv2d", (14, 14, 64), 5 * 5 * 32 * 64 + 64)
    assert sum(r[2] for r in rows) == models.param_count(p)
    seq = models.cnn([8], [], 10, rank=1, pool="avg")
    assert seq.output_shape(seq.init(jax.random.key(0), (40, 1)), (40, 1)) == (10,)


def test_float64_models_and_bias_initialisers():
    with jax.enable_x64(True):
        model = models.cnn([4], [8], 3, b_init={"name": "constant", "value": 0.5})
        params = model.init(jax.random.key(0), (6, 6, 1), jnp.float64)
        assert model.output_shape(params, (6, 6, 1)) == (3,)
        assert all(float(p["b"][0]) == 0.5 for p in params if "b" in p)
        mlp = models.mlp([4], 2, b_init={"name": "constant", "value": -1.0})
        assert float(mlp.init(jax.random.key(0), (3,))[0]["b"][0]) == -1.0


@pytest.mark.parametrize("bad", [0, -3])
def test_non_positive_sizes_name_the_layer(bad):
    with pytest.raises(ValueError, match=rf"layers\[0\] \(dense\).*features must be a positive "
                                         rf"int, got {bad}"):
        models.mlp([bad], 2).init(jax.random.key(0), (3,))


def test_dropout_is_identity_at_evaluation_and_inverted_in_training():
    x = jnp.ones((1000, 10))
    assert jnp.array_equal(layers.dropout_apply({}, x, drop_rate=0.5, train=False), x)
    y = layers.dropout_apply({}, x, drop_rate=0.5, key=jax.random.key(0))
    vals = set(np.unique(np.asarray(y)).tolist())
    assert vals == {0.0, 2.0}
    assert float(y.mean()) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="a key is required"):
        layers.dropout_apply({}, x, drop_rate=0.5)
    with pytest.raises(ValueError, match="drop_rate must be in"):
        layers.dropout_apply({}, x, drop_rate=1.0, key=jax.random.key(0))


def test_model_dropout_masks_differ_per_layer_and_key():
    model = models.sequential([("dropout", {"drop_rate": 0.5}), ("dropout", {"drop_rate": 0.5})])
    x = jnp.ones((4, 50))
    a = model.apply([{}, {}], x, key=jax.random.key(0), train=True)
    b = model.apply([{}, {}], x, key=jax.random.key(1), train=True)
    assert not jnp.array_equal(a, b)
    assert jnp.array_equal(model.apply([{}, {}], x), x)


def test_losses_reductions_and_conventions():
    pred, target = jnp.array([[1.0, 2.0], [0.0, 0.0]]), jnp.zeros((2, 2))
    assert float(losses.squared_error(pred, target, reduction="sum")) == 2.5
    assert float(losses.squared_error(pred, target, half=False)) == 2.5
    assert float(losses.mean_squared_error(pred, target)) == 1.25
    params = [{"w": jnp.array([[1.0, 2.0]]), "b": jnp.array([3.0])}]
    assert float(regularizers.l2(params, lam=0.5)) == 2.5
    assert float(regularizers.l2(params, lam=0.5, convention="over_2m", batch_size=5)) == 0.25
    assert float(regularizers.l2(params, lam=1.0, include_biases=True)) == 14.0
    assert float(regularizers.l1(params, lam=1.0)) == 3.0
    logits = jnp.array([[2.0, -1.0]])
    onehot = losses.softmax_cross_entropy(logits, jnp.array([[0.0, 1.0]]))
    assert float(onehot) == pytest.approx(float(losses.softmax_cross_entropy(logits,
                                                                             jnp.array([1]))))
    big = jnp.array([[1000.0, -1000.0]])
    assert np.isfinite(float(losses.softmax_cross_entropy(big, jnp.array([1]))))
    assert np.isfinite(float(losses.binary_cross_entropy_with_logits(big, jnp.ones((1, 2)))))
