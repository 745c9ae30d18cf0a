"""Reads the Neural Tangents 0.6.5 reference kernels and builds their networks.

The specs use NT's names and NT's channels-last layout; this module translates
them to eqtangents layers (channels first). It lives in the tests on purpose:
the library itself knows nothing about NT's spec language.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import eqtangents as et

SHARED = Path(__file__).resolve().parents[2] / "shared"
KERNELS = SHARED / "reference" / "kernels"
PREDICT = SHARED / "reference" / "predict"

# NT op name -> eqtangents attribute it needs.
_OP_TO_CLASS = {
    "Dense": "Dense",
    "Conv": "Conv",
    "ConvTranspose": "ConvTranspose",
    "ConvLocal": "ConvLocal",
    "AvgPool": "AvgPool",
    "SumPool": "SumPool",
    "GlobalAvgPool": "GlobalAvgPool",
    "GlobalSumPool": "GlobalSumPool",
    "Flatten": "Flatten",
    "Identity": "Identity",
    "FanOut": "FanOut",
    "FanInSum": "FanInSum",
    "FanInProd": "FanInProd",
    "FanInConcat": "FanInConcat",
    "LayerNorm": "LayerNorm",
    "Dropout": "Dropout",
    "GlobalSelfAttention": "GlobalSelfAttention",
    "ImageResize": "ImageResize",
    "ElementwiseNumerical": "ElementwiseNumerical",
    "serial": "Serial",
    "parallel": "Parallel",
    "repeat": "Repeat",
}

# Ops of the foundation layer set: a case using only these must never be skipped.
FOUNDATION_OPS = {
    "serial", "parallel", "repeat", "Dense", "Conv", "AvgPool", "SumPool",
    "GlobalAvgPool", "GlobalSumPool", "Flatten", "Identity", "FanOut", "FanInSum",
    "FanInProd", "FanInConcat", "Relu", "ABRelu", "LeakyRelu", "Abs", "Erf",
    "Gelu", "Sin", "Cos", "Rbf", "Sign", "Exp", "Gaussian", "ExpNormalized",
    "Monomial", "Polynomial", "Hermite", "SigmoidLike", "Gabor",
    "RectifiedMonomial",
}  # fmt: skip


def load_cases() -> list[dict]:
    return json.loads((KERNELS / "cases.json").read_text())["cases"]


def load_arrays(case_id: str) -> dict[str, np.ndarray]:
    with np.load(KERNELS / f"{case_id}.npz") as data:
        return {name: data[name] for name in data.files}


def ops(spec: dict) -> set[str]:
    """All op names in a spec tree."""
    found = {spec["op"]}
    for child in spec.get("layers", []):
        found |= ops(child)
    if "layer" in spec:
        found |= ops(spec["layer"])
    return found


def missing_classes(spec: dict) -> list[str]:
    """eqtangents classes the spec needs that the library does not have."""
    names = {_OP_TO_CLASS.get(op, op) for op in ops(spec)}
    return sorted(name for name in names if not hasattr(et, name))


def to_channels_first(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, -1, 1)


def _axis(nt_axis: int, ndim: int) -> int:
    """NT batch-layout axis `(N, *spatial, C)` -> our per-example axis."""
    nt_axis %= ndim
    if nt_axis == 0:
        raise ValueError("axes over the batch are not translatable")
    return 0 if nt_axis == ndim - 1 else nt_axis


def build(spec: dict, shape: tuple):
    """Builds the eqtangents network of `spec` for per-example input `shape`.

    Returns `(layer, output_shape)`; `shape` is channels first.
    """
    op, args = spec["op"], dict(spec.get("args", {}))
    if op == "serial":
        layers = []
        for child in spec["layers"]:
            layer, shape = build(child, shape)
            layers.append(layer)
        return et.Serial(*layers), shape
    if op == "parallel":
        built = [build(child, s) for child, s in zip(spec["layers"], shape)]
        return et.Parallel(*(b[0] for b in built)), tuple(b[1] for b in built)
    if op == "repeat":
        inner, _ = build(spec["layer"], shape)
        layer = et.Repeat(inner, spec["n"])
        return layer, layer.output_shape(shape)
    layer = _leaf(op, args, shape)
    return layer, layer.output_shape(shape)


def _affine_args(args: dict) -> dict:
    out = {}
    for name in ("W_std", "b_std", "parameterization"):
        if name in args:
            out[name] = args[name]
    return out


def _leaf(op: str, args: dict, shape: tuple):
    ndim = len(shape) + 1 if isinstance(shape[0], int) else len(shape[0]) + 1
    if op == "Dense":
        if len(shape) > 1:  # NT's Dense on spatial inputs mixes channels pointwise
            return et.Conv(
                args["out_dim"],
                kernel_size=(1,) * (len(shape) - 1),
                **_affine_args(args),
            )
        return et.Dense(args["out_dim"], **_affine_args(args))
    if op in ("Conv", "ConvTranspose", "ConvLocal"):
        kwargs = dict(kernel_size=tuple(args["filter_shape"]), **_affine_args(args))
        if "strides" in args:
            kwargs["stride"] = tuple(args["strides"])
        if "padding" in args:
            kwargs["padding"] = args["padding"]
        return getattr(et, op)(args["out_chan"], **kwargs)
    if op in ("AvgPool", "SumPool"):
        kwargs = dict(kernel_size=tuple(args["window_shape"]))
        if args.get("strides") is not None:
            kwargs["stride"] = tuple(args["strides"])
        for name in ("padding", "normalize_edges"):
            if name in args:
                kwargs[name] = args[name]
        return getattr(et, op)(**kwargs)
    if op == "FanInConcat":
        return et.FanInConcat(axis=_axis(args.get("axis", -1), ndim))
    if op == "LayerNorm":
        axis = args.get("axis", -1)
        axes = [axis] if isinstance(axis, int) else list(axis)
        return et.LayerNorm(axis=tuple(_axis(a, ndim) for a in axes))
    if op == "ElementwiseNumerical":
        import jax
        import jax.numpy as jnp

        fns = {
            "tanh": jnp.tanh,
            "sin": jnp.sin,
            "softplus": jax.nn.softplus,
            "swish": jax.nn.swish,
            "relu": jax.nn.relu,
            "erf": jax.scipy.special.erf,
        }
        return et.ElementwiseNumerical(fns[args["fn"]], deg=args["deg"])
    if op == "ImageResize":
        # NT's `shape` covers its batch layout `(N, *spatial, C)`; ours is per
        # example `(C, *spatial)`: drop the batch entry, move channels first.
        import jax
        import jax.numpy as jnp

        nt_shape = [int(s) for s in args.pop("shape")]
        layer = et.ImageResize(shape=(nt_shape[-1], *nt_shape[1:-1]), **args)
        if nt_shape[0] == -1:
            return layer

        class _ResizeBatch(et.AbstractLayer):
            """NT also resizes the batch axis when `shape[0] != -1` (the stored
            case does: 3 -> 1 and 2 -> 1 examples). Its nngp/ntk are then the same
            interpolation over examples of the cross-covariances, which this
            applies; the per-example covariances of mixed examples would need
            covariances between examples of one batch, which a `Kernel` does not
            hold, so they are left as NaN (no later layer of the case reads them
            into nngp/ntk)."""

            size: int

            def __call__(self, x, *, key=None):
                raise ValueError("a batch resize has no per-example forward pass")

            def output_shape(self, input_shape):
                return input_shape

            def propagate(self, k):
                def resize(cov):
                    return jax.image.resize(
                        cov, (self.size, self.size) + cov.shape[2:], **args
                    )

                def unknown(cov):
                    return jnp.full((self.size,) + cov.shape[1:], jnp.nan, cov.dtype)

                return k.replace(
                    nngp=resize(k.nngp),
                    ntk=None if k.ntk is None else resize(k.ntk),
                    cov1=unknown(k.cov1),
                    cov2=None if k.cov2 is None else unknown(k.cov2),
                )

        return et.Serial(layer, _ResizeBatch(nt_shape[0]))
    if op == "GlobalSelfAttention":
        # NT's widths per head -> Equinox-style structural names.
        names = {
            "n_chan_out": "out_channels",
            "n_chan_key": "key_channels",
            "n_chan_val": "value_channels",
        }
        return et.GlobalSelfAttention(**{names.get(n, n): v for n, v in args.items()})
    cls = getattr(et, _OP_TO_CLASS.get(op, op))
    return cls(**args)


def kernels(case: dict, get=("nngp", "ntk")):
    """Computes our kernels on the stored inputs; returns `(ours, reference)`."""
    data = load_arrays(case["id"])
    x1 = to_channels_first(data["x1"])
    x2 = None if bool(data["x2_is_none"]) else to_channels_first(data["x2"])
    model, _ = build(case["spec"], tuple(x1.shape[1:]))
    return model.kernel(x1, x2, get=get), data
