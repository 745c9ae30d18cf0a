"""`python -m eqtangents`: infinite-width kernel regression on the bundled digits.

Computes the NNGP and NTK of an infinitely wide network on the 8x8 handwritten
digits shipped with the package, then the exact NNGP posterior mean and the
prediction of gradient flow to convergence (the NTK mean), and prints test
accuracy and timings. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def build_model(arch: str, depth: int, W_std: float, b_std: float):
    """The default architectures of the demo."""
    import eqtangents as et

    if arch == "fc":
        hidden = [
            et.Serial(et.Dense(512, W_std, b_std), et.Relu()) for _ in range(depth)
        ]
        return et.Serial(*hidden, et.Dense(10, W_std, b_std))
    if arch == "cnn":
        hidden = [
            et.Serial(et.Conv(64, (3, 3), padding="SAME", W_std=W_std, b_std=b_std),
                      et.Relu())
            for _ in range(depth)
        ]  # fmt: skip
        return et.Serial(*hidden, et.Flatten(), et.Dense(10, W_std, b_std))
    raise ValueError(f"unknown architecture {arch!r}; choose 'fc' or 'cnn'")


def kernel_in_blocks(kernel_fn, x1, x2, batch_size: int):
    """NNGP and NTK of `(x1, x2)` (a named tuple), `batch_size` rows at a time.

    The last block is padded so that every call has one shape (one compilation).
    """
    x2 = x1 if x2 is None else x2
    n = len(x1)
    padded = jnp.concatenate(
        [x1, jnp.zeros((-n % batch_size,) + x1.shape[1:], x1.dtype)]
    )
    rows = [kernel_fn(padded[i : i + batch_size], x2) for i in range(0, n, batch_size)]
    joined = rows[0]._replace(
        nngp=jnp.concatenate([r.nngp for r in rows])[:n],
        ntk=jnp.concatenate([r.ntk for r in rows])[:n],
    )
    return jax.block_until_ready(joined)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m eqtangents",
        description=__doc__.split("\n\n")[0].replace("`python -m eqtangents`: ", ""),
    )
    parser.add_argument(
        "--arch",
        choices=["fc", "cnn"],
        default="fc",
        help="fully connected (default) or convolutional network",
    )
    parser.add_argument("--depth", type=int, default=3, help="hidden layers (3)")
    parser.add_argument(
        "--n-train", type=int, default=1000, help="training images (1000 of 1797)"
    )
    parser.add_argument("--n-test", type=int, default=797, help="test images (797)")
    parser.add_argument("--W-std", type=float, default=1.5, help="weight std (1.5)")
    parser.add_argument("--b-std", type=float, default=0.05, help="bias std (0.05)")
    parser.add_argument(
        "--diag-reg",
        type=float,
        default=1e-4,
        help="ridge, relative to the mean kernel diagonal (1e-4)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="rows of the kernel computed at once (256)",
    )
    parser.add_argument("--float64", action="store_true", help="compute in float64")
    parser.add_argument("--seed", type=int, default=0, help="split seed (0)")
    args = parser.parse_args(argv)  # fmt: skip

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    import eqtangents as et
    from eqtangents.data import load_digits

    images, labels = load_digits()
    if args.n_train + args.n_test > len(images) or min(args.n_train, args.n_test) < 1:
        parser.error(f"need 1 <= n-train + n-test <= {len(images)}")
    order = np.random.default_rng(args.seed).permutation(len(images))
    train, test = (
        order[: args.n_train],
        order[args.n_train : args.n_train + args.n_test],
    )
    if args.arch == "fc":
        images = images.reshape(len(images), -1)  # flat vectors (64,)
    x = images - images[train].mean()
    x = x / x[train].std()
    dtype = jnp.float64 if args.float64 else jnp.float32
    x_train, x_test = jnp.asarray(x[train], dtype), jnp.asarray(x[test], dtype)
    y_train = jnp.asarray(np.eye(10)[labels[train]] - 0.1, dtype)

    model = build_model(args.arch, args.depth, args.W_std, args.b_std)
    print(
        f"eqtangents {et.__version__} demo: 8x8 digits, {args.n_train} train / "
        f"{args.n_test} test, {args.arch} network of depth {args.depth} "
        f"({jnp.dtype(dtype).name}, {jax.devices()[0].platform})"
    )
    start = time.perf_counter()
    kernel_fn = jax.jit(lambda a, b: model.kernel(a, b, get=("nngp", "ntk")))
    k_train = kernel_in_blocks(kernel_fn, x_train, None, args.batch_size)
    k_test = kernel_in_blocks(kernel_fn, x_test, x_train, args.batch_size)
    kernel_seconds = time.perf_counter() - start

    start = time.perf_counter()
    predictor = et.predict.gp_inference(k_train, y_train, diag_reg=args.diag_reg)
    means = predictor(("nngp", "ntk"), k_test)
    means = jax.block_until_ready(means)
    inference_seconds = time.perf_counter() - start

    results = {}
    for name in ("nngp", "ntk"):
        accuracy = float(np.mean(np.argmax(getattr(means, name), 1) == labels[test]))
        results[f"{name}_accuracy"] = accuracy
    results.update(kernel_seconds=kernel_seconds, inference_seconds=inference_seconds)
    n_entries = args.n_train * (args.n_train + args.n_test)
    print(
        f"kernels    NNGP+NTK, {n_entries:,} entries: {kernel_seconds:.2f} s "
        "(compilation included)"
    )
    print(f"inference  NNGP posterior and NTK gradient flow (t=inf): "
          f"{inference_seconds:.2f} s")  # fmt: skip
    print(
        f"test accuracy: NNGP {100 * results['nngp_accuracy']:.1f} %, "
        f"NTK {100 * results['ntk_accuracy']:.1f} %"
    )
    return results


if __name__ == "__main__":
    main()
