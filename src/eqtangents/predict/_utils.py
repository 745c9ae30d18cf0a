"""Shared machinery of `et.predict`: output layouts, `get`, checks, return types."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import namedtuple
from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real, ScalarLike

Axes = int | Sequence[int]
Times = None | ScalarLike | Real[ArrayLike, "..."]


class Gaussian(NamedTuple):
    """A `(mean, covariance)` pair, as returned by NT's `predict` functions.

    **Fields:**

    - `mean`: shape of the outputs (with leading time axes where asked).
    - `covariance`: shape of the corresponding kernel, e.g. `(M, M)` for flat
      outputs (with the same leading time axes).

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> k_train = model.kernel(x_train, None, "nngp")
    >>> gp = et.predict.gp_inference(k_train, y_train, diag_reg=1e-4)
    >>> posterior = gp("nngp", model.kernel(x_test, x_train, "nngp"),
    ...                model.kernel(x_test, None, "nngp"))
    >>> type(posterior).__name__, posterior.mean.shape, posterior.covariance.shape
    ('Gaussian', (2, 1), (2, 2))
    >>> mean, cov = posterior                                  # it unpacks
    >>> bool(jnp.all(jnp.diag(cov) > 0))
    True
    ```
    """

    mean: Array
    covariance: Array


_GETS = ("nngp", "ntk", "ntkgp")
_GAUSSIANS = {
    names: namedtuple("Gaussians", names)
    for r in range(1, len(_GETS) + 1)
    for names in itertools.permutations(_GETS, r)
}


def parse_get(get: Any, allowed: tuple[str, ...], where: str) -> tuple[tuple, bool]:
    """Validates `get`; returns the names asked for and whether it was a string.

    `None` means `("nngp", "ntk")`, as in NT.
    """
    if get is None:
        return ("nngp", "ntk"), False
    single = isinstance(get, str)
    names = (get,) if single else tuple(get)
    if not names:
        raise ValueError(f"{where}: `get` must not be empty.")
    names = tuple(name.lower() if isinstance(name, str) else name for name in names)
    for name in names:
        if name not in allowed:
            raise ValueError(
                f"{where}: unknown `get` entry {name!r}; choose from {allowed} "
                "(a string, a tuple of them, or None for ('nngp', 'ntk'))."
            )
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: `get={get!r}` names a kernel twice.")
    return names, single


def package(out: dict, names: tuple[str, ...], single: bool):
    """One value for a string `get`, else a `Gaussians` named tuple in `get` order."""
    if single:
        return out[names[0]]
    return _GAUSSIANS[names](*(out[name] for name in names))


def kernel_attr(k: Any, name: str, what: str) -> Array:
    """`k.<name>` of a kernel container (`et.Kernel`, named tuple), or `k` itself."""
    if isinstance(k, (jax.Array, np.ndarray)):
        return jnp.asarray(k)
    value = getattr(k, name, None)
    if value is None:
        raise ValueError(
            f"`{what}` holds no {name!r} kernel: pass an object with a `.{name}` "
            f"array (an `et.Kernel` or a named tuple with `{name}`)."
        )
    return jnp.asarray(value)


# ---------------------------------------------------------------------- layout


def zipped_to_2d(k: Array) -> Array:
    """`(A1, B1, A2, B2, ...)` (NT's interleaved layout) to `(A1 A2 ..., B1 B2 ...)`."""
    if k.ndim % 2:
        raise ValueError(
            f"A kernel must have an even number of axes (pairs of output axes), "
            f"got shape {k.shape}."
        )
    if k.ndim > 2:
        k = jnp.moveaxis(
            k, tuple(range(1, k.ndim, 2)), tuple(range(k.ndim // 2, k.ndim))
        )
    half = k.ndim // 2
    return k.reshape(math.prod(k.shape[:half]), math.prod(k.shape[half:]))


def from_2d_to_zipped(m: Array, side1: tuple, side2: tuple, n_lead: int = 0) -> Array:
    """Inverse of `zipped_to_2d` on the trailing two axes, after `n_lead` axes."""
    m = m.reshape(m.shape[:n_lead] + tuple(side1) + tuple(side2))
    d = len(side1)
    if d > 1:
        first = tuple(range(n_lead + d, n_lead + 2 * d))
        m = jnp.moveaxis(m, first, tuple(range(n_lead + 1, n_lead + 2 * d, 2)))
    return m


@dataclasses.dataclass(frozen=True)
class OutputLayout:
    """Which axes of the outputs the kernels trace over (NT's `trace_axes`).

    The outputs `f(x)` of shape `(N, *rest)` split into *side* axes (the batch
    axis and every axis not in `trace_axes`) and *trace* axes. Kernels carry
    the side axes twice, interleaved: `(N1, N2, D1, D1', ...)`, and act as
    $\\Theta \\otimes I$ on the trace axes. Internally outputs are flattened to
    `(prod(side), prod(trace))` and kernels to 2-D matrices.
    """

    ndim: int
    trace_axes: tuple[int, ...]
    trace_shape: tuple[int, ...]

    @staticmethod
    def create(y_shape: tuple, trace_axes: Axes, where: str) -> OutputLayout:
        ndim = len(y_shape)
        if ndim == 0:
            raise ValueError(f"{where}: `y_train` needs a batch axis, got a scalar.")
        axes = (trace_axes,) if isinstance(trace_axes, int) else tuple(trace_axes)
        canonical = []
        for a in axes:
            if not -ndim <= a < ndim:
                raise ValueError(
                    f"{where}: trace axis {a} is out of range for `y_train` of "
                    f"shape {y_shape}."
                )
            canonical.append(a % ndim)
        if len(set(canonical)) != len(canonical):
            raise ValueError(f"{where}: `trace_axes={trace_axes}` repeats an axis.")
        if 0 in canonical:
            raise ValueError(
                f"{where}: `trace_axes={trace_axes}` includes the batch axis 0 of "
                f"`y_train` (shape {y_shape}). Give targets a trailing output axis, "
                "e.g. `y[:, None]`, or pass `trace_axes=()`."
            )
        canonical = tuple(sorted(canonical))
        return OutputLayout(ndim, canonical, tuple(y_shape[a] for a in canonical))

    @property
    def trace_size(self) -> int:
        return math.prod(self.trace_shape)

    def side_shape(self, shape: tuple) -> tuple:
        return tuple(s for i, s in enumerate(shape) if i not in self.trace_axes)

    def full_shape(self, side: tuple) -> tuple:
        """The output shape with side axes `side` and this layout's trace axes."""
        shape, sides, traces = [], iter(side), iter(self.trace_shape)
        for i in range(self.ndim):
            shape.append(next(traces) if i in self.trace_axes else next(sides))
        return tuple(shape)

    def outputs_to_2d(self, f: Array) -> Array:
        n_trace = len(self.trace_axes)
        f = jnp.moveaxis(
            f, self.trace_axes, tuple(range(self.ndim - n_trace, self.ndim))
        )
        return f.reshape(-1, self.trace_size)

    def outputs_from_2d(self, f: Array, side: tuple, n_lead: int = 0) -> Array:
        """`(*lead, prod(side), trace)` back to `(*lead, *outputs)`."""
        lead = f.shape[:n_lead]
        f = f.reshape(lead + tuple(side) + self.trace_shape)
        n_trace = len(self.trace_axes)
        end = n_lead + self.ndim
        return jnp.moveaxis(
            f,
            tuple(range(end - n_trace, end)),
            tuple(n_lead + a for a in self.trace_axes),
        )

    def kernel_side_shapes(self, shape: tuple, name: str, where: str) -> tuple:
        """Validates a kernel's shape; returns the side shapes of its two batches."""
        n_side = self.ndim - len(self.trace_axes)
        if len(shape) != 2 * n_side:
            raise ValueError(
                f"{where}: `{name}` has shape {tuple(shape)}, but outputs of "
                f"{self.ndim} axes with trace_axes={self.trace_axes} need a kernel "
                f"of {2 * n_side} axes (pairs of the non-traced output axes, "
                "interleaved). Pass the `trace_axes` the kernel was computed with "
                "(for channels-first spatial outputs `(N, C, H, W)` with a kernel "
                "`(N, N, H, H, W, W)` that is `trace_axes=(1,)`)."
            )
        return tuple(shape[0::2]), tuple(shape[1::2])


# ---------------------------------------------------------------------- checks


def value_check(x: Any, bad: Array, message: str) -> Any:
    """`ValueError` when `bad` is concrete and true; `eqx.error_if` when traced.

    `x` may be any pytree; the check is attached to its arrays.
    """
    try:
        concrete_bad = bool(bad)
    except jax.errors.ConcretizationTypeError:
        dynamic, static = eqx.partition(x, eqx.is_array)
        return eqx.combine(eqx.error_if(dynamic, bad, message), static)
    if concrete_bad:
        raise ValueError(message)
    return x


def eps(dtype) -> float:
    return float(jnp.finfo(dtype).eps)


def kernel_defects(k2: Float[Array, "p p"]) -> tuple[Array, Array]:
    """Inside a builder: raises on non-finite entries; flags asymmetry.

    Returns `(k2, asymmetric)`; pass the flag to `check_symmetric` outside.
    """
    k2 = eqx.error_if(
        k2,
        ~jnp.all(jnp.isfinite(k2)),
        "et.predict: a train-train kernel contains NaN or infinite entries.",
    )
    scale = jnp.max(jnp.abs(k2))
    asymmetry = jnp.max(jnp.abs(k2 - k2.T))
    return k2, asymmetry > np.sqrt(eps(k2.dtype)) * scale


def check_symmetric(x: Any, asymmetric: Array, name: str, where: str) -> Any:
    """`ValueError` (`eqx.error_if` when traced) for an asymmetric kernel."""
    return value_check(
        x,
        asymmetric,
        f"{where}: `{name}` is not symmetric (max |K - K^T| exceeds "
        "sqrt(eps) max |K|). A train-train kernel must be computed with "
        "`x2=None` (or `x2=x_train`) and the same `trace_axes`.",
    )


def as_kernel(k: Any) -> Array:
    k = jnp.asarray(k)
    if not jnp.issubdtype(k.dtype, jnp.floating):
        k = k.astype(jnp.result_type(float))
    return k


def check_train_kernel_shape(
    layout: OutputLayout, k: Array, y_shape: tuple, name: str, where: str
) -> None:
    side = layout.side_shape(y_shape)
    side1, side2 = layout.kernel_side_shapes(k.shape, name, where)
    if side1 != side or side2 != side:
        raise ValueError(
            f"{where}: `{name}` has shape {k.shape} but `y_train` {y_shape} with "
            f"trace_axes={layout.trace_axes} needs a kernel over {side} on both "
            "sides."
        )


def check_outputs_shape(f: Any, shape: tuple, name: str, where: str) -> None:
    f_shape = np.shape(f)
    try:
        ok = np.broadcast_shapes(f_shape, shape) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{where}: `{name}` has shape {f_shape}, which does not broadcast to "
            f"the expected outputs {tuple(shape)}."
        )


def check_no_time_none(t: Times, where: str) -> None:
    if t is None:
        raise ValueError(
            f"{where}: `t=None` (infinite time) is not available here; pass finite "
            "times."
        )


def as_times(t: Times, dtype, where: str) -> Array:
    """Times as an array of `dtype`; `ValueError` (or `error_if`) if negative."""
    message = f"{where}: times `t` must be >= 0."
    try:
        concrete = np.asarray(t)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        t = jnp.asarray(t)
        if not jnp.issubdtype(t.dtype, jnp.number):
            raise ValueError(
                f"{where}: `t` must be real, got dtype {t.dtype}."
            ) from None
        t = t.astype(dtype)
        return eqx.error_if(t, jnp.any(t < 0), message)
    if concrete.dtype.kind not in "iuf":
        raise ValueError(f"{where}: `t` must be real, got dtype {concrete.dtype}.")
    if np.any(concrete < 0):
        raise ValueError(message)
    return jnp.asarray(concrete, dtype)
