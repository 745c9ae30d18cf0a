"""Combinators: networks built from layers, which are layers themselves."""

from __future__ import annotations

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray

from .._kernel import Kernel
from .._layer import AbstractLayer, Layout, call, split_key
from .._mask import output_mask, propagate, start, with_mask, zero_masked


class _EveryKeyword(frozenset):
    """The `call_keywords` of combinators: they pass every keyword on."""

    def __contains__(self, name) -> bool:
        return True


_EVERY_KEYWORD = _EveryKeyword()


class Serial(AbstractLayer):
    r"""Layers applied one after the other.

    The output kernel is the composition of the layers' rules,
    $\mathcal K_L = T_L \circ \cdots \circ T_1(\mathcal K_0)$, where $T_l$
    maps the pair $(K, \Theta)$ of the layer's inputs to that of its outputs.

    **Arguments:**

    - `*layers`: the layers, first to last.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> model = et.Serial(et.Dense(512), et.Relu(), et.Dense(1))
    >>> model.output_shape((4,))
    (1,)
    >>> after_dense = et.Dense(512).kernel(x, None)          # an et.Kernel ...
    >>> k = et.Serial(et.Relu(), et.Dense(1)).kernel(after_dense)   # ... to go on from
    >>> bool(jnp.allclose(k.ntk, model.kernel(x, None).ntk))
    True
    ```
    """

    layers: tuple[AbstractLayer, ...]
    call_keywords = _EVERY_KEYWORD

    def __init__(self, *layers: AbstractLayer):
        for i, layer in enumerate(layers):
            if not isinstance(layer, AbstractLayer):
                raise ValueError(
                    f"Serial: item {i} is {type(layer).__name__}, not an eqtangents "
                    "layer. Wrap other modules in their own network, or use "
                    "`et.empirical_kernel` for arbitrary Equinox modules."
                )
        self.layers = tuple(layers)

    def __call__(self, x, *, key: PRNGKeyArray | None = None, **keywords):
        x, mask, keywords = start("Serial", x, keywords)
        for layer, k in zip(self.layers, split_key(key, len(self.layers))):
            if mask is None:
                x = call(layer, x, k, keywords)
                continue
            x = zero_masked(x, mask)
            y = call(layer, x, k, with_mask(keywords, mask))
            mask = output_mask(layer, mask, _shape(x))
            x = y
        return zero_masked(x, mask)

    def output_shape(self, input_shape):
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return input_shape

    def output_mask(self, mask, input_shape):
        for layer in self.layers:
            mask = output_mask(layer, mask, input_shape)
            input_shape = layer.output_shape(input_shape)
        return mask

    def init(self, key: PRNGKeyArray, input_shape) -> Serial:
        layers = []
        for layer, k in zip(
            self.layers, jax.random.split(key, max(len(self.layers), 1))
        ):
            layers.append(layer.init(k, input_shape))
            input_shape = layer.output_shape(input_shape)
        return eqx.tree_at(lambda s: s.layers, self, tuple(layers))

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        for layer in reversed(self.layers):
            output_full = layer.needs_full_spatial(output_full)
        return output_full

    def propagate(self, k):
        for layer in self.layers:
            k = propagate(layer, k)
        return k


class Parallel(AbstractLayer):
    r"""Applies layer `i` to input `i` of a tuple (after `FanOut`, say).

    Branches have independent weights, so each kernel follows its own rule,
    $(\mathcal K_1, \dots, \mathcal K_n) \mapsto (T_1 \mathcal K_1, \dots,
    T_n \mathcal K_n)$; the covariance between two branches is zero once
    they have passed an affine layer.

    **Arguments:**

    - `*layers`: one layer per branch.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> two = et.Serial(et.FanOut(2), et.Parallel(et.Dense(1), et.Dense(1, W_std=2.0)))
    >>> k1, k2 = two.kernel(x, None, "nngp")                 # one kernel per branch
    >>> bool(jnp.allclose(k2, 4 * k1))
    True
    >>> net = two.init(jax.random.key(1), x.shape[1:])
    >>> [y.shape for y in net(x[0])]
    [(1,), (1,)]
    ```
    """

    layers: tuple[AbstractLayer, ...]
    call_keywords = _EVERY_KEYWORD

    def __init__(self, *layers: AbstractLayer):
        self.layers = tuple(layers)

    def _check(self, n: int) -> None:
        if n != len(self.layers):
            raise ValueError(
                f"Parallel has {len(self.layers)} branches but receives {n} inputs; "
                f"use FanOut({len(self.layers)}) before it."
            )

    def __call__(self, x, *, key: PRNGKeyArray | None = None, **keywords):
        self._check(len(x))
        x, mask, keywords = start("Parallel", x, keywords)
        keys = split_key(key, len(self.layers))
        if mask is None:
            return tuple(
                call(layer, xi, k, keywords)
                for layer, xi, k in zip(self.layers, x, keys)
            )
        masks = mask if isinstance(mask, tuple) else (mask,) * len(x)
        x = zero_masked(x, masks)
        y = tuple(
            call(layer, xi, k, with_mask(keywords, mi))
            for layer, xi, k, mi in zip(self.layers, x, keys, masks)
        )
        return zero_masked(y, self.output_mask(masks, _shape(x)))

    def output_mask(self, mask, input_shape):
        masks = mask if isinstance(mask, tuple) else (mask,) * len(self.layers)
        return tuple(
            output_mask(layer, m, s)
            for layer, m, s in zip(self.layers, masks, input_shape)
        )

    def output_shape(self, input_shape):
        if not _is_multi(input_shape):
            raise ValueError(
                f"Parallel expects a tuple of inputs (one per branch), got one input "
                f"of shape {input_shape}; put FanOut({len(self.layers)}) before it."
            )
        self._check(len(input_shape))
        return tuple(lyr.output_shape(s) for lyr, s in zip(self.layers, input_shape))

    def init(self, key: PRNGKeyArray, input_shape) -> Parallel:
        self.output_shape(input_shape)
        keys = jax.random.split(key, max(len(self.layers), 1))
        layers = tuple(
            lyr.init(k, s) for lyr, k, s in zip(self.layers, keys, input_shape)
        )
        return eqx.tree_at(lambda s: s.layers, self, layers)

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        if not isinstance(output_full, tuple):
            output_full = (output_full,) * len(self.layers)
        return tuple(
            lyr.needs_full_spatial(o) for lyr, o in zip(self.layers, output_full)
        )

    def propagate(self, k):
        if isinstance(k, Kernel):
            raise ValueError(
                f"Parallel expects one kernel per branch; put "
                f"FanOut({len(self.layers)}) before it."
            )
        self._check(len(k))
        return tuple(propagate(layer, ki) for layer, ki in zip(self.layers, k))


class FanOut(AbstractLayer):
    r"""Copies its input into a tuple of `num` identical inputs.

    Every copy carries the input's kernel, $\mathcal K \mapsto (\mathcal K,
    \dots, \mathcal K)$; the copies are fully correlated until the branches
    apply their own weights.

    **Arguments:**

    - `num`: the number of copies.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> branch = et.Serial(et.Dense(512), et.Relu(), et.Dense(4))
    >>> residual = et.Serial(
    ...     et.FanOut(2), et.Parallel(et.Identity(), branch), et.FanInSum()
    ... )
    >>> k = residual.kernel(x, None, "nngp")                 # K_skip + K_branch
    >>> k_skip = et.Identity().kernel(x, None, "nngp")
    >>> bool(jnp.allclose(k, k_skip + branch.kernel(x, None, "nngp")))
    True
    ```
    """

    num: int = eqx.field(static=True)

    def __init__(self, num: int):
        if num < 1:
            raise ValueError(f"FanOut: `num` must be at least 1, got {num}.")
        self.num = num

    def __call__(self, x, *, key: PRNGKeyArray | None = None):
        return (x,) * self.num

    def output_shape(self, input_shape):
        return (input_shape,) * self.num

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        if isinstance(output_full, tuple):
            return any(output_full)
        return output_full

    def output_mask(self, mask, input_shape):
        return (mask,) * self.num

    def propagate(self, k):
        return (k,) * self.num


def _shape(x):
    """Per-example shape of one input, or the tuple of shapes of several."""
    if isinstance(x, tuple):
        return tuple(_shape(a) for a in x)
    return tuple(x.shape)


def _is_multi(shape) -> bool:
    return isinstance(shape, tuple) and len(shape) > 0 and isinstance(shape[0], tuple)


def check_branches(layer: AbstractLayer, shapes) -> None:
    """Validates that a fan-in layer receives a tuple of inputs."""
    if not _is_multi(shapes):
        raise ValueError(
            f"{type(layer).__name__} combines several branches but received one "
            f"input of shape {shapes}; use FanOut and Parallel before it."
        )


class Repeat(AbstractLayer):
    """`layer` applied `n` times, each time with its own weights.

    The kernel is computed with `jax.lax.scan`, so compile time does not grow
    with `n`. The layer must map its output shape to itself (apart, possibly,
    from the first application).

    **Arguments:**

    - `layer`: the block to repeat.
    - `n`: how many times.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> block = et.Serial(et.Dense(512, W_std=1.5, b_std=0.05), et.Relu())
    >>> deep = et.Serial(et.Repeat(block, 3), et.Dense(1))   # compiles one block
    >>> same = et.Serial(block, block, block, et.Dense(1))
    >>> bool(jnp.allclose(deep.kernel(x, None, "ntk"), same.kernel(x, None, "ntk")))
    True
    ```
    """

    layer: AbstractLayer
    n: int = eqx.field(static=True)
    stacked: AbstractLayer | None
    call_keywords = _EVERY_KEYWORD

    def __init__(self, layer: AbstractLayer, n: int):
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"Repeat: `n` must be a non-negative integer, got {n!r}.")
        self.layer = layer
        self.n = n
        self.stacked = None

    def output_shape(self, input_shape):
        for i in range(min(self.n, 2)):
            out = self.layer.output_shape(input_shape)
            if i > 0 and out != input_shape:
                raise ValueError(
                    f"Repeat: the repeated layer maps shape {input_shape} to {out}; "
                    "it must map its output shape to itself."
                )
            input_shape = out
        return input_shape

    def init(self, key: PRNGKeyArray, input_shape) -> Repeat:
        self.output_shape(input_shape)
        if self.n == 0:
            return self
        first_key, rest_key = jax.random.split(key)
        first = self.layer.init(first_key, input_shape)
        shape = self.layer.output_shape(input_shape)
        rest_keys = jax.random.split(rest_key, self.n)[: self.n - 1]
        dynamic, static = eqx.partition(first, eqx.is_array)

        def one(k):
            return eqx.partition(self.layer.init(k, shape), eqx.is_array)[0]

        if self.n > 1:
            rest = jax.vmap(one)(rest_keys)
            stacked = jax.tree.map(
                lambda a, b: jax.numpy.concatenate([a[None], b]), dynamic, rest
            )
        else:
            stacked = jax.tree.map(lambda a: a[None], dynamic)
        return eqx.tree_at(
            lambda r: r.stacked,
            self,
            eqx.combine(stacked, static),
            is_leaf=lambda x: x is None,
        )

    def __call__(self, x, *, key: PRNGKeyArray | None = None, **keywords):
        x, mask, keywords = start("Repeat", x, keywords)
        if self.n == 0:
            return zero_masked(x, mask)
        if self.stacked is None:
            return self.layer(x, key=key)  # raises the missing-weights error
        dynamic, static = eqx.partition(self.stacked, eqx.is_array)
        keys = None if key is None else jax.random.split(key, self.n)

        def body(carry, inputs):
            params, k = inputs
            layer = eqx.combine(params, static)
            if mask is None:
                return call(layer, carry, k, keywords), None
            x, m = carry
            x = zero_masked(x, m)
            y = call(layer, x, k, with_mask(keywords, m))
            return (y, output_mask(layer, m, _shape(x))), None

        if mask is None:
            x, _ = jax.lax.scan(body, x, (dynamic, keys))
            return x
        (x, mask), _ = jax.lax.scan(body, (x, mask), (dynamic, keys))
        return zero_masked(x, mask)

    def output_mask(self, mask, input_shape):
        if self.n == 0:
            return mask
        mask = output_mask(self.layer, mask, input_shape)
        shape = self.layer.output_shape(input_shape)

        def body(_, m):
            return output_mask(self.layer, m, shape)

        return jax.lax.fori_loop(1, self.n, body, mask)

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        layout = output_full
        for _ in range(min(self.n, 3)):
            layout = self.layer.needs_full_spatial(layout)
        return layout if self.n > 0 else output_full

    def propagate(self, k):
        if self.n == 0:
            return k
        if self.n == 1:  # no loop: a one-trip scan only adds its overhead
            return propagate(self.layer, k)

        def shapes(k):
            return eqx.filter_eval_shape(lambda k: propagate(self.layer, k), k)

        # `is_input` only selects error messages (`shapes(k)` raises those), so
        # when the block keeps the input's layout its first application can be
        # the scan's first trip: the block compiles once, not twice.
        if (
            isinstance(k, Kernel)
            and k.is_input
            and _same_layout(k.replace(is_input=False), shapes(k))
        ):
            k, trips = k.replace(is_input=False), self.n
        else:
            k, trips = propagate(self.layer, k), self.n - 1
            if not _same_layout(shapes(k), k):
                raise ValueError(
                    "Repeat: the repeated layer changes the kernel's layout or "
                    "shapes from one application to the next; write the layers out "
                    "in Serial."
                )
        dynamic, static = eqx.partition(k, eqx.is_array)

        def body(carry, _):
            return eqx.partition(
                propagate(self.layer, eqx.combine(carry, static)), eqx.is_array
            )[0], None

        dynamic, _ = jax.lax.scan(body, dynamic, None, length=trips)
        return eqx.combine(dynamic, static)


def _same_layout(a, b) -> bool:
    """Whether two kernels (or their shapes) have one structure, shapes, dtypes."""
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        (x.shape, x.dtype) == (y.shape, y.dtype)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )
