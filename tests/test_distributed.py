"""Data-parallel training (`nnfun.distributed`): sharded runs equal one-device runs.

Every multi-device or multi-process case runs in a subprocess, so ``XLA_FLAGS`` and
`jax.distributed` never leak into the test process; the one-device references run in-process.
Only loopback addresses, free ports and bounded timeouts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from nnfun import distributed, run
from nnfun.checkpoint import CheckpointStore
from nnfun.config import DistributedConfig, load_config

# f32: examples (252) split over 4 devices, a replicated state, scanned epochs, SGD.
F32 = """
[data]
name = "spirals"
num_classes = 3
points_per_class = 120

[model]
name = "mlp"
hidden = [16]
out = 3
activation = "relu"

[loss]
name = "softmax_cross_entropy"

[[regularizers]]
name = "l2"
lam = 1e-3

[optimizer]
name = "sgd"
learning_rate = 0.5

[training]
epochs = 10
batch_size = 48
eval_every = 10
"""
# f64: examples (210) replicated (4 does not divide them), ZeRO-style state, a Python loop, Adam.
F64 = (F32.replace("points_per_class = 120", "points_per_class = 100")
       .replace('name = "sgd"\nlearning_rate = 0.5', 'name = "adam"\nlearning_rate = 0.01')
       .replace("batch_size = 48", 'batch_size = 40\ndtype = "float64"\ndispatch = "loop"')
       + '\n[distributed]\nmesh = "fsdp"\n')
STEPS = 50  # both configs: 5 steps per epoch, 10 epochs
TOL = {"f32": 1e-5, "f64": 1e-12}
ON = ["--set", "distributed.enabled=true"]

# Runs in a subprocess with 4 forced CPU devices: the real CLI on both configs, a batch that
# does not split, and the shardings a `Placement` gives and keeps through a compiled epoch.
FOUR_DEVICES = """
import contextlib, io, json, sys
import jax, numpy as np
import nnfun.plots
from nnfun import distributed, train
from nnfun.cli import main

nnfun.plots.plot_run = lambda run_dir: []  # plots are not what these runs check (saves time)

out = {"devices": jax.device_count()}
for name in ("f32", "f64"):
    out[name] = main(["train", f"{name}.toml", "--out", f"dp_{name}", "-q",
                      "--set", "distributed.enabled=true"])
err = io.StringIO()
with contextlib.redirect_stderr(err):
    out["odd_batch"] = [main(["train", "f32.toml", "-q", "--set", "distributed.enabled=true",
                              "--set", "training.batch_size=42"]), err.getvalue()]
mesh = distributed.make_mesh()
x = distributed.put_examples(np.zeros((8, 2), np.float32), mesh)
spec = lambda a: list(a.sharding.spec)
out["specs"] = {"examples": spec(x),
                "odd_examples": spec(distributed.put_examples(np.zeros((6, 2)), mesh))}
from nnfun.models import mlp
import optax
layers, opt = mlp(hidden=[8], out=4).layers, optax.adam(1e-2)
place = distributed.Placement(mesh, "fsdp")
state = place.put_state(train.init_train_state(0, layers, (2,), opt))
from nnfun.spec import LossSpec
body = place.step(train.make_step_body(layers, LossSpec.make("softmax_cross_entropy"), (), opt),
                  state)
state, _ = train.make_epoch_fn(body, 4)(state, x, jax.numpy.zeros(8, jax.numpy.int32), 0)
out["specs"]["fsdp_params"] = [spec(v) for v in jax.tree.leaves(state.params)]
out["specs"]["fsdp_step"] = spec(state.step)
print("RESULT " + json.dumps(out))
"""


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without cluster variables (no auto-detected SLURM, MPI, K8s)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "XLA_", "JAX_", "KUBERNETES_", "TPU_"))}
    flags = " ".join(f for f in ("--xla_backend_optimization_level=0",  # as conftest.py
                                 extra.pop("XLA_FLAGS", "")) if f)
    return {**env, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", "XLA_FLAGS": flags, **extra}


def _free_port(start: int = 0) -> int:
    """A free loopback port: any (start = 0), or the first free one from `start` on."""
    for port in ([0] if start == 0 else range(start, 65536)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nnfun.cli", *args]


def _final_state(config_path: Path, run_dir: Path, overrides: tuple[str, ...] = ()) -> Any:
    """The run's latest checkpoint as NumPy arrays, whatever devices wrote it."""
    config = load_config(config_path, overrides)
    with jax.enable_x64(config.training.dtype == "float64"):
        template = run.initial_state(run.prepare(config))
        with CheckpointStore(run_dir / "checkpoints") as store:
            return store.restore(jax.tree.map(np.asarray, template))


def _max_rel_diff(a: Any, b: Any) -> float:
    return max(float(np.max(np.abs(x - y)) / np.max(np.abs(x)))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Starts the 4-device subprocess, trains the one-device references here meanwhile."""
    root = tmp_path_factory.mktemp("dp")
    for name, text in (("f32", F32), ("f64", F64)):
        (root / f"{name}.toml").write_text(text)
    proc = subprocess.Popen([sys.executable, "-c", FOUR_DEVICES], cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    refs = {}
    patch = pytest.MonkeyPatch()
    patch.setattr("nnfun.plots.plot_run", lambda run_dir: [])  # not what these runs check
    for name in ("f32", "f64"):
        summary = run.train_run(load_config(root / f"{name}.toml"), root / f"one_{name}",
                                quiet=True)
        assert summary["steps"] == STEPS
        refs[name] = _final_state(root / f"{name}.toml", root / f"one_{name}")
    patch.undo()
    stdout, stderr = proc.communicate(timeout=240)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, stderr[-3000:]
    return {"root": root, "refs": refs, "four": json.loads(lines[0][len("RESULT "):])}


# --------------------------------------------------------------------------- in-process units


def test_fsdp_spec_shards_the_first_divisible_axis() -> None:
    assert distributed.fsdp_spec((8, 3), 4) == P("data")
    assert distributed.fsdp_spec((2, 16), 4) == P(None, "data")
    assert distributed.fsdp_spec((3,), 4) == P()
    assert distributed.fsdp_spec((), 4) == P()


def test_batch_check_is_one_line_naming_key_devices_and_value() -> None:
    distributed.check_batch_size(48, 4, "c.toml")
    with pytest.raises(distributed.DistributedError) as e:
        distributed.check_batch_size(30, 4, "c.toml", configured=0)
    msg = str(e.value)
    assert "\n" not in msg and "training.batch_size" in msg and "4 devices" in msg
    assert "0 (the whole training set, 30 examples)" in msg


@pytest.mark.parametrize("fields, culprit", [
    ({"num_processes": 2, "process_id": 2}, "distributed.process_id"),
    ({"num_processes": 0}, "distributed.num_processes"),
    ({"coordinator_address": "no-port"}, "distributed.coordinator_address"),
    ({"initialization_timeout": 0}, "distributed.initialization_timeout"),
])
def test_bad_distributed_values_fail_before_any_waiting(fields: dict, culprit: str) -> None:
    with pytest.raises(distributed.DistributedError, match=culprit):
        distributed.initialize(DistributedConfig(enabled=True, **fields), where="c.toml")


def test_disabled_placement_is_the_identity() -> None:
    distributed.initialize(DistributedConfig())  # enabled = false: nothing happens
    place = distributed.make_placement(False, "data", 7, "c.toml")
    x = np.ones((3, 2))
    assert place.mesh is None and place.put_examples(x) is x and place.put_state(x) is x


# --------------------------------------------------------------------------- 4 forced devices


def test_four_devices_give_the_one_device_parameters(work: dict[str, Any]) -> None:
    four = work["four"]
    assert four["devices"] == 4 and four["f32"] == 0 and four["f64"] == 0
    for name in ("f32", "f64"):
        got = _final_state(work["root"] / f"{name}.toml", work["root"] / f"dp_{name}")
        assert int(got.step) == STEPS
        assert _max_rel_diff(work["refs"][name].params, got.params) <= TOL[name], name


def test_shardings_are_properties_of_the_arrays(work: dict[str, Any]) -> None:
    specs = work["four"]["specs"]
    assert specs["examples"] == ["data"] and specs["odd_examples"] == []
    # mlp [8] -> 4 on 2 inputs: w (2, 8), b (8,), w (8, 4), b (4,); kept through the epoch.
    assert specs["fsdp_params"] == [["data"], [None, "data"], ["data"], ["data"]]
    assert specs["fsdp_step"] == []


def test_batch_that_does_not_split_is_exit_2_with_one_line(work: dict[str, Any]) -> None:
    status, err = work["four"]["odd_batch"]
    assert status == 2
    line, = err.strip().splitlines()
    assert "training.batch_size" in line and "4 devices" in line and "found 42" in line


# --------------------------------------------------------------------------- 2 processes


def test_two_processes_give_the_one_device_parameters_and_one_set_of_logs(
        work: dict[str, Any], tmp_path: Path) -> None:
    port = _free_port()
    args = [*ON, "--set", f"distributed.coordinator_address=127.0.0.1:{port}", "--set",
            "distributed.num_processes=2", "--set", "distributed.initialization_timeout=30"]
    procs = [subprocess.Popen(_cli("train", str(work["root"] / "f32.toml"), "-q", *args, "--set",
                                   f"distributed.process_id={i}"),
                              cwd=tmp_path, env=_env(), text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for i in (0, 1)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert json.loads(outs[0][0])["steps"] == STEPS and outs[1][0] == ""  # stdout: the summary
    run_dir, = (tmp_path / "runs" / "f32").iterdir()  # both processes agreed on one folder
    assert sorted(f.name for f in run_dir.iterdir()) == [
        "checkpoints", "config.json", "metrics.jsonl", "plots", "preprocessing.npz",
        "summary.json"]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1  # written once
    got = _final_state(work["root"] / "f32.toml", run_dir)
    assert int(got.step) == STEPS
    assert _max_rel_diff(work["refs"]["f32"].params, got.params) <= TOL["f32"]


def test_info_joins_an_auto_detected_cluster(tmp_path: Path) -> None:
    """Two `nnfun info` under a fake two-task SLURM step on localhost (what srun sets)."""
    port = _free_port(65535 - 2**12 + 1 + 1000)
    job = port - (65535 - 2**12 + 1)  # JAX derives the coordinator port from the job id
    procs = [subprocess.Popen(_cli("info"), cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE,
                              env=_env(SLURM_JOB_ID=str(job), SLURM_STEP_NODELIST="localhost",
                                       SLURM_NTASKS="2", SLURM_PROCID=str(i),
                                       SLURM_LOCALID=str(i)))
             for i in (0, 1)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for i, out in enumerate(outs):
        assert f"processes 2 (this is process {i})" in out and "global devices 2" in out, out


# --------------------------------------------------------------------------- no coordinator


def test_unreachable_coordinator_is_exit_2_with_one_line(tmp_path: Path) -> None:
    """Process 1 finds no coordinator; process 0 (the coordinator) waits for a peer in vain."""
    (tmp_path / "c.toml").write_text(F32)
    ports = {1: _free_port(), 0: _free_port()}  # closed: nobody listens; two, or they would meet
    assert ports[0] != ports[1]
    t0 = time.monotonic()
    procs = [subprocess.Popen(
        _cli("train", "c.toml", "-q", *ON, "--set",
             f'distributed.coordinator_address="127.0.0.1:{ports[i]}"', "--set",
             "distributed.num_processes=2", "--set", f"distributed.process_id={i}",
             "--set", "distributed.initialization_timeout=3"),
        cwd=tmp_path, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in (1, 0)]
    errs = [p.communicate(timeout=60)[1] for p in procs]
    assert time.monotonic() - t0 < 40
    for proc, err, expect in zip(procs, errs, ("no coordinator answered",
                                               "not all processes joined")):
        assert proc.returncode == 2, err[-2000:]
        line, = err.strip().splitlines()
        assert line.startswith("nnfun: error:") and expect in line and "3 s" in line


# --------------------------------------------------------------------------- slow


RESUME = """
import io
from nnfun import run
from nnfun.config import load_config
config = load_config("f32.toml", ["distributed.enabled=true"])
run.train_run(config, "whole", quiet=True)
try:  # interrupted after 4 of 10 epochs, then resumed from the sharded checkpoint
    run.train_run(config, "resumed", quiet=True, stop_after_epochs=4, out=io.StringIO())
except KeyboardInterrupt:
    assert run.resume_run("resumed", quiet=True)["steps"] == 50
"""


@pytest.mark.slow
def test_resume_from_a_sharded_checkpoint_is_exact(tmp_path: Path) -> None:
    (tmp_path / "f32.toml").write_text(F32)
    proc = subprocess.run([sys.executable, "-c", RESUME], cwd=tmp_path, text=True,
                          capture_output=True, timeout=300,
                          env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    whole, resumed = (_final_state(tmp_path / "f32.toml", tmp_path / d)
                      for d in ("whole", "resumed"))
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)


STOP_ONE = """
import io, sys
from nnfun import run
from nnfun.config import load_config
pid, port = int(sys.argv[1]), sys.argv[2]
config = load_config("f32.toml", ["distributed.enabled=true", "distributed.num_processes=2",
                                  f"distributed.process_id={pid}",
                                  f'distributed.coordinator_address="127.0.0.1:{port}"',
                                  "distributed.initialization_timeout=30"])
try:  # only process 1 is interrupted (after 2 of 10 epochs): process 0 must stop with it
    run.train_run(config, "run", quiet=True, stop_after_epochs=2 if pid else None,
                  out=io.StringIO())
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.slow
def test_ctrl_c_in_one_process_stops_every_process_at_the_same_step(
        work: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "f32.toml").write_text(F32)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", STOP_ONE, str(i), port], cwd=tmp_path,
                              env=_env(), text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for i in (0, 1)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    # (gloo prints its own connection line to stdout first)
    assert all(o[0].strip().splitlines()[-1] == "interrupted" for o in outs), outs
    with CheckpointStore(tmp_path / "run" / "checkpoints") as store:
        assert store.latest_step() == 10  # 2 epochs of 5 steps, one checkpoint for both
    # `nnfun resume` in both processes, each naming its process id: the one-device result
    port = _free_port()
    procs = [subprocess.Popen(
        _cli("resume", "run", "-q", "--set", f"distributed.coordinator_address=127.0.0.1:{port}",
             "--set", f"distributed.process_id={i}"),
        cwd=tmp_path, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in (0, 1)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert json.loads(outs[0][0])["steps"] == 50 and outs[1][0] == ""  # one summary, no noise
    got = _final_state(tmp_path / "f32.toml", tmp_path / "run")
    assert int(got.step) == STEPS
    assert _max_rel_diff(work["refs"]["f32"].params, got.params) <= TOL["f32"]


# --------------------------------------------------------------------------- stop signals


def _start_two(cwd: Path, name: str, *args: str) -> list[subprocess.Popen]:
    """`nnfun <args>` as processes 0 and 1 of a two-process run; their stdout and stderr go
    to ``<name><i>.out`` and ``<name><i>.err`` in `cwd`."""
    port = _free_port()
    procs = []
    for i in (0, 1):
        with open(cwd / f"{name}{i}.out", "w") as out, open(cwd / f"{name}{i}.err", "w") as err:
            procs.append(subprocess.Popen(
                _cli(*args, "-q", "--set", f"distributed.coordinator_address=127.0.0.1:{port}",
                     "--set", f"distributed.process_id={i}"),
                cwd=cwd, env=_env(), text=True, stdout=out, stderr=err))
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[int | None]:
    """The exit statuses, None for a process still running after `timeout` s (then killed)."""
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pass
    codes = [p.poll() for p in procs]
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    return codes


def _signal_in_setup(procs: list[subprocess.Popen], run_dir: Path, signum: int,
                     to: tuple[int, ...]) -> None:
    """Sends `signum` to processes `to` once the lead has written the run's config.json: both
    processes are connected and still setting up (placing, compiling), before any step."""
    deadline = time.monotonic() + 120
    while not (run_dir / "config.json").is_file():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.02)
    for i in to:
        procs[i].send_signal(signum)


TWO = ["--set", "distributed.enabled=true", "--set", "distributed.num_processes=2", "--set",
       "distributed.initialization_timeout=30"]
INTERRUPTED = "interrupted at step 5; checkpoint saved. Resume with: nnfun resume run"


@pytest.mark.slow
@pytest.mark.parametrize("to", [(0,), (0, 1)], ids=["lead", "both"])
def test_ctrl_c_during_set_up_stops_both_processes_promptly(tmp_path: Path,
                                                           to: tuple[int, ...]) -> None:
    """Ctrl-C while the processes set up (place, compile), in the lead alone or, as from a
    terminal, in both: each stops at the first step boundary, saves the same checkpoint and
    exits 130 with one line. (A KeyboardInterrupt in set-up used to save nothing; in the lead
    alone it left both processes waiting 5 minutes, then aborting with C++ stack traces.)"""
    (tmp_path / "f32.toml").write_text(F32)
    procs = _start_two(tmp_path, "p", "train", "f32.toml", "--out", "run", *TWO)
    _signal_in_setup(procs, tmp_path / "run", signal.SIGINT, to=to)
    t0 = time.monotonic()
    codes = _wait(procs, 120)
    errs = [(tmp_path / f"p{i}.err").read_text() for i in (0, 1)]
    assert codes == [130, 130], [e[-2000:] for e in errs]
    assert time.monotonic() - t0 < 90  # JAX's shutdown barrier waited 300 s
    for err in errs:  # (gloo prints its own connection line first)
        assert err.strip().splitlines()[-1] == INTERRUPTED and "Check failure" not in err, err
    with CheckpointStore(tmp_path / "run" / "checkpoints") as store:
        assert sorted(store.all_steps()) == [5]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_and_resume_is_exact(
        tmp_path: Path) -> None:
    """SIGTERM (scancel, a time limit, a preemption) reaching only process 1 during set-up:
    both save the same step and exit 130; `nnfun resume` in both then ends bit for bit where
    an uninterrupted two-process run does. (XLA's preemption notifier used to swallow it.)"""
    (tmp_path / "f32.toml").write_text(F32)
    whole = _start_two(tmp_path, "w", "train", "f32.toml", "--out", "whole", *TWO)
    assert _wait(whole, 180) == [0, 0], (tmp_path / "w1.err").read_text()[-2000:]
    procs = _start_two(tmp_path, "p", "train", "f32.toml", "--out", "run", *TWO)
    _signal_in_setup(procs, tmp_path / "run", signal.SIGTERM, to=(1,))
    codes = _wait(procs, 120)
    errs = [(tmp_path / f"p{i}.err").read_text() for i in (0, 1)]
    assert codes == [130, 130], [e[-2000:] for e in errs]
    for err in errs:
        assert err.strip().splitlines()[-1] == INTERRUPTED, err
    with CheckpointStore(tmp_path / "run" / "checkpoints") as store:
        assert sorted(store.all_steps()) == [5]
    resumed = _start_two(tmp_path, "r", "resume", "run", "--set", "distributed.enabled=true")
    assert _wait(resumed, 180) == [0, 0], (tmp_path / "r1.err").read_text()[-2000:]
    assert json.loads((tmp_path / "r0.out").read_text())["steps"] == STEPS
    whole, got = (_final_state(tmp_path / "f32.toml", tmp_path / d) for d in ("whole", "run"))
    assert int(got.step) == STEPS
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_lost_process_stops_the_other_with_one_line(tmp_path: Path) -> None:
    """SIGKILL to process 1 mid-run: process 0's next collective fails; it says so in one
    line and exits 1 at once (it used to wait at JAX's exit barrier, then abort in C++), and
    the checkpoints saved before are kept."""
    (tmp_path / "f32.toml").write_text(F32)
    procs = _start_two(tmp_path, "p", "train", "f32.toml", "--out", "run", *TWO,
                       "--set", "training.checkpoint_every=1")
    deadline = time.monotonic() + 120
    while not list((tmp_path / "run" / "checkpoints").glob("[0-9]*")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.02)
    procs[1].kill()
    t0 = time.monotonic()
    codes = _wait(procs, 120)
    err = (tmp_path / "p0.err").read_text()
    assert codes[0] == 1, err[-2000:]
    assert time.monotonic() - t0 < 60, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("nnfun: run stopped: a process of this multi-process run was lost")
    assert "Check failure" not in err and "Traceback" not in err, err[-2000:]
    assert list((tmp_path / "run" / "checkpoints").glob("[0-9]*"))
