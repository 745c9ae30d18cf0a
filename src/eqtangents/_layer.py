"""`AbstractLayer`: the contract every layer follows, and the `kernel` entry point."""

from __future__ import annotations

import abc
import functools
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, Float, PRNGKeyArray

from . import _checks
from ._kernel import Get, Kernel, kernel_from_inputs, parse_get, select
from ._mask import from_constant
from ._mask import propagate as propagate_masked

Shape = tuple[int, ...]
"""Per-example shape `(C, *spatial)`, channels first."""

KernelOrKernels = Kernel | tuple[Kernel, ...]
Layout = bool | tuple  # whether full spatial covariances are needed, per branch


class AbstractLayer(eqx.Module):
    """A layer of a network, finite or infinitely wide.

    Each final subclass gives, side by side:

    - `__call__(x, *, key=None)`: the forward pass on ONE example `(C, *spatial)`;
    - `init(key, input_shape)`: a copy with its weights drawn for inputs of
      per-example shape `input_shape`;
    - `output_shape(input_shape)`: shape inference, which also validates the
      input and raises a `ValueError` naming the layer and the fix;
    - `propagate(k)`: the infinite-width rule mapping the `Kernel` of the layer's
      inputs to the `Kernel` of its outputs;
    - `needs_full_spatial(output_full)`: whether the layer's input must carry
      full spatial covariances so that its output has the requested layout;
    - `output_mask(mask, input_shape)`: which output positions are padding,
      given which input positions are (`mask_constant`; see `docs/masking.md`).

    The entry point `kernel(x1, x2=None, get=None)` is shared by all layers.

    Call-time keywords other than `key` (a graph's `pattern`, say) are named in
    `call_keywords`; combinators pass each layer the ones it names and ignore
    the rest, as Neural Tangents' `apply_fn` does.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4))         # (N, C)
    >>> layer = et.Dense(3)
    >>> layer.output_shape((4,))                        # shape inference
    (3,)
    >>> net = layer.init(jax.random.key(1), (4,))        # weights for inputs (4,)
    >>> net(x[0]).shape                                  # one example
    (3,)
    >>> type(layer.kernel(x, None)).__name__             # the infinite-width rule
    'Kernel'
    >>> layer.output_shape((4, 5))
    Traceback (most recent call last):
    ...
    ValueError: ...
    ```
    """

    call_keywords: ClassVar[frozenset[str]] = frozenset()
    """Call-time keywords `__call__` takes besides `key`."""

    @abc.abstractmethod
    def __call__(self, x: Any, *, key: PRNGKeyArray | None = None) -> Any:
        """Forward pass on one example (no batch axis; use `jax.vmap`)."""

    @abc.abstractmethod
    def propagate(self, k: KernelOrKernels) -> KernelOrKernels:
        """Maps the kernel of the inputs to the kernel of the outputs."""

    @abc.abstractmethod
    def output_shape(self, input_shape: Any) -> Any:
        """Per-example output shape for a per-example `input_shape`."""

    def init(self, key: PRNGKeyArray, input_shape: Any):
        """Returns a copy of the layer with weights drawn for `input_shape`.

        Layers without weights return themselves (after validating the shape).
        """
        self.output_shape(input_shape)
        return self

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        """Whether the input needs full spatial covariances, given the output's.

        The default fits layers that act on each position separately.
        """
        return output_full

    def output_mask(self, mask: Any, input_shape: Any) -> Any:
        """Which output positions are padding, given the input's `mask`.

        `mask` marks the padded positions of ONE example, a boolean array of its
        spatial shape `(*spatial)` (`True` = ignore; a scalar for a flat
        example, a tuple for a tuple of inputs), never `None`. The same rule
        serves the finite forward pass and, vmapped over the batch, the kernel.
        The default keeps the mask, which fits layers that act on each position
        separately (activations, `Dense`, `LayerNorm`, attention, ...); layers
        that move, add or remove positions override it.
        """
        return mask

    def kernel(
        self,
        x1: Float[ArrayLike, "n1 *shape"]
        | tuple[Float[ArrayLike, "n1 ..."], ...]
        | Kernel,
        x2: Float[ArrayLike, "n2 *shape2"]
        | tuple[Float[ArrayLike, "n2 ..."], ...]
        | None = None,
        get: Get = None,
        *,
        diagonal_spatial: bool = False,
        diagonal_batch: bool = False,
        pattern: tuple | None = None,
        mask_constant: float | ArrayLike | None = None,
        batch_size: int | None = None,
    ):
        r"""NNGP and NTK kernels of the infinitely wide network at `x1`, `x2`.

        **Arguments:**

        - `x1`: a batch `(N1, C, *spatial)` (channels first), or a `Kernel` to
          continue propagating from. A network starting with `Parallel` takes a
          tuple of batches, one per branch (each its own shape, all `N1`
          examples).
        - `x2`: a batch `(N2, C, *spatial)` (a tuple like `x1`'s), or `None` for
          `x2 = x1`.
        - `get`: `None` for an `et.Kernel`; `"nngp"` or `"ntk"` for one array;
          a tuple of names for a named tuple. The NTK is only computed if asked.
        - `diagonal_spatial`: for networks whose outputs keep spatial axes,
          return only the spatial diagonal of the covariances.
        - `diagonal_batch`: with `x2=None`, only the kernel of each example with
          itself, `K(x_n, x_n)`, at the cost of `N` examples instead of `N^2`
          pairs; `nngp` and `ntk` then have shape `(N, *spatial)`.
        - `pattern`: for graph networks, `(pattern1, pattern2)`, the adjacencies
          of the examples of `x1` and of `x2` read by every `et.Aggregate` layer
          (either may be `None`: no aggregation on that side; with `x2=None`,
          give `(pattern1, None)`).
        - `mask_constant`: inputs equal to this value are padding (variable-length
          sequences, ragged images), as in Neural Tangents. A position is
          masked when all its channels equal the constant (`NaN` matches
          `NaN`); every entry equal to it is replaced by zero. The masks
          `(N, *spatial)` travel with the kernel (`Kernel.mask1`, `mask2`) and
          follow each layer's `output_mask` (strided windows keep the mask of
          each window's central tap, global pooling and `Flatten` mask an
          example only if all its positions are). After every layer each
          covariance entry that involves a masked position is zero;
          `GlobalAvgPool` averages over the unmasked positions, `LayerNorm`
          takes its statistics over them, and `GlobalSelfAttention` gives
          masked keys no weight. `AvgPool` still divides by its window size
          (masked inputs count as zeros), as in Neural Tangents. The finite
          network takes the same keyword, `net(x, mask_constant=c)`. See
          `docs/masking.md`.
        - `batch_size`: compute the kernel in tiles of `batch_size` x
          `batch_size` examples (only the upper triangle when `x2=None`) to
          bound memory: `et.batch(model.kernel, batch_size)(x1, x2, get, ...)`,
          whose further options (host memory, devices, memmap files, progress)
          `et.batch` takes.

        **Returns:**

        What `get` asks for; each kernel has shape `(N1, N2)` for flat outputs,
        `(N1, N2, S_1, S_1', ...)` for spatial outputs (`(N1, N2, S_1, ...)`
        with `diagonal_spatial`; without the `N2` axis with `diagonal_batch`).

        **Example:**

        ```python
        model = et.Serial(et.Dense(512), et.Relu(), et.Dense(1))
        nngp, ntk = model.kernel(x, None, get=("nngp", "ntk"))
        ```
        """
        names, _ = parse_get(get)
        if batch_size is not None:
            from ._batch import batch

            if pattern is not None or diagonal_batch:
                raise ValueError(
                    f"{type(self).__name__}.kernel: `batch_size` tiles the N1 x N2 "
                    "grid; it does not split `pattern` or `diagonal_batch=True` "
                    "(which already costs N examples, not N^2 pairs); leave "
                    "`batch_size` as None."
                )
            kernel_fn = functools.partial(
                type(self).kernel,
                self,
                diagonal_spatial=diagonal_spatial,
                mask_constant=mask_constant,
            )
            return batch(kernel_fn, batch_size)(x1, x2, get=get)
        if isinstance(x1, Kernel):
            if x2 is not None:
                raise ValueError(
                    "`kernel(k, x2)`: when continuing from a `Kernel`, leave `x2` "
                    "as None; the kernel already holds both batches."
                )
            if x1.diagonal_batch:
                raise ValueError(
                    "`kernel(k)`: `k` holds only the batch diagonal "
                    "(`diagonal_batch=True`), from which no layer can continue; "
                    "propagate the inputs with `diagonal_batch=True` instead."
                )
            if mask_constant is not None:
                raise ValueError(
                    "`kernel(k, mask_constant=...)`: the masks of a `Kernel` are "
                    "its fields `mask1` and `mask2`; pass `mask_constant` with the "
                    "inputs instead."
                )
            name = type(self).__name__
            return _checks.check_finite_output(name, select(_propagate(self, x1), get))
        name = type(self).__name__
        x1, x2 = _check_inputs(self, x1, x2)
        patterns = _check_pattern(self, pattern, _first(x1), _first(x2))
        shape = _shapes(x1)
        self.output_shape(shape)  # validates the architecture on this input
        diagonal = _input_layouts(shape, self.needs_full_spatial(not diagonal_spatial))
        compute_ntk = "ntk" in names
        if mask_constant is not None:
            mask_constant = jnp.asarray(mask_constant)
            if mask_constant.ndim != 0:
                raise ValueError(
                    f"{name}.kernel: `mask_constant` must be one "
                    f"number, got an array of shape {mask_constant.shape}."
                )
        _checks.check_finite_inputs(name, "x1", x1, mask_constant)
        if x2 is not None:
            _checks.check_finite_inputs(name, "x2", x2, mask_constant)
        if not isinstance(shape[0], tuple):
            _checks.warn_if_channels_last(name, shape)
        n1 = _first(x1).shape[0]
        n2 = n1 if diagonal_batch or x2 is None else _first(x2).shape[0]
        full = (
            tuple(not d for d in diagonal)
            if isinstance(diagonal, tuple)
            else (not diagonal)
        )
        _checks.check_memory(
            name, shape, n1, 1 if diagonal_batch else n2, full, compute_ntk,
            _first(x1).dtype,
        )  # fmt: skip
        if diagonal_batch:
            if x2 is not None:
                raise ValueError(
                    f"{type(self).__name__}.kernel: `diagonal_batch=True` "
                    "computes each example of `x1` with itself; leave `x2` as None."
                )
            k = _batch_diagonal(
                self, x1, patterns, diagonal, compute_ntk, mask_constant
            )
        else:
            k = _kernel_of_inputs(
                self, x1, x2, patterns, diagonal, compute_ntk, mask_constant
            )
        return _checks.check_finite_output(name, select(k, get))


@eqx.filter_jit
def _propagate(layer: AbstractLayer, k: Kernel) -> Kernel:
    return propagate_masked(layer, k)


@eqx.filter_jit
def _kernel_of_inputs(
    layer,
    x1,
    x2,
    patterns,
    diagonal_spatial: bool | tuple,
    compute_ntk: bool,
    mask_constant=None,
):
    """Input kernel and propagation, compiled as one program (eager calls would
    otherwise dispatch, and compile, every operation separately)."""

    def one(x1, x2, diagonal):
        masks = (None, None)
        if mask_constant is not None:
            mask_of = jax.vmap(from_constant, in_axes=(0, None))
            x1, mask1 = mask_of(x1, mask_constant)
            mask2 = None
            if x2 is not None:
                x2, mask2 = mask_of(x2, mask_constant)
            masks = (mask1, mask2)
        k = kernel_from_inputs(
            x1, x2, diagonal_spatial=diagonal, compute_ntk=compute_ntk
        )
        k = k.replace(mask1=masks[0], mask2=masks[1])
        if patterns is not None:
            k = k.replace(pattern1=patterns[0], pattern2=patterns[1])
        return k

    if isinstance(x1, tuple):  # one input per branch of a Parallel network
        x2s = (None,) * len(x1) if x2 is None else x2
        k = tuple(one(*args) for args in zip(x1, x2s, diagonal_spatial))
    else:
        k = one(x1, x2, diagonal_spatial)
    return propagate_masked(layer, k)


def _batch_diagonal(
    layer, x1, patterns, diagonal_spatial, compute_ntk, mask_constant=None
):
    """The kernel of each example with itself: one-example kernels, vmapped."""
    p1 = None if patterns is None else patterns[0]

    def one(x, p):
        ps = None if p is None else (p[None], p[None])
        x = jax.tree.map(lambda a: a[None], x)
        return _kernel_of_inputs(
            layer, x, None, ps, diagonal_spatial, compute_ntk, mask_constant
        )

    stacked = jax.vmap(one)(x1, p1)

    def squeeze(k: Kernel) -> Kernel:
        return k.replace(
            nngp=k.nngp[:, 0, 0],
            ntk=None if k.ntk is None else k.ntk[:, 0, 0],
            cov1=k.cov1[:, 0],
            mask1=None if k.mask1 is None else k.mask1[:, 0],
            mask2=None if k.mask2 is None else k.mask2[:, 0],
            pattern1=None if k.pattern1 is None else k.pattern1[:, 0],
            pattern2=None if k.pattern2 is None else k.pattern2[:, 0],
            diagonal_batch=True,
        )

    if isinstance(stacked, tuple):
        return tuple(squeeze(k) for k in stacked)
    return squeeze(stacked)


def _check_pattern(layer, pattern, x1, x2):
    """`(pattern1, pattern2)` as arrays (or `None`s), batch sizes checked."""
    if pattern is None:
        return None
    if not isinstance(pattern, (tuple, list)) or len(pattern) != 2:
        raise ValueError(
            f"{type(layer).__name__}.kernel: `pattern` must be a pair "
            "`(pattern1, pattern2)`, one adjacency per batch (either may be None), "
            f"got {type(pattern).__name__}."
        )
    if x2 is None and pattern[1] is not None and pattern[1] is not pattern[0]:
        raise ValueError(
            f"{type(layer).__name__}.kernel: with `x2=None` both sides are `x1`; "
            "give `pattern=(pattern1, None)`."
        )
    p1, p2 = (None if p is None else jnp.asarray(p) for p in pattern)
    if x2 is None:
        p2 = p1
    for name, p, x in (
        ("pattern1", p1, x1),
        ("pattern2", p2, x1 if x2 is None else x2),
    ):
        if p is not None and (p.ndim == 0 or p.shape[0] != x.shape[0]):
            raise ValueError(
                f"{type(layer).__name__}.kernel: `{name}` has shape {p.shape}, but "
                f"its batch has {x.shape[0]} examples; it needs one pattern per "
                "example along axis 0."
            )
    return p1, p2


def call(layer: Any, x: Any, key, keywords: dict) -> Any:
    """`layer(x, key=key, ...)` with the call-time keywords the layer takes (any
    module: the empirical kernels wrap layers in their own modules)."""
    if not keywords:
        return layer(x, key=key)
    names = getattr(layer, "call_keywords", frozenset())
    taken = {name: value for name, value in keywords.items() if name in names}
    return layer(x, key=key, **taken)


def _any(layout: Layout) -> bool:
    if isinstance(layout, tuple):
        return any(_any(item) for item in layout)
    return bool(layout)


def _check_inputs(layer, x1, x2):
    """Arrays of a float dtype, with shapes checked; a tuple of inputs (one per
    branch of a `Parallel` network) is checked input by input."""
    name = type(layer).__name__
    if isinstance(x1, (tuple, list)):
        if x2 is not None and (not isinstance(x2, (tuple, list)) or len(x2) != len(x1)):
            raise ValueError(
                f"{name}.kernel: `x1` is a tuple of {len(x1)} inputs, so `x2` must "
                "be a tuple of as many (or None)."
            )
        pairs = [
            _check_one(name, a, None if x2 is None else b)
            for a, b in zip(x1, x2 if x2 is not None else x1)
        ]
        sizes = {a.shape[0] for a, _ in pairs}
        if len(sizes) > 1:
            raise ValueError(
                f"{name}.kernel: the inputs of `x1` have batch sizes {sorted(sizes)}; "
                "every input needs one entry per example."
            )
        return tuple(a for a, _ in pairs), (
            None if x2 is None else tuple(b for _, b in pairs)
        )
    return _check_one(name, x1, x2)


def _check_one(name, x1, x2):
    x1 = jnp.asarray(x1)
    if not jnp.issubdtype(x1.dtype, jnp.inexact):
        x1 = x1.astype(jnp.result_type(float))
    if x1.ndim < 2:
        raise ValueError(
            f"{name}.kernel: `x1` has shape {x1.shape}; it needs a batch axis and "
            "a channel axis, `(N, C, *spatial)`. For one vector use `x[None]`."
        )
    if 0 in x1.shape[1:]:
        raise ValueError(
            f"{name}.kernel: `x1` has per-example shape {x1.shape[1:]}, with an "
            "empty axis; every example needs at least one channel and one "
            "position along each spatial axis."
        )
    if x2 is not None:
        x2 = jnp.asarray(x2, dtype=x1.dtype)
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(
                f"{name}.kernel: `x1` has per-example shape {x1.shape[1:]} but "
                f"`x2` has {x2.shape[1:]}; both batches must have the same trailing "
                "shape `(C, *spatial)`."
            )
    return x1, x2


def _first(x):
    """The first input of a tuple of inputs (all share the batch size)."""
    return x[0] if isinstance(x, tuple) else x


def _shapes(x):
    """Per-example shape of an input, or the tuple of shapes of several."""
    if isinstance(x, tuple):
        return tuple(tuple(a.shape[1:]) for a in x)
    return tuple(x.shape[1:])


def _input_layouts(shape, full: Layout):
    """Whether each input may carry only spatial diagonals (a tuple for a tuple
    of inputs), given the layout the network needs at its input."""
    if shape and isinstance(shape[0], tuple):
        if not isinstance(full, tuple):
            full = (full,) * len(shape)
        return tuple(not (_any(f) and len(s) > 1) for s, f in zip(shape, full))
    return not (_any(full) and len(shape) > 1)


def require_gaussian(layer: AbstractLayer, k: Kernel) -> None:
    """Raises unless the layer's input is Gaussian (follows an affine layer)."""
    if not k.is_gaussian:
        name = type(layer).__name__
        raise ValueError(
            f"{name} needs Gaussian inputs, but it follows "
            + ("the network input" if k.is_input else "a nonlinear layer")
            + ". Put an affine layer (Dense, Conv, ...) before it; for a kernel of "
            "a network that cannot be written so, use `et.monte_carlo_kernel` or "
            "`et.empirical_kernel`."
        )


def missing_weights(layer: AbstractLayer) -> ValueError:
    """The error raised when a layer without weights is called."""
    name = type(layer).__name__
    return ValueError(
        f"{name} has no weights yet: call `model.init(key, input_shape)` first "
        f"(or construct the layer eagerly with its input size and `key=`). "
        "`model.kernel(...)` needs no weights."
    )


def split_key(key: PRNGKeyArray | None, n: int) -> list:
    """Splits `key` into `n` keys, or returns `n` Nones."""
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))


def as_shape(shape: Any, layer: AbstractLayer) -> Shape:
    """Validates a single per-example shape."""
    if not (isinstance(shape, tuple) and all(isinstance(s, int) for s in shape)):
        raise ValueError(
            f"{type(layer).__name__} takes one input, but got input shape {shape!r}. "
            "Combine several branches with FanInSum, FanInProd or FanInConcat first."
        )
    return shape


def check_input_channels(layer: AbstractLayer, x, weight) -> None:
    """Refuse an input whose channel count differs from the drawn weights'."""
    if x.ndim == 0 or x.shape[0] != weight.shape[1]:
        name = type(layer).__name__
        raise ValueError(
            f"{name}: the weights were drawn for inputs of {weight.shape[1]} "
            f"channels, but this input has shape {tuple(x.shape)}. Call "
            "`model.init(key, input_shape)` with the per-example shape "
            "`(C, *spatial)` of the data (channels first)."
        )
