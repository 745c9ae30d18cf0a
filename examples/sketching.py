"""Sketching at scale: kernel features against the exact kernel, their error
and their cost as the feature dimension grows.

    python examples/sketching.py [--quick] [--out DIR]

`et.features.from_network(model)` replaces every layer by a feature layer;
`embed` maps each input to finite vectors whose inner products approximate
the NNGP and the NTK, so that regression costs O(N d^2) instead of O(N^3).
"""

import time

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _cli import parse, save  # noqa: E402

import eqtangents as et  # noqa: E402
from eqtangents.data import load_digits  # noqa: E402

args = parse(__doc__.splitlines()[0])
n = 256 if args.quick else 1797
dims = [64, 256, 1024] if args.quick else [64, 256, 1024, 4096, 8192]

images, labels = load_digits()
x = jax.numpy.asarray(images[:n].reshape(n, -1))
model = et.Serial(
    et.Dense(512, W_std=1.5, b_std=0.05), et.Relu(),
    et.Dense(512, W_std=1.5, b_std=0.05), et.Relu(),
    et.Dense(1, W_std=1.5, b_std=0.05),
)  # fmt: skip


def timed(fn):
    jax.block_until_ready(fn())  # compile
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


exact, exact_seconds = timed(lambda: model.kernel(x, None))
print(f"exact NNGP and NTK of {n} inputs: {exact_seconds:.3f} s")
errors, seconds = {"nngp": [], "ntk": []}, []
for dim in dims:
    fmodel = et.features.from_network(model, feature_dim=dim)
    fmodel = fmodel.init(jax.random.key(0), x.shape[1:])
    features, took = timed(lambda f=fmodel: et.features.embed(f, x, progress=False))
    approx = et.features.kernel(features)
    seconds.append(took)
    for get in errors:
        a, b = np.asarray(getattr(approx, get)), np.asarray(getattr(exact, get))
        errors[get].append(np.linalg.norm(a - b) / np.linalg.norm(b))
    print(
        f"feature_dim {dim:5d}: relative error NNGP {errors['nngp'][-1]:.4f}, "
        f"NTK {errors['ntk'][-1]:.4f}; embedding {took:.3f} s"
    )

fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for get, values in errors.items():
    axes[0].loglog(dims, values, "o-", label=get.upper())
axes[0].loglog(
    dims,
    errors["ntk"][0] * np.sqrt(dims[0] / np.asarray(dims)),
    "k:",
    label=r"$\propto d^{-1/2}$",
)
axes[0].set_xlabel("feature dimension $d$")
axes[0].set_ylabel(r"$\|\tilde K - K\|_F / \|K\|_F$")
axes[0].legend()
axes[1].loglog(dims, seconds, "o-", label="embed (features of all inputs)")
axes[1].axhline(exact_seconds, color="k", ls="--", label="exact kernel")
axes[1].set_xlabel("feature dimension $d$")
axes[1].set_ylabel("seconds")
axes[1].legend()
save(fig, args, "sketching")
