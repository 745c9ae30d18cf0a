r"""Feature layers with several branches: `FanOut`, `Parallel`, `FanInSum`,
`FanInConcat`, and `Identity`.

Several branches are a tuple of `Features` (one per branch), and their shapes a
tuple of `FeatureShape`s: `FanOut(n)` copies one `Features` into a tuple,
`Parallel(*layers)` applies layer `i` to branch `i`, and the fan-in layers take
the tuple back to one `Features`. A `features.Serial` maps one `Features` to one
`Features`, so a block with branches sits inside one, for example a residual
block:

```python
block = et.features.Serial(
    et.features.FanOut(2),
    et.features.Parallel(
        et.features.Serial(et.features.Dense(1.5), et.features.Relu(),
                           et.features.Dense(1.5)),
        et.features.Identity(),
    ),
    et.features.FanInSum(),
)
```

As for the network layers (`et.FanInSum`, `et.FanInConcat`), branches are
independent in the infinite-width limit, which holds when each branch starts
with its own randomly initialised layer (or is the identity next to such a
branch). Independent branches have additive kernels, so their features are
concatenated.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from ._features import (
    AbstractFeatureLayer,
    Features,
    FeatureShape,
    as_feature_shape,
)


def _name(layer) -> str:
    return f"features.{type(layer).__name__}"


def _is_multi(shape) -> bool:
    """Whether `shape` is a tuple of shapes (one per branch)."""
    return (
        isinstance(shape, tuple)
        and not isinstance(shape, FeatureShape)
        and len(shape) > 0
        and all(isinstance(s, tuple) for s in shape)
    )


def branch_shapes(input_shape, layer, fix: str | None = None):
    """The `FeatureShape` of each branch; a clear error for a single input."""
    if not _is_multi(input_shape):
        if fix is None:
            fix = "`features.FanOut(n)` and `features.Parallel(...)`"
        raise ValueError(
            f"{_name(layer)} expects a tuple of input shapes, one per branch, but "
            f"received one, {input_shape!r}; put {fix} before it."
        )
    return tuple(as_feature_shape(s, layer) for s in input_shape)


def check_branches(f, layer, fix: str | None = None) -> tuple[Features, ...]:
    """The tuple of branch `Features`; a clear error for a single `Features`."""
    if isinstance(f, Features) or not isinstance(f, (tuple, list)) or not f:
        if fix is None:
            fix = "`features.FanOut(n)` and `features.Parallel(...)`"
        raise ValueError(
            f"{_name(layer)} expects a tuple of features, one per branch, but "
            f"received {type(f).__name__}; put {fix} before it (inside one "
            "`features.Serial`)."
        )
    return tuple(f)


def _total(values):
    """The sum of feature widths, `None` when any is unknown (exact layers)."""
    return None if any(v is None for v in values) else sum(values)


def _common_width(shapes: tuple[FeatureShape, ...], layer) -> int | None:
    widths = {s.width for s in shapes if s.width is not None}
    if len(widths) > 1:
        raise ValueError(
            f"{_name(layer)}: branches have different channel counts "
            f"{[s.width for s in shapes]}; end every branch with a layer of the "
            "same width (`out_features=`), or use `features.FanInConcat`."
        )
    return widths.pop() if widths else None


class Identity(AbstractFeatureLayer):
    """The identity: features unchanged (mirrors `et.Identity`), for example the

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> fmodel = et.features.Serial(
    ...     et.features.Identity(),
    ... ).init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(
    ...     et.Identity(),
    ... ).kernel(x, None)                                 # the same, exactly
    >>> bool(jnp.allclose(nngp, k.nngp)), bool(jnp.allclose(ntk, k.ntk))
    (True, True)
    ```
    skip branch of a residual block."""

    def output_shape(self, input_shape) -> FeatureShape:
        return as_feature_shape(input_shape, self)

    def __call__(self, f: Features) -> Features:
        return f


class FanOut(AbstractFeatureLayer):
    """Copies the features into a tuple of `num` branches (mirrors `et.FanOut`).

    **Arguments:**

    - `num`: the number of branches.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> fmodel = et.features.Serial(
    ...     et.features.FanOut(2),
    ...     et.features.Parallel(et.features.Identity(), et.features.Dense(W_std=2.0)),
    ...     et.features.FanInSum(),
    ... ).init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(
    ...     et.FanOut(2),
    ...     et.Parallel(et.Identity(), et.Dense(4, W_std=2.0)),
    ...     et.FanInSum(),
    ... ).kernel(x, None)                                 # the same, exactly
    >>> bool(jnp.allclose(nngp, k.nngp)), bool(jnp.allclose(ntk, k.ntk))
    (True, True)
    ```
    """

    num: int = eqx.field(static=True)

    def __init__(self, num: int):
        if not isinstance(num, int) or isinstance(num, bool) or num < 1:
            raise ValueError(
                f"features.FanOut: `num` must be a positive int, got {num!r}."
            )
        self.num = num

    def output_shape(self, input_shape) -> tuple[FeatureShape, ...]:
        return (as_feature_shape(input_shape, self),) * self.num

    def __call__(self, f: Features | tuple[Features, ...]) -> tuple[Features, ...]:
        if not isinstance(f, Features):
            raise ValueError(
                f"features.FanOut expects one `Features`, got {type(f).__name__}; "
                "combine the branches first (e.g. `features.FanInSum()`)."
            )
        return (f,) * self.num


class Parallel(AbstractFeatureLayer):
    """Applies layer `i` to branch `i` of a tuple of features (mirrors
    `et.Parallel`). `init` draws each branch's projections with its own key.

    **Arguments:**

    - `*layers`: one feature layer per branch.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> fmodel = et.features.Serial(
    ...     et.features.FanOut(2),
    ...     et.features.Parallel(
    ...         et.features.Dense(b_std=0.5), et.features.Dense(W_std=2.0)
    ...     ),
    ...     et.features.FanInSum(),
    ... ).init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(
    ...     et.FanOut(2),
    ...     et.Parallel(et.Dense(1, b_std=0.5), et.Dense(1, W_std=2.0)),
    ...     et.FanInSum(),
    ... ).kernel(x, None)                                 # the same, exactly
    >>> bool(jnp.allclose(nngp, k.nngp)), bool(jnp.allclose(ntk, k.ntk))
    (True, True)
    ```
    """

    layers: tuple[AbstractFeatureLayer, ...]

    def __init__(self, *layers: AbstractFeatureLayer):
        for i, layer in enumerate(layers):
            if not isinstance(layer, AbstractFeatureLayer):
                raise ValueError(
                    f"features.Parallel: branch {i} is {type(layer).__name__}, not a "
                    "feature layer; use the layers of `et.features`."
                )
        if not layers:
            raise ValueError("features.Parallel needs at least one branch.")
        self.layers = tuple(layers)

    def _fix(self) -> str:
        return f"`features.FanOut({len(self.layers)})`"

    def _check(self, n: int) -> None:
        if n != len(self.layers):
            raise ValueError(
                f"features.Parallel has {len(self.layers)} branches but receives "
                f"{n}; put `features.FanOut({len(self.layers)})` before it."
            )

    def output_shape(self, input_shape) -> tuple[FeatureShape, ...]:
        shapes = branch_shapes(input_shape, self, self._fix())
        self._check(len(shapes))
        return tuple(lyr.output_shape(s) for lyr, s in zip(self.layers, shapes))

    def init(self, key: PRNGKeyArray, input_shape) -> Parallel:
        shapes = branch_shapes(input_shape, self, self._fix())
        self._check(len(shapes))
        keys = jax.random.split(key, len(self.layers))
        layers = tuple(lyr.init(k, s) for lyr, k, s in zip(self.layers, keys, shapes))
        return eqx.tree_at(lambda p: p.layers, self, layers)

    def __call__(self, f: tuple[Features, ...] | Features) -> tuple[Features, ...]:
        f = check_branches(f, self, self._fix())
        self._check(len(f))
        return tuple(layer(fi) for layer, fi in zip(self.layers, f))


def _spatial_of(f: tuple[Features, ...]) -> list[tuple[int, ...]]:
    return [tuple(fi.nngp_feat.shape[:-1]) for fi in f]


class FanInSum(AbstractFeatureLayer):
    r"""Sum of the branches (mirrors `et.FanInSum`).

    Independent branches have $K = \sum_i K_i$ and $\Theta = \sum_i \Theta_i$, so
    the features concatenate, exactly:
    $\Phi = [\Phi_1, \dots, \Phi_n]$, $\Psi = [\Psi_1, \dots, \Psi_n]$ (feature
    widths add up). All branches must have the same spatial shape and channel
    count.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> fmodel = et.features.Serial(
    ...     et.features.Dense(),
    ...     et.features.FanOut(2),
    ...     et.features.Parallel(
    ...         et.features.Identity(),
    ...         et.features.Serial(
    ...             et.features.Relu(method="exact"), et.features.Dense()
    ...         ),
    ...     ),
    ...     et.features.FanInSum(),
    ... ).init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(
    ...     et.Dense(1),
    ...     et.FanOut(2),
    ...     et.Parallel(et.Identity(), et.Serial(et.Relu(), et.Dense(1))),
    ...     et.FanInSum(),
    ... ).kernel(x, None)                                 # the same, exactly
    >>> bool(jnp.allclose(nngp, k.nngp)), bool(jnp.allclose(ntk, k.ntk))
    (True, True)
    ```
    """

    def output_shape(self, input_shape) -> FeatureShape:
        shapes = branch_shapes(input_shape, self)
        if any(s.spatial != shapes[0].spatial for s in shapes):
            raise ValueError(
                f"features.FanInSum: branches have different spatial shapes "
                f"{[s.spatial for s in shapes]}; make every branch output the same "
                "shape, or use `features.FanInConcat`."
            )
        return FeatureShape(
            _total([s.nngp for s in shapes]),
            _total([s.ntk for s in shapes]),
            _common_width(shapes, self),
            shapes[0].spatial,
        )

    def __call__(self, f: tuple[Features, ...] | Features) -> Features:
        f = check_branches(f, self)
        lead = _spatial_of(f)
        if any(s != lead[0] for s in lead):
            raise ValueError(
                "features.FanInSum: branches have different batch or spatial "
                f"shapes {lead}; make every branch output the same shape."
            )
        return f[0].replace(
            jnp.concatenate([fi.nngp_feat for fi in f], axis=-1),
            jnp.concatenate([fi.ntk_feat for fi in f], axis=-1),
        )


class FanInConcat(AbstractFeatureLayer):
    r"""Concatenation of the branches along `axis` (mirrors `et.FanInConcat`).

    Along the channels (`axis=0`) the kernel is the width-weighted average
    $K = \sum_i w_i K_i$, $w_i = C_i / \sum_j C_j$, with $C_i$ the channel count
    of branch $i$ (the same for $\Theta$), so

    $$\Phi = [\sqrt{w_1}\,\Phi_1, \dots, \sqrt{w_n}\,\Phi_n], \qquad
      \Psi = [\sqrt{w_1}\,\Psi_1, \dots, \sqrt{w_n}\,\Psi_n].$$

    The channel counts come from the input shapes at `init` (the `out_features`
    of the feature layers that end the branches, or the input channels), or
    from `widths`.

    Along a spatial axis the covariance is block diagonal: positions from
    different branches are uncorrelated. Each branch's features are padded with
    zeros into its own block of columns and the positions are concatenated,
    $\Phi = \begin{pmatrix}\Phi_1 & 0 \\ 0 & \Phi_2\end{pmatrix}$ along that
    axis. As for `et.FanInConcat`, this needs every branch to end in an affine
    layer (zero-mean Gaussian outputs); the feature layer does not check it.

    **Arguments:**

    - `axis`: the axis of the network's per-example shape `(C, *spatial)`;
      `0` (or `-len`) is the channels.
    - `widths`: the channel count of each branch (axis 0 only), overriding
      those of the input shapes.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> fmodel = et.features.Serial(
    ...     et.features.FanOut(2),
    ...     et.features.Parallel(
    ...         et.features.Dense(out_features=1),
    ...         et.features.Dense(W_std=2.0, out_features=3),
    ...     ),
    ...     et.features.FanInConcat(),
    ... ).init(jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = et.Serial(
    ...     et.FanOut(2),
    ...     et.Parallel(et.Dense(1), et.Dense(3, W_std=2.0)),
    ...     et.FanInConcat(),
    ... ).kernel(x, None)                                 # the same, exactly
    >>> bool(jnp.allclose(nngp, k.nngp)), bool(jnp.allclose(ntk, k.ntk))
    (True, True)
    ```
    """

    axis: int = eqx.field(static=True)
    widths: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(self, axis: int = 0, *, widths: tuple[int, ...] | None = None):
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise ValueError(
                f"features.FanInConcat: `axis` must be an int, got {axis!r}."
            )
        if widths is not None:
            widths = tuple(widths)
            if not widths or not all(
                isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths
            ):
                raise ValueError(
                    "features.FanInConcat: `widths` must be positive ints, one per "
                    f"branch, got {widths!r}."
                )
        self.axis = axis
        self.widths = widths

    def _axis(self, ndim: int) -> int:
        if not -ndim <= self.axis < ndim:
            raise ValueError(
                f"features.FanInConcat: axis {self.axis} is out of range for "
                f"inputs with {ndim} axes per example `(C, *spatial)`."
            )
        return self.axis % ndim

    def _widths(self, shapes: tuple[FeatureShape, ...]) -> tuple[int, ...]:
        widths = self.widths
        if widths is None:
            widths = tuple(s.width for s in shapes)
            if any(w is None for w in widths):
                raise ValueError(
                    "features.FanInConcat(axis=0) weights each branch by its "
                    f"channel count, but they are {list(widths)}; give "
                    "`out_features=` to the `features.Dense` that ends each branch, "
                    "or `widths=` to `features.FanInConcat`."
                )
        if len(widths) != len(shapes):
            raise ValueError(
                f"features.FanInConcat: `widths` has {len(widths)} entries for "
                f"{len(shapes)} branches."
            )
        return widths

    def output_shape(self, input_shape) -> FeatureShape:
        shapes = branch_shapes(input_shape, self)
        ndims = {len(s.spatial) + 1 for s in shapes}
        if len(ndims) > 1:
            raise ValueError(
                f"features.FanInConcat(axis={self.axis}): branches have spatial "
                f"shapes {[s.spatial for s in shapes]} of different ranks."
            )
        axis = self._axis(ndims.pop())
        nngp = _total([s.nngp for s in shapes])
        ntk = _total([s.ntk for s in shapes])
        if axis == 0:
            if any(s.spatial != shapes[0].spatial for s in shapes):
                raise ValueError(
                    "features.FanInConcat(axis=0): branches have different spatial "
                    f"shapes {[s.spatial for s in shapes]}."
                )
            return FeatureShape(nngp, ntk, sum(self._widths(shapes)), shapes[0].spatial)
        rest = [s.spatial[: axis - 1] + s.spatial[axis:] for s in shapes]
        if any(r != rest[0] for r in rest):
            raise ValueError(
                f"features.FanInConcat(axis={self.axis}): branches have spatial "
                f"shapes {[s.spatial for s in shapes]}, which differ off the "
                "concatenation axis."
            )
        s0 = shapes[0].spatial
        size = sum(s.spatial[axis - 1] for s in shapes)
        spatial = s0[: axis - 1] + (size,) + s0[axis:]
        return FeatureShape(nngp, ntk, _common_width(shapes, self), spatial)

    def init(self, key: PRNGKeyArray, input_shape) -> FanInConcat:
        shape = self.output_shape(input_shape)
        if self._axis(len(shape.spatial) + 1) != 0:
            return self
        widths = self._widths(branch_shapes(input_shape, self))
        return FanInConcat(self.axis, widths=widths)

    def __call__(self, f: tuple[Features, ...] | Features) -> Features:
        f = check_branches(f, self)
        ndim = f[0].nngp_feat.ndim - 1  # per-example axes (C, *spatial)
        axis = self._axis(ndim)
        if any(fi.nngp_feat.ndim - 1 != ndim for fi in f):
            raise ValueError(
                f"features.FanInConcat(axis={self.axis}): branches have features "
                f"of shapes {[fi.nngp_feat.shape for fi in f]} of different ranks."
            )
        if axis == 0:
            return self._channels(f)
        return _concat_positions(f, axis, self)

    def _channels(self, f: tuple[Features, ...]) -> Features:
        if self.widths is None:
            raise ValueError(
                "features.FanInConcat(axis=0) needs the channel count of each "
                "branch: call `init(key, input_shape)` first, or give `widths=`."
            )
        if len(self.widths) != len(f):
            raise ValueError(
                f"features.FanInConcat has widths for {len(self.widths)} branches "
                f"but receives {len(f)}."
            )
        lead = _spatial_of(f)
        if any(s != lead[0] for s in lead):
            raise ValueError(
                "features.FanInConcat(axis=0): branches have different batch or "
                f"spatial shapes {lead}."
            )
        total = sum(self.widths)
        scales = [math.sqrt(w / total) for w in self.widths]
        return f[0].replace(
            jnp.concatenate([s * fi.nngp_feat for s, fi in zip(scales, f)], axis=-1),
            jnp.concatenate([s * fi.ntk_feat for s, fi in zip(scales, f)], axis=-1),
        )


def _concat_positions(f: tuple[Features, ...], axis: int, layer) -> Features:
    """Block-diagonal features: branch `i` fills its own columns and positions.

    `axis` is the per-example axis `(C, *spatial)`, which is also the array axis
    of the features `(N, *spatial, d)`."""
    shapes = [fi.nngp_feat.shape[:-1] for fi in f]
    rest = [s[:axis] + s[axis + 1 :] for s in shapes]
    if any(r != rest[0] for r in rest):
        raise ValueError(
            f"{_name(layer)}(axis={layer.axis}): branches have batch and spatial "
            f"shapes {shapes}, which differ off the concatenation axis."
        )

    def blocks(name):
        mats = [getattr(fi, name) for fi in f]
        dims = [m.shape[-1] for m in mats]
        padded = []
        for i, m in enumerate(mats):
            pads = [(0, 0)] * (m.ndim - 1) + [(sum(dims[:i]), sum(dims[i + 1 :]))]
            padded.append(jnp.pad(m, pads))
        return jnp.concatenate(padded, axis=axis)

    return f[0].replace(blocks("nngp_feat"), blocks("ntk_feat"))
