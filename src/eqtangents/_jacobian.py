r"""The NTK by Jacobian contraction and by NTK-vector products.

- Jacobian contraction: $\Theta = J(x_1) J(x_2)^\top$, both Jacobians by reverse
  mode (one vector-Jacobian product per output entry, vmapped over them).
- NTK-vector products: the columns $\Theta e = J(x_1)\,(J(x_2)^\top e)$ for the
  basis vectors $e$ of the outputs at `x2`, a vector-Jacobian product at one
  example of `x2` followed by Jacobian-vector products at `x1`; no Jacobian is
  held in memory, only about 256 MB of tangents at a time.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._empirical_common import (
    Layout,
    Problem,
    apply,
    contract,
    forward,
    map_examples,
    output_basis,
    value_and_jacobian,
)

_NVP_BYTES = 1 << 28  # tangents held at once by NTK-vector products


def _jacobians(problem: Problem, x, kw):
    def one(xi, kwi):
        return value_and_jacobian(
            lambda p: apply(problem.rest, p, xi, kwi), problem.params
        )

    if problem.per_example:
        return map_examples(one, x, kw)
    return one(x, kw)


def jacobian_contraction(problem: Problem, layouts: list[Layout]):
    """Flat outputs at `x1`, `x2` and the flat list of NTKs (one per output)."""
    out1, jac1 = _jacobians(problem, problem.x1, problem.kw1)
    out2, jac2 = (
        (out1, jac1) if problem.same else _jacobians(problem, problem.x2, problem.kw2)
    )
    ntks = []
    for layout, a, b, ja, jb in zip(layouts, out1, out2, jac1, jac2):
        terms = [
            contract(layout, j1, j1.ndim - a.ndim, j2)
            for j1, j2 in zip(jax.tree.leaves(ja), jax.tree.leaves(jb))
        ]
        ntks.append(_sum(terms, layout, a, b) / layout.scale)
    return out1, out2, ntks


def _sum(terms, layout, a, b):
    if not terms:  # no parameters: the NTK vanishes
        return contract(layout, a, 0, b) * 0
    return sum(terms[1:], terms[0])


def _columns(problem: Problem, f1_jvp, x2, kw2, per_param: int):
    """Blocks `(*out2_i, *out1_i)` of the NTK for one example (or batch) of x2."""

    def f2(p):
        return jax.tree.leaves(apply(problem.rest, p, x2, kw2))

    out2, vjp2 = jax.vjp(f2, problem.params)
    basis, sizes, offsets = output_basis(out2)

    def column(ct):
        (tangent,) = vjp2(ct)
        return jax.tree.leaves(f1_jvp(tangent))

    cols = _map_batched(column, basis, per_param)
    return [
        col[o : o + s].reshape(b.shape + col.shape[1:])
        for col, b, s, o in zip(cols, out2, sizes, offsets)
    ]


def _map_batched(fn, xs, item_bytes: int):
    """`fn` over the leading axis, about `_NVP_BYTES` at a time: one `vmap` when
    everything fits (a one-trip `lax.map` of the same body runs a small CNN's
    NTK 4x slower on XLA:CPU), else a `lax.map` of vmaps."""
    n = jax.tree.leaves(xs)[0].shape[0]
    size = max(1, min(n, _NVP_BYTES // max(item_bytes, 1)))
    if size == n:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=size)


def ntk_vector_products(problem: Problem, layouts: list[Layout]):
    """Flat outputs at `x1`, `x2` and the flat list of NTKs (one per output)."""
    params, rest = problem.params, problem.rest
    out1 = jax.tree.leaves(forward(problem, params, problem.x1, problem.kw1))
    out2 = (
        out1
        if problem.same
        else jax.tree.leaves(forward(problem, params, problem.x2, problem.kw2))
    )
    per_param = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(params))
    if problem.per_example and all(layout.paired for layout in layouts):
        # Only the pairs (x1[n], x2[n]) are needed.
        outputs = sum(b[0].size for b in out2)

        def pair(x1, d1, x2, d2):
            f1 = lambda p: apply(rest, p, x1, d1)  # noqa: E731
            _, f1_jvp = jax.linearize(f1, params)
            return _columns(problem, f1_jvp, x2, d2, per_param)

        d1, s1 = _split(problem.kw1)
        d2, s2 = _split(problem.kw2)
        blocks = _map_batched(
            lambda args: pair(args[0], _join(args[1], s1), args[2], _join(args[3], s2)),
            (problem.x1, d1, problem.x2, d2),
            outputs * per_param,
        )
        kernels = [
            jnp.einsum(k, [ly.l1[0]] + ly.l2[1:] + ly.l1[1:], ly.out)
            for k, ly in zip(blocks, layouts)
        ]
    else:
        _, f1_jvp = jax.linearize(
            lambda p: forward(problem, p, problem.x1, problem.kw1), params
        )
        if problem.per_example:
            outputs = sum(b[0].size for b in out2)
            d2, s2 = _split(problem.kw2)
            blocks = _map_batched(
                lambda args: _columns(
                    problem, f1_jvp, args[0], _join(args[1], s2), per_param
                ),
                (problem.x2, d2),
                outputs * per_param,
            )
        else:
            blocks = _columns(problem, f1_jvp, problem.x2, problem.kw2, per_param)
        kernels = [
            jnp.einsum(k, ly.l2 + ly.l1, ly.out) for k, ly in zip(blocks, layouts)
        ]
    return out1, out2, [k / ly.scale for k, ly in zip(kernels, layouts)]


def _split(kw):
    return eqx.partition(kw, eqx.is_array)


def _join(dynamic, static):
    return eqx.combine(dynamic, static)
