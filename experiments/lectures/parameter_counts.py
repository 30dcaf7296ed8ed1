"""Counting parameters: lecture 002's concept exercise.

"Suppose we have an image" of D x N pixels (here 28 x 28, D rows of N pixels):

1. a feed-forward net with L hidden layers of M nodes and a single output:
   (DN) M + M^2 (L - 1) + M weights (plus L M + 1 biases);
2. a conv net with patch size P and L layers, then a fully connected single output: thanks to
   parameter tying, L P^2 filter weights plus the output layer's (D - LP)(N - LP) / (pooling
   factor), in the notes' approximation; exactly, with "VALID" convolutions each layer trims
   P - 1 rows and columns, so the dense layer sees (D - L(P - 1)) (N - L(P - 1)) inputs, and
   with "SAME" convolutions each followed by 2x2 max pooling it sees (D / 2^L)(N / 2^L);
3. an RNN that travels from row d = 0 to d = D, reading one row of N pixels a step, with H
   hidden units and a single output: N H + H^2 + H (input, recurrent, bias), plus H + 1 for
   the output; and its LSTM (four gates: 4 (N H + H^2 + H)) and GRU variants. nnfun's GRU has
   two biases per gate, one on the input side and one on the recurrent side (PyTorch's and
   cuDNN's equations: the reset gate scales h W_hn + b_hn, so that bias cannot be merged):
   3 (N H + H^2 + 2 H); the textbook GRU with one bias per gate has 3 (N H + H^2 + H);

plus the autoencoder of the same lecture's list, DN -> M -> DN.

Every architecture nnfun can build (MLP, CNN, autoencoder, and the recurrent nets: reshape
(N, D, N, 1) -> (N, D, N), one ``rnn`` / ``lstm`` / ``gru`` layer of H units, dense 1 on its
last state) is counted with `nnfun.models.param_count` of the parameters its ``init`` makes
(nnfun's own initialiser, traced with `jax.eval_shape`: shapes only, nothing allocated), and
the closed form is checked against it; the script also prints the recurrent layers' parameter
shapes, the GRU's ``b_x`` and ``b_h`` among them. The notes'
approximation of the CNN count, the untied CNN and the one-bias GRU are closed forms only.
With M = H = 100, L = 3 and P = 5.
"""

from __future__ import annotations

import jax
from _common import (
    figure,
    finish,
    markdown_table,
    parse_args,
    save_figure,
    save_markdown,
    save_table,
    sized,
)

from nnfun.models import layer, mlp, param_count, sequential

D, N, M, L, P, H = 28, 28, 100, 3, 5, 100
KEY = jax.random.PRNGKey(0)


def shapes(model, shape):
    """The model's parameters as `jax.ShapeDtypeStruct`s: its init traced, nothing allocated."""
    return jax.eval_shape(lambda: model.init(KEY, shape))


def count(model, shape) -> int:
    """param_count of the model's parameters, from shapes alone (no arrays allocated)."""
    return param_count(shapes(model, shape))


def conv_net(pool: bool):
    """L single-channel P x P convolutions: VALID, or SAME with 2x2 max pooling after each."""
    specs = []
    for _ in range(L):
        specs.append(layer("conv2d", features=1, kernel_size=P,
                           padding="SAME" if pool else "VALID", bias=False))
        if pool:
            specs.append(layer("max_pool2d", window=2))
    return sequential(specs + [layer("flatten"), layer("dense", features=1, bias=False)])


def recurrent_net(cell: str, d: int, n: int):
    """Reads the d x n image one row of n pixels a step: reshape -> `cell`(H) -> dense 1."""
    return sequential([layer("reshape", shape=[d, n]), layer(cell, features=H),
                       layer("dense", features=1)])


def side_after(size: int, pool: bool) -> int:
    """Spatial size after the L convolutions (VALID) or L (SAME conv, 2x2 pool) blocks."""
    for _ in range(L):
        size = size // 2 if pool else size - (P - 1)
    return size


def rows_for(d: int, n: int) -> list[dict]:
    """Every architecture for a d x n image: name, how counted, formula, count."""
    dn = d * n
    out = []

    def add(name, how, formula, closed, built=None):
        if built is not None and built != closed:
            raise AssertionError(f"{name}: closed form {closed} != param_count {built}")
        out.append({"architecture": name, "counted_by": how, "formula": formula,
                    "parameters": closed if built is None else built})

    add(f"MLP, {L} x {M} hidden, 1 output, no biases",
        "nnfun param_count (= closed form)", "DN M + M^2 (L-1) + M",
        dn * M + M * M * (L - 1) + M,
        count(mlp([M] * L, 1, bias=False, flatten=True), (d, n, 1)))
    add(f"MLP, {L} x {M} hidden, 1 output, with biases",
        "nnfun param_count (= closed form)", "DN M + M^2 (L-1) + M + (L M + 1)",
        dn * M + M * M * (L - 1) + M + L * M + 1, count(mlp([M] * L, 1, flatten=True),
                                                         (d, n, 1)))
    s_d, s_n = side_after(d, False), side_after(n, False)
    add(f"CNN, {L} tied {P}x{P} filters (VALID), dense to 1 output",
        "nnfun param_count (= closed form)", "L P^2 + (D - L(P-1)) (N - L(P-1))",
        L * P * P + s_d * s_n, count(conv_net(False), (d, n, 1)))
    add("CNN, the notes' approximation of the above", "closed form only",
        "L P^2 + (D - LP)(N - LP)", L * P * P + (d - L * P) * (n - L * P))
    p_d, p_n = side_after(d, True), side_after(n, True)
    add("CNN, SAME convs, 2x2 max pooling after each",
        "nnfun param_count (= closed form)", "L P^2 + floor(D / 2^L) floor(N / 2^L)",
        L * P * P + p_d * p_n,
        count(conv_net(True), (d, n, 1)))
    untied = sum((d - (i + 1) * (P - 1)) * (n - (i + 1) * (P - 1)) * P * P for i in range(L))
    add("same VALID CNN without tying (locally connected)", "closed form only",
        "sum_l (output positions of layer l) P^2 + dense", untied + s_d * s_n)
    add(f"autoencoder DN -> {M} -> DN", "nnfun param_count (= closed form)",
        "2 DN M + M + DN", 2 * dn * M + M + dn, count(mlp([M], dn, flatten=True), (d, n, 1)))
    add(f"RNN over {d} rows, {H} hidden, 1 output", "nnfun param_count (= closed form)",
        "N H + H^2 + H + (H + 1)", n * H + H * H + H + H + 1,
        count(recurrent_net("rnn", d, n), (d, n, 1)))
    add(f"LSTM, {H} hidden, 1 output", "nnfun param_count (= closed form)",
        "4 (N H + H^2 + H) + (H + 1)", 4 * (n * H + H * H + H) + H + 1,
        count(recurrent_net("lstm", d, n), (d, n, 1)))
    add(f"GRU, {H} hidden, 1 output, 2 biases per gate",
        "nnfun param_count (= closed form)", "3 (N H + H^2 + 2H) + (H + 1)",
        3 * (n * H + H * H + 2 * H) + H + 1, count(recurrent_net("gru", d, n), (d, n, 1)))
    add("GRU, one bias per gate (textbook)", "closed form only",
        "3 (N H + H^2 + H) + (H + 1)", 3 * (n * H + H * H + H) + H + 1)
    return out


def main() -> None:
    args = parse_args("parameter_counts", __doc__)
    rows = rows_for(D, N)
    for r in rows:
        print(f"{r['architecture']:<52}{r['parameters']:>10,}   {r['formula']}  "
              f"[{r['counted_by']}]")
    cells = {cell: {k: list(v.shape) for k, v in shapes(recurrent_net(cell, D, N),
                                                         (D, N, 1))[1].items()}
             for cell in ("rnn", "lstm", "gru")}
    for cell, layer_shapes in cells.items():
        print(f"nnfun {cell} layer parameters: " + ", ".join(
            f"{k} {tuple(v)}" for k, v in layer_shapes.items()))
    sides = sized([16, 28, 32, 64, 128], [16, 28])
    scaling = {s: rows_for(s, s) for s in sides}

    fig, axes = figure(1, 2, size=(5.0, 3.8))
    ax = axes[0, 0]
    names = [r["architecture"] for r in rows]
    colors = ["tab:blue" if r["counted_by"].startswith("nnfun") else "tab:orange" for r in rows]
    ax.barh(range(len(rows)), [r["parameters"] for r in rows], color=colors)
    for i, r in enumerate(rows):
        ax.text(r["parameters"], i, f" {r['parameters']:,}", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set(xscale="log", xlabel="parameters", xlim=(10, 3e7),
           title=f"{D}x{N} image, M = H = {M}, L = {L}, P = {P}\n"
                 "blue: nnfun param_count, orange: closed form")
    ax = axes[0, 1]
    short = {1: "MLP (with biases)", 2: "CNN, VALID, tied filters", 4: "CNN, SAME + pooling",
             5: "CNN, VALID, untied", 6: "autoencoder", 7: "RNN (one row a step)", 8: "LSTM",
             9: "GRU"}
    for i, label in short.items():
        ax.plot(sides, [scaling[s][i]["parameters"] for s in sides], marker="o", ms=3,
                label=label)
    ax.set(xscale="log", yscale="log", xlabel="image side D = N (pixels)",
           ylabel="parameters", ylim=(30, 1e9), title="how the counts grow with the image")
    ax.set_xticks(sides, [str(s) for s in sides])
    ax.minorticks_off()
    ax.legend(loc="upper left", ncols=2)
    png = save_figure(fig, args)
    save_markdown(args, f"{D} x {N} image, M = H = {M}, L = {L}, P = {P}\n\n" + markdown_table(
        ["architecture", "parameters", "formula", "counted by"],
        [[r["architecture"], f"{r['parameters']:,}", r["formula"], r["counted_by"]]
         for r in rows]))
    save_table(args, {"D": D, "N": N, "M": M, "L": L, "P": P, "H": H, "rows": rows,
                      "recurrent_layer_shapes": cells,
                      "by_image_side": {s: {r["architecture"]: r["parameters"] for r in rs}
                                        for s, rs in scaling.items()}})
    finish(args, [png])


if __name__ == "__main__":
    main()
