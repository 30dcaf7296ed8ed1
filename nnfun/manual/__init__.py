"""The hand-written backpropagation reference: every gradient derived by hand.

It lives beside the autodiff path and shares nothing with it but `nnfun.spec`, so that comparing
the two is a real second opinion:

- `nnfun.manual.layers` (and `nnfun.manual.activations`, re-exported there):
  ``<name>_forward(params, x, **hyper) -> (out, cache)`` and
  ``<name>_backward(dout, cache) -> (dx, dparams)``, dparams mirroring params;
- `nnfun.manual.losses`: ``<loss>_forward(pred, target, **hyper) -> (loss, cache)`` and
  ``<loss>_backward(dloss, cache) -> dpred`` (targets are data: no gradient);
- `nnfun.manual.regularizers`: ``<reg>_forward(params, *, lam, ...) -> (penalty, cache)`` and
  ``<reg>_backward(dout, cache) -> dparams``;
- `nnfun.manual.model`: ``forward``, ``backward`` and the objective's value and gradient.

Everything is jax.numpy, so it runs under `jax.jit` and `jax.vmap`. Caches are frozen
dataclasses registered with `jax.tree_util.register_dataclass`: their arrays are data fields
(pytree leaves) and their Python values (a window geometry, a shape, an axis, whether there is a
bias) are meta fields, static under every transformation, read as plain attributes.

Each rule module has an explicit table, name -> `Rule(forward, backward)`: `layers.RULES` (layers
and activations), `losses.LOSS_RULES` and `regularizers.REG_RULES`. `nnfun.manual.fast` holds
faster variants of some layer rules (`FAST_RULES`, same contract), tested equal to the rules
they replace; `nnfun.manual.model` uses them only when asked (``fast=True``).
"""

from nnfun.manual import activations, fast, layers, losses, model, regularizers

__all__ = ["activations", "fast", "layers", "losses", "model", "regularizers"]
