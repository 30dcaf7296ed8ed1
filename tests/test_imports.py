"""The reference path stays independent: nnfun/manual imports nothing from the autodiff path and
never names an autodiff transformation (an AST scan, so comments cannot hide a call). One
checker, run on the real package and on a planted violation."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import nnfun.manual

MANUAL = Path(nnfun.manual.__file__).parent
FORBIDDEN_MODULES = {"nnfun.layers", "nnfun.losses", "nnfun.models", "nnfun.objective",
                     "nnfun.regularizers", "nnfun.registry", "nnfun.activations",
                     "nnfun.gradcheck", "nnfun.train", "nnfun.fast", "nnfun.run"}
FORBIDDEN_NAMES = {"grad", "vjp", "jvp", "value_and_grad", "jacrev", "jacfwd", "linearize",
                   "linear_transpose", "custom_vjp", "custom_jvp", "hessian", "grad_fn",
                   "conv_general_dilated", "reduce_window"}
FORBIDDEN_TEXT = ("jax.grad", "jax.vjp", "jax.jvp", "value_and_grad(", "custom_vjp")


def violations(name: str, text: str) -> list[str]:
    """Every import of the autodiff path and every mention of an autodiff transformation (or of
    the autodiff path's convolution) in one source file."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            mods = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            mods = []
        found += [f"{name} imports {m}" for m in mods
                  if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_MODULES)]
        attr = node.attr if isinstance(node, ast.Attribute) else \
            node.id if isinstance(node, ast.Name) else \
            node.name.split(".")[-1] if isinstance(node, ast.alias) else None
        if attr in FORBIDDEN_NAMES:
            found.append(f"{name}:{getattr(node, 'lineno', '?')} names {attr}")
    words = " ".join(tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                     if tok.type in (tokenize.NAME, tokenize.COMMENT, tokenize.STRING))
    found += [f"{name} mentions {bad}" for bad in FORBIDDEN_TEXT if bad in words]
    return found


def test_the_reference_path_is_independent():
    files = sorted(MANUAL.glob("*.py"))
    assert len(files) >= 5
    assert [v for f in files for v in violations(f.name, f.read_text())] == []


def test_the_checker_catches_each_kind_of_violation():
    planted = {
        "from nnfun.layers import dense_apply\n": "imports nnfun.layers",
        "import nnfun.train\n": "imports nnfun.train",
        "import jax\ng = jax.grad(lambda x: x)\n": "names grad",
        "from jax import vjp\n": "names vjp",
        "y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME')\n": "names conv_general_dilated",
        "# calls jax.grad somewhere\n": "mentions jax.grad",
    }
    for text, expected in planted.items():
        found = violations("planted.py", text)
        assert any(expected in v for v in found), (text, found)
