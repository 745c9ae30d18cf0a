"""Empirical NNGP/NTK: the three implementations against a plain jax.jacobian.

The reference below differentiates the whole batched output `vmap(model)(x)`
with `jax.jacobian`, contracts over every parameter, and takes traces and
diagonals with `np.trace`/`np.diagonal`: no code is shared with the library.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqtangents as et
from eqtangents._empirical import choose_implementation
from eqtangents._empirical_common import make_layout, make_problem
from eqtangents._structured import make_plan

IMPLEMENTATIONS = (
    "jacobian_contraction",
    "ntk_vector_products",
    "structured_derivatives",
    "auto",
)
RTOL = 1e-10
IMPLS = IMPLEMENTATIONS[:3]  # "auto" picks one of these (tested separately)
# XLA's backend optimisations off: these tests check numbers, and compile faster.
FAST = {"xla_backend_optimization_level": 0}


def jitted(fn, model, *args):
    """`fn(model, *args)` under `jax.jit`, the model's non-arrays static."""
    arrays, static = eqx.partition(model, eqx.is_array)
    run = jax.jit(lambda a, *xs: fn(eqx.combine(a, static), *xs), compiler_options=FAST)
    return run(arrays, *args)


def drawn(make, seed=0, fan_in=False):
    """`make()`, its weights drawn by numpy: N(0, 1), or N(0, 1/fan-in) for
    `fan_in` (Equinox's layers). Traced with `eval_shape`, so nothing compiles."""
    rng = np.random.default_rng(seed)

    def draw(leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        scale = 1.0
        if fan_in:
            scale = 1 / np.sqrt(np.prod(leaf.shape[1:])) if leaf.ndim > 1 else 0.3
        return jnp.asarray(rng.normal(size=leaf.shape) * scale, leaf.dtype)

    return jax.tree.map(draw, eqx.filter_eval_shape(make))


# ------------------------------------------------------------------ reference


def _reduce(full, ndim, trace, diagonal):
    """Trace and diagonal of the axis pairs `(i, ndim + i)`, then interleave."""
    trace = [a % ndim for a in trace]
    diagonal = [a % ndim for a in diagonal]
    axes = list(range(ndim))  # remaining pairs, by original axis
    k = full
    for axis in sorted(trace + diagonal, reverse=True):
        pos = axes.index(axis)
        n = len(axes)
        if axis in trace:
            k = np.trace(k, axis1=pos, axis2=n + pos) / full.shape[axis]
        else:
            k = np.moveaxis(np.diagonal(k, axis1=pos, axis2=n + pos), -1, 0)
        axes.remove(axis)
    # k: (diagonal axes in increasing order..., side-1 axes, side-2 axes)
    diag_sorted = sorted(diagonal)
    n = len(axes)
    order = []
    for a in range(ndim):
        if a in diagonal:
            order.append(diag_sorted.index(a))
        elif a not in trace:
            pos = axes.index(a)
            order += [len(diagonal) + pos, len(diagonal) + n + pos]
    return np.transpose(k, order)


class Reference:
    """NNGP and NTK by `jax.jacobian` of the batched outputs, contracted in numpy.

    `kernels(trace, diagonal)` pairs the outputs at `x1` and `x2` (`x2=None`:
    `x1`) like `et.empirical_kernel`.
    """

    def __init__(
        self,
        model,
        x1,
        x2=None,
        *,
        filter_spec=eqx.is_inexact_array,
        batched=None,
        key=None,
    ):
        params, rest = eqx.partition(model, filter_spec)

        def per_example(p, x):
            m = eqx.combine(p, rest)
            if key is None:
                return jax.vmap(m)(x)
            k = jax.random.split(key, len(x))
            return jax.vmap(lambda xi, ki: m(xi, key=ki))(x, k)

        f = batched or per_example
        both = jax.jit(
            lambda p, x: (f(p, x), jax.jacobian(f)(p, x)), compiler_options=FAST
        )
        y1, j1 = both(params, x1)
        y2, j2 = (y1, j1) if x2 is None else both(params, x2)
        outs1, self.treedef = jax.tree.flatten(y1)
        outs2 = jax.tree.leaves(y2)
        jac1 = self.treedef.flatten_up_to(j1)
        jac2 = self.treedef.flatten_up_to(j2)
        self.nngp, self.ntk = [], []
        for a, b, ja, jb in zip(outs1, outs2, jac1, jac2):
            pairs = zip(jax.tree.leaves(ja), jax.tree.leaves(jb))
            self.ntk.append(
                sum(
                    (
                        np.tensordot(
                            np.asarray(p),
                            np.asarray(q),
                            axes=(range(a.ndim, p.ndim),) * 2,
                        )
                        for p, q in pairs
                    ),
                    np.zeros(a.shape + b.shape),
                )
            )
            self.nngp.append(np.multiply.outer(np.asarray(a), np.asarray(b)))

    def kernels(self, trace=(1,), diagonal=()):
        def reduce(fulls):
            return jax.tree.unflatten(
                self.treedef,
                [_reduce(k, k.ndim // 2, trace, diagonal) for k in fulls],
            )

        return reduce(self.nngp), reduce(self.ntk)


def reference(model, x1, x2, trace=(1,), diagonal=(), **options):
    return Reference(model, x1, x2, **options).kernels(trace, diagonal)


def assert_close(actual, expected, rtol=RTOL):
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, (a.shape, b.shape)
        scale = np.max(np.abs(b))
        assert scale > 0
        err = np.max(np.abs(a - b)) / scale
        assert err < rtol, f"relative error {err:.3g}"


# --------------------------------------------------------------------- models


def mlp():
    return drawn(
        lambda: et.Serial(
            et.Dense(12, W_std=1.4, b_std=0.3),
            et.Relu(),
            et.Dense(9, W_std=1.2, b_std=0.1, parameterization="standard"),
            et.Erf(),
            et.Dense(3, b_std=0.2),
        ).init(jax.random.PRNGKey(0), (5,))
    )


def cnn():
    return drawn(
        lambda: et.Serial(
            et.Conv(4, (3, 3), padding="SAME", b_std=0.1),
            et.Relu(),
            et.AvgPool((2, 2)),
            et.Conv(3, (2, 2), stride=(2, 1), b_std=0.2, parameterization="standard"),
            et.Relu(),
            et.Flatten(),
            et.Dense(2, b_std=0.1),
        ).init(jax.random.PRNGKey(0), (2, 6, 6)),
        seed=3,
    )


class EqxCNN(eqx.Module):
    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    pool: eqx.nn.AvgPool2d
    head: eqx.nn.Linear

    def __init__(self, key):
        a, b, c = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(2, 4, 3, padding=1, key=a)
        self.conv2 = eqx.nn.Conv2d(4, 3, 2, key=b)
        self.pool = eqx.nn.AvgPool2d(2, 2)
        self.head = eqx.nn.Linear(3 * 2 * 2, 2, key=c)

    def __call__(self, x, *, key=None):
        x = self.pool(jnp.tanh(self.conv1(x)))  # (2, 6, 6) -> (4, 6, 6) -> (4, 3, 3)
        x = jax.nn.relu(self.conv2(x))  # (3, 2, 2)
        return self.head(x.reshape(-1))


def branches():
    return drawn(
        lambda: et.Serial(
            et.Dense(6, b_std=0.1),
            et.FanOut(3),
            et.Parallel(
                et.Serial(et.Relu(), et.Dense(6, W_std=1.3)),
                et.Identity(),
                et.Serial(et.Erf(), et.Dense(6, b_std=0.5)),
            ),
            et.FanInSum(),
            et.Relu(),
            et.Dense(3, b_std=0.1),
        ).init(jax.random.PRNGKey(0), (5,)),
        seed=4,
    )


class TwoHeads(eqx.Module):
    """Two outputs: logits `(3,)` and a feature map `(2, 4, 4)`."""

    conv: et.Conv
    mix: eqx.nn.Conv2d
    head: et.Dense

    def __init__(self, key):
        a, b, c = jax.random.split(key, 3)
        self.conv = et.Conv(3, (3, 3), padding="SAME", b_std=0.1, in_channels=2, key=a)
        self.mix = eqx.nn.Conv2d(3, 2, 1, key=b)
        self.head = et.Dense(3, b_std=0.2, in_features=3, key=c)

    def __call__(self, x, *, key=None):
        h = jnp.tanh(self.conv(x))
        return self.head(jnp.mean(h, axis=(1, 2))), self.mix(h)


def inputs(shape, n1=3, n2=3, seed=1):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.normal(size=(n1,) + shape)),
        jnp.asarray(rng.normal(size=(n2,) + shape)),
    )


def eqx_mlp():
    return drawn(lambda: eqx.nn.MLP(5, 3, 7, 2, key=jax.random.PRNGKey(0)), 5, True)


def eqx_cnn():
    return drawn(lambda: EqxCNN(jax.random.PRNGKey(0)), 6, True)


def two_heads():
    return drawn(lambda: TwoHeads(jax.random.PRNGKey(0)), 7)


MODELS = {
    "mlp": (mlp, (5,)),
    "cnn_pooling": (cnn, (2, 6, 6)),
    "eqx_mlp": (eqx_mlp, (5,)),
    "eqx_cnn": (eqx_cnn, (2, 6, 6)),
    "fanout_fanin": (branches, (5,)),
}


# ---------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", list(MODELS))
def test_implementations_agree_with_jacobian(name):
    """The full kernel (no trace) at `(x1, x2)`, and the batch diagonal at
    `(x1, None)`; `test_several_outputs...` covers the other axis options."""
    build, shape = MODELS[name]
    model = build()
    x1, x2 = inputs(shape)
    nngp_full, ntk_full = reference(model, x1, x2, trace=())
    _, ntk_diag = reference(model, x1, None, trace=(), diagonal=(0,))

    def kernels(model, x1, x2):
        return [
            (
                et.empirical_kernel(model, x1, x2, trace_axes=(), implementation=i),
                et.empirical_ntk(
                    model,
                    x1,
                    None,
                    trace_axes=(),
                    diagonal_axes=(0,),
                    implementation=i,
                ),
            )
            for i in IMPLS
        ]

    for full, diag in jitted(kernels, model, x1, x2):
        assert_close(full.ntk, ntk_full)
        assert_close(full.nngp, nngp_full)
        assert_close(diag, ntk_diag)


@pytest.mark.parametrize("name", list(MODELS))
def test_recognised_layers_are_structured(name):
    """Every Dense/Conv/Linear of these models is tapped (none falls back)."""
    build, shape = MODELS[name]
    model = build()
    x1, _ = inputs(shape)
    plan = plan_of(model, x1)
    assert jax.tree.leaves(plan.free) == []
    assert all(len(calls) == 1 for calls in plan.calls)
    assert len(plan.sites) >= 3


AXES = [
    ((1,), (0,)),  # the channel traced, the batch diagonal
    ((), (-1,)),  # every pair of channels, the last axis diagonal
    ((0, -1), ()),  # the first and last axes traced
]


def test_several_outputs_trace_and_diagonal_axes():
    model = two_heads()
    x1, x2 = inputs((2, 4, 4))
    ref = Reference(model, x1, x2)

    def kernels(model, x1, x2):
        return [
            et.empirical_kernel(
                model,
                x1,
                x2,
                ("ntk", "nngp"),
                trace_axes=t,
                diagonal_axes=d,
                implementation=i,
            )
            for i in IMPLS
            for t, d in AXES
        ]

    results = jitted(kernels, model, x1, x2)
    for k, (t, d) in zip(results, AXES * len(IMPLS)):
        nngp_ref, ntk_ref = ref.kernels(t, d)
        assert isinstance(k.ntk, tuple) and len(k.ntk) == 2
        assert_close(k.ntk, ntk_ref)
        assert_close(k.nngp, nngp_ref)


def test_output_shapes_follow_neural_tangents():
    model = two_heads()
    x1, x2 = inputs((2, 4, 4), n1=3, n2=5)

    def shapes(**options):
        out = jax.eval_shape(lambda: et.empirical_ntk(model, x1, x2, **options))
        return tuple(o.shape for o in out)

    assert shapes(trace_axes=()) == ((3, 5, 3, 3), (3, 5, 2, 2, 4, 4, 4, 4))
    assert shapes() == ((3, 5), (3, 5, 4, 4, 4, 4))
    assert shapes(trace_axes=(), diagonal_axes=(-1,)) == (
        (3, 5, 3),
        (3, 5, 2, 2, 4, 4, 4),
    )
    for implementation in IMPLS:
        assert shapes(trace_axes=(-1,), implementation=implementation) == (
            (3, 5),
            (3, 5, 2, 2, 4, 4),
        )


def ntks_of(model, x1, x2, **options):
    """The untraced NTK by each implementation, in one compiled program."""
    return jitted(
        lambda m, a, b: [
            et.empirical_ntk(m, a, b, trace_axes=(), implementation=i, **options)
            for i in IMPLS
        ],
        model,
        x1,
        x2,
    )


def plan_of(model, x1, x2=None):
    problem = make_problem(
        model,
        x1,
        x2,
        per_example=True,
        filter_spec=None,
        key=None,
        call_kwargs=None,
        call_kwargs2=None,
        name="test",
    )
    return make_plan(problem)


def test_repeat_falls_back_and_agrees():
    """A layer inside `lax.scan` (Repeat) is not tapped, but the NTK is exact."""
    model = drawn(
        lambda: et.Serial(
            et.Dense(5, b_std=0.1),
            et.Repeat(et.Serial(et.Relu(), et.Dense(5, b_std=0.2)), 2),
            et.Dense(2),
        ).init(jax.random.PRNGKey(0), (4,)),
        seed=8,
    )
    x1, x2 = inputs((4,))
    plan = plan_of(model, x1, x2)
    assert len(plan.sites) == 2 and len(jax.tree.leaves(plan.free)) == 2
    _, ntk_ref = reference(model, x1, x2, trace=())
    for ntk in ntks_of(model, x1, x2):
        assert_close(ntk, ntk_ref)


class Reused(eqx.Module):
    """One Linear called twice, and another whose weight is also read directly."""

    inner: eqx.nn.Linear
    tied: eqx.nn.Linear
    scale: jax.Array

    def __call__(self, x, *, key=None):
        h = jnp.tanh(self.inner(x))
        h = jnp.tanh(self.inner(h)) * self.scale
        return self.tied(h) + self.tied.weight[:, :2] @ h[:2]


def test_layers_called_twice_or_read_directly():
    model = drawn(
        lambda: Reused(
            eqx.nn.Linear(4, 4, key=jax.random.PRNGKey(0)),
            eqx.nn.Linear(4, 3, key=jax.random.PRNGKey(1)),
            jnp.array(1.3),
        ),
        seed=9,
        fan_in=True,
    )
    x1, x2 = inputs((4,))
    plan = plan_of(model, x1, x2)
    assert [len(c) for c in plan.calls] == [2]  # `inner`, twice; `tied` falls back
    _, ntk_ref = reference(model, x1, x2, trace=())
    for ntk in ntks_of(model, x1, x2):
        assert_close(ntk, ntk_ref)


def test_filter_spec_last_layer():
    model = mlp()
    x1, x2 = inputs((5,))
    spec = jax.tree.map(lambda _: False, model)
    spec = eqx.tree_at(
        lambda m: (m.layers[-1].weight, m.layers[-1].bias), spec, (True, True)
    )
    _, ntk_ref = reference(model, x1, x2, trace=(), filter_spec=spec)
    for ntk in ntks_of(model, x1, x2, filter_spec=spec):
        assert_close(ntk, ntk_ref)
    # With one output layer in NTK parameterization, the last-layer NTK is
    # (W_std^2 h1.h2 / n + b_std^2) * identity, h the penultimate features.
    last = model.layers[-1]

    def both(model, x1, x2):
        features = jax.vmap(et.Serial(*model.layers[:-1]))
        h1, h2 = features(x1), features(x2)
        expected = last.W_std**2 * h1 @ h2.T / h1.shape[1] + last.b_std**2
        return et.empirical_ntk(model, x1, x2, filter_spec=spec), expected

    assert_close(*jitted(both, model, x1, x2))


def test_array_hyperparameters_are_not_parameters():
    x1, x2 = inputs((5,))

    def net(w, b):
        return et.Serial(et.Dense(8, W_std=w, b_std=b), et.Relu(), et.Dense(2))

    with_floats = drawn(lambda: net(1.5, 0.2).init(jax.random.PRNGKey(0), (5,)))
    with_arrays = eqx.tree_at(
        lambda m: (m.layers[0].W_std, m.layers[0].b_std),
        with_floats,
        (jnp.array(1.5), jnp.array(0.2)),
    )
    for a, b in zip(ntks_of(with_arrays, x1, x2), ntks_of(with_floats, x1, x2)):
        assert_close(a, b)


class BatchNormish(eqx.Module):
    """Acts on the whole batch: centres each feature over the batch."""

    lin: eqx.nn.Linear
    out: eqx.nn.Linear

    def __call__(self, x):
        h = jax.vmap(self.lin)(x)
        h = h - jnp.mean(h, axis=0)
        return jax.vmap(self.out)(jnp.tanh(h))


def test_models_that_take_the_batch():
    model = drawn(
        lambda: BatchNormish(
            eqx.nn.Linear(4, 6, key=jax.random.PRNGKey(0)),
            eqx.nn.Linear(6, 2, key=jax.random.PRNGKey(1)),
        ),
        seed=11,
        fan_in=True,
    )
    x1, x2 = inputs((4,))
    params, rest = eqx.partition(model, eqx.is_inexact_array)

    def batched(p, x):
        return eqx.combine(p, rest)(x)

    nngp_ref, ntk_ref = reference(model, x1, x2, trace=(1,), batched=batched)
    results = jitted(
        lambda m, a, b: [
            et.empirical_kernel(m, a, b, per_example=False, implementation=i)
            for i in IMPLS
        ],
        model,
        x1,
        x2,
    )
    for k in results:
        assert_close(k.ntk, ntk_ref)
        assert_close(k.nngp, nngp_ref)


class Noisy(eqx.Module):
    lin: et.Dense
    drop: eqx.nn.Dropout
    out: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        return self.out(self.drop(jax.nn.relu(self.lin(x)), key=key))


class Scaled(eqx.Module):
    net: eqx.nn.MLP

    def __call__(self, x, *, scale):
        return self.net(x) * scale


def test_dropout_key_and_call_kwargs():
    model = drawn(
        lambda: Noisy(
            et.Dense(16, b_std=0.1, in_features=4, key=jax.random.PRNGKey(0)),
            eqx.nn.Dropout(0.5),
            eqx.nn.Linear(16, 2, key=jax.random.PRNGKey(1)),
        ),
        seed=12,
    )
    x1, _ = inputs((4,), n1=4)
    key = jax.random.PRNGKey(5)
    problem = make_problem(
        model,
        x1,
        None,
        per_example=True,
        filter_spec=None,
        key=key,
        call_kwargs=None,
        call_kwargs2=None,
        name="test",
    )
    assert len(make_plan(problem).sites) == 2
    nngp_ref, ntk_ref = reference(model, x1, None, trace=(), key=key)
    results = jitted(
        lambda m, a: [
            et.empirical_kernel(m, a, None, trace_axes=(), key=key, implementation=i)
            for i in IMPLS
        ],
        model,
        x1,
    )
    for k in results:
        assert_close(k.ntk, ntk_ref)
        assert_close(k.nngp, nngp_ref)
    # the key reaches the dropout layer
    deterministic = eqx.nn.inference_mode(model)
    assert not np.allclose(
        nngp_ref, et.empirical_nngp(deterministic, x1, trace_axes=())
    )

    scaled = drawn(
        lambda: Scaled(eqx.nn.MLP(4, 2, 6, 1, key=jax.random.PRNGKey(0))), fan_in=True
    )
    x1, x2 = inputs((4,), n1=3, n2=2)
    s1, s2 = jnp.array([1.0, 2.0, 3.0]), jnp.array([-1.0, 0.5])
    problem = make_problem(
        scaled,
        x1,
        x2,
        per_example=True,
        filter_spec=None,
        key=None,
        call_kwargs={"scale": s1},
        call_kwargs2={"scale": s2},
        name="test",
    )
    assert len(make_plan(problem).sites) == 2
    _, base = reference(scaled.net, x1, x2, trace=())
    expected = base * s1[:, None, None, None] * s2[None, :, None, None]
    for ntk in ntks_of(
        scaled, x1, x2, call_kwargs={"scale": s1}, call_kwargs2={"scale": s2}
    ):
        assert_close(ntk, expected)


def test_ntk_vector_products_in_several_passes(monkeypatch):
    """With room for one tangent at a time the columns are computed by a loop
    (`lax.map`) instead of one `vmap`; the kernel is the same."""
    monkeypatch.setattr("eqtangents._jacobian._NVP_BYTES", 1)
    build, shape = MODELS["cnn_pooling"]
    model = build()
    x1, x2 = inputs(shape)
    _, ntk_full = reference(model, x1, x2, trace=())
    _, ntk_diag = reference(model, x1, None, trace=(), diagonal=(0,))
    ntks = jitted(
        lambda m, a, b: (
            et.empirical_ntk(
                m, a, b, trace_axes=(), implementation="ntk_vector_products"
            ),
            et.empirical_ntk(
                m,
                a,
                None,
                trace_axes=(),
                diagonal_axes=(0,),
                implementation="ntk_vector_products",
            ),
        ),
        model,
        x1,
        x2,
    )
    assert_close(ntks[0], ntk_full)
    assert_close(ntks[1], ntk_diag)


def test_ntk_vector_products():
    model = branches()
    x1, x2 = inputs((5,))
    v = jax.random.normal(jax.random.PRNGKey(3), (3, 3))
    products = jitted(
        lambda m, a, b, v: (
            et.empirical_ntk_vp(m, a, b, v),
            et.empirical_ntk_vp(m, a, None, v[:3]),
        ),
        model,
        x1,
        x2,
        v,
    )
    _, full = reference(model, x1, x2, trace=())  # (3, 3, 3, 3)
    assert_close(products[0], jnp.einsum("abij,bj->ai", full, v))
    _, full = reference(model, x1, None, trace=())
    assert_close(products[1], jnp.einsum("abij,bj->ai", full, v[:3]))


def test_grad_through_the_ntk():
    """d/dx of a function of the NTK: the implementations agree with a
    finite difference of a plain Jacobian contraction."""
    model = mlp()
    x1, x2 = inputs((5,))
    params, rest = eqx.partition(model, eqx.is_inexact_array)

    def f(p, x):
        return jax.vmap(eqx.combine(p, rest))(x)

    @jax.jit
    def plain_loss(x):
        j1, j2 = jax.jacobian(f)(params, x), jax.jacobian(f)(params, x2)
        ntk = (
            sum(
                jnp.einsum(
                    "aij,bij->ab",
                    p.reshape(p.shape[:2] + (-1,)),
                    q.reshape(q.shape[:2] + (-1,)),
                )
                for p, q in zip(jax.tree.leaves(j1), jax.tree.leaves(j2))
            )
            / 3
        )
        return jnp.sum(ntk**2)

    def loss(x, i):
        return jnp.sum(et.empirical_ntk(model, x, x2, implementation=i) ** 2)

    grads = jitted(lambda m, x: [jax.grad(loss)(x, i) for i in IMPLS], model, x1)
    direction = jax.random.normal(jax.random.PRNGKey(4), x1.shape)
    eps = 1e-5
    numeric = (plain_loss(x1 + eps * direction) - plain_loss(x1 - eps * direction)) / (
        2 * eps
    )
    for g in grads:
        assert abs(float(jnp.vdot(g, direction) - numeric)) < 1e-7 * abs(float(numeric))
    for g in grads[1:]:
        assert_close(g, grads[0])


def test_float32():
    model = jax.tree.map(
        lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, branches()
    )
    x1, x2 = (x.astype(jnp.float32) for x in inputs((5,)))
    results = jitted(
        lambda m, a, b: [
            et.empirical_ntk(m, a, b, trace_axes=(), implementation=i) for i in IMPLS
        ],
        model,
        x1,
        x2,
    )
    for r in results:
        assert r.dtype == jnp.float32
        assert_close(r, results[0], rtol=1e-5)


def test_auto_prefers_structured_for_a_wide_mlp():
    model = et.Serial(et.Dense(256), et.Relu(), et.Dense(256), et.Relu(), et.Dense(10))
    model = drawn(lambda: model.init(jax.random.PRNGKey(0), (64,)))
    x1 = jnp.ones((16, 64))
    problem = make_problem(
        model,
        x1,
        None,
        per_example=True,
        filter_spec=None,
        key=None,
        call_kwargs=None,
        call_kwargs2=None,
        name="test",
    )
    outs = jax.tree.leaves(jax.eval_shape(jax.vmap(model), x1))
    layouts = [make_layout(o.shape, o.shape, (), (), "test") for o in outs]
    assert (
        choose_implementation(problem, layouts, outs, outs) == "structured_derivatives"
    )


def test_errors():
    model = mlp()
    x1, x2 = inputs((5,))
    with pytest.raises(ValueError, match="trace_axes"):
        et.empirical_ntk(model, x1, x2, trace_axes=(2,))
    with pytest.raises(ValueError, match="both"):
        et.empirical_ntk(model, x1, x2, trace_axes=(1,), diagonal_axes=(1,))
    with pytest.raises(ValueError, match="sizes"):
        et.empirical_ntk(model, x1, x2[:2], diagonal_axes=(0,))
    with pytest.raises(ValueError, match="implementation"):
        et.empirical_ntk(model, x1, x2, implementation=7)
    with pytest.raises(ValueError, match="leading axis"):
        et.empirical_ntk(model, x1, x2, call_kwargs={"scale": jnp.ones(7)})
