"""Phase diagram: where deep networks are trainable, over (W_std, b_std), read
off the kernels of an infinitely deep erf network at their fixed point.

    python examples/phase_diagram.py [--quick] [--out DIR]

A signal through a deep network settles at the fixed point q* of the variance
map. The slope of the correlation map there,
chi_1 = W_std^2 E[phi'(u)^2] (u ~ N(0, q*)), splits the plane: for chi_1 < 1
(ordered) every two inputs end up perfectly correlated and the NTK becomes
constant, ill-conditioned; for chi_1 > 1 (chaotic) correlations decay to a
c* < 1 and gradients explode with depth. Deep networks train near the edge
chi_1 = 1. Layer by layer the NTK obeys Theta_{l+1} = K_{l+1} + W_std^2 Kdot_l
Theta_l, so chi_1 = (Theta_{L+1} - K_{L+1}) / Theta_L on the diagonal once the
variance has converged; both kernels come from `model.kernel`, vmapped over
the grid of hyperparameters.
"""

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _cli import parse, save  # noqa: E402

import eqtangents as et  # noqa: E402

# In the chaotic phase the NTK grows like chi_1^depth (about 1e42 at the
# grid's corner), past float32's range: these kernels are computed in float64.
jax.config.update("jax_enable_x64", True)
args = parse(__doc__.splitlines()[0])
n_grid, depth = (16, 32) if args.quick else (48, 96)
w_stds = np.linspace(0.5, 4.0, n_grid)
b_stds = np.linspace(0.0, 1.0, n_grid)

# Eight inputs on a circle: pairs at every angle, with |x|^2 / d = 1.
angles = np.linspace(0, np.pi, 8, endpoint=False)
x = jnp.asarray(np.stack([np.cos(angles), np.sin(angles)], 1) * np.sqrt(2.0))


def kernels(w_std, b_std, n_layers):
    block = et.Serial(et.Dense(1, W_std=w_std, b_std=b_std), et.Erf())
    return et.Serial(et.Repeat(block, n_layers)).kernel(x, None)


@jax.jit
@jax.vmap
def diagnose(w_std, b_std):
    deep, deeper = kernels(w_std, b_std, depth), kernels(w_std, b_std, depth + 1)
    # One more affine layer after each, so both end in a Dense:
    theta = w_std**2 * deep.ntk + w_std**2 * deep.nngp + b_std**2
    theta_next = w_std**2 * deeper.ntk + w_std**2 * deeper.nngp + b_std**2
    k_next = w_std**2 * deeper.nngp + b_std**2
    chi = (theta_next[0, 0] - k_next[0, 0]) / theta[0, 0]
    correlation = deep.nngp[0, 4] / jnp.sqrt(deep.nngp[0, 0] * deep.nngp[4, 4])
    eigenvalues = jnp.linalg.eigvalsh(theta)
    return chi, correlation, eigenvalues[-1] / jnp.maximum(eigenvalues[0], 1e-30)


W, B = np.meshgrid(w_stds, b_stds)
chi, correlation, condition = (
    np.asarray(a).reshape(W.shape) for a in diagnose(W.ravel(), B.ravel())
)
edge = np.abs(np.log(chi)) < 0.05
print(f"{n_grid}x{n_grid} grid, depth {depth}")
print(
    f"chi_1 from {chi.min():.3f} to {chi.max():.3f}; {edge.sum()} points near chi_1 = 1"
)
for b in (0.0, 0.5, 1.0):
    row = np.argmin(np.abs(b_stds - b))
    crossing = w_stds[np.argmin(np.abs(np.log(chi[row])))]
    print(f"b_std = {b:.1f}: edge of chaos at W_std ~ {crossing:.2f}")

fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
extent = (w_stds[0], w_stds[-1], b_stds[0], b_stds[-1])
panels = (
    (np.log(chi), r"$\log \chi_1$ (< 0 ordered, > 0 chaotic)", "RdBu_r"),
    (correlation, f"correlation at depth {depth} of inputs 90° apart", "viridis"),
    (
        np.log10(condition),
        f"$\\log_{{10}}$ condition number of the NTK, depth {depth}",
        "magma",
    ),
)
for ax, (values, title, cmap) in zip(axes, panels):
    image = ax.imshow(values, origin="lower", extent=extent, aspect="auto", cmap=cmap)
    fig.colorbar(image, ax=ax)
    ax.contour(W, B, np.log(chi), levels=[0.0], colors="k", linewidths=1.5)
    ax.set_xlabel(r"$\sigma_w$ (W_std)")
    ax.set_ylabel(r"$\sigma_b$ (b_std)")
    ax.set_title(title, fontsize=9)
save(fig, args, "phase_diagram")
