r"""Empirical NNGP and NTK of any Equinox module at its current parameters.

For a model $f(\theta, x)$ with outputs $f(x) \in \mathbb{R}^{N \times \dots}$,

$$\text{NNGP}(x_1, x_2) = f(x_1) \otimes f(x_2), \qquad
  \Theta(x_1, x_2) = \sum_{\theta} \frac{\partial f(x_1)}{\partial \theta}
  \otimes \frac{\partial f(x_2)}{\partial \theta},$$

each paired along the output axes: `trace_axes` are summed over (and the result
divided by their size), `diagonal_axes` are kept once, the other axes twice
(interleaved, the axis at `x1` first). The NTK has three implementations
(Novak et al., "Fast Finite Width Neural Tangent Kernel", ICML 2022):

- `"jacobian_contraction"`: both Jacobians by reverse mode, then contracted;
- `"ntk_vector_products"`: columns of the NTK as vector-Jacobian products
  followed by Jacobian-vector products, without a Jacobian in memory;
- `"structured_derivatives"`: dense and convolutional layers (`et.Dense`,
  `et.Conv`, `equinox.nn.Linear`, `equinox.nn.Conv`) contribute the product of
  the Gram matrices of their inputs and of their output cotangents, without
  forming their Jacobians; other parameters are contracted as in the first
  method;
- `"auto"`: the cheapest of the three by a FLOP count made from the shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
from jaxtyping import PRNGKeyArray, PyTree

from ._empirical_common import (
    Layout,
    Problem,
    contract,
    forward,
    make_layout,
    make_problem,
)
from ._jacobian import jacobian_contraction, ntk_vector_products
from ._kernel import _NAMED_TUPLES as NAMED_TUPLES
from ._kernel import Get, parse_get
from ._structured import Plan, make_plan, site_cost, structured_ntk

Implementation = Literal[
    "auto", "jacobian_contraction", "ntk_vector_products", "structured_derivatives"
]
_IMPLEMENTATIONS = (
    "auto",
    "jacobian_contraction",
    "ntk_vector_products",
    "structured_derivatives",
)

Axes = int | Sequence[int]


# ----------------------------------------------------------------------- NNGP


def _nngp(layouts: list[Layout], out1: list, out2: list) -> list:
    return [
        contract(layout, a, 0, b) / layout.scale
        for layout, a, b in zip(layouts, out1, out2)
    ]


# ------------------------------------------------------------------ choosing


def _costs(problem: Problem, plan: Plan, layouts, out1, out2) -> dict[str, float]:
    """FLOP estimates of the three implementations, from shapes alone."""
    flops = 2.0 * plan.uses  # one forward pass (per example if `per_example`)
    n1 = out1[0].shape[0] if problem.per_example else 1
    n2 = out2[0].shape[0] if problem.per_example else 1
    o1 = sum(a.size for a in out1) / n1
    o2 = sum(b.size for b in out2) / n2
    jacobians = 3 * flops * (n1 * o1 + (0 if problem.same else n2 * o2))
    leaves = jax.tree.leaves(problem.params)
    free = jax.tree.leaves(plan.free)
    jc = jacobians + sum(2.0 * ly.pairs * p.size for ly in layouts for p in leaves)
    sd = (
        jacobians
        + site_cost(plan, problem, layouts, out1, out2)
        + sum(2.0 * ly.pairs * p.size for ly in layouts for p in free)
    )
    paired = problem.per_example and all(ly.paired for ly in layouts)
    columns = (n1 if paired else n2) * o2
    nvp = columns * 3 * flops * (1 + (1 if paired else n1))
    return {
        "jacobian_contraction": jc,
        "structured_derivatives": sd,
        "ntk_vector_products": nvp,
    }


def choose_implementation(problem: Problem, layouts, out1, out2, plan=None) -> str:
    """The implementation `"auto"` picks for these shapes."""
    plan = make_plan(problem) if plan is None else plan
    costs = _costs(problem, plan, layouts, out1, out2)
    return min(costs, key=costs.__getitem__)


def _check_implementation(implementation, name: str) -> str:
    if isinstance(implementation, int) and not isinstance(implementation, bool):
        if 0 <= implementation < len(_IMPLEMENTATIONS):
            return _IMPLEMENTATIONS[implementation]
    if implementation in _IMPLEMENTATIONS:
        return implementation
    raise ValueError(
        f"{name}: unknown `implementation={implementation!r}`; choose from "
        f"{_IMPLEMENTATIONS} (or Neural Tangents' codes 0-3)."
    )


# ---------------------------------------------------------------- public API


def _kernels(problem: Problem, names, trace_axes, diagonal_axes, implementation, name):
    shapes1 = jax.eval_shape(
        lambda p: forward(problem, p, problem.x1, problem.kw1), problem.params
    )
    shapes2 = (
        shapes1
        if problem.same
        else jax.eval_shape(
            lambda p: forward(problem, p, problem.x2, problem.kw2), problem.params
        )
    )
    leaves1, treedef = jax.tree.flatten(shapes1)
    leaves2, treedef2 = jax.tree.flatten(shapes2)
    if treedef != treedef2:
        raise ValueError(f"{name}: the outputs at `x1` and `x2` differ in structure.")
    layouts = [
        make_layout(a.shape, b.shape, trace_axes, diagonal_axes, name)
        for a, b in zip(leaves1, leaves2)
    ]
    result = {}
    if "ntk" in names:
        implementation = _check_implementation(implementation, name)
        plan = None
        if implementation in ("auto", "structured_derivatives"):
            plan = make_plan(problem)
        if implementation == "auto":
            implementation = choose_implementation(
                problem, layouts, leaves1, leaves2, plan
            )
        if implementation == "jacobian_contraction":
            out1, out2, ntks = jacobian_contraction(problem, layouts)
        elif implementation == "ntk_vector_products":
            out1, out2, ntks = ntk_vector_products(problem, layouts)
        else:
            out1, out2, ntks = structured_ntk(problem, plan, layouts)
        result["ntk"] = jax.tree.unflatten(treedef, ntks)
    if "nngp" in names:
        if "ntk" not in names:
            out1 = jax.tree.leaves(
                forward(problem, problem.params, problem.x1, problem.kw1)
            )
            out2 = (
                out1
                if problem.same
                else jax.tree.leaves(
                    forward(problem, problem.params, problem.x2, problem.kw2)
                )
            )
        result["nngp"] = jax.tree.unflatten(treedef, _nngp(layouts, out1, out2))
    return result


def empirical_kernel(
    model: Callable,
    x1: PyTree,
    x2: PyTree | None = None,
    get: Get = None,
    *,
    trace_axes: Axes = (1,),
    diagonal_axes: Axes = (),
    per_example: bool = True,
    implementation: Implementation | int = "auto",
    filter_spec: Any = None,
    key: PRNGKeyArray | None = None,
    call_kwargs: dict | None = None,
    call_kwargs2: dict | None = None,
):
    r"""Empirical NNGP and/or NTK of `model` at its current parameters.

    $$\text{NNGP} = \frac{1}{|T|}\sum_{t \in T} f(x_1)_t\, f(x_2)_t, \qquad
      \Theta = \frac{1}{|T|}\sum_{t \in T}\sum_\theta
      \partial_\theta f(x_1)_t\, \partial_\theta f(x_2)_t,$$

    where $T$ runs over the `trace_axes` of the outputs.

    **Arguments:**

    - `model`: any callable pytree, typically an `eqx.Module`: eqtangents networks,
      `equinox.nn` models, your own modules.
    - `x1`: a batch `(N1, *shape)` (or a pytree of such arrays).
    - `x2`: a second batch, or `None` for `x1` (cheaper than passing `x1` again).
    - `get`: `"nngp"`, `"ntk"`, a tuple of them (a named tuple is returned), or
      `None` for both.
    - `trace_axes`: axes of the batched outputs `(N, C, *spatial)` summed over;
      the default is the channel axis (`-1` in Neural Tangents, channels last).
    - `diagonal_axes`: axes of the outputs kept once (e.g. `0` for the batch
      diagonal, `N` entries instead of `N1 x N2`).
    - `per_example`: `True` when `model(x)` takes ONE example (the Equinox
      convention; the batch is vmapped, and each output depends on its own
      example only, as with Neural Tangents' `vmap_axes=0`); `False` for a
      model that takes the whole batch (the kernel's example axes are then
      whatever the model returns).
    - `implementation`: `"auto"`, `"jacobian_contraction"`,
      `"ntk_vector_products"` or `"structured_derivatives"` (or Neural
      Tangents' codes `0`-`3`). All give the same kernel; `"auto"` picks the
      cheapest by a FLOP count. Only used for the NTK.
    - `filter_spec`: which leaves are parameters, as in `eqx.partition` (a
      function of a leaf, or a pytree prefix of booleans): e.g. only the last
      layer. Default: the inexact arrays, less eqtangents layers'
      hyperparameters (`W_std`, `b_std`).
    - `key`: a random key passed to the model as `key=` (dropout). It is split
      per example, and between `x1` and `x2` unless `x2` is `None`.
    - `call_kwargs`, `call_kwargs2`: other keyword arguments of the call at
      `x1` and at `x2` (by default the same), e.g. a graph pattern. With
      `per_example`, their arrays carry a leading example axis.

    **Returns:**

    One kernel per output of the model (a pytree like the outputs), of shape
    `(N1, N2, C, C', S, S', ...)` less the traced axes, with diagonal axes once;
    for `(N, C)` outputs and the default, `(N1, N2)`.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> model = et.Serial(et.Dense(256), et.Relu(), et.Dense(2))
    >>> net = model.init(jax.random.key(1), (4,))
    >>> nngp, ntk = et.empirical_kernel(net, x, None)    # traced over the 2 outputs
    >>> nngp.shape, ntk.shape
    ((3, 3), (3, 3))
    >>> et.empirical_kernel(net, x, None, "ntk", trace_axes=()).shape   # every pair
    (3, 3, 2, 2)
    >>> ways = ("jacobian_contraction", "ntk_vector_products", "structured_derivatives")
    >>> kernels = [et.empirical_kernel(net, x, None, "ntk", implementation=way)
    ...            for way in ways]
    >>> all(bool(jnp.allclose(k, ntk)) for k in kernels)
    True
    ```
    """
    names, single = parse_get(get)
    if len(set(names)) != len(names):
        raise ValueError(f"empirical_kernel: `get={get!r}` names a kernel twice.")
    problem = make_problem(
        model,
        x1,
        x2,
        per_example=per_example,
        filter_spec=filter_spec,
        key=key,
        call_kwargs=call_kwargs,
        call_kwargs2=call_kwargs2,
        name="empirical_kernel",
    )
    result = _kernels(
        problem, names, trace_axes, diagonal_axes, implementation, "empirical_kernel"
    )
    if single:
        return result[names[0]]
    return NAMED_TUPLES[names](*(result[n] for n in names))


def empirical_ntk(
    model: Callable,
    x1: PyTree,
    x2: PyTree | None = None,
    *,
    trace_axes: Axes = (1,),
    diagonal_axes: Axes = (),
    per_example: bool = True,
    implementation: Implementation | int = "auto",
    filter_spec: Any = None,
    key: PRNGKeyArray | None = None,
    call_kwargs: dict | None = None,
    call_kwargs2: dict | None = None,
):
    r"""Empirical NTK of `model` at its current parameters.

    $$\Theta(x_1, x_2) = \frac{1}{|T|}\sum_{t \in T}\sum_\theta
      \partial_\theta f(x_1)_t\, \partial_\theta f(x_2)_t.$$

    **Arguments:**

    As `et.empirical_kernel` (without `get`).

    **Returns:**

    The NTK, one per output of the model, shaped as in `et.empirical_kernel`.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> model = et.Serial(et.Dense(256), et.Relu(), et.Dense(1))
    >>> net = model.init(jax.random.key(1), (4,))
    >>> from jax.flatten_util import ravel_pytree
    >>> params, static = eqx.partition(net, eqx.is_inexact_array)
    >>> flat, unravel = ravel_pytree(params)
    >>> outputs = lambda p: jax.vmap(eqx.combine(unravel(p), static))(x)[:, 0]
    >>> jac = jax.jacobian(outputs)(flat)                    # (N, P)
    >>> bool(jnp.allclose(et.empirical_ntk(net, x), jac @ jac.T))
    True
    ```
    """
    return empirical_kernel(
        model,
        x1,
        x2,
        "ntk",
        trace_axes=trace_axes,
        diagonal_axes=diagonal_axes,
        per_example=per_example,
        implementation=implementation,
        filter_spec=filter_spec,
        key=key,
        call_kwargs=call_kwargs,
        call_kwargs2=call_kwargs2,
    )


def empirical_nngp(
    model: Callable,
    x1: PyTree,
    x2: PyTree | None = None,
    *,
    trace_axes: Axes = (1,),
    diagonal_axes: Axes = (),
    per_example: bool = True,
    key: PRNGKeyArray | None = None,
    call_kwargs: dict | None = None,
    call_kwargs2: dict | None = None,
):
    r"""Empirical NNGP of `model`: products of outputs, averaged over `trace_axes`.

    $$K(x_1, x_2) = \frac{1}{|T|}\sum_{t \in T} f(x_1)_t\, f(x_2)_t.$$

    **Arguments:**

    As `et.empirical_kernel` (without `get`, `implementation` and
    `filter_spec`, which only matter for the NTK).

    **Returns:**

    The NNGP, one per output of the model, shaped as in `et.empirical_kernel`.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> model = et.Serial(et.Dense(256), et.Relu(), et.Dense(2))
    >>> net = model.init(jax.random.key(1), (4,))
    >>> y = jax.vmap(net)(x)                                  # (N, 2)
    >>> bool(jnp.allclose(et.empirical_nngp(net, x), y @ y.T / 2))
    True
    ```
    """
    return empirical_kernel(
        model,
        x1,
        x2,
        "nngp",
        trace_axes=trace_axes,
        diagonal_axes=diagonal_axes,
        per_example=per_example,
        key=key,
        call_kwargs=call_kwargs,
        call_kwargs2=call_kwargs2,
    )


def empirical_ntk_vp(
    model: Callable,
    x1: PyTree,
    x2: PyTree | None,
    cotangents: PyTree,
    *,
    per_example: bool = True,
    filter_spec: Any = None,
    key: PRNGKeyArray | None = None,
    call_kwargs: dict | None = None,
    call_kwargs2: dict | None = None,
) -> PyTree:
    r"""NTK-vector product $\Theta(x_1, x_2)\, v$ without forming the NTK.

    $\Theta v = J(x_1)\,\big(J(x_2)^\top v\big)$: one vector-Jacobian product at
    `x2` and one Jacobian-vector product at `x1`, the cost of about three
    forward passes over both batches, and the memory of one backward pass.

    **Arguments:**

    - `model`, `x1`, `x2`, `per_example`, `filter_spec`, `key`, `call_kwargs`,
      `call_kwargs2`: as in `et.empirical_kernel`.
    - `cotangents`: $v$, shaped like the batched outputs at `x2`.

    **Returns:**

    $\Theta v$, shaped like the batched outputs at `x1` (no traces: every output
    entry is kept).

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> model = et.Serial(et.Dense(256), et.Relu(), et.Dense(1))
    >>> net = model.init(jax.random.key(1), (4,))
    >>> v = jnp.array([[1.0], [-2.0], [0.5]])                 # shaped like the outputs
    >>> theta_v = et.empirical_ntk_vp(net, x, None, v)
    >>> bool(jnp.allclose(theta_v, et.empirical_ntk(net, x) @ v))
    True
    ```
    """
    problem = make_problem(
        model,
        x1,
        x2,
        per_example=per_example,
        filter_spec=filter_spec,
        key=key,
        call_kwargs=call_kwargs,
        call_kwargs2=call_kwargs2,
        name="empirical_ntk_vp",
    )
    _, vjp = jax.vjp(
        lambda p: forward(problem, p, problem.x2, problem.kw2), problem.params
    )
    (tangent,) = vjp(cotangents)
    _, product = jax.jvp(
        lambda p: forward(problem, p, problem.x1, problem.kw1),
        (problem.params,),
        (tangent,),
    )
    return product
