"""`et.predict` reproduces every call recorded from Neural Tangents 0.6.5.

`shared/reference/predict/predict.json` names each call and the arrays it
produced (float64); the kernels the calls used are stored next to them, so no
layer code runs here. Closed forms must match to rtol 1e-8, the ODE to 1e-5.
"""

from __future__ import annotations

import collections
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqtangents as et

from ._reference import PREDICT

P = et.predict
CLOSED_RTOL, CLOSED_ATOL = 1e-8, 1e-12
ODE_RTOL, ODE_ATOL = 1e-5, 1e-9

if not (PREDICT / "predict.json").exists():  # pragma: no cover
    pytest.skip("reference predictions not found", allow_module_level=True)

SPEC = json.loads((PREDICT / "predict.json").read_text())
CALLS = {call["name"]: call for call in SPEC["calls"]}
REF = dict(np.load(PREDICT / "predict.npz"))
Kernels = collections.namedtuple("Kernels", "nngp ntk")
COMPARED: set[str] = set()


def check(actual, key: str, rtol=CLOSED_RTOL, atol=CLOSED_ATOL) -> None:
    expected = REF[key]
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (key, actual.shape, expected.shape)
    assert actual.dtype == np.float64, key
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=key)
    COMPARED.add(key)


def kernel_fn(x1, x2, get):
    """The stored NT kernels, looked up by which stored inputs were passed."""

    def which(x):
        if np.array_equal(np.asarray(x), REF["x_train"]):
            return "train"
        assert np.array_equal(np.asarray(x), REF["x_test"])
        return "test"

    a = which(x1)
    b = a if x2 is None else which(x2)
    pair = f"{a}_{b}"
    if isinstance(get, str):
        return jnp.asarray(REF[f"{get}_{pair}"])
    return Kernels(*(jnp.asarray(REF[f"{g}_{pair}"]) for g in ("nngp", "ntk")))


def _gd_mse_names():
    return [n for n in CALLS if n.startswith("gd_mse_")]


@pytest.mark.parametrize("name", _gd_mse_names())
def test_gradient_descent_mse(name):
    lr, reg, absolute = re.fullmatch(
        r"gd_mse_lr([\d.]+)_reg([\d.]+)_abs([01])", name
    ).groups()
    predictor = P.gradient_descent_mse(
        REF["ntk_train_train"],
        REF["y_train"],
        learning_rate=float(lr),
        diag_reg=float(reg),
        diag_reg_absolute_scale=bool(int(absolute)),
    )
    args = (REF["fx_train_0"], REF["fx_test_0"], REF["ntk_test_train"])
    train_t, test_t = predictor(REF["t"], *args)
    check(train_t, f"{name}_train_t")
    check(test_t, f"{name}_test_t")
    train_inf, test_inf = predictor(None, *args)
    check(train_inf, f"{name}_train_inf")
    check(test_inf, f"{name}_test_inf")


@pytest.mark.parametrize("name", [n for n in CALLS if n.startswith("ensemble_")])
def test_gradient_descent_mse_ensemble(name):
    reg = float(name[len("ensemble_reg") :])
    predictor = P.gradient_descent_mse_ensemble(
        kernel_fn, REF["x_train"], REF["y_train"], learning_rate=1.0, diag_reg=reg
    )
    for t_name, t in (("t", REF["t"][1:]), ("inf", None)):
        for suffix, x_test in (("", REF["x_test"]), ("_train", None)):
            out = predictor(t=t, x_test=x_test, get=("nngp", "ntk"), compute_cov=True)
            for g in ("nngp", "ntk"):
                mean, cov = getattr(out, g)
                check(mean, f"{name}_{g}_{t_name}{suffix}_mean")
                check(cov, f"{name}_{g}_{t_name}{suffix}_cov")


@pytest.mark.parametrize("name", [n for n in CALLS if n.startswith("gp_")])
def test_gp_inference(name):
    reg = float(name[len("gp_reg") :])
    k_dd = Kernels(REF["nngp_train_train"], REF["ntk_train_train"])
    k_td = Kernels(REF["nngp_test_train"], REF["ntk_test_train"])
    k_tt = Kernels(REF["nngp_test_test"], REF["ntk_test_test"])
    predictor = P.gp_inference(k_dd, REF["y_train"], diag_reg=reg)
    out = predictor(("nngp", "ntk", "ntkgp"), k_td, k_tt)
    for g in ("nngp", "ntk", "ntkgp"):
        check(getattr(out, g).mean, f"{name}_{g}_mean")
        check(getattr(out, g).covariance, f"{name}_{g}_cov")


def cross_entropy(fx, y):
    return jnp.mean(-jnp.sum(jax.nn.log_softmax(fx) * jax.nn.softmax(y), axis=-1))


@pytest.mark.parametrize("name", [n for n in CALLS if n.startswith("gd_xent_")])
def test_gradient_descent_ode(name):
    lr, mom = name[len("gd_xent_lr") :].split("_mom")
    momentum = None if mom == "None" else float(mom)
    predictor = P.gradient_descent(
        cross_entropy, REF["ntk_train_train"], REF["y_train"], float(lr), momentum
    )
    train_t, test_t = predictor(
        REF["t_ode"], REF["fx_train_0"], REF["fx_test_0"], REF["ntk_test_train"]
    )
    check(train_t, f"{name}_train_t", ODE_RTOL, ODE_ATOL)
    check(test_t, f"{name}_test_t", ODE_RTOL, ODE_ATOL)


def test_max_learning_rate():
    assert "max_lr" in CALLS
    check(P.max_learning_rate(REF["ntk_train_train"]), "max_lr")
    check(
        P.max_learning_rate(
            REF["ntk_train_train"], y_train_size=REF["y_train"].size, momentum=0.9
        ),
        "max_lr_mom",
    )


def test_every_recorded_output_was_compared():
    """Runs last in this file: every output array of every call was checked."""
    inputs = {
        "x_train",
        "x_test",
        "y_train",
        "fx_train_0",
        "fx_test_0",
        "t",
        "t_ode",
    } | {
        f"{a}_{b}"
        for a in ("nngp", "ntk")
        for b in ("train_train", "test_train", "test_test")
    }
    outputs = set(REF) - inputs
    missing = sorted(outputs - COMPARED)
    assert not missing, f"outputs never compared: {missing}"
    assert COMPARED == outputs
