"""The layer contract: `kernel`'s `get` semantics, init and shape inference,
Monte Carlo agreement of dense networks, combinators, transformations and errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError

import eqtangents as et

from ._finite import finite_kernels


def _inputs(n1=5, n2=4, d=7, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(k1, (n1, d)), jax.random.normal(k2, (n2, d))


def mlp(width=64, parameterization="ntk", out=1):
    return et.Serial(
        et.Dense(width, W_std=1.4, b_std=0.3, parameterization=parameterization),
        et.Relu(),
        et.Dense(width, W_std=1.2, b_std=0.1, parameterization=parameterization),
        et.LeakyRelu(0.2),
        et.Dense(out, W_std=0.9, b_std=0.2, parameterization=parameterization),
    )


# ----------------------------------------------------------------------- get


def test_get_semantics():
    x1, x2 = _inputs()
    model = mlp()
    k = model.kernel(x1, x2)
    assert isinstance(k, et.Kernel)
    assert k.nngp.shape == k.ntk.shape == (5, 4)
    np.testing.assert_array_equal(model.kernel(x1, x2, get="ntk"), k.ntk)
    pair = model.kernel(x1, x2, get=("ntk", "nngp"))
    assert pair._fields == ("ntk", "nngp")
    np.testing.assert_array_equal(pair.nngp, k.nngp)
    only = model.kernel(x1, x2, get=("nngp",))
    assert only._fields == ("nngp",)


def test_ntk_is_not_computed_unless_asked():
    x1, _ = _inputs()
    jaxpr_nngp = jax.make_jaxpr(lambda x: mlp().kernel(x, None, get="nngp"))(x1)
    jaxpr_both = jax.make_jaxpr(lambda x: mlp().kernel(x, None, get=None))(x1)
    assert len(str(jaxpr_nngp)) < len(str(jaxpr_both))


def test_unknown_get_names_the_choices():
    x1, _ = _inputs()
    with pytest.raises(ValueError, match="Unknown kernel 'cov'.*nngp"):
        mlp().kernel(x1, get="cov")


def test_x2_none_equals_x2_is_x1():
    x1, _ = _inputs()
    a = mlp().kernel(x1, None)
    b = mlp().kernel(x1, x1)
    np.testing.assert_allclose(a.nngp, b.nngp, rtol=1e-13)
    np.testing.assert_allclose(a.ntk, b.ntk, rtol=1e-13)


def test_continue_from_a_kernel():
    x1, x2 = _inputs()
    head = et.Serial(et.Dense(8, W_std=1.3, b_std=0.2), et.Relu())
    tail = et.Serial(et.Dense(8, W_std=0.7), et.Abs(), et.Dense(1))
    whole = et.Serial(head, tail).kernel(x1, x2)
    resumed = tail.kernel(head.kernel(x1, x2))
    np.testing.assert_allclose(resumed.nngp, whole.nngp, rtol=1e-13)
    np.testing.assert_allclose(resumed.ntk, whole.ntk, rtol=1e-13)


# ------------------------------------------------------------- init, forward


def test_init_infers_shapes_and_eager_construction_matches():
    key = jax.random.PRNGKey(1)
    net = mlp(width=16, out=3).init(key, (7,))
    x1, _ = _inputs()
    assert jax.vmap(net)(x1).shape == (5, 3)
    assert net.layers[0].weight.shape == (16, 7)
    eager = et.Dense(512, in_features=784, key=key)
    assert eager.weight.shape == (512, 784)
    assert eager(jnp.ones(784)).shape == (512,)


def test_calling_without_weights_says_to_init():
    with pytest.raises(ValueError, match=r"Dense has no weights.*init\(key"):
        mlp()(jnp.ones(7))


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_dense_network_matches_monte_carlo(parameterization):
    """The NNGP lies within sampling error of the finite-network average, and
    the empirical NTK concentrates on the analytic one as width grows."""
    x1, x2 = _inputs(4, 3, 6)
    key = jax.random.PRNGKey(2)
    model = mlp(128, parameterization, 4)
    exact = model.kernel(x1, x2)
    nngp, _, se = finite_kernels(model, x1, x2, key, 192, ntk=False)
    z = np.abs(nngp - exact.nngp) / se
    assert z.max() < 5, z
    errors = []
    for width in (32, 512):
        model = mlp(width, parameterization, 4)  # the standard NTK depends on width
        exact = model.kernel(x1, x2, get="ntk")
        _, ntk, _ = finite_kernels(model, x1, x2, key, 4)
        errors.append(np.linalg.norm(ntk - exact) / np.linalg.norm(exact))
    # The empirical NTK's fluctuations fall as width**-1/2: 16x wider, 4x closer.
    assert errors[1] < 0.5 * errors[0], errors


# ----------------------------------------------------------------- combinators


def test_repeat_equals_serial_and_compiles_in_constant_size():
    x1, x2 = _inputs()
    block = et.Serial(et.Dense(32, W_std=1.5, b_std=0.2), et.Relu())
    repeated = et.Serial(et.Dense(32), et.Repeat(block, 6), et.Dense(1))
    written = et.Serial(et.Dense(32), *([block] * 6), et.Dense(1))
    a, b = repeated.kernel(x1, x2), written.kernel(x1, x2)
    np.testing.assert_allclose(a.nngp, b.nngp, rtol=1e-12)
    np.testing.assert_allclose(a.ntk, b.ntk, rtol=1e-12)

    def size(n):
        model = et.Serial(et.Dense(32), et.Repeat(block, n), et.Dense(1))
        return len(jax.make_jaxpr(lambda x: model.kernel(x, None))(x1).eqns)

    assert size(10) == size(200)


def test_repeat_on_the_inputs_runs_the_block_once_in_the_scan():
    """When the block keeps the input's shapes, its first application is the
    scan's first trip: one copy of the block in the program, not two."""
    x1, x2 = _inputs()  # (N, 7)
    block = et.Serial(et.Dense(7, W_std=1.5, b_std=0.2), et.Relu())
    repeated = et.Serial(et.Repeat(block, 5), et.Dense(1))
    peeled = et.Serial(block, et.Repeat(block, 4), et.Dense(1))
    written = et.Serial(*([block] * 5), et.Dense(1))
    a, b = repeated.kernel(x1, x2), written.kernel(x1, x2)
    np.testing.assert_allclose(a.nngp, b.nngp, rtol=1e-12)
    np.testing.assert_allclose(a.ntk, b.ntk, rtol=1e-12)

    def size(model):  # lines of the lowered program, nested calls included
        lowered = jax.jit(lambda x: model.kernel(x, None)).lower(x1)
        return lowered.as_text().count("\n")

    assert size(repeated) < 0.8 * size(peeled)
    with pytest.raises(ValueError, match="Dropout cannot act on the network's inputs"):
        et.Serial(et.Repeat(et.Dropout(0.5), 3)).kernel(x1, x2)


def test_repeat_forward_uses_independent_weights():
    block = et.Serial(et.Dense(8), et.Relu())
    net = et.Repeat(block, 3).init(jax.random.PRNGKey(0), (8,))
    w = net.stacked.layers[0].weight
    assert w.shape == (3, 8, 8)
    x = jnp.linspace(-1, 1, 8)
    by_hand = x
    for i in range(3):
        by_hand = jax.nn.relu(w[i] @ by_hand / jnp.sqrt(8.0))
    np.testing.assert_allclose(net(x), by_hand, rtol=1e-12)


def test_fan_in_sum_prod_concat_against_monte_carlo():
    x1, x2 = _inputs(3, 3, 5)

    def model(w):
        return et.Serial(
            et.Dense(w, W_std=1.2, b_std=0.1),
            et.FanOut(3),
            et.Parallel(
                et.Serial(et.Relu(), et.Dense(w)),
                et.Serial(et.Abs(), et.Dense(w, W_std=0.8)),
                et.Dense(w, b_std=0.3),
            ),
            et.FanOut(3),
            et.Parallel(et.FanInSum(), et.FanInProd(), et.FanInConcat()),
            et.FanInConcat(),
            et.Dense(4),
        )

    exact = model(8).kernel(x1, x2)
    nngp, _, se = finite_kernels(
        model(128), x1, x2, jax.random.PRNGKey(3), 256, ntk=False
    )
    assert (np.abs(nngp - exact.nngp) / se).max() < 5


def test_diagonal_batch_is_the_diagonal_of_the_full_kernel():
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 2, 5, 3))
    body = [et.Conv(8, (3, 2), padding="SAME", b_std=0.1), et.Erf()]
    pooled = et.Serial(*body, et.GlobalAvgPool(), et.Dense(1))
    branches = et.Serial(
        *body, et.FanOut(2), et.Parallel(et.Flatten(), et.Conv(3, (1, 1)))
    )
    n = jnp.arange(4)
    full, diag = pooled.kernel(x, None), pooled.kernel(x, None, diagonal_batch=True)
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(getattr(diag, name), getattr(full, name)[n, n])
    np.testing.assert_allclose(diag.nngp, diag.cov1)
    assert diag.diagonal_batch and not full.diagonal_batch
    for options in ({}, {"diagonal_spatial": True}):
        full = branches.kernel(x, None, "ntk", **options)
        diag = branches.kernel(x, None, "ntk", diagonal_batch=True, **options)
        for a, b in zip(diag, full):
            np.testing.assert_allclose(a, b[n, n], rtol=1e-12)
    with pytest.raises(ValueError, match="leave `x2` as None"):
        pooled.kernel(x, x, diagonal_batch=True)
    with pytest.raises(ValueError, match="holds only the batch diagonal"):
        et.Relu().kernel(et.Serial(*body).kernel(x, None, diagonal_batch=True))


def test_tuple_inputs_to_parallel_networks():
    """One input per branch: the kernel of the finite networks, and the same
    kernel from branch kernels built one by one."""
    xa = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    xb = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 5))

    def branches(w):
        return et.Parallel(
            et.Dense(w, W_std=1.3, b_std=0.2),
            et.Serial(et.Conv(w, (2,)), et.Relu(), et.Flatten(), et.Dense(w)),
        )

    def model(w):
        return et.Serial(branches(w), et.FanInSum(), et.Relu(), et.Dense(w))

    exact = model(1).kernel((xa, xb), None)
    by_branch = et.Serial(et.FanInSum(), et.Relu(), et.Dense(1)).propagate(
        tuple(layer.kernel(x, None) for layer, x in zip(branches(1).layers, (xa, xb)))
    )
    np.testing.assert_allclose(exact.ntk, by_branch.ntk, rtol=1e-12)
    errors = []
    for width in (32, 128):
        estimate = et.monte_carlo_kernel(
            model(width), (xa, xb), None, key=jax.random.PRNGKey(2), n_samples=16
        )
        errors.append(
            [
                np.abs(estimate.nngp - exact.nngp).max() / np.abs(exact.nngp).max(),
                np.abs(estimate.ntk - exact.ntk).max() / np.abs(exact.ntk).max(),
            ]
        )
    # Measured: NNGP 0.13 -> 0.025, NTK 0.10 -> 0.008.
    errors = np.array(errors)
    assert (errors[1] < 0.06).all() and (errors[1] < 0.5 * errors[0]).all(), errors
    with pytest.raises(ValueError, match="must be a tuple of as many"):
        model(1).kernel((xa, xb), xa)
    with pytest.raises(ValueError, match="batch sizes"):
        model(1).kernel((xa, xb[:2]), None)


# ------------------------------------------------------ jit, vmap, grad, dtype


def test_jit_vmap_and_dtypes():
    x1, x2 = _inputs()
    model = mlp()
    direct = model.kernel(x1, x2, get="ntk")
    np.testing.assert_allclose(
        jax.jit(lambda a, b: model.kernel(a, b, get="ntk"))(x1, x2), direct, rtol=1e-13
    )
    diag = jax.vmap(lambda a, b: model.kernel(a[None], b[None], get="ntk")[0, 0])(
        x1[:4], x2
    )
    np.testing.assert_allclose(diag, jnp.diagonal(direct), rtol=1e-12)
    low = model.kernel(x1.astype(jnp.float32), x2.astype(jnp.float32), get="ntk")
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, direct, rtol=1e-5)


def test_gradients_are_finite_at_x1_equal_x2_and_match_finite_differences():
    x1, _ = _inputs()

    def loss(x, w):
        model = et.Serial(et.Dense(8, W_std=w, b_std=0.1), et.Relu(), et.Dense(1))
        return model.kernel(x, None, get="ntk").sum()

    gx, gw = jax.grad(loss, argnums=(0, 1))(x1, 1.3)
    assert np.isfinite(gx).all() and np.isfinite(gw)
    eps = 1e-6
    fd = (loss(x1, 1.3 + eps) - loss(x1, 1.3 - eps)) / (2 * eps)
    np.testing.assert_allclose(gw, fd, rtol=1e-6)
    zero = jnp.zeros_like(x1)
    assert np.isfinite(jax.grad(loss)(zero, 1.3)).all()


def test_filter_grad_sees_array_hyperparameters():
    x1, _ = _inputs()
    model = et.Serial(et.Dense(8, W_std=jnp.array(1.3)), et.Relu(), et.Dense(1))
    grads = eqx.filter_grad(lambda m: m.kernel(x1, None, get="nngp").sum())(model)
    assert np.isfinite(grads.layers[0].W_std) and grads.layers[0].W_std != 0


# ---------------------------------------------------------------------- errors


def test_activation_after_nonlinearity_is_refused():
    x1, _ = _inputs()
    with pytest.raises(ValueError, match="Relu needs Gaussian inputs.*affine layer"):
        et.Serial(et.Dense(8), et.Abs(), et.Relu()).kernel(x1)
    with pytest.raises(ValueError, match="follows the network input"):
        et.Relu().kernel(x1)


def test_dense_on_images_says_flatten():
    images = jnp.ones((2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"Dense expects flat inputs.*Flatten\(\)"):
        et.Serial(et.Dense(8), et.Relu()).kernel(images)


def test_fan_in_of_mismatched_branches():
    x1, _ = _inputs()
    model = et.Serial(
        et.FanOut(2), et.Parallel(et.Dense(8), et.Dense(9)), et.FanInSum()
    )
    with pytest.raises(ValueError, match="FanInSum: branches have different shapes"):
        model.kernel(x1)
    with pytest.raises(ValueError, match="Parallel has 2 branches but receives 3"):
        et.Serial(et.FanOut(3), et.Parallel(et.Dense(8), et.Dense(8))).kernel(x1)


def test_mismatched_inputs_and_bad_sizes():
    x1, _ = _inputs()
    with pytest.raises(ValueError, match="same trailing shape"):
        mlp().kernel(x1, jnp.ones((3, 6)))
    with pytest.raises(ValueError, match="batch axis"):
        mlp().kernel(jnp.ones(7))
    with pytest.raises(ValueError, match="positive integer"):
        et.Dense(0)
    with pytest.raises(ValueError, match="non-negative"):
        et.Dense(3, W_std=-1.0)
    # The annotation is a Literal, so the type-checking hook may answer first.
    with pytest.raises((ValueError, TypeCheckError), match="parameterization"):
        et.Dense(3, parameterization="mup")
