"""The empirical NTK of an Equinox ResNet, by each of the three implementations,
and what each costs.

    python examples/empirical_resnet.py [--quick] [--out DIR]

`et.empirical_ntk` takes any Equinox module (here one written with
`equinox.nn`, not with eqtangents' layers). Its implementations compute the
same kernel: `"jacobian_contraction"` forms both Jacobians and contracts them,
`"ntk_vector_products"` never holds a Jacobian, and `"structured_derivatives"`
contracts each layer's factors (inputs and output cotangents) without forming
its Jacobian; `"auto"` picks one from the network's shapes.
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _cli import parse, save  # noqa: E402

import eqtangents as et  # noqa: E402
from eqtangents.data import load_digits  # noqa: E402

args = parse(__doc__.splitlines()[0])
n, channels, n_blocks = (8, 8, 2) if args.quick else (32, 32, 3)


class Block(eqx.Module):
    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d

    def __init__(self, channels, key):
        k1, k2 = jax.random.split(key)
        self.conv1 = eqx.nn.Conv2d(channels, channels, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(channels, channels, 3, padding=1, key=k2)

    def __call__(self, x):
        return jax.nn.relu(x + self.conv2(jax.nn.relu(self.conv1(x))))


class ResNet(eqx.Module):
    stem: eqx.nn.Conv2d
    blocks: tuple
    head: eqx.nn.Linear

    def __init__(self, channels, n_blocks, key):
        keys = jax.random.split(key, n_blocks + 2)
        self.stem = eqx.nn.Conv2d(1, channels, 3, padding=1, key=keys[0])
        self.blocks = tuple(Block(channels, k) for k in keys[1:-1])
        self.head = eqx.nn.Linear(channels, 10, key=keys[-1])

    def __call__(self, x):  # one image (1, 8, 8) -> 10 logits
        h = jax.nn.relu(self.stem(x))
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(axis=(1, 2)))


images, _ = load_digits()
x = jnp.asarray(images[:n])
net = ResNet(channels, n_blocks, jax.random.key(0))
n_params = sum(a.size for a in jax.tree.leaves(eqx.filter(net, eqx.is_array)))
print(f"ResNet with {n_params} parameters, {n} images of 1x8x8, 10 outputs")

results = {}
for implementation in (
    "jacobian_contraction",
    "ntk_vector_products",
    "structured_derivatives",
    "auto",
):
    ntk_fn = eqx.filter_jit(
        lambda net, x, impl=implementation: et.empirical_ntk(
            net, x, None, trace_axes=(), implementation=impl
        )
    )
    start = time.perf_counter()
    ntk = jax.block_until_ready(ntk_fn(net, x))
    first = time.perf_counter() - start
    times = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(ntk_fn(net, x))
        times.append(time.perf_counter() - start)
    results[implementation] = (np.asarray(ntk), first, min(times))

reference = results["jacobian_contraction"][0]
print(f"{'implementation':24s} {'first s':>8s} {'steady s':>9s} {'max rel. diff':>14s}")
for implementation, (ntk, first, steady) in results.items():
    gap = np.max(np.abs(ntk - reference)) / np.max(np.abs(reference))
    print(f"{implementation:24s} {first:8.3f} {steady:9.4f} {gap:14.1e}")
print(f"NTK shape {reference.shape}: (N, N, outputs, outputs)")

fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
traced = np.trace(reference, axis1=2, axis2=3)
et.plot.kernel_heatmap(traced, axes[0], title="empirical NTK, traced over outputs")
names = list(results)
steady = [results[name][2] for name in names]
first = [results[name][1] for name in names]
y = np.arange(len(names))
axes[1].barh(y - 0.2, first, 0.4, label="first call (with compilation)")
axes[1].barh(y + 0.2, steady, 0.4, label="steady state")
axes[1].set_yticks(y, names)
axes[1].set_xscale("log")
axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
axes[1].set_xlabel("seconds")
axes[1].legend(fontsize=8)
save(fig, args, "empirical_resnet")
