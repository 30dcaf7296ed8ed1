"""Random architectures drawn by hypothesis: manual vs jax.grad and both vs finite differences
(float64), and manual vs jax.grad in float32; plus the report itself."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnfun.gradcheck import check_gradients, relative_error
from nnfun.manual.model import value_and_grad as manual_value_and_grad
from nnfun.models import layer, sequential
from nnfun.objective import make_objective
from nnfun.spec import LossSpec, RegSpec

ACTIVATIONS = ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "softplus", "identity"]
SETTINGS = settings(max_examples=4, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
CNN_SETTINGS = settings(SETTINGS, max_examples=3)


@st.composite
def objectives(draw, out: int):
    name = draw(st.sampled_from(["softmax_cross_entropy", "multiclass_hinge", "squared_error",
                                 "mean_squared_error", "binary_cross_entropy_with_logits",
                                 "logistic_loss"]))
    loss = LossSpec.make(name, reduction=draw(st.sampled_from(["mean", "sum"])))
    regs = []
    if draw(st.booleans()):
        regs.append(RegSpec.make("l2", lam=draw(st.sampled_from([1e-3, 0.1])),
                                 convention=draw(st.sampled_from(["sum", "over_2m"]))))
    if draw(st.booleans()):
        regs.append(RegSpec.make("l1", lam=1e-3))
    return loss, tuple(regs)


def _targets(loss: LossSpec, key, n: int, k: int):
    if loss.name in ("softmax_cross_entropy", "multiclass_hinge"):
        return jax.random.randint(key, (n,), 0, k)
    if loss.name == "binary_cross_entropy_with_logits":
        return jax.random.bernoulli(key, 0.5, (n, k)).astype(jnp.float64)
    if loss.name == "logistic_loss":
        return 2.0 * jax.random.bernoulli(key, 0.5, (n, k)).astype(jnp.float64) - 1.0
    return jax.random.normal(key, (n, k), jnp.float64)


@st.composite
def mlps(draw):
    specs = []
    for _ in range(draw(st.integers(1, 3))):
        specs.append(layer("dense", features=draw(st.integers(1, 6)), bias=draw(st.booleans())))
        act = draw(st.sampled_from(ACTIVATIONS + ["maxout"]))
        specs.append(layer("maxout", features=draw(st.integers(1, 4)), pieces=2)
                     if act == "maxout" else layer(act))
        if draw(st.booleans()):
            specs.append(layer("dropout", drop_rate=draw(st.sampled_from([0.2, 0.5]))))
    out = draw(st.integers(2, 4))
    specs.append(layer("dense", features=out))
    return specs, (draw(st.integers(1, 5)),), out


@st.composite
def cnns(draw):
    specs = []
    size = draw(st.integers(5, 8))
    for _ in range(draw(st.integers(1, 2))):
        specs.append(layer("conv2d", features=draw(st.integers(1, 3)),
                           kernel_size=draw(st.sampled_from([1, 2, 3])),
                           stride=draw(st.sampled_from([1, 2])),
                           padding=draw(st.sampled_from(["SAME", "VALID"]))))
        specs.append(layer(draw(st.sampled_from(["tanh", "relu", "softplus"]))))
        pool = draw(st.sampled_from([None, "max_pool2d", "avg_pool2d"]))
        if pool:
            specs.append(layer(pool, window=2, stride=1, padding="SAME"))
    specs.append(layer("flatten"))
    if draw(st.booleans()):
        specs.append(layer("dropout", drop_rate=0.3))
    out = draw(st.integers(2, 3))
    specs.append(layer("dense", features=out))
    return specs, (size, size, draw(st.integers(1, 2))), out


def _check(arch, objective, seed):
    specs, in_shape, out = arch
    loss, regs = objective
    model = sequential(specs)
    key = jax.random.PRNGKey(seed)
    with jax.enable_x64(True):
        params = model.init(key, in_shape, jnp.float64)
        params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(key, p.shape, p.dtype),
                              params)
        x = jax.random.normal(jax.random.fold_in(key, 1), (4, *in_shape), jnp.float64)
        y = _targets(loss, jax.random.fold_in(key, 2), 4, out)
        report = check_gradients(model.layers, loss, params, x, y, regularizers=regs,
                                 key=jax.random.fold_in(key, 3), max_coords=24, seed=seed)
    assert report.passed, str(report)


@SETTINGS
@given(arch=mlps(), objective=objectives(2), seed=st.integers(0, 2**16))
def test_random_mlps_three_ways_float64(arch, objective, seed):
    _check(arch, objective, seed)


@CNN_SETTINGS
@given(arch=cnns(), objective=objectives(2), seed=st.integers(0, 2**16))
def test_random_cnns_three_ways_float64(arch, objective, seed):
    _check(arch, objective, seed)


@settings(max_examples=3, deadline=None, derandomize=True)
@given(arch=mlps(), seed=st.integers(0, 2**16))
def test_random_mlps_float32(arch, seed):
    specs, in_shape, out = arch
    model = sequential(specs)
    key = jax.random.PRNGKey(seed)
    params = model.init(key, in_shape)
    x = jax.random.normal(jax.random.fold_in(key, 1), (8, *in_shape))
    y = jax.random.randint(jax.random.fold_in(key, 2), (8,), 0, out)
    loss, regs = LossSpec.make("softmax_cross_entropy"), (RegSpec.make("l2", lam=0.01),)
    va, ga = jax.jit(jax.value_and_grad(make_objective(model.layers, loss, regs)))(
        params, x, y, key)
    vm, gm = jax.jit(manual_value_and_grad(model.layers, loss, regs))(params, x, y, key)
    assert relative_error(va, vm)[1] <= 1e-4
    for a, m in zip(jax.tree.leaves(ga), jax.tree.leaves(gm)):
        assert a.dtype == m.dtype == jnp.float32
        assert relative_error(a, m)[1] <= 1e-4


def test_report_table_and_failure_detection():
    model = sequential([layer("dense", features=3), layer("tanh"), layer("dense", features=2)])
    with jax.enable_x64(True):
        params = model.init(jax.random.PRNGKey(0), (4,), jnp.float64)
        x = jax.random.normal(jax.random.PRNGKey(1), (5, 4), jnp.float64)
        y = jnp.array([0, 1, 0, 1, 1])
        loss = LossSpec.make("softmax_cross_entropy")
        report = check_gradients(model.layers, loss, params, x, y, num_directions=3)
        assert report.passed
        text = str(report)
        assert "0.w" in text and "2.b" in text and "PASSED" in text
        assert all(r.rel_directional is not None for r in report.leaves)
        # a large finite-difference step makes the check fail: the report can say no
        bad = check_gradients(model.layers, loss, params, x, y, h=1.0)
        assert not bad.passed and "FAIL" in str(bad)
        # sampling: a leaf larger than max_coords checks exactly max_coords coordinates
        sampled = check_gradients(model.layers, loss, params, x, y, max_coords=5)
        assert [r.coords_checked for r in sampled.leaves] == [3, 5, 2, 5]


def test_gradcheck_sets_highest_precision_only_inside():
    before = jax.config.jax_default_matmul_precision
    model = sequential([layer("dense", features=2)])
    with jax.enable_x64(True):
        params = model.init(jax.random.PRNGKey(0), (3,), jnp.float64)
    check_gradients(model.layers, LossSpec.make("squared_error"), params,
                    np.ones((2, 3)), np.zeros((2, 2)))
    assert jax.config.jax_default_matmul_precision == before


def test_a_relu_on_its_kink_is_reported_as_a_kink_not_a_failure():
    """A zero input row and a zero bias put every first-layer ReLU exactly on its kink: the
    bias's finite differences are one-sided there (relu'(0) = 0 is one of the two slopes,
    the central difference their mean). The report counts those coordinates as kinks and
    still compares manual with autodiff on them."""
    with jax.enable_x64(True):
        model = sequential([layer("dense", features=3), layer("relu"),
                            layer("dense", features=2)])
        params = model.init(jax.random.PRNGKey(0), (4,), jnp.float64)
        x = jnp.zeros((2, 4), jnp.float64)
        report = check_gradients(model.layers, LossSpec.make("softmax_cross_entropy"), params, x,
                                 jnp.array([0, 0]))
    rows = {r.path: r for r in report.leaves}
    assert rows["0.b"].kinks >= 1 and rows["0.b"].kinks + rows["0.b"].coords_checked == 3
    assert rows["0.w"].kinks == 0 and rows["2.w"].kinks == 0
    assert report.passed
    assert f"kinks: {rows['0.b'].kinks} coordinate(s)" in str(report)


def test_a_planted_wrong_backward_rule_fails_the_shipped_cnn_check(monkeypatch, capsys):
    """`nnfun gradcheck` passes on the shipped digits CNN (whose zero border pixels put ReLUs on
    their kinks) and fails once the reference's ReLU rule is wrong."""
    from pathlib import Path

    from nnfun.cli import main
    from nnfun.manual import layers as ML

    config = str(Path(__file__).parents[1] / "configs" / "digits_cnn.toml")
    argv = ["gradcheck", config, "--max-coords", "4", "--set", "model.conv=[4, 4]",
            "--set", "model.dense=[8]"]
    assert main(argv) == 0, capsys.readouterr().out
    assert "kinks:" in capsys.readouterr().out
    relu = ML.RULES["relu"]
    wrong = relu._replace(backward=lambda dout, cache: (0.5 * relu.backward(dout, cache)[0], {}))
    monkeypatch.setitem(ML.RULES, "relu", wrong)
    assert main(argv) == 1
    assert "FAIL" in capsys.readouterr().out
