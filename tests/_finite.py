"""Monte Carlo kernels of finite networks, written independently of the library's
kernel code: random initialisations through `init`, forward passes through
`__call__`, and NTKs by a plain `jax.jacobian` contraction."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp


def finite_kernels(model, x1, x2, key, n_samples: int, *, ntk=True, batch: int = 16):
    """Mean over `n_samples` initialisations of the empirical NNGP and NTK.

    Returns `(nngp, ntk, nngp_se)`: the two means, shaped `(N1, N2)`, and the
    standard error of the NNGP mean (`ntk` is None unless asked). Outputs must
    be flat `(out,)`; products are averaged over output units, as the
    infinite-width kernel is per unit.
    """
    shape = tuple(x1.shape[1:])

    def one(k):
        net = model.init(k, shape)
        params, static = eqx.partition(net, eqx.is_inexact_array)

        def f(p, x):
            return jax.vmap(eqx.combine(p, static))(x)

        y1, y2 = f(params, x1), f(params, x2)
        out = y1.shape[-1]
        nngp = y1 @ y2.T / out
        if not ntk:
            return nngp, jnp.zeros(())
        j1 = jax.jacobian(f)(params, x1)
        j2 = jax.jacobian(f)(params, x2)
        ntk_ = (
            sum(
                jnp.einsum(
                    "aoP,boP->ab",
                    a.reshape(a.shape[:2] + (-1,)),
                    b.reshape(b.shape[:2] + (-1,)),
                )
                for a, b in zip(jax.tree.leaves(j1), jax.tree.leaves(j2))
            )
            / out
        )
        return nngp, ntk_

    keys = jax.random.split(key, n_samples)
    nngps, ntks = jax.lax.map(jax.jit(one), keys, batch_size=batch)
    se = nngps.std(0) / jnp.sqrt(n_samples)
    return nngps.mean(0), ntks.mean(0) if ntk else None, se
