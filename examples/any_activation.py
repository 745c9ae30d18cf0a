"""Any activation: `et.Elementwise(fn)` computes the kernel of any elementwise
function by quadrature; here against the closed forms and against Monte Carlo
estimates from finite networks.

    python examples/any_activation.py [--quick] [--out DIR]
"""

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _cli import parse, save  # noqa: E402

import eqtangents as et  # noqa: E402

jax.config.update("jax_enable_x64", True)  # the comparison is to rounding error
args = parse(__doc__.splitlines()[0])
n_samples, width = (32, 256) if args.quick else (256, 1024)
print(f"Monte Carlo: {n_samples} networks of width {width}")

# Inputs on a circle: x_0 and x_theta at every angle theta in [0, pi].
theta = np.linspace(0, np.pi, 25)
x = jnp.asarray(np.stack([np.cos(theta), np.sin(theta)], 1) * np.sqrt(2.0))


def network(activation, width=1):
    # The last layer's width does not change the kernel; at finite width its
    # `width` outputs are i.i.d., and Monte Carlo averages over all of them.
    return et.Serial(
        et.Dense(width, W_std=1.5, b_std=0.05), activation,
        et.Dense(width, W_std=1.5, b_std=0.05), activation,
        et.Dense(width, W_std=1.5, b_std=0.05),
    )  # fmt: skip


# Closed forms, and the same functions given only as `fn`.
pairs = {
    "relu": (et.Relu(), jax.nn.relu),
    "erf": (et.Erf(), jax.scipy.special.erf),
    "gelu": (et.Gelu(), lambda u: jax.nn.gelu(u, approximate=False)),
    "sin": (et.Sin(), jnp.sin),
}
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for name, (closed, fn) in pairs.items():
    exact = network(closed).kernel(x[:1], x)
    numerical = network(et.Elementwise(fn)).kernel(x[:1], x)
    for get in ("nngp", "ntk"):
        a, b = getattr(numerical, get), getattr(exact, get)
        gap = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        print(
            f"{name:5s} {get}: Elementwise(fn) vs closed form, max rel. diff {gap:.1e}"
        )
    (line,) = axes[0].plot(theta, exact.nngp[0], label=f"{name} (closed form)")
    axes[0].plot(
        theta, numerical.nngp[0], "o", ms=4, mfc="none", color=line.get_color()
    )

# Activations without a closed form: quadrature against Monte Carlo of finite
# networks (n_samples networks of the given width, same pytree).
custom = {
    "swish": jax.nn.swish,
    "softplus": jax.nn.softplus,
    "x sin x": lambda u: u * jnp.sin(u),
}
for name, fn in custom.items():
    activation = et.Elementwise(fn)
    infinite = network(activation).kernel(x[:1], x, get="nngp")
    finite = et.monte_carlo_kernel(
        network(activation, width),
        x[:1],
        x,
        get="nngp",
        key=jax.random.key(0),
        n_samples=n_samples,
    )
    gap = float(jnp.max(jnp.abs(finite - infinite)) / jnp.max(jnp.abs(infinite)))
    print(f"{name:8s} nngp: Monte Carlo vs Elementwise(fn): {gap:.3f}")
    (line,) = axes[1].plot(theta, infinite[0], label=f"{name}: Elementwise(fn)")
    axes[1].plot(theta, finite[0], "x", color=line.get_color())

axes[0].set_title("closed forms (lines) and Elementwise(fn) (circles)")
axes[1].set_title(f"Elementwise(fn) (lines) and Monte Carlo, width {width} (crosses)")
for ax in axes:
    ax.set_xlabel(r"angle $\theta$ between $x_0$ and $x_\theta$")
    ax.set_ylabel(r"NNGP $K(x_0, x_\theta)$")
    ax.legend(fontsize=8)
save(fig, args, "any_activation")
