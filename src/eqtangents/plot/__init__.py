"""The figures researchers draw again and again, with matplotlib.

Needs the `plot` extra (`pip install "eqtangents[plot]"`). Every function takes
NumPy or JAX arrays, draws on `ax` (a new figure's axes when it is `None`) and
returns the axes, so figures compose with plain matplotlib:

- `kernel_heatmap`: a kernel matrix as an image.
- `eigenvalue_spectrum`: its eigenvalues, largest first, on log axes.
- `prediction_bands`: predictive means with standard-deviation bands.
- `loss_curves`: train and test loss against training time, from the
  predictions `et.predict` makes at many times.
"""

from ._kernels import eigenvalue_spectrum as eigenvalue_spectrum
from ._kernels import kernel_heatmap as kernel_heatmap
from ._training import loss_curves as loss_curves
from ._training import prediction_bands as prediction_bands
