"""ConvTranspose and ConvLocal.

Checked against the Neural Tangents 0.6.5 reference kernels (also through the
full spatial layout), against Monte Carlo estimates from finite networks built
from the same layers, the forward passes against `jax.lax.conv_transpose` and an
explicit per-position contraction, the two spatial layouts against each other,
`jax.jit`/`jax.grad`, and the structural errors.

Every Monte Carlo network has one hidden nonlinearity (a Relu after the first
layer under test), so its empirical NNGP and NTK, averaged over initialisations,
are unbiased estimates of the infinite-width kernels at any width.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqtangents as et
from eqtangents._kernel import kernel_from_inputs, spatial_diagonal

from ._finite import finite_kernels
from ._reference import build, load_arrays, load_cases, to_channels_first
from .test_conv_pool import _mc_errors, _run

_CASES = {c["id"]: c for c in load_cases()}
_KEY = jax.random.key(0, impl="rbg")


def _inputs(shape, n1=2, n2=3, seed=1):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.standard_normal((n1,) + shape)),
        jnp.asarray(rng.standard_normal((n2,) + shape)),
    )


# ---------------------------------------------------------------- references


@pytest.mark.parametrize("case_id", ["conv_transpose", "conv_local"])
@pytest.mark.parametrize("layout", ["auto", "full"])
def test_reference_kernels(case_id, layout):
    """NT's kernels, from the diagonal layout the network needs and from full
    spatial covariances (which both layers then keep)."""
    data = load_arrays(case_id)
    x1 = jnp.asarray(to_channels_first(data["x1"]))
    x2 = jnp.asarray(to_channels_first(data["x2"]))
    assert not bool(data["x2_is_none"])
    model, _ = build(_CASES[case_id]["spec"], tuple(x1.shape[1:]))
    if layout == "auto":
        ours = _run(lambda m, a, b: m.kernel(a, b), model, x1, x2)
    else:
        k = kernel_from_inputs(x1, x2, diagonal_spatial=False, compute_ntk=True)
        ours = _run(lambda m, k: m.kernel(k), model, k)
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(
            getattr(ours, name), data[name], rtol=1e-6, atol=1e-9, err_msg=name
        )


# --------------------------------------------------------------- Monte Carlo


def _rel(estimate, exact):
    """RMS error relative to the RMS of the exact kernel."""
    return float(jnp.sqrt(jnp.mean((estimate - exact) ** 2) / jnp.mean(exact**2)))


def _stacked(first, second, out):
    return et.Serial(first, et.Relu(), second, et.Flatten(), et.Dense(out, W_std=0.9,
                     b_std=0.1))  # fmt: skip


@pytest.mark.parametrize("order", ["transpose_first", "local_first"])
def test_monte_carlo_nngp_and_ntk_2d(order):
    """NNGP and NTK of a network of both layers, each on the inputs and after a
    Relu, in different parameterizations, with strides and paddings."""
    width = 8
    transpose = et.ConvTranspose(
        width,
        (3, 2),
        stride=(2, 1),
        padding="VALID",
        W_std=1.3,
        b_std=0.3,
        parameterization="standard",
    )
    local = et.ConvLocal(width, (2, 3), stride=(1, 2), padding="SAME", W_std=1.1,
                         b_std=0.2)  # fmt: skip
    layers = (transpose, local) if order == "transpose_first" else (local, transpose)
    model = _stacked(*layers, width)
    x1, x2 = _inputs((2, 3, 4), n1=2, n2=2)
    exact = model.kernel(x1, x2)
    nngp, ntk, se = finite_kernels(model, x1, x2, _KEY, 64)
    rel_se = _rel(exact.nngp + se, exact.nngp)
    z = float(jnp.max(jnp.abs(nngp - exact.nngp) / se))
    report = (z, _rel(nngp, exact.nngp), rel_se, _rel(ntk, exact.ntk))
    assert z < 5.0, report
    assert report[1] < 3 * rel_se and rel_se < 0.15, report
    assert report[3] < 0.08, report


def test_monte_carlo_1d_error_shrinks_with_width():
    """1-D inputs, circular paddings; the sampling error falls like
    1/sqrt(width) and the estimates stay within it."""
    x1, x2 = _inputs((2, 5), n1=2, n2=2)

    def model(width):
        return _stacked(
            et.ConvTranspose(width, 3, stride=2, padding="CIRCULAR", W_std=1.4,
                             b_std=0.3),
            et.ConvLocal(width, 2, stride=2, padding="CIRCULAR", W_std=1.2,
                         b_std=0.1, parameterization="standard"),
            width,
        )  # fmt: skip

    errors = {}
    for width, seed in ((2, 1), (32, 2)):
        exact = model(width).kernel(x1, x2, get="nngp")
        key = jax.random.key(seed, impl="rbg")
        nngp, _, se = finite_kernels(model(width), x1, x2, key, 128, ntk=False)
        assert float(jnp.max(jnp.abs(nngp - exact) / se)) < 5.0
        errors[width] = (_rel(nngp, exact), _rel(exact + se, exact))
        assert errors[width][0] < 3 * errors[width][1], errors
    # A factor 4 is expected from 2 to 32 channels.
    assert errors[32][1] < errors[2][1] / 3, errors


@pytest.mark.parametrize("layer", ["transpose", "local"])
def test_monte_carlo_full_spatial_nngp(layer):
    """Every entry of the full spatial NNGP for each padding and both
    parameterizations, including the zero covariances of ConvLocal between
    different positions (and what SumPool makes of them)."""
    width = 32
    if layer == "transpose":
        branches = {
            f"{padding}_{param}": et.ConvTranspose(
                width, (3, 2), stride=(2, 1), padding=padding, W_std=1.1,
                b_std=0.3, parameterization=param)
            for padding, param in (("VALID", "ntk"), ("SAME", "standard"),
                                   ("CIRCULAR", "ntk"))
        }  # fmt: skip
    else:
        branches = {
            f"{padding}_{param}": et.ConvLocal(
                width, (2, 3), stride=(2, 1), padding=padding, W_std=1.2,
                b_std=0.2, parameterization=param)
            for padding, param in (("VALID", "standard"), ("CIRCULAR", "ntk"))
        }  # fmt: skip
        branches["SAME_sumpool"] = et.Serial(
            et.ConvLocal(width, 2, padding="SAME", b_std=0.2), et.SumPool(2)
        )
    model = et.Serial(
        et.Conv(width, (2, 2), padding="SAME", W_std=1.4, b_std=0.3),
        et.Relu(),
        et.FanOut(len(branches)),
        et.Parallel(*branches.values()),
    )
    x1, x2 = _inputs((2, 4, 3))
    errors = _mc_errors(model, x1, x2, optimise=True)
    report = {n: tuple(round(v, 4) for v in e) for n, e in zip(branches, errors)}
    for z, rel, rel_se in errors:
        # Unshared weights average over channels only, not over positions too.
        assert z < 5.0 and rel < 3 * rel_se and rel_se < 0.15, report


# ------------------------------------------------------------ equivalences


def test_equivalences_with_conv():
    """Exact identities with `et.Conv` (checked against NT), each layer in both
    parameterizations: on the spatial diagonal ConvLocal's kernels are Conv's,
    and a stride-1 ConvTranspose with an odd filter and `"SAME"` or `"CIRCULAR"`
    padding has Conv's full kernels."""
    x1, x2 = _inputs((2, 5, 4))

    def kw(param):
        return dict(W_std=1.3, b_std=0.2, parameterization=param)

    local = et.Serial(
        et.ConvLocal(3, (3, 2), stride=(2, 1), padding="SAME", **kw("standard")),
        et.Relu(),
        et.ConvLocal(3, 2, padding="CIRCULAR", **kw("ntk")),
        et.Erf(),
        et.ConvLocal(3, (2, 1), **kw("standard")),
    )
    transpose = et.Serial(
        et.ConvTranspose(3, (3, 1), padding="SAME", **kw("ntk")),
        et.Relu(),
        et.ConvTranspose(3, 3, padding="CIRCULAR", **kw("standard")),
    )

    def as_conv(model):
        layers = [
            et.Conv(lyr.out_channels, lyr.kernel_size, lyr.stride, lyr.padding,
                    W_std=lyr.W_std, b_std=lyr.b_std,
                    parameterization=lyr.parameterization)
            if isinstance(lyr, (et.ConvLocal, et.ConvTranspose)) else lyr
            for lyr in model.layers
        ]  # fmt: skip
        return et.Serial(*layers)

    def kernels(local, transpose, a, b):
        return (
            local.kernel(a, b, diagonal_spatial=True),
            as_conv(local).kernel(a, b, diagonal_spatial=True),
            transpose.kernel(a, b),
            as_conv(transpose).kernel(a, b),
        )

    *diag, full, full_conv = _run(kernels, local, transpose, x1, x2)
    for ours, conv in (diag, (full, full_conv)):
        assert ours.nngp.shape == conv.nngp.shape
        for name in ("nngp", "ntk", "cov1", "cov2"):
            np.testing.assert_allclose(
                getattr(ours, name), getattr(conv, name), rtol=1e-12
            )


# --------------------------------------------------- layouts and forward passes


def test_layouts():
    """The diagonal layout is the spatial diagonal of the full one; ConvLocal's
    full output vanishes off the spatial diagonal."""
    x1, x2 = _inputs((2, 5, 4))
    models = (
        et.Serial(et.ConvTranspose(4, (2, 3), stride=(2, 1), padding="CIRCULAR",
                                   b_std=0.2), et.Relu(),
                  et.ConvTranspose(4, 2, padding="SAME", W_std=1.2,
                                   parameterization="standard")),
        et.Serial(et.Conv(4, 2, b_std=0.1), et.Relu(),
                  et.ConvLocal(4, (2, 3), padding="CIRCULAR", b_std=0.2,
                               parameterization="standard")),
    )  # fmt: skip

    def both(models, a, b):
        return [(m.kernel(a, b), m.kernel(a, b, diagonal_spatial=True)) for m in models]

    for full, diag in _run(both, models, x1, x2):
        assert not full.diagonal_spatial and diag.diagonal_spatial
        assert full.nngp.ndim == 6 and diag.nngp.ndim == 4
        for name, batch_ndim in (("nngp", 2), ("ntk", 2), ("cov1", 1), ("cov2", 1)):
            np.testing.assert_allclose(
                spatial_diagonal(getattr(full, name), batch_ndim),
                getattr(diag, name),
                rtol=1e-12,
            )
    h, w = full.nngp.shape[2], full.nngp.shape[4]
    off = full.nngp * (1 - jnp.eye(h)[:, :, None, None] * jnp.eye(w)[None, None])
    assert full.nngp.shape[2:] == (h, h, w, w)
    assert float(jnp.max(jnp.abs(off))) == 0.0
    assert float(jnp.min(spatial_diagonal(full.cov1, 1))) > 0.0
    assert et.ConvLocal(4, 2).needs_full_spatial(False) is False
    assert et.ConvTranspose(4, 2).needs_full_spatial(True) is True


def _transpose_reference(x, weight, strides, padding):
    """`lax.conv_transpose`; for `"CIRCULAR"` its `"VALID"` outputs are folded
    onto `n * stride` positions by a dilated window sum, then cropped."""
    dn = ("NCHW"[: x.ndim + 1], "OIHW"[: x.ndim + 1], "NCHW"[: x.ndim + 1])
    pad = "VALID" if padding == "CIRCULAR" else padding
    y = jax.lax.conv_transpose(x[None], weight, strides, pad, dimension_numbers=dn)
    y = y[0]
    if padding != "CIRCULAR":
        return y
    target = tuple(n * s for n, s in zip(x.shape[1:], strides))
    window = (1,) + tuple(-(-a // b) // 2 * 2 + 1 for a, b in zip(y.shape[1:], target))
    y = jax.lax.reduce_window(
        y, 0.0, jax.lax.add, window, (1,) * y.ndim, "SAME",
        window_dilation=(1,) + target,
    )  # fmt: skip
    crop = tuple(
        slice((a - b) // 2, (a - b) // 2 + b) for a, b in zip(y.shape[1:], target)
    )
    return y[(slice(None),) + crop]


@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
@pytest.mark.parametrize("param", ["ntk", "standard"])
@pytest.mark.parametrize("spatial", [(7,), (5, 4)])
def test_conv_transpose_forward_matches_lax(padding, param, spatial):
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3,) + spatial))
    kernel_size, stride = ((3, 2), (2, 3)) if len(spatial) == 2 else ((4,), (3,))
    kwargs = dict(padding=padding, W_std=1.3, b_std=0.5, parameterization=param)
    layer = et.ConvTranspose(5, kernel_size, stride, **kwargs)
    key = jax.random.key(4, impl="rbg")
    net = layer.init(key, x.shape)
    eager = et.ConvTranspose(5, kernel_size, stride, **kwargs, in_channels=3, key=key)
    np.testing.assert_array_equal(net.weight, eager.weight)
    ref = _transpose_reference(x, net.weight, stride, padding)
    bias = net.bias.reshape((-1,) + (1,) * len(spatial))
    if param == "ntk":
        ref = ref * 1.3 / np.sqrt(3 * np.prod(kernel_size)) + 0.5 * bias
    else:
        ref = ref + bias
    y = eqx.filter_jit(net)(x)
    assert y.shape == layer.output_shape(x.shape) == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def _local_reference(x, weight, bias, kernel_size, strides, padding, scale):
    """An explicit loop over output positions, each with its own filter."""
    x, weight = np.asarray(x), np.asarray(weight)
    n = len(kernel_size)
    if padding != "VALID":
        amounts = jax.lax.padtype_to_pads(x.shape[1:], kernel_size, strides, "SAME")
        mode = "wrap" if padding == "CIRCULAR" else "constant"
        x = np.pad(x, [(0, 0)] + list(amounts), mode=mode)
    out_spatial = weight.shape[2 + n :]
    y = np.zeros((weight.shape[0],) + out_spatial)
    for p in np.ndindex(*out_spatial):
        window = tuple(
            slice(s * i, s * i + k) for i, s, k in zip(p, strides, kernel_size)
        )
        patch = x[(slice(None),) + window]
        w = weight[(Ellipsis,) + p]
        y[(slice(None),) + p] = scale * np.tensordot(w, patch, axes=patch.ndim)
    return y + np.asarray(bias)


@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
@pytest.mark.parametrize("param", ["ntk", "standard"])
@pytest.mark.parametrize("spatial", [(7,), (5, 6)])
def test_conv_local_forward_matches_loop(padding, param, spatial):
    x = jnp.asarray(np.random.default_rng(3).standard_normal((3,) + spatial))
    kernel_size, stride = ((3, 2), (2, 3)) if len(spatial) == 2 else ((3,), (2,))
    kwargs = dict(padding=padding, W_std=1.3, b_std=0.5, parameterization=param)
    layer = et.ConvLocal(5, kernel_size, stride, **kwargs)
    key = jax.random.key(5, impl="rbg")
    net = layer.init(key, x.shape)
    eager = et.ConvLocal(5, kernel_size, stride, **kwargs, input_shape=x.shape, key=key)
    np.testing.assert_array_equal(net.weight, eager.weight)
    out = layer.output_shape(x.shape)
    assert net.weight.shape == (5, 3) + kernel_size + out[1:]
    assert net.bias.shape == out
    if param == "ntk":
        scale, bias = 1.3 / np.sqrt(3 * np.prod(kernel_size)), 0.5 * net.bias
    else:
        scale, bias = 1.0, net.bias
    ref = _local_reference(x, net.weight, bias, kernel_size, stride, padding, scale)
    y = eqx.filter_jit(net)(x)
    assert y.shape == out == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_jit_grad_and_float32():
    model = et.Serial(
        et.ConvTranspose(4, (2, 2), stride=2, padding="SAME", W_std=jnp.asarray(1.3),
                         b_std=0.1),
        et.Relu(),
        et.ConvLocal(4, 2, padding="CIRCULAR", W_std=jnp.asarray(0.9), b_std=0.2,
                     parameterization="standard"),
        et.Relu(),
        et.AvgPool(2),
        et.Flatten(),
        et.Dense(1),
    )  # fmt: skip
    x1, x2 = _inputs((2, 3, 2))
    eps, stds = 1e-6, {0: 1.3, 2: 0.9}

    def total(m):
        return jnp.sum(m.kernel(x1, x2, get="ntk"))

    def at(m, i, v):
        return eqx.tree_at(lambda m: m.layers[i].W_std, m, jnp.asarray(v))

    def under_jit(m, a, b):
        shifted = {
            i: [total(at(m, i, w + sign * eps)) for sign in (1, -1)]
            for i, w in stds.items()
        }
        return m.kernel(a, b, get="ntk"), eqx.filter_grad(total)(m), shifted

    exact, grads, shifted = _run(under_jit, model, x1, x2)
    for i in stds:
        fd = (shifted[i][0] - shifted[i][1]) / (2 * eps)
        np.testing.assert_allclose(grads.layers[i].W_std, fd, rtol=1e-6)
    low = _run(
        lambda m, a, b: m.kernel(a, b, get="ntk"),
        model,
        x1.astype(jnp.float32),
        x2.astype(jnp.float32),
    )
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, exact, rtol=1e-4)


# ------------------------------------------------------------------ errors


def test_errors():
    x = jnp.ones((2, 3, 4, 4))
    for cls in (et.ConvTranspose, et.ConvLocal):
        name = cls.__name__
        with pytest.raises(ValueError, match=f"{name}.*spatial dimension"):
            cls(4, (3, 3)).kernel(jnp.ones((2, 3, 8)))
        with pytest.raises(ValueError, match=f"{name}.*spatial axis.*Dense"):
            cls(4, 3).output_shape((3,))
        with pytest.raises(ValueError, match=f"{name} has no weights.*init"):
            cls(4, (3, 3))(x[0])
        with pytest.raises(ValueError, match=f"{name}: `padding`"):
            cls(4, 3, padding="FULL")
        with pytest.raises(ValueError, match=f"{name}: `kernel_size`"):
            cls(4, 0)
        with pytest.raises(ValueError, match=f"{name}: `out_channels`"):
            cls(0, 3)
        with pytest.raises(ValueError, match=f"{name}: `W_std` must be non-negative"):
            cls(4, 3, W_std=-1.0)
    with pytest.raises(ValueError, match="ConvTranspose: give both"):
        et.ConvTranspose(4, (2, 2), in_channels=3)
    with pytest.raises(ValueError, match="ConvTranspose.*tuple"):
        et.ConvTranspose(4, 3, in_channels=3, key=_KEY)
    conv = et.ConvTranspose(4, (2, 2), in_channels=3, key=_KEY)
    with pytest.raises(ValueError, match="ConvTranspose has weights of shape"):
        conv(jnp.ones((5, 4, 4)))
    with pytest.raises(ValueError, match="ConvLocal: give both `input_shape`"):
        et.ConvLocal(4, 2, key=_KEY)
    with pytest.raises(ValueError, match="ConvLocal.*VALID"):
        et.ConvLocal(4, (5, 5)).kernel(x)
    local = et.ConvLocal(4, 2, input_shape=(3, 4, 4), key=_KEY)
    with pytest.raises(ValueError, match="ConvLocal has weights.*call `init` again"):
        local(jnp.ones((3, 5, 4)))
