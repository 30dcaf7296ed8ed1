"""Tests of nnfun.checkpoint: bitwise round trips, last-k + best retention, errors."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nnfun.checkpoint import CheckpointStore


class TrainState(NamedTuple):
    params: list[dict[str, jax.Array]]
    opt_state: Any
    step: jax.Array
    key: jax.Array


def _params(seed: int) -> list[dict[str, jax.Array]]:
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return [
        {"w": jax.random.normal(k1, (3, 4)), "b": jnp.zeros(4)},
        {},
        {"w": jax.random.normal(k2, (4, 2)), "b": jnp.full((2,), 0.1)},
    ]


def _state(optimizer: optax.GradientTransformation, seed: int = 0, steps: int = 2) -> TrainState:
    """A state after a few optimizer updates, so moments are non-trivial floats."""
    params = _params(seed)
    opt_state = optimizer.init(params)
    for i in range(steps):
        grads = jax.tree.map(lambda p, i=i: jnp.sin(p + i) * 1e-3, params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 7)
    return TrainState(params, opt_state, jnp.asarray(steps, jnp.int32), key)


def _assert_bitwise_equal(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def _zeros_like(state: TrainState) -> TrainState:
    return jax.tree.map(jnp.zeros_like, state)


@pytest.mark.parametrize(
    "optimizer", [optax.adam(1e-3), optax.sgd(0.1, momentum=0.9)], ids=["adam", "sgd_momentum"]
)
def test_round_trip_is_bitwise(tmp_path, optimizer):
    state = _state(optimizer)
    with CheckpointStore(tmp_path / "ckpt") as store:
        path = store.save(2, state, metric=0.5)
        assert path.is_dir() and path == store.path_of(2)
        restored = store.restore(_zeros_like(state))
    assert type(restored) is TrainState
    assert type(restored.opt_state) is type(state.opt_state)
    assert restored.step.dtype == jnp.int32 and restored.key.dtype == jnp.uint32
    _assert_bitwise_equal(restored, state)


def test_keeps_last_k_and_best(tmp_path):
    state = _state(optax.adam(1e-3))
    metrics = {1: 0.9, 2: 0.1, 3: 0.2, 4: 0.3, 5: 0.4, 6: 0.5}
    with CheckpointStore(tmp_path, keep_last=2) as store:
        for step, metric in metrics.items():
            store.save(step, state._replace(step=jnp.int32(step)), metric=metric)
        assert store.all_steps() == [1, 5, 6]
        assert store.latest_step() == 6 and store.best_step() == 1
        assert int(store.restore_best(state).step) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["1", "5", "6"]
    with CheckpointStore(tmp_path, keep_last=2) as reopened:
        assert reopened.all_steps() == [1, 5, 6] and reopened.best_step() == 1


def test_best_mode_min_and_nan_metric(tmp_path):
    state = _state(optax.sgd(0.1))
    with CheckpointStore(tmp_path, keep_last=1, best_mode="min") as store:
        for step, loss in [(1, 0.5), (2, 0.2), (3, float("nan")), (4, 0.9)]:
            store.save(step, state, metric=loss)
        assert store.all_steps() == [2, 4] and store.best_step() == 2


def test_restore_given_step(tmp_path):
    states = {s: _state(optax.adam(1e-3), seed=s) for s in (1, 2, 3)}
    with CheckpointStore(tmp_path, keep_last=3) as store:
        for step, state in states.items():
            store.save(step, state)
        _assert_bitwise_equal(store.restore(states[1], step=2), states[2])
        _assert_bitwise_equal(store.restore(states[1]), states[3])


def test_restore_without_checkpoints_raises(tmp_path):
    missing = tmp_path / "runs" / "x" / "checkpoints"
    with CheckpointStore(missing) as store:
        with pytest.raises(FileNotFoundError, match=str(missing)):
            store.restore(_state(optax.sgd(0.1)))
        with pytest.raises(FileNotFoundError):
            store.restore_best(_state(optax.sgd(0.1)))
        assert store.latest_step() is None and store.all_steps() == []
    assert not missing.exists()


def test_missing_step_and_duplicate_step_raise(tmp_path):
    state = _state(optax.sgd(0.1))
    with CheckpointStore(tmp_path) as store:
        store.save(5, state)
        with pytest.raises(FileNotFoundError, match="step 4"):
            store.restore(state, step=4)
        with pytest.raises(FileNotFoundError, match="step 4"):
            store.path_of(4)
        with pytest.raises(ValueError, match="already exists"):
            store.save(5, state)
        with pytest.raises(ValueError, match="force=True"):
            store.save(3, state)
        store.save(3, state, force=True)
        assert store.all_steps() == [3, 5]


def test_orbax_info_logs_are_silenced(tmp_path, caplog):
    with caplog.at_level(logging.INFO), CheckpointStore(tmp_path) as store:
        store.save(1, _state(optax.sgd(0.1)))
    assert not [r for r in caplog.records if r.name == "absl"]
    assert logging.getLogger("absl").level == logging.NOTSET


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointStore(tmp_path, keep_last=0)
    with pytest.raises(ValueError, match="best_mode"):
        CheckpointStore(tmp_path, best_mode="best")
