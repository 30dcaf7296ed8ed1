"""Gradients through time: ||dL/dh_t|| against t for an RNN, an LSTM and a GRU (lecture 002's
recurrent nets; the vanishing gradient of lectures 001, 002 and 004, now along time).

The task is MNIST-1D: each 40-sample signal is read as a sequence of T = 40 scalars, reshape
(N, 40) -> (N, 40, 1), one recurrent layer of H = 64 units, dense 10 on its last hidden state
(the models of configs/mnist1d_{rnn,lstm,gru}.toml at half the width). The loss depends on h_T
alone, so the gradient at every earlier step has come back through the recurrence,
dL/dh_t = dL/dh_T (dh_T / dh_{T-1}) ... (dh_{t+1} / dh_t): a product of T - t Jacobians.

For each cell, at initialisation (nnfun's defaults: Xavier w_x, orthogonal w_h, zero biases,
the LSTM's forget bias 1) and after each of 20 epochs of training (Adam, lr 3e-3, gradients
clipped to norm 1, batch 100), the script measures ||dL_n/dh_t|| for t = 1 .. T, where L_n is
the cross-entropy of example n (each example's own gradient), averaged over 256 test examples,
and the ratio ||dL/dh_1|| / ||dL/dh_T|| of the averages. For the LSTM it also measures
||dL/dc_t||, the gradient reaching the cell state. The figure: the norms against t at
initialisation and after training, the ratio against the epoch, and the training loss.

How dL/dh_t is obtained: nnfun's recurrent layers keep their states inside a scan, so the
script runs each cell's recurrence again from the layer's own parameters (the equations of
`nnfun.recurrent`) with a perturbation eps_t = 0 added to every h_t (and to c_t before
h_t = o tanh(c_t) reads it), and takes `jax.grad` with respect to eps. Two checks, asserted on
every measurement (at initialisation and after training):

- the re-run's states equal those of nnfun's ``<cell>_apply(..., return_sequences=True)``;
- dL/dh_t equals what the hand-written backpropagation through time of
  `nnfun.manual.recurrent` gives. Its per-step pre-activation gradients da_t are read from its
  ``dx`` by feeding an identity-augmented input, x'_t = (x_t, e_t) with W_x' = (W_x; I) and
  e = 0, so that dL/de_t = da_t; then dL/dh_{t-1} = da_t W_h^T for the RNN and the LSTM, and
  z_t dL/dh_t + (da_r, da_z, r_t da_n)_t W_h^T for the GRU (whose h_{t-1} also passes through
  the update gate). The loss and the dense layer go through `nnfun.manual` too.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from _common import figure, finish, parse_args, save_figure, save_table, sized

from nnfun.data import load_dataset
from nnfun.layers import dense_apply
from nnfun.losses import softmax_cross_entropy
from nnfun.manual.layers import dense_backward, dense_forward
from nnfun.manual.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from nnfun.manual.recurrent import (
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
)
from nnfun.models import layer, sequential
from nnfun.optim import make_optimizer
from nnfun.recurrent import gru_apply, lstm_apply, rnn_apply
from nnfun.spec import LossSpec
from nnfun.train import init_train_state, make_epoch_fn, make_eval_fn, make_step_body

# smoke: two of the three (every branch of the code: b or b_x, c_t, the update gate)
CELLS = sized(("rnn", "lstm", "gru"), ("lstm", "gru"))
# hidden units, time steps (MNIST-1D has 40; smoke keeps the last 8), epochs, training
# examples (None: all 3,600), examples measured
H, T, EPOCHS, N_TRAIN, N_MEASURE = sized((64, 40, 20, None, 256), (8, 8, 1, 100, 16))
BATCH, LR, SEED = sized(100, 50), 3e-3, 0
LOSS = LossSpec.make("softmax_cross_entropy")
APPLY = {"rnn": rnn_apply, "lstm": lstm_apply, "gru": gru_apply}
MANUAL = {"rnn": (rnn_forward, rnn_backward), "lstm": (lstm_forward, lstm_backward),
          "gru": (gru_forward, gru_backward)}


def model_for(cell: str):
    return sequential([layer("reshape", shape=[T, 1]), layer(cell, features=H),
                       layer("dense", features=10)])


# --------------------------------------------------------------------------- one time step
# (state, input projection xw_t, perturbation e_t = (e_h, e_c)) -> (h_t + e_h, c_t): nnfun's
# equations (nnfun.recurrent); the LSTM's e_c joins c_t before h_t = o tanh(c_t) reads it.


def _rnn_step(p, h, c, xw_t, e_t):
    return jnp.tanh(xw_t + h @ p["w_h"]) + e_t[0], c


def _lstm_step(p, h, c, xw_t, e_t):
    a_i, a_f, a_g, a_o = jnp.split(xw_t + h @ p["w_h"], 4, axis=-1)
    c = jax.nn.sigmoid(a_f) * c + jax.nn.sigmoid(a_i) * jnp.tanh(a_g) + e_t[1]
    return jax.nn.sigmoid(a_o) * jnp.tanh(c) + e_t[0], c


def _gru_step(p, h, c, xw_t, e_t):
    ax_r, ax_z, ax_n = jnp.split(xw_t, 3, axis=-1)
    ah_r, ah_z, ah_n = jnp.split(h @ p["w_h"] + p["b_h"][None], 3, axis=-1)
    r, z = jax.nn.sigmoid(ax_r + ah_r), jax.nn.sigmoid(ax_z + ah_z)
    return (1.0 - z) * jnp.tanh(ax_n + r * ah_n) + z * h + e_t[0], c


STEPS = {"rnn": _rnn_step, "lstm": _lstm_step, "gru": _gru_step}


def unrolled(cell: str, p: dict, x: jax.Array, eps: jax.Array) -> jax.Array:
    """Every h_t (N, T, H) of nnfun's `cell` with parameters p on x (N, T, D), with eps[t, 0]
    added to h_t and eps[t, 1] to c_t (the LSTM's cell state; unused by the others);
    eps is (T, 2, N, H)."""
    xw = jnp.swapaxes(x @ p["w_x"] + p["b_x" if cell == "gru" else "b"][None, None], 0, 1)

    def step(carry, inputs):
        h, c = STEPS[cell](p, *carry, *inputs)
        return (h, c), h

    h0 = jnp.zeros((x.shape[0], p["w_h"].shape[0]), x.dtype)
    return jnp.swapaxes(jax.lax.scan(step, (h0, h0), (xw, eps))[1], 0, 1)


def state_grads(cell: str, params: list, x: jax.Array, y: jax.Array):
    """(dL/deps (T, 2, N, H): dL/dh_t and dL/dc_t of L = sum_n L_n, the states (N, T, H))."""
    eps = jnp.zeros((x.shape[1], 2, x.shape[0], H), x.dtype)

    def loss(e):
        hs = unrolled(cell, params[1], x, e)
        return softmax_cross_entropy(dense_apply(params[2], hs[:, -1]), y, reduction="sum"), hs

    return jax.grad(loss, has_aux=True)(eps)


# --------------------------------------------------------------------------- the check


def manual_dh(cell: str, params: list, x: jax.Array, y: jax.Array) -> jax.Array:
    """dL/dh_t (N, T, H) from nnfun.manual's hand-written backward rules (see the docstring)."""
    forward, backward = MANUAL[cell]
    p, (n, t, d) = params[1], x.shape
    g = p["w_h"].shape[1]  # G H: every gate's pre-activation
    p_aug = dict(p, w_x=jnp.concatenate([p["w_x"], jnp.eye(g, dtype=x.dtype)], axis=0))
    x_aug = jnp.concatenate([x, jnp.zeros((n, t, g), x.dtype)], axis=-1)
    h_last, cache = forward(p_aug, x_aug)
    logits, dense_cache = dense_forward(params[2], h_last)
    _, loss_cache = softmax_cross_entropy_forward(logits, y, reduction="sum")
    dh_last, _ = dense_backward(softmax_cross_entropy_backward(jnp.ones(()), loss_cache),
                                dense_cache)
    da = backward(dh_last, cache)[0][..., d:]  # dL/da_t, (N, T, G H)
    z = jnp.zeros((n, t, H), x.dtype)
    if cell == "gru":
        r, z, _ = jnp.split(jnp.swapaxes(cache.gates, 0, 1), 3, axis=-1)
        da = da * jnp.concatenate([jnp.ones_like(r), jnp.ones_like(r), r], axis=-1)
    through_w_h = da @ p["w_h"].T  # step t's share of dL/dh_{t-1}
    dh = [dh_last]
    for s in range(t - 1, 0, -1):  # dL/dh_{s-1} from dL/dh_s (0-based steps)
        dh.append(through_w_h[:, s] + z[:, s] * dh[-1])
    return jnp.stack(dh[::-1], axis=1)


def norms_over_examples(grads: jax.Array) -> jax.Array:
    """(T, 2, N, H) -> (T, 2): the mean over examples of each example's gradient norm."""
    return jnp.mean(jnp.linalg.norm(grads, axis=-1), axis=-1)


@partial(jax.jit, static_argnums=0)
def _measure_arrays(cell: str, params: list, x: jax.Array, y: jax.Array) -> tuple:
    """(norms (T, 2), jax's dL/dh_t (N, T, H), the manual one, max |states - nnfun's|),
    compiled once per cell."""
    grads, hs = state_grads(cell, params, x, y)
    forward_diff = jnp.max(jnp.abs(hs - APPLY[cell](params[1], x, return_sequences=True)))
    return (norms_over_examples(grads), jnp.swapaxes(grads[:, 0], 0, 1),
            manual_dh(cell, params, x, y), forward_diff)


def measure(cell: str, params: list, x: jax.Array, y: jax.Array) -> dict:
    """Mean over examples of ||dL_n/dh_t|| and ||dL_n/dc_t|| for t = 1 .. T, checked."""
    norms, dh, reference, forward_diff = map(np.asarray, _measure_arrays(cell, params, x, y))
    assert forward_diff < 1e-5, f"{cell}: re-run states differ from nnfun's by {forward_diff}"
    scale = float(np.max(np.abs(reference)))
    np.testing.assert_allclose(dh, reference, rtol=1e-3, atol=1e-5 * scale,
                               err_msg=f"{cell}: dL/dh_t, jax.grad vs nnfun.manual BPTT")
    return {"dh_norm": norms[:, 0], "dc_norm": norms[:, 1] if cell == "lstm" else None,
            "ratio_first_over_last": float(norms[0, 0] / norms[-1, 0]),
            "check_forward_max_abs": float(forward_diff),
            "check_manual_max_abs_over_scale": float(np.max(np.abs(dh - reference))) / scale}


# --------------------------------------------------------------------------- training


def run_cell(cell: str, ds) -> dict:
    """Measures at initialisation, trains EPOCHS epochs (the ratio after each), measures."""
    model = model_for(cell)
    opt = make_optimizer("adam", LR, clip_global_norm=1.0)
    state = init_train_state(SEED, model.layers, (T,), opt)
    x_train, y_train = jnp.asarray(ds.x_train[:N_TRAIN, -T:]), jnp.asarray(ds.y_train[:N_TRAIN])
    x_test, y_test = jnp.asarray(ds.x_test[:, -T:]), jnp.asarray(ds.y_test)
    xm, ym = x_test[:N_MEASURE, :, None], y_test[:N_MEASURE]
    at_init = measure(cell, state.params, xm, ym)
    epoch_fn = make_epoch_fn(make_step_body(model.layers, LOSS, (), opt, grad_norm_every=0),
                             BATCH)
    evaluate = make_eval_fn(model.layers, LOSS, 10)

    @jax.jit
    def train(state):  # every epoch, then ||dL/dh_t|| on the measured examples
        def epoch(state, e):
            state, metrics = epoch_fn(state, x_train, y_train, e)
            norms = norms_over_examples(state_grads(cell, state.params, xm, ym)[0])
            return state, (jnp.mean(metrics["loss"]), norms[:, 0])

        state, (losses, norms) = jax.lax.scan(epoch, state, jnp.arange(EPOCHS))
        return state, losses, norms, evaluate(state.params, x_test, y_test)["accuracy"]

    state, *out = train(state)
    losses, norms, acc = map(np.asarray, out)
    trained = measure(cell, state.params, xm, ym)
    ratios = np.concatenate([[at_init["ratio_first_over_last"]], norms[:, 0] / norms[:, -1]])
    checks = [(m["check_forward_max_abs"], m["check_manual_max_abs_over_scale"])
              for m in (at_init, trained)]
    print(f"{cell:<5} ||dL/dh_1|| / ||dL/dh_T||: at init {ratios[0]:.2e}, after {EPOCHS} epochs "
          f"{trained['ratio_first_over_last']:.2e} (smallest {ratios.min():.1e}, largest "
          f"{ratios.max():.1e}); test accuracy {acc:.3f}; checks: states = nnfun's to "
          f"{max(c[0] for c in checks):.1e}, dL/dh_t = manual BPTT's to "
          f"{max(c[1] for c in checks):.1e} of its largest entry")
    return {"at_init": at_init, "trained": trained, "test_accuracy": float(acc),
            "train_loss_per_epoch": losses, "ratio_by_epoch": ratios}


def main() -> None:
    args = parse_args("gradients_through_time", __doc__)
    ds = load_dataset("mnist1d", flatten=True, num_samples=sized(5000, 500))
    results = {cell: run_cell(cell, ds) for cell in CELLS}

    fig, axes = figure(2, 2, size=(4.6, 3.2))
    t, epochs = np.arange(1, T + 1), np.arange(EPOCHS + 1)
    colors = {"rnn": "tab:blue", "lstm": "tab:orange", "gru": "tab:green"}
    for ax, when, title in ((axes[0, 0], "at_init", "at initialisation"),
                            (axes[0, 1], "trained", f"after {EPOCHS} epochs")):
        for cell, r in results.items():
            m = r[when]
            ax.plot(t, m["dh_norm"], color=colors[cell],
                    label=f"{cell}: h_1 / h_T = {m['ratio_first_over_last']:.1e}")
            if m["dc_norm"] is not None:
                ax.plot(t, m["dc_norm"], color=colors[cell], ls="--", lw=1,
                        label="lstm, ||dL_n/dc_t||")
        ax.set(yscale="log", xlabel="time step t (the loss reads h_T only)",
               ylabel="mean ||dL_n/dh_t||", title=f"gradient reaching h_t, {title}")
        ax.legend()
    ax = axes[1, 0]
    for cell, r in results.items():
        ax.plot(epochs, r["ratio_by_epoch"], color=colors[cell], marker="o", ms=2, label=cell)
    ax.axhline(1.0, color="gray", lw=0.5)
    ax.set(yscale="log", xlabel="epoch (0: initialisation)",
           ylabel="||dL/dh_1|| / ||dL/dh_T||", title="how much reaches the first step")
    ax.legend()
    ax = axes[1, 1]
    for cell, r in results.items():
        ax.plot(epochs[1:], r["train_loss_per_epoch"], color=colors[cell], marker="o", ms=2,
                label=f"{cell} (test accuracy {r['test_accuracy']:.2f})")
    ax.set(xlabel="epoch", ylabel="cross-entropy (epoch mean)",
           title=f"training: MNIST-1D, T = {T}, H = {H}")
    ax.legend()
    png = save_figure(fig, args)
    save_table(args, {"task": f"MNIST-1D, T = {T}, reshape -> <cell>({H}) -> dense(10)",
                      "training": f"adam lr {LR}, clip 1.0, batch {BATCH}, {EPOCHS} epochs",
                      "measured_on": f"{N_MEASURE} test examples, mean of per-example norms",
                      "cells": results})
    finish(args, [png])


if __name__ == "__main__":
    main()
