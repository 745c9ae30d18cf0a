"""Kernel functions and inputs shared by `test_batch.py` and the processes it
starts (`_batch_worker.py`), so that every process computes the same tiles."""

from __future__ import annotations

import functools

import jax
import numpy as np

import eqtangents as et

N1, N2, DIM, BATCH_SIZE = 23, 10, 5, 4  # sizes that do not divide the tiles


def inputs():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N1, DIM)), rng.normal(size=(N2, DIM))


def model():
    return et.Serial(et.Dense(8, 1.5, 0.1), et.Relu(), et.Dense(3, 1.2, 0.05))


def cases() -> dict:
    """`{name: (kernel_fn, kwargs, batch options)}`: analytic, empirical and
    Monte Carlo kernels."""
    net = model().init(jax.random.key(0), (DIM,))
    empirical = functools.partial(et.empirical_kernel, net, trace_axes=())
    monte_carlo = functools.partial(
        et.monte_carlo_kernel, model(), key=jax.random.key(1), n_samples=3
    )
    return {
        "kernel": (model().kernel, {}, {}),  # an `et.Kernel`
        "analytic": (model().kernel, {"get": ("nngp", "ntk")}, {}),
        "empirical": (empirical, {}, {"symmetry": "pairs"}),
        "monte_carlo": (monte_carlo, {"get": "ntk"}, {}),
    }


def flat(out) -> dict:
    """The arrays of a kernel function's output, by name."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(out)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def run_all(**options) -> dict:
    """Every case with `x2=None` and with `x2`, through `et.batch(**options)`
    (without the `et.Kernel` output when the result is held in NumPy arrays)."""
    x1, x2 = inputs()
    results = {}
    on_host = options.get("store_on_device") is False or "out" in options
    for name, (kernel_fn, kwargs, batch_options) in cases().items():
        if on_host and name == "kernel":
            continue
        batched = et.batch(kernel_fn, BATCH_SIZE, **batch_options, **options)
        for label, second in (("sym", None), ("cross", x2)):
            out = batched(x1, second, **kwargs)
            if out is not None:
                for key, value in flat(out).items():
                    results[f"{name}/{label}{key}"] = value
    return results
