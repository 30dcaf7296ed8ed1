"""nnfun: functional neural networks in JAX, with a hand-written backprop reference.

The modules, in the order data flows through them: `nnfun.data` and `nnfun.preprocessing`
(arrays and their splits); `nnfun.layers` and `nnfun.models` (the layer table, `Model`);
`nnfun.losses` and `nnfun.regularizers`; `nnfun.objective` (what `jax.grad` differentiates);
`nnfun.manual` (the same gradient by hand); `nnfun.gradcheck` and `nnfun.registry` (the two
compared, with finite differences); `nnfun.fast` (CPU variants behind one switch);
`nnfun.optim` and `nnfun.train` (steps and epochs, no I/O); and the I/O edge: `nnfun.config`,
`nnfun.distributed`, `nnfun.checkpoint`, `nnfun.plots`, `nnfun.run`, `nnfun.fitting`,
`nnfun.cli`.

`nnfun.fit` and `nnfun.load_run` (from `nnfun.fitting`) are available from the package
itself.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["fit", "load_run", "__version__"]


def __getattr__(name: str) -> Any:
    """`fit` and `load_run` on first use, so that ``import nnfun`` stays light."""
    if name in ("fit", "load_run"):
        import importlib

        return getattr(importlib.import_module("nnfun.fitting"), name)
    raise AttributeError(f"module 'nnfun' has no attribute {name!r}")
