"""eqtangents.plot: what each figure draws is the number it claims to show."""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pytest
import scipy.linalg

import eqtangents as et

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _kernel(eigenvalues, seed=0):
    """A symmetric matrix with the given eigenvalues and random eigenvectors."""
    n = len(eigenvalues)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return (q * np.asarray(eigenvalues)) @ q.T


def test_kernel_heatmap_shows_the_matrix():
    k = _kernel([4.0, 2.0, 1.0, 0.5, 0.25])
    ax = et.plot.kernel_heatmap(k, title="NTK")
    (image,) = ax.get_images()
    np.testing.assert_array_equal(image.get_array(), k)
    assert ax.get_title() == "NTK"
    assert len(ax.figure.axes) == 2  # the image and its colour bar


def test_eigenvalue_spectrum_plots_the_eigenvalues_largest_first():
    eigenvalues = np.array([0.1, 8.0, 2.0, 0.5, 1e-3, -1e-12])
    ax = et.plot.eigenvalue_spectrum(_kernel(eigenvalues), label="k")
    (line,) = ax.get_lines()
    expected = np.sort(eigenvalues[eigenvalues > 0])[::-1] / 8.0
    np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-9)
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 6))
    assert ax.get_xscale() == ax.get_yscale() == "log"
    raw = et.plot.eigenvalue_spectrum(_kernel(eigenvalues), normalize=False)
    np.testing.assert_allclose(raw.get_lines()[0].get_ydata(), expected * 8.0)


def test_prediction_bands_are_mean_plus_minus_n_standard_deviations():
    x = np.array([0.3, -1.0, 2.0, 0.0])
    mean = np.array([[1.0], [0.0], [-1.0], [0.5]])
    cov = _kernel([1.0, 0.5, 0.25, 0.125]) + np.eye(4)
    ax = et.plot.prediction_bands(x, mean, cov, n_std=3.0)
    (line,) = ax.get_lines()
    order = np.argsort(x)
    np.testing.assert_array_equal(line.get_xdata(), x[order])
    np.testing.assert_array_equal(line.get_ydata(), mean[order, 0])
    (band,) = ax.collections
    vertices = band.get_paths()[0].vertices
    std = np.sqrt(np.diagonal(cov))[order]
    for xi, mi, si in zip(x[order], mean[order, 0], std):
        at = vertices[np.isclose(vertices[:, 0], xi)][:, 1]
        np.testing.assert_allclose([at.min(), at.max()], [mi - 3 * si, mi + 3 * si])
    variances = et.plot.prediction_bands(x, mean, np.diagonal(cov))
    np.testing.assert_allclose(
        variances.collections[0].get_paths()[0].vertices,
        et.plot.prediction_bands(x, mean, cov).collections[0].get_paths()[0].vertices,
    )


def test_loss_curves_follow_gradient_flow_in_closed_form():
    """With f_0 = 0, gradient flow on MSE leaves the training residual
    f_t - y = -exp(-K t / N) y (learning rate 1, one output)."""
    rng = np.random.default_rng(1)
    n = 6
    k = _kernel(rng.uniform(0.1, 3.0, n))
    y = rng.normal(size=(n, 1))
    k_test = rng.normal(size=(3, n)) * 0.1
    y_test = rng.normal(size=(3, 1))
    ts = np.logspace(-1, 2, 7)
    predictor = et.predict.gradient_descent_mse(k, y)
    f_train, f_test = predictor(ts, 0.0, 0.0, k_test)
    ax = et.plot.loss_curves(ts, f_train, y, f_test, y_test, label="NTK")
    train, test = ax.get_lines()
    expected = [np.mean((scipy.linalg.expm(-k * t / n) @ y) ** 2) for t in ts]
    np.testing.assert_allclose(train.get_ydata(), expected, rtol=1e-9)
    assert train.get_label() == "NTK train" and test.get_label() == "NTK test"
    np.testing.assert_allclose(
        test.get_ydata(), np.mean((np.asarray(f_test) - y_test) ** 2, axis=(1, 2))
    )


def test_bad_input_names_the_figure_and_the_fix():
    k = _kernel([2.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="kernel_heatmap: needs an \\(N1, N2\\)"):
        et.plot.kernel_heatmap(np.zeros((3, 3, 2, 2)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        et.plot.kernel_heatmap(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="eigenvalue_spectrum: needs a square"):
        et.plot.eigenvalue_spectrum(np.ones((3, 4)))
    with pytest.raises(ValueError, match="not symmetric; pass k\\(x, x\\)"):
        et.plot.eigenvalue_spectrum(k + np.triu(np.ones((3, 3)), 1))
    with pytest.raises(ValueError, match="plot one output at a time"):
        et.plot.prediction_bands(np.zeros(3), np.zeros((3, 2)), k)
    with pytest.raises(ValueError, match="negative variances"):
        et.plot.prediction_bands(np.zeros(3), np.zeros(3), -np.ones(3))
    with pytest.raises(ValueError, match="positive times"):
        et.plot.loss_curves(np.array([0.0, 1.0]), np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="one prediction per time"):
        et.plot.loss_curves(np.ones(2), np.zeros((2, 4)), np.zeros(3))
    with pytest.raises(ValueError, match="both `f_test` and `y_test`"):
        et.plot.loss_curves(np.ones(2), np.zeros((2, 3)), np.zeros(3), np.zeros(3))


def test_missing_matplotlib_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'eqtangents\[plot\]'"):
        et.plot.kernel_heatmap(np.eye(2))
