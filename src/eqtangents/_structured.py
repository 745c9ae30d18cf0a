r"""Structured derivatives: the NTK from per-layer factors, without Jacobians.

A layer whose output channel $c$ is an affine function of its own filter row,
$y[c, p] = \sum_m W[c, m]\, u[p, m] + \beta\, b[c]$ (with $p$ running over the
positions where the filter is applied, and over repeated calls of the layer),
has the Jacobian $\partial f_o / \partial W[c, m] = \sum_p g[o, c, p]\, u[p, m]$
with $g = \partial f / \partial y$. Its contribution to the NTK is therefore

$$\Theta_W(x_1, x_2)[o, o'] = \sum_{c, p, p'} g_1[o, c, p]\, g_2[o', c, p']
  \,\big(u_1[p] \cdot u_2[p']\big),$$

a product of the Gram matrix of the layer's effective inputs $u$ with that of
its output cotangents $g$ (for a dense layer, with one position, exactly the
elementwise product of the two Gram matrices). The contraction order is left
to `jnp.einsum`, which picks the cheapest.

Only public JAX APIs are used. The recognised layers are `et.Dense`, `et.Conv`,
`equinox.nn.Linear` and `equinox.nn.Conv` (without groups). Each is wrapped in a
tap that adds a zero *probe* to its output, so that $g$ is the Jacobian of the
network with respect to the probe, and that records $u$, the local Jacobian of
output channel 0 with respect to row 0 of the weight, during the same forward
pass. A first abstract trace (`jax.make_jaxpr` on shapes) counts the calls of
each tap; a tap called inside an inner transformation (`lax.scan`, `vmap`,
`checkpoint`, ... as in `et.Repeat`), or whose attributes the forward pass reads,
is dropped, and its parameters are treated like all other leaves, by
Jacobian contraction.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum

from ._empirical_common import (
    Layout,
    Problem,
    contract,
    example_slice,
    map_examples,
    value_and_jacobian,
)
from ._layers.conv import Conv
from ._layers.dense import Dense

_FIELDS = ("weight", "bias")


def is_site(node: Any) -> bool:
    """Whether `node` is a layer whose parameters have the structure above."""
    if isinstance(node, (Dense, Conv)):
        return True
    if isinstance(node, eqx.nn.Linear):
        return node.in_features != "scalar" and node.out_features != "scalar"
    if isinstance(node, eqx.nn.Conv):
        return node.groups == 1
    return False


def _is_node(node: Any) -> bool:
    return node is None or is_site(node)


def _effective_inputs(layer, fields, x, args, kwargs) -> dict:
    """$u[p, m]$ of each field: Jacobian of channel 0 of the output w.r.t. row 0."""
    present = [f for f in _FIELDS if getattr(layer, f) is not None]
    narrow = eqx.tree_at(
        lambda n: [getattr(n, f) for f in present],
        layer,
        [getattr(layer, f)[:1] for f in present],
    )
    result = {}
    for field in fields:
        row = getattr(narrow, field)

        def channel0(r, field=field):
            y = eqx.tree_at(lambda n: getattr(n, field), narrow, r)(x, *args, **kwargs)
            return y[0]

        size = int(np.prod(jax.eval_shape(channel0, row).shape))
        jacobian = (jax.jacrev if size <= row.size else jax.jacfwd)(channel0)(row)
        result[field] = jacobian.reshape(size, row.size)
    return result


class _Recorder:
    """What the taps see during one trace of a forward pass, by tap index."""

    def __init__(self, effective: bool):
        self.effective = effective
        self.seen: dict[int, list] = {}

    def record(self, tap: _Tap, x, y, args, kwargs) -> int:
        calls = self.seen.setdefault(tap.index, [])
        if self.effective:
            calls.append(_effective_inputs(tap.layer, tap.fields, x, args, kwargs))
        else:
            calls.append((x, y))
        return len(calls) - 1


class _Tap(eqx.Module):
    """A recognised layer, with a zero probe added to its output at each call."""

    layer: Any
    probes: Any
    index: int = eqx.field(static=True)
    fields: tuple[str, ...] = eqx.field(static=True)
    recorder: Any = eqx.field(static=True)

    def __call__(self, x, *args, **kwargs):
        y = self.layer(x, *args, **kwargs)
        call = self.recorder.record(self, x, y, args, kwargs)
        if self.probes is not None:
            y = y + self.probes[call]
        return y


def _insert_taps(model, sites, probes, recorder):
    leaves, treedef = jax.tree.flatten(model, is_leaf=_is_node)
    for index, (position, fields) in enumerate(sites):
        leaves[position] = _Tap(
            leaves[position],
            None if probes is None else probes[index],
            index,
            fields,
            recorder,
        )
    return jax.tree.unflatten(treedef, leaves)


class Plan(NamedTuple):
    """Which layers are structured, how often each is called, and the rest."""

    sites: tuple  # ((flat position, fields), ...)
    calls: tuple  # per site: ShapeDtypeStruct of the output at each call
    free: Any  # parameters treated by Jacobian contraction
    fixed: Any  # the model without `free`
    uses: int  # parameter uses in one forward pass (a FLOP estimate / 2)


def _is_value(a) -> bool:
    return eqx.is_array(a) or isinstance(a, jax.ShapeDtypeStruct)


def _abstract(tree):
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype) if _is_value(a) else a, tree
    )


def _trace_calls(model, sites, x, kw):
    """Output shapes of each tap's calls, or None if a tap's calls escape the trace."""
    arrays, static = eqx.partition(model, eqx.is_array)
    kw_arrays, kw_static = eqx.partition(kw, _is_value)

    def run(arrays, x, kw_arrays):
        recorder = _Recorder(effective=False)
        tapped = _insert_taps(eqx.combine(arrays, static), sites, None, recorder)
        tapped(x, **eqx.combine(kw_arrays, kw_static))
        return [recorder.seen.get(i, []) for i in range(len(sites))]

    try:
        closed, shapes = jax.make_jaxpr(run, return_shape=True)(
            _abstract(arrays), _abstract(x), _abstract(kw_arrays)
        )
    except Exception:
        return None
    for const in closed.consts:
        try:
            np.asarray(const)
        except Exception:  # a value traced by an inner transformation leaked out
            return None
    return [tuple(y for _, y in calls) for calls in shapes]


def make_plan(problem: Problem) -> Plan:
    """Finds the recognised layers and checks that they can be tapped."""
    model = eqx.combine(problem.params, problem.rest)
    m_leaves, _ = jax.tree.flatten(model, is_leaf=_is_node)
    p_nodes, _ = jax.tree.flatten(problem.params, is_leaf=_is_node)
    candidates = []
    for position, (node, pnode) in enumerate(zip(m_leaves, p_nodes)):
        if is_site(node) and is_site(pnode):
            fields = tuple(f for f in _FIELDS if getattr(pnode, f) is not None)
            if fields:
                candidates.append((position, fields))
    if problem.per_example:
        x, kw = example_slice(problem.x1, problem.kw1)
    else:
        x, kw = problem.x1, problem.kw1
    calls = _trace_calls(model, candidates, x, kw) if candidates else []
    if calls is None:  # find the taps that work on their own
        sites, calls = [], []
        for site in candidates:
            one = _trace_calls(model, [site], x, kw)
            if one is not None:
                sites.append(site)
                calls.append(one[0])
    else:
        sites = candidates
    p_leaves, p_def = jax.tree.flatten(problem.params, is_leaf=_is_node)
    for position, fields in sites:
        p_leaves[position] = eqx.tree_at(
            lambda n, fields=fields: [getattr(n, f) for f in fields],
            p_leaves[position],
            [None] * len(fields),
        )
    free = jax.tree.unflatten(p_def, p_leaves)
    fixed = jax.tree.map(
        lambda m, f: None if f is not None else m,
        model,
        free,
        is_leaf=lambda a: a is None,
    )
    uses = sum(leaf.size for leaf in jax.tree.leaves(free))
    for (position, fields), site_calls in zip(sites, calls):
        positions = sum(int(np.prod(y.shape[1:])) for y in site_calls)
        node = m_leaves[position]
        uses += positions * sum(getattr(node, f).size for f in fields)
    return Plan(tuple(sites), tuple(calls), free, fixed, uses)


def _factors(problem: Problem, plan: Plan, x, kw):
    """Outputs, Jacobians w.r.t. free parameters and probes, effective inputs."""
    probes = tuple(
        tuple(jnp.zeros(y.shape, y.dtype) for y in calls) for calls in plan.calls
    )

    def one(xi, kwi):
        def fun(args):
            free, probes_ = args
            recorder = _Recorder(effective=True)
            model = _insert_taps(
                eqx.combine(free, plan.fixed), plan.sites, probes_, recorder
            )
            out = model(xi, **kwi)
            seen = [recorder.seen.get(i, []) for i in range(len(plan.sites))]
            return out, seen

        return value_and_jacobian(fun, (plan.free, probes), has_aux=True)

    if problem.per_example:
        return map_examples(one, x, kw)
    return one(x, kw)


def structured_ntk(problem: Problem, plan: Plan, layouts: list[Layout]):
    """Flat outputs at `x1`, `x2` and the flat list of NTKs (one per output)."""
    side1 = _factors(problem, plan, problem.x1, problem.kw1)
    side2 = side1 if problem.same else _factors(problem, plan, problem.x2, problem.kw2)
    out1, jac1, u1 = side1
    out2, jac2, u2 = side2
    ntks = []
    for i, layout in enumerate(layouts):
        ndim = out1[i].ndim
        free1, g1 = jac1[i]
        free2, g2 = jac2[i]
        terms = [
            contract(layout, a, a.ndim - ndim, b)
            for a, b in zip(jax.tree.leaves(free1), jax.tree.leaves(free2))
        ]
        for site, ((_, fields), calls) in enumerate(zip(plan.sites, plan.calls)):
            if not calls:
                continue
            ga = _gather_g(g1[site], ndim)
            gb = _gather_g(g2[site], ndim)
            for field in fields:
                ua = _gather_u(u1[site], field)
                ub = _gather_u(u2[site], field)
                terms.append(_site_einsum(layout, problem.per_example, ga, ua, ub, gb))
        ntk = sum(terms[1:], terms[0]) if terms else _zeros(layout, out1[i], out2[i])
        ntks.append(ntk / layout.scale)
    return out1, out2, ntks


def _zeros(layout, a, b):
    return jnp.einsum(a, layout.l1, b, layout.l2, layout.out) * 0


def _gather_g(per_call, ndim):
    """Cotangents at each call `(*out, C, *spatial)` -> `(*out, C, P)`."""
    flat = [g.reshape(g.shape[: ndim + 1] + (-1,)) for g in per_call]
    return jnp.concatenate(flat, axis=-1)


def _gather_u(per_call, field):
    """Effective inputs at each call `(..., S_k, M)` -> `(..., P, M)`."""
    return jnp.concatenate([u[field] for u in per_call], axis=-2)


def _site_labels(layout: Layout, per_example: bool):
    c, p, q, m = range(layout.free, layout.free + 4)
    lead1 = [layout.l1[0]] if per_example else []
    lead2 = [layout.l2[0]] if per_example else []
    return (
        layout.l1 + [c, p],
        lead1 + [p, m],
        lead2 + [q, m],
        layout.l2 + [c, q],
    )


def _site_einsum(layout, per_example, ga, ua, ub, gb):
    la, lua, lub, lb = _site_labels(layout, per_example)
    return jnp.einsum(ga, la, ua, lua, ub, lub, gb, lb, layout.out)


def site_cost(
    plan: Plan, problem: Problem, layouts: list[Layout], out1: list, out2: list
) -> float:
    """FLOPs of the structured contractions (as `opt_einsum` would order them)."""
    m_leaves, _ = jax.tree.flatten(
        eqx.combine(problem.params, problem.rest), is_leaf=_is_node
    )
    total = 0.0
    for (position, fields), calls in zip(plan.sites, plan.calls):
        if not calls:
            continue
        channels = calls[0].shape[0]
        positions = sum(int(np.prod(y.shape[1:])) for y in calls)
        node = m_leaves[position]
        for field in fields:
            m = getattr(node, field)[:1].size
            for layout, a, b in zip(layouts, out1, out2):
                la, lua, lub, lb = _site_labels(layout, problem.per_example)
                sizes = {}
                for labels, shape in (
                    (la, a.shape + (channels, positions)),
                    (lb, b.shape + (channels, positions)),
                ):
                    sizes.update(zip(labels, shape))
                sizes[lua[-1]] = m
                sizes[lub[-2]] = positions
                total += _einsum_flops([la, lua, lub, lb], layout.out, sizes)
    return total


def _einsum_flops(inputs, output, sizes) -> float:
    symbol = opt_einsum.get_symbol
    equation = ",".join("".join(symbol(i) for i in labels) for labels in inputs)
    equation += "->" + "".join(symbol(i) for i in output)
    shapes = [tuple(sizes[i] for i in labels) for labels in inputs]
    _, info = opt_einsum.contract_path(equation, *shapes, shapes=True)
    return float(info.opt_cost)
