"""The gradient cross-checks compare two independent convolutions, on every backend.

A fault planted in either implementation's convolution must be seen by `check_gradients` and by
the engine cross-check of training, on the first layer of both shipped CNNs, at the gradcheck
batch size. The reference's convolution is im2col (`nnfun.manual`); the autodiff path's is one
`lax.conv_general_dilated` call (`nnfun.layers`), whatever `nnfun.fast` would pick for training.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnfun import layers as L
from nnfun import run, train
from nnfun.config import load_config
from nnfun.gradcheck import check_gradients
from nnfun.manual import _windows
from nnfun.models import layer

ROOT = Path(__file__).resolve().parents[1]


def _shift_the_reference_im2col(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patches taken one column off: what a wrong padding offset in im2col does."""
    patches = _windows.patches
    monkeypatch.setattr(_windows, "patches",
                        lambda x, g, fill=0.0: patches(jnp.roll(x, 1, axis=-2), g, fill))


def _scale_the_autodiff_convolution(monkeypatch: pytest.MonkeyPatch) -> None:
    conv = L._conv
    monkeypatch.setattr(L, "_conv", lambda x, w, stride, padding: 1.001 * conv(x, w, stride,
                                                                             padding))


FAULTS = {"none": None, "reference_im2col": _shift_the_reference_im2col,
          "autodiff_lax_conv": _scale_the_autodiff_convolution}


@pytest.fixture(scope="module", params=["digits_cnn", "mnist1d_cnn"])
def shipped(request):
    """A shipped CNN's first stage (convolution, activation, pool) with a dense output layer,
    its loss, seeded float64 parameters and an 8-example batch of its data."""
    config = load_config(ROOT / "configs" / f"{request.param}.toml")
    with jax.enable_x64(True):
        setup = run.prepare(config)
        layers = (*setup.model.layers[:3], layer("flatten"), layer("dense", features=10))
        params = train.init_params(0, layers, setup.data.input_shape, jnp.float64)
        idx = np.random.default_rng(0).choice(setup.data.x_train.shape[0], 8, replace=False)
        x = jnp.asarray(setup.data.x_train[idx], jnp.float64)
        y = jnp.asarray(setup.data.y_train[idx])
    return layers, setup.loss, params, x, y


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_planted_convolution_fault_is_seen(shipped, fault, monkeypatch):
    layers, loss, params, x, y = shipped
    if FAULTS[fault]:
        FAULTS[fault](monkeypatch)
    key = jax.random.PRNGKey(1)
    with jax.enable_x64(True):
        report = check_gradients(layers, loss, params, x, y, key=key, max_coords=4,
                                 num_directions=0)
        rel = float(train.make_engine_crosscheck(layers, loss)(params, x, y, key))
    first = {leaf.path: leaf for leaf in report.leaves}["0.w"]
    if fault == "none":
        assert first.rel_manual <= 1e-10 and rel <= 1e-10
    else:
        assert first.rel_manual > 1e-4 and not first.passed and not report.passed
        assert rel > 1e-4
