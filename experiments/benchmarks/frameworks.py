"""One train-step runner per framework, all training the same model description with Adam.

A model is a tuple of ops (see `bench.MODELS`): ``("dense", M)``, ``("relu",)``,
``("conv2d", C_out, K)``, ``("conv1d", C_out, K, stride)``, ``("maxpool",)`` (window 2, stride 2,
VALID), ``("flatten",)``, ``("reshape", shape)`` (per example, e.g. (40,) -> (40, 1)),
``("gru", H)`` and ``("lstm", H)`` (one recurrent layer over a (T, D) sequence from a zero state,
returning the last hidden state (H,); the GRU with PyTorch's equations, the reset gate applied
after the recurrent matmul). Convolutions are SAME-padded. Loss: mean softmax cross-entropy on
integer labels. Optimiser: Adam, learning rate 1e-3.

Every runner follows one protocol, so the driver can interleave them:

- ``prepare(x, y)`` converts the NumPy data set (N, *shape) float32 / (N,) int32 into the
  framework's own arrays and batches (not timed, not counted in memory);
- ``build()`` initialises parameters and optimiser state and builds the compiled step;
- ``call()`` runs ``unit`` train steps (one step for a loop, a whole epoch for a scan) and
  waits for the result;
- ``steps_per_epoch`` calls... of ``call`` make one epoch: ``epoch()`` runs them.

Each framework is written the way its own documentation trains a model (Flax's TrainState,
``nnx.jit`` with ``nnx.Optimizer``, Equinox's ``filter_jit`` over a per-example CHW model under
``vmap``, Haiku's ``transform``, PyTorch eager NCHW with fused Adam). Plain JAX is written the
way a performance-minded JAX user would: a dict pytree, ``lax.conv_general_dilated`` and
reshape-and-max pooling, a donated jit step or one scanned epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

LR = 1e-3


def layer_shapes(ops: Sequence[tuple], in_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The per-example input shape of every op, then the output shape (len(ops) + 1 entries)."""
    shapes, s = [tuple(in_shape)], tuple(in_shape)
    for op in ops:
        if op[0] == "dense":
            s = (op[1],)
        elif op[0] == "conv2d":
            s = (s[0], s[1], op[1])
        elif op[0] == "conv1d":
            s = (-(-s[0] // op[3]), op[1])
        elif op[0] == "maxpool":
            s = tuple(d // 2 for d in s[:-1]) + (s[-1],)
        elif op[0] == "flatten":
            s = (math.prod(s),)
        elif op[0] == "reshape":
            s = tuple(op[1])
        elif op[0] in RECURRENT:
            s = (op[1],)
        shapes.append(s)
    return shapes


#: recurrent op -> gates G (the weights are (D, G H) and (H, G H))
RECURRENT = {"gru": 3, "lstm": 4}


def train_flops(ops: Sequence[tuple], in_shape: tuple[int, ...], batch: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one train step's matmuls and convolutions: forward,
    weight gradient, and input gradient for every layer but the first (nothing needs it). A
    recurrent layer counts its input projection (T D G H MACs per example) as a layer and its
    recurrence (T H G H, forward, dW_h and the gradient into h_{t-1}) always three times."""
    total, first = 0.0, True
    for op, s_in, s_out in zip(ops, layer_shapes(ops, in_shape), layer_shapes(ops, in_shape)[1:]):
        if op[0] == "dense":
            macs = batch * s_in[0] * op[1]
        elif op[0] in ("conv2d", "conv1d"):
            k = op[2] ** 2 if op[0] == "conv2d" else op[2]
            macs = batch * math.prod(s_out[:-1]) * k * s_in[-1] * op[1]
        elif op[0] in RECURRENT:
            (t, d), h, g = s_in, op[1], RECURRENT[op[0]]
            total += 2 * batch * t * h * g * h * 3
            macs = batch * t * d * g * h
        else:
            continue
        total += 2 * macs * (2 if first else 3)
        first = False
    return total


# --------------------------------------------------------------------------- helpers


def _block(tree: Any) -> None:
    import jax

    jax.block_until_ready(tree)


class Runner:
    """Base: `steps` train steps of `batch` examples per epoch."""

    unit = 1  # steps per call

    def __init__(self, ops: tuple, in_shape: tuple[int, ...], batch: int, steps: int) -> None:
        self.ops, self.in_shape, self.batch, self.steps = ops, tuple(in_shape), batch, steps

    def epoch(self) -> None:
        for _ in range(self.steps // self.unit):
            self.call()


class _JaxData(Runner):
    def prepare(self, x: np.ndarray, y: np.ndarray) -> None:
        import jax.numpy as jnp

        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        b = self.batch
        self.batches = [(self.x[i * b:(i + 1) * b], self.y[i * b:(i + 1) * b])
                        for i in range(self.steps)]
        _block(self.batches)
        self.i = 0

    def next_batch(self) -> tuple:
        self.i = (self.i + 1) % self.steps
        return self.batches[self.i]


def _xent(logits: Any, y: Any) -> Any:
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# --------------------------------------------------------------------------- nnfun


def nnfun_layers(ops: Sequence[tuple], in_shape: tuple[int, ...]) -> tuple:
    """The model as `nnfun.models.sequential` layer specs."""
    from nnfun.models import sequential

    specs: list[Any] = []
    for op, s in zip(ops, layer_shapes(ops, in_shape)):
        if op[0] == "dense":
            specs.append({"name": "dense", "features": op[1]})
        elif op[0] == "conv2d":
            specs.append({"name": "conv2d", "features": op[1], "kernel_size": op[2],
                          "padding": "SAME"})
        elif op[0] == "conv1d":
            specs.append({"name": "conv1d", "features": op[1], "kernel_size": op[2],
                          "stride": op[3], "padding": "SAME"})
        elif op[0] == "maxpool":
            specs.append({"name": "max_pool2d" if len(s) == 3 else "max_pool1d", "window": 2})
        elif op[0] == "reshape":
            specs.append({"name": "reshape", "shape": list(op[1])})
        elif op[0] in RECURRENT:
            specs.append({"name": op[0], "features": op[1]})
        else:
            specs.append(op[0])
    return sequential(specs).layers


class NnfunRunner(_JaxData):
    """nnfun.train as `nnfun train` runs it (``training.fast_paths = true``, the default):
    `make_step_body` with ``fast_paths=True``, driven by `make_train_epoch` with the given
    dispatch ("scan": one compiled epoch; "loop": the epoch's batches gathered once, then one
    jitted step per batch from Python) and `nnfun.fast.compiler_options` of the model. One
    `call` is one epoch for either dispatch (`make_train_epoch` runs whole epochs)."""

    def __init__(self, *args: Any, engine: str, dispatch: str, option: str = "") -> None:
        super().__init__(*args)
        self.engine, self.dispatch, self.option = engine, dispatch, option
        self.unit = self.steps

    def build(self) -> None:
        import jax.numpy as jnp
        import optax

        from nnfun import fast, train
        from nnfun.spec import LossSpec

        layers = self.layers = nnfun_layers(self.ops, self.in_shape)
        opt = optax.adam(LR)
        self.state = train.init_train_state(0, layers, self.in_shape, opt)
        # What `nnfun train` does by default: gradient norms sampled every min(10, steps) steps.
        every = {"nonorms": 0, "everystep": 1}.get(self.option, min(10, self.steps))
        self.body = train.make_step_body(layers, LossSpec.make("softmax_cross_entropy"), (), opt,
                                         engine=self.engine, grad_norm_every=every,
                                         fast_paths=True)
        # the A/B of nnfun's CPU compiler options: XLA's defaults
        self.options = None if self.option == "xladefaults" else fast.compiler_options(layers)
        self.fn = train.make_train_epoch(self.body, self.batch, dispatch=self.dispatch,
                                         compiler_options=self.options)
        self.epoch_no = 0
        self._jnp = jnp
        if self.option == "lax":  # every convolution on lax.conv, never on im2col
            self.fn = _patched(self.fn, "nnfun.fast", "use_im2col", lambda *a, **k: False)
        elif self.option == "patchpool":
            self.fn = _patched(self.fn, "nnfun.manual.fast", "tiles", lambda g: False)

    def xla_temp_mib(self) -> float:
        """Scratch memory XLA allocates for one compiled call (compiled memory analysis), MiB:
        the scanned epoch (`make_epoch_fn`) for the scan dispatch, one jitted step on one
        batch for the loop."""
        import jax

        from nnfun import train

        if self.dispatch == "scan":
            fn = train.make_epoch_fn(self.body, self.batch, compiler_options=self.options)
            args = (self.state, self.x, self.y, self._jnp.int32(0))
        else:
            fn = jax.jit(self.body, compiler_options=self.options)
            args = (self.state, self.batches[0])
        return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**20

    def call(self) -> None:
        # a new permutation for every epoch, as `nnfun train` draws them
        self.state, _ = self.fn(self.state, self.x, self.y, self.epoch_no)
        self.epoch_no += 1
        _block(self.state)


def _patched(fn: Any, module: str, name: str, value: Any) -> Any:
    """`fn` with ``module.name`` replaced by `value` while it runs. nnfun reads these names at
    trace time, so only the first (tracing) call of each compiled function matters; the swap
    costs ~1 us per call."""
    import importlib

    mod = importlib.import_module(module)

    def patched(*args: Any) -> Any:
        saved = getattr(mod, name)
        setattr(mod, name, value)
        try:
            return fn(*args)
        finally:
            setattr(mod, name, saved)

    return patched


# --------------------------------------------------------------------------- plain JAX


def jax_init(key: Any, ops: Sequence[tuple], in_shape: tuple[int, ...]) -> list[dict]:
    """He-normal weights, zero biases, one dict per op; recurrent layers as PyTorch initialises
    them (every weight and bias uniform in +-1/sqrt(H))."""
    import jax
    import jax.numpy as jnp

    params = []
    for i, (op, s) in enumerate(zip(ops, layer_shapes(ops, in_shape))):
        k = jax.random.fold_in(key, i)
        if op[0] in RECURRENT:
            params.append(_jax_init_recurrent(k, op[0], s[-1], op[1]))
            continue
        if op[0] == "dense":
            shape = (s[0], op[1])
        elif op[0] == "conv2d":
            shape = (op[2], op[2], s[-1], op[1])
        elif op[0] == "conv1d":
            shape = (op[2], s[-1], op[1])
        else:
            params.append({})
            continue
        fan_in = math.prod(shape[:-1])
        params.append({"w": jax.random.normal(k, shape) * math.sqrt(2.0 / fan_in),
                       "b": jnp.zeros((op[1],))})
    return params


def _jax_init_recurrent(key: Any, kind: str, d: int, h: int) -> dict:
    """{"w_x": (D, G H), "w_h": (H, G H), "b_x", "b_h": (G H,)}, gates stacked along the last
    axis in PyTorch's order (GRU: r, z, n; LSTM: i, f, g, o)."""
    import jax

    g = RECURRENT[kind]
    shapes = {"w_x": (d, g * h), "w_h": (h, g * h), "b_x": (g * h,), "b_h": (g * h,)}
    bound = 1.0 / math.sqrt(h)
    return {name: jax.random.uniform(jax.random.fold_in(key, j), shape, minval=-bound,
                                     maxval=bound)
            for j, (name, shape) in enumerate(shapes.items())}


def jax_recurrent(p: dict, x: Any, kind: str) -> Any:
    """A GRU or LSTM over x (N, T, D) from a zero state, written the way a performance-minded
    JAX user would: the input projection of every step hoisted out of the loop as one matmul,
    the gates of a step fused into one (H, G H) matmul, `lax.scan` over time; returns h_T
    (N, H). The GRU has PyTorch's equations (r * (h W_hn + b_hn))."""
    import jax
    import jax.numpy as jnp

    xw = jnp.swapaxes(x @ p["w_x"] + p["b_x"], 0, 1)  # (T, N, G H)
    h0 = jnp.zeros((x.shape[0], p["w_h"].shape[0]), x.dtype)
    sig = jax.nn.sigmoid

    def gru_step(h: Any, xw_t: Any) -> tuple:
        x_r, x_z, x_n = jnp.split(xw_t, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(h @ p["w_h"] + p["b_h"], 3, axis=-1)
        r, z = sig(x_r + h_r), sig(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        return (1.0 - z) * n + z * h, None

    def lstm_step(carry: tuple, xw_t: Any) -> tuple:
        h, c = carry
        a_i, a_f, a_g, a_o = jnp.split(xw_t + h @ p["w_h"] + p["b_h"], 4, axis=-1)
        c = sig(a_f) * c + sig(a_i) * jnp.tanh(a_g)
        return (sig(a_o) * jnp.tanh(c), c), None

    if kind == "gru":
        return jax.lax.scan(gru_step, h0, xw)[0]
    return jax.lax.scan(lstm_step, (h0, h0), xw)[0][0]


def jax_apply(params: list[dict], x: Any, ops: Sequence[tuple]) -> Any:
    import jax
    from jax import lax

    for p, op in zip(params, ops):
        if op[0] == "dense":
            x = x @ p["w"] + p["b"]
        elif op[0] == "conv2d":
            x = lax.conv_general_dilated(x, p["w"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["b"]
        elif op[0] == "conv1d":
            x = lax.conv_general_dilated(x, p["w"], (op[3],), "SAME",
                                         dimension_numbers=("NWC", "WIO", "NWC")) + p["b"]
        elif op[0] == "relu":
            x = jax.nn.relu(x)
        elif op[0] == "maxpool":
            n, *sp, c = x.shape
            split = sum(((d // 2, 2) for d in sp), ())
            x = x[(slice(None),) + tuple(slice(0, d // 2 * 2) for d in sp)]
            x = x.reshape(n, *split, c).max(axis=tuple(2 + 2 * i for i in range(len(sp))))
        elif op[0] == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif op[0] == "reshape":
            x = x.reshape(x.shape[0], *op[1])
        elif op[0] in RECURRENT:
            x = jax_recurrent(p, x, op[0])
    return x


class JaxRunner(_JaxData):
    """Plain JAX + optax: a donated jit step in a Python loop, or one scanned epoch."""

    def __init__(self, *args: Any, scan: bool) -> None:
        super().__init__(*args)
        self.scan = scan
        self.unit = self.steps if scan else 1

    def build(self) -> None:
        import jax
        import optax

        ops, tx = self.ops, optax.adam(LR)
        self.params = jax_init(jax.random.PRNGKey(0), ops, self.in_shape)
        self.opt_state = tx.init(self.params)

        def loss_fn(params: Any, x: Any, y: Any) -> Any:
            return _xent(jax_apply(params, x, ops), y)

        def step(params: Any, opt_state: Any, x: Any, y: Any) -> tuple:
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        if self.scan:
            b = self.batch

            def epoch(params: Any, opt_state: Any, x: Any, y: Any, key: Any) -> tuple:
                idx = jax.random.permutation(key, x.shape[0])[: x.shape[0] // b * b]

                def body(carry: tuple, i: Any) -> tuple:
                    p, o, _ = step(*carry, x[i], y[i])
                    return (p, o), None

                return jax.lax.scan(body, (params, opt_state), idx.reshape(-1, b))[0]

            self.fn = jax.jit(epoch, donate_argnums=(0, 1))
            self.key = jax.random.PRNGKey(1)
        else:
            self.fn = jax.jit(step, donate_argnums=(0, 1))

    def xla_temp_mib(self) -> float:
        """Scratch memory XLA allocates for one call (compiled memory analysis), MiB."""
        import jax

        args = ((self.x, self.y, jax.random.PRNGKey(0)) if self.scan else self.batches[0])
        compiled = self.fn.lower(self.params, self.opt_state, *args).compile()
        return compiled.memory_analysis().temp_size_in_bytes / 2**20

    def call(self) -> None:
        import jax

        if self.scan:
            self.key, k = jax.random.split(self.key)
            self.params, self.opt_state = self.fn(self.params, self.opt_state, self.x, self.y, k)
        else:
            self.params, self.opt_state, _ = self.fn(self.params, self.opt_state,
                                                     *self.next_batch())
        _block(self.params)

    def epoch(self) -> None:
        if self.scan:
            return self.call()
        for xb, yb in self.batches:
            self.params, self.opt_state, _ = self.fn(self.params, self.opt_state, xb, yb)
        _block(self.params)


# --------------------------------------------------------------------------- Flax Linen


class LinenRunner(_JaxData):
    """Flax Linen module + flax.training.train_state.TrainState, donated jit step."""

    def build(self) -> None:
        import flax.linen as nn
        import jax
        import jax.numpy as jnp
        import optax
        from flax.training import train_state

        ops = self.ops

        class Net(nn.Module):
            @nn.compact
            def __call__(self, x: Any) -> Any:
                for op in ops:
                    if op[0] == "dense":
                        x = nn.Dense(op[1])(x)
                    elif op[0] == "conv2d":
                        x = nn.Conv(op[1], (op[2], op[2]), padding="SAME")(x)
                    elif op[0] == "conv1d":
                        x = nn.Conv(op[1], (op[2],), strides=(op[3],), padding="SAME")(x)
                    elif op[0] == "relu":
                        x = nn.relu(x)
                    elif op[0] == "maxpool":
                        w = (2,) * (x.ndim - 2)
                        x = nn.max_pool(x, w, strides=w)
                    elif op[0] == "flatten":
                        x = x.reshape(x.shape[0], -1)
                    elif op[0] == "reshape":
                        x = x.reshape(x.shape[0], *op[1])
                    elif op[0] == "gru":
                        x = nn.RNN(nn.GRUCell(op[1]))(x)[:, -1]
                    elif op[0] == "lstm":
                        x = nn.RNN(nn.OptimizedLSTMCell(op[1]))(x)[:, -1]
                return x

        net = Net()
        params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, *self.in_shape)))["params"]
        self.state = train_state.TrainState.create(apply_fn=net.apply, params=params,
                                                   tx=optax.adam(LR))

        def step(state: Any, x: Any, y: Any) -> tuple:
            def loss_fn(p: Any) -> Any:
                return _xent(state.apply_fn({"params": p}, x), y)

            loss, grads = jax.value_and_grad(loss_fn)(state.params)
            return state.apply_gradients(grads=grads), loss

        self.fn = jax.jit(step, donate_argnums=(0,))

    def call(self) -> None:
        self.state, _ = self.fn(self.state, *self.next_batch())
        _block(self.state)

    def epoch(self) -> None:
        for xb, yb in self.batches:
            self.state, _ = self.fn(self.state, xb, yb)
        _block(self.state)


# --------------------------------------------------------------------------- Flax NNX


class NnxRunner(_JaxData):
    """Flax NNX: nnx.Sequential, nnx.Optimizer(wrt=nnx.Param), an nnx.jit step."""

    def build(self) -> None:
        import jax
        import optax
        from flax import nnx

        rngs = nnx.Rngs(0)
        layers: list[Any] = []
        for op, s in zip(self.ops, layer_shapes(self.ops, self.in_shape)):
            if op[0] == "dense":
                layers.append(nnx.Linear(s[0], op[1], rngs=rngs))
            elif op[0] == "conv2d":
                layers.append(nnx.Conv(s[-1], op[1], (op[2], op[2]), padding="SAME", rngs=rngs))
            elif op[0] == "conv1d":
                layers.append(nnx.Conv(s[-1], op[1], (op[2],), strides=(op[3],),
                                       padding="SAME", rngs=rngs))
            elif op[0] == "relu":
                layers.append(nnx.relu)
            elif op[0] == "maxpool":
                w = (2,) * (len(s) - 1)
                layers.append(partial(nnx.max_pool, window_shape=w, strides=w))
            elif op[0] == "flatten":
                layers.append(lambda x: x.reshape(x.shape[0], -1))
            elif op[0] == "reshape":
                layers.append(lambda x, shape=tuple(op[1]): x.reshape(x.shape[0], *shape))
            elif op[0] in RECURRENT:
                cell = nnx.GRUCell if op[0] == "gru" else nnx.OptimizedLSTMCell
                layers += [nnx.RNN(cell(s[-1], op[1], rngs=rngs)), lambda x: x[:, -1]]
        self.model = nnx.Sequential(*layers)
        self.opt = nnx.Optimizer(self.model, optax.adam(LR), wrt=nnx.Param)

        @nnx.jit
        def step(model: Any, optimizer: Any, x: Any, y: Any) -> Any:
            def loss_fn(m: Any) -> Any:
                return _xent(m(x), y)

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return loss

        self.fn, self._jax = step, jax

    def call(self) -> None:
        _block(self.fn(self.model, self.opt, *self.next_batch()))

    def epoch(self) -> None:
        for xb, yb in self.batches:
            loss = self.fn(self.model, self.opt, xb, yb)
        _block(loss)


# --------------------------------------------------------------------------- Equinox


class EquinoxRunner(_JaxData):
    """Equinox: a per-example channels-first eqx.nn.Sequential under jax.vmap, filter_jit."""

    def prepare(self, x: np.ndarray, y: np.ndarray) -> None:
        if x.ndim > 2:  # channels first, as eqx.nn.Conv expects
            x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
        super().prepare(x, y)

    def build(self) -> None:
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import optax

        key = jax.random.PRNGKey(0)
        layers: list[Any] = []
        for i, (op, s) in enumerate(zip(self.ops, layer_shapes(self.ops, self.in_shape))):
            k = jax.random.fold_in(key, i)
            if op[0] == "dense":
                layers.append(eqx.nn.Linear(s[0], op[1], key=k))
            elif op[0] == "conv2d":
                layers.append(eqx.nn.Conv2d(s[-1], op[1], op[2], padding="SAME", key=k))
            elif op[0] == "conv1d":
                layers.append(eqx.nn.Conv1d(s[-1], op[1], op[2], stride=op[3], padding="SAME",
                                            key=k))
            elif op[0] == "relu":
                layers.append(eqx.nn.Lambda(jax.nn.relu))
            elif op[0] == "maxpool":
                pool = eqx.nn.MaxPool2d if len(s) == 3 else eqx.nn.MaxPool1d
                layers.append(pool(2, 2))
            elif op[0] == "flatten":
                layers.append(eqx.nn.Lambda(jnp.ravel))
            elif op[0] == "reshape":
                layers.append(eqx.nn.Lambda(lambda x, shape=tuple(op[1]): x.reshape(shape)))
            elif op[0] in RECURRENT:
                cell = eqx.nn.GRUCell if op[0] == "gru" else eqx.nn.LSTMCell
                layers.append(_eqx_scanned(cell(s[-1], op[1], key=k)))
        self.model = eqx.nn.Sequential(layers)
        tx = optax.adam(LR)
        self.opt_state = tx.init(eqx.filter(self.model, eqx.is_array))

        def loss_fn(model: Any, x: Any, y: Any) -> Any:
            return _xent(jax.vmap(model)(x), y)

        @eqx.filter_jit
        def step(model: Any, opt_state: Any, x: Any, y: Any) -> tuple:
            loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
            updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
            return eqx.apply_updates(model, updates), opt_state, loss

        self.fn = step

    def call(self) -> None:
        self.model, self.opt_state, loss = self.fn(self.model, self.opt_state,
                                                   *self.next_batch())
        _block(loss)

    def epoch(self) -> None:
        for xb, yb in self.batches:
            self.model, self.opt_state, loss = self.fn(self.model, self.opt_state, xb, yb)
        _block(loss)


def _eqx_scanned(cell: Any) -> Any:
    """An Equinox module running `cell` (eqx.nn.GRUCell / LSTMCell) over one example's
    sequence (T, D) with `lax.scan` from a zero state; returns h_T (H,)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    class Scanned(eqx.Module):
        cell: Any

        def __call__(self, x: Any, *, key: Any = None) -> Any:
            h0 = jnp.zeros(self.cell.hidden_size, x.dtype)
            lstm = isinstance(self.cell, eqx.nn.LSTMCell)
            state = jax.lax.scan(lambda s, x_t: (self.cell(x_t, s), None),
                                 (h0, h0) if lstm else h0, x)[0]
            return state[0] if lstm else state

    return Scanned(cell)


# --------------------------------------------------------------------------- Haiku


class HaikuRunner(_JaxData):
    """Haiku: hk.transform of an hk.Sequential, donated jit step."""

    def build(self) -> None:
        import haiku as hk
        import jax
        import jax.numpy as jnp
        import optax

        ops = self.ops

        def forward(x: Any) -> Any:
            for op in ops:
                if op[0] == "dense":
                    x = hk.Linear(op[1])(x)
                elif op[0] == "conv2d":
                    x = hk.Conv2D(op[1], op[2], padding="SAME")(x)
                elif op[0] == "conv1d":
                    x = hk.Conv1D(op[1], op[2], stride=op[3], padding="SAME")(x)
                elif op[0] == "relu":
                    x = jax.nn.relu(x)
                elif op[0] == "maxpool":
                    w = (1,) + (2,) * (x.ndim - 2) + (1,)
                    x = hk.max_pool(x, w, w, "VALID")
                elif op[0] == "flatten":
                    x = hk.Flatten()(x)
                elif op[0] == "reshape":
                    x = x.reshape(x.shape[0], *op[1])
                elif op[0] in RECURRENT:  # hk.GRU applies its reset gate before the matmul
                    core = hk.GRU(op[1]) if op[0] == "gru" else hk.LSTM(op[1])
                    x = hk.dynamic_unroll(core, x, core.initial_state(x.shape[0]),
                                          time_major=False)[0][:, -1]
            return x

        net = hk.without_apply_rng(hk.transform(forward))
        tx = optax.adam(LR)
        self.params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, *self.in_shape)))
        self.opt_state = tx.init(self.params)

        def step(params: Any, opt_state: Any, x: Any, y: Any) -> tuple:
            loss, grads = jax.value_and_grad(lambda p: _xent(net.apply(p, x), y))(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self.fn = jax.jit(step, donate_argnums=(0, 1))

    def call(self) -> None:
        self.params, self.opt_state, _ = self.fn(self.params, self.opt_state, *self.next_batch())
        _block(self.params)

    def epoch(self) -> None:
        for xb, yb in self.batches:
            self.params, self.opt_state, _ = self.fn(self.params, self.opt_state, xb, yb)
        _block(self.params)


# --------------------------------------------------------------------------- PyTorch


class TorchRunner(Runner):
    """PyTorch eager, channels first (NCHW / NCL), Adam(fused=True), 2 threads; recurrent layers
    are nn.GRU / nn.LSTM (batch_first) followed by the last step's output."""

    def prepare(self, x: np.ndarray, y: np.ndarray) -> None:
        import torch

        torch.set_num_threads(2)
        if x.ndim > 2:
            x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
        xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        b = self.batch
        self.batches = [(xt[i * b:(i + 1) * b].contiguous(), yt[i * b:(i + 1) * b].contiguous())
                        for i in range(self.steps)]
        self.i = 0

    def build(self) -> None:
        import torch
        from torch import nn

        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for op, s in zip(self.ops, layer_shapes(self.ops, self.in_shape)):
            if op[0] == "dense":
                layers.append(nn.Linear(s[0], op[1]))
            elif op[0] == "conv2d":
                layers.append(nn.Conv2d(s[-1], op[1], op[2], padding="same"))
            elif op[0] == "conv1d":
                layers.append(nn.Conv1d(s[-1], op[1], op[2], stride=op[3], padding=op[2] // 2))
            elif op[0] == "relu":
                layers.append(nn.ReLU())
            elif op[0] == "maxpool":
                layers.append(nn.MaxPool2d(2) if len(s) == 3 else nn.MaxPool1d(2))
            elif op[0] == "flatten":
                layers.append(nn.Flatten())
            elif op[0] == "reshape":
                layers.append(nn.Unflatten(1, tuple(op[1])))
            elif op[0] in RECURRENT:
                rnn = (nn.GRU if op[0] == "gru" else nn.LSTM)(s[-1], op[1], batch_first=True)
                layers.append(_torch_last_step(rnn))
        self.net = nn.Sequential(*layers)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=LR, fused=True)
        self._f = torch.nn.functional

    def _step(self, xb: Any, yb: Any) -> None:
        self.opt.zero_grad(set_to_none=True)
        self._f.cross_entropy(self.net(xb), yb).backward()
        self.opt.step()

    def call(self) -> None:
        self.i = (self.i + 1) % self.steps
        self._step(*self.batches[self.i])

    def epoch(self) -> None:
        for xb, yb in self.batches:
            self._step(xb, yb)


def _torch_last_step(rnn: Any) -> Any:
    """An nn.Module returning the last time step of `rnn`'s output, (N, H)."""
    from torch import nn

    class LastStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = rnn

        def forward(self, x: Any) -> Any:
            return self.rnn(x)[0][:, -1]

    return LastStep()


# --------------------------------------------------------------------------- registry


def make_runner(variant: str, ops: tuple, in_shape: tuple[int, ...], batch: int,
                steps: int) -> Runner:
    """The runner of a variant name (see `VARIANTS`)."""
    args = (ops, in_shape, batch, steps)
    if variant.startswith("nnfun-"):
        name, _, option = variant.partition("@")
        _, engine, dispatch = name.split("-")
        return NnfunRunner(*args, engine=engine, dispatch=dispatch, option=option)
    return {"jax-loop": lambda: JaxRunner(*args, scan=False),
            "jax-scan": lambda: JaxRunner(*args, scan=True),
            "linen": lambda: LinenRunner(*args), "nnx": lambda: NnxRunner(*args),
            "equinox": lambda: EquinoxRunner(*args), "haiku": lambda: HaikuRunner(*args),
            "torch": lambda: TorchRunner(*args),
            "torch-passive": lambda: TorchRunner(*args)}[variant]()


#: variant family -> the modules its runner imports; the memory probe imports them before its
#: baseline reading, so module code is not counted as training memory.
PRELOAD = {"nnfun": ("jax", "optax", "nnfun.fast", "nnfun.train", "nnfun.models", "nnfun.spec"),
           "jax": ("jax", "optax"), "linen": ("jax", "optax", "flax.linen", "flax.training"),
           "nnx": ("jax", "optax", "flax.nnx"), "equinox": ("jax", "optax", "equinox"),
           "haiku": ("jax", "optax", "haiku"), "torch": ("torch",)}


def preload(variant: str) -> None:
    """Imports the modules `variant`'s runner uses."""
    import importlib

    for mod in PRELOAD[variant.split("-")[0]]:
        importlib.import_module(mod)


#: variant -> the module it needs (None: always available).
VARIANTS = {
    "nnfun-autodiff-scan": None, "nnfun-autodiff-loop": None,
    "nnfun-manual-scan": None, "nnfun-manual-loop": None,
    "jax-loop": None, "jax-scan": None,
    "linen": "flax", "nnx": "flax", "equinox": "equinox", "haiku": "haiku", "torch": "torch",
    "torch-passive": "torch",
}
#: Diagnostic variants of nnfun's automatic choice: "@lax" forces its convolutions onto lax.conv
#: (the A/B of `nnfun.fast.use_im2col`, the CPU im2col switch of the fast paths; conv models
#: only); "@nonorms" drops the per-layer gradient
#: norms (grad_norm_every=0) that the default samples every 10 steps, "@everystep" measures them
#: on every step (grad_norm_every=1, the default before 2026-11-30); "@xladefaults" compiles with
#: XLA's defaults instead of `nnfun.fast.compiler_options` (the A/B of those options);
#: "@patchpool" (manual engine) pools on im2col patches even where the windows tile the input
#: (the A/B of the tiled pooling in nnfun.manual.fast, pooled models only).
CONV_AB = "@lax"
PATCH_POOL = "@patchpool"
XLA_DEFAULTS = "@xladefaults"
NO_NORMS = "@nonorms"
EVERY_STEP = "@everystep"
#: variants timed in a process of their own (see bench.Worker), with extra environment.
OWN_PROCESS = {"torch": {}, "torch-passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
PEERS = ("linen", "nnx", "equinox", "haiku", "torch", "torch-passive")
JAX_PEERS = ("linen", "nnx", "equinox", "haiku")
