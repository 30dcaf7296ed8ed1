"""The training driver: the I/O edge between a `Config` and the pure functions of `nnfun.train`.

`train_run(config, run_dir)` loads and preprocesses the data, builds model, optimiser and
schedule, trains with a progress bar, evaluates, writes ``metrics.jsonl``, ``summary.json``,
checkpoints and plots into the run folder, and stops cleanly on Ctrl-C (a checkpoint is saved
and the resume command printed) or on a non-finite loss (the last good checkpoint is kept).
`resume_run(run_dir)` continues a run so that it ends with exactly the parameters an
uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from nnfun import data as data_lib
from nnfun import distributed, optim, preprocessing, train
from nnfun.checkpoint import CheckpointStore
from nnfun.config import Config, ConfigError, build_model, config_from_resolved
from nnfun.spec import LossSpec, RegSpec


class RunError(RuntimeError):
    """A run stopped for a reason the user must see (exit status 1)."""


class UserError(ValueError):
    """A user's mistake found while preparing a run (exit status 2)."""


def default_run_dir(config: Config, root: str | Path = "runs") -> Path:
    """``<root>/<config name>/<timestamp>``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path(root) / config.name / stamp


@contextlib.contextmanager
def precision(dtype: str) -> Iterator[None]:
    """Runs the block in float64 when asked (x64 switched on only inside it)."""
    if dtype == "float64":
        with jax.enable_x64(True):
            yield
    else:
        yield


# --------------------------------------------------------------------------- preparation


def load_data(config: Config, run_dir: Path | None = None,
              prep_state: dict | None = None) -> tuple[data_lib.Dataset, dict]:
    """Loads the dataset and fits (or reuses) the preprocessing on the training split only."""
    try:
        ds = data_lib.load_dataset(config.data["name"], seed=config.training.seed,
                                   **config.kwargs("data"))
    except data_lib.DataError as e:
        raise UserError(f"{config.source}: data: {e}") from None
    method = config.data.get("preprocessing", "none")
    if prep_state is None:
        prep_state = preprocessing.fit_preprocessor(
            ds.x_train, method=method, n_components=config.data.get("n_components"))
    apply = lambda x: preprocessing.apply_preprocessor(prep_state, x).astype(np.float32)  # noqa: E731
    ds = ds._replace(x_train=apply(ds.x_train), x_val=apply(ds.x_val), x_test=apply(ds.x_test))
    if run_dir is not None:
        preprocessing.save_preprocessor(prep_state, run_dir / "preprocessing.npz")
    return ds, prep_state


def steps_per_epoch(config: Config, num_train: int) -> tuple[int, int]:
    """(batch size, steps per epoch); a batch size of 0 means full-batch gradient descent."""
    bs = config.training.batch_size or num_train
    if bs > num_train:
        raise UserError(f"{config.source}: training.batch_size: expected at most the "
                        f"{num_train} training examples, found {bs}")
    return bs, num_train // bs


def build_schedule(config: Config, spe: int) -> optim.Schedule | None:
    """The configured schedule, with step-count arguments scaled when ``unit = "epoch"``."""
    if not config.schedule:
        return None
    sec = dict(config.schedule)
    scale = spe if sec.pop("unit", "step") == "epoch" else 1
    for k in optim.STEP_ARGUMENTS & set(sec):
        v = sec[k]
        sec[k] = ({str(int(b) * scale): s for b, s in v.items()} if isinstance(v, dict)
                  else int(v) * scale)
    try:
        return optim.make_schedule(sec.pop("name"), **sec)
    except (ValueError, TypeError) as e:
        raise UserError(f"{config.source}: schedule: {e}") from None


def build_optimizer(config: Config, spe: int) -> tuple[Any, Callable[[int], float]]:
    """The optax optimiser and a step -> learning-rate function for logging."""
    schedule = build_schedule(config, spe)
    kw = dict(config.kwargs("optimizer"))
    lr = schedule if schedule is not None else kw.pop("learning_rate")
    kw.pop("learning_rate", None)
    try:
        opt = optim.make_optimizer(config.optimizer["name"], lr,
                                   clip_global_norm=config.optimizer.get("clip_global_norm"), **kw)
    except (ValueError, TypeError) as e:
        raise UserError(f"{config.source}: optimizer: {e}") from None
    return opt, (lambda s: float(schedule(s))) if schedule is not None else (lambda s: float(lr))


def loss_and_regs(config: Config) -> tuple[LossSpec, tuple[RegSpec, ...]]:
    regs = tuple(RegSpec.make(r["name"], **config.kwargs("regularizers", i))
                 for i, r in enumerate(config.regularizers))
    return LossSpec.make(config.loss["name"], **config.kwargs("loss")), regs


def init_state(config: Config, model: Any, ds: data_lib.Dataset, opt: Any,
               dtype: Any) -> train.TrainState:
    """The initial train state; a one-line `UserError` when the data's shape does not fit."""
    try:
        return train.init_train_state(config.training.seed, model.layers, ds.input_shape, opt,
                                      dtype)
    except (ValueError, TypeError) as e:
        raise UserError(f"{config.source}: model: does not fit data {ds.name!r} with input "
                        f"shape {tuple(ds.input_shape)}: {e}") from None


def check_fit(config: Config, model: Any, params: Any, ds: data_lib.Dataset) -> int:
    """The model's output width; a one-line `UserError` when model and data do not fit."""
    try:
        out = model.output_shape(params, ds.input_shape)
    except (ValueError, TypeError) as e:
        raise UserError(f"{config.source}: model: does not fit data {ds.name!r} with input shape "
                        f"{tuple(ds.input_shape)}: {e}") from None
    width = out[-1] if out else 1
    if ds.num_classes and width not in (ds.num_classes, 1) or (
            ds.num_classes > 2 and width == 1):
        raise UserError(f"{config.source}: model: the last layer has {width} outputs; data "
                        f"{ds.name!r} has {ds.num_classes} classes (expected {ds.num_classes}"
                        f"{' or 1' if ds.num_classes == 2 else ''})")
    if not ds.num_classes and out != tuple(ds.y_train.shape[1:]):
        raise UserError(f"{config.source}: model: output shape {out} does not match the "
                        f"regression targets' shape {tuple(ds.y_train.shape[1:])}")
    return width


# --------------------------------------------------------------------------- the loop


class _StopFlag:
    """Turns Ctrl-C into a flag checked between steps (donated buffers stay consistent)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> _StopFlag:
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def agreed(self) -> bool:
        """Whether any process asked to stop; all processes must call it at the same point (in
        a multi-process run it is a collective), so they all stop after the same step."""
        if jax.process_count() > 1:
            flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
            self.requested = bool(np.any(flags))
        return self.requested

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _to_float(tree: Any) -> Any:
    return jax.tree.map(lambda v: np.asarray(v).tolist(), tree)


def _mean_grad_norms(names: list[str], gnorms: list) -> dict[str, Any]:
    """``{"grad_norms": {layer: mean}}`` over the sampled steps (rows without NaN); ``{}`` when
    no step since the previous record was sampled."""
    rows = [np.asarray(g).reshape(-1, len(names)) for g in gnorms if g is not None] \
        if names else []
    if not rows:
        return {}
    rows = np.concatenate(rows)  # (steps, layers): an epoch's stack or one step's row each
    rows = rows[np.all(np.isfinite(rows), axis=1)]
    return {"grad_norms": dict(zip(names, rows.mean(0).tolist()))} if len(rows) else {}


def _evaluate(evaluate: Callable, params: Any, x: Any, y: Any, prefix: str) -> dict[str, Any]:
    if x.shape[0] == 0:
        return {}
    res = _to_float(evaluate(params, x, y))
    return {f"{prefix}_{k}": v for k, v in res.items()}


def train_run(config: Config, run_dir: str | Path, *, quiet: bool = False, resume: bool = False,
              stop_after_epochs: int | None = None, out: Any = sys.stderr) -> dict[str, Any]:
    """Trains `config` into `run_dir` and returns the summary (also written to summary.json).

    Args:
      resume: continue from the latest checkpoint in `run_dir`.
      stop_after_epochs: behave as if Ctrl-C were pressed after this many epochs (for tests).

    Raises:
      UserError: the config does not fit the data (exit status 2 at the CLI).
      RunError: a non-finite loss (exit status 1).
      KeyboardInterrupt: after saving a checkpoint, when the run was interrupted.
    """
    distributed.initialize(config.distributed, where=config.source)
    run_dir = distributed.agree_on_path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with precision(config.training.dtype):
        return _train(config, run_dir, quiet=quiet, resume=resume,
                      stop_after_epochs=stop_after_epochs, out=out)


def _train(config: Config, run_dir: Path, *, quiet: bool, resume: bool,
           stop_after_epochs: int | None, out: Any) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from nnfun.plots import plot_run

    tc = config.training
    lead = distributed.is_lead()
    single = jax.process_count() == 1
    prep = preprocessing.load_preprocessor(run_dir / "preprocessing.npz") if resume else None
    ds, _ = load_data(config, run_dir if lead else None, prep)
    dtype = jnp.float64 if tc.dtype == "float64" else jnp.float32
    bs, spe = steps_per_epoch(config, ds.x_train.shape[0])
    opt, lr_at = build_optimizer(config, spe)
    model = build_model(config.model)
    loss, regs = loss_and_regs(config)
    state = init_state(config, model, ds, opt, dtype)
    width = check_fit(config, model, state.params, ds)
    to_dev = lambda a: jnp.asarray(a, dtype) if a.dtype.kind == "f" else jnp.asarray(a)  # noqa: E731
    y_train = train.make_targets(loss.name, jnp.asarray(ds.y_train), width, ds.num_classes)
    x_train, y_train = to_dev(ds.x_train), to_dev(np.asarray(y_train))
    place = distributed.make_placement(config.distributed.enabled, config.distributed.mesh, bs,
                                       config.source, configured_batch_size=tc.batch_size)
    state = place.put_state(state)
    x_train, y_train = place.put_examples(x_train), place.put_examples(y_train)
    if not resume and lead:
        (run_dir / "config.json").write_text(json.dumps(config.resolved(), indent=2))
        (run_dir / "metrics.jsonl").write_text("")

    store = CheckpointStore(run_dir / "checkpoints", keep_last=tc.keep_checkpoints)
    if resume:
        if store.latest_step() is None:
            raise UserError(f"{run_dir}: no checkpoint to resume from")
        state = store.restore(state)
    start_step = int(state.step)
    start_epoch, offset = divmod(start_step, spe)

    gn_every = min(10, spe) if tc.grad_norm_every is None else tc.grad_norm_every
    body = place.step(train.make_step_body(model.layers, loss, regs, opt, engine=tc.engine,
                                           grad_norm_every=gn_every), state)
    dispatch = train.choose_dispatch(model.layers, tc.dispatch, tc.engine)
    run_epoch = (train.make_epoch_fn(body, bs, layers=model.layers) if dispatch == "scan"
                 else None)
    run_step = (train.make_permuted_step(body, layers=model.layers) if dispatch == "loop"
                else None)
    permutation = jax.jit(train.epoch_permutation, static_argnums=(2, 3))
    evaluate = train.make_eval_fn(model.layers, loss, ds.num_classes)
    crosscheck = (train.make_engine_crosscheck(model.layers, loss, regs)
                  if tc.crosscheck_every else None)
    names = train.layer_names(model.layers)
    metric_key = "val_accuracy" if ds.num_classes else "val_loss"
    t0 = time.perf_counter()
    last_good: int | None = store.latest_step()
    last_record: dict[str, Any] = {}

    def record(epoch: int, losses: list, gnorms: list, extra: dict) -> dict[str, Any]:
        step = int(state.step)
        rec = {"step": step, "epoch": epoch, "learning_rate": lr_at(max(step - 1, 0)),
               "train_loss_running": float(np.mean([np.mean(v) for v in losses])),
               **_evaluate(evaluate, state.params, x_train[: 4096], ds.y_train[: 4096], "train"),
               **_evaluate(evaluate, state.params, to_dev(ds.x_val), ds.y_val, "val"),
               "time": time.perf_counter() - t0,
               **_mean_grad_norms(names, gnorms),
               **extra}
        rec.pop("train_per_class_accuracy", None)
        if lead:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
        return rec

    bar = tqdm(total=tc.epochs, initial=start_epoch, disable=quiet or not lead, file=out,
               unit="epoch", desc=config.name, dynamic_ncols=True)
    interrupted = False
    with _StopFlag() as stop:
        losses: list = []
        gnorms: list = []
        extra: dict[str, Any] = {}
        for epoch in range(start_epoch, tc.epochs):
            if dispatch == "scan":
                state, m = run_epoch(state, x_train, y_train, jnp.asarray(epoch))
                losses.append(m["loss"])
                gnorms.append(m.get("grad_norms"))
            else:
                idx = permutation(state.key, epoch, x_train.shape[0], bs)
                for _ in range(offset if epoch == start_epoch else 0, spe):
                    state, m = run_step(state, x_train, y_train, idx)  # row state.step % spe
                    losses.append(m["loss"])  # no per-step eager ops: each is a dispatch
                    gnorms.append(m.get("grad_norms"))
                    if stop.requested and single:  # processes agree at the epoch's end
                        break
            last_loss = float(np.asarray(losses[-1]).ravel()[-1])
            if not math.isfinite(last_loss):
                bar.close()
                where = (f"the last good checkpoint is {store.path_of(last_good)}"
                         if last_good is not None else "no checkpoint was saved before it")
                raise RunError(f"non-finite loss {last_loss} at step {int(state.step)} "
                               f"(epoch {epoch + 1}); {where}")
            if crosscheck is not None and (epoch + 1) * spe // tc.crosscheck_every > \
                    epoch * spe // tc.crosscheck_every:
                i0 = permutation(state.key, epoch, x_train.shape[0], bs)[0]
                extra["engine_rel_diff"] = float(crosscheck(
                    state.params, x_train[i0], y_train[i0], train.dropout_key(state)))
            done = int(state.step) == (epoch + 1) * spe
            final = epoch + 1 == tc.epochs
            if done and ((epoch + 1) % tc.eval_every == 0 or final):
                last_record = record(epoch + 1, losses, gnorms, extra)
                losses, gnorms, extra = [], [], {}
                metric = last_record.get(metric_key)
                if metric is not None and metric_key == "val_loss":
                    metric = -metric
                if tc.checkpoint_every == 0 or (epoch + 1) % tc.checkpoint_every == 0 or final:
                    store.save(int(state.step), state, metric=metric)
                    last_good = int(state.step)
                bar.set_postfix({k: f"{last_record[k]:.4g}" for k in
                                 ("train_loss", "train_accuracy", "val_accuracy")
                                 if k in last_record})
            elif tc.checkpoint_every and (epoch + 1) % tc.checkpoint_every == 0:
                store.save(int(state.step), state)
                last_good = int(state.step)
            bar.update(1)
            if stop_after_epochs is not None and epoch + 1 - start_epoch >= stop_after_epochs:
                stop.requested = True
            if stop.agreed() and not final:
                interrupted = True
                break
    bar.close()
    if interrupted:
        if int(state.step) not in store.all_steps():
            store.save(int(state.step), state, force=True)
        store.close()
        print(f"interrupted at step {int(state.step)}; checkpoint saved. Resume with: "
              f"nnfun resume {run_dir}", file=out)
        raise KeyboardInterrupt
    summary = finish(config, run_dir, state.params, model, evaluate, ds, to_dev, last_record,
                     time.perf_counter() - t0, dispatch)
    store.close()
    if lead:
        plot_run(run_dir)
    return summary


def finish(config: Config, run_dir: Path, params: Any, model: Any, evaluate: Callable,
           ds: data_lib.Dataset, to_dev: Callable, last: dict[str, Any], seconds: float,
           dispatch: str) -> dict[str, Any]:
    """Evaluates on the test split and writes ``summary.json``."""
    test = _evaluate(evaluate, params, to_dev(ds.x_test), ds.y_test, "test")
    target = config.training.target_accuracy
    summary = {
        "config": config.name, "run_dir": str(run_dir), "steps": last.get("step"),
        "epochs": last.get("epoch"), "seconds": round(seconds, 3), "dispatch": dispatch,
        "engine": config.training.engine,
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
    return summary


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
    with precision(config.training.dtype):
        prep = preprocessing.load_preprocessor(run_dir / "preprocessing.npz")
        ds, _ = load_data(config, None, prep)
        dtype = jnp.float64 if config.training.dtype == "float64" else jnp.float32
        bs, spe = steps_per_epoch(config, ds.x_train.shape[0])
        opt, _ = build_optimizer(config, spe)
        model = build_model(config.model)
        loss, _ = loss_and_regs(config)
        template = init_state(config, model, ds, opt, dtype)
        with CheckpointStore(run_dir / "checkpoints") as store:
            step = store.best_step() if which == "best" else None
            if store.latest_step() is None:
                raise UserError(f"{run_dir / 'checkpoints'}: no checkpoint to evaluate")
            state = store.restore(template, step=step)
        evaluate = train.make_eval_fn(model.layers, loss, ds.num_classes)
        cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
        res = {"step": int(state.step),
               **_evaluate(evaluate, state.params, cast(ds.x_val), ds.y_val, "val"),
               **_evaluate(evaluate, state.params, cast(ds.x_test), ds.y_test, "test")}
    (run_dir / "eval.json").write_text(json.dumps(res, indent=2))
    return res
