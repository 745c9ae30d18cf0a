r"""`from_network`: the feature model that mirrors an eqtangents network."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import numpy as np

from .._layer import AbstractLayer
from .._layers.combinators import Parallel as _EtParallel
from .._layers.combinators import Repeat as _EtRepeat
from .._layers.combinators import Serial as _EtSerial
from ._combinators import Parallel
from ._features import AbstractFeatureLayer, Serial

# Hyperparameters of network layers that change only the finite-width forward
# pass, never the kernel (dropped when the feature layer does not take them).
_FORWARD_ONLY = frozenset({"approximate"})


def _alias_leaky_relu(layer):
    return "ABRelu", {"a": layer.alpha, "b": 1.0}


def _alias_abs(layer):
    return "ABRelu", {"a": -1.0, "b": 1.0}


# Network layers without a feature layer of their own name, and the feature
# layer (with its arguments) that computes the same kernel.
_ALIASES = {"LeakyRelu": _alias_leaky_relu, "Abs": _alias_abs}


def from_network(
    model: AbstractLayer,
    *,
    method: str = "random_features",
    feature_dim: int = 1024,
    per_layer: dict | None = None,
) -> AbstractFeatureLayer:
    r"""The (uninitialised) feature model that mirrors the network `model`.

    Each layer of the network is replaced by the feature layer of the same name
    in `et.features` (`et.Dense` by `features.Dense`, `et.Conv` by
    `features.Conv`, ...), with the network layer's hyperparameters (`W_std`,
    `b_std`, `parameterization`, `out_features`, `kernel_size`, `axis`, ...);
    `et.Serial` and `et.Parallel` become their feature versions and
    `et.Repeat(layer, n)` becomes a `features.Serial` of `n` copies, each with
    its own sketch. `et.LeakyRelu` and `et.Abs` map to `features.ABRelu` when
    the feature layers of their own names do not exist. Weights of an
    initialised network are ignored (the features are those of the infinitely
    wide network).

    A network layer without a feature layer is a `ValueError`, and so is a
    hyperparameter the feature layer does not take, unless it has the network
    layer's default value (or only changes the forward pass, like
    `et.Gelu(approximate=...)`): the feature model never computes another
    network's kernel silently.

    **Arguments:**

    - `model`: an eqtangents network.
    - `method`: passed to every feature layer that takes a `method` (the
      activations), which checks it: `"random_features"`, `"exact"` (for
      debugging), or another method those layers offer (`"poly_sketch"`, ...).
    - `feature_dim`: unless `method="exact"`, every size argument (named
      `*_dim`, e.g. `nngp_dim`, `step_dim`, `sketch_dim` of `features.Relu`) of
      those layers. Linear layers (`Dense`, `Conv`, pooling) keep their exact
      features unless `per_layer` sketches them.
    - `per_layer`: keyword arguments for single layers, overriding the above:
      `{key: dict(...)}`, where `key` is
      - an `int`: the position of the layer in the network, counting the
        layers other than `Serial`, `Parallel` and `Repeat` depth first from 0
        (`FanOut`, `FanInSum`, ... count; for a plain `et.Serial` it is the
        index into `model.layers`);
      - a layer of `model` (matched by identity: every occurrence of that
        object);
      - a network layer class, e.g. `et.Relu` (every layer that is an
        instance of it).
      Class entries apply first (in the order given), then layer entries, then
      positions. A key that matches no layer is an error.

    **Returns:** the feature model; call `init(key, x.shape[1:])` on it.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (3, 4)) / 2     # (N, C)
    >>> model = et.Serial(et.Dense(512, 1.5, 0.05), et.Relu(), et.Dense(1, 1.5))
    >>> fmodel = et.features.from_network(model, feature_dim=4096).init(
    ...     jax.random.key(1), x.shape[1:])
    >>> nngp, ntk = et.features.kernel(fmodel(et.features.Features.from_inputs(x)))
    >>> k = model.kernel(x, None)
    >>> float(jnp.max(jnp.abs(ntk - k.ntk)) / jnp.max(k.ntk)) < 0.05
    True
    >>> layers = et.features.from_network(model, per_layer={1: dict(method="exact")})
    >>> type(layers.layers[1]).__name__
    'Relu'
    ```
    """
    if not isinstance(model, AbstractLayer):
        raise ValueError(
            f"features.from_network: `model` is {type(model).__name__}, not an "
            "eqtangents network (`et.Serial(...)` of `et` layers)."
        )
    if not isinstance(method, str) or not method:
        raise ValueError(
            "features.from_network: `method` must be the name of a method of the "
            f"activation feature layers (e.g. 'random_features'), got {method!r}."
        )
    if not isinstance(feature_dim, int) or isinstance(feature_dim, bool):
        raise ValueError(
            f"features.from_network: `feature_dim` must be an int, got {feature_dim!r}."
        )
    if feature_dim <= 0:
        raise ValueError(
            f"features.from_network: `feature_dim` must be positive, got {feature_dim}."
        )
    walk = _Walk(method, feature_dim, _check_per_layer(per_layer))
    fmodel = walk.convert(model)
    unused = [key for key in walk.per_layer if not any(key is k for k in walk.used)]
    if unused:
        raise ValueError(
            f"features.from_network: `per_layer` keys {unused!r} match no layer of "
            f"the network (it has {walk.count} layers, positions 0..{walk.count - 1}, "
            "not counting Serial, Parallel and Repeat)."
        )
    return fmodel


def _check_per_layer(per_layer) -> dict:
    if per_layer is None:
        return {}
    if not isinstance(per_layer, dict):
        raise ValueError(
            "features.from_network: `per_layer` must be a dict "
            f"{{position, layer or layer class: dict(...)}}, got "
            f"{type(per_layer).__name__}."
        )
    for key, value in per_layer.items():
        ok_key = (
            (isinstance(key, int) and not isinstance(key, bool) and key >= 0)
            or isinstance(key, AbstractLayer)
            or (isinstance(key, type) and issubclass(key, AbstractLayer))
        )
        if not ok_key:
            raise ValueError(
                f"features.from_network: `per_layer` key {key!r} is not a position "
                "(a non-negative int), a layer of the network, or an eqtangents "
                "layer class."
            )
        if not isinstance(value, dict):
            raise ValueError(
                f"features.from_network: `per_layer[{key!r}]` must be a dict of "
                f"keyword arguments, got {type(value).__name__}."
            )
    return dict(per_layer)


class _Walk:
    """The state of one conversion: options, and positions counted so far."""

    def __init__(self, method: str, feature_dim: int, per_layer: dict):
        self.method = method
        self.feature_dim = feature_dim
        self.per_layer = per_layer
        self.count = 0
        self.used: list[Any] = []

    def convert(self, layer) -> AbstractFeatureLayer:
        if isinstance(layer, _EtSerial):
            return Serial(*(self.convert(lyr) for lyr in layer.layers))
        if isinstance(layer, _EtParallel):
            return Parallel(*(self.convert(lyr) for lyr in layer.layers))
        if isinstance(layer, _EtRepeat):
            return Serial(*(self.convert(layer.layer) for _ in range(layer.n)))
        position = self.count
        self.count += 1
        return self.leaf(layer, position)

    def leaf(self, layer, position: int) -> AbstractFeatureLayer:
        from .. import features

        et_name = type(layer).__name__
        where = f"features.from_network: layer {position} (et.{et_name})"
        name, kwargs = et_name, None
        if not hasattr(features, name) and et_name in _ALIASES:
            name, kwargs = _ALIASES[et_name](layer)
        cls = getattr(features, name, None)
        if not (isinstance(cls, type) and issubclass(cls, AbstractFeatureLayer)):
            raise ValueError(
                f"{where}: there is no feature layer for et.{et_name} "
                f"(`features.{name}` does not exist); build this part of the model "
                "by hand, or change the network."
            )
        params = _parameters(cls)
        if kwargs is None:
            kwargs = _hyperparameters(layer, params, where, name)
        if params is not None and "method" in params:
            kwargs["method"] = self.method
            if self.method != "exact":
                for p in params:
                    if p.endswith("_dim") and p not in kwargs:
                        kwargs[p] = self.feature_dim
        for key, value in self.per_layer.items():
            if isinstance(key, type) and isinstance(layer, key):
                kwargs.update(self._override(key, value, params, where, name))
        for key, value in self.per_layer.items():
            if key is layer:
                kwargs.update(self._override(key, value, params, where, name))
        for key, value in self.per_layer.items():
            if type(key) is int and key == position:
                kwargs.update(self._override(key, value, params, where, name))
        return cls(**kwargs)

    def _override(self, key, value: dict, params, where: str, name: str) -> dict:
        self.used.append(key)
        if params is not None:
            unknown = [k for k in value if k not in params]
            if unknown:
                raise ValueError(
                    f"{where}: `per_layer[{key!r}]` gives {unknown}, which "
                    f"features.{name} does not take (it takes {sorted(params)})."
                )
        return dict(value)


def _parameters(cls) -> frozenset[str] | None:
    """The keyword arguments a feature layer takes (`None`: any)."""
    signature = inspect.signature(cls)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    ):
        return None
    return frozenset(n for n, p in signature.parameters.items() if p.kind in kinds)


def _hyperparameters(layer, params, where: str, name: str) -> dict:
    """The network layer's hyperparameters that the feature layer takes."""
    try:
        defaults = {
            n: p.default
            for n, p in inspect.signature(type(layer)).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
    except (TypeError, ValueError):
        defaults = {}
    kwargs = {}
    for field in dataclasses.fields(layer):
        value = getattr(layer, field.name)
        if _is_weight(value):
            continue
        if params is None or field.name in params:
            kwargs[field.name] = value
            continue
        if value is None or field.name in _FORWARD_ONLY:
            continue
        if field.name in defaults and _same(value, defaults[field.name]):
            continue
        raise ValueError(
            f"{where}: features.{name} takes no `{field.name}`, so it cannot mirror "
            f"`{field.name}={value!r}`; use the default, or build this part of the "
            "feature model by hand."
        )
    return kwargs


def _is_weight(value) -> bool:
    """Arrays of weights (and submodules) of an initialised network."""
    if isinstance(value, AbstractLayer):
        return True
    return hasattr(value, "shape") and hasattr(value, "dtype") and len(value.shape) > 0


def _same(value, default) -> bool:
    if value is default:
        return True
    try:
        return bool(np.all(np.asarray(value) == np.asarray(default)))
    except (TypeError, ValueError):
        return False
