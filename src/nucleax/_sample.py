"""Batched entry points: `probs`, `keep_mask`, `sample`."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._draw import dense_probs, draw
from ._draw import keep_mask as _keep_mask
from ._keys import row_uniforms
from ._params import SamplingParams
from ._rows import NEG_INF, Prepared, as_batch
from ._truncation import check_method, threshold, threshold_and_window

__all__ = ["SampleOutput", "keep_mask", "probs", "sample"]


class SampleOutput(NamedTuple):
    """What `sample(..., return_logprobs=True)` returns (leading dims `[B]`).

    Attributes:
      tokens: int32 `[B]`, the sampled token ids.
      logprobs: float32 `[B]`, log-probability of each token under the final
        (processed) distribution, i.e. `log(probs(...)[token])`.
      raw_logprobs: float32 `[B]`, under the raw logits: `log_softmax(logits)`.
      valid: bool `[B]`, False for rows with no finite logit (token 0 returned).
      top_ids: int32 `[B, n]`, the `n = top_n` highest raw logits (ties: lowest id).
      top_logprobs: float32 `[B, n]`, their processed log-probabilities
        (`-inf` where masked).
      top_raw_logprobs: float32 `[B, n]`, their raw log-probabilities.
    """

    tokens: jax.Array
    logprobs: jax.Array
    raw_logprobs: jax.Array
    valid: jax.Array
    top_ids: jax.Array
    top_logprobs: jax.Array
    top_raw_logprobs: jax.Array


def _rows(logits: Any, params: SamplingParams | None) -> tuple[Prepared, bool]:
    z, single = as_batch(logits)
    if params is None:
        params = SamplingParams()
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be a nucleax.SamplingParams, got {type(params).__name__}")
    return Prepared(z, *params.rows(z.shape[0])), single


def _unbatch(x: jax.Array, single: bool) -> jax.Array:
    return x[0] if single else x


_DENSE_OUTPUTS = {
    "probs": dense_probs,
    "mask": _keep_mask,
}


@functools.partial(jax.jit, static_argnames=("output", "method", "window"))
def _dense_output(logits, params, output, method, window):
    """`[B, V]` (or `[V]`) output of one kind from the per-row thresholds."""
    r, single = _rows(logits, params)
    return _unbatch(_DENSE_OUTPUTS[output](r, threshold(r, method, window)), single)


def probs(logits: Any, params: SamplingParams | None = None, *, method: str = "auto",
          window: int = 64) -> jax.Array:
    """The exact distribution that `sample` draws from.

    Order: temperature, then top-k, then top-p (on the distribution
    renormalised after top-k), then min-p; then renormalise. Ties at a
    boundary all survive; the most probable token always survives; `T = 0` is
    a point mass on the argmax (lowest index among ties). A row with no finite
    logit is a point mass on token 0. NaN logits count as -inf.

    Args:
      logits: `[B, V]` or `[V]`, any float dtype (computed in float32).
      params: a `SamplingParams` (scalars or `[B]` per-row values); default
        `SamplingParams()` is plain softmax.
      method: `"auto"`/`"fast"` (no full sort), `"bisect"`, or `"sort"` (the
        reference). All return the same distribution.
      window: static candidate count of the fast method.

    Returns:
      float32 array shaped like `logits`, rows summing to 1.

    Example:
      >>> import jax.numpy as jnp, nucleax
      >>> z = jnp.array([5.0, 2.2, 2.0, 4.5, 3.0, 2.7])
      >>> nucleax.probs(z, nucleax.SamplingParams(top_k=2)).round(3).tolist()
      [0.622, 0.0, 0.0, 0.378, 0.0, 0.0]
    """
    check_method(method, window)
    return _dense_output(logits, params, "probs", method, window)


def keep_mask(logits: Any, params: SamplingParams | None = None, *, method: str = "auto",
              window: int = 64) -> jax.Array:
    """Boolean mask of the tokens that survive temperature/top-k/top-p/min-p.

    Same shape as `logits`. For greedy rows (`T = 0`) and rows with no finite
    logit it is one-hot at the token `sample` returns. Tokens at -inf (or NaN)
    never survive otherwise. See `probs` for the rules and arguments.
    """
    check_method(method, window)
    return _dense_output(logits, params, "mask", method, window)


@functools.partial(jax.jit, static_argnames=("return_logprobs", "top_n", "method", "window"))
def _sample(key, logits, params, return_logprobs, top_n, method, window):
    r, single = _rows(logits, params)
    batch, vocab = r.z.shape
    u = row_uniforms(key, batch)
    tau, window_vals = threshold_and_window(r, method, window)
    tokens, total = draw(r, tau, u, window_vals)
    if not (return_logprobs or top_n):
        return _unbatch(tokens, single)

    log_total = jnp.log(jnp.where(r.greedy, 1.0, total))
    zmax_raw = jnp.where(r.valid, jnp.max(r.z, axis=-1), 0.0)
    lse = zmax_raw + jnp.log(jnp.sum(jnp.exp(r.z - zmax_raw[:, None]), axis=-1))

    def logps(ids):  # processed and raw log-probabilities of token ids [B, n]
        zi = jnp.take_along_axis(r.z, ids, axis=-1)
        alive = (zi >= tau[:, None]) & (zi > NEG_INF)
        proc = jnp.where(alive, (zi - r.zmax[:, None]) / r.t[:, None] - log_total[:, None],
                         -jnp.inf)
        proc = jnp.where(r.greedy[:, None], jnp.where(ids == tokens[:, None], 0.0, -jnp.inf), proc)
        raw = jnp.where(r.valid[:, None], zi - lse[:, None], -jnp.inf)
        return proc, raw

    proc, raw = logps(tokens[:, None])
    n = min(top_n, vocab)
    if n:
        top_ids = lax.top_k(r.z, n)[1].astype(jnp.int32)
    else:
        top_ids = jnp.zeros((batch, 0), jnp.int32)
    top_proc, top_raw = logps(top_ids)
    out = SampleOutput(tokens, proc[:, 0], raw[:, 0], r.valid, top_ids, top_proc, top_raw)
    return jax.tree.map(lambda x: _unbatch(x, single), out)


def sample(key: Any, logits: Any, params: SamplingParams | None = None, *,
           return_logprobs: bool = False, top_n: int = 0, method: str = "auto",
           window: int = 64) -> jax.Array | SampleOutput:
    """Draws one token per row from `probs(logits, params)`.

    Args:
      key: one PRNG key (row `i` uses `fold_in(key, i)`) or `[B]` keys, one
        per row: a row's token then depends only on its own key, logits and
        parameters, whatever else is in the batch. Typed (`jax.random.key`) or
        raw (`jax.random.PRNGKey`) keys.
      logits: `[B, V]` or `[V]`, any float dtype.
      params: `SamplingParams`; scalars apply to every row, `[B]` arrays per row.
      return_logprobs: also return log-probabilities (a `SampleOutput`).
      top_n: also return the `top_n` most likely alternatives (a `SampleOutput`).
      method, window: see `probs`; every method returns the same token for the
        same key (up to float rounding of a sum that lands exactly on a boundary).

    Returns:
      int32 `[B]` tokens (a scalar for `[V]` logits), or a `SampleOutput`.

    The draw is an inverse CDF in vocabulary order with one uniform per row, so
    no per-token noise is generated and the result is exact. It runs over the
    fast method's candidate window when that holds every survivor, else two-level
    over the whole row (block sums, then inside one block).

    Example:
      >>> import jax, jax.numpy as jnp, nucleax
      >>> z = jnp.array([[5.0, 2.2, 2.0, 4.5, 3.0, 2.7]] * 2)
      >>> p = nucleax.SamplingParams(temperature=jnp.array([0.0, 0.7]), top_p=0.9)
      >>> nucleax.sample(jax.random.key(0), z, p).shape
      (2,)
    """
    check_method(method, window)
    if not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 0:
        raise ValueError(f"top_n must be an int >= 0, got {top_n!r}")
    return _sample(key, logits, params, bool(return_logprobs), top_n, method, window)
