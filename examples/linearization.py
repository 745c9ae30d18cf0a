"""Weight-space and function-space linearization: a linearized network trained
by gradient descent follows the closed-form solution of its NTK dynamics.

    python examples/linearization.py [--quick] [--out DIR]
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
from eqtangents.data import load_digits  # noqa: E402

args = parse(__doc__.splitlines()[0])
n_train, n_test, width = (64, 64, 256) if args.quick else (128, 128, 512)
steps = 1000 if args.quick else 3000

images, labels = load_digits()
x = jnp.asarray(images.reshape(len(images), -1))
y = jnp.asarray(np.eye(10)[labels] - 0.1)
x_train, y_train = x[:n_train], y[:n_train]
x_test, y_test = x[n_train : n_train + n_test], y[n_train : n_train + n_test]

model = et.Serial(
    et.Dense(width, W_std=1.5, b_std=0.05), et.Relu(),
    et.Dense(width, W_std=1.5, b_std=0.05), et.Relu(),
    et.Dense(10, W_std=1.5, b_std=0.05),
)  # fmt: skip
net = model.init(jax.random.key(0), x_train.shape[1:])

# Function space: the empirical NTK of this network at its initialization,
# all output pairs kept (trace_axes=()), since at finite width the outputs
# interact; and the closed-form outputs of gradient flow on
# 0.5 * mean((f - y)^2). A small learning rate keeps gradient descent close to
# the flow (it is the flow's explicit Euler method).
ntk_train = et.empirical_ntk(net, x_train, None, trace_axes=())  # (N, N, 10, 10)
ntk_test = et.empirical_ntk(net, x_test, x_train, trace_axes=())
traced = jnp.trace(ntk_train, axis1=2, axis2=3) / 10
lr = 0.1 * float(et.predict.max_learning_rate(traced, y_train.size))
f0_train, f0_test = jax.vmap(net)(x_train), jax.vmap(net)(x_test)
flow = et.predict.gradient_descent_mse(
    ntk_train, y_train, learning_rate=lr, trace_axes=()
)
ts = np.unique(np.round(np.logspace(0, np.log10(steps), 40)))
f_train, f_test = flow(ts, f0_train, f0_test, ntk_test)


# Weight space: gradient descent on the linearized network (and, for
# comparison, on the network itself), recording the losses at every step.
def mse(module, x, y):
    return 0.5 * jnp.mean((jax.vmap(module)(x) - y) ** 2)


@eqx.filter_jit
def train(module):
    params, static = eqx.partition(module, eqx.is_inexact_array)
    optimizer = optax.sgd(lr)

    def step(carry, _):
        params, state = carry
        loss = lambda p: mse(eqx.combine(p, static), x_train, y_train)  # noqa: E731
        grads = jax.grad(loss)(params)
        updates, state = optimizer.update(grads, state)
        params = optax.apply_updates(params, updates)
        now = eqx.combine(params, static)
        return (params, state), (mse(now, x_train, y_train), mse(now, x_test, y_test))

    carry = (params, optimizer.init(params))
    _, losses = jax.lax.scan(step, carry, None, length=steps)
    return losses


lin_train, lin_test = (np.asarray(a) for a in train(et.linearize(net)))
net_train, net_test = (np.asarray(a) for a in train(net))
at = ts.astype(int) - 1  # the loss after step t is entry t - 1


def closed(f, target):
    return 0.5 * np.mean((np.asarray(f) - np.asarray(target)) ** 2, axis=(1, 2))


gap = np.max(
    np.abs(lin_train[at] - closed(f_train, y_train)) / closed(f_train, y_train)
)
print(f"learning rate {lr:.3f}, {steps} steps")
print(f"linearized network vs closed form: train loss within {gap:.2e} (relative)")
print(
    f"final test loss: closed form {closed(f_test, y_test)[-1]:.4f}, linearized "
    f"{lin_test[-1]:.4f}, network {net_test[-1]:.4f}"
)

fig, ax = plt.subplots(figsize=(7, 4.5))
ax.loglog(ts, closed(f_train, y_train), "k-", label="closed form, train")
ax.loglog(ts, closed(f_test, y_test), "k--", label="closed form, test")
ax.loglog(ts, lin_train[at], "o", ms=4, mfc="none", label="linearized net, train")
ax.loglog(ts, lin_test[at], "s", ms=4, mfc="none", label="linearized net, test")
ax.loglog(ts, net_train[at], ".", label=f"width-{width} net, train")
ax.loglog(ts, net_test[at], "x", ms=4, label=f"width-{width} net, test")
ax.set_xlabel("gradient-descent step $t$")
ax.set_ylabel(r"loss $\frac{1}{2}\,\mathrm{mean}\,(f_t - y)^2$")
ax.legend(fontsize=8)
save(fig, args, "linearization")
