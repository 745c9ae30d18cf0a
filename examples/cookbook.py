"""Cookbook: the NNGP and NTK of a network, GP inference and its uncertainty,
on the 8x8 digits that ship with eqtangents.

    python examples/cookbook.py [--quick] [--out DIR]
"""

import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _cli import parse, save  # noqa: E402

import eqtangents as et  # noqa: E402
from eqtangents.data import load_digits  # noqa: E402

args = parse(__doc__.splitlines()[0])
n_train, n_test = (200, 100) if args.quick else (1000, 797)

# Data: flattened images, one-hot targets centred at zero (as NT's examples).
images, labels = load_digits()
x = jnp.asarray(images.reshape(len(images), -1))
y = jnp.asarray(np.eye(10)[labels] - 0.1)
x_train, y_train, x_test = x[:n_train], y[:n_train], x[n_train : n_train + n_test]
labels_test = labels[n_train : n_train + n_test]

# 1. A network and its two kernels.
model = et.Serial(
    et.Dense(512, W_std=1.5, b_std=0.05), et.Relu(),
    et.Dense(512, W_std=1.5, b_std=0.05), et.Relu(),
    et.Dense(10, W_std=1.5, b_std=0.05),
)  # fmt: skip
k_train = model.kernel(x_train, None)  # .nngp and .ntk, (n_train, n_train)
k_test_train = model.kernel(x_test, x_train)
k_test = model.kernel(x_test, None)

# 2. Exact inference: the NNGP posterior (a Bayesian network) and the NTK
#    prediction (an ensemble trained by gradient flow to convergence).
inference = et.predict.gp_inference(k_train, y_train, diag_reg=1e-4)
nngp = inference("nngp", k_test_train, k_test)
ntk = inference("ntk", k_test_train, k_test)
for name, posterior in (("NNGP", nngp), ("NTK", ntk)):
    accuracy = np.mean(np.argmax(posterior.mean, axis=1) == labels_test)
    print(f"{name} test accuracy: {accuracy:.3f}")

# 3. Uncertainty: the posterior standard deviation of each test prediction.
std = np.sqrt(np.clip(np.diagonal(np.asarray(nngp.covariance)), 0, None))
wrong = np.argmax(nngp.mean, axis=1) != labels_test
print(
    f"NNGP posterior std: {std[~wrong].mean():.4f} on correct predictions, "
    f"{std[wrong].mean() if wrong.any() else float('nan'):.4f} on wrong ones"
)

# Figures: the kernels sorted by label, the NTK's spectrum, the uncertainty.
order = np.argsort(labels[:n_train], kind="stable")
fig, axes = plt.subplots(1, 3, figsize=(14, 4))
et.plot.kernel_heatmap(k_train.nngp[order][:, order], axes[0], title="NNGP")
et.plot.kernel_heatmap(k_train.ntk[order][:, order], axes[1], title="NTK")
et.plot.eigenvalue_spectrum(k_train.nngp, axes[2], label="NNGP")
et.plot.eigenvalue_spectrum(k_train.ntk, axes[2], label="NTK")
axes[2].legend()
axes[2].set_title("eigenvalues of the train-train kernels")
save(fig, args, "cookbook_kernels")

fig, ax = plt.subplots(figsize=(6, 4))
bins = np.linspace(std.min(), std.max(), 25)
ax.hist(std[~wrong], bins, alpha=0.6, density=True, label="correct")
ax.hist(std[wrong], bins, alpha=0.6, density=True, label="wrong")
ax.set_xlabel("NNGP posterior standard deviation")
ax.set_ylabel("density")
ax.legend()
save(fig, args, "cookbook_uncertainty")
