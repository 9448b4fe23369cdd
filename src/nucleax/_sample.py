"""Batched entry points: `probs`, `keep_mask`, `sample`: the stages put together.

One call runs the whole pipeline of the contract on a `[B, V]` batch:
stage 1, the logits processors (`nucleax.processors`), on the raw logits;
stage 2, cleaning and temperature (`_rows`); stage 3, the truncation
threshold (`_truncation`); stage 4, the draw or a dense view (`_draw`), with
one key per row (`_keys`).
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._catalogue import plan, row_values, stage3, xtc_uniforms
from ._draw import dense_probs, draw, greedy_tokens, plain_first_max
from ._draw import keep_mask as _keep_mask
from ._keys import row_keys
from ._params import SamplingParams
from ._rows import NEG_INF, Prepared, as_batch, flush_subnormal, in_row_groups
from ._truncation import check_method
from .processors import row_local
from .samplers import check_order, mirostat_init

__all__ = ["SampleOutput", "keep_mask", "probs", "sample"]


class SampleOutput(NamedTuple):
    """What `sample(..., return_logprobs=True)` returns (leading dims `[B]`).

    Attributes:
      tokens: int32 `[B]`, the sampled token ids.
      logprobs: float32 `[B]`, log-probability of each token under the final
        (processed) distribution, i.e. `log(probs(..., key=key)[token])` (with
        XTC on, the distribution of this key's coin).
      raw_logprobs: float32 `[B]`, under the raw logits, before any processor:
        `log_softmax(logits)`.
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


# ----------------------------------------------------------------------------
# Host side: arguments and the processor chain

def check_params(params: Any) -> SamplingParams:
    if params is None:
        return SamplingParams()
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be a nucleax.SamplingParams, got "
                        f"{type(params).__name__}; pass the values by name: "
                        "nucleax.SamplingParams(temperature=..., top_p=...)")
    return params


def build_chain(params: SamplingParams, processors: Any, eos_ids: Any = ()) -> Any:
    """The processors to run: those `params` switches on, then `processors` (or None)."""
    return params.processors(eos_ids, extra=processors)


def init_state(chain: Any, state: Any, batch: int, vocab: int) -> Any:
    """The processors' state: the given one, or `init` with no history."""
    if chain is None:
        if state is not None:
            raise ValueError("state= was given but no processor runs (params switches none on "
                             "and processors= is empty); drop state= or pass processors=")
        return None
    if state is None:
        state = chain.init(jnp.zeros((batch, 0), jnp.int32), jnp.zeros((batch,), jnp.int32),
                           vocab, 0)
    return state


def _setup(logits, params, processors, state):
    params = check_params(params)
    z, _ = as_batch(logits)  # host-side shape and dtype checks
    params.check_batch(z.shape[0])
    check_order(params)
    chain = build_chain(params, processors)
    state = init_state(chain, state, z.shape[0], z.shape[1])
    return params, (None if chain is None else chain.apply), state


def check_mu(mu: Any, params: SamplingParams, batch: int) -> Any:
    """Host checks of mirostat's `mu=` (None: `2 * mirostat_tau`, the starting value).

    Returns a `[B]` float32 array when mirostat is on (so that passing `mu` or
    not compiles the same code), else None.
    """
    on = "mirostat" in params.samplers_on()
    if mu is None:
        return mirostat_init(params, batch) if on else None
    if not on:
        raise ValueError("mu= was given but mirostat is off (mirostat_tau = 0 in every row); "
                         "set SamplingParams(mirostat_tau=...) or drop mu=")
    shape = getattr(mu, "shape", np.shape(mu))
    if tuple(shape) not in ((), (batch,)):
        raise ValueError(f"mu must be a scalar or a [B] array with B={batch} (mirostat's "
                         f"state per row), got shape {tuple(shape)}")
    if not isinstance(mu, jax.core.Tracer):
        bad = ~np.isfinite(np.asarray(mu, np.float64))
        if np.any(bad):
            raise ValueError(f"mu must be finite (mirostat's state in bits, starting at "
                             f"2 * mirostat_tau), got {np.asarray(mu)[bad].reshape(-1)[0]}; "
                             "start from nucleax.samplers.mirostat_init(params, B)")
    return jnp.broadcast_to(jnp.asarray(mu, jnp.float32), (batch,))


# ----------------------------------------------------------------------------
# Traced side


def _unbatch(x: jax.Array, single: bool) -> jax.Array:
    return x[0] if single else x


def prepare(logits, params, apply, state, method="auto", window=64, xtc_u=None, mu=None):
    """Stages 1-3: processors, cleaning and temperature, truncations.

    Returns `(r, tau, window_values, raw, single)`: the prepared rows and the
    threshold for stage 4 (tokens of `r.z >= tau` survive), the fast
    method's window (or None), the raw float32 logits `[B, V]`, and whether
    the input was one row. `xtc_u` is XTC's coin per row, `mu` mirostat's
    state (None: its starting value).
    """
    raw, single = as_batch(logits)
    z = raw if apply is None else apply(state, raw)
    r, tau, win = stage3(z, plan(params), row_values(params, z.shape[0]), method, window, xtc_u,
                         mu)
    return r, tau, win, raw, single


_DENSE_OUTPUTS = {
    "probs": dense_probs,
    "mask": _keep_mask,
}


def dense_output(logits, params, apply, state, output, method, window, key=None, mu=None):
    """`[B, V]` (or `[V]`) output of one kind from the per-row thresholds.

    With XTC on, `key` decides each row's coin (as `sample` with that key);
    without a key the output is over both outcomes: the mixture of the two
    distributions weighted by `xtc_probability`, or the union of the masks.
    """
    batch = as_batch(logits)[0].shape[0]
    fn = _DENSE_OUTPUTS[output]
    if "xtc" not in params.samplers_on() or key is not None:
        xtc_u = None if key is None else xtc_uniforms(row_keys(key, batch, "the logits' rows"))
        r, tau, _, _, single = prepare(logits, params, apply, state, method, window, xtc_u, mu)
        return _unbatch(fn(r, tau), single)
    outs = []
    for u in (0.0, 1.0):  # the coin fires (u = 0 < a) / does not (u = 1)
        r, tau, _, _, single = prepare(logits, params, apply, state, method, window,
                                       jnp.full((batch,), np.float32(u)), mu)
        outs.append(fn(r, tau))
    a = jnp.broadcast_to(jnp.asarray(params.xtc_probability, jnp.float32), (batch,))[:, None]
    if output == "mask":
        return _unbatch(((a > 0) & outs[0]) | ((a < 1) & outs[1]), single)
    return _unbatch(a * outs[0] + (1 - a) * outs[1], single)


_dense_output = jax.jit(dense_output, static_argnames=("apply", "output", "method", "window"))


def probs(logits: Any, params: SamplingParams | None = None, *, processors: Any = None,
          state: Any = None, key: Any = None, mu: Any = None, method: str = "auto",
          window: int = 64, mesh: Any = None, batch_axis: Any = None,
          vocab_axis: Any = None) -> jax.Array:
    """The exact distribution that `sample` draws from.

    Order: logits processors (those `params` switches on, then `processors`),
    temperature, top-k, top-p (on the distribution renormalised after top-k),
    min-p; then renormalise. With the wider catalogue (`top_n_sigma`,
    `typical_p`, `epsilon`, `eta`, XTC, dynamic temperature, mirostat) or
    another `order`, the steps of `params.order` (see `nucleax.samplers`).
    Ties at a boundary all survive; the most probable token always survives
    (except where typical or XTC remove it by definition); `T = 0` is a point
    mass on the argmax (lowest index among ties). A row with no finite logit
    is a point mass on token 0. NaN logits count as -inf.

    Args:
      logits: `[B, V]` or `[V]`, any float dtype (computed in float32).
      params: a `SamplingParams` (scalars or `[B]` per-row values); default
        `SamplingParams()` is plain softmax.
      processors: extra logits processors (a `nucleax.processors.Processor` or
        a list), run after the ones `params` builds.
      state: the processors' state (from their `init`, advanced by `update`);
        default: `init` with no history (empty prompt, no output).
      key: only read when XTC is on: the distribution that `sample` with this
        key draws from (its coin decided). Without it, the distribution of
        `sample`'s token over both outcomes of the coin.
      mu: mirostat's per-row state (`[B]` or a scalar); default its starting
        value `2 * mirostat_tau`. Advance it with
        `nucleax.samplers.mirostat_update`.
      method: `"auto"`/`"fast"` (no full sort), `"bisect"`, or `"sort"` (the
        reference). All return the same distribution.
      window: static candidate count of the fast method.
      mesh, batch_axis, vocab_axis: logits split over a `jax.sharding.Mesh`
        (`NamedSharding(mesh, P(batch_axis, vocab_axis))`, either axis None):
        the same result, computed without gathering `[B, V]` (see
        `nucleax.sharding`).

    Returns:
      float32 array shaped like `logits`, rows summing to 1.

    Example:
      >>> import jax.numpy as jnp, nucleax
      >>> z = jnp.array([5.0, 2.2, 2.0, 4.5, 3.0, 2.7])
      >>> [round(float(x), 3) for x in nucleax.probs(z, nucleax.SamplingParams(top_k=2))]
      [0.622, 0.0, 0.0, 0.378, 0.0, 0.0]
    """
    if mesh is not None:
        from .sharding import probs_sharded

        return probs_sharded(logits, params, mesh=mesh, batch_axis=batch_axis,
                             vocab_axis=vocab_axis, processors=processors, state=state,
                             method=method, window=window)
    check_method(method, window)
    params, apply, state = _setup(logits, params, processors, state)
    mu = check_mu(mu, params, as_batch(logits)[0].shape[0])
    return _dense_output(logits, params, apply, state, "probs", method, window, key, mu)


def keep_mask(logits: Any, params: SamplingParams | None = None, *, processors: Any = None,
              state: Any = None, key: Any = None, mu: Any = None, method: str = "auto",
              window: int = 64, mesh: Any = None, batch_axis: Any = None,
              vocab_axis: Any = None) -> jax.Array:
    """Boolean mask of the tokens that survive the processors and the truncations.

    Same shape as `logits`. For greedy rows (`T = 0`) and rows with no finite
    logit it is one-hot at the token `sample` returns. Tokens at -inf (or NaN)
    never survive otherwise. With XTC on and no `key`, the tokens that survive
    either outcome of its coin. See `probs` for the rules and arguments.
    """
    if mesh is not None:
        from .sharding import keep_mask_sharded

        return keep_mask_sharded(logits, params, mesh=mesh, batch_axis=batch_axis,
                                 vocab_axis=vocab_axis, processors=processors, state=state,
                                 method=method, window=window)
    check_method(method, window)
    params, apply, state = _setup(logits, params, processors, state)
    mu = check_mu(mu, params, as_batch(logits)[0].shape[0])
    return _dense_output(logits, params, apply, state, "mask", method, window, key, mu)


def sample_impl(key, logits, params, apply, state, return_logprobs, top_n, method, window,
                mu=None):
    """The traced body of `sample` (no host checks): usable inside any jit.

    The stages run on groups of 8 rows at a time on the CPU backend
    (`_rows.in_row_groups`), where a `[64, V]` batch's passes leave the cache:
    stage 1 too when every processor is a built-in one (`processors.row_local`;
    a user's processor runs on the whole batch first). Every row's arithmetic
    is the same either way, so are the tokens.
    """
    local = apply is not None and row_local(apply)
    if apply is None or local:  # widened inside the groups: no full-size float32 copy of bf16
        as_batch(logits)  # the checks
        z = jnp.asarray(logits)
        single = z.ndim == 1
        z, raw = (z[None] if single else z), None
    else:
        raw, single = as_batch(logits)
        z = apply(state, raw)
    batch = z.shape[0]
    keys = row_keys(key, batch, "the logits' rows")
    how = plan(params)
    rows = (keys, z, raw, row_values(params, batch), mu, state if local else None)
    body = functools.partial(_sample_rows, how=how, method=method, window=window,
                             return_logprobs=return_logprobs, top_n=top_n,
                             apply=apply if local else None)
    if local or return_logprobs or top_n:
        out = in_row_groups(body, rows, batch)
    else:  # a batch of greedy rows needs only each row's first max: about one pass, no groups
        greedy = jnp.all(~(flush_subnormal(rows[3]["temperature"]) > 0))
        tokens, done = lax.cond(greedy, plain_first_max,
                                lambda z: (jnp.zeros((batch,), jnp.int32), jnp.bool_(False)), z)
        # the pipeline (traced once) for the rest, greedy rows that need cleaning included
        out = lax.cond(done, lambda: tokens, lambda: in_row_groups(body, rows, batch))
    return jax.tree.map(lambda x: _unbatch(x, single), out)


def _sample_rows(rows, *, how, method, window, return_logprobs, top_n, apply):
    """Stages 2-4 and the log-probabilities for a `[b, V]` group of rows (and stage 1 with
    `apply`, a row-local chain, else the rows arrive processed)."""
    keys, z, raw, values, mu, state = rows
    z = z.astype(jnp.float32)  # bf16 is widened here, a group at a time
    if apply is not None:
        raw, z = z, apply(state, z)
    batch, vocab = z.shape

    def sampled():
        u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)
        xtc_u = xtc_uniforms(keys) if "xtc" in how.samplers else None
        r, tau, window_vals = stage3(z, how, values, method, window, xtc_u, mu)
        return (r, tau, *draw(r, tau, u, window_vals))

    if not (return_logprobs or top_n):
        if apply is None:  # `sample_impl` has taken an all-greedy batch already
            return sampled()[2]
        greedy = ~(flush_subnormal(values["temperature"]) > 0)  # about one pass, as there
        return lax.cond(jnp.all(greedy), greedy_tokens, lambda z: sampled()[2], z)
    r, tau, tokens, total = sampled()

    # Raw log-probabilities: log_softmax of the logits before any processor,
    # as (z - max) - log(sum exp(z - max)) so that huge logits keep precision.
    r_raw = r if raw is None else Prepared(raw, *SamplingParams().rows(batch))
    log_norm = jnp.log(jnp.sum(jnp.exp(r_raw.z - r_raw.zmax[:, None]), axis=-1))
    log_total = jnp.log(jnp.where(r.greedy, 1.0, total))

    def logps(ids):  # processed and raw log-probabilities of token ids [B, n]
        zi = jnp.take_along_axis(r.z, ids, axis=-1)
        proc = r.log_weights(zi, tau) - log_total[:, None]  # the one safe weight function
        zero, minus_inf = jnp.float32(0.0), jnp.float32(-jnp.inf)  # float32 under x64 too
        proc = jnp.where(r.greedy[:, None], jnp.where(ids == tokens[:, None], zero, minus_inf),
                         proc)
        zr = jnp.take_along_axis(r_raw.z, ids, axis=-1)
        raw_lp = jnp.where(r_raw.valid[:, None] & (zr > NEG_INF),
                           (zr - r_raw.zmax[:, None]) - log_norm[:, None], -jnp.inf)
        return proc, raw_lp

    proc, raw_lp = logps(tokens[:, None])
    n = min(top_n, vocab)
    if n:
        top_ids = lax.top_k(r_raw.z, n)[1].astype(jnp.int32)
    else:
        top_ids = jnp.zeros((batch, 0), jnp.int32)
    top_proc, top_raw = logps(top_ids)
    return SampleOutput(tokens, proc[:, 0], raw_lp[:, 0], r.valid, top_ids, top_proc, top_raw)


_sample = jax.jit(sample_impl, static_argnames=("apply", "return_logprobs", "top_n", "method",
                                                 "window"))


@overload
def sample(key: Any, logits: Any, params: SamplingParams | None = None, *,
           processors: Any = None, state: Any = None, mu: Any = None,
           return_logprobs: Literal[False] = False,
           top_n: Literal[0] = 0, method: str = "auto", window: int = 64, mesh: Any = None,
           batch_axis: Any = None, vocab_axis: Any = None) -> jax.Array: ...


@overload
def sample(key: Any, logits: Any, params: SamplingParams | None = None, *,
           processors: Any = None, state: Any = None, mu: Any = None,
           return_logprobs: Literal[True],
           top_n: int = 0, method: str = "auto", window: int = 64, mesh: Any = None,
           batch_axis: Any = None, vocab_axis: Any = None) -> SampleOutput: ...


@overload
def sample(key: Any, logits: Any, params: SamplingParams | None = None, *,
           processors: Any = None, state: Any = None, mu: Any = None,
           return_logprobs: bool = False,
           top_n: int = 0, method: str = "auto", window: int = 64, mesh: Any = None,
           batch_axis: Any = None, vocab_axis: Any = None) -> jax.Array | SampleOutput: ...


def sample(key: Any, logits: Any, params: SamplingParams | None = None, *,
           processors: Any = None, state: Any = None, mu: Any = None,
           return_logprobs: bool = False,
           top_n: int = 0, method: str = "auto", window: int = 64, mesh: Any = None,
           batch_axis: Any = None, vocab_axis: Any = None) -> jax.Array | SampleOutput:
    """Draws one token per row from `probs(logits, params)`.

    Args:
      key: one PRNG key (row `i` uses `fold_in(key, i)`) or `[B]` keys, one
        per row: a row's token then depends only on its own key, logits and
        parameters, whatever else is in the batch. Typed (`jax.random.key`) or
        raw (`jax.random.PRNGKey`) keys.
      logits: `[B, V]` or `[V]`, any float dtype.
      params: `SamplingParams`; scalars apply to every row, `[B]` arrays per row.
      processors, state: extra logits processors and the processors' state;
        see `probs`. Advance the state yourself with `chain.update(state,
        tokens)`, or let `nucleax.decode.generate` run the loop.
      mu: mirostat's per-row state; see `probs`. Advance it with
        `nucleax.samplers.mirostat_update(mu, out.logprobs, params)`.
      return_logprobs: also return log-probabilities (a `SampleOutput`).
      top_n: also return the `top_n` most likely alternatives (a `SampleOutput`).
      method, window: see `probs`; every method returns the same token for the
        same key (up to float rounding of a sum that lands exactly on a boundary).
      mesh, batch_axis, vocab_axis: logits split over a mesh; see `probs`.

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
    if mesh is not None:
        from .sharding import sample_sharded

        return sample_sharded(key, logits, params, mesh=mesh, batch_axis=batch_axis,
                              vocab_axis=vocab_axis, processors=processors, state=state,
                              return_logprobs=return_logprobs, top_n=top_n, method=method,
                              window=window)
    check_method(method, window)
    if isinstance(top_n, np.integer):
        top_n = int(top_n)
    if not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 0:
        raise ValueError(f"top_n must be an int >= 0, got {top_n!r}")
    params, apply, state = _setup(logits, params, processors, state)
    mu = check_mu(mu, params, as_batch(logits)[0].shape[0])
    return _sample(key, logits, params, apply, state, bool(return_logprobs), top_n, method,
                   window, mu)
