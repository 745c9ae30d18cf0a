r"""Gradient flow on the MSE in feature space: `gradient_descent_mse_features`.

With approximate features $K \approx \Phi\Phi^\top$ (from `et.features`) the
$N \times N$ kernel is never formed: every prediction goes through the
$d \times d$ Gram matrix $G = \Phi^\top\Phi$, which costs $O(N d^2)$ to build
and $O(d^3)$ to factorize, instead of $O(N^2 d)$ and $O(N^3)$.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real, ScalarLike

from ._factor import integrated_decay
from ._utils import Times, as_times

_WHERE = "gradient_descent_mse_features"


class FeatureMSEPredictor(eqx.Module):
    r"""Predictions of gradient flow on the MSE loss with kernel $\Phi\Phi^\top$.

    Returned by `gradient_descent_mse_features`; call it as
    `predictor(t, test_features, fx_train_0, fx_test_0)`.

    **Fields:**

    - `eigenvalues`, `eigenvectors`: $G = \Phi^\top\Phi = W \operatorname{diag}
      (s) W^\top$.
    - `projected_targets`: $W^\top \Phi^\top y$, `(d, K)`.
    - `train_features`: $\Phi$, `(N, d)`, to project the initial training
      outputs $f_0$.
    - `shift`: the regularizer $\lambda$ (absolute).
    - `learning_rate`: $\eta$.
    - `n_outputs`: $n$ = `y_train.size`, the normalization of the loss.

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> phi = jax.random.normal(jax.random.key(0), (6, 20))
    >>> predictor = et.predict.gradient_descent_mse_features(phi, y_train)
    >>> type(predictor).__name__, predictor.eigenvalues.shape  # G = phi^T phi, d x d
    ('FeatureMSEPredictor', (20,))
    >>> bool(jnp.allclose(predictor(jnp.inf, phi), y_train, atol=1e-4))   # interpolates
    True
    ```
    """

    eigenvalues: Float[Array, " d"]
    eigenvectors: Float[Array, "d d"]
    projected_targets: Float[Array, "d k"]
    train_features: Float[Array, "n d"]
    shift: Float[Array, ""]
    learning_rate: Float[Array, ""]
    n_outputs: int = eqx.field(static=True)

    def __call__(
        self,
        t: Times = None,
        test_features: Float[ArrayLike, "m d"] | None = None,
        fx_train_0: ScalarLike | Real[ArrayLike, "n k"] = 0.0,
        fx_test_0: ScalarLike | Real[ArrayLike, "m k"] = 0.0,
    ) -> Float[Array, "*t m k"]:
        r"""Outputs on the test set at time[s] `t`.

        With $a = s + \lambda$, $r = \Phi^\top (f_0 - y)$ and $\tau = \eta t$,

        $$g(t) = g_0 + \Phi_* W \operatorname{diag}\Big(
          \frac{e^{-a\tau/n} - 1}{a}\Big) W^\top r,$$

        which equals `gradient_descent_mse(Phi @ Phi.T, y, ...)` on the test
        kernel $K_* = \Phi_*\Phi^\top$ (push-through identity: the directions of
        $K + \lambda I$ outside the span of $\Phi$ do not reach $K_*$). At
        $t = \infty$ (`None`) this is ridge regression,
        $g_0 + \Phi_*(G + \lambda I)^{+}\Phi^\top(y - f_0)$; directions with
        $a$ at rounding level ($d > N$ or rank-deficient features, $\lambda = 0$)
        do not move.

        **Arguments:**

        - `t`: a scalar or an array of times (leading axes of the result), or
          `None` for $t = \infty$.
        - `test_features`: $\Phi_*$, `(M, d)`; the training features give the
          (unregularized) training-set predictions.
        - `fx_train_0`, `fx_test_0`: outputs at $t = 0$ (broadcast to
          `(N, K)` and `(M, K)`).
        """
        dtype = self.projected_targets.dtype
        if test_features is None:
            raise ValueError(
                f"{_WHERE}: pass `test_features` (use the training features for "
                "predictions on the training set)."
            )
        phi_test = jnp.asarray(test_features, dtype)
        d, k = self.projected_targets.shape
        n = self.train_features.shape[0]
        if phi_test.ndim != 2 or phi_test.shape[1] != d:
            raise ValueError(
                f"{_WHERE}: `test_features` has shape {phi_test.shape}; the "
                f"predictor was built from features of width {d}, so pass "
                f"`(M, {d})` features from the same feature model."
            )
        m = phi_test.shape[0]
        fx_train_0 = _outputs(fx_train_0, (n, k), dtype, "fx_train_0")
        fx_test_0 = _outputs(fx_test_0, (m, k), dtype, "fx_test_0")
        times = None if t is None else as_times(t, dtype, _WHERE)
        return _predict(self, times, phi_test, fx_train_0, fx_test_0)


def _outputs(f, shape, dtype, name) -> Array:
    f = jnp.asarray(f, dtype)
    try:
        return jnp.broadcast_to(f, shape)
    except ValueError:
        raise ValueError(
            f"{_WHERE}: `{name}` has shape {f.shape}, which does not broadcast "
            f"to {shape}."
        ) from None


@eqx.filter_jit
def _predict(predictor, times, phi_test, fx_train_0, fx_test_0):
    w = predictor.eigenvectors
    a = jnp.maximum(predictor.eigenvalues, 0) + predictor.shift
    # Eigenvalues at rounding level belong to directions outside the span of
    # the features (d > N): they carry no signal and must not move.
    d = a.shape[0]
    moving = a > jnp.max(a) * d * jnp.finfo(a.dtype).eps
    # (f^T Phi)^T rather than Phi^T f: no transposed copy of the N x d features.
    coef = w.T @ (fx_train_0.T @ predictor.train_features).T
    coef = coef - predictor.projected_targets
    left = phi_test @ w
    if times is None:
        h = jnp.where(moving, -1 / jnp.where(moving, a, 1), 0)
        return fx_test_0 + left @ (h[:, None] * coef)
    tau = times.reshape(-1) * predictor.learning_rate
    h = jnp.where(moving, integrated_decay(a, tau, predictor.n_outputs), 0)
    delta = jnp.einsum("md,td,dk->tmk", left, h, coef)
    return fx_test_0 + delta.reshape(times.shape + delta.shape[1:])


def gradient_descent_mse_features(
    train_features: Float[ArrayLike, "n d"],
    y_train: Real[ArrayLike, "n k"],
    learning_rate: ScalarLike = 1.0,
    diag_reg: ScalarLike = 0.0,
    diag_reg_absolute_scale: bool = False,
) -> FeatureMSEPredictor:
    r"""Gradient flow on the MSE (and kernel ridge regression) from features.

    The feature-space counterpart of `gradient_descent_mse` for the kernel
    $K = \Phi\Phi^\top$: the same dynamics $\dot f = -\frac{\eta}{n}(K +
    \lambda I)(f - y)$, $n$ = `y_train.size`, solved with the $d \times d$ Gram
    matrix $G = \Phi^\top \Phi$ instead of the $N \times N$ kernel. Use it
    when $N$ is too large for `gradient_descent_mse`.

    **Arguments:**

    - `train_features`: $\Phi$, `(N, d)`, e.g. `f_train.ntk_feat` for the NTK
      or `f_train.nngp_feat` for the NNGP of a feature model.
    - `y_train`: targets `(N, K)`.
    - `learning_rate`: $\eta$.
    - `diag_reg`: $\lambda$, relative to the mean diagonal of $K$,
      $\operatorname{tr}(K)/N = \lVert\Phi\rVert_F^2 / N$, unless
      `diag_reg_absolute_scale`.
    - `diag_reg_absolute_scale`: take `diag_reg` as an absolute value.

    **Returns:** a `FeatureMSEPredictor` (a pytree holding the
    eigendecomposition of $G$).

    **Example:**

    ```pycon
    >>> x_train = jnp.linspace(-1.0, 1.0, 6)[:, None]
    >>> y_train = jnp.sin(3 * x_train)                        # (6, 1)
    >>> x_test = jnp.array([[0.2], [1.5]])
    >>> model = et.Serial(et.Dense(512, b_std=0.1), et.Relu(), et.Dense(1, b_std=0.1))
    >>> phi = jax.random.normal(jax.random.key(0), (6, 20))           # train features
    >>> phi_test = jax.random.normal(jax.random.key(1), (2, 20))
    >>> features_mse = et.predict.gradient_descent_mse_features
    >>> by_features = features_mse(phi, y_train, diag_reg=1e-3)
    >>> by_kernel = et.predict.gradient_descent_mse(phi @ phi.T, y_train, diag_reg=1e-3)
    >>> ts = jnp.array([1.0, jnp.inf])
    >>> f_test = by_features(ts, phi_test)
    >>> bool(jnp.allclose(f_test, by_kernel(ts, None, 0.0, phi_test @ phi.T)))
    True
    ```
    """
    phi = jnp.asarray(train_features)
    if not jnp.issubdtype(phi.dtype, jnp.inexact):
        phi = phi.astype(jnp.result_type(float))
    y = jnp.asarray(y_train, phi.dtype)
    if phi.ndim != 2:
        raise ValueError(
            f"{_WHERE}: `train_features` has shape {phi.shape}; give a matrix "
            "`(N, d)`, one feature vector per training example (flatten spatial "
            "features first)."
        )
    if y.ndim != 2 or y.shape[0] != phi.shape[0]:
        raise ValueError(
            f"{_WHERE}: `y_train` has shape {y.shape}; it must be `(N, K)` with "
            f"N = {phi.shape[0]} rows, one per training feature vector."
        )
    if np.ndim(diag_reg) != 0:
        raise ValueError(f"{_WHERE}: `diag_reg` must be a scalar.")
    learning_rate = jnp.asarray(learning_rate, phi.dtype)
    diag_reg = jnp.asarray(diag_reg, phi.dtype)
    absolute = bool(diag_reg_absolute_scale)
    evals, evecs, projected, shift = _factorize(phi, y, diag_reg, absolute)
    # The features join the predictor outside the compiled function: returning
    # an input from `jit` would copy all N x d of them.
    return FeatureMSEPredictor(
        eigenvalues=evals,
        eigenvectors=evecs,
        projected_targets=projected,
        train_features=phi,
        shift=shift,
        learning_rate=learning_rate,
        n_outputs=y.size,
    )


@eqx.filter_jit
def _factorize(phi, y, diag_reg, absolute):
    r"""The eigendecomposition of $G = \Phi^\top\Phi$, $W^\top\Phi^\top y$
    and the absolute regularizer."""
    gram = phi.T @ phi
    evals, evecs = jnp.linalg.eigh(gram)
    shift = diag_reg if absolute else diag_reg * jnp.trace(gram) / phi.shape[0]
    # A NaN or inf feature makes its column's squared norm NaN or inf.
    finite = jnp.all(jnp.isfinite(jnp.diagonal(gram)))
    evals = eqx.error_if(
        evals,
        ~finite,
        f"et.predict.{_WHERE}: the training features contain NaN or inf (or "
        "values whose squares overflow; rescale the inputs).",
    )
    return evals, evecs, evecs.T @ (y.T @ phi).T, shift
