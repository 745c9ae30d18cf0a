"""Many devices: a kernel computed in tiles, spread over devices with a mesh,
and written to disk tile by tile, with a progress bar; all equal to the direct
computation.

    python examples/many_devices.py [--quick] [--out DIR]

On a CPU this script asks XLA for two host devices, so the sharded path runs
on any machine; on GPUs or TPUs the mesh holds the real devices.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _cli import parse, save  # noqa: E402

import eqtangents as et  # noqa: E402
from eqtangents.data import load_digits  # noqa: E402

args = parse(__doc__.splitlines()[0])
n, batch_size = (256, 64) if args.quick else (1536, 256)

images, _ = load_digits()
x = images[:n]  # (n, 1, 8, 8), a NumPy array: tiles move to the device one by one
model = et.Serial(
    et.Conv(64, (3, 3), padding="SAME", W_std=1.5, b_std=0.05), et.Relu(),
    et.Conv(64, (3, 3), padding="SAME", W_std=1.5, b_std=0.05), et.Relu(),
    et.Flatten(), et.Dense(10, W_std=1.5, b_std=0.05),
)  # fmt: skip
mesh = jax.make_mesh((jax.device_count(),), ("tiles",))
print(f"{n} images, tiles of {batch_size}, {jax.device_count()} devices")

runs = {
    "direct": lambda: model.kernel(jax.numpy.asarray(x), None, get=("nngp", "ntk")),
    "tiled": lambda: et.batch(model.kernel, batch_size, progress=True)(
        x, None, get=("nngp", "ntk")
    ),
    "sharded": lambda: et.batch(model.kernel, batch_size, mesh=mesh, progress=True)(
        x, None, get=("nngp", "ntk")
    ),
}
scratch = tempfile.mkdtemp()


def on_disk():  # a fresh folder each time: a folder with tiles done resumes
    folder = tempfile.mkdtemp(dir=scratch)
    batched = et.batch(model.kernel, batch_size, out=folder, progress=True)
    return batched(x, None, get=("nngp", "ntk"))


runs["on disk"] = on_disk

results, seconds = {}, {}
for name, run in runs.items():
    jax.block_until_ready(run())  # compile (and a first pass)
    start = time.perf_counter()
    results[name] = jax.block_until_ready(run())
    seconds[name] = time.perf_counter() - start

direct = results["direct"]
for name, (nngp, ntk) in results.items():
    gap = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))
        for a, b in ((nngp, direct[0]), (ntk, direct[1]))
    )
    print(f"{name:8s} {seconds[name]:7.3f} s, max rel. diff from direct {gap:.1e}")
last = sorted(os.listdir(scratch))[-1]
print(f"on-disk files: {sorted(os.listdir(os.path.join(scratch, last)))}")

fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
names = list(seconds)
axes[0].bar(names, [seconds[name] for name in names])
axes[0].set_ylabel("seconds (after compilation)")
axes[0].set_title(f"NNGP + NTK of {n} images")
image = axes[1].imshow(np.asarray(results["sharded"][1]), extent=(0, n, n, 0))
fig.colorbar(image, ax=axes[1])
for edge in range(batch_size, n, batch_size):  # the tiles' edges
    axes[1].axhline(edge, color="w", lw=0.5)
    axes[1].axvline(edge, color="w", lw=0.5)
axes[1].set_title(f"the sharded NTK, in tiles of {batch_size} x {batch_size}")
save(fig, args, "many_devices")
