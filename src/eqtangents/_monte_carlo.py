r"""Monte Carlo estimates of NNGP and NTK kernels over random initializations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree

from ._empirical import Axes, Implementation, empirical_kernel
from ._empirical_common import accepts_key
from ._kernel import _NAMED_TUPLES as NAMED_TUPLES
from ._kernel import Get, parse_get
from ._layer import AbstractLayer


def _counts(n_samples) -> tuple[tuple[int, ...], bool]:
    if isinstance(n_samples, (int, np.integer)) and not isinstance(n_samples, bool):
        counts, many = (int(n_samples),), False
    elif isinstance(n_samples, Sequence) and len(n_samples) > 0:
        counts, many = tuple(n_samples), True
    else:
        raise ValueError(
            "monte_carlo_kernel: `n_samples` must be a positive integer or a "
            f"non-empty sequence of them, got {n_samples!r}."
        )
    for n in counts:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(
                "monte_carlo_kernel: sample counts must be positive integers, "
                f"got {n!r}."
            )
    return tuple(int(n) for n in counts), many


def monte_carlo_kernel(
    model: AbstractLayer | Callable[[PRNGKeyArray], Any],
    x1: PyTree,
    x2: PyTree | None = None,
    get: Get = None,
    *,
    key: PRNGKeyArray,
    n_samples: int | Sequence[int],
    trace_axes: Axes = (1,),
    diagonal_axes: Axes = (),
    implementation: Implementation | int = "auto",
    filter_spec: Any = None,
    call_kwargs: dict | None = None,
    call_kwargs2: dict | None = None,
):
    r"""Average of empirical kernels over random initializations of `model`.

    $$\hat K_n = \frac{1}{n}\sum_{s=1}^{n} K_{\theta_s}(x_1, x_2), \qquad
      \theta_s \sim \text{init},$$

    with $K_\theta$ the empirical NNGP or NTK of `et.empirical_kernel`. As the
    widths of an eqtangents network grow, $\hat K_n$ converges to
    `model.kernel(x1, x2)`. Samples are drawn one after another in a
    `jax.lax.scan`, so memory does not grow with `n_samples`.

    **Arguments:**

    - `model`: an eqtangents network (its `init(key, x1.shape[1:])` draws the
      weights), or any function `init(key) -> module`, e.g.
      `lambda k: eqx.nn.MLP(784, 10, 512, 2, key=k)`.
    - `x1`, `x2`, `get`: as in `et.empirical_kernel`.
    - `key`: the random key. Sample `s` (from 0) uses
      `jax.random.split(jax.random.fold_in(key, s))`: the first key draws the
      weights, the second is passed as `key=` to the call (dropout) if the
      module takes one. So the first `n` samples do not depend on `n_samples`.
    - `n_samples`: the number of samples, or a sequence of counts: the running
      estimates after each count are returned, all from one pass over
      `max(n_samples)` samples.
    - `trace_axes`, `diagonal_axes`, `implementation`, `filter_spec`,
      `call_kwargs`, `call_kwargs2`: as in `et.empirical_kernel` (the module acts
      on one example).

    **Returns:**

    What `et.empirical_kernel` returns for `get`; a list of them, one per count,
    when `n_samples` is a sequence.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> model = et.Serial(et.Dense(512), et.Relu(), et.Dense(512))  # 512 outputs
    >>> key = jax.random.key(1)
    >>> nngp = et.monte_carlo_kernel(model, x, None, "nngp", key=key, n_samples=64)
    >>> exact = model.kernel(x, None, "nngp")
    >>> float(jnp.max(jnp.abs(nngp - exact)) / jnp.max(exact)) < 0.03
    True
    >>> estimates = et.monte_carlo_kernel(model, x, None, "ntk", key=jax.random.key(1),
    ...                                   n_samples=[1, 4, 16])
    >>> len(estimates), estimates[-1].shape
    (3, (3, 3))
    ```
    """
    counts, many = _counts(n_samples)
    names, single = parse_get(get)
    if isinstance(model, AbstractLayer):
        # Per-example shape, or a tuple of them for a tuple of inputs.
        shape = jax.tree.map(lambda a: tuple(a.shape[1:]), x1)

        def init(k):
            return model.init(k, shape)
    elif callable(model):
        init = model
    else:
        raise ValueError(
            "monte_carlo_kernel: `model` must be an eqtangents network or a "
            f"function `init(key) -> module`, got {type(model)}."
        )

    def sample(k):
        init_key, call_key = jax.random.split(k)
        net = init(init_key)
        kernels = empirical_kernel(
            net,
            x1,
            x2,
            names,
            trace_axes=trace_axes,
            diagonal_axes=diagonal_axes,
            implementation=implementation,
            filter_spec=filter_spec,
            key=call_key if accepts_key(net) else None,
            call_kwargs=call_kwargs,
            call_kwargs2=call_kwargs2,
        )
        return tuple(kernels)

    total = max(counts)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(total))
    shapes = jax.eval_shape(sample, keys[0])
    order = sorted(set(counts))
    targets = jnp.asarray(order)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    saved = jax.tree.map(lambda s: jnp.zeros((len(order),) + s.shape, s.dtype), shapes)

    def step(carry, inputs):
        running, saved = carry
        index, k = inputs
        running = jax.tree.map(jnp.add, running, sample(k))
        n = index + 1
        slot = jnp.searchsorted(targets, n)
        hit = jnp.any(targets == n)

        def store(buffer, value):
            value = jnp.where(hit, value / n, buffer[jnp.minimum(slot, len(order) - 1)])
            return buffer.at[jnp.minimum(slot, len(order) - 1)].set(value)

        saved = jax.tree.map(store, saved, running)
        return (running, saved), None

    (_, saved), _ = jax.lax.scan(step, (zeros, saved), (jnp.arange(total), keys))

    def package(i):
        values = jax.tree.map(lambda a: a[i], saved)
        if single:
            return values[0]
        return NAMED_TUPLES[names](*values)

    estimates = {n: package(i) for i, n in enumerate(order)}
    if many:
        return [estimates[n] for n in counts]
    return estimates[counts[0]]
