"""Infinite vs finite: erf networks of growing width, trained with optax under
`eqx.filter_jit`, against the infinite-width NTK prediction.

    python examples/infinite_vs_finite.py [--quick] [--out DIR]
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _cli import parse, save  # noqa: E402

import eqtangents as et  # noqa: E402

args = parse(__doc__.splitlines()[0])
widths = [32, 128, 512] if args.quick else [64, 256, 1024, 2048]
n_seeds = 4 if args.quick else 8
steps = 500 if args.quick else 2000

# A 1-D regression problem: noisy samples of sin(pi x) on [-1, 1].
x_train = jnp.linspace(-1, 1, 12)[:, None]
y_train = jnp.sin(np.pi * x_train) + 0.1 * jax.random.normal(jax.random.key(0), (12, 1))
x_test = jnp.linspace(-1, 1, 200)[:, None]


def network(width):
    return et.Serial(
        et.Dense(width, W_std=1.5, b_std=0.05), et.Erf(),
        et.Dense(width, W_std=1.5, b_std=0.05), et.Erf(),
        et.Dense(1, W_std=1.5, b_std=0.05),
    )  # fmt: skip


# The infinite-width answer: the distribution of the outputs of an infinite
# ensemble of infinitely wide networks after `steps` steps of gradient descent
# on 0.5 * mean((f - y)^2) with learning rate `lr`.
model = network(1)  # the width does not enter the kernel
ntk_train = model.kernel(x_train, None, get="ntk")
lr = 0.5 * float(et.predict.max_learning_rate(ntk_train, y_train.size))
ensemble = et.predict.gradient_descent_mse_ensemble(
    model.kernel, x_train, y_train, learning_rate=lr
)
mean, cov = ensemble(float(steps), x_test, "ntk", compute_cov=True)
# One trained network is one draw from that distribution. Given its initial
# outputs f_0, the infinite-width prediction is the gradient flow of the
# analytic NTK from f_0; each finite network approaches it as it widens.
flow = et.predict.gradient_descent_mse(ntk_train, y_train, learning_rate=lr)
ntk_test = model.kernel(x_test, x_train, get="ntk")


def loss(net, x, y):
    return 0.5 * jnp.mean((jax.vmap(net)(x) - y) ** 2)


@eqx.filter_jit
def train(net):
    """`steps` steps of full-batch gradient descent (optax.sgd) from `net`."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    optimizer = optax.sgd(lr)

    def step(carry, _):
        params, state = carry
        grads = jax.grad(lambda p: loss(eqx.combine(p, static), x_train, y_train))(
            params
        )
        updates, state = optimizer.update(grads, state)
        return (optax.apply_updates(params, updates), state), None

    carry = (params, optimizer.init(params))
    (params, _), _ = jax.lax.scan(step, carry, None, length=steps)
    return eqx.combine(params, static)


def flow_from(net):
    """Test outputs of the analytic NTK's gradient flow from `net`'s f_0."""
    f0_train, f0_test = jax.vmap(net)(x_train), jax.vmap(net)(x_test)
    return flow(float(steps), f0_train, f0_test, ntk_test)[1]


def relative_ntk_distance(net):
    ntk = et.empirical_ntk(net, x_train, None, trace_axes=(1,))
    return float(jnp.linalg.norm(ntk - ntk_train) / jnp.linalg.norm(ntk_train))


ntk_distance, prediction_distance, finals = [], [], {}
for width in widths:
    nets = [network(width).init(jax.random.key(seed), (1,)) for seed in range(n_seeds)]
    # How far each network's NTK at initialization is from the limit.
    distance = [
        float(
            jnp.linalg.norm(
                et.empirical_ntk(net, x_train, None, trace_axes=(1,)) - ntk_train
            )
            / jnp.linalg.norm(ntk_train)
        )
        for net in nets
    ]
    outputs = np.stack([np.asarray(jax.vmap(train(net))(x_test)) for net in nets])
    limits = np.stack([np.asarray(flow_from(net)) for net in nets])
    finals[width] = outputs
    ntk_distance.append(np.mean(distance))
    prediction_distance.append(np.sqrt(np.mean((outputs - limits) ** 2)))
    print(
        f"width {width:5d}: |NTK_emp - NTK| / |NTK| = {ntk_distance[-1]:.3f}, "
        f"rms(trained net - NTK flow from its f_0) = {prediction_distance[-1]:.4f}"
    )

fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
ax = axes[0]
et.plot.prediction_bands(
    x_test[:, 0], mean, cov, ax, label="NTK ensemble, mean ± 2 std"
)
widest = widths[-1]
for i, f in enumerate(finals[widest][:6]):
    ax.plot(x_test[:, 0], f[:, 0], "k-", lw=0.6, alpha=0.6,
            label=f"trained nets of width {widest}" if i == 0 else None)  # fmt: skip
ax.plot(x_train[:, 0], y_train[:, 0], "ro", label="training data")
ax.set_xlabel("$x$")
ax.set_ylabel("$f(x)$")
ax.legend(fontsize=8)
ax = axes[1]
ax.loglog(
    widths,
    ntk_distance,
    "o-",
    label=r"$\|\Theta_{emp} - \Theta\| / \|\Theta\|$ at init",
)
ax.loglog(
    widths,
    prediction_distance,
    "s-",
    label="rms(trained net − NTK flow from its $f_0$)",
)
reference = ntk_distance[0] * np.sqrt(widths[0] / np.asarray(widths))
ax.loglog(widths, reference, "k:", label=r"$\propto$ width$^{-1/2}$")
ax.set_xlabel("width")
ax.legend(fontsize=8)
save(fig, args, "infinite_vs_finite")
