"""Writes `nt_aggregate.npz`: Neural Tangents 0.6.5 kernels of graph networks.

Run with Neural Tangents 0.6.5 (jax 0.4.23) installed:

    python tests/data/make_nt_aggregate.py

Inputs are stored in NT's layout, `(N, *spatial, C)`; patterns per example.
"""

from pathlib import Path

import jax
import numpy as np
from neural_tangents import stax

jax.config.update("jax_enable_x64", True)


def network(case):
    agg = stax.Aggregate(
        aggregate_axis=case["axes"], implementation=case["implementation"]
    )
    head = [stax.GlobalAvgPool()] if case["pool"] else [stax.Flatten()]
    return stax.serial(
        stax.Dense(16, W_std=1.3, b_std=0.2),
        stax.Relu(),
        agg,
        stax.Dense(16, W_std=1.1, b_std=0.1, parameterization=case["param"]),
        stax.Erf(),
        agg,
        *head,
        stax.Dense(1, W_std=0.9),
    )


def patterns(rng, case, n, spatial):
    vertices = [spatial[a - 1] for a in case["axes"]]
    if case["implementation"] == "DENSE":
        weights = rng.uniform(0, 1, (n, *vertices, *vertices))
        return weights * (rng.uniform(size=weights.shape) < 0.5)
    edges = np.stack(
        [rng.integers(0, v, (n, 9, 2)) for v in vertices], axis=2
    )  # (n, n_edges, K, 2)
    edges[:, -2:, 0, 1] = -1  # padding arcs, ignored
    return edges


CASES = [
    dict(id="dense_1d", shape=(5,), axes=(1,), implementation="DENSE", pool=True,
         param="ntk"),
    dict(id="sparse_2d", shape=(3, 4), axes=(1, 2), implementation="SPARSE",
         pool=False, param="standard"),
    dict(id="dense_2d_one_axis", shape=(3, 4), axes=(2,), implementation="DENSE",
         pool=True, param="ntk"),
]  # fmt: skip


def main():
    rng = np.random.default_rng(0)
    arrays = {}
    for case in CASES:
        x1 = rng.normal(size=(3, *case["shape"], 2))
        x2 = rng.normal(size=(2, *case["shape"], 2))
        p1 = patterns(rng, case, 3, case["shape"])
        p2 = patterns(rng, case, 2, case["shape"])
        _, _, kernel_fn = network(case)
        k = kernel_fn(x1, x2, ("nngp", "ntk"), pattern=(p1, p2))
        k11 = kernel_fn(x1, None, ("nngp", "ntk"), pattern=(p1, p1))
        for name, value in dict(
            x1=x1, x2=x2, pattern1=p1, pattern2=p2, nngp=k.nngp, ntk=k.ntk,
            nngp_11=k11.nngp, ntk_11=k11.ntk,
        ).items():  # fmt: skip
            arrays[f"{case['id']}/{name}"] = np.asarray(value)
    np.savez(Path(__file__).with_name("nt_aggregate.npz"), **arrays)


if __name__ == "__main__":
    main()
