"""The autoencoder's code space (lecture 002, "Different Architectures"), against PCA.

- Trains the shipped configs `configs/digits_autoencoder.toml` (64 -> 256 -> 128 -> 2 ->
  128 -> 256 -> 64, ReLU, mean squared error, the targets are the inputs) and
  `configs/digits_denoising_autoencoder.toml` (an 8-wide code, Gaussian noise of stddev 0.2
  on the inputs in training only) with `nnfun.run.train_run`, as ``nnfun train`` does.
- Draws the 2-D codes of the test digits coloured by class, beside PCA's first two components
  (`nnfun.preprocessing`, fitted on the same training split), and reconstructions of test
  digits by both; the denoising autoencoder's panel shows noisy test digits and what it makes
  of them.
- Reports the test reconstruction error (mean squared, pixels in [0, 1]) of each autoencoder
  beside PCA's with the same number of components (`invert_preprocessor`), and for the
  denoising autoencoder also on noisy test inputs, against PCA-8 and against the noisy input
  itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
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

from nnfun import preprocessing as P
from nnfun.config import load_config
from nnfun.data import load_digits
from nnfun.fitting import load_run
from nnfun.models import encoder_layers
from nnfun.run import train_run

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: --set overrides of the configs: none in full; a smoke run trains a tiny net for one epoch
OVERRIDES = sized([], ["training.epochs=1", "training.batch_size=256", "model.encoder=[8]"])
SHOWN = 8  # test digits in the reconstruction rows
NOISE = 0.2


def train(name: str, out: Path):
    """Trains configs/<name>.toml into out/<name> (a fresh folder) and returns its `TrainedRun`."""
    run_dir = out / name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # this experiment's own output of an earlier run
    train_run(load_config(CONFIGS / f"{name}.toml", OVERRIDES), run_dir, quiet=True)
    return load_run(run_dir)


def pca_error(x_train: np.ndarray, x: np.ndarray, target: np.ndarray, k: int) -> tuple:
    """(PCA's k-component codes of x, its reconstructions, mean squared error to target)."""
    state = P.fit_preprocessor(x_train, method="pca", n_components=k)
    codes = P.apply_preprocessor(state, x)
    recon = P.invert_preprocessor(state, codes)
    return codes, recon, float(np.mean((recon - target) ** 2))


def scatter(ax, codes: np.ndarray, labels: np.ndarray, title: str) -> None:
    points = ax.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=6, vmin=-0.5,
                        vmax=9.5)
    ax.set(title=title, xlabel="code 1", ylabel="code 2")
    return points


def image_rows(ax, rows: list[tuple[str, np.ndarray]]) -> None:
    """Rows of 8x8 digits side by side, one labelled row per entry."""
    tiles = [np.concatenate([np.pad(img.reshape(8, 8), 1, constant_values=0.25)
                             for img in imgs], axis=1) for _, imgs in rows]
    ax.imshow(np.clip(np.concatenate(tiles, axis=0), 0, 1), cmap="gray_r", vmin=0, vmax=1)
    ax.set_yticks([10 * i + 5 for i in range(len(rows))], [r[0] for r in rows])
    ax.set_xticks([])


def main() -> None:
    args = parse_args("autoencoder_codes", __doc__)
    ae, dae = train("digits_autoencoder", args.out), train("digits_denoising_autoencoder",
                                                           args.out)
    digits = load_digits(flatten=True)
    x_train, x_test, labels = digits.x_train, digits.x_test, digits.y_test
    enc = encoder_layers(ae.model)
    codes = np.asarray(enc.apply(ae.params[:len(enc.layers)], jnp.asarray(x_test)))
    recon = np.asarray(ae.predict(x_test))
    err = float(np.mean((recon - x_test) ** 2))
    pca_codes, pca_recon, pca2 = pca_error(x_train, x_test, x_test, 2)

    noisy = x_test + NOISE * np.asarray(jax.random.normal(jax.random.PRNGKey(1), x_test.shape))
    code_k = dae.model.layers[len(encoder_layers(dae.model).layers) - 1].init_kwargs["features"]
    d_clean = float(np.mean((np.asarray(dae.predict(x_test)) - x_test) ** 2))
    denoised = np.asarray(dae.predict(noisy))
    d_noisy = float(np.mean((denoised - x_test) ** 2))
    pca_k = pca_error(x_train, x_test, x_test, code_k)[2]
    pca_k_noisy = pca_error(x_train, noisy, x_test, code_k)[2]
    noise_err = float(np.mean((noisy - x_test) ** 2))

    rows = [["autoencoder, code 2", "clean", err, pca2],
            [f"denoising autoencoder, code {code_k}", "clean", d_clean, pca_k],
            [f"denoising autoencoder, code {code_k}", f"noisy (stddev {NOISE})", d_noisy,
             pca_k_noisy]]
    text = markdown_table(["model", "test inputs", "autoencoder MSE", "PCA MSE (same k)"], rows)
    text += (f"\n\nThe noisy test inputs themselves are {noise_err:.4g} from the clean ones "
             f"(mean squared). Mean squared error over all 64 pixels of the 899 test digits, "
             f"pixels in [0, 1]; PCA fitted on the same training split.")
    print(text)

    fig, axes = figure(2, 2, size=(4.6, 3.6))
    points = scatter(axes[0, 0], codes, labels, f"autoencoder codes of the test digits\n"
                     f"(reconstruction MSE {err:.4f})")
    scatter(axes[0, 1], pca_codes, labels, f"PCA, first two components\n"
            f"(reconstruction MSE {pca2:.4f})")
    fig.colorbar(points, ax=axes[0, 1], ticks=range(10), label="digit")
    image_rows(axes[1, 0], [("test", x_test[:SHOWN]), ("AE", recon[:SHOWN]),
                            ("PCA", pca_recon[:SHOWN])])
    axes[1, 0].set_title("reconstructions from a 2-D code")
    image_rows(axes[1, 1], [("noisy", noisy[:SHOWN]), ("DAE", denoised[:SHOWN]),
                            ("clean", x_test[:SHOWN])])
    axes[1, 1].set_title(f"denoising autoencoder (code {code_k}), noise {NOISE}")
    png = save_figure(fig, args)
    save_markdown(args, text)
    save_table(args, {"autoencoder_test_mse": err, "pca2_test_mse": pca2,
                      "denoising_code": code_k, "denoising_test_mse_clean": d_clean,
                      f"pca{code_k}_test_mse_clean": pca_k,
                      "denoising_test_mse_noisy": d_noisy,
                      f"pca{code_k}_test_mse_noisy": pca_k_noisy,
                      "noisy_input_mse": noise_err, "noise_stddev": NOISE,
                      "autoencoder_steps": ae.step, "denoising_steps": dae.step})
    finish(args, [png])


if __name__ == "__main__":
    main()
