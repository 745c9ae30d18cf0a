"""Regression in feature space (`gradient_descent_mse_features`) and `embed`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqtangents as et

F = et.features
_K = jax.random.split(jax.random.key(0), 5)
_PHI = jax.random.normal(_K[0], (30, 8))
_Y = jax.random.normal(_K[1], (30, 2))
_PHI_TEST = jax.random.normal(_K[2], (5, 8))
_F0 = 0.1 * jax.random.normal(_K[3], (30, 2))
_G0 = 0.1 * jax.random.normal(_K[4], (5, 2))


def _kernel_space(phi, y, phi_test, t, f0, g0, **kwargs):
    """The same prediction through the N x N kernel."""
    predictor = et.predict.gradient_descent_mse(phi @ phi.T, y, **kwargs)
    return predictor(t, f0, g0, phi_test @ phi.T)[1]


# t = inf without ridge (N > d: a singular N x N kernel) is least squares,
# checked in `test_ridge_closed_form_and_least_squares`.
@pytest.mark.parametrize(
    "diag_reg, t",
    [(1e-2, None), (0.0, 2.0), (1e-2, 2.0), (0.0, (0.1, 3.0, 100.0)), (1e-2, (0.1,))],
)
def test_matches_kernel_space(diag_reg, t):
    t = None if t is None else jnp.asarray(t)
    kwargs = dict(learning_rate=0.5, diag_reg=diag_reg)
    predictor = et.predict.gradient_descent_mse_features(_PHI, _Y, **kwargs)
    got = predictor(t, _PHI_TEST, _F0, _G0)
    expected = _kernel_space(_PHI, _Y, _PHI_TEST, t, _F0, _G0, **kwargs)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_ridge_closed_form_and_least_squares():
    predictor = et.predict.gradient_descent_mse_features(
        _PHI, _Y, diag_reg=0.3, diag_reg_absolute_scale=True
    )
    w = jnp.linalg.solve(_PHI.T @ _PHI + 0.3 * jnp.eye(8), _PHI.T @ _Y)
    np.testing.assert_allclose(predictor(None, _PHI_TEST), _PHI_TEST @ w, rtol=1e-10)
    # Without ridge and N > d, t = inf is least squares.
    lstsq = np.linalg.lstsq(np.asarray(_PHI), np.asarray(_Y), rcond=None)[0]
    predictor = et.predict.gradient_descent_mse_features(_PHI, _Y)
    np.testing.assert_allclose(predictor(None, _PHI_TEST), _PHI_TEST @ lstsq, rtol=1e-9)


def test_more_features_than_examples_interpolates():
    phi = jax.random.normal(_K[0], (6, 20))
    phi_test = jax.random.normal(_K[2], (5, 20))
    predictor = et.predict.gradient_descent_mse_features(phi, _Y[:6])
    np.testing.assert_allclose(predictor(None, phi), _Y[:6], atol=1e-10)
    expected = _kernel_space(phi, _Y[:6], phi_test, None, 0.0, 0.0)
    np.testing.assert_allclose(predictor(None, phi_test), expected, atol=1e-10)
    # Directions outside the span of the features never move at finite t.
    late = predictor(jnp.asarray(1e12), phi_test)
    assert bool(jnp.all(jnp.isfinite(late)))
    np.testing.assert_allclose(late, expected, atol=1e-8)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jit_vmap_grad_and_dtypes(dtype):
    phi, y, phi_test = (a.astype(dtype) for a in (_PHI, _Y, _PHI_TEST))

    @eqx.filter_jit
    def fit(phi, reg):
        predictor = et.predict.gradient_descent_mse_features(phi, y, diag_reg=reg)
        return predictor(None, phi_test)

    out = fit(phi, 1e-2)
    assert out.dtype == dtype
    tol = 1e-4 if dtype == jnp.float32 else 1e-11
    reference = _kernel_space(_PHI, _Y, _PHI_TEST, None, 0.0, 0.0, diag_reg=1e-2)
    np.testing.assert_allclose(out, reference, rtol=tol, atol=tol)
    batched = jax.vmap(fit, in_axes=(None, 0))(phi, jnp.asarray([1e-2, 1.0], dtype))
    np.testing.assert_allclose(batched[0], out, rtol=tol, atol=tol)

    def loss(reg):
        return jnp.sum(fit(phi, reg) ** 2)

    # Central differences: truncation error ~ step**2, rounding ~ eps / step.
    step, rtol = (1e-2, 1e-2) if dtype == jnp.float32 else (1e-4, 1e-7)
    numeric = (loss(0.5 + step) - loss(0.5 - step)) / (2 * step)
    np.testing.assert_allclose(jax.grad(loss)(dtype(0.5)), numeric, rtol=rtol)


def test_errors():
    with pytest.raises((ValueError, TypeError), match="y_train"):
        et.predict.gradient_descent_mse_features(_PHI, _Y[:5])
    with pytest.raises((ValueError, TypeError), match="train_features"):
        et.predict.gradient_descent_mse_features(_PHI[:, None], _Y)
    predictor = et.predict.gradient_descent_mse_features(_PHI, _Y)
    with pytest.raises(ValueError, match=r"\(M, 8\)"):
        predictor(None, _PHI_TEST[:, :7])
    with pytest.raises((ValueError, TypeError), match="fx_test_0"):
        predictor(None, _PHI_TEST, 0.0, jnp.zeros((4, 2)))
    with pytest.raises(Exception, match="NaN"):
        et.predict.gradient_descent_mse_features(_PHI.at[0, 0].set(jnp.nan), _Y)


# ---------------------------------------------------------------- embed


def _relu_model(m=64):
    def relu():
        return F.Relu(nngp_dim=m, step_dim=m, sketch_dim=m)

    return F.Serial(F.Dense(1.5, 0.1), relu(), F.Dense(1.2, 0.2), relu(), F.Dense(1.0))


def test_embed_in_batches_equals_one_call():
    x = jax.random.normal(jax.random.key(3), (23, 6))
    fmodel = _relu_model().init(jax.random.key(0), (6,))
    whole = fmodel(F.Features.from_inputs(x))
    for batch_size in (5, 23, 100):
        f = F.embed(fmodel, np.asarray(x), batch_size=batch_size, progress=False)
        np.testing.assert_allclose(f.nngp_feat, whole.nngp_feat, rtol=1e-12)
        np.testing.assert_allclose(f.ntk_feat, whole.ntk_feat, rtol=1e-12)


def test_embed_reports_progress(capsys):
    x = np.ones((10, 6))
    fmodel = _relu_model().init(jax.random.key(0), (6,))
    F.embed(fmodel, x, batch_size=4, progress=True)
    assert "10/10" in capsys.readouterr().err
    F.embed(fmodel, x, batch_size=4)
    assert capsys.readouterr().err == ""


def test_embed_errors():
    with pytest.raises(ValueError, match="exact"):
        fmodel = F.Serial(F.Dense(), F.Relu("exact")).init(jax.random.key(0), (6,))
        F.embed(fmodel, np.ones((4, 6)))
    with pytest.raises(ValueError, match="batch_size"):
        F.embed(_relu_model(), np.ones((4, 6)), batch_size=0)
    with pytest.raises((ValueError, TypeError), match="fmodel"):
        F.embed(et.Dense(3), np.ones((4, 6)))


# ---------------------------------------------------------------- digits


@pytest.mark.slow
def test_feature_regression_on_digits_matches_exact_ntk():
    """NTK regression with 4,096 random features is within one point of the
    exact NTK on the bundled digits (the setting of `python -m eqtangents`)."""
    from eqtangents.data import load_digits

    images, labels = load_digits()
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:1000], order[1000:]
    x = images.reshape(len(images), -1)
    x = x - x[train].mean()
    x = x / x[train].std()
    y = np.eye(10)[labels[train]] - 0.1
    model = et.Serial(
        *[et.Serial(et.Dense(512, 1.5, 0.05), et.Relu()) for _ in range(3)],
        et.Dense(10, 1.5, 0.05),
    )
    k_train = model.kernel(x[train], None, get="ntk")
    k_test = model.kernel(x[test], x[train], get="ntk")
    exact = et.predict.gradient_descent_mse(k_train, y, diag_reg=1e-4)
    exact_accuracy = np.mean(
        np.argmax(exact(None, None, 0.0, k_test), 1) == labels[test]
    )

    fmodel = F.from_network(model, feature_dim=4096).init(jax.random.key(0), (64,))
    f_train, f_test = F.embed(fmodel, x[train]), F.embed(fmodel, x[test])
    ridge = et.predict.gradient_descent_mse_features(f_train.ntk_feat, y, diag_reg=1e-4)
    accuracy = np.mean(np.argmax(ridge(None, f_test.ntk_feat), 1) == labels[test])
    assert exact_accuracy > 0.97
    assert abs(accuracy - exact_accuracy) <= 0.01, (accuracy, exact_accuracy)
