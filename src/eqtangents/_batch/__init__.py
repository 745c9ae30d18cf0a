"""Tiled, sharded and out-of-core evaluation of kernel functions."""

from ._batch import batch as batch
