"""Checkpoints of a train state with orbax-checkpoint (an I/O edge module; never pickle).

A `CheckpointStore` wraps one `orbax.checkpoint.CheckpointManager` over a directory, usually
``runs/<name>/<timestamp>/checkpoints``. Each step lives in ``<directory>/<step>/``.

Contract:

- the state is any pytree of arrays, typically ``TrainState(params, opt_state, step, key)``
  (a list of parameter dicts, some ``{}``; an optax state with named tuples and empty states; an
  int32 scalar step; a uint32[2] legacy key). Arrays are restored bitwise, with their dtypes;
- `restore` rebuilds exactly the pytree structure of the template it is given (named tuples come
  back as the same named tuples), so the template must match the saved tree;
- retention keeps the last ``keep_last`` steps and, with ``keep_best``, the step with the best
  ``metric`` (highest for ``best_mode="max"``, lowest for ``"min"``) even when it is older. One
  manager does both: orbax's ``AnyPreservationPolicy([LatestN(keep_last), BestN(n=1)])``;
- writes are atomic: orbax writes ``<step>.orbax-checkpoint-tmp`` and renames it when complete,
  and `save` returns only once the checkpoint is finalized on disk (saves are synchronous);
- several JAX processes (multi-host): every process must call `save`, `restore` and `close` with
  the same arguments, on a directory that all of them see (orbax synchronises them and writes
  each process's shards).

Orbax logs at INFO through absl; this module raises the ``absl`` logger to WARNING while it calls
orbax, so a command-line user does not see a wall of logs.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

__all__ = ["CheckpointStore"]

PyTree = Any

_METRIC_KEY = "metric"
_NOISY_WARNINGS = ("did not provide metrics",)


class _DropNoise(logging.Filter):
    """Drops orbax warnings that are expected in normal use (a save without a metric)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _NOISY_WARNINGS)


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Raises the absl logger (orbax's) to at least WARNING for the duration of the block."""
    logger = logging.getLogger("absl")
    old_level = logger.level
    noise = _DropNoise()
    logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    logger.addFilter(noise)
    try:
        yield
    finally:
        logger.removeFilter(noise)
        logger.setLevel(old_level)


def _metric_of(metrics: dict[str, float]) -> float:
    return metrics[_METRIC_KEY]


class CheckpointStore:
    """Saves and restores train states in one directory, keeping the last k and the best.

    All JAX processes must construct the store, and call `save`, `restore` and `close`, together
    with the same arguments; the directory must be visible to all of them.

    Example::

        with CheckpointStore(run_dir / "checkpoints", keep_last=3) as store:
            store.save(int(state.step), state, metric=val_accuracy)
            state = store.restore(state)          # latest
            best = store.restore_best(state)      # highest val_accuracy
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep_last: int = 3,
        keep_best: bool = True,
        best_mode: str = "max",
    ) -> None:
        """Opens (without creating) a checkpoint directory; `save` creates it.

        Args:
            directory: folder holding one sub-folder per step.
            keep_last: number of most recent checkpoints kept, at least 1.
            keep_best: also keep the checkpoint with the best metric, however old.
            best_mode: "max" if a higher metric is better (accuracy), "min" if lower (loss).

        Raises:
            ValueError: if ``keep_last < 1`` or ``best_mode`` is not "max" or "min".
        """
        if keep_last < 1:
            raise ValueError(f"CheckpointStore: keep_last must be >= 1, got {keep_last}")
        if best_mode not in ("max", "min"):
            raise ValueError(
                f"CheckpointStore: best_mode must be 'max' or 'min', got {best_mode!r}"
            )
        self.directory = Path(directory).absolute()
        self._name_format = ocp.path.step.standard_name_format()
        policies: list[ocm.PreservationPolicy] = [ocm.LatestN(n=keep_last)]
        if keep_best:
            policies.append(
                ocm.BestN(
                    get_metric_fn=_metric_of,
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            best_fn=_metric_of,  # records metrics and ranks `best_step`, whatever `keep_best`
            best_mode=best_mode,
            step_name_format=self._name_format,
            create=False,
            enable_async_checkpointing=False,
        )
        with _quiet_orbax():
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._closed = False

    def save(
        self, step: int, state: PyTree, *, metric: float | None = None, force: bool = False
    ) -> Path:
        """Writes ``state`` as checkpoint ``step`` and prunes old checkpoints.

        Args:
            step: the training step; must be greater than the latest saved step unless ``force``.
            state: a pytree of arrays (e.g. a TrainState).
            metric: the quantity ranking checkpoints for `best_step` (e.g. validation accuracy).
                A missing or non-finite (NaN, inf) metric is not recorded; such a checkpoint is
                kept only while it is among the last ``keep_last``.
            force: save even if ``step`` is not after the latest saved step.

        Returns:
            The checkpoint's directory, complete on disk.

        Raises:
            ValueError: if ``step`` is already saved, or is not after the latest step and
                ``force`` is False.
        """
        step = int(step)
        if step in self.all_steps():
            raise ValueError(f"checkpoint step {step} already exists in {self.directory}")
        metrics = None
        if metric is not None and math.isfinite(float(metric)):
            metrics = {_METRIC_KEY: float(metric)}
        with _quiet_orbax():
            saved = self._manager.save(
                step, args=ocp.args.StandardSave(state), metrics=metrics, force=force
            )
            self._manager.wait_until_finished()
        if not saved:
            raise ValueError(
                f"checkpoint step {step} was not saved in {self.directory}: it is not after the "
                f"latest step {self.latest_step()} (pass force=True to save it anyway)"
            )
        return self.path_of(step)

    def latest_step(self) -> int | None:
        """Returns the most recent saved step, or None if there is none."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """Returns the kept step with the best metric, or None if no kept step has a metric."""
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        """Returns the saved steps, ascending."""
        return sorted(int(s) for s in self._manager.all_steps())

    def path_of(self, step: int) -> Path:
        """Returns the directory of checkpoint ``step`` (e.g. to report the last good state).

        Raises:
            FileNotFoundError: if ``step`` is not saved.
        """
        self._check_step(int(step))
        return Path(ocp.path.step.build_step_path(self.directory, self._name_format, int(step)))

    def restore(self, template_state: PyTree, step: int | None = None) -> PyTree:
        """Reads checkpoint ``step`` (the latest if None) into the structure of the template.

        Args:
            template_state: a pytree with the saved structure; its leaves are arrays or
                `jax.ShapeDtypeStruct` and give the restored shapes, dtypes and shardings.
            step: the step to read; None reads the latest.

        Returns:
            A pytree with exactly the template's structure (same named tuples) and saved values.

        Raises:
            FileNotFoundError: if the directory has no checkpoint, or not ``step``.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        self._check_step(int(step))
        with _quiet_orbax():
            return self._manager.restore(int(step), args=ocp.args.StandardRestore(template_state))

    def restore_best(self, template_state: PyTree) -> PyTree:
        """Reads the checkpoint with the best metric into the structure of the template.

        Raises:
            FileNotFoundError: if no kept checkpoint has a metric.
        """
        step = self.best_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint with a metric to restore in {self.directory}")
        return self.restore(template_state, step)

    def close(self) -> None:
        """Waits for pending writes and releases orbax's resources; safe to call twice."""
        if not self._closed:
            with _quiet_orbax():
                self._manager.close()
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_step(self, step: int) -> None:
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in steps:
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; saved steps: {steps}"
            )
