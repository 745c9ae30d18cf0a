"""Infinite-ensemble MSE prediction: seconds and peak memory.

Prints one JSON line:

    {"workload": "predict_mse", "library": "eqtangents", "seconds": ...,
     "first_call_seconds": ..., "peak_memory_mb": ...}

The workload: `gradient_descent_mse_ensemble` of a 3-layer ReLU network,
3 x (Dense(512, W_std=1.5, b_std=0.05), Relu), Dense(1), on 4,000 training and
1,000 test inputs of dimension 64, float32, at t = infinity (`t=None`) with
`compute_cov=True` for both NNGP and NTK (`get=None`), `diag_reg=1e-4`. Each
timed call computes the kernels, factorizes and predicts from scratch.

eqtangents runs the whole computation under `eqx.filter_jit` with
`solver="cholesky"` (NT also uses a Cholesky factorization at t = infinity).
`--library nt` runs the same workload with Neural Tangents 0.6.5 (in an
environment with `neural-tangents==0.6.5` and `jax==0.4.23`): its `kernel_fn`
jitted with `get` static, a fresh `predict_fn` per call (its factorizations are
cached inside the closure, so reusing one would time nothing).

The measurement runs in a fresh process, so that its peak memory (the device's
peak bytes in use where JAX reports it, else the process's peak resident memory)
is its own. `--save-outputs DIR` writes the predictions to `DIR/predict_mse-LIBRARY.npz`
and the train-train and test-train kernels to
`DIR/predict_mse.kernels-LIBRARY.npz` (`compare.py` checks the two libraries
agree).

    python benchmarks/predict_mse.py [--library nt] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys

from _common import float_type, run_fresh, save_outputs, time_calls, use_x64

N_TRAIN, N_TEST, DIM, WIDTH, DEPTH = 4000, 1000, 64, 512, 3
W_STD, B_STD, DIAG_REG = 1.5, 0.05, 1e-4


def _data():
    import numpy as np

    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(N_TRAIN, DIM)).astype(float_type())
    x_test = rng.normal(size=(N_TEST, DIM)).astype(float_type())
    y_train = np.sin(x_train[:, :1]).astype(float_type())
    return x_train, y_train, x_test


def problem():
    """The eqtangents network and the data: `predict`'s arguments."""
    import eqtangents as et

    layers = []
    for _ in range(DEPTH):
        layers += [et.Dense(WIDTH, W_std=W_STD, b_std=B_STD), et.Relu()]
    model = et.Serial(*layers, et.Dense(1, W_std=W_STD, b_std=B_STD))
    return (model, *_data())


def predict(model, x_train, y_train, x_test):
    """The timed computation: kernels, factorizations and the prediction."""
    import eqtangents as et

    predictor = et.predict.gradient_descent_mse_ensemble(
        model.kernel, x_train, y_train, diag_reg=DIAG_REG, solver="cholesky"
    )
    return predictor(None, x_test, None, compute_cov=True)


def _eqtangents():
    import equinox as eqx

    model, x_train, y_train, x_test = problem()
    run = eqx.filter_jit(predict)
    kernel_fn = eqx.filter_jit(model.kernel)
    return lambda: run(model, x_train, y_train, x_test), kernel_fn


def _neural_tangents():
    import jax
    import neural_tangents as nt
    from neural_tangents import stax

    layers = []
    for _ in range(DEPTH):
        layers += [stax.Dense(WIDTH, W_std=W_STD, b_std=B_STD), stax.Relu()]
    _, _, kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=W_STD, b_std=B_STD))
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    x_train, y_train, x_test = _data()

    def run():
        predict_fn = nt.predict.gradient_descent_mse_ensemble(
            kernel_fn, x_train, y_train, diag_reg=DIAG_REG
        )
        return predict_fn(t=None, x_test=x_test, get=None, compute_cov=True)

    return run, kernel_fn


def measure(library: str, repeats: int, save_dir: str | None = None) -> dict:
    run, kernel_fn = _eqtangents() if library == "eqtangents" else _neural_tangents()
    save = save_dir and f"{save_dir}/predict_mse-{library}.npz"
    row = {"workload": "predict_mse", "library": library}
    row.update(time_calls(run, repeats, save))
    if save_dir:  # after the timing, so the peak memory is the workload's own
        x_train, _, x_test = _data()
        get = ("nngp", "ntk")
        kernels = {
            "train_train": kernel_fn(x_train, None, get=get),
            "test_train": kernel_fn(x_test, x_train, get=get),
        }
        save_outputs(f"{save_dir}/predict_mse.kernels-{library}.npz", kernels)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", choices=("eqtangents", "nt"), default="eqtangents")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--save-outputs", metavar="DIR", help="write predictions and kernels there"
    )
    parser.add_argument(
        "--x64", action="store_true", help="in float64 (a reference result)"
    )
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.x64:
        use_x64()
    if args.in_process:
        print(json.dumps(measure(args.library, args.repeats, args.save_outputs)))
        return
    command = [
        sys.executable,
        __file__,
        "--in-process",
        f"--library={args.library}",
        f"--repeats={args.repeats}",
    ] + (["--x64"] if args.x64 else [])
    if args.save_outputs:
        command.append(f"--save-outputs={args.save_outputs}")
    run_fresh(command, {"workload": "predict_mse", "library": args.library})


if __name__ == "__main__":
    main()
