"""The reference path stays independent: nnfun/manual imports nothing from the autodiff path
and never names an autodiff transformation (an AST scan, so comments cannot hide a call)."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import nnfun.manual

MANUAL = Path(nnfun.manual.__file__).parent
FORBIDDEN_MODULES = {"nnfun.layers", "nnfun.losses", "nnfun.models", "nnfun.objective",
                     "nnfun.regularizers", "nnfun.registry", "nnfun.activations",
                     "nnfun.gradcheck", "nnfun.train"}
FORBIDDEN_NAMES = {"grad", "vjp", "jvp", "value_and_grad", "jacrev", "jacfwd", "linearize",
                   "linear_transpose", "custom_vjp", "custom_jvp", "hessian"}


def _sources():
    files = sorted(MANUAL.glob("*.py"))
    assert files
    return [(f, f.read_text()) for f in files]


def test_manual_imports_nothing_from_the_autodiff_path():
    for path, text in _sources():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                mods = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for mod in mods:
                assert not any(mod == f or mod.startswith(f + ".") for f in FORBIDDEN_MODULES), \
                    f"{path.name} imports {mod}"


def test_manual_never_names_autodiff():
    for path, text in _sources():
        for node in ast.walk(ast.parse(text)):
            name = node.attr if isinstance(node, ast.Attribute) else \
                node.id if isinstance(node, ast.Name) else None
            assert name not in FORBIDDEN_NAMES, f"{path.name}:{node.lineno} names {name}"
            if isinstance(node, ast.alias):
                assert node.name.split(".")[-1] not in FORBIDDEN_NAMES, path.name
        words = {tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                 if tok.type in (tokenize.NAME, tokenize.COMMENT, tokenize.STRING)}
        joined = " ".join(words)
        for bad in ("jax.grad", "jax.vjp", "jax.jvp", "value_and_grad(", "custom_vjp"):
            assert bad not in joined, f"{path.name} mentions {bad}"


def test_the_scan_catches_a_violation(tmp_path):
    """The checks above can fail: run them on a planted violation."""
    bad = "import jax\nfrom nnfun.layers import dense_apply\ng = jax.grad(lambda x: x)\n"
    tree = ast.parse(bad)
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert names & FORBIDDEN_NAMES and mods & FORBIDDEN_MODULES
