"""Backpropagation on a computational graph, node by node (lectures 000 and 003).

Two graphs, each evaluated forward and then backward with the hand-written gates of
`nnfun.manual.gates` (add: distributor, mul: swapper), every node's value and gradient printed
as the slides draw them, and checked against `jax.grad`:

1. f(x, y, z) = (x + y) z at (-2, 5, -4): q = 3, f = -12; df/dx = df/dy = -4, df/dz = 3.
2. the sigmoid neuron f(w, x) = 1 / (1 + exp(-(w0 x0 + w1 x1 + w2))) at w = (2, -3, -3),
   x = (-1, -2), split into mul, add, *-1, exp, +1 and 1/x gates: f = 0.73,
   dw = (-0.20, -0.39, 0.20), dx = (0.39, -0.59). The same numbers come from collapsing the
   last four gates into one sigmoid gate (local gradient (1 - 0.73) 0.73 = 0.20, via
   `nnfun.manual.activations`), from the dense layer's hand-written backward
   (`nnfun.manual.layers.dense_backward`), and from `jax.grad` of `nnfun.layers.dense_apply`.

nnfun has no exp or reciprocal gate; the two are written here in the gates' forward / backward
style (three lines each).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from _common import figure, finish, parse_args, save_figure, save_table

from nnfun import activations, layers
from nnfun.manual import activations as manual_act
from nnfun.manual import gates
from nnfun.manual import layers as manual_layers


class Node(NamedTuple):
    """One node as the slides draw it: its name, the gate that made it, value and gradient."""

    name: str
    op: str
    value: float
    grad: float
    autodiff: float | None  # jax.grad of f with respect to this node, where it is an input


# --- the two gates nnfun lacks, in the style of nnfun.manual.gates


def exp_forward(x):
    out = jnp.exp(x)
    return out, out  # cache exp(x): d exp(x) / dx = exp(x)


def exp_backward(dout, cache):
    return dout * cache


def reciprocal_forward(x):
    return 1.0 / x, x  # cache x: d (1/x) / dx = -1 / x^2


def reciprocal_backward(dout, cache):
    return -dout / cache**2


# --- graph 1: (x + y) z


@jax.jit
def _add_mul_values(x, y, z):
    q, c_add = gates.add_forward(x, y)
    f, c_mul = gates.mul_forward(q, z)
    df = 1.0
    dq, dz = gates.mul_backward(df, c_mul)
    dx, dy = gates.add_backward(dq, c_add)
    auto = jax.grad(lambda a, b, c: (a + b) * c, argnums=(0, 1, 2))(x, y, z)
    return q, f, df, dq, dz, dx, dy, auto


def add_mul_graph(x: float, y: float, z: float) -> list[Node]:
    """Forward then backward through the add and mul gates (one compiled call)."""
    q, f, df, dq, dz, dx, dy, auto = _add_mul_values(x, y, z)
    return [Node("x", "input", x, dx, auto[0]), Node("y", "input", y, dy, auto[1]),
            Node("z", "input", z, dz, auto[2]), Node("q", "add x+y", q, dq, None),
            Node("f", "mul q*z", f, df, None)]


# --- graph 2: the sigmoid neuron, gate by gate


def neuron(w: jax.Array, x: jax.Array) -> jax.Array:
    return 1.0 / (1.0 + jnp.exp(-(w[0] * x[0] + w[1] * x[1] + w[2])))


@jax.jit
def _sigmoid_values(w, x):
    w0, w1, w2 = w
    x0, x1 = x
    a, c_a = gates.mul_forward(w0, x0)            # w0 x0 = -2
    b, c_b = gates.mul_forward(w1, x1)            # w1 x1 = 6
    s, c_s = gates.add_forward(a, b)              # 4
    z, c_z = gates.add_forward(s, w2)             # 1
    nz, c_nz = gates.mul_forward(z, -1.0)         # -1
    e, c_e = exp_forward(nz)                      # 0.37
    d, c_d = gates.add_forward(e, 1.0)            # 1.37
    f, c_f = reciprocal_forward(d)                # 0.73
    df = 1.0
    dd = reciprocal_backward(df, c_f)             # -0.53
    de, _ = gates.add_backward(dd, c_d)           # -0.53
    dnz = exp_backward(de, c_e)                   # -0.20
    dz, _ = gates.mul_backward(dnz, c_nz)         # 0.20
    ds, dw2 = gates.add_backward(dz, c_z)
    da, db = gates.add_backward(ds, c_s)
    dw0, dx0 = gates.mul_backward(da, c_a)
    dw1, dx1 = gates.mul_backward(db, c_b)
    gw, gx = jax.grad(neuron, argnums=(0, 1))(w, x)
    return (a, b, s, z, nz, e, d, f, df, dd, de, dnz, dz, ds, dw2, da, db, dw0, dx0, dw1, dx1,
            gw, gx)


def sigmoid_graph(w: tuple[float, ...], x: tuple[float, ...]) -> list[Node]:
    """Forward then backward through eight gates (one compiled call)."""
    w0, w1, w2 = w
    x0, x1 = x
    (a, b, s, z, nz, e, d, f, df, dd, de, dnz, dz, ds, dw2, da, db, dw0, dx0, dw1, dx1, gw,
     gx) = _sigmoid_values(jnp.array(w), jnp.array(x))
    return [Node("w0", "input", w0, dw0, gw[0]), Node("x0", "input", x0, dx0, gx[0]),
            Node("w1", "input", w1, dw1, gw[1]), Node("x1", "input", x1, dx1, gx[1]),
            Node("w2", "input", w2, dw2, gw[2]),
            Node("w0*x0", "mul", a, da, None), Node("w1*x1", "mul", b, db, None),
            Node("sum", "add", s, ds, None), Node("z", "add +w2", z, dz, None),
            Node("-z", "mul *-1", nz, dnz, None), Node("exp", "exp", e, de, None),
            Node("1+exp", "add +1", d, dd, None), Node("f", "1/x", f, df, None)]


@jax.jit
def _routes(params, xb):
    z, c_dense = manual_layers.dense_forward(params, xb)
    f, c_sig = manual_act.sigmoid_forward({}, z)
    dz, _ = manual_act.sigmoid_backward(jnp.ones_like(f), c_sig)
    dx, dp = manual_layers.dense_backward(dz, c_dense)
    manual = [f[0, 0], dp["w"][0, 0], dp["w"][1, 0], dp["b"][0], dx[0, 0], dx[0, 1]]

    def auto_f(p, v):
        return activations.sigmoid(layers.dense_apply(p, v))[0, 0]

    ap, ax = jax.grad(auto_f, argnums=(0, 1))(params, xb)
    auto = [auto_f(params, xb), ap["w"][0, 0], ap["w"][1, 0], ap["b"][0], ax[0, 0], ax[0, 1]]
    return manual, auto, dz[0, 0]


def sigmoid_gate_and_layer(w: tuple[float, ...], x: tuple[float, ...]) -> dict[str, list]:
    """The same neuron three more ways: a sigmoid gate, the dense layer's manual backward,
    and jax.grad of the autodiff layer. Returns {route: [f, dw0, dw1, dw2, dx0, dx1]}."""
    params = {"w": jnp.array([[w[0]], [w[1]]]), "b": jnp.array([w[2]])}
    manual, auto, local = _routes(params, jnp.array([list(x)]))
    return {"sigmoid gate + manual dense_backward": [float(v) for v in manual],
            "jax.grad of dense_apply + sigmoid": [float(v) for v in auto],
            "sigmoid local gradient (1 - f) f": [float(local)]}


def print_nodes(title: str, nodes: list[Node]) -> None:
    print(title)
    print(f"  {'node':<7}{'gate':<10}{'value':>9}{'gradient':>10}{'jax.grad':>10}")
    for n in nodes:
        auto = "" if n.autodiff is None else f"{float(n.autodiff):10.2f}"
        print(f"  {n.name:<7}{n.op:<10}{float(n.value):9.2f}{float(n.grad):10.2f}{auto}")


def draw(ax, nodes: list[Node], pos: dict[str, tuple[float, float]],
         edges: list[tuple[str, str]], title: str) -> None:
    """Nodes at `pos`, value in green above, gradient in red below (the slides' colours)."""
    by = {n.name: n for n in nodes}
    for src, dst in edges:
        ax.annotate("", xy=pos[dst], xytext=pos[src],
                    arrowprops={"arrowstyle": "->", "color": "0.5", "shrinkA": 12, "shrinkB": 18})
    for name, (px, py) in pos.items():
        n = by[name]
        label = n.name if n.op == "input" else n.op
        ax.text(px, py, label, ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.3"})
        ax.text(px, py + 0.35, f"{float(n.value):.2f}", ha="center", color="green", fontsize=8)
        ax.text(px, py - 0.6, f"{float(n.grad):.2f}", ha="center", color="red", fontsize=8)
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    ax.set_ylim(min(ys) - 1.0, max(ys) + 0.8)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def main() -> None:
    args = parse_args("backprop_graph", __doc__)
    with jax.enable_x64(True):
        g1 = add_mul_graph(-2.0, 5.0, -4.0)
        g2 = sigmoid_graph((2.0, -3.0, -3.0), (-1.0, -2.0))
        routes = sigmoid_gate_and_layer((2.0, -3.0, -3.0), (-1.0, -2.0))

    print_nodes("f(x, y, z) = (x + y) z at x = -2, y = 5, z = -4 (green: value, red: gradient)",
                g1)
    v = {n.name: n for n in g1}
    print(f"summary: f = {float(v['f'].value):g}, df/dx = {float(v['x'].grad):g}, "
          f"df/dy = {float(v['y'].grad):g}, df/dz = {float(v['z'].grad):g}")
    print_nodes("\nsigmoid neuron f(w, x) = 1 / (1 + exp(-(w0 x0 + w1 x1 + w2))), "
                "w = (2, -3, -3), x = (-1, -2)", g2)
    s = {n.name: n for n in g2}
    print(f"summary: f = {float(s['f'].value):.2f}, dw = ({float(s['w0'].grad):.2f}, "
          f"{float(s['w1'].grad):.2f}, {float(s['w2'].grad):.2f}), "
          f"dx = ({float(s['x0'].grad):.2f}, {float(s['x1'].grad):.2f})")
    print("the same neuron by other routes [f, dw0, dw1, dw2, dx0, dx1]:")
    for route, vals in routes.items():
        print(f"  {route:<40}" + " ".join(f"{x:7.4f}" for x in vals))

    gate_values = [float(s[k].value) for k in ("f",)] + [float(s[k].grad) for k in
                                                         ("w0", "w1", "w2", "x0", "x1")]
    max_diff = max(max(abs(a - b) for a, b in zip(gate_values, r))
                   for r in list(routes.values())[:2])
    max_diff = max(max_diff, max(abs(float(n.grad) - float(n.autodiff))
                                 for n in g1 + g2 if n.autodiff is not None))
    print(f"max |gates - other routes| = {max_diff:.2e}")

    fig, axes = figure(2, 1, size=(9.0, 3.0), gridspec_kw={"height_ratios": [1, 1.5]})
    draw(axes[0, 0], g1, {"x": (0, 1.5), "y": (0, 0), "z": (0, -1.5), "q": (2.5, 0.75),
                          "f": (5, 0)},
         [("x", "q"), ("y", "q"), ("q", "f"), ("z", "f")], "f = (x + y) z")
    pos = {"w0": (0, 3), "x0": (0, 1.5), "w1": (0, 0), "x1": (0, -1.5), "w2": (0, -3),
           "w0*x0": (1.5, 2.25), "w1*x1": (1.5, -0.75), "sum": (3, 0.75), "z": (4.5, 0),
           "-z": (6, 0), "exp": (7.5, 0), "1+exp": (9, 0), "f": (10.5, 0)}
    edges = [("w0", "w0*x0"), ("x0", "w0*x0"), ("w1", "w1*x1"), ("x1", "w1*x1"),
             ("w0*x0", "sum"), ("w1*x1", "sum"), ("sum", "z"), ("w2", "z"), ("z", "-z"),
             ("-z", "exp"), ("exp", "1+exp"), ("1+exp", "f")]
    draw(axes[1, 0], g2, pos, edges, "sigmoid neuron, w = (2, -3, -3), x = (-1, -2)")
    png = save_figure(fig, args)

    def rows(nodes: list[Node]) -> list[dict]:
        return [{"node": n.name, "gate": n.op, "value": float(n.value), "grad": float(n.grad),
                 "jax_grad": None if n.autodiff is None else float(n.autodiff)} for n in nodes]

    save_table(args, {"add_mul_graph": rows(g1), "sigmoid_neuron": rows(g2),
                      "sigmoid_neuron_other_routes": routes,
                      "expected": {"f": -12, "dx": -4, "dy": -4, "dz": 3, "sigmoid_f": 0.73,
                                   "dw": [-0.20, -0.39, 0.20], "dx_neuron": [0.39, -0.59]},
                      "max_abs_difference_between_routes": max_diff,
                      "sigmoid_f_exact": 1 / (1 + math.exp(-1))})
    finish(args, [png])


if __name__ == "__main__":
    main()
