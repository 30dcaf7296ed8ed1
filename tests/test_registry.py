"""Every registered primitive, three ways: forward values equal, manual backward equals
`jax.vjp` of the autodiff path with a random cotangent, and both equal central finite
differences, in float64. Every example runs jitted; each primitive's first example also runs
un-jitted (op by op). Registering a primitive adds it here."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnfun import layers as L
from nnfun import registry
from nnfun.gradcheck import relative_error
from nnfun.manual import layers as ML
from nnfun.models import available_layers, layer

TOL_MANUAL, TOL_FD = 1e-10, 1e-6


def _identity(f, **kw):
    return f


def _cases():
    for name, entry in sorted(registry.LAYERS.items()):
        for i, example in enumerate(entry.examples):
            yield pytest.param(entry, example, jax.jit, id=f"jit-{name}-{i}")
        yield pytest.param(entry, entry.examples[0], _identity, id=f"eager-{name}-0")


def _fd_check(f, x, cot_dot_grad, key, n_dirs=4, h=1e-6):
    """Directional finite differences of scalar f at x against <grad, v>."""
    for i in range(n_dirs):
        v = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        numeric = (f(x + h * v) - f(x - h * v)) / (2 * h)
        analytic = cot_dot_grad(v)
        assert abs(float(numeric) - float(analytic)) <= TOL_FD * max(1.0, abs(float(analytic)))


def test_every_layer_is_registered():
    assert sorted(registry.LAYERS) == available_layers()


def test_a_layer_without_examples_or_rule_is_refused():
    table = {"dense": L.LAYERS["dense"]._replace(examples=())}
    with pytest.raises(ValueError, match="'dense' has no examples"):
        registry.build_layer_entries(table, ML.RULES)
    with pytest.raises(ValueError, match="'dense' has no hand-written rule"):
        registry.build_layer_entries(L.LAYERS, {k: v for k, v in ML.RULES.items()
                                                if k != "dense"})


@pytest.mark.parametrize("entry,example,maybe_jit", list(_cases()))
def test_layer_three_ways(entry, example, maybe_jit):
    shape, kwargs = example
    with jax.enable_x64(True):
        spec = layer(entry.name, **kwargs)
        key = jax.random.PRNGKey(7)
        params = L.init_layer(L.LAYERS[entry.name], jax.random.fold_in(key, 1), shape[1:],
                              dtype=jnp.float64, init_kwargs=spec.init_kwargs,
                              apply_kwargs=spec.apply_kwargs)[1]
        params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(key, p.shape, p.dtype), params)
        x = jax.random.normal(jax.random.fold_in(key, 2), shape, jnp.float64)
        akw = spec.apply_kwargs
        if spec.stochastic:
            akw = {**akw, "key": jax.random.fold_in(key, 3), "train": True}
        apply = maybe_jit(lambda p, v: entry.apply(p, v, **akw))
        forward = maybe_jit(lambda p, v: entry.forward(p, v, **akw))

        out = apply(params, x)
        out_m, cache = forward(params, x)
        assert out_m.shape == out.shape and out_m.dtype == out.dtype
        assert relative_error(out, out_m)[1] <= TOL_MANUAL

        cot = jax.random.normal(jax.random.fold_in(key, 4), out.shape, jnp.float64)
        dparams_a, dx_a = jax.vjp(apply, params, x)[1](cot)
        dx_m, dparams_m = maybe_jit(entry.backward)(cot, cache)
        assert jax.tree.structure(dparams_m) == jax.tree.structure(params)
        assert relative_error(dx_a, dx_m)[1] <= TOL_MANUAL
        for a, m in zip(jax.tree.leaves(dparams_a), jax.tree.leaves(dparams_m)):
            assert a.shape == m.shape
            assert relative_error(a, m)[1] <= TOL_MANUAL

        f_x = lambda v: jnp.sum(apply(params, v) * cot)
        _fd_check(f_x, x, lambda v: jnp.sum(dx_m * v), jax.random.fold_in(key, 5))
        for name in params:
            def f_p(v, name=name):
                return jnp.sum(apply({**params, name: v}, x) * cot)
            _fd_check(f_p, params[name], lambda v, n=name: jnp.sum(dparams_m[n] * v),
                      jax.random.fold_in(key, 6))


def _targets(kind: str, key, n: int, k: int):
    if kind == "labels":
        return jax.random.randint(key, (n,), 0, k)
    if kind == "one_hot":
        return jax.random.uniform(key, (n, k), jnp.float64)
    if kind == "pm1":
        return 2.0 * jax.random.bernoulli(key, 0.5, (n, k)).astype(jnp.float64) - 1.0
    assert kind == "probs", kind
    return jax.nn.softmax(jax.random.normal(key, (n, k), jnp.float64))


@pytest.mark.parametrize("name", sorted(registry.LOSSES))
def test_loss_three_ways(name, maybe_jit):
    entry = registry.LOSSES[name]
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(3)
        for kw in entry.examples if maybe_jit is jax.jit else entry.examples[:1]:
            pred = jax.random.normal(key, (5, 4), jnp.float64)
            if entry.preds == "probs":
                pred = jax.nn.sigmoid(pred)
            y = _targets(entry.targets, jax.random.fold_in(key, 1), 5, 4)
            value = maybe_jit(lambda p, t: entry.fn(p, t, **kw))(pred, y)
            value_m, cache = maybe_jit(lambda p, t: entry.forward(p, t, **kw))(pred, y)
            assert relative_error(value, value_m)[1] <= TOL_MANUAL
            dloss = jnp.asarray(1.7, jnp.float64)
            grad_a = jax.grad(lambda p: entry.fn(p, y, **kw) * dloss)(pred)
            grad_m = maybe_jit(entry.backward)(dloss, cache)
            assert relative_error(grad_a, grad_m)[1] <= TOL_MANUAL
            _fd_check(lambda p: entry.fn(p, y, **kw) * dloss, pred,
                      lambda v: jnp.sum(grad_m * v), jax.random.fold_in(key, 2))


@pytest.mark.parametrize("name", sorted(registry.REGULARIZERS))
def test_regularizer_three_ways(name, maybe_jit):
    entry = registry.REGULARIZERS[name]
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(5)
        params = [{"w": jax.random.normal(key, (3, 4), jnp.float64),
                   "b": jax.random.normal(jax.random.fold_in(key, 1), (4,), jnp.float64)}, {},
                  {"w": jax.random.normal(jax.random.fold_in(key, 2), (2, 2, 1, 3), jnp.float64)},
                  {"w": jnp.zeros((2, 2), jnp.float64)}]  # a kink of L1 at exactly 0
        for kw in entry.examples if maybe_jit is jax.jit else entry.examples[:1]:
            value = maybe_jit(lambda p, kw=kw: entry.fn(p, **kw))(params)
            value_m, cache = maybe_jit(lambda p, kw=kw: entry.forward(p, **kw))(params)
            assert relative_error(value, value_m)[1] <= TOL_MANUAL
            grads_a = jax.grad(lambda p, kw=kw: 2.0 * entry.fn(p, **kw))(params)
            grads_m = maybe_jit(entry.backward)(jnp.asarray(2.0, jnp.float64), cache)
            assert jax.tree.structure(grads_m) == jax.tree.structure(params)
            for a, m in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_m)):
                assert relative_error(a, m)[1] <= TOL_MANUAL
            if not kw.get("include_biases"):
                assert np.all(np.asarray(grads_m[0]["b"]) == 0.0)
