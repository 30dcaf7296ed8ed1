"""A user's own data, layers and arrays: an .npz file and a Python loader from a config, through
train, eval, resume and gradcheck; `nnfun.fit` on arrays in memory equal to `nnfun train` on the
same data; `load_run` and its predict; a parameterised layer of one's own, trained and checked
three ways."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnfun
from nnfun import layers as L
from nnfun import train
from nnfun.cli import main
from nnfun.config import load_config
from nnfun.data import DataError, load_dataset
from nnfun.gradcheck import check_gradients
from nnfun.manual import layers as ML
from nnfun.models import layer, mlp, sequential
from nnfun.run import train_run
from nnfun.spec import LossSpec

CONFIG = """
[data]
name = "{name}"
{data}

[model]
name = "mlp"
hidden = [8]
out = 3

[loss]
name = "softmax_cross_entropy"

[optimizer]
name = "adam"
learning_rate = 0.05

[training]
epochs = 6
batch_size = 16
seed = 1
eval_every = 2
"""


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr("nnfun.plots.plot_run", lambda run_dir: [])  # not what these check


def _blobs(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 4)) + 3.0 * np.eye(3, 4)[y]
    return x.astype(np.float32), y


def _params(run_dir: Path) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree.leaves(nnfun.load_run(run_dir, which="latest")
                                                   .params)]


def test_an_npz_file_trains_evaluates_resumes_and_gradchecks(tmp_path, capsys):
    x, y = _blobs()
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    config = tmp_path / "mine.toml"
    config.write_text(CONFIG.format(name="npz", data=f'path = "{tmp_path / "mine.npz"}"'))
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_run(load_config(config), run, quiet=True, stop_after_epochs=2)
    assert main(["resume", str(run), "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 6 * (round(0.7 * 120) // 16) and summary["test_accuracy"] > 0.6
    assert main(["eval", str(run)]) == 0
    assert "test_accuracy" in json.loads(capsys.readouterr().out)
    assert main(["gradcheck", str(config), "--max-coords", "8"]) == 0
    assert "PASSED" in capsys.readouterr().out


def test_npz_splits_stored_in_the_file_are_used_as_they_are(tmp_path):
    x, y = _blobs()
    np.savez(tmp_path / "s.npz", x_train=x[:80], y_train=y[:80], x_test=x[80:], y_test=y[80:])
    ds = load_dataset("npz", path=str(tmp_path / "s.npz"))
    assert ds.x_train.shape == (80, 4) and ds.x_val.shape == (0, 4) and ds.num_classes == 3
    np.testing.assert_array_equal(ds.y_test, y[80:])
    np.savez(tmp_path / "bad.npz", inputs=x)
    with pytest.raises(DataError, match=r"bad.npz: expected arrays 'x' and 'y'"):
        load_dataset("npz", path=str(tmp_path / "bad.npz"))
    with pytest.raises(DataError, match="nowhere.npz: file not found"):
        load_dataset("npz", path=str(tmp_path / "nowhere.npz"))


def test_a_python_loader_named_in_the_config_is_found_again(tmp_path, monkeypatch, capsys):
    x, y = _blobs()
    np.savez(tmp_path / "arrays.npz", x=x, y=y)
    (tmp_path / "my_data.py").write_text(
        "from nnfun.data import load_npz\n\n"
        "def load(*, scale=1.0, seed=0):\n"
        f"    ds = load_npz(path={str(tmp_path / 'arrays.npz')!r}, seed=seed)\n"
        "    return ds._replace(x_train=ds.x_train * scale)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "py.toml").write_text(CONFIG.format(
        name="python", data='loader = "my_data:load"\narguments = { scale = 1.0 }'))
    assert main(["train", "py.toml", "--out", "run", "-q"]) == 0
    capsys.readouterr()
    assert main(["eval", "run"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] > 0.6


def test_fit_on_arrays_equals_nnfun_train_on_the_same_data(tmp_path, capsys):
    x, y = _blobs()
    train_xy, val_xy, test_xy = (x[:80], y[:80]), (x[80:100], y[80:100]), (x[100:], y[100:])
    fitted = nnfun.fit(mlp([8], 3), train_xy, val_data=val_xy, test_data=test_xy,
                       learning_rate=0.05, epochs=6, batch_size=16, seed=1, eval_every=2,
                       run_dir=tmp_path / "fit", quiet=True)
    np.savez(tmp_path / "same.npz", x_train=x[:80], y_train=y[:80], x_val=x[80:100],
             y_val=y[80:100], x_test=x[100:], y_test=y[100:])
    (tmp_path / "same.toml").write_text(CONFIG.format(
        name="npz", data=f'path = "{tmp_path / "same.npz"}"'))
    assert main(["train", str(tmp_path / "same.toml"), "--out", str(tmp_path / "cli"),
                 "-q"]) == 0
    for a, b in zip(_params(tmp_path / "fit"), _params(tmp_path / "cli")):
        np.testing.assert_array_equal(a, b)
    # the fitted run is a run folder like any other
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "fit")]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == \
        fitted.summary["test_accuracy"]
    logits = fitted.predict(x[100:])
    assert logits.shape == (20, 3)
    accuracy = float(np.mean(np.asarray(logits).argmax(-1) == y[100:]))
    assert accuracy == pytest.approx(fitted.summary["test_accuracy"])


def _scale_init(key, in_shape, *, dtype=jnp.float32):
    return {"g": jnp.ones(in_shape, dtype)}


def _scale_apply(params, x):
    return x * params["g"][None]


def _scale_forward(params, x):
    return x * params["g"][None], (x, params["g"])


def _scale_backward(dout, cache):
    x, g = cache
    return dout * g[None], {"g": jnp.sum(dout * x, axis=0)}


@pytest.fixture
def scale_layer(monkeypatch):
    """A layer of one's own, ``out = x * g`` with a learned g, in both tables."""
    monkeypatch.setitem(L.LAYERS, "scale", L.LAYERS["relu"])  # restored after the test
    L.register_layer("scale", L.Layer(_scale_apply, _scale_init, examples=(((3, 4), {}),)),
                     replace=True)
    monkeypatch.setitem(ML.RULES, "scale", ML.Rule(_scale_forward, _scale_backward))


def test_your_own_layer_trains_and_passes_the_three_way_check(scale_layer):
    model = sequential([layer("dense", features=4), "scale", "tanh",
                        layer("dense", features=3)])
    loss = LossSpec.make("softmax_cross_entropy")
    x, y = (jnp.asarray(a) for a in _blobs(64))
    for engine in train.ENGINES:
        state = train.init_train_state(0, model.layers, (4,), optax.adam(0.05))
        step = train.make_train_step(model.layers, loss, (), optax.adam(0.05), engine=engine)
        first = None
        for _ in range(30):
            state, metrics = step(state, (x, y))
            first = first if first is not None else float(metrics["loss"])
        assert float(metrics["loss"]) < 0.5 * first, engine
        assert state.params[1]["g"].shape == (4,)
    with jax.enable_x64(True):
        params = model.init(jax.random.PRNGKey(1), (4,), jnp.float64)
        report = check_gradients(model.layers, loss, params, jnp.asarray(x[:8], jnp.float64),
                                 y[:8])
    assert report.passed and "1.g" in str(report)
    with pytest.raises(ValueError, match="already a layer"):
        L.register_layer("dense", L.LAYERS["dense"])


SCALE_MODULE = '''
import jax.numpy as jnp
from nnfun import layers
from nnfun.manual import layers as manual


def init(key, in_shape, *, dtype=jnp.float32):
    return {"g": jnp.ones(in_shape, dtype)}


def forward(params, x):
    return x * params["g"][None], (x, params["g"])


def backward(dout, cache):
    x, g = cache
    return dout * g[None], {"g": jnp.sum(dout * x, axis=0)}


layers.register_layer("my_scale", layers.Layer(lambda p, x: x * p["g"][None], init,
                                               examples=(((3, 4), {}),)), replace=True)
manual.RULES["my_scale"] = manual.Rule(forward, backward)
'''


@pytest.fixture
def layer_module(tmp_path, monkeypatch):
    """A module of the user's that registers a layer when imported; the tables and
    sys.modules are restored afterwards."""
    (tmp_path / "my_layers.py").write_text(SCALE_MODULE)
    monkeypatch.chdir(tmp_path)
    tables = [(t, dict(t)) for t in (L.LAYERS, ML.RULES)]
    yield tmp_path
    sys.modules.pop("my_layers", None)
    for table, saved in tables:
        table.clear()
        table.update(saved)


def test_your_own_layer_from_a_config_trains_evaluates_and_gradchecks(layer_module, capsys):
    x, y = _blobs()
    np.savez("mine.npz", x=x, y=y)
    text = CONFIG.format(name="npz", data='path = "mine.npz"').replace(
        'name = "mlp"\nhidden = [8]\nout = 3',
        'name = "sequential"\nimports = ["my_layers"]\nlayers = [{ name = "dense", features = 8 '
        '}, { name = "my_scale" }, { name = "tanh" }, { name = "dense", features = 3 }]')
    Path("own.toml").write_text(text)
    assert main(["train", "own.toml", "--out", "run", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] > 0.6
    assert json.loads(Path("run/config.json").read_text())["model"]["imports"] == ["my_layers"]
    sys.modules.pop("my_layers")
    del L.LAYERS["my_scale"]  # as in a new process: eval imports the module again
    assert main(["eval", "run"]) == 0
    capsys.readouterr()
    assert main(["gradcheck", "own.toml", "--max-coords", "8"]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "1.g" in out


def test_a_model_import_that_fails_is_one_line(layer_module, capsys):
    text = CONFIG.format(name="xor", data="").replace('name = "mlp"',
                                                      'name = "mlp"\nimports = ["no_such_mod"]')
    text = text.replace("out = 3", "out = 2")
    Path("bad.toml").write_text(text)
    assert main(["train", "bad.toml", "--out", "run", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "bad.toml: model.imports: cannot import 'no_such_mod' (ModuleNotFoundError" in err
    assert not Path("run").exists()
