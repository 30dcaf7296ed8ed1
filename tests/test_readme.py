"""README and the docstrings stay true: CI runs README's test command, every Python block of
README runs as written, the architecture README draws matches the imports, every module
declares its public names with docstrings, and no measured timing hides in the code."""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import re
import tokenize
from pathlib import Path

import pytest

import nnfun

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
PACKAGE = Path(nnfun.__file__).parent
MODULES = sorted(
    ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
    for p in PACKAGE.rglob("*.py") if not p.name.startswith("_"))
#: Modules every other may import: they import no other nnfun module but each other.
LEAVES = {"nnfun.spec", "nnfun._checks", "nnfun.activations", "nnfun.initializers"}


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_command():
    first_block = re.search(r"```bash\n(.*?)```", README, re.DOTALL).group(1)
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert commands[0].startswith("pip install . && nnfun train configs/")
    assert (ROOT / commands[0].split()[-1]).is_file()
    test_cmd = commands[1].split("&&")[-1].strip()
    assert commands[1].startswith('pip install ".[dev]"')
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.startswith("python -m pytest")]
    assert ci and ci[-1].split(" --durations")[0].strip() == test_cmd


PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_readme_python_blocks_run_as_written(index, monkeypatch, tmp_path):
    from nnfun import layers
    from nnfun.manual import layers as manual

    assert PYTHON_BLOCKS, "README shows no Python"
    monkeypatch.chdir(tmp_path)  # a block's run folders land here
    tables = [(layers.LAYERS, dict(layers.LAYERS)), (manual.RULES, dict(manual.RULES))]
    try:
        exec(compile(PYTHON_BLOCKS[index], f"README.md python block {index}", "exec"), {})
    finally:  # a block that registers a layer leaves the tables as they were
        for table, saved in tables:
            table.clear()
            table.update(saved)


def test_readme_is_for_users():
    """No XLA flag, implementation constant or A/B timing in README."""
    for pattern in (r"xla_\w+", r"IM2COL|BIAS_OUTER|_MIN_ROWS|_MAX_BYTES",
                    r"\d(\.\d+)?x (faster|slower)", r"\bA/B\b"):
        assert not re.search(pattern, README), pattern
    assert len(README.splitlines()) <= 300  # a guide: long material lives in experiments/


def _nnfun_imports(module: str) -> set[str]:
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = path.with_suffix("") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nnfun"):
            base = node.module
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES + ["nnfun.manual"]
                      else base for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("nnfun")}
    return found - {"nnfun"}  # the package itself: its version


def _layer_of(module: str, order: dict[str, int]) -> int | None:
    while module:
        if module in order:
            return order[module]
        module = module.rpartition(".")[0]
    return None


def test_the_architecture_in_readme_matches_the_imports():
    block = re.search(r"## How it is built.*?```\n(.*?)```", README, re.DOTALL).group(1)
    order: dict[str, int] = {}
    for i, line in enumerate(block.splitlines()):
        for name in re.findall(r"nnfun\.[\w.]+", line.split("  ")[0]):
            order[name] = i
    listed = {m for m in MODULES if _layer_of(m, order) is not None}
    assert listed | LEAVES >= {m for m in MODULES if m != "nnfun.__init__"}, \
        sorted(set(MODULES) - listed - LEAVES)
    for module in MODULES:
        here = _layer_of(module, order)
        for imported in _nnfun_imports(module):
            if imported in LEAVES or here is None:
                continue
            there = _layer_of(imported, order)
            assert there is not None and there <= here, f"{module} imports {imported}"


@pytest.mark.parametrize("name", MODULES)
def test_every_module_declares_its_public_names_with_docstrings(name):
    module = importlib.import_module(name)
    assert module.__doc__, name
    public = getattr(module, "__all__", None)
    assert public is not None, f"{name} has no __all__"
    for attr in public:
        value = getattr(module, attr)
        if inspect.isfunction(value) or inspect.isclass(value):
            assert inspect.getdoc(value), f"{name}.{attr} has no docstring"


def test_the_code_keeps_no_measured_numbers():
    """Measured numbers live in experiments/benchmarks/ and the git log, where they are kept
    current; copied into code they drift."""
    pattern = re.compile(r"\d(\.\d+)?x (faster|slower)|\bmeasured\b|\d\s?ms\b|\bA/B\b")
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for p in sorted(PACKAGE.rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def _code_lines(text: str) -> set[int]:
    """Line numbers holding code: no blank, comment or docstring-only lines."""
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER, tokenize.STRING)
    return {line for tok in tokenize.generate_tokens(io.StringIO(text).readline)
            if tok.type not in skip for line in range(tok.start[0], tok.end[0] + 1)}


def long_functions(text: str, limit: int = 40) -> list[str]:
    """Functions with more than `limit` lines of code."""
    code = _code_lines(text)
    return [f"{node.name}:{node.lineno}" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and len(code & set(range(node.lineno, node.end_lineno + 1))) > limit]


def test_no_function_is_longer_than_40_lines_of_code():
    hits = [f"{p.relative_to(ROOT)}:{f}" for p in sorted(PACKAGE.rglob("*.py"))
            for f in long_functions(p.read_text())]
    assert not hits, hits


def test_the_checks_above_can_fail():
    body = "\n".join(f"    x{i} = {i}" for i in range(39))  # with the def line: 40
    assert long_functions(f'def f():\n    """doc"""\n{body}\n') == []
    assert long_functions(f"def f():\n{body}\n    x = 1\n") == ["f:1"]
    assert re.search(r"\d(\.\d+)?x (faster|slower)", "ran 1.9x faster")
    assert _layer_of("nnfun.manual.layers", {"nnfun.manual": 3}) == 3
