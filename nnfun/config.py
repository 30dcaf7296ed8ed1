"""Experiment configs: one TOML file per experiment, validated strictly.

Sections map one-to-one onto function families (STYLE.md): in ``[data]``, ``[model]``,
``[loss]``, ``[optimizer]``, ``[schedule]`` and each ``[[regularizers]]`` entry a ``name`` key
picks the function and every other key is one of its keyword arguments, checked against the
function's signature and type hints. ``[training]`` and ``[distributed]`` are fixed schemas
(pydantic). A few keys belong to the edge rather than the function and are listed in
`EDGE_KEYS` (``data.preprocessing``, ``model.imports``, ``schedule.unit``,
``optimizer.clip_global_norm``, ...).

Every problem raises `ConfigError` with one line naming the file, the key, what was expected
and what was found. Command-line overrides ``--set section.key=value`` go through the same checks.
"""

from __future__ import annotations

import collections.abc
import copy
import functools
import importlib
import inspect
import math
import operator
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict

from nnfun import data as data_lib
from nnfun import losses, models, optim, regularizers
from nnfun.preprocessing import METHODS as PREPROCESSING_METHODS

__all__ = ["Config", "TrainingConfig", "DistributedConfig", "ConfigError", "load_config",
           "validate", "parse_override", "apply_overrides", "config_from_resolved", "build_model",
           "check_function_section", "import_modules", "SECTIONS", "EDGE_KEYS",
           "MODEL_BUILDERS"]

SECTIONS = ("data", "model", "loss", "regularizers", "optimizer", "schedule", "training",
            "distributed")

#: Keys a section may carry besides the picked function's own arguments.
EDGE_KEYS: dict[str, dict[str, Any]] = {
    "data": {"preprocessing": str, "n_components": int, "targets": str},
    "model": {"imports": list},
    "loss": {},
    "regularizers": {},
    "optimizer": {"clip_global_norm": float},
    "schedule": {"unit": str, "warmup_steps": int, "warmup_init_value": float},
}

MODEL_BUILDERS: dict[str, Callable[..., models.Model]] = {
    "sequential": models.sequential, "mlp": models.mlp, "cnn": models.cnn,
    "autoencoder": models.autoencoder}

#: What a run's targets are (``data.targets``): the data set's labels, or its (preprocessed)
#: inputs, which makes the task reconstruction (an autoencoder).
TARGETS = ("labels", "inputs")


class ConfigError(ValueError):
    """A config problem; its message is one line naming the file and the key."""


class TrainingConfig(BaseModel):
    """``[training]``: how long, how big, which engine, and how often to evaluate and save."""

    model_config = ConfigDict(extra="forbid", strict=True)
    epochs: int = pydantic.Field(10, ge=1)
    batch_size: int = pydantic.Field(32, ge=0, description="0 means the whole training set")
    seed: int = pydantic.Field(0, ge=0)
    engine: Literal["autodiff", "manual"] = "autodiff"
    dispatch: Literal["auto", "scan", "loop"] = "auto"
    fast_paths: bool = pydantic.Field(
        True, description="train with nnfun.fast's CPU variants (the same values, faster)")
    eval_every: int = pydantic.Field(1, ge=1, description="epochs between evaluations")
    checkpoint_every: int = pydantic.Field(0, ge=0, description="epochs; 0 = at evaluations")
    keep_checkpoints: int = pydantic.Field(3, ge=1)
    crosscheck_every: int = pydantic.Field(0, ge=0, description="steps; 0 = never")
    grad_norm_every: int | None = pydantic.Field(
        None, ge=0, description="steps between per-layer gradient-norm samples; 0 = never; "
        "default min(10, steps per epoch)")
    target_accuracy: float | None = None
    dtype: Literal["float32", "float64"] = "float32"


class DistributedConfig(BaseModel):
    """``[distributed]``: multi-process setup handed to `jax.distributed.initialize`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    enabled: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout: int = 60
    mesh: Literal["data", "fsdp"] = "data"


class Config(BaseModel):
    """A whole validated experiment."""

    model_config = ConfigDict(extra="forbid")
    name: str
    source: str
    data: dict[str, Any]
    model: dict[str, Any]
    loss: dict[str, Any]
    regularizers: list[dict[str, Any]] = []
    optimizer: dict[str, Any]
    schedule: dict[str, Any] | None = None
    training: TrainingConfig = TrainingConfig()
    distributed: DistributedConfig = DistributedConfig()

    def kwargs(self, section: str, index: int | None = None) -> dict[str, Any]:
        """A function section's arguments without ``name`` and without edge keys."""
        sec = getattr(self, section) if index is None else getattr(self, section)[index]
        edge = EDGE_KEYS.get(section, {})
        return {k: v for k, v in sec.items() if k != "name" and k not in edge}

    def resolved(self) -> dict[str, Any]:
        """The config as plain data (what a run folder records)."""
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- checks


def _families() -> dict[str, Mapping[str, Callable[..., Any]]]:
    return {"data": data_lib.DATASETS, "model": MODEL_BUILDERS,
            "loss": {n: e.fn for n, e in losses.LOSSES.items()},
            "regularizers": regularizers.REGULARIZERS, "optimizer": optim.OPTIMIZERS,
            "schedule": optim.SCHEDULES}


#: Arguments a function takes from the trainer, never from a config file.
_SUPPLIED = {"loss": {"pred", "target", "logits", "targets", "probs", "labels", "scores"},
             "regularizers": {"params", "batch_size"}, "data": {"seed"},
             "optimizer": set(), "schedule": set(), "model": set()}


_PLAIN = (int, float, bool, str, type(None))


def _plain_hint(hint: Any) -> Any:
    """The part of a type hint a TOML value can satisfy (arrays, callables and other
    non-TOML alternatives dropped); None when nothing is left to check."""
    if hint in _PLAIN:
        return hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        # a TOML value is never an array or a callable: check against the other alternatives
        kept = [a for a in (_plain_hint(a) for a in args) if a is not None]
        return functools.reduce(operator.or_, kept) if kept else None
    if origin in (list, tuple, dict, collections.abc.Sequence, collections.abc.Mapping):
        return hint
    return None


def _type_ok(hint: Any, value: Any) -> bool:
    hint = _plain_hint(hint)
    if hint is None:
        return True
    if isinstance(value, dict) and all(isinstance(k, str) and k.isdigit() for k in value):
        value = {int(k): v for k, v in value.items()}  # TOML keys are strings
    try:
        pydantic.TypeAdapter(hint).validate_python(value, strict=True)
        return True
    except pydantic.ValidationError:
        return False
    except pydantic.PydanticSchemaGenerationError:
        return True


def check_function_section(where: str, section: str, values: Mapping[str, Any],
                           table: Mapping[str, Callable[..., Any]]) -> None:
    """Binds a ``name = ...`` section against the picked function's signature and types."""
    name = values.get("name")
    if name is None:
        raise ConfigError(f"{where}: {section}.name: missing; expected one of {sorted(table)}")
    if name not in table:
        raise ConfigError(f"{where}: {section}.name: unknown value {name!r}; expected one of "
                          f"{sorted(table)}")
    fn = table[name]
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    edge = EDGE_KEYS.get(section.split("[")[0], {})
    allowed = [p for p in sig.parameters if p not in _SUPPLIED.get(section.split("[")[0], ())]
    for key, value in values.items():
        if key == "name":
            continue
        if key in edge:
            if not _type_ok(edge[key], value):
                raise ConfigError(f"{where}: {section}.{key}: expected {edge[key].__name__}, "
                                  f"found {type(value).__name__} {value!r}")
            continue
        if key not in allowed:
            raise ConfigError(f"{where}: {section}.{key}: unknown key for {name!r}; expected "
                              f"one of {sorted(set(allowed) | set(edge))}")
        hint = hints.get(key)
        if hint is not None and not _type_ok(hint, value):
            raise ConfigError(f"{where}: {section}.{key}: expected {_hint_name(hint)}, found "
                              f"{type(value).__name__} {value!r}")
    supplied = _SUPPLIED.get(section.split("[")[0], set()) | {"learning_rate"}
    missing = [p.name for p in sig.parameters.values() if p.default is p.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and p.name not in values and p.name not in supplied]
    if missing:
        raise ConfigError(f"{where}: {section}: {name!r} needs key(s) {missing}")


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check_edge_values(where: str, raw: Mapping[str, Any]) -> None:
    prep = raw.get("data", {}).get("preprocessing")
    if prep is not None and prep not in PREPROCESSING_METHODS:
        raise ConfigError(f"{where}: data.preprocessing: unknown value {prep!r}; expected one of "
                          f"{list(PREPROCESSING_METHODS)}")
    targets = raw.get("data", {}).get("targets")
    if targets is not None and targets not in TARGETS:
        raise ConfigError(f"{where}: data.targets: unknown value {targets!r}; expected one of "
                          f"{list(TARGETS)}")
    unit = (raw.get("schedule") or {}).get("unit")
    if unit is not None and unit not in ("step", "epoch"):
        raise ConfigError(f"{where}: schedule.unit: unknown value {unit!r}; expected 'step' or "
                          f"'epoch'")
    if "learning_rate" not in raw.get("optimizer", {}) and not raw.get("schedule"):
        raise ConfigError(f"{where}: optimizer.learning_rate: missing; give a number or a "
                          f"[schedule] section")
    lr = raw.get("optimizer", {}).get("learning_rate")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and not (
            math.isfinite(lr) and lr > 0):
        raise ConfigError(f"{where}: optimizer.learning_rate: expected a finite number > 0, "
                          f"found {lr!r}")
    if "learning_rate" in raw.get("optimizer", {}) and raw.get("schedule"):
        raise ConfigError(f"{where}: optimizer.learning_rate: given together with [schedule]; "
                          f"keep one of them")


def _check_model(where: str, raw: Mapping[str, Any]) -> None:
    try:
        build_model(raw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: model: {e}") from None


def build_model(model_section: Mapping[str, Any]) -> models.Model:
    """The `Model` a ``[model]`` section describes."""
    kw = {k: v for k, v in model_section.items() if k != "name" and k not in EDGE_KEYS["model"]}
    return MODEL_BUILDERS[model_section["name"]](**kw)


def import_modules(where: str, names: Any) -> None:
    """Imports the modules of ``model.imports`` (from the current directory or the installed
    packages), so that the layers they register (`nnfun.layers.register_layer`, and their
    rules in `nnfun.manual.layers.RULES`) can be named in the model; the run folder records
    the list, so ``eval``, ``resume`` and ``gradcheck`` import them again."""
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{where}: model.imports: expected a list of module names, found "
                          f"{names!r}")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # a user's module: any failure is theirs, said in one line
            raise ConfigError(f"{where}: model.imports: cannot import {name!r} "
                              f"({type(e).__name__}: {e})") from None


def validate(raw: Mapping[str, Any], where: str, name: str) -> Config:
    """Validates a parsed config mapping; `where` names its source in errors."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown section; expected one of "
                          f"{list(SECTIONS)}")
    for section in ("data", "model", "loss", "optimizer"):
        if section not in raw:
            raise ConfigError(f"{where}: [{section}]: missing section")
    if isinstance(raw["model"], dict):
        import_modules(where, raw["model"].get("imports"))
    for section, table in _families().items():
        value = raw.get(section)
        if value is None:
            continue
        if section == "regularizers":
            if not isinstance(value, list):
                raise ConfigError(f"{where}: regularizers: expected an array of tables "
                                  f"([[regularizers]]), found {type(value).__name__}")
            for i, entry in enumerate(value):
                check_function_section(where, f"regularizers[{i}]", entry, table)
        elif not isinstance(value, dict):
            raise ConfigError(f"{where}: {section}: expected a table, found "
                              f"{type(value).__name__}")
        else:
            check_function_section(where, section, value, table)
    _check_edge_values(where, raw)
    _check_model(where, raw["model"])
    try:
        return Config(name=name, source=where, **raw)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        found = err.get("input")
        raise ConfigError(f"{where}: {loc}: {err['msg']}, found {found!r}") from None


# --------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optimizer.learning_rate=0.01"`` -> (["optimizer", "learning_rate"], 0.01).

    The value is read as a TOML value (numbers, booleans, strings in quotes, arrays); a bare
    word that is not valid TOML is taken as a string.
    """
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected section.key=value")
    path, value = text.split("=", 1)
    keys = path.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"--set {text}: expected section.key=value")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return keys, parsed


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Applies ``--set`` overrides in order; unknown sections and keys fail in `validate`."""
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = raw
        for depth, k in enumerate(keys[:-1]):
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise ConfigError(f"--set {text}: {k}: expected an index below {len(node)}")
                node = node[int(k)]
            else:
                node = node.setdefault(k, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {text}: {'.'.join(keys[:depth + 1])}: "
                                  f"expected a section or an array, found "
                                  f"{type(node).__name__} {node!r}")
        if isinstance(node, list):
            raise ConfigError(f"--set {text}: cannot replace a whole array entry")
        node[keys[-1]] = value
    return raw


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Reads, overrides and validates a TOML config.

    Raises:
      ConfigError: a missing or unreadable file, invalid TOML, or any invalid key or value.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    where = str(path) if not overrides else f"{path} (with --set {' '.join(overrides)})"
    return validate(apply_overrides(raw, overrides), where, path.stem)


def config_from_resolved(resolved: Mapping[str, Any], where: str,
                         overrides: Sequence[str] = ()) -> Config:
    """Re-validates a config recorded in a run folder (``config.json``).

    Args:
      overrides: ``--set`` overrides of the ``distributed`` section only (a resumed run must
        train what was recorded; where and as which process it runs may change).
    """
    for text in overrides:
        if parse_override(text)[0][0] != "distributed":
            raise ConfigError(f"{where}: --set {text}: only distributed.* may change when a run "
                              f"is resumed; the rest is the run's recorded config")
    raw = copy.deepcopy({k: v for k, v in resolved.items() if k not in ("name", "source")})
    if raw.get("schedule") is None:
        raw.pop("schedule", None)
    return validate(apply_overrides(raw, overrides), where, resolved.get("name", "run"))
