"""README stays true: CI runs its test command, and every public name is documented."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
MODULES = ["activations", "initializers", "layers", "models", "losses", "regularizers",
           "objective", "spec", "registry", "gradcheck", "optim", "train", "config", "run", "cli",
           "checkpoint", "plots", "data", "preprocessing", "manual.layers", "manual.activations",
           "manual.losses", "manual.regularizers", "manual.model", "manual.gates", "distributed"]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_command():
    first_block = re.search(r"```bash\n(.*?)```", README, re.DOTALL).group(1)
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert commands[0].startswith("pip install . && nnfun train configs/")
    assert (ROOT / commands[0].split()[-1]).is_file()
    test_cmd = commands[1].split("&&")[-1].strip()
    assert commands[1].startswith('pip install ".[dev]"')
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1].strip() == test_cmd


def _public_names(module):
    for name, value in vars(module).items():
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if getattr(value, "__module__", module.__name__) != module.__name__:
            continue
        if inspect.isfunction(value) or inspect.isclass(value) or name.isupper():
            yield name


@pytest.mark.parametrize("mod", MODULES)
def test_every_public_name_is_in_the_readme(mod):
    module = importlib.import_module(f"nnfun.{mod}")
    # "<name>_forward / <name>_backward for every layer" documents the pairs by their base name
    names = {re.sub(r"_(forward|backward)$", "", n) for n in _public_names(module)}
    missing = sorted(n for n in names if not re.search(rf"\b{re.escape(n)}\b", README))
    assert not missing, f"nnfun.{mod}: undocumented {missing}"
