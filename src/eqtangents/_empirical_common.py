"""Shared machinery of the finite-width tools: parameters, calls, output layouts."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey, GetAttrKey, SequenceKey

from ._layer import AbstractLayer

# ----------------------------------------------------------------- parameters


def _is_hyperparameter(model: Any, path: tuple) -> bool:
    """Whether a leaf is a `*_std` field of an eqtangents layer (e.g. `W_std`)."""
    node = model
    for key in path:
        if isinstance(key, GetAttrKey):
            if isinstance(node, AbstractLayer) and key.name.endswith("_std"):
                return True
            node = getattr(node, key.name)
        elif isinstance(key, SequenceKey):
            node = node[key.idx]
        elif isinstance(key, DictKey):
            node = node[key.key]
        else:
            return False
    return False


def default_filter_spec(model: Any) -> Any:
    """The default parameters: inexact array leaves, less eqtangents hyperparameters."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: (
            eqx.is_inexact_array(leaf) and not _is_hyperparameter(model, path)
        ),
        model,
    )


def split_parameters(model: Any, filter_spec: Any = None) -> tuple[Any, Any]:
    """Splits `model` into `(params, rest)`, both of the model's tree structure.

    `params` holds the inexact arrays selected by `filter_spec` (a filter function
    on leaves or a pytree prefix of booleans/filters, as in `eqx.partition`) and
    `None` elsewhere; `rest` holds everything else.
    """
    spec = default_filter_spec(model) if filter_spec is None else filter_spec
    params, rest = eqx.partition(model, spec)
    params, not_inexact = eqx.partition(params, eqx.is_inexact_array)
    return params, eqx.combine(rest, not_inexact)


# ---------------------------------------------------------------------- calls


class Problem(NamedTuple):
    """A model split into parameters and the rest, with its two batches.

    `kw1`/`kw2` are keyword arguments of the call; with `per_example` their array
    leaves carry a leading example axis. `same` says that side 2 is side 1.
    """

    params: Any
    rest: Any
    per_example: bool
    x1: Any
    x2: Any
    kw1: dict
    kw2: dict
    same: bool


def apply(rest: Any, params: Any, x: Any, kw: dict) -> Any:
    """Calls the model rebuilt from `params` and `rest`."""
    return eqx.combine(params, rest)(x, **kw)


def map_examples(fn: Callable, x: Any, kw: dict, *others) -> Any:
    """`jax.vmap` of `fn(x_i, kw_i, *others)` over examples (array leaves of `kw`)."""
    dynamic, static = eqx.partition(kw, eqx.is_array)

    def one(xi, di):
        return fn(xi, eqx.combine(di, static), *others)

    return jax.vmap(one)(x, dynamic)


def forward(problem: Problem, params: Any, x: Any, kw: dict) -> Any:
    """The batched outputs of the model: vmapped over examples if `per_example`."""
    if problem.per_example:
        return map_examples(lambda xi, ki: apply(problem.rest, params, xi, ki), x, kw)
    return apply(problem.rest, params, x, kw)


def example_slice(x: Any, kw: dict) -> tuple[Any, dict]:
    """Abstract values of one example of `x` and its keyword arguments."""

    def first(a):
        return jax.ShapeDtypeStruct(a.shape[1:], a.dtype) if eqx.is_array(a) else a

    return jax.tree.map(first, x), jax.tree.map(first, kw)


def batch_size(x: Any) -> int:
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise ValueError("The inputs hold no arrays.")
    return leaves[0].shape[0]


def accepts_key(model: Any) -> bool:
    """Whether `model.__call__` takes a `key` keyword (or `**kwargs`)."""
    try:
        signature = inspect.signature(model)
    except (TypeError, ValueError):
        return True
    return any(
        p.name == "key" or p.kind is inspect.Parameter.VAR_KEYWORD
        for p in signature.parameters.values()
    )


def make_problem(
    model,
    x1,
    x2,
    *,
    per_example: bool,
    filter_spec,
    key,
    call_kwargs,
    call_kwargs2,
    name: str,
) -> Problem:
    """Validates the arguments of an empirical-kernel function."""
    if not callable(model):
        raise ValueError(f"{name}: `model` must be callable, got {type(model)}.")
    x1 = jax.tree.map(_as_inexact, x1)
    same = x2 is None
    x2 = x1 if same else jax.tree.map(_as_inexact, x2)
    kw1 = dict(call_kwargs or {})
    kw2 = kw1 if call_kwargs2 is None else dict(call_kwargs2)
    if "key" in kw1 or "key" in kw2:
        raise ValueError(
            f"{name}: pass the random key as `key=`, not in `call_kwargs`."
        )
    if key is not None:
        key1, key2 = (key, key) if same else tuple(jax.random.split(key))
        if per_example:
            key1 = jax.random.split(key1, batch_size(x1))
            key2 = key1 if same else jax.random.split(key2, batch_size(x2))
        kw1 = {**kw1, "key": key1}
        kw2 = {**kw2, "key": key2}
    if per_example:
        for side, (x, kw) in enumerate(((x1, kw1), (x2, kw2)), start=1):
            n = batch_size(x)
            for leaf in jax.tree.leaves(kw):
                if eqx.is_array(leaf) and (leaf.ndim == 0 or leaf.shape[0] != n):
                    raise ValueError(
                        f"{name}: with `per_example=True` every array in the call "
                        f"keyword arguments of batch {side} needs a leading axis of "
                        f"{n} examples, but one has shape {leaf.shape}. Put shared "
                        "arrays into the model instead."
                    )
    params, rest = split_parameters(model, filter_spec)
    return Problem(params, rest, per_example, x1, x2, kw1, kw2, same)


def _as_inexact(x):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


# -------------------------------------------------------------------- layouts


class Layout(NamedTuple):
    """Einsum labels pairing the axes of two batched outputs of one leaf.

    `l1`/`l2` label the axes of the first/second output, `out` the kernel;
    `free` is the first unused label; `scale` divides by the traced size;
    `paired` says that the example axis 0 is traced or diagonal.
    """

    l1: list
    l2: list
    out: list
    free: int
    scale: int
    paired: bool
    pairs: int


def _canonical(axes, ndim: int, what: str, name: str) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    result = []
    for axis in axes:
        if not -ndim <= axis < ndim:
            raise ValueError(
                f"{name}: `{what}` has axis {axis}, but an output has only {ndim} axes "
                "(batch axis first). Pass axes that exist for every output, e.g. "
                "`trace_axes=()` for outputs without a channel axis."
            )
        result.append(axis % ndim)
    if len(set(result)) != len(result):
        raise ValueError(f"{name}: `{what}={axes}` repeats an axis.")
    return tuple(result)


def make_layout(shape1, shape2, trace_axes, diagonal_axes, name: str) -> Layout:
    """Labels for the kernel between outputs of shapes `shape1` and `shape2`."""
    if len(shape1) != len(shape2):
        raise ValueError(
            f"{name}: the outputs at `x1` and `x2` have shapes {shape1} and {shape2}; "
            "they need the same number of axes."
        )
    ndim = len(shape1)
    trace = _canonical(trace_axes, ndim, "trace_axes", name)
    diagonal = _canonical(diagonal_axes, ndim, "diagonal_axes", name)
    if set(trace) & set(diagonal):
        raise ValueError(
            f"{name}: axes {sorted(set(trace) & set(diagonal))} are in both "
            "`trace_axes` and `diagonal_axes`; an axis is either traced or kept on "
            "its diagonal."
        )
    l1, l2, out = [], [], []
    label, scale, pairs = 0, 1, 1
    for axis, (s1, s2) in enumerate(zip(shape1, shape2)):
        if axis in trace or axis in diagonal:
            if s1 != s2:
                raise ValueError(
                    f"{name}: axis {axis} is traced or diagonal, but the outputs have "
                    f"sizes {s1} and {s2} there (shapes {shape1} and {shape2})."
                )
            l1.append(label)
            l2.append(label)
            if axis in diagonal:
                out.append(label)
            else:
                scale *= s1
            pairs *= s1
            label += 1
        else:
            l1.append(label)
            l2.append(label + 1)
            out += [label, label + 1]
            pairs *= s1 * s2
            label += 2
    paired = 0 in trace or 0 in diagonal
    return Layout(l1, l2, out, label, scale, paired, pairs)


def contract(layout: Layout, a, extra: int, b):
    """Pairs two per-output arrays whose `extra` trailing axes are summed over.

    `a` has axes `l1 + trailing`, `b` has `l2 + trailing` (the same trailing axes).
    """
    extra = list(range(layout.free, layout.free + extra))
    return jnp.einsum(a, layout.l1 + extra, b, layout.l2 + extra, layout.out)


def value_and_jacobian(fn: Callable, primals: Any, *, has_aux: bool = False):
    """Outputs of `fn(primals)` and, for each output leaf, its Jacobian.

    Reverse mode, one vector-Jacobian product per output entry (vmapped).
    Returns `(outputs, jacobians[, aux])` with `outputs` a flat list of arrays and
    `jacobians[i]` a tree like `primals` whose leaves have shape
    `outputs[i].shape + leaf.shape`.
    """
    if has_aux:
        out, vjp_fn, aux = jax.vjp(fn, primals, has_aux=True)
    else:
        out, vjp_fn = jax.vjp(fn, primals)
    leaves, treedef = jax.tree.flatten(out)
    basis, sizes, offsets = output_basis(leaves)
    (rows,) = jax.vmap(vjp_fn)(jax.tree.unflatten(treedef, basis))
    jacobians = [
        jax.tree.map(
            lambda r, o=int(o), s=s, leaf=leaf: r[o : o + s].reshape(
                leaf.shape + r.shape[1:]
            ),
            rows,
        )
        for leaf, s, o in zip(leaves, sizes, offsets)
    ]
    if has_aux:
        return leaves, jacobians, aux
    return leaves, jacobians


def output_basis(leaves: list) -> tuple[list, list[int], np.ndarray]:
    """Standard basis of cotangents for a flat list of outputs (one row each)."""
    sizes = [leaf.size for leaf in leaves]
    total = sum(sizes)
    offsets = np.cumsum([0] + sizes)
    basis = [
        jnp.eye(total, size, k=-int(offset), dtype=leaf.dtype).reshape(
            (total,) + leaf.shape
        )
        for leaf, size, offset in zip(leaves, sizes, offsets)
    ]
    return basis, sizes, offsets
