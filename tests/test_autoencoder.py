"""Autoencoders: the `autoencoder` builder and its encoder, the reconstruction task
(``data.targets = "inputs"``) through train, eval, resume, gradcheck and `nnfun.fit`, the
reconstruction error in the summary and plots, and PCA's reconstruction as the baseline."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnfun
from nnfun import preprocessing as P
from nnfun.cli import main
from nnfun.config import ConfigError, load_config
from nnfun.data import load_digits
from nnfun.models import autoencoder, encoder_layers
from nnfun.run import train_run

CONFIG = """
[data]
name = "digits"
flatten = true
targets = "inputs"

[model]
name = "autoencoder"
features = 64
encoder = [16]
code = 2
{model}

[loss]
name = "mean_squared_error"

[optimizer]
name = "adam"
learning_rate = 0.01

[training]
epochs = 4
batch_size = 128
seed = 0
eval_every = 2
"""


def _config(tmp_path, model: str = "", name: str = "ae.toml"):
    path = tmp_path / name
    path.write_text(CONFIG.format(model=model))
    return path


def test_autoencoder_mirrors_its_encoder_and_reproduces_the_input_width():
    m = autoencoder(64, [32, 16], 2, code_activation="tanh", out_activation="sigmoid",
                    noise_stddev=0.1)
    names = [s.name for s in m.layers]
    assert names == ["gaussian_noise", "dense", "relu", "dense", "relu", "dense", "tanh",
                     "dense", "relu", "dense", "relu", "dense", "sigmoid"]
    widths = [s.init_kwargs["features"] for s in m.layers if s.name == "dense"]
    assert widths == [32, 16, 2, 16, 32, 64]
    params = m.init(jax.random.PRNGKey(0), (64,))
    x = jax.random.uniform(jax.random.PRNGKey(1), (5, 64))
    assert m.apply(params, x).shape == (5, 64)
    enc = encoder_layers(m)
    assert [s.name for s in enc.layers] == names[:7]
    codes = enc.apply(params[:len(enc.layers)], x)
    assert codes.shape == (5, 2) and bool(jnp.all(jnp.abs(codes) < 1))  # after the tanh
    # at evaluation the noise is the identity: the code is the same with or without it
    plain = autoencoder(64, [32, 16], 2, code_activation="tanh")
    np.testing.assert_array_equal(encoder_layers(plain).apply(params[1:7], x), codes)


def test_a_linear_code_ends_the_encoder_at_the_bottleneck():
    m = autoencoder(10, [], 3)
    assert [s.name for s in encoder_layers(m).layers] == ["dense"]
    with pytest.raises(ValueError, match="even number of dense layers"):
        encoder_layers(nnfun.models.mlp([4], 2, activation="tanh")._replace(
            layers=nnfun.models.mlp([4], 2).layers[:1]))


@settings(max_examples=20, deadline=None)
@given(method=st.sampled_from(P.METHODS), n=st.integers(6, 30), d=st.integers(2, 6),
       seed=st.integers(0, 2**16))
def test_invert_preprocessor_undoes_every_method(method, n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)) * np.arange(1, d + 1)
    state = P.fit_preprocessor(x, method=method)
    np.testing.assert_allclose(P.invert_preprocessor(state, P.apply_preprocessor(state, x)), x,
                               rtol=1e-6, atol=1e-6)


def test_pca_reconstruction_is_scikit_learns():
    from sklearn.decomposition import PCA

    ds = load_digits(flatten=True)
    state = P.fit_preprocessor(ds.x_train, method="pca", n_components=2)
    ours = P.invert_preprocessor(state, P.apply_preprocessor(state, ds.x_test))
    sk = PCA(2).fit(ds.x_train)
    theirs = sk.inverse_transform(sk.transform(ds.x_test))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_reconstruction_run_reports_its_error_and_resumes(tmp_path, capsys):
    config = _config(tmp_path)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_run(load_config(config), run, quiet=True, stop_after_epochs=2)
    assert main(["resume", str(run), "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 4 * ((898 - 90) // 128)
    assert "test_accuracy" not in summary and "target_accuracy" not in summary
    # the targets are the inputs: the error is the mean squared difference from them
    trained = nnfun.load_run(run, which="latest")
    ds = load_digits(flatten=True)
    err = float(np.mean((np.asarray(trained.predict(ds.x_test)) - ds.x_test) ** 2))
    assert summary["test_reconstruction_error"] == pytest.approx(err, rel=1e-5)
    assert summary["test_reconstruction_error"] == pytest.approx(summary["test_loss"], rel=1e-5)
    assert (run / "plots" / "reconstruction_error.png").is_file()
    assert not (run / "plots" / "accuracy.png").exists()
    assert main(["eval", str(run)]) == 0
    assert "val_reconstruction_error" in json.loads(capsys.readouterr().out)


def test_denoising_autoencoder_gradchecks_three_ways(tmp_path, capsys):
    config = _config(tmp_path, "noise_stddev = 0.2\ncode_activation = \"tanh\"")
    assert main(["gradcheck", str(config), "--max-coords", "16"]) == 0
    assert "PASSED" in capsys.readouterr().out


@pytest.mark.parametrize("edit, expected", [
    ('targets = "inputs"', "data.targets: unknown value 'pixels'; expected one of "
                          "['labels', 'inputs']"),
    ("features = 64", "output shape (60,) does not match the reconstruction targets' (the "
                      "inputs') shape (64,)"),
])
def test_reconstruction_misfits_get_one_line(tmp_path, capsys, edit, expected):
    text = CONFIG.format(model="")
    text = text.replace(edit, {'targets = "inputs"': 'targets = "pixels"',
                               "features = 64": "features = 60"}[edit])
    (tmp_path / "bad.toml").write_text(text)
    assert main(["train", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "r"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "bad.toml" in err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_fit_trains_a_reconstruction_without_labels(tmp_path):
    ds = load_digits(flatten=True)
    run = nnfun.fit(autoencoder(64, [16], 2), (ds.x_train, None), val_data=(ds.x_val, None),
                    test_data=(ds.x_test, None), loss="mean_squared_error",
                    task="reconstruction", epochs=3, batch_size=128, learning_rate=1e-2,
                    run_dir=tmp_path / "fit", quiet=True)
    assert run.summary["test_reconstruction_error"] < float(np.mean(ds.x_test ** 2))
    with pytest.raises(ConfigError):
        nnfun.fit(autoencoder(64, [16], 2), (ds.x_train, None), task="reconstruction",
                  loss="mean_squared_error", epochs=1, run_dir=tmp_path / "bad",
                  quiet=True, dispatch="sideways")


def test_a_tied_autoencoder_shares_its_weights_and_checks_three_ways():
    from nnfun.gradcheck import check_gradients
    from nnfun.models import param_count, summary
    from nnfun.spec import LossSpec

    untied, tied = autoencoder(6, [4], 2), autoencoder(6, [4], 2, tied=True)
    assert [s.tie for s in tied.layers] == [None, None, None, 2, None, 0]
    with jax.enable_x64(True):
        params = tied.init(jax.random.PRNGKey(0), (6,), jnp.float64)
        assert [sorted(p) for p in params] == [["b", "w"], [], ["b", "w"], ["b"], [], ["b"]]
        full = untied.init(jax.random.PRNGKey(0), (6,), jnp.float64)
        assert param_count(params) == param_count(full) - (6 * 4 + 4 * 2)
        assert sum(r[2] for r in summary(tied.layers, (6,))) == param_count(params)
        x = jax.random.uniform(jax.random.PRNGKey(1), (5, 6), jnp.float64)
        # the decoder computes with the encoder's weights, transposed
        b = [p["b"][None] if "b" in p else None for p in params]
        h = jax.nn.relu(x @ params[0]["w"] + b[0]) @ params[2]["w"] + b[2]
        h = jax.nn.relu(h @ params[2]["w"].T + b[3])
        np.testing.assert_allclose(tied.apply(params, x), h @ params[0]["w"].T + b[5],
                                   rtol=1e-12)
        report = check_gradients(tied.layers, LossSpec.make("mean_squared_error"), params, x,
                                 x)
    assert report.passed, str(report)


def test_a_tie_to_a_weight_of_the_wrong_shape_is_one_line():
    model = nnfun.models.sequential([{"name": "dense", "features": 3},
                                     {"name": "dense", "features": 5, "tie": 0}])
    with pytest.raises(ValueError, match=r"^layers\[1\] \(dense\) tie=0: layers\[0\]\.w has "
                                         r"shape \(4, 3\); tying needs its transpose to be "
                                         r"this layer's \(3, 5\)$"):
        model.init(jax.random.PRNGKey(0), (4,))
    with pytest.raises(ValueError, match="tie must be the index of an earlier layer"):
        nnfun.models.layer("dense", features=2, tie=-1)


def test_a_tied_autoencoder_trains_from_a_config(tmp_path, capsys):
    config = _config(tmp_path, "tied = true")
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_params"] == 64 * 16 + 16 + 16 * 2 + 2 + 16 + 64
    assert summary["test_reconstruction_error"] < float(np.mean(load_digits(flatten=True)
                                                               .x_test ** 2))
