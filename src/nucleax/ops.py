"""The single sampling ops, usable alone and composable.

Each op takes logits `[V]` or `[B, V]` (any float dtype) and a parameter that
is a scalar or a `[B]` array, and returns float32 logits of the same shape
with removed tokens set to `-inf` (the one masking constant). Parameters are
traced: new values never recompile. Chaining them in the contract's order
gives exactly the survivors of `nucleax.probs`::

    z = scale_temperature(logits, T)
    z = mask_min_p(mask_top_p(mask_top_k(z, k), p), m)
    jax.nn.softmax(z) == nucleax.probs(logits, SamplingParams(T, k, p, m))

`mask_top_p` and `mask_min_p` read the distribution `softmax(z)` of the
logits they are given (renormalised over the tokens still alive), so apply
temperature first. Rules (ties at a boundary are kept, the most probable
token always survives) are those of `nucleax.probs`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from ._draw import first_max, greedy_tokens, keep_mask
from ._params import SamplingParams
from ._rows import NEG_INF, Prepared, as_batch
from ._truncation import check_method, threshold

__all__ = ["greedy", "mask_min_p", "mask_top_k", "mask_top_p", "scale_temperature"]


@functools.partial(jax.jit, static_argnames=("method", "window"))
def _masked(logits, params, method, window):
    """Logits with `-inf` outside the survivors: clean, threshold, mask."""
    z, single = as_batch(logits)
    r = Prepared(z, *params.rows(z.shape[0]))
    out = jnp.where(keep_mask(r, threshold(r, method, window)), r.z, NEG_INF)
    return out[0] if single else out


def _op(params: SamplingParams, logits: Any, method: str, window: int) -> jax.Array:
    check_method(method, window)
    return _masked(logits, params, method, window)


def mask_top_k(logits: Any, k: Any, *, method: str = "auto", window: int = 64) -> jax.Array:
    """Keeps token x iff `#{y : z_y > z_x} < k` (ties kept); `k` of 0 or -1 is off.

    Example:
      >>> import jax.numpy as jnp
      >>> mask_top_k(jnp.array([1.0, 3.0, 3.0, 2.0]), 2).tolist()
      [-inf, 3.0, 3.0, -inf]
    """
    return _op(SamplingParams(top_k=k), logits, method, window)


def mask_top_p(logits: Any, p: Any, *, method: str = "auto", window: int = 64) -> jax.Array:
    """Keeps token x iff `sum{q_y : q_y > q_x} < p`, `q = softmax(logits)` (Holtzman et al., 2019).

    `p` in (0, 1]; 1 is off.

    Example:
      >>> import jax.numpy as jnp
      >>> mask_top_p(jnp.log(jnp.array([0.5, 0.3, 0.2])), 0.6).tolist()[2]
      -inf
    """
    return _op(SamplingParams(top_p=p), logits, method, window)


def mask_min_p(logits: Any, m: Any, *, method: str = "auto", window: int = 64) -> jax.Array:
    """Keeps token x iff `q_x >= m * max(q)`, `q = softmax(logits)` (Nguyen et al., 2024).

    `m` in [0, 1]; 0 is off. Compared on probabilities, never on raw logits.
    """
    return _op(SamplingParams(min_p=m), logits, method, window)


@jax.jit
def _temperature(logits, params):
    z, single = as_batch(logits)
    r = Prepared(z, *params.rows(z.shape[0]))
    scaled = r.log_weights(r.z, jnp.full(r.zmax.shape, NEG_INF, jnp.float32))
    onehot = jnp.arange(z.shape[-1], dtype=jnp.int32)[None, :] == first_max(r)[:, None]
    out = jnp.where(r.greedy[:, None], jnp.where(onehot, jnp.float32(0.0), NEG_INF), scaled)
    return out[0] if single else out


def scale_temperature(logits: Any, temperature: Any) -> jax.Array:
    """`(z - max z) / T` in float32; `T = 0` leaves only the argmax (at 0).

    Subtracting the row maximum first keeps tiny temperatures finite; it does
    not change `softmax`. `-inf` stays `-inf`; a traced `T = +inf` gives 0 to
    every finite logit (uniform), never NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> scale_temperature(jnp.array([1.0, 3.0]), 0.5).tolist()
      [-4.0, 0.0]
    """
    return _temperature(logits, SamplingParams(temperature=temperature))


def greedy(logits: Any) -> jax.Array:
    """Argmax per row as int32, lowest index among ties; NaN counts as -inf.

    Exactly the token of a greedy row of `nucleax.sample`: a row holding +inf
    gives its first +inf, subnormal values count as 0, and a row with no
    finite logit returns 0.
    """
    z, single = as_batch(logits)
    out = _greedy(z)
    return out[0] if single else out


@jax.jit
def _greedy(z):
    return greedy_tokens(z)
