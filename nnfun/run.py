"""The training driver: the I/O edge between a `Config` and the pure functions of `nnfun.train`.

A run goes through named stages, as the flax MNIST example does:

1. `prepare(config)`: data (preprocessing fitted on the training split), model, loss,
   regularisers, optimiser and schedule: a `RunSetup`, shared by `train_run`, `eval_run`,
   `resume_run` and `gradcheck_config`;
2. `initial_state(setup)`: parameters from the config's seed, and the optimiser state;
3. `train_run`: the epoch loop (`nnfun.train.make_train_epoch`), with a `RunRecorder` writing
   ``metrics.jsonl``, checkpoints and the progress bar, stopping cleanly on Ctrl-C (a checkpoint
   is saved and the resume command printed) or on a non-finite loss (the last good checkpoint
   is kept);
4. `finish`: the test-split evaluation, ``summary.json`` and plots.

`resume_run(run_dir)` continues a run so that it ends with exactly the parameters an
uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from nnfun import data as data_lib
from nnfun import distributed, fast, gradcheck, optim, preprocessing, train
from nnfun.checkpoint import CheckpointStore
from nnfun.config import Config, ConfigError, build_model, config_from_resolved, load_config
from nnfun.losses import make_targets
from nnfun.models import Model
from nnfun.spec import LossSpec, RegSpec

__all__ = ["RunError", "UserError", "RunSetup", "RunRecorder", "default_run_dir", "prepare",
           "initial_state", "train_run", "resume_run", "eval_run", "load_run_config",
           "restore_state",
           "gradcheck_config"]


class RunError(RuntimeError):
    """A run stopped for a reason the user must see (exit status 1)."""


class UserError(ValueError):
    """A user's mistake found while preparing a run (exit status 2)."""


def default_run_dir(config: Config, root: str | Path = "runs") -> Path:
    """``<root>/<config name>/<timestamp>``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path(root) / config.name / stamp


@contextlib.contextmanager
def _precision(dtype: str) -> Iterator[None]:
    """Runs the block in float64 when asked (x64 switched on only inside it)."""
    if dtype == "float64":
        with jax.enable_x64(True):
            yield
    else:
        yield


# --------------------------------------------------------------------------- 1. preparation


class RunSetup(NamedTuple):
    """Everything a config describes, built once.

    Attributes:
      config: the validated config.
      data: the dataset, preprocessed with `prep_state`.
      prep_state: the fitted preprocessing (saved into the run folder).
      model, loss, regularizers: what the objective is made of.
      optimizer: the optax optimiser (with its schedule).
      learning_rate: step -> learning rate, for the metrics.
      batch_size, steps_per_epoch: a batch size of 0 in the config means the whole set.
      dtype: the parameters' and inputs' float type.
      out_width: the model's number of outputs.
    """

    config: Config
    data: data_lib.Dataset
    prep_state: dict
    model: Model
    loss: LossSpec
    regularizers: tuple[RegSpec, ...]
    optimizer: Any
    learning_rate: Callable[[int], float]
    batch_size: int
    steps_per_epoch: int
    dtype: Any
    out_width: int


def _load_data(config: Config, prep_state: dict | None) -> tuple[data_lib.Dataset, dict]:
    """Loads the dataset and fits (or reuses) the preprocessing on the training split only."""
    try:
        ds = data_lib.load_dataset(config.data["name"], seed=config.training.seed,
                                   **config.kwargs("data"))
        if prep_state is None:
            prep_state = preprocessing.fit_preprocessor(
                ds.x_train, method=config.data.get("preprocessing", "none"),
                n_components=config.data.get("n_components"))
    except (data_lib.DataError, ValueError) as e:
        raise UserError(f"{config.source}: data: {e}") from None
    apply = lambda x: preprocessing.apply_preprocessor(prep_state, x).astype(np.float32)  # noqa: E731
    ds = ds._replace(x_train=apply(ds.x_train), x_val=apply(ds.x_val), x_test=apply(ds.x_test))
    if config.data.get("targets", "labels") == "inputs":
        ds = ds._replace(y_train=ds.x_train, y_val=ds.x_val, y_test=ds.x_test, num_classes=0,
                         task="reconstruction")
    return ds, prep_state


def _batching(config: Config, num_train: int) -> tuple[int, int]:
    """(batch size, steps per epoch); a batch size of 0 means full-batch gradient descent."""
    batch_size = config.training.batch_size or num_train
    if batch_size > num_train:
        raise UserError(f"{config.source}: training.batch_size: expected at most the "
                        f"{num_train} training examples, found {batch_size}")
    return batch_size, num_train // batch_size


def _schedule(config: Config, steps_per_epoch: int) -> optim.Schedule | None:
    """The configured schedule, with step-count arguments scaled when ``unit = "epoch"``."""
    if not config.schedule:
        return None
    sec = dict(config.schedule)
    scale = steps_per_epoch if sec.pop("unit", "step") == "epoch" else 1
    for k in optim.STEP_ARGUMENTS & set(sec):
        v = sec[k]
        sec[k] = ({str(int(b) * scale): s for b, s in v.items()} if isinstance(v, dict)
                  else int(v) * scale)
    try:
        return optim.make_schedule(sec.pop("name"), **sec)
    except (ValueError, TypeError) as e:
        raise UserError(f"{config.source}: schedule: {e}") from None


def _optimizer(config: Config, steps_per_epoch: int) -> tuple[Any, Callable[[int], float]]:
    """The optax optimiser and a step -> learning-rate function for logging."""
    schedule = _schedule(config, steps_per_epoch)
    kw = dict(config.kwargs("optimizer"))
    lr = schedule if schedule is not None else kw.pop("learning_rate")
    kw.pop("learning_rate", None)
    try:
        opt = optim.make_optimizer(config.optimizer["name"], lr,
                                   clip_global_norm=config.optimizer.get("clip_global_norm"), **kw)
    except (ValueError, TypeError) as e:
        raise UserError(f"{config.source}: optimizer: {e}") from None
    return opt, (lambda s: float(schedule(s))) if schedule is not None else (lambda s: float(lr))


def _objective(config: Config) -> tuple[LossSpec, tuple[RegSpec, ...]]:
    regs = tuple(RegSpec.make(r["name"], **config.kwargs("regularizers", i))
                 for i, r in enumerate(config.regularizers))
    return LossSpec.make(config.loss["name"], **config.kwargs("loss")), regs


def _out_width(config: Config, model: Model, ds: data_lib.Dataset, dtype: Any) -> int:
    """The model's output width; a one-line `UserError` when model and data do not fit."""
    try:
        params = jax.eval_shape(lambda k: model.init(k, ds.input_shape, dtype),
                                jax.random.PRNGKey(0))
        out = model.output_shape(params, ds.input_shape)
    except (ValueError, TypeError) as e:
        raise UserError(f"{config.source}: model: {e} (data {ds.name!r})") from None
    width = out[-1] if out else 1
    if ds.num_classes and width not in (ds.num_classes, 1) or (
            ds.num_classes > 2 and width == 1):
        raise UserError(f"{config.source}: model: the last layer has {width} outputs; data "
                        f"{ds.name!r} has {ds.num_classes} classes (expected {ds.num_classes}"
                        f"{' or 1' if ds.num_classes == 2 else ''})")
    if not ds.num_classes and out != tuple(ds.y_train.shape[1:]):
        what = ("reconstruction targets' (the inputs')" if ds.task == "reconstruction"
                else "regression targets'")
        raise UserError(f"{config.source}: model: output shape {out} does not match the "
                        f"{what} shape {tuple(ds.y_train.shape[1:])}")
    return width


def prepare(config: Config, *, prep_state: dict | None = None) -> RunSetup:
    """Builds a run's `RunSetup` from its config; every misfit is a one-line `UserError`.

    Args:
      prep_state: a fitted preprocessing to reuse (a resumed or evaluated run's); fitted on
        the training split when None.
    """
    ds, prep_state = _load_data(config, prep_state)
    dtype = jnp.float64 if config.training.dtype == "float64" else jnp.float32
    batch_size, steps = _batching(config, ds.x_train.shape[0])
    opt, lr_at = _optimizer(config, steps)
    model = build_model(config.model)
    loss, regs = _objective(config)
    return RunSetup(config, ds, prep_state, model, loss, regs, opt, lr_at, batch_size, steps,
                    dtype, _out_width(config, model, ds, dtype))


def initial_state(setup: RunSetup) -> train.TrainState:
    """The run's state at step 0: parameters from ``training.seed`` and the optimiser state."""
    return train.init_train_state(setup.config.training.seed, setup.model.layers,
                                  setup.data.input_shape, setup.optimizer, setup.dtype)


def _targets(setup: RunSetup, labels: np.ndarray) -> jax.Array:
    """Labels as the loss expects them (`nnfun.losses.make_targets`)."""
    return make_targets(setup.loss.name, jnp.asarray(labels), setup.out_width,
                        setup.data.num_classes)


def _to_device(a: Any, dtype: Any) -> jax.Array:
    a = np.asarray(a)
    return jnp.asarray(a, dtype) if a.dtype.kind == "f" else jnp.asarray(a)


# --------------------------------------------------------------------------- 3. recording


class _StopFlag:
    """Turns Ctrl-C (SIGINT) and SIGTERM (what SLURM's scancel and time limit send) into a flag
    checked between steps, so the run stops at a step boundary with its buffers consistent and
    saves a checkpoint. It may be entered again while entered (the outermost ``with`` installs
    and restores the handlers), so a multi-process run holds it from set-up on."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}
        self._depth = 0

    def __enter__(self) -> _StopFlag:
        self._depth += 1
        if self._depth == 1:
            try:
                self._old = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
            except ValueError:  # not the main thread
                self._old = {}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def agreed(self) -> bool:
        """Whether any process asked to stop; all processes must call it at the same point (in
        a multi-process run it is a collective), so they all stop after the same step."""
        if jax.process_count() > 1:
            flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
            self.requested = self.requested or bool(np.any(flags))
        return self.requested

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            for sig, old in self._old.items():
                signal.signal(sig, old)


def _to_float(tree: Any) -> Any:
    return jax.tree.map(lambda v: np.asarray(v).tolist(), tree)


def _evaluate(evaluate: Callable, params: Any, x: Any, y: Any, prefix: str) -> dict[str, Any]:
    if x.shape[0] == 0:
        return {}
    res = _to_float(evaluate(params, x, y))
    return {f"{prefix}_{k}": v for k, v in res.items()}


def _read_records(run_dir: Path) -> list[dict[str, Any]]:
    from nnfun.plots import read_metrics

    try:
        return read_metrics(run_dir)
    except FileNotFoundError:
        return []
    except ValueError as e:
        raise UserError(str(e)) from None


def _ends_unterminated(path: Path) -> bool:
    """Whether the file's last byte is not a newline (an empty or missing file is not)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def _append_record(path: Path, record: dict[str, Any]) -> None:
    """Appends one JSON line and syncs it to disk. A last line that a kill cut short (no
    newline) is first moved into ``metrics.jsonl.cut`` (kept, not lost) and the file replaced
    atomically without it, so that every line of metrics.jsonl is a whole record."""
    if _ends_unterminated(path):
        head, _, fragment = path.read_bytes().rpartition(b"\n")
        with open(path.with_name(path.name + ".cut"), "ab") as f:
            f.write(fragment + b"\n")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(head + b"\n" if head else b"")
        os.replace(tmp, path)
    with open(path, "ab") as f:
        f.write((json.dumps(record) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


@jax.jit
def _all_finite(params: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v))
                              for v in jax.tree_util.tree_leaves(params)]))


def _finite(params: Any) -> bool:
    """Whether every parameter is finite: one compiled program for the whole tree (not one
    per leaf shape), which also runs on parameters spread over several processes."""
    return not jax.tree_util.tree_leaves(params) or bool(_all_finite(params))


def due(epoch: int, every: int) -> bool:
    """Whether an action every `every` epochs (0: never) falls at the end of `epoch` (0-based)."""
    return every > 0 and (epoch + 1) % every == 0


#: Training examples evaluated for the train_* metrics (a fixed prefix of the training split).
TRAIN_EVAL_EXAMPLES = 4096


class RunRecorder:
    """The run folder's writer: ``metrics.jsonl``, checkpoints, the progress bar and the stop
    rules (a non-finite loss, the last epoch). Only the lead process writes files; every
    process saves checkpoints together (orbax needs all of them)."""

    def __init__(self, run_dir: Path, setup: RunSetup, store: CheckpointStore,
                 evaluate: Callable, x_train: jax.Array, *, bar: Any) -> None:
        self.run_dir, self.setup, self.store, self.bar = run_dir, setup, store, bar
        self.evaluate, self.x_train = evaluate, x_train[:TRAIN_EVAL_EXAMPLES]
        self.lead = distributed.is_lead()
        self.param_labels = train.param_layer_labels(setup.model.layers)
        self.started = time.perf_counter()
        self.last_good = store.latest_step()
        # a resumed run keeps its records: one written after the last checkpoint (a kill
        # between the two) is not written again, and the last one is the run's latest
        records = _read_records(run_dir) if self.lead else []
        self.recorded = {r["step"] for r in records}
        self.last: dict[str, Any] = records[-1] if records else {}
        self._losses: list = []
        self._norms: list = []
        self.extra: dict[str, Any] = {}

    def add_epoch(self, epoch: int, state: train.TrainState, metrics: dict) -> None:
        """Keeps an epoch's step metrics; `RunError` at a non-finite loss."""
        if not metrics:
            return
        self._losses.append(np.asarray(metrics["loss"]).ravel())
        if "grad_norms" in metrics:
            self._norms.append(np.asarray(metrics["grad_norms"]))
        self._stop_if_diverged({"loss": float(self._losses[-1][-1])}, epoch, state)

    def _stop_if_diverged(self, losses: dict[str, Any], epoch: int,
                          state: train.TrainState) -> None:
        """`RunError` naming the last good checkpoint when a loss is not finite: the last
        step's, or the evaluation of the parameters it produced (which can overflow first)."""
        bad = {k: v for k, v in losses.items() if k.endswith("loss") and isinstance(v, float)
               and not math.isfinite(v)}
        if not bad:
            return
        name, value = next(iter(bad.items()))
        where = (f"the last good checkpoint is {self.store.path_of(self.last_good)}"
                 if self.last_good is not None else "no checkpoint was saved before it")
        raise RunError(f"non-finite loss {value} at step {int(state.step)} (epoch {epoch + 1}"
                       f"{'' if name == 'loss' else f', {name}'}); {where}")

    def end_epoch(self, epoch: int, state: train.TrainState) -> None:
        """Evaluates, records and checkpoints at the epochs the config asks for."""
        tc = self.setup.config.training
        final = epoch + 1 == tc.epochs
        whole = int(state.step) == (epoch + 1) * self.setup.steps_per_epoch
        if whole and (due(epoch, tc.eval_every) or final):
            self.last = self._record(epoch + 1, state)
            self._stop_if_diverged(self.last, epoch, state)
            if tc.checkpoint_every == 0 or due(epoch, tc.checkpoint_every) or final:
                self.save(state, metric=self._metric(self.last))
        elif due(epoch, tc.checkpoint_every):
            self.save(state)
        self.bar.update(1)

    def save(self, state: train.TrainState, *, metric: float | None = None,
             force: bool = False) -> None:
        """Checkpoints `state`; a state with non-finite parameters is never called good."""
        step = int(state.step)
        if step in self.store.all_steps() or not _finite(state.params):
            return
        self.store.save(step, state, metric=metric, force=force)
        self.last_good = step

    def _metric(self, rec: dict[str, Any]) -> float | None:
        if "val_accuracy" in rec:
            return rec["val_accuracy"]
        return -rec["val_loss"] if "val_loss" in rec else None

    def _record(self, epoch: int, state: train.TrainState) -> dict[str, Any]:
        ds, step = self.setup.data, int(state.step)
        rec = {"step": step, "epoch": epoch,
               "learning_rate": self.setup.learning_rate(max(step - 1, 0)),
               "train_loss_running": float(np.mean([v.mean() for v in self._losses])),
               **_evaluate(self.evaluate, state.params, self.x_train,
                           ds.y_train[:TRAIN_EVAL_EXAMPLES], "train"),
               **_evaluate(self.evaluate, state.params, _to_device(ds.x_val, self.setup.dtype),
                           ds.y_val, "val"),
               "time": time.perf_counter() - self.started,
               **self._grad_norms(), **self.extra}
        rec.pop("train_per_class_accuracy", None)
        self._losses, self._norms, self.extra = [], [], {}
        if self.lead and step not in self.recorded:
            _append_record(self.run_dir / "metrics.jsonl", rec)
            self.recorded.add(step)
        self.bar.set_postfix({k: f"{rec[k]:.4g}" for k in
                              ("train_loss", "train_accuracy", "val_accuracy",
                               "val_reconstruction_error") if k in rec})
        return rec

    def _grad_norms(self) -> dict[str, Any]:
        """``{"grad_norms": {layer: mean}}`` over the sampled steps (rows without NaN); ``{}``
        when no step since the previous record was sampled."""
        if not self.param_labels or not self._norms:
            return {}
        rows = np.concatenate([r.reshape(-1, len(self.param_labels)) for r in self._norms])
        rows = rows[np.all(np.isfinite(rows), axis=1)]
        return {"grad_norms": dict(zip(self.param_labels, rows.mean(0).tolist()))} \
            if len(rows) else {}


# --------------------------------------------------------------------------- 2. and 3. training


def train_run(config: Config, run_dir: str | Path, *, quiet: bool = False, resume: bool = False,
              stop_after_epochs: int | None = None, out: Any = sys.stderr,
              inputs: Sequence[str] = ()) -> dict[str, Any]:
    """Trains `config` into `run_dir` and returns the summary (also written to summary.json).

    Args:
      resume: continue from the latest checkpoint in `run_dir`.
      stop_after_epochs: behave as if Ctrl-C were pressed after this many epochs (for tests).
      inputs: names of files already in a new run folder that belong to the run (the arrays
        `nnfun.fitting.fit` stores there); any other file there refuses a new run.

    Raises:
      UserError: the config does not fit the data (exit status 2 at the CLI).
      RunError: a non-finite loss (exit status 1).
      KeyboardInterrupt: after saving a checkpoint, when the run was interrupted.
    """
    distributed.initialize(config.distributed, where=config.source)
    # Several processes catch SIGINT and SIGTERM from set-up on: a KeyboardInterrupt there
    # would leave the others waiting in a collective (then C++ aborts); a signal in set-up
    # stops the run at its first step boundary instead, agreed by every process.
    stop = _StopFlag()
    with stop if jax.process_count() > 1 else contextlib.nullcontext(), \
            _precision(config.training.dtype):
        run_dir = distributed.agree_on_path(run_dir)
        _check_run_folder(run_dir, resume=resume, inputs=inputs)
        prep = _load_preprocessing(run_dir) if resume else None
        setup = prepare(config, prep_state=prep)  # every check before anything is written
        with _run_folder(run_dir, resume=resume, inputs=inputs):
            if distributed.is_lead():
                _write_run_files(run_dir, setup, resume=resume)
            return _train_and_evaluate(setup, run_dir, stop, quiet=quiet, resume=resume,
                                       stop_after_epochs=stop_after_epochs, out=out)


def _check_run_folder(run_dir: Path, *, resume: bool, inputs: Sequence[str] = ()) -> None:
    """A new run needs a new or empty folder (a path that is not a file); a resumed one its
    own. Reads only."""
    if run_dir.exists() and not run_dir.is_dir() or any(
            p.exists() and not p.is_dir() for p in run_dir.parents):
        raise UserError(f"{run_dir}: cannot use as a run folder: a file is in the way")
    if not resume and run_dir.is_dir() and any(p.name not in inputs for p in run_dir.iterdir()):
        raise UserError(f"{run_dir}: already holds a run; continue it with 'nnfun resume "
                        f"{run_dir}' or train into a new --out folder")


@contextlib.contextmanager
def _run_folder(run_dir: Path, *, resume: bool, inputs: Sequence[str]) -> Iterator[None]:
    """Holds the run folder for one run: one process at a time may write a folder (process 0
    locks it), and the checks are made again under the lock."""
    try:
        if distributed.is_lead():
            run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{run_dir}: cannot use as a run folder: {e.strerror or e}") from None
    with _locked(run_dir) if distributed.is_lead() else contextlib.nullcontext():
        _check_run_folder(run_dir, resume=resume, inputs=inputs)
        if jax.process_count() > 1:  # every process has checked before anyone writes
            multihost_utils.sync_global_devices("nnfun: run folder checked")
        yield


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """An exclusive, non-blocking `flock` on the run folder itself (no lock file in it); the
    kernel drops it when the process ends, however it ends."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{run_dir}: another nnfun process is writing this run "
                            f"folder") from None
        yield
    finally:
        os.close(fd)


def _write_run_files(run_dir: Path, setup: RunSetup, *, resume: bool) -> None:
    """config.json first (atomically: a folder with it is a run that `resume` can continue),
    then the preprocessing and the metrics file, each only where it is missing."""
    if not resume:
        tmp = run_dir / "config.json.tmp"
        tmp.write_text(json.dumps(setup.config.resolved(), indent=2))
        os.replace(tmp, run_dir / "config.json")
    if not (run_dir / "preprocessing.npz").is_file():
        preprocessing.save_preprocessor(setup.prep_state, run_dir / "preprocessing.npz")
    if not (run_dir / "metrics.jsonl").is_file():
        (run_dir / "metrics.jsonl").write_text("")


def _load_preprocessing(run_dir: Path) -> dict | None:
    """The run's fitted preprocessing; None when a kill came before it was written (it is
    fitted again, the same way, from the same data)."""
    path = run_dir / "preprocessing.npz"
    if not path.exists():
        return None
    try:
        return preprocessing.load_preprocessor(path)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: cannot read the run's preprocessing: {e}") from None


def _train_and_evaluate(setup: RunSetup, run_dir: Path, stop: _StopFlag, *, quiet: bool,
                        resume: bool, stop_after_epochs: int | None,
                        out: Any) -> dict[str, Any]:
    """Stages 2 to 4: the initial (or restored) state, the epoch loop and `finish`."""
    from tqdm.auto import tqdm

    tc = setup.config.training
    place, state, x_train, y_train = _placed(setup, initial_state(setup))
    store = CheckpointStore(run_dir / "checkpoints", keep_last=tc.keep_checkpoints)
    if resume:
        state = _restore(store, state, run_dir, out)
        if int(state.step) >= tc.epochs * setup.steps_per_epoch and \
                (run_dir / "summary.json").is_file():
            raise UserError(f"{run_dir}: finished at step {int(state.step)}; nothing to resume "
                            f"('nnfun eval {run_dir}' evaluates it)")
    train_epoch, evaluate, crosscheck, dispatch = _compiled(setup, place, state)
    start_epoch = int(state.step) // setup.steps_per_epoch
    bar = tqdm(total=tc.epochs, initial=start_epoch, file=out, unit="epoch",
               disable=quiet or not distributed.is_lead(), desc=setup.config.name,
               dynamic_ncols=True)
    recorder = RunRecorder(run_dir, setup, store, evaluate, x_train, bar=bar)
    single = jax.process_count() == 1
    with stop, contextlib.closing(bar):
        for epoch in range(start_epoch, tc.epochs):
            # forward, backward and update: one shuffled epoch
            done = int(state.step) - epoch * setup.steps_per_epoch if epoch == start_epoch \
                else 0  # known after the first epoch: no wait for the device
            state, metrics = train_epoch(state, x_train, y_train, epoch, done=done,
                                         should_stop=(lambda: stop.requested) if single else None)
            recorder.add_epoch(epoch, state, metrics)
            # the engine cross-check on the epoch's first batch, when a multiple of its step
            # interval falls in this epoch
            if crosscheck is not None and _crosscheck_due(epoch, setup.steps_per_epoch,
                                                          tc.crosscheck_every):
                recorder.extra["engine_rel_diff"] = crosscheck(state, x_train, y_train, epoch)
            # evaluate, record and checkpoint
            recorder.end_epoch(epoch, state)
            # termination: Ctrl-C (agreed by every process) or the test hook
            if stop_after_epochs is not None and epoch + 1 - start_epoch >= stop_after_epochs:
                stop.requested = True
            if stop.agreed() and int(state.step) < tc.epochs * setup.steps_per_epoch:
                _interrupted(recorder, state, run_dir, out)
    return finish(setup, run_dir, state.params, evaluate, recorder, dispatch)


def _placed(setup: RunSetup, state: train.TrainState) -> tuple[Any, Any, jax.Array, jax.Array]:
    """The placement, and the state and training data put on the run's devices."""
    tc, ds = setup.config.training, setup.data
    place = distributed.make_placement(setup.config.distributed.enabled,
                                       setup.config.distributed.mesh, setup.batch_size,
                                       setup.config.source, configured_batch_size=tc.batch_size)
    x_train = _to_device(ds.x_train, setup.dtype)
    y_train = _to_device(_targets(setup, ds.y_train), setup.dtype)
    return (place, place.put_state(state), place.put_examples(x_train),
            place.put_examples(y_train))


def _restore(store: CheckpointStore, template: train.TrainState, run_dir: Path, out: Any, *,
             first: int | None = None) -> train.TrainState:
    """Checkpoint `first` (default the newest) or, where it cannot be read, the newest one
    before it that can; says which ones it passed over."""
    steps = sorted(store.all_steps(), reverse=True)
    if first is not None:
        steps = [first] + [s for s in steps if s != first]
    if not steps:
        print("nnfun: no checkpoint was saved yet; starting from step 0", file=out)
        return template
    for step in steps:
        try:
            state = store.restore(template, step=step)
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: try the one before
            print(f"nnfun: checkpoint {store.path_of(step)} cannot be read "
                  f"({type(e).__name__}); trying the one before it", file=out)
            continue
        if step != steps[0]:
            print(f"nnfun: using checkpoint step {step}", file=out)
        return state
    raise UserError(f"{run_dir / 'checkpoints'}: no checkpoint can be read") from None


def _compiled(setup: RunSetup, place: Any, state: train.TrainState) -> tuple:
    """The run's compiled functions: ``(train_epoch, evaluate, crosscheck or None,
    dispatch)``. ``training.fast_paths`` switches in `nnfun.fast`'s variants and compiler
    options; the engine cross-check always compares the canonical paths."""
    tc, layers = setup.config.training, setup.model.layers
    options = fast.compiler_options(layers) if tc.fast_paths else None
    grad_norm_every = (min(10, setup.steps_per_epoch) if tc.grad_norm_every is None
                       else tc.grad_norm_every)
    body = place.step(train.make_step_body(layers, setup.loss, setup.regularizers,
                                           setup.optimizer, engine=tc.engine,
                                           grad_norm_every=grad_norm_every,
                                           fast_paths=tc.fast_paths), state)
    dispatch = fast.choose_dispatch(layers, tc.dispatch, tc.engine)
    train_epoch = train.make_train_epoch(body, setup.batch_size, dispatch=dispatch,
                                         compiler_options=options)
    evaluate = train.make_eval_fn(layers, setup.loss, setup.data.num_classes,
                                  reconstruction=setup.data.task == "reconstruction",
                                  compiler_options=options)
    crosscheck = None
    if tc.crosscheck_every:
        check = train.make_engine_crosscheck(layers, setup.loss, setup.regularizers)

        def crosscheck(state: train.TrainState, x: jax.Array, y: jax.Array, epoch: int) -> float:
            i0 = train.epoch_permutation(state.key, epoch, x.shape[0], setup.batch_size)[0]
            return float(check(state.params, x[i0], y[i0], train.dropout_key(state)))

    return train_epoch, evaluate, crosscheck, dispatch


def _crosscheck_due(epoch: int, steps_per_epoch: int, every: int) -> bool:
    """Whether a multiple of `every` steps lies in epoch `epoch`'s steps."""
    return (epoch + 1) * steps_per_epoch // every > epoch * steps_per_epoch // every


def _interrupted(recorder: RunRecorder, state: train.TrainState, run_dir: Path,
                 out: Any) -> None:
    """Saves a checkpoint of the interrupted run, prints how to resume, and stops."""
    recorder.save(state, force=True)
    recorder.store.close()
    print(f"interrupted at step {int(state.step)}; checkpoint saved. Resume with: "
          f"nnfun resume {run_dir}", file=out)
    raise KeyboardInterrupt


# --------------------------------------------------------------------------- 4. finishing


def finish(setup: RunSetup, run_dir: Path, params: Any, evaluate: Callable,
           recorder: RunRecorder, dispatch: str) -> dict[str, Any]:
    """Evaluates on the test split, writes ``summary.json`` and draws the plots."""
    from nnfun.plots import plot_run

    config, ds, last = setup.config, setup.data, recorder.last
    recorder.store.close()
    test = _evaluate(evaluate, params, _to_device(ds.x_test, setup.dtype), ds.y_test, "test")
    target = config.training.target_accuracy
    summary = {
        "config": config.name, "run_dir": str(run_dir), "steps": last.get("step"),
        "epochs": last.get("epoch"), "seconds": round(time.perf_counter() - recorder.started, 3),
        "dispatch": dispatch, "engine": config.training.engine,
        "num_params": int(sum(np.size(v) for v in jax.tree_util.tree_leaves(params))),
        **{k: v for k, v in last.items() if k.startswith(("train_", "val_"))
           and k != "train_loss_running"},
        **test,
    }
    if target is not None and "test_accuracy" in summary:
        summary["target_accuracy"] = target
        summary["reached_target"] = summary["test_accuracy"] >= target
    if distributed.is_lead():
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_run(run_dir)
    return summary


# --------------------------------------------------------------------------- other entry points


def load_run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The config recorded in a run folder (``distributed.*`` overridable, see
    `nnfun.config.config_from_resolved`)."""
    path = Path(run_dir) / "config.json"
    try:
        resolved = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found; is {run_dir} a run folder made by 'nnfun train'?") \
            from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON: {e}") from None
    try:
        return config_from_resolved(resolved, str(path), overrides)
    except ConfigError as e:
        raise UserError(str(e)) from None


def resume_run(run_dir: str | Path, *, quiet: bool = False, overrides: Sequence[str] = (),
               stop_after_epochs: int | None = None, out: Any = sys.stderr) -> dict[str, Any]:
    """Continues an interrupted run from its latest checkpoint. `overrides` may change the
    ``distributed`` section only (e.g. each process's ``distributed.process_id``)."""
    return train_run(load_run_config(run_dir, overrides), run_dir, quiet=quiet, resume=True,
                     stop_after_epochs=stop_after_epochs, out=out)


def eval_run(run_dir: str | Path, *, which: str = "best") -> dict[str, Any]:
    """Evaluates a run's best (or latest) checkpoint on its validation and test splits."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    with _precision(config.training.dtype):
        setup = prepare(config, prep_state=preprocessing.load_preprocessor(
            run_dir / "preprocessing.npz"))
        state = restore_state(run_dir, setup, which=which)
        evaluate = train.make_eval_fn(setup.model.layers, setup.loss, setup.data.num_classes,
                                      reconstruction=setup.data.task == "reconstruction")
        ds = setup.data
        res = {"step": int(state.step),
               **_evaluate(evaluate, state.params, _to_device(ds.x_val, setup.dtype), ds.y_val,
                           "val"),
               **_evaluate(evaluate, state.params, _to_device(ds.x_test, setup.dtype),
                           ds.y_test, "test")}
    (run_dir / "eval.json").write_text(json.dumps(res, indent=2))
    return res


def restore_state(run_dir: str | Path, setup: RunSetup, *,
                  which: str = "best") -> train.TrainState:
    """A run's best (by validation metric; the latest where none was recorded) or latest
    checkpoint, or the newest readable one before it, in `initial_state(setup)`'s structure.

    Raises:
      UserError: the run has no checkpoint.
    """
    run_dir = Path(run_dir)
    with CheckpointStore(run_dir / "checkpoints") as store:
        if store.latest_step() is None:
            raise UserError(f"{run_dir / 'checkpoints'}: no checkpoint to restore")
        best = store.best_step() if which == "best" else None
        return _restore(store, initial_state(setup), run_dir, sys.stderr, first=best)


def gradcheck_config(path: str, overrides: Sequence[str] = (), *, batch: int = 8,
                     tol: float = 1e-6, max_coords: int = 512) -> gradcheck.GradcheckReport:
    """Runs `nnfun.gradcheck.check_gradients` on a config's model, loss, regularisers and
    `batch` training examples drawn at random with the config's seed (preprocessed as the
    config says), with the parameters `initial_state` starts from.

    Finite differences are only meaningful where the objective is smooth: a ReLU, max or hinge
    sitting exactly on its kink (within h) shows up as a finite-difference failure of that
    leaf while manual and autodiff still agree.
    """
    config = load_config(path, overrides)
    with jax.enable_x64(True):
        setup = prepare(config)._replace(dtype=jnp.float64)
        ds, seed = setup.data, config.training.seed
        params = train.init_params(seed, setup.model.layers, ds.input_shape, jnp.float64)
        # a seeded random batch: the first examples of a set can sit on a kink (the centre of
        # a spiral is x = 0, where a ReLU with zero bias is not differentiable)
        idx = np.random.default_rng(seed).choice(ds.x_train.shape[0],
                                                 min(batch, ds.x_train.shape[0]), replace=False)
        x = jnp.asarray(ds.x_train[idx], jnp.float64)
        y = _targets(setup, ds.y_train[idx])
        key = train.dropout_key(train.TrainState(params, (), jnp.zeros((), jnp.int32),
                                                 jax.random.PRNGKey(seed)))
        return gradcheck.check_gradients(setup.model.layers, setup.loss, params, x, y,
                                         regularizers=setup.regularizers, key=key, tol_fd=tol,
                                         max_coords=max_coords, seed=seed)
