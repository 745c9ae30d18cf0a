"""Small data sets shipped with eqtangents (no download at run time)."""

from ._digits import load_digits as load_digits
