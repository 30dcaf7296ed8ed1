"""Data-parallel training across devices and hosts on JAX's own runtime (an I/O edge module).

Nothing here communicates by itself: `jax.distributed` connects the processes, `jax.sharding`
says where every array lives, and XLA inserts the collectives (the gradient all-reduce, the
batch gather) when it compiles the unchanged steps of `nnfun.train`. Contract:

- `initialize` runs before any other JAX use. ``enabled = false`` does nothing (one device, as
  before). ``enabled = true`` starts `jax.distributed` when a coordinator, a process count or a
  process id is given, or when JAX detects a cluster (SLURM, Open MPI, Kubernetes, Cloud TPU);
  with none of them it is one process training over all its local devices. A coordinator that
  does not answer within ``initialization_timeout`` seconds is a one-line `DistributedError`
  (JAX itself would abort the process with a C++ stack trace);
- a `Placement` puts the train state, the training examples and every step's batch:
  the mesh is all global devices along one axis ``"data"``; every batch is split along its
  leading axis (``P("data")``); the state is replicated (``P()``) for ``mesh = "data"`` or, for
  ``mesh = "fsdp"``, each parameter and optimiser leaf is split along its first axis whose size
  the device count divides (ZeRO-3 style), the rest replicated. The training examples are one
  global array split along the example axis (replicated when the device count does not divide
  it); each process hands over only its own rows (`jax.make_array_from_process_local_data`);
- the epoch and step functions of `nnfun.train` run unchanged on these arrays: `Placement.step`
  only adds `jax.lax.with_sharding_constraint` on the gathered batch and the new state, so a
  data-parallel run takes the same steps as a one-device run, equal up to float reassociation
  of the batch sums;
- process 0 is the lead (`is_lead`): only it writes logs, summaries and plots; every process
  calls the checkpoint store (orbax synchronises them);
- SIGINT and SIGTERM belong to nnfun, not to XLA: JAX's preemption service (whose notifier
  catches SIGTERM in C++) is switched off, and `nnfun.run` turns both signals into a stop flag
  that all processes agree on at a step boundary.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nnfun.config import ConfigError, DistributedConfig

__all__ = ["AXIS", "MESHES", "DistributedError", "initialize", "check_distributed_config",
           "is_lead", "agree_on_path", "make_mesh", "batch_sharding", "replicated", "fsdp_spec",
           "state_shardings", "check_batch_size", "process_rows", "put_examples", "constrain_step",
           "Placement", "make_placement"]

AXIS = "data"
MESHES = ("data", "fsdp")
#: Seconds JAX's own connect deadline runs past ours, so the watchdog speaks first.
_JAX_GRACE_S = 30
_PATH_BYTES = 4096


class DistributedError(ConfigError):
    """A multi-device or multi-process setup problem; one line naming the culprit (exit 2)."""


# --------------------------------------------------------------------------- processes


def initialize(cfg: DistributedConfig, *, where: str = "distributed") -> None:
    """Starts `jax.distributed` as ``[distributed]`` asks; call it before any other JAX use.

    Does nothing when ``cfg.enabled`` is false or the runtime is already up (a second run in
    the same process). On CPU the cross-process collectives are gloo.

    Args:
      cfg: the ``[distributed]`` section.
      where: the config's source, named in errors.

    Raises:
      DistributedError: JAX was used before (multi-process needs a fresh backend); an
        incomplete or invalid coordinator, process count or id; a coordinator that does not
        answer within ``cfg.initialization_timeout`` seconds.
    """
    if not cfg.enabled or jax.distributed.is_initialized():
        return
    check_distributed_config(cfg, where)
    given = (cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    from jax._src import xla_bridge  # no public "is the backend up?" in jax 0.10

    if xla_bridge.backends_are_initialized():
        if any(v is not None for v in given):
            raise DistributedError(f"{where}: distributed: jax.distributed must start before "
                                   f"any JAX computation; start nnfun in a fresh process")
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # XLA's preemption notifier would catch SIGTERM in C++ (so a SIGTERM before nnfun's own
    # handler is installed would be lost); nnfun's stop flag handles SIGTERM like Ctrl-C.
    jax.config.update("jax_enable_preemption_service", False)
    timeout = cfg.initialization_timeout
    if cfg.coordinator_address is not None and cfg.process_id not in (None, 0):
        _wait_for_coordinator(cfg.coordinator_address, timeout, where)
    done = threading.Event()
    threading.Thread(target=_watchdog, args=(done, timeout, cfg.coordinator_address, where),
                     daemon=True).start()
    try:
        jax.distributed.initialize(*given, initialization_timeout=timeout + _JAX_GRACE_S)
    except (ValueError, TypeError, RuntimeError) as e:
        if all(v is None for v in given) and "coordinator_address" in str(e):
            return  # no cluster detected: one process over its local devices
        raise DistributedError(f"{where}: distributed: {str(e).splitlines()[0]} (given "
                               f"coordinator_address={cfg.coordinator_address!r}, num_processes="
                               f"{cfg.num_processes}, process_id={cfg.process_id})") from None
    finally:
        done.set()


def check_distributed_config(cfg: DistributedConfig, where: str) -> None:
    """One-line `DistributedError` for values no cluster could accept (before any waiting)."""
    n, pid = cfg.num_processes, cfg.process_id
    if cfg.initialization_timeout < 1:
        raise DistributedError(f"{where}: distributed.initialization_timeout: expected at least "
                               f"1 second, found {cfg.initialization_timeout}")
    if n is not None and n < 1:
        raise DistributedError(f"{where}: distributed.num_processes: expected at least 1, "
                               f"found {n}")
    if pid is not None and not 0 <= pid < (n or pid + 1):
        raise DistributedError(f"{where}: distributed.process_id: expected 0 <= process_id < "
                               f"num_processes = {n}, found {pid}")
    if cfg.coordinator_address is not None:
        _split_address(cfg.coordinator_address, where)


def _split_address(address: str, where: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise DistributedError(f"{where}: distributed.coordinator_address: expected "
                               f"'host:port', found {address!r}")
    return host.strip("[]"), int(port)


def _wait_for_coordinator(address: str, timeout: float, where: str) -> None:
    """Polls a TCP connection to the coordinator until it answers or `timeout` seconds pass."""
    host, port = _split_address(address, where)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            socket.create_connection((host, port), timeout=max(min(left, 1.0), 0.1)).close()
            return
        except OSError as e:
            if time.monotonic() + 0.2 >= deadline:
                raise DistributedError(
                    f"{where}: distributed.coordinator_address: no coordinator answered at "
                    f"{address} within distributed.initialization_timeout={timeout} s ("
                    f"{e.strerror or e}); start process 0 first or fix the address") from None
            time.sleep(0.2)


def _watchdog(done: threading.Event, timeout: float, address: str | None, where: str) -> None:
    """Exits with status 2 and one line when `jax.distributed.initialize` overruns `timeout`.

    JAX gives up on an unreachable coordination service with a fatal C++ log (an abort and a
    stack trace) that Python cannot catch, and the call blocks in C++ until then (with the GIL
    released), so the only clean way out is to leave the process from this thread first.
    """
    if done.wait(timeout):
        return
    print(f"nnfun: error: {where}: distributed: not all processes joined the coordinator at "
          f"{address or '(auto-detected)'} within distributed.initialization_timeout="
          f"{timeout} s; start every process with the same coordinator_address and "
          f"num_processes", file=sys.stderr, flush=True)
    os._exit(2)


def is_lead() -> bool:
    """True in process 0, the only one that writes logs, summaries and plots."""
    return jax.process_index() == 0


def agree_on_path(path: str | Path) -> Path:
    """Process 0's `path` on every process (e.g. a run folder named from a timestamp)."""
    if jax.process_count() == 1:
        return Path(path)
    from jax.experimental import multihost_utils

    raw = str(path).encode()
    if len(raw) > _PATH_BYTES:
        raise DistributedError(f"run folder: path longer than {_PATH_BYTES} bytes: {path}")
    buf = np.zeros(_PATH_BYTES, np.uint8)
    buf[: len(raw)] = np.frombuffer(raw, np.uint8)
    got = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return Path(bytes(got).rstrip(b"\0").decode())


# --------------------------------------------------------------------------- shardings


def make_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over `devices` (default: all global devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (AXIS,), (AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``"data"``: ``P("data")``."""
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device: ``P()``."""
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], num_devices: int) -> P:
    """``"data"`` on the first axis that `num_devices` divides; ``P()`` when none does."""
    for axis, size in enumerate(shape):
        if size >= num_devices and size % num_devices == 0:
            return P(*([None] * axis), AXIS)
    return P()


def state_shardings(state: Any, mesh: Mesh, mode: str = "data") -> Any:
    """Shardings of a `TrainState`: replicated, or ZeRO-style `fsdp_spec` for the parameter and
    optimiser leaves (``mode = "fsdp"``); ``step`` and ``key`` stay replicated.

    Args:
      state: a `TrainState` (or any pytree when ``mode = "data"``).
      mesh: from `make_mesh`.
      mode: one of `MESHES`.

    Returns:
      A pytree of `NamedSharding` with the structure of `state`.
    """
    if mode not in MESHES:
        raise ValueError(f"mesh: expected one of {list(MESHES)}, got {mode!r}")
    rep = replicated(mesh)
    if mode == "data" or mesh.size == 1:
        return jax.tree.map(lambda _: rep, state)

    def fsdp(leaf: Any) -> NamedSharding:
        return NamedSharding(mesh, fsdp_spec(np.shape(leaf), mesh.size))

    return state._replace(params=jax.tree.map(fsdp, state.params),
                          opt_state=jax.tree.map(fsdp, state.opt_state),
                          step=rep, key=rep)


def check_batch_size(batch_size: int, num_devices: int, where: str, *,
                     configured: int | None = None) -> None:
    """A one-line `DistributedError` unless the global batch splits evenly over the devices."""
    if batch_size % num_devices:
        found = (f"{configured} (the whole training set, {batch_size} examples)"
                 if configured == 0 else f"{batch_size}")
        raise DistributedError(f"{where}: training.batch_size: the global batch must split "
                               f"evenly over the {num_devices} devices; expected a multiple of "
                               f"{num_devices}, found {found}")


def process_rows(num_rows: int, sharding: NamedSharding) -> slice:
    """The contiguous rows of a (num_rows, ...) array that this process's devices hold."""
    spans = {s[0].indices(num_rows)[:2] if s else (0, num_rows)
             for s in sharding.addressable_devices_indices_map((num_rows,)).values()}
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    if sum(b - a for a, b in spans) != hi - lo:
        raise DistributedError(f"mesh: this process's devices hold non-contiguous rows {spans}")
    return slice(lo, hi)


def put_examples(x: Any, mesh: Mesh) -> jax.Array:
    """A (N, ...) array as one global array: split along N over ``"data"`` when the device
    count divides N, replicated otherwise. Each process hands over only its own rows.

    Args:
      x: (N, ...) the whole array, the same on every process (only `process_rows` are read).
      mesh: from `make_mesh`.

    Returns:
      A global (N, ...) `jax.Array` sharded ``P("data")`` or replicated ``P()``.
    """
    host = np.asarray(x)
    spec = P(AXIS) if host.shape[0] % mesh.size == 0 else P()
    sharding = NamedSharding(mesh, spec)
    rows = process_rows(host.shape[0], sharding)
    return jax.make_array_from_process_local_data(sharding, host[rows], host.shape)


def constrain_step(step_body: Callable[..., tuple], batch: NamedSharding,
                   state: Any) -> Callable[..., tuple]:
    """`step_body` with its batch pinned to `batch` and its new state to `state` shardings."""
    def step(s: Any, xy: tuple) -> tuple:
        new, metrics = step_body(s, jax.lax.with_sharding_constraint(xy, batch))
        return jax.lax.with_sharding_constraint(new, state), metrics

    return step


# --------------------------------------------------------------------------- the run's placement


class Placement(NamedTuple):
    """Where a run's arrays live. ``mesh is None`` means one device: every method is the
    identity, so a run with ``distributed.enabled = false`` is exactly as before."""

    mesh: Mesh | None = None
    mode: str = "data"

    @property
    def num_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.size

    def put_state(self, state: Any) -> Any:
        """The train state placed per `state_shardings` (a template for restores, too)."""
        if self.mesh is None:
            return state
        return jax.device_put(state, state_shardings(state, self.mesh, self.mode))

    def put_examples(self, x: Any) -> Any:
        """Training inputs or targets (N, ...) as one global array (see `put_examples`)."""
        return x if self.mesh is None else put_examples(x, self.mesh)

    def step(self, step_body: Callable[..., tuple], state: Any) -> Callable[..., tuple]:
        """`step_body` with batch and state shardings pinned (see `constrain_step`)."""
        if self.mesh is None:
            return step_body
        return constrain_step(step_body, batch_sharding(self.mesh),
                              state_shardings(state, self.mesh, self.mode))


def make_placement(enabled: bool, mode: str, batch_size: int, where: str, *,
                   configured_batch_size: int | None = None) -> Placement:
    """The run's `Placement`: all global devices when `enabled`, else one device.

    Args:
      enabled: ``distributed.enabled``.
      mode: ``distributed.mesh``, one of `MESHES`.
      batch_size: the global batch (examples per step over all devices).
      where: the config's source, named in errors.
      configured_batch_size: ``training.batch_size`` as written (0 = the whole set), for the
        error message.

    Returns:
      A `Placement`; ``Placement()`` (one device, identity) when not `enabled`.

    Raises:
      DistributedError: the global batch does not split evenly over the devices.
    """
    if not enabled:
        return Placement()
    mesh = make_mesh()
    check_batch_size(batch_size, mesh.size, where, configured=configured_batch_size)
    return Placement(mesh, mode)
