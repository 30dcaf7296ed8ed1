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

Everything is jax.numpy, so it runs under `jax.jit` and `jax.vmap`; caches are NamedTuples.
"""

from nnfun.manual import activations, layers, losses, model, regularizers

__all__ = ["activations", "layers", "losses", "model", "regularizers"]
