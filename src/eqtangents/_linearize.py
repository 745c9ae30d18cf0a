r"""Linearized and Taylor-expanded modules, trainable like any Equinox module."""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
from jaxtyping import PyTree

from ._empirical_common import split_parameters


def _freeze(tree):
    return jax.tree.map(
        lambda a: jax.lax.stop_gradient(a) if eqx.is_array(a) else a, tree
    )


def _sub(a, b):
    return jax.tree.map(lambda u, v: u - v, a, b)


class Linearized(eqx.Module):
    r"""First-order Taylor expansion of a module around reference parameters.

    $$f_{\text{lin}}(\theta, x) = f(\theta_0, x)
      + \partial_\theta f(\theta_0, x)\,(\theta - \theta_0),$$

    evaluated with one Jacobian-vector product. Made by `et.linearize(model)`.

    **Fields:**

    - `params`: the trainable parameters $\theta$ (initially $\theta_0$), in the
      tree structure of the module with `None` elsewhere.
    - `reference`: the expansion point $\theta_0$; frozen.
    - `rest`: the rest of the module (static structure, non-parameter arrays);
      frozen.

    The frozen fields enter the forward pass through `jax.lax.stop_gradient`, so
    `eqx.filter_grad` gives them zero gradients: an optimiser moves `params` only
    (but mask `reference` and `rest` out of weight decay, e.g. with
    `optax.masked`).
    """

    params: PyTree
    reference: PyTree
    rest: PyTree

    @property
    def model(self) -> Any:
        """The original (nonlinear) module at the current parameters."""
        return eqx.combine(self.params, self.rest)

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        rest, reference = _freeze(self.rest), _freeze(self.reference)

        def f(p):
            return eqx.combine(p, rest)(x, *args, **kwargs)

        out, change = jax.jvp(f, (reference,), (_sub(self.params, reference),))
        return jax.tree.map(lambda a, b: a + b, out, change)


class TaylorExpanded(eqx.Module):
    r"""Taylor expansion of a module, of a given degree, around reference parameters.

    With $g(t) = f(\theta_0 + t(\theta - \theta_0), x)$,

    $$f_{\text{taylor}}(\theta, x) = \sum_{k=0}^{d} \frac{g^{(k)}(0)}{k!},$$

    each derivative by nested Jacobian-vector products (the cost grows as
    $2^d$ forward passes). Made by `et.taylor_expand(model, degree)`.

    **Fields:**

    - `params`, `reference`, `rest`: as in `et.Linearized`.
    - `degree`: $d$.
    """

    params: PyTree
    reference: PyTree
    rest: PyTree
    degree: int = eqx.field(static=True)

    @property
    def model(self) -> Any:
        """The original (nonlinear) module at the current parameters."""
        return eqx.combine(self.params, self.rest)

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        rest, reference = _freeze(self.rest), _freeze(self.reference)
        direction = _sub(self.params, reference)

        def f(p):
            return eqx.combine(p, rest)(x, *args, **kwargs)

        def derivative(fn):
            return lambda p: jax.jvp(fn, (p,), (direction,))[1]

        total, fn = f(reference), f
        for k in range(1, self.degree + 1):
            fn = derivative(fn)
            term = fn(reference)
            total = jax.tree.map(
                lambda a, b, k=k: a + b / math.factorial(k), total, term
            )
        return total


def linearize(model: Any, *, filter_spec: Any = None) -> Linearized:
    r"""The linearization of `model` around its current parameters.

    **Arguments:**

    - `model`: any callable pytree (an `eqx.Module`).
    - `filter_spec`: which leaves are parameters, as in `et.empirical_ntk`
      (default: the inexact arrays, less eqtangents hyperparameters).

    **Returns:**

    An `et.Linearized` module: called like `model`, its outputs are
    $f(\theta_0, x) + J(\theta_0, x)(\theta - \theta_0)$; train it with
    `eqx.filter_grad` and optax as usual. Under gradient flow on the squared
    loss its training outputs follow $f_t = y + e^{-\eta t \Theta}(f_0 - y)$
    with $\Theta$ the empirical NTK of `model` (`trace_axes=()`).

    **Example:**

    ```python
    lin = et.linearize(net)
    grads = eqx.filter_grad(lambda m: jnp.sum((jax.vmap(m)(x) - y) ** 2))(lin)
    ```
    """
    params, rest = split_parameters(model, filter_spec)
    return Linearized(params, params, rest)


def taylor_expand(
    model: Any, degree: int, *, filter_spec: Any = None
) -> TaylorExpanded:
    r"""The Taylor expansion of `model` of order `degree` around its parameters.

    **Arguments:**

    - `model`: any callable pytree (an `eqx.Module`).
    - `degree`: the order $d \ge 0$ (`1` is `et.linearize`).
    - `filter_spec`: which leaves are parameters, as in `et.empirical_ntk`.

    **Returns:**

    An `et.TaylorExpanded` module, trainable like any Equinox module.
    """
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 0:
        raise ValueError(
            f"taylor_expand: `degree` must be a non-negative integer, got {degree!r}."
        )
    params, rest = split_parameters(model, filter_spec)
    return TaylorExpanded(params, params, rest, degree)
