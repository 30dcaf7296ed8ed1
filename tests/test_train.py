"""Training: determinism, exact resume, engine agreement, schedules, single tracing, NaNs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nnfun import train
from nnfun.checkpoint import CheckpointStore
from nnfun.config import build_model, load_config
from nnfun.models import mlp
from nnfun.optim import make_optimizer, make_schedule
from nnfun.run import RunError, _schedule, resume_run, train_run
from nnfun.spec import LossSpec, RegSpec

SMALL = """
[data]
name = "spirals"
num_classes = 3
points_per_class = 40

[model]
name = "{model}"
{model_body}

[loss]
name = "softmax_cross_entropy"

[[regularizers]]
name = "l2"
lam = 1e-3

[optimizer]
name = "adam"
learning_rate = 0.01

[training]
epochs = 6
batch_size = 16
seed = 3
eval_every = 2
dtype = "{dtype}"
"""
MLP_BODY = 'hidden = [16]\nout = 3\ndropout = 0.1'


def _config(tmp_path, name="small", model="mlp", body=MLP_BODY, dtype="float32", sets=()):
    path = tmp_path / f"{name}.toml"
    path.write_text(SMALL.format(model=model, model_body=body, dtype=dtype))
    return load_config(path, list(sets))


def _final_params(run_dir, config):
    with CheckpointStore(run_dir / "checkpoints") as store:
        model = build_model(config.model)
        opt = make_optimizer("adam", 0.01)
        dtype = jnp.float64 if config.training.dtype == "float64" else jnp.float32
        with jax.enable_x64(config.training.dtype == "float64"):
            template = train.init_train_state(0, model.layers, (2,), opt, dtype)
            return store.restore(template).params


def _metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def test_same_seed_same_metrics(tmp_path):
    cfg = _config(tmp_path)
    train_run(cfg, tmp_path / "a", quiet=True)
    train_run(cfg, tmp_path / "b", quiet=True)
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    assert len(_metrics(tmp_path / "a")) == 3
    for f in ("config.json", "metrics.jsonl", "summary.json", "preprocessing.npz"):
        assert (tmp_path / "a" / f).is_file()
    assert {p.name for p in (tmp_path / "a" / "plots").glob("*.png")} >= {
        "loss.png", "accuracy.png", "learning_rate.png", "grad_norms.png"}


@pytest.mark.parametrize("dispatch", ["scan", "loop"])
def test_interrupt_and_resume_equals_uninterrupted(tmp_path, dispatch):
    cfg = _config(tmp_path, sets=[f"training.dispatch={dispatch}"])
    train_run(cfg, tmp_path / "full", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "cut", quiet=True, stop_after_epochs=3)
    resume_run(tmp_path / "cut", quiet=True)
    full, cut = _final_params(tmp_path / "full", cfg), _final_params(tmp_path / "cut", cfg)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(cut)):
        np.testing.assert_array_equal(a, b)  # bit for bit
    assert _metrics(tmp_path / "full")[-1] == _metrics(tmp_path / "cut")[-1]


def test_engines_reach_the_same_parameters_float64():
    with jax.enable_x64(True):
        model = mlp([8, 8], 3, activation="tanh", dropout=0.2)
        loss = LossSpec.make("softmax_cross_entropy")
        regs = (RegSpec.make("l2", lam=1e-3), RegSpec.make("l1", lam=1e-4))
        opt = make_optimizer("sgd", 0.1, momentum=0.9)
        x = jax.random.normal(jax.random.PRNGKey(0), (64, 4), jnp.float64)
        y = jax.random.randint(jax.random.PRNGKey(1), (64,), 0, 3)
        finals = []
        for engine in train.ENGINES:
            state = train.init_train_state(0, model.layers, (4,), opt, jnp.float64)
            epoch = train.make_epoch_fn(train.make_step_body(model.layers, loss, regs, opt,
                                                             engine=engine), 16)
            for e in range(25):  # 100 steps
                state, _ = epoch(state, x, y, jnp.asarray(e))
            assert int(state.step) == 100
            finals.append(state.params)
        for a, m in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])):
            rel = float(jnp.max(jnp.abs(a - m)) / jnp.max(jnp.abs(a)))
            assert rel <= 1e-9


def test_train_step_traced_once():
    model = mlp([8], 2)
    loss = LossSpec.make("softmax_cross_entropy")
    opt = make_optimizer("adam", 1e-2)
    body = train.make_step_body(model.layers, loss, (), opt)
    traces = []

    def counted(state, batch):
        traces.append(1)
        return body(state, batch)

    x = jnp.ones((32, 3))
    y = jnp.zeros((32,), jnp.int32)
    state = train.init_train_state(0, model.layers, (3,), opt)
    epoch = train.make_epoch_fn(counted, 8)
    for e in range(4):
        state, _ = epoch(state, x, y, jnp.asarray(e))
    assert len(traces) == 1
    loop_epoch = train.make_train_epoch(counted, 8, dispatch="loop")
    for e in range(4, 8):
        state, _ = loop_epoch(state, x, y, e)
    assert len(traces) == 2


@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_scan_and_loop_epochs_give_the_same_states(dropout):
    """Both dispatches draw the same permutation and dropout keys, bit for bit, and the loop
    resumes a partial epoch from state.step."""
    model = mlp([8], 3, dropout=dropout)
    loss = LossSpec.make("softmax_cross_entropy")
    opt = make_optimizer("adam", 0.01)
    body = train.make_step_body(model.layers, loss, (), opt)
    x = jax.random.normal(jax.random.PRNGKey(0), (40, 4))
    y = jax.random.randint(jax.random.PRNGKey(1), (40,), 0, 3)
    scan, loop = (train.make_train_epoch(body, 8, dispatch=d) for d in ("scan", "loop"))
    a, b = (train.init_train_state(0, model.layers, (4,), opt) for _ in range(2))  # donated
    for epoch in range(2):  # 5 steps of 8 per epoch
        a, ma = scan(a, x, y, epoch)
        b, mb = loop(b, x, y, epoch)
        np.testing.assert_array_equal(ma["loss"], mb["loss"])
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(u, v)
    assert int(a.step) == 10 and len(set(np.asarray(ma["loss"]).tolist())) == 5
    # a stop request ends the loop after the current step; the next call finishes the epoch
    c = train.init_train_state(0, model.layers, (4,), opt)
    stops = iter([False, False, True])
    c, mc = loop(c, x, y, 0, should_stop=lambda: next(stops))
    assert int(c.step) == 3 and mc["loss"].shape == (3,)
    c, mc2 = scan(c, x, y, 0)
    assert int(c.step) == 5
    np.testing.assert_array_equal(np.concatenate([mc["loss"], mc2["loss"]]),
                                  scan(train.init_train_state(0, model.layers, (4,), opt),
                                       x, y, 0)[1]["loss"])


def test_state_is_donated():
    model = mlp([4], 2)
    opt = make_optimizer("sgd", 0.1)
    step = train.make_train_step(model.layers, LossSpec.make("softmax_cross_entropy"), (), opt)
    state = train.init_train_state(0, model.layers, (3,), opt)
    old_w = state.params[0]["w"]
    new, _ = step(state, (jnp.ones((4, 3)), jnp.zeros((4,), jnp.int32)))
    assert int(new.step) == 1
    assert old_w.is_deleted()


@pytest.mark.parametrize("section,steps", [
    ({"name": "piecewise_constant_schedule", "init_value": 0.1,
      "boundaries_and_scales": {"30": 0.1, "60": 0.1, "90": 0.1}, "unit": "epoch"}, 120),
    ({"name": "cosine_decay_schedule", "init_value": 0.1, "decay_steps": 50}, 60),
    ({"name": "linear_schedule", "init_value": 0.1, "end_value": 0.0,
      "transition_steps": 40}, 50),
    ({"name": "exponential_decay", "init_value": 0.1, "transition_steps": 10,
      "decay_rate": 0.5}, 50),
    ({"name": "inverse_sqrt_schedule", "init_value": 0.1}, 50),
    ({"name": "cosine_decay_schedule", "init_value": 0.1, "decay_steps": 50,
      "warmup_steps": 5}, 60),
])
def test_schedule_from_config_equals_closed_form(tmp_path, section, steps):
    body = "\n".join(f"{k} = {json.dumps(v) if not isinstance(v, dict) else _inline(v)}"
                     for k, v in section.items())
    text = SMALL.format(model="mlp", model_body=MLP_BODY, dtype="float32").replace(
        "learning_rate = 0.01\n", "") + "\n[schedule]\n" + body + "\n"
    path = tmp_path / "s.toml"
    path.write_text(text)
    cfg = load_config(path)
    schedule = _schedule(cfg, 1)  # one step per epoch: epoch units equal step units
    a0, name = 0.1, section["name"]
    for t in range(steps):
        if name == "piecewise_constant_schedule":
            want = a0 * 0.1 ** sum(t >= b for b in (30, 60, 90))
        elif name == "cosine_decay_schedule" and "warmup_steps" in section:
            want = a0 * t / 5 if t < 5 else 0.5 * a0 * (1 + np.cos(np.pi * min(t - 5, 50) / 50))
        elif name == "cosine_decay_schedule":
            want = 0.5 * a0 * (1 + np.cos(np.pi * min(t, 50) / 50))  # lecture 003
        elif name == "linear_schedule":
            want = a0 * (1 - min(t, 40) / 40)  # lecture 003
        elif name == "exponential_decay":
            want = a0 * 0.5 ** (t / 10)
        else:
            want = a0 / np.sqrt(t + 1)  # lecture 003: alpha_0 / sqrt(t), t = step + 1
        assert float(schedule(t)) == pytest.approx(want, rel=1e-5, abs=1e-9), t


def _inline(d):
    return "{ " + ", ".join(f"{k} = {v}" for k, v in d.items()) + " }"


def test_epoch_unit_scales_boundaries(tmp_path):
    text = SMALL.format(model="mlp", model_body=MLP_BODY, dtype="float32").replace(
        "learning_rate = 0.01\n", "") + (
        '\n[schedule]\nname = "piecewise_constant_schedule"\ninit_value = 1.0\n'
        'boundaries_and_scales = { 2 = 0.5 }\nunit = "epoch"\n')
    (tmp_path / "e.toml").write_text(text)
    schedule = _schedule(load_config(tmp_path / "e.toml"), 10)
    assert float(schedule(19)) == 1.0 and float(schedule(20)) == 0.5


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path):
    cfg = _config(tmp_path, sets=["optimizer.learning_rate=1e30", "training.eval_every=1"])
    with pytest.raises(RunError) as e:
        train_run(cfg, tmp_path / "nan", quiet=True)
    msg = str(e.value)
    assert "non-finite loss" in msg and "at step" in msg
    assert "checkpoint" in msg


def test_schedule_builder_rejects_unknown_names():
    with pytest.raises(ValueError, match="schedule: unknown name"):
        make_schedule("cosine")
    with pytest.raises(ValueError, match="unknown argument"):
        make_schedule("cosine_decay_schedule", init_value=1.0, decay_step=3)
    assert isinstance(make_optimizer("sgd", 0.1, momentum=0.9, nesterov=True,
                                     clip_global_norm=1.0), optax.GradientTransformation)


def test_grad_norm_every_samples_without_changing_the_training():
    with jax.enable_x64(True):
        model = mlp([8, 8], 3, activation="tanh")
        loss = LossSpec.make("softmax_cross_entropy")
        opt = make_optimizer("adam", 1e-2)
        x = jax.random.normal(jax.random.PRNGKey(0), (48, 4), jnp.float64)
        y = jax.random.randint(jax.random.PRNGKey(1), (48,), 0, 3)
        out = {}
        for every in (1, 4, 0):
            epoch = train.make_epoch_fn(train.make_step_body(model.layers, loss, (), opt,
                                                             grad_norm_every=every), 8)
            state = train.init_train_state(0, model.layers, (4,), opt, jnp.float64)
            state, m1 = epoch(state, x, y, jnp.asarray(0))
            state, m2 = epoch(state, x, y, jnp.asarray(1))
            out[every] = state.params, {k: np.concatenate([m1[k], m2[k]]) for k in m1}
        for every in (4, 0):
            for a, b in zip(jax.tree.leaves(out[1][0]), jax.tree.leaves(out[every][0])):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
            np.testing.assert_array_equal(out[every][1]["loss"], out[1][1]["loss"])
        every_step = out[1][1]["grad_norms"]
        assert every_step.shape == (12, 3) and np.all(every_step > 0)
        sampled = out[4][1]["grad_norms"]
        taken = np.arange(12) % 4 == 0  # steps 0, 4, 8 (state.step before the update)
        np.testing.assert_allclose(sampled[taken], every_step[taken], rtol=1e-12)
        assert np.isnan(sampled[~taken]).all()
        assert "grad_norms" not in out[0][1]


@pytest.mark.parametrize("bad", [-1, True, 2.0])
def test_grad_norm_every_rejects_bad_values(bad):
    model = mlp([4], 2)
    with pytest.raises(ValueError, match="grad_norm_every"):
        train.make_step_body(model.layers, LossSpec.make("softmax_cross_entropy"), (),
                             optax.sgd(0.1), grad_norm_every=bad)


def test_run_without_validation_split_or_grad_norms(tmp_path):
    from nnfun.run import eval_run

    cfg = _config(tmp_path, sets=["data.val_fraction=0.0", "training.grad_norm_every=0"])
    summary = train_run(cfg, tmp_path / "run", quiet=True)
    records = _metrics(tmp_path / "run")
    assert len(records) == 3
    assert not any(k.startswith("val_") or k == "grad_norms" for r in records for k in r)
    assert "test_accuracy" in summary
    with CheckpointStore(tmp_path / "run" / "checkpoints") as store:
        assert store.latest_step() == records[-1]["step"]  # kept without a metric to rank it
    assert eval_run(tmp_path / "run")["test_accuracy"] == summary["test_accuracy"]


def test_run_records_sampled_grad_norms(tmp_path):
    cfg = _config(tmp_path, sets=["training.grad_norm_every=4"])
    train_run(cfg, tmp_path / "run", quiet=True)
    for r in _metrics(tmp_path / "run"):
        assert set(r["grad_norms"]) == {"0.dense", "3.dense"}
        assert all(np.isfinite(v) and v > 0 for v in r["grad_norms"].values())


def test_step_epoch_and_eval_nest_in_a_users_jit_and_scan():
    """nnfun's compiled functions carry no compiler options, so they can be called inside a
    user's own `jax.jit` and `lax.scan`, with the same numbers as calling them directly."""
    model = mlp([8], 3)
    loss = LossSpec.make("softmax_cross_entropy")
    opt = make_optimizer("sgd", 0.1)
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 4))
    y = jax.random.randint(jax.random.PRNGKey(1), (32,), 0, 3)
    fresh = lambda: train.init_train_state(0, model.layers, (4,), opt)  # noqa: E731

    step = train.make_train_step(model.layers, loss, (), opt, donate=False)
    direct = step(fresh(), (x, y))[1]["loss"]
    nested = jax.jit(lambda s: step(s, (x, y)))(fresh())[1]["loss"]
    scanned = jax.lax.scan(lambda s, _: step(s, (x, y)), fresh(), None, length=2)[1]["loss"]
    np.testing.assert_array_equal(direct, nested)
    np.testing.assert_array_equal(direct, scanned[0])

    epoch = train.make_epoch_fn(train.make_step_body(model.layers, loss, (), opt), 8)
    want = epoch(fresh(), x, y, jnp.asarray(0))[1]["loss"]
    got = jax.jit(lambda s: epoch(s, x, y, jnp.asarray(0)))(fresh())[1]["loss"]
    np.testing.assert_array_equal(want, got)

    evaluate = train.make_eval_fn(model.layers, loss, 3)
    params = fresh().params
    direct_eval = evaluate(params, x, y)["accuracy"]
    mapped = jax.lax.map(lambda xi: evaluate(params, xi, y)["accuracy"], jnp.stack([x, x]))
    np.testing.assert_array_equal(mapped, jnp.stack([direct_eval, direct_eval]))
