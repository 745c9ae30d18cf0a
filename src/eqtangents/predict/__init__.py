"""Predictions of trained infinitely wide (or linearized) networks from kernels.

Closed forms for gradient flow on MSE (`gradient_descent_mse`), infinite
ensembles (`gradient_descent_mse_ensemble`), exact GP posteriors
(`gp_inference`), an ODE solver for any loss (`gradient_descent`) and the
largest stable learning rate (`max_learning_rate`). The signatures follow
Neural Tangents' `nt.predict`, so `f(k, y, ...)(t, ...)` reads the same.

Differences from NT 0.6.5:

- Each constructor computes its factorization immediately and returns a pytree
  (`MSEPredictor`, `MSEEnsemblePredictor`, `GPInference`,
  `GradientDescentPredictor`) instead of a closure with hidden `lru_cache`s.
  `solver=` picks it: `"eigh"` (any `t`), `"cholesky"` or an iterative
  `"cg"`/`lineax` solver (`t=None` only). Predictors can be passed through
  `jit`, `vmap` and `grad` like any other pytree.
- `gradient_descent_mse_ensemble` computes the train-train kernels at
  construction, for the regimes named by its `get=` argument; keyword
  arguments for `kernel_fn` are passed to every call (call-time ones override).
- `gradient_descent` uses `diffrax` (default `Tsit5`, tolerances `1e-10` in
  float64 and `1e-5` in float32); it rejects `t=None`, accepts times in any
  order, and resumes from an `ODEState` taken as the new time 0.
- Bad input raises instead of returning NaNs: structural mistakes raise
  `ValueError`; a non-symmetric train-train kernel raises `ValueError` (or an
  `eqx.error_if` error under `jit`); NaN kernels, kernels that are not positive
  semi-definite, and singular kernels at `t = infinity` raise through
  `eqx.error_if`. At finite `t` a zero eigenvalue contributes its limit
  ($-t/n$) rather than NaN.
- `max_learning_rate` returns a JAX scalar (jittable) rather than a float.
"""

from ._ensemble import MSEEnsemblePredictor as MSEEnsemblePredictor
from ._ensemble import gradient_descent_mse_ensemble as gradient_descent_mse_ensemble
from ._factor import AbstractFactorization as AbstractFactorization
from ._factor import CholeskyFactorization as CholeskyFactorization
from ._factor import EighFactorization as EighFactorization
from ._factor import IterativeFactorization as IterativeFactorization
from ._features import FeatureMSEPredictor as FeatureMSEPredictor
from ._features import gradient_descent_mse_features as gradient_descent_mse_features
from ._gp import GPInference as GPInference
from ._gp import gp_inference as gp_inference
from ._learning_rate import max_learning_rate as max_learning_rate
from ._mse import MSEPredictor as MSEPredictor
from ._mse import gradient_descent_mse as gradient_descent_mse
from ._ode import GradientDescentPredictor as GradientDescentPredictor
from ._ode import ODEState as ODEState
from ._ode import gradient_descent as gradient_descent
from ._utils import Gaussian as Gaussian
