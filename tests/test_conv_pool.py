"""Conv, AvgPool, SumPool, GlobalAvgPool, GlobalSumPool and Flatten.

Checked against Neural Tangents 0.6.5 reference kernels, against Monte Carlo
estimates from random initialisations of finite networks built from the same
layers, against `jax.lax`'s own padding and pooling for the forward passes, and
full-vs-diagonal spatial layouts against each other.
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
from ._reference import (
    build,
    load_arrays,
    load_cases,
    missing_classes,
    to_channels_first,
)

# ---------------------------------------------------------------- references

REFERENCE_IDS = [
    f"conv2d_{p}_{kind}" for p in ("valid", "same", "circular")
    for kind in ("ntk_flatten", "standard_flatten", "gap")
] + ["conv2d_strided_sumpool", "avgpool_valid", "avgpool_same",
      "conv1d_seq"]  # fmt: skip
_CASES = {c["id"]: c for c in load_cases()}


def _run(fn, *args, optimise=False):
    """`fn(*args)` under `jax.jit`, by default compiled with XLA's backend
    optimisations off: kernels of small test inputs compile about twice as fast
    that way, and their run time does not matter."""
    dynamic, static = eqx.partition(args, eqx.is_array)
    jitted = jax.jit(lambda d: fn(*eqx.combine(d, static)))
    options = None if optimise else {"xla_backend_optimization_level": 0}
    return jitted.lower(dynamic).compile(compiler_options=options)(dynamic)


def _jit_kernel(model, x1, x2, get, diagonal_spatial=False):
    return _run(
        lambda m, a, b: m.kernel(a, b, get, diagonal_spatial=diagonal_spatial),
        model,
        x1,
        x2,
    )


@pytest.fixture(scope="module")
def reference_results():
    """Our kernels for every reference case, computed in one compilation."""
    runnable = [i for i in REFERENCE_IDS if not missing_classes(_CASES[i]["spec"])]
    models, inputs, data = [], [], {}
    for case_id in runnable:
        data[case_id] = load_arrays(case_id)
        x1 = to_channels_first(data[case_id]["x1"])
        x2 = None
        if not bool(data[case_id]["x2_is_none"]):
            x2 = to_channels_first(data[case_id]["x2"])
        models.append(build(_CASES[case_id]["spec"], tuple(x1.shape[1:]))[0])
        inputs.append((x1, x2))

    def all_kernels(models, inputs):
        return [m.kernel(a, b, ("nngp", "ntk")) for m, (a, b) in zip(models, inputs)]

    ours = dict(zip(runnable, _run(all_kernels, models, inputs)))
    return ours, data


@pytest.mark.parametrize("case_id", REFERENCE_IDS)
def test_reference_kernels(case_id, reference_results):
    ours, data = reference_results
    if case_id not in ours:
        pytest.skip(f"needs {missing_classes(_CASES[case_id]['spec'])}")
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(
            getattr(ours[case_id], name),
            data[case_id][name],
            rtol=1e-6,
            atol=1e-9,
            err_msg=name,
        )


# --------------------------------------------------------------- Monte Carlo
#
# Every network below has one hidden nonlinearity: a random Conv on the inputs,
# then Relu, then the layers under test. Its outputs' covariance, averaged over
# output channels and initialisations, is then an unbiased estimate of the NNGP
# at any width, so what is left is sampling error, which falls with the width.
# Several layers under test share one network through FanOut/Parallel, so that
# one compilation serves them all.


def _interleave(est, n_spatial):
    """(N1, N2, *S, *S') -> (N1, N2, S_1, S_1', S_2, S_2', ...)."""
    perm = [0, 1] + [a for i in range(n_spatial) for a in (2 + i, 2 + n_spatial + i)]
    return jnp.transpose(est, perm)


def _empirical_nngp(f1, f2):
    """Mean over output units of f1[n, c, *s] f2[m, c, *s'], in the kernel layout."""
    n_spatial = f1.ndim - 2
    p1 = f1.reshape(f1.shape[:2] + (-1,))
    p2 = f2.reshape(f2.shape[:2] + (-1,))
    est = jnp.einsum("ncp,mcq->nmpq", p1, p2) / f1.shape[1]
    est = est.reshape(est.shape[:2] + f1.shape[2:] + f2.shape[2:])
    return _interleave(est, n_spatial)


def monte_carlo_nngp(model, x1, x2, key, n_samples, optimise=False):
    """Mean and standard error over initialisations of the empirical NNGP of
    each output of `model` (a tuple of outputs gives a tuple of estimates)."""
    shape, n1 = tuple(x1.shape[1:]), x1.shape[0]

    def one(k):
        net = model.init(k, shape)
        out = jax.vmap(net)(jnp.concatenate([x1, x2]))
        return jax.tree.map(lambda f: _empirical_nngp(f[:n1], f[n1:]), out)

    def moments(keys):
        est = jax.lax.map(one, keys)
        mean = jax.tree.map(lambda e: e.mean(0), est)
        se = jax.tree.map(lambda e: e.std(0) / jnp.sqrt(n_samples), est)
        return mean, se

    return _run(moments, jax.random.split(key, n_samples), optimise=optimise)


def _errors(exact, mean, se):
    """Max z-score, and the RMS error and RMS standard error relative to the
    kernel's RMS."""
    assert mean.shape == exact.shape
    z = float(jnp.max(jnp.abs(mean - exact) / jnp.maximum(se, 1e-12 * jnp.max(se))))
    scale = jnp.sqrt(jnp.mean(exact**2))
    rel = float(jnp.sqrt(jnp.mean((mean - exact) ** 2)) / scale)
    rel_se = float(jnp.sqrt(jnp.mean(se**2)) / scale)
    return z, rel, rel_se


def _mc_errors(model, x1, x2, n_samples=128, seed=0, optimise=False):
    """`_errors` for each output of `model`, analytic kernel vs Monte Carlo."""
    k = kernel_from_inputs(x1, x2, diagonal_spatial=False, compute_ntk=False)
    exact = _run(lambda m, k: m.propagate(k), model, k)
    exact = [e.nngp for e in exact] if isinstance(exact, tuple) else [exact.nngp]
    # rbg keys compile much faster than threefry on CPU; quality is ample here.
    key = jax.random.key(seed, impl="rbg")
    mean, se = monte_carlo_nngp(model, x1, x2, key, n_samples, optimise)
    if not isinstance(mean, tuple):
        mean, se = (mean,), (se,)
    return [_errors(e, m, s) for e, m, s in zip(exact, mean, se)]


def _inputs(shape, n1=2, n2=3, seed=1):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.standard_normal((n1,) + shape)),
        jnp.asarray(rng.standard_normal((n2,) + shape)),
    )


def _net_2d(width, first_param, params):
    """A random Conv and a Relu, then every 2-D layer under test in parallel;
    `params` gives the parameterizations of the Conv and Dense branches."""

    def conv(padding, param):
        return et.Conv(width, (3, 2), stride=(2, 1), dilation=(1, 2), padding=padding,
                       W_std=0.9, b_std=0.4, parameterization=param)  # fmt: skip

    branches = {
        "conv_valid": conv("VALID", params[0]),
        "conv_same": conv("SAME", params[1]),
        "conv_circular": conv("CIRCULAR", params[2]),
        "avgpool": et.AvgPool((3, 2), stride=(2, 1), padding="SAME"),
        "avgpool_normalize_edges": et.AvgPool(
            (3, 2), stride=(2, 1), padding="SAME", normalize_edges=True
        ),
        "sumpool_circular": et.SumPool((2, 3), padding="CIRCULAR"),
        "global_avg_pool": et.GlobalAvgPool(),
        "global_sum_pool": et.GlobalSumPool(),
        "flatten_dense": et.Serial(
            et.Flatten(),
            et.Dense(2 * width, W_std=1.1, b_std=0.2, parameterization=params[3]),
        ),
    }
    model = et.Serial(
        et.Conv(width, (3, 3), padding="SAME", W_std=1.4, b_std=0.3,
                parameterization=first_param),
        et.Relu(),
        et.FanOut(len(branches)),
        et.Parallel(*branches.values()),
    )  # fmt: skip
    return list(branches), model


def _check(names, errors):
    """Each estimate agrees within sampling error, and that error is small."""
    report = {n: tuple(round(v, 4) for v in e) for n, e in zip(names, errors)}
    for name, (z, rel, rel_se) in report.items():
        assert z < 6.0, (name, report)
        assert rel < 3 * rel_se, (name, report)
        assert rel_se < 0.06, (name, report)  # the estimate is informative
    return report


def test_monte_carlo_nngp_2d():
    """Conv (each padding, with stride and dilation), AvgPool (both edge
    normalizations), SumPool, GlobalAvgPool, GlobalSumPool and Flatten (+Dense),
    with both parameterizations mixed in one network."""
    names, model = _net_2d(32, "standard", ("ntk", "standard", "ntk", "ntk"))
    x1, x2 = _inputs((2, 6, 5))
    _check(names, _mc_errors(model, x1, x2))


@pytest.mark.slow
@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_monte_carlo_nngp_2d_each_parameterization(param):
    names, model = _net_2d(32, param, (param,) * 4)
    x1, x2 = _inputs((2, 6, 5))
    _check(names, _mc_errors(model, x1, x2, n_samples=256))


def test_monte_carlo_nngp_1d_error_shrinks_with_width():
    """1-D Conv with stride and dilation, the two layers in different
    parameterizations; the sampling error falls like 1/sqrt(width)."""
    x1, x2 = _inputs((2, 7))

    def model(width):
        return et.Serial(
            et.Conv(width, 3, padding="SAME", W_std=1.4, b_std=0.3),
            et.Relu(),
            et.Conv(width, 2, stride=2, dilation=2, W_std=1.2, b_std=0.2,
                    parameterization="standard"),
        )  # fmt: skip

    wide = _check(["conv1d"], _mc_errors(model(64), x1, x2))["conv1d"]
    ((z, narrow, _),) = _mc_errors(model(4), x1, x2, seed=3)
    assert z < 6.0
    # Expect a factor 4 from 4 to 64 channels.
    assert wide[1] < narrow / 2, (narrow, wide)


def test_monte_carlo_nngp_3d():
    x1, x2 = _inputs((2, 3, 3, 3), n1=1, n2=2)
    model = et.Serial(
        et.Conv(64, (2, 2, 2), padding="CIRCULAR", W_std=1.4, b_std=0.3,
                parameterization="standard"),
        et.Relu(),
        et.Conv(64, 2, padding="SAME", W_std=1.1),
    )  # fmt: skip
    # Many multiply-adds per sample: here XLA's optimisations pay for themselves.
    _check(["conv3d"], _mc_errors(model, x1, x2, optimise=True))


@pytest.mark.slow
def test_monte_carlo_ntk_after_flatten_standard():
    """The standard-parameterization NTK of a Dense after Flatten uses the
    flattened width `C * prod(spatial)` as its fan-in."""
    model = et.Serial(
        et.Conv(16, (2, 2), W_std=1.3, b_std=0.2, parameterization="standard"),
        et.Relu(),
        et.Flatten(),
        et.Dense(8, W_std=0.9, b_std=0.1, parameterization="standard"),
    )
    x1, x2 = _inputs((2, 4, 3))
    exact = model.kernel(x1, x2)
    nngp, ntk, se = finite_kernels(model, x1, x2, jax.random.key(5, impl="rbg"), 256)
    assert float(jnp.max(jnp.abs(nngp - exact.nngp) / se)) < 6.0
    np.testing.assert_allclose(ntk, exact.ntk, rtol=0.05)


# --------------------------------------------------- layouts and forward passes


def _deep_conv(param="ntk", nonlinear=True):
    return et.Serial(
        et.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.2,
                parameterization=param),
        et.Relu() if nonlinear else et.Identity(),
        et.Conv(8, (2, 3), stride=(1, 2), dilation=(2, 1), padding="CIRCULAR",
                W_std=1.2, b_std=0.1, parameterization=param),
        et.Conv(8, 2, padding="VALID", W_std=0.8, parameterization=param),
    )  # fmt: skip


def test_diagonal_spatial_matches_full():
    """A network ending in Conv: `diagonal_spatial=True` returns the spatial
    diagonal of the full covariances, computed without them."""
    model = _deep_conv("standard", nonlinear=False)
    x1, x2 = _inputs((3, 6, 7))
    full = _jit_kernel(model, x1, x2, None)
    diag = _jit_kernel(model, x1, x2, None, diagonal_spatial=True)
    assert full.nngp.shape == (2, 3, 5, 5, 3, 3)
    assert diag.nngp.shape == (2, 3, 5, 3)
    assert diag.diagonal_spatial and not full.diagonal_spatial
    for name, batch_ndim in (("nngp", 2), ("ntk", 2), ("cov1", 1), ("cov2", 1)):
        np.testing.assert_allclose(
            spatial_diagonal(getattr(full, name), batch_ndim),
            getattr(diag, name),
            rtol=1e-12,
        )


def test_flatten_full_and_diagonal_paths_agree():
    model = et.Serial(_deep_conv(), et.Relu(), et.Flatten(), et.Dense(1, b_std=0.1))
    x1, _ = _inputs((3, 6, 7))
    auto = _jit_kernel(model, x1, None, None)  # spatial diagonal only
    k_full = kernel_from_inputs(x1, None, diagonal_spatial=False, compute_ntk=True)
    full = _run(lambda m, k: m.kernel(k), model, k_full)
    for name in ("nngp", "ntk", "cov1"):
        np.testing.assert_allclose(getattr(auto, name), getattr(full, name), rtol=1e-9)


def test_layout_requirements():
    assert et.Conv(4, 3).needs_full_spatial(False) is False
    assert et.Conv(4, 3).needs_full_spatial(True) is True
    for pool in (et.AvgPool(2), et.SumPool(2), et.GlobalAvgPool(), et.GlobalSumPool()):
        assert pool.needs_full_spatial(False) is True
    assert et.Flatten().needs_full_spatial(True) is False


def test_pooling_preserves_gaussianity_flatten_does_not():
    x1, _ = _inputs((2, 5, 4))
    base = et.Conv(4, 2, b_std=0.1)

    def kernel(*layers):  # layouts, shapes and flags only: nothing is computed
        return eqx.filter_eval_shape(et.Serial(base, *layers).kernel, x1)

    for layer in (et.AvgPool(2), et.SumPool(2), et.GlobalAvgPool(), et.GlobalSumPool()):
        assert kernel(layer).is_gaussian
    flat = kernel(et.Flatten())
    assert not flat.is_gaussian
    assert flat.shape1 == (4 * 4 * 3,) and flat.nngp.shape == (2, 2)
    assert kernel(et.GlobalAvgPool()).shape1 == (4,)
    assert kernel(et.AvgPool((2, 1), stride=(2, 1))).nngp.shape == (2, 2, 2, 2, 3, 3)
    with pytest.raises(ValueError, match="Relu needs Gaussian"):
        kernel(et.Relu(), et.Flatten(), et.Relu())


@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_conv_forward_matches_lax(padding, param):
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 7, 6)))
    conv = et.Conv(5, (3, 2), stride=(2, 1), dilation=(1, 2), padding=padding,
                   W_std=1.3, b_std=0.5, parameterization=param)  # fmt: skip
    net = conv.init(jax.random.key(4, impl="rbg"), x.shape)
    eager = et.Conv(5, (3, 2), stride=(2, 1), dilation=(1, 2), padding=padding,
                    W_std=1.3, b_std=0.5, parameterization=param,
                    in_channels=3, key=jax.random.key(4, impl="rbg"))  # fmt: skip
    np.testing.assert_array_equal(net.weight, eager.weight)
    pads = "VALID" if padding == "VALID" else "SAME"
    if padding == "CIRCULAR":  # wrap by lax's own SAME amounts, then VALID
        amounts = jax.lax.padtype_to_pads((7, 6), (3, 3), (2, 1), "SAME")
        x_in = np.pad(np.asarray(x), [(0, 0)] + list(amounts), mode="wrap")
        pads = "VALID"
    else:
        x_in = x
    ref = jax.lax.conv_general_dilated(
        x_in[None], net.weight, (2, 1), pads, rhs_dilation=(1, 2)
    )[0]
    if param == "ntk":
        ref = ref * 1.3 / np.sqrt(3 * 3 * 2) + 0.5 * net.bias[:, None, None]
    else:
        ref = ref + net.bias[:, None, None]
    y = net(x)
    assert y.shape == conv.output_shape(x.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
def test_pool_forward_matches_lax(padding):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 5)))
    window, strides = (1, 3, 2), (1, 2, 1)
    x_in, pads = x, padding
    if padding == "CIRCULAR":  # wrap by lax's own SAME amounts, then VALID
        amounts = jax.lax.padtype_to_pads((6, 5), (3, 2), (2, 1), "SAME")
        x_in = jnp.asarray(np.pad(np.asarray(x), [(0, 0)] + amounts, mode="wrap"))
        pads = "VALID"

    def reduce(v):
        return jax.lax.reduce_window(v, 0.0, jax.lax.add, window, strides, pads)

    total = reduce(x_in)
    counts = reduce(jnp.ones_like(x_in))
    kwargs = dict(kernel_size=(3, 2), stride=(2, 1), padding=padding)
    np.testing.assert_allclose(et.SumPool(**kwargs)(x), total, rtol=1e-12)
    np.testing.assert_allclose(et.AvgPool(**kwargs)(x), total / 6, rtol=1e-12)
    np.testing.assert_allclose(
        et.AvgPool(**kwargs, normalize_edges=True)(x), total / counts, rtol=1e-12
    )
    assert et.AvgPool(**kwargs).output_shape(x.shape) == total.shape
    np.testing.assert_allclose(et.GlobalAvgPool()(x), x.mean((1, 2)), rtol=1e-12)
    np.testing.assert_allclose(et.GlobalSumPool()(x), x.sum((1, 2)), rtol=1e-12)
    np.testing.assert_array_equal(et.Flatten()(x), x.reshape(-1))
    assert et.AvgPool(2).output_shape((3, 6, 5)) == (3, 5, 4)  # stride 1 default


def test_eager_jit_grad_and_float32():
    model = et.Serial(
        et.Conv(4, (2, 2), padding="SAME", W_std=jnp.asarray(1.3), b_std=0.1),
        et.AvgPool(2, padding="SAME"),
        et.Conv(4, 2, padding="CIRCULAR", b_std=0.2, parameterization="standard"),
        et.GlobalAvgPool(),
        et.Dense(1),
    )
    x1, x2 = _inputs((2, 4, 3))
    small = et.Serial(et.Conv(3, 2, b_std=0.1), et.SumPool(2))
    np.testing.assert_allclose(
        small.kernel(x1, x2, get="ntk"), _jit_kernel(small, x1, x2, "ntk"), rtol=1e-12
    )
    exact = _jit_kernel(model, x1, x2, "ntk")
    low = _jit_kernel(model, x1.astype(jnp.float32), x2.astype(jnp.float32), "ntk")
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, exact, rtol=1e-4)

    @eqx.filter_jit
    def total(m):
        return jnp.sum(m.kernel(x1, x2, get="nngp"))

    grad = _run(eqx.filter_grad(total), model).layers[0].W_std
    eps = 1e-6

    def at(w):
        return eqx.tree_at(lambda m: m.layers[0].W_std, model, jnp.asarray(w))

    fd = (total(at(1.3 + eps)) - total(at(1.3 - eps))) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


# ------------------------------------------------------------------ errors


def test_errors():
    x = jnp.ones((2, 3, 4, 4))
    with pytest.raises(ValueError, match="Flatten"):
        et.Serial(et.Conv(4, (3, 3)), et.Relu(), et.Dense(1)).kernel(x)
    with pytest.raises(ValueError, match="VALID"):
        et.Conv(4, (5, 5)).kernel(x)
    with pytest.raises(ValueError, match="VALID"):
        et.AvgPool((1, 5)).output_shape((3, 4, 4))
    with pytest.raises(ValueError, match="spatial dimension"):
        et.Conv(4, (3, 3)).kernel(jnp.ones((2, 3, 8)))
    with pytest.raises(ValueError, match="spatial dimension"):
        et.SumPool((2, 2, 2)).output_shape((3, 4, 4))
    with pytest.raises(ValueError, match="spatial axis"):
        et.Conv(4, 3).output_shape((3,))
    with pytest.raises(ValueError, match="init"):
        et.Conv(4, (3, 3))(x[0])
    with pytest.raises(ValueError, match="tuple"):
        et.Conv(4, 3, in_channels=3, key=jax.random.key(0, impl="rbg"))
    with pytest.raises(ValueError, match="padding"):
        et.Conv(4, 3, padding="FULL")
    with pytest.raises(ValueError, match="kernel_size"):
        et.AvgPool(0)
    with pytest.raises(ValueError, match="full spatial"):
        diag = kernel_from_inputs(x, None, diagonal_spatial=True, compute_ntk=False)
        et.AvgPool(2).kernel(diag)
    conv = et.Conv(4, (2, 2), in_channels=3, key=jax.random.key(0, impl="rbg"))
    with pytest.raises(ValueError, match="weights were drawn for inputs of 3 channels"):
        conv(jnp.ones((5, 4, 4)))
