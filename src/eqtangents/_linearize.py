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

    **Example:**

    ```pycon
    >>> model = et.Serial(et.Dense(8), et.Relu(), et.Dense(1))
    >>> net = model.init(jax.random.key(0), (2,))
    >>> lin = et.linearize(net)
    >>> def moved(s):                                  # theta_0 + s (1, 1, ..., 1)
    ...     params = jax.tree.map(lambda p: p + s, lin.params)
    ...     return eqx.tree_at(lambda m: m.params, lin, params)(jnp.array([0.3, -0.7]))
    >>> f0, f1, f2 = moved(0.0), moved(0.1), moved(0.2)
    >>> bool(jnp.allclose(f2 - f0, 2 * (f1 - f0)))     # affine in theta
    True
    ```
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

    **Example:**

    ```pycon
    >>> model = et.Serial(et.Dense(8), et.Erf(), et.Dense(1))
    >>> net = model.init(jax.random.key(0), (2,))
    >>> expanded = et.taylor_expand(net, 3)
    >>> expanded.degree, type(expanded).__name__
    (3, 'TaylorExpanded')
    >>> x = jnp.array([0.3, -0.7])
    >>> bool(jnp.allclose(expanded(x), net(x)))        # equal at theta_0
    True
    ```
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

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> model = et.Serial(et.Dense(64), et.Erf(), et.Dense(1))
    >>> net = model.init(jax.random.key(1), (4,))
    >>> lin = et.linearize(net)
    >>> bool(jnp.allclose(jax.vmap(lin)(x), jax.vmap(net)(x)))     # equal at theta_0
    True
    >>> bool(jnp.allclose(et.empirical_ntk(lin, x), et.empirical_ntk(net, x)))
    True
    >>> loss = lambda m: jnp.sum((jax.vmap(m)(x) - 1.0) ** 2)
    >>> grads = eqx.filter_grad(loss)(lin)                 # trains like any module
    >>> lin = eqx.apply_updates(lin, jax.tree.map(lambda g: -0.1 * g, grads))
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

    **Example:**

    ```pycon
    >>> x = jnp.array([0.3, -0.7])
    >>> model = et.Serial(et.Dense(8), et.Dense(1))
    >>> net = model.init(jax.random.key(0), (2,))
    >>> quadratic = et.taylor_expand(net, 2)           # net is bilinear in (W1, W2)
    >>> shift = lambda tree: jax.tree.map(lambda p: p + 0.3, tree)
    >>> params = shift(eqx.filter(net, eqx.is_inexact_array))   # theta_0 + 0.3
    >>> rest = eqx.filter(net, eqx.is_inexact_array, inverse=True)
    >>> moved_net = eqx.combine(params, rest)
    >>> move = lambda m: eqx.tree_at(lambda e: e.params, m, shift(m.params))
    >>> bool(jnp.allclose(move(quadratic)(x), moved_net(x)))   # exact at degree 2
    True
    >>> bool(jnp.allclose(move(et.linearize(net))(x), moved_net(x)))   # degree 1 is not
    False
    ```
    """
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 0:
        raise ValueError(
            f"taylor_expand: `degree` must be a non-negative integer, got {degree!r}."
        )
    params, rest = split_parameters(model, filter_spec)
    return TaylorExpanded(params, params, rest, degree)
