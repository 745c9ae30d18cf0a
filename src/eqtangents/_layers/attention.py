"""Global self-attention over all spatial positions."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._kernel import Kernel
from .._layer import AbstractLayer, Layout, Shape, as_shape, missing_weights
from .._mask import check_mask
from .._typing import Scalar
from ._affine import check_parameterization, to_std
from ._attention import (
    MECHANISMS,
    POS_EMB_TYPES,
    Covariances,
    flatten_positions,
    identity_rule,
    linear_scaling_rule,
    mask_keys,
    masked_embeddings,
    mechanism_fn,
    pos_emb_covariance,
    unflatten_positions,
)

Parameterization = Literal["ntk", "standard"]
_NAME = "GlobalSelfAttention"


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"{_NAME}: `{name}` must be a positive integer, got {value!r}."
        )
    return value


def _choice(value, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.upper() not in choices:
        raise ValueError(
            f"{_NAME}: `{name}` must be one of {choices} (any case), got {value!r}."
        )
    return value.upper()


class GlobalSelfAttention(AbstractLayer):
    r"""Multi-head dot-product self-attention over all positions of one example.

    Neural Tangents' `stax.GlobalSelfAttention` ("Infinite attention", Hron et
    al. 2020). The positions of an input `(C, *spatial)` are flattened into
    $L = \prod_j S_j$ tokens $x_s \in \mathbb{R}^C$. Head $h$ computes keys
    $k_s = W^K_h x_s$, queries $q_s = W^Q_h x_s$, values $v_s = W^V_h x_s$ and
    $f_h(x)_s = \sum_t \phi(G_h)_{st} v_t$ with logits
    $G_{st} = \frac{\sigma_Q\sigma_K}{C\, d} q_s \cdot k_t$; the output is
    $y_s = \frac{\sigma_O \sigma_V}{\sqrt{d_v H C}} W^O [f_1(x)_s; \dots; f_H(x)_s]
    + \sigma_b b$ (NTK parameterization, all weights standard normal). $\phi$ is
    `attention_mechanism` (a softmax over $t$, the identity, `abs` or `relu`).

    - `linear_scaling=True`: $d = n_{key}$ and queries are tied to keys
      ($W^Q_h = W^K_h$). As $n_{key} \to \infty$ the logits converge to
      $\sigma_Q\sigma_K \tilde K$, with $\tilde K = K$ the input covariance
      (mixed with positional embeddings, below). With $\Gamma = \phi(\sigma_Q
      \sigma_K \tilde K_{11})$ per example and $K_v$ the covariance the values
      see, as the numbers of heads and channels go to infinity

      $$K' = \sigma_O^2\sigma_V^2\, \Gamma_1 K_v \Gamma_2^\top + \sigma_b^2,
        \qquad \Theta' = \sigma_O^2\sigma_V^2\, \Gamma_1 \Theta_v \Gamma_2^\top
        + \sigma_b^2 + 2 (K' - \sigma_b^2).$$

    - `linear_scaling=False`: $d = \sqrt{n_{key}}$, independent $W^Q, W^K$.
      The logits become Gaussian; only $\phi$ = identity has a closed form,
      $\langle A, B\rangle = \sum_{s, s'} A_{ss'} B_{ss'}$,

      $$K' = \sigma^2 \tilde K \langle \tilde K, K_v\rangle + \sigma_b^2, \quad
        \Theta' = \sigma^2\big[(\langle\tilde\Theta, K_v\rangle
        + \langle\tilde K, \Theta_v\rangle)\tilde K + \langle\tilde K, K_v\rangle
        (\tilde\Theta + 4\tilde K)\big] + \sigma_b^2,$$

      $\sigma = \sigma_Q\sigma_K\sigma_O\sigma_V$. The other mechanisms raise a
      `ValueError` in `kernel` (the finite network works; estimate its kernel
      with `et.monte_carlo_kernel` or `et.empirical_kernel`).

    Positional embeddings $p \in \mathbb{R}^{P \times L}$ are standard normal
    parameters scaled by $\sigma_p$ (`W_pos_emb_std`), with covariance $R$ over
    positions ($R = I$, or $R_{ss'} = \mathrm{decay}(\sum_j|s_j - s'_j|^{p})$
    through its Cholesky factor). `"SUM"` adds them to the inputs,
    $\tilde K = K + \sigma_p^2 R$; `"CONCAT"` appends them as channels,
    $\tilde K = \frac{C K + P\sigma_p^2 R}{C + P}$. The keys and queries always
    see them; the values only with `val_pos_emb` ($K_v = \tilde K$, else $K_v
    = K$); $\tilde\Theta, \Theta_v$ mix $\Theta$ likewise (the embeddings are
    trained). The layer needs full spatial covariances of its input, accepts
    any input (Gaussian or not: only its covariance enters) and has Gaussian
    outputs.

    With `parameterization="standard"` every weight is drawn with variance
    $\sigma^2/\mathrm{fan\ in}$ (the tied key-query matrix with $\sigma_Q
    \sigma_K / C$, the embeddings with $\sigma_p^2$) and the logits are scaled
    by $1/d$ alone. $K'$ is unchanged; in $\Theta'$ each weight's term has its
    own variance replaced by its fan-in (as in `et.Dense`): $2(K'-\sigma_b^2)$
    becomes $(d_v H\sigma_V^2 + C_v\sigma_O^2)\Gamma_1 K_v\Gamma_2^\top$ (and
    $4\sigma^2\tilde K\langle\tilde K, K_v\rangle$ becomes $(d_v H \sigma_V^2
    \sigma_Q^2\sigma_K^2 + C_v\sigma_O^2\sigma_Q^2\sigma_K^2 + C_k(\sigma_K^2 +
    \sigma_Q^2)\sigma_O^2\sigma_V^2)\tilde K\langle\tilde K, K_v\rangle$),
    $\sigma_b^2$ becomes $1$, and $\sigma_p^2$ in $\tilde\Theta$ becomes $1$.

    Masks (`mask_constant`, or `mask=` in the forward pass) work as in Neural
    Tangents: masked keys get the logit $-\infty$ under the softmax (zero under
    the other mechanisms), and the embeddings vanish at masked positions ($R$
    is zero wherever one enters).

    **Arguments:**

    - `out_channels`: output channels (NT's `n_chan_out`; infinite in `kernel`).
    - `key_channels`: key and query channels per head (NT's `n_chan_key`).
    - `value_channels`: value channels per head (NT's `n_chan_val`).
    - `n_heads`: number of heads.
    - `linear_scaling`: tie keys and queries and scale logits by $1/n_{key}$
      (closed-form kernels for every mechanism), or scale by
      $1/\sqrt{n_{key}}$ with independent weights.
    - `W_key_std`, `W_value_std`, `W_query_std`, `W_out_std`: weight standard
      deviations; in the NTK parameterization only the products
      $\sigma_Q\sigma_K$ and $\sigma_O\sigma_V$ matter.
    - `b_std`: bias standard deviation, `None` for no bias.
    - `attention_mechanism`: `"SOFTMAX"`, `"IDENTITY"`, `"ABS"` or `"RELU"`.
    - `pos_emb_type`: `"NONE"`, `"SUM"` or `"CONCAT"`.
    - `pos_emb_p_norm`: the exponent $p$ of the distance in `pos_emb_decay_fn`.
    - `pos_emb_decay_fn`: maps distances to the embeddings' covariance (must
      give a positive definite $R$); `None` for independent positions.
    - `n_chan_pos_emb`: embedding channels $P$; `None` means $C$ (with `"SUM"`
      it must be `None` or $C$).
    - `W_pos_emb_std`: embedding standard deviation $\sigma_p$.
    - `val_pos_emb`: whether the values see the embeddings too.
    - `parameterization`: `"ntk"` (Neural Tangents' only one) or `"standard"`.
    - `in_channels`, `spatial_shape`, `key`: give `in_channels` and `key` (and,
      with positional embeddings, `spatial_shape`) to draw the weights now;
      otherwise call `init(key, input_shape)`.

    **Example:**

    ```pycon
    >>> x = jax.random.normal(jax.random.key(0), (2, 3, 5))      # (N, C, L)
    >>> model = et.Serial(
    ...     et.Conv(64, (3,), padding="SAME"),
    ...     et.GlobalSelfAttention(64, 64, 64, n_heads=2),
    ...     et.Relu(), et.GlobalAvgPool(), et.Dense(1),
    ... )
    >>> model.kernel(x, None, "nngp").shape
    (2, 2)
    >>> net = model.init(jax.random.key(1), x.shape[1:])
    >>> jax.vmap(net)(x).shape
    (2, 1)
    ```
    """

    out_channels: int = eqx.field(static=True)
    key_channels: int = eqx.field(static=True)
    value_channels: int = eqx.field(static=True)
    n_heads: int = eqx.field(static=True)
    linear_scaling: bool = eqx.field(static=True)
    W_key_std: Float[Array, ""] | float
    W_value_std: Float[Array, ""] | float
    W_query_std: Float[Array, ""] | float
    W_out_std: Float[Array, ""] | float
    b_std: Float[Array, ""] | float | None
    attention_mechanism: str = eqx.field(static=True)
    pos_emb_type: str = eqx.field(static=True)
    pos_emb_p_norm: float = eqx.field(static=True)
    pos_emb_decay_fn: Callable | None = eqx.field(static=True)
    n_chan_pos_emb: int | None = eqx.field(static=True)
    W_pos_emb_std: Float[Array, ""] | float
    val_pos_emb: bool = eqx.field(static=True)
    parameterization: Parameterization = eqx.field(static=True)
    query_weight: Float[Array, "heads key cin"] | None
    key_weight: Float[Array, "heads key cin"] | None
    value_weight: Float[Array, "heads val cval"] | None
    out_weight: Float[Array, "out heads val"] | None
    bias: Float[Array, " out"] | None
    pos_emb: Float[Array, "pos *spatial"] | None
    call_keywords = frozenset({"mask"})

    def __init__(
        self,
        out_channels: int,
        key_channels: int,
        value_channels: int,
        n_heads: int,
        linear_scaling: bool = True,
        W_key_std: Scalar = 1.0,
        W_value_std: Scalar = 1.0,
        W_query_std: Scalar = 1.0,
        W_out_std: Scalar = 1.0,
        b_std: Scalar | None = None,
        attention_mechanism: str = "SOFTMAX",
        pos_emb_type: str = "NONE",
        pos_emb_p_norm: int | float = 2,
        pos_emb_decay_fn: Callable | None = None,
        n_chan_pos_emb: int | None = None,
        W_pos_emb_std: Scalar = 1.0,
        val_pos_emb: bool = False,
        parameterization: Parameterization = "ntk",
        *,
        in_channels: int | None = None,
        spatial_shape: tuple[int, ...] | None = None,
        key: PRNGKeyArray | None = None,
    ):
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.key_channels = _positive_int(key_channels, "key_channels")
        self.value_channels = _positive_int(value_channels, "value_channels")
        self.n_heads = _positive_int(n_heads, "n_heads")
        self.linear_scaling = bool(linear_scaling)
        self.W_key_std = to_std(W_key_std, "W_key_std", _NAME)
        self.W_value_std = to_std(W_value_std, "W_value_std", _NAME)
        self.W_query_std = to_std(W_query_std, "W_query_std", _NAME)
        self.W_out_std = to_std(W_out_std, "W_out_std", _NAME)
        self.b_std = None if b_std is None else to_std(b_std, "b_std", _NAME)
        self.attention_mechanism = _choice(
            attention_mechanism, "attention_mechanism", MECHANISMS
        )
        self.pos_emb_type = _choice(pos_emb_type, "pos_emb_type", POS_EMB_TYPES)
        self.pos_emb_p_norm = float(pos_emb_p_norm)
        if pos_emb_decay_fn is not None and not callable(pos_emb_decay_fn):
            raise ValueError(
                f"{_NAME}: `pos_emb_decay_fn` must be a function or None, got "
                f"{pos_emb_decay_fn!r}."
            )
        self.pos_emb_decay_fn = pos_emb_decay_fn
        if n_chan_pos_emb is not None:
            n_chan_pos_emb = _positive_int(n_chan_pos_emb, "n_chan_pos_emb")
        self.n_chan_pos_emb = n_chan_pos_emb
        self.W_pos_emb_std = to_std(W_pos_emb_std, "W_pos_emb_std", _NAME)
        self.val_pos_emb = bool(val_pos_emb)
        check_parameterization(_NAME, parameterization)
        self.parameterization = parameterization
        self.query_weight = self.key_weight = self.value_weight = None
        self.out_weight = self.bias = self.pos_emb = None
        if (in_channels is None) != (key is None):
            raise ValueError(
                f"{_NAME}: give both `in_channels` and `key` to draw weights now, "
                "or neither and call `init(key, input_shape)` later."
            )
        if key is not None:
            if self.pos_emb_type != "NONE" and spatial_shape is None:
                raise ValueError(
                    f"{_NAME}: positional embeddings depend on the positions; give "
                    "`spatial_shape` as well to draw weights now, or call "
                    "`init(key, input_shape)`."
                )
            c = _positive_int(in_channels, "in_channels")
            shape = (c,) + tuple(spatial_shape or (1,))
            (
                self.query_weight,
                self.key_weight,
                self.value_weight,
                self.out_weight,
                self.bias,
                self.pos_emb,
            ) = _draw(self, key, self._check_shape(shape))

    # ------------------------------------------------------------ geometry

    def _channels(self, c: int) -> tuple[int, int, int]:
        """Embedding channels $P$ and the inputs' widths for keys and values."""
        if self.pos_emb_type == "NONE":
            return 0, c, c
        p = c if self.n_chan_pos_emb is None else self.n_chan_pos_emb
        c_key = c + p if self.pos_emb_type == "CONCAT" else c
        return p, c_key, c_key if self.val_pos_emb else c

    def _check_shape(self, input_shape) -> Shape:
        shape = as_shape(input_shape, self)
        if len(shape) < 2:
            raise ValueError(
                f"{_NAME} attends over spatial positions, but its input has "
                f"per-example shape {shape} without any; it expects `(C, *spatial)` "
                "(e.g. `(C, L)` for a sequence of L tokens, channels first)."
            )
        c = shape[0]
        if (
            self.pos_emb_type == "SUM"
            and self.n_chan_pos_emb is not None
            and self.n_chan_pos_emb != c
        ):
            raise ValueError(
                f"{_NAME}(pos_emb_type='SUM', n_chan_pos_emb={self.n_chan_pos_emb}) "
                f"adds the embeddings to inputs with {c} channels; set "
                f"`n_chan_pos_emb=None` (or {c}), or use `pos_emb_type='CONCAT'`."
            )
        return shape

    def output_shape(self, input_shape: Shape) -> Shape:
        shape = self._check_shape(input_shape)
        if self.key_weight is not None:
            p, c_key, c_val = self._channels(shape[0])
            expected = [
                (self.key_weight.shape, (self.n_heads, self.key_channels, c_key)),
                (self.value_weight.shape, (self.n_heads, self.value_channels, c_val)),
                (self.out_weight.shape, (self.out_channels, self.n_heads,
                                         self.value_channels)),
            ]  # fmt: skip
            if self.pos_emb is not None:
                expected.append((self.pos_emb.shape, (p,) + shape[1:]))
            for got, want in expected:
                if tuple(got) != want:
                    raise ValueError(
                        f"{_NAME} has weights of shape {tuple(got)} where an input "
                        f"of shape {shape} (channels first) with n_heads="
                        f"{self.n_heads} needs {want}; call `init(key, input_shape)` "
                        "for this input."
                    )
        return (self.out_channels,) + shape[1:]

    # ------------------------------------------------------------ finite width

    def init(self, key: PRNGKeyArray, input_shape: Shape) -> GlobalSelfAttention:
        shape = self._check_shape(input_shape)
        return eqx.tree_at(
            lambda a: (
                a.query_weight,
                a.key_weight,
                a.value_weight,
                a.out_weight,
                a.bias,
                a.pos_emb,
            ),
            self,
            _draw(self, key, shape),
            is_leaf=lambda x: x is None,
        )

    def __call__(
        self,
        x: Float[Array, "c *spatial"],
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> Float[Array, "out *spatial"]:
        if self.key_weight is None:
            raise missing_weights(self)
        self.output_shape(tuple(x.shape))
        c, spatial = x.shape[0], x.shape[1:]
        keys_mask = None
        if mask is not None:
            keys_mask = check_mask(_NAME, mask, x.shape).reshape(-1)  # (L,)
            x = jnp.where(keys_mask.reshape(spatial), jnp.zeros((), x.dtype), x)
        p, c_key, c_val = self._channels(c)
        ntk = self.parameterization == "ntk"
        tokens = x.reshape(c, -1)  # (C, L)
        x_key = x_val = tokens
        if self.pos_emb is not None:
            emb = self.pos_emb.astype(x.dtype).reshape(p, -1)
            if self.pos_emb_decay_fn is not None:
                R = pos_emb_covariance(
                    spatial, self.pos_emb_p_norm, self.pos_emb_decay_fn, x.dtype
                )
                emb = emb @ jnp.linalg.cholesky(R).T
            if keys_mask is not None:
                emb = jnp.where(keys_mask, jnp.zeros((), emb.dtype), emb)
            if ntk:
                emb = emb * self.W_pos_emb_std
            if self.pos_emb_type == "SUM":
                x_key = tokens + emb
            else:
                x_key = jnp.concatenate([tokens, emb], axis=0)
            if self.val_pos_emb:
                x_val = x_key
        cast = lambda w: w.astype(x.dtype)  # noqa: E731
        keys = jnp.einsum("hkc,cl->hkl", cast(self.key_weight), x_key)
        if self.linear_scaling:
            queries = keys
        else:
            queries = jnp.einsum("hkc,cl->hkl", cast(self.query_weight), x_key)
        logits = jnp.einsum("hks,hkt->hst", queries, keys)
        d = self.key_channels if self.linear_scaling else math.sqrt(self.key_channels)
        scale = self.W_query_std * self.W_key_std / c_key if ntk else 1.0
        logits = mask_keys(logits * (scale / d), keys_mask, self.attention_mechanism)
        weights = mechanism_fn(self.attention_mechanism)(logits)
        values = jnp.einsum("hvc,cl->hvl", cast(self.value_weight), x_val)
        heads = jnp.einsum("hst,hvt->hvs", weights, values)
        y = jnp.einsum("ohv,hvs->os", cast(self.out_weight), heads)
        if ntk:
            fan_in = self.value_channels * self.n_heads * c_val
            y = y * (self.W_out_std * self.W_value_std / math.sqrt(fan_in))
            if self.bias is not None:
                y = y + self.b_std * cast(self.bias)[:, None]
        elif self.bias is not None:
            y = y + cast(self.bias)[:, None]
        return y.reshape((self.out_channels,) + spatial)

    # ------------------------------------------------------------ infinite width

    def needs_full_spatial(self, output_full: Layout) -> Layout:
        return True

    def propagate(self, k: Kernel) -> Kernel:
        out1, out2 = self.output_shape(k.shape1), self.output_shape(k.shape2)
        mechanism = self.attention_mechanism
        if not self.linear_scaling and mechanism != "IDENTITY":
            raise ValueError(
                f"{_NAME}(linear_scaling=False, attention_mechanism={mechanism!r}) "
                "has no known closed-form infinite-width kernel: with 1/sqrt(n_key) "
                "scaling only 'IDENTITY' has one (with linear_scaling=True every "
                "mechanism has). The finite network works; estimate its kernel "
                "with `et.monte_carlo_kernel(model, x1, x2, key=..., n_samples=...)`"
                " or `et.empirical_kernel`."
            )
        if k.diagonal_spatial:
            raise ValueError(
                f"{_NAME} mixes all positions, so it needs full spatial "
                "covariances, but its input kernel holds only their diagonal. "
                "Compute the kernel from the inputs with `model.kernel(x1, x2)` "
                "(the layout is chosen for the whole network), not from a kernel "
                "built with `diagonal_spatial=True`."
            )
        c, spatial = k.shape1[0], k.shape1[1:]
        p, c_key, c_val = self._channels(c)
        standard = self.parameterization == "standard"
        dtype = k.nngp.dtype
        R, w_in, w_pe, w_pe_ntk = None, 1.0, 0.0, 0.0
        if self.pos_emb_type != "NONE":
            R = pos_emb_covariance(
                spatial, self.pos_emb_p_norm, self.pos_emb_decay_fn, dtype
            )
            frac = p / (c + p) if self.pos_emb_type == "CONCAT" else 1.0
            w_in = c / (c + p) if self.pos_emb_type == "CONCAT" else 1.0
            w_pe = frac * self.W_pos_emb_std**2
            w_pe_ntk = frac if standard else w_pe
        batch = {"nngp": 2, "ntk": 2, "cov1": 1, "cov2": 1}
        flat = {
            name: None if m is None else flatten_positions(m, batch[name])
            for name, m in (
                ("nngp", k.nngp), ("ntk", k.ntk), ("cov1", k.cov1), ("cov2", k.cov2)
            )
        }  # fmt: skip
        masks, R = masked_embeddings(k, R)  # key masks, and R zeroed there
        cv = Covariances(flat, R, w_in, w_pe, w_pe_ntk, self.val_pos_emb)

        qk = self.W_query_std * self.W_key_std
        ov2 = (self.W_out_std * self.W_value_std) ** 2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        b_ntk = (0.0 if self.b_std is None else 1.0) if standard else b2
        wide = self.value_channels * self.n_heads
        if self.linear_scaling:
            parts = linear_scaling_rule(cv, qk, mechanism, k.ntk is not None, masks)
            scale = ov2
            if standard:
                own = wide * self.W_value_std**2 + c_val * self.W_out_std**2
            else:
                own = 2 * ov2
        else:
            parts = identity_rule(cv, k.ntk is not None)
            scale = qk**2 * ov2
            if standard:
                own = (
                    wide * self.W_value_std**2 + c_val * self.W_out_std**2
                ) * qk**2 + c_key * (self.W_key_std**2 + self.W_query_std**2) * ov2
            else:
                own = 4 * scale

        def finish(name, shift):
            m = parts[name]
            return (
                None
                if m is None
                else unflatten_positions(scale * m + shift, batch[name], spatial)
            )

        ntk = None
        if k.ntk is not None:
            ntk = unflatten_positions(
                scale * parts["ntk"] + own * parts["nngp"] + b_ntk, 2, spatial
            )
        return k.replace(
            nngp=finish("nngp", b2),
            ntk=ntk,
            cov1=finish("cov1", b2),
            cov2=finish("cov2", b2),
            shape1=out1,
            shape2=out2,
            is_gaussian=True,
            is_input=False,
        )


@eqx.filter_jit
def _draw(self: GlobalSelfAttention, key, shape: Shape):
    """The weights for inputs of shape `shape`, standard normal (scaled for the
    standard parameterization); one normal draw, cut into pieces."""
    c, spatial = shape[0], shape[1:]
    p, c_key, c_val = self._channels(c)
    h, nk, nv = self.n_heads, self.key_channels, self.value_channels
    shapes = {
        "query": None if self.linear_scaling else (h, nk, c_key),
        "key": (h, nk, c_key),
        "value": (h, nv, c_val),
        "out": (self.out_channels, h, nv),
        "bias": None if self.b_std is None else (self.out_channels,),
        "pos": None if self.pos_emb_type == "NONE" else (p,) + spatial,
    }
    sizes = [math.prod(s) for s in shapes.values() if s is not None]
    flat = jax.random.normal(key, (sum(sizes),))
    pieces = iter(jnp.split(flat, list(itertools.accumulate(sizes))[:-1]))
    w = {n: None if s is None else next(pieces).reshape(s) for n, s in shapes.items()}
    query_w, key_w, value_w = w["query"], w["key"], w["value"]
    out_w, bias, pos = w["out"], w["bias"], w["pos"]
    if self.parameterization == "standard":
        if self.linear_scaling:
            key_w = key_w * jnp.sqrt(self.W_key_std * self.W_query_std / c_key)
        else:
            key_w = key_w * (self.W_key_std / math.sqrt(c_key))
            query_w = query_w * (self.W_query_std / math.sqrt(c_key))
        value_w = value_w * (self.W_value_std / math.sqrt(c_val))
        out_w = out_w * (self.W_out_std / math.sqrt(h * nv))
        bias = None if bias is None else bias * self.b_std
        pos = None if pos is None else pos * self.W_pos_emb_std
    return query_w, key_w, value_w, out_w, bias, pos
