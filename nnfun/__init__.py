"""nnfun: functional neural networks in JAX, with a hand-written backprop reference.

The autodiff path: `nnfun.activations`, `nnfun.initializers`, `nnfun.layers`, `nnfun.models`,
`nnfun.losses`, `nnfun.regularizers`, `nnfun.objective`. The reference path: `nnfun.manual`.
`nnfun.gradcheck` compares them with finite differences. Training lives in `nnfun.optim` and
`nnfun.train`, configs in `nnfun.config`, the command line in `nnfun.cli`.
"""

__version__ = "0.1.0"
