"""Training from Python on arrays in memory, and reusing a trained run.

`fit` is `nnfun train` for arrays you already have: it writes them into the run folder as
``data.npz`` (the `nnfun.data.load_npz` format, with your splits), builds the config that
describes the model, loss and optimiser, and trains through the same `nnfun.run.train_run`,
so the run folder, progress bar, checkpoints, metrics and resume are those of ``nnfun train``,
and ``nnfun eval`` / ``resume`` / ``gradcheck`` work on it. `load_run` gives back a run's
config, trained parameters and a ``predict``::

    run = nnfun.fit(mlp([64], 10), (x, y), epochs=20, learning_rate=1e-2)
    labels = run.predict(x_new).argmax(-1)
    run = nnfun.load_run("runs/fit/<timestamp>")          # later, in another process
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nnfun import preprocessing as prep_lib
from nnfun import run
from nnfun.config import Config, validate
from nnfun.models import Model
from nnfun.spec import LossSpec, RegSpec

__all__ = ["fit", "load_run", "TrainedRun", "model_section"]

Array = jax.Array
Data = tuple[Any, Any]


class TrainedRun(NamedTuple):
    """A trained run: its config, model, parameters and summary.

    Attributes:
      run_dir: the run folder.
      config: the validated config the run was trained from.
      model: the `Model` it describes.
      params: the restored parameters (best checkpoint by default, see `load_run`).
      step: the step of that checkpoint.
      summary: ``summary.json`` as a dict ({} for an unfinished run).
      prep_state: the preprocessing fitted on the training split.
    """

    run_dir: Path
    config: Config
    model: Model
    params: Any
    step: int
    summary: dict[str, Any]
    prep_state: dict

    def predict(self, x: Any) -> Array:
        """The model's outputs (N, ...) on raw inputs x (N, ...), preprocessed as in training
        (evaluation mode: no dropout)."""
        xp = prep_lib.apply_preprocessor(self.prep_state, np.asarray(x))
        dtype = jnp.float64 if self.config.training.dtype == "float64" else jnp.float32
        return self.model.apply(self.params, jnp.asarray(xp, dtype))


def model_section(model: Model) -> dict[str, Any]:
    """The ``[model]`` config section (``name = "sequential"``) that rebuilds `model`."""
    def plain(v: Any) -> Any:
        return [plain(i) for i in v] if isinstance(v, (tuple, list)) else v

    return {"name": "sequential", "layers": [
        {"name": s.name, **{k: plain(v) for k, v in {**s.init_kwargs, **s.apply_kwargs}.items()},
         **({} if s.tie is None else {"tie": s.tie})}
        for s in model.layers]}


def _save_arrays(path: Path, train: Data, val: Data | None, test: Data | None) -> None:
    arrays = {}
    for split, xy in (("train", train), ("val", val), ("test", test)):
        if xy is not None:
            x, y = xy
            x = np.asarray(x)
            # no labels (a reconstruction task): the inputs stand in, as the targets will
            y = x.reshape(x.shape[0], -1) if y is None else y
            arrays[f"x_{split}"], arrays[f"y_{split}"] = x, np.asarray(y)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def _spec_section(spec: str | LossSpec | RegSpec | tuple | Mapping) -> dict[str, Any]:
    if isinstance(spec, str):
        return {"name": spec}
    if isinstance(spec, (LossSpec, RegSpec)):
        return {"name": spec.name, **dict(spec.kwargs)}
    if isinstance(spec, Mapping):
        return dict(spec)
    name, kwargs = spec
    return {"name": name, **dict(kwargs)}


def fit(model: Model, train_data: Data, *, val_data: Data | None = None,
        test_data: Data | None = None, loss: Any = "softmax_cross_entropy",
        regularizers: Sequence[Any] = (), optimizer: str = "adam",
        learning_rate: float | None = 1e-3, optimizer_kwargs: Mapping[str, Any] | None = None,
        schedule: Mapping[str, Any] | None = None, epochs: int = 10, batch_size: int = 32,
        seed: int = 0, task: str = "classification", preprocessing: str = "none",
        run_dir: str | Path | None = None, name: str = "fit", quiet: bool = False,
        **training: Any) -> TrainedRun:
    """Trains `model` on arrays in memory into a run folder, exactly as ``nnfun train`` would.

    Args:
      model: a `Model` (`nnfun.models.mlp`, `cnn`, `sequential`).
      train_data, val_data, test_data: ``(x, y)`` pairs of arrays; x (N, ...) inputs, y (N,)
        integer labels (or (N, out) targets with ``task="regression"``). With
        ``task="reconstruction"`` (an autoencoder: the targets are the preprocessed inputs,
        ``data.targets = "inputs"``) y is not used and may be None.
      loss: a loss name, ``LossSpec``, ``(name, kwargs)`` or ``{"name": ..., **kwargs}``.
      regularizers: entries in the same forms (``("l2", {"lam": 1e-4})``).
      optimizer, learning_rate, optimizer_kwargs: an optax optimiser by name and its
        arguments; or `schedule`, a ``[schedule]`` section (then learning_rate is ignored).
      epochs, batch_size, seed: as ``[training]``; other ``[training]`` keys as keywords
        (``eval_every``, ``engine``, ``target_accuracy``, ...).
      task: "classification", "regression" (as the npz loader's ``data.task``) or
        "reconstruction".
      preprocessing: as ``data.preprocessing``.
      run_dir: the run folder (default ``runs/<name>/<timestamp>``).

    Returns:
      The `TrainedRun` of the finished run (its best checkpoint).

    Raises:
      nnfun.config.ConfigError: an argument that a config could not hold (one line).
    """
    opt = {"name": optimizer, **dict(optimizer_kwargs or {})}
    if schedule is None:
        opt["learning_rate"] = learning_rate
    raw = {"model": model_section(model), "loss": _spec_section(loss),
           "regularizers": [_spec_section(r) for r in regularizers], "optimizer": opt,
           "training": {"epochs": epochs, "batch_size": batch_size, "seed": seed, **training},
           "data": {"name": "npz", "path": "", "task": task, "preprocessing": preprocessing}}
    if task == "reconstruction":
        raw["data"].update(task="regression", targets="inputs")
    if schedule is not None:
        raw["schedule"] = dict(schedule)
    probe = validate({**raw, "data": {"name": "xor"}}, "nnfun.fit", name)  # fail fast, no I/O
    run_dir = Path(run_dir) if run_dir is not None else run.default_run_dir(probe)
    data_path = (run_dir / "data.npz").absolute()
    if not run_dir.exists() or not any(run_dir.iterdir()):
        _save_arrays(data_path, train_data, val_data, test_data)
    raw["data"]["path"] = str(data_path)
    run.train_run(validate(raw, "nnfun.fit", name), run_dir, quiet=quiet,
                  inputs=[data_path.name])
    return load_run(run_dir)


def load_run(run_dir: str | Path, *, which: str = "best") -> TrainedRun:
    """A run folder's config, model and trained parameters.

    Args:
      run_dir: a folder made by ``nnfun train``, `fit` or ``nnfun resume``.
      which: "best" (by validation metric, the latest when none was recorded) or "latest".

    Raises:
      nnfun.run.UserError: not a run folder, or no readable checkpoint.
    """
    run_dir = Path(run_dir)
    config = run.load_run_config(run_dir)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    with run._precision(config.training.dtype):
        setup = run.prepare(config, prep_state=run._load_preprocessing(run_dir))
        state = run.restore_state(run_dir, setup, which=which)
    return TrainedRun(run_dir, config, setup.model, state.params, int(state.step), summary,
                      setup.prep_state)
