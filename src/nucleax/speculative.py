"""Speculative decoding, exact: the verify sampler (SEMANTICS Part 2, "Speculative verification").

Given, for every row, K draft tokens `d_1..d_K` (with their draft
distributions `r_i`, or one-hot drafts), and the target model's logits at the
K+1 positions (the position of each draft, then one more), `verify` emits
the accepted drafts followed by one correction or bonus token, so that the
emitted tokens are distributed exactly as tokens sampled one by one from the
full pipeline (Leviathan et al., 2023; Chen et al., 2023):

- `p_i` is the whole pipeline at position i: the logits processors with their
  state advanced by the drafts before i (penalty counts include them), then
  temperature, top-k, top-p, min-p, exactly as `nucleax.probs`;
- draft i is accepted iff `u_i * r_i(d_i) < p_i(d_i)`, left to right, stopping
  at the first rejection;
- a rejection at i emits a draw from `max(p_i - r_i, 0)` renormalised (from
  `p_i` if that is all zero); if all K are accepted, a bonus token is drawn
  from `p_{K+1}`;
- greedy rows (`T = 0`) accept iff the draft is the argmax of the processed
  logits and emit that argmax; they never divide by a temperature.

Keys: the token at absolute position `q` of row `b` uses only
`fold_in(key_b, q)`, split into the acceptance uniform and the draw's
uniform, so a row's result does not depend on the rest of the batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._draw import _first_crossing, argmax, dense_probs
from ._keys import row_keys
from ._params import SamplingParams
from ._sample import build_chain, check_params, init_state, prepare
from ._truncation import threshold

__all__ = ["VerifyOutput", "verify", "verify_impl"]


class VerifyOutput(NamedTuple):
    """What `verify` returns.

    Attributes:
      tokens: int32 `[B, K+1]`: the accepted drafts, then the correction (or
        bonus) token, then -1.
      accepted: int32 `[B]`, the number of drafts accepted (0..K).
      emitted: int32 `[B]`, the number of tokens emitted (`accepted + 1`).
      state: the processors' state advanced by exactly the emitted tokens
        (None when no processor runs).
    """

    tokens: jax.Array
    accepted: jax.Array
    emitted: jax.Array
    state: Any


def _uniforms(keys: jax.Array, positions: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """`[B, n]` acceptance and draw uniforms for absolute positions `positions + i`."""

    def one(key, pos):
        def at(i):
            ka, kd = jax.random.split(jax.random.fold_in(key, pos + i))
            return (jax.random.uniform(ka, (), jnp.float32),
                    jax.random.uniform(kd, (), jnp.float32))

        return jax.vmap(at)(jnp.arange(n, dtype=jnp.int32))

    return jax.vmap(one)(keys, positions.astype(jnp.int32))


def _dense_draw(w: jax.Array, u: jax.Array) -> jax.Array:
    """Inverse-CDF draw in vocabulary order from non-negative weights `[B, V]`."""
    total = jnp.sum(w, axis=-1)
    return _first_crossing(jnp.cumsum(w, axis=-1), w, u * total)


def verify_impl(keys: jax.Array, drafts: jax.Array, draft_probs: jax.Array | None,
                logits: jax.Array, positions: jax.Array, params: SamplingParams,
                apply: Any, update: Any, state: Any) -> VerifyOutput:
    """The traced body of `verify` (no host checks): usable inside any jit.

    Args:
      keys: `[B]` per-row keys (typed or raw).
      drafts: int32 `[B, K]`; an id outside `[0, V)` is a draft the target
        never accepts (and the processors never see).
      draft_probs: float `[B, K, V]` or None (one-hot drafts). NaN and
        negative entries count as 0.
      logits: float `[B, K+1, V]`, the target's logits at the K+1 positions.
      positions: int32 `[B]`, absolute position of the first draft.
      params: per-row `SamplingParams`.
      apply, update: the processors' functions, or None.
      state: the processors' state before the first draft.
    """
    batch, k = drafts.shape
    vocab = logits.shape[-1]
    drafts = drafts.astype(jnp.int32)
    in_range = (drafts >= 0) & (drafts < vocab)
    fed = jnp.where(in_range, drafts, -1)  # what the processors see
    logits = logits.astype(jnp.float32)
    if draft_probs is None:
        r = jax.nn.one_hot(fed, vocab, dtype=jnp.float32)  # -1: all zeros
    else:
        r = draft_probs.astype(jnp.float32)
        r = jnp.where(r > 0, r, 0.0)  # NaN and negatives count as 0
    r = jnp.concatenate([r, jnp.zeros((batch, 1, vocab), jnp.float32)], axis=1)
    fed_next = jnp.concatenate([fed, jnp.full((batch, 1), -1, jnp.int32)], axis=1)

    def position(st, xs):
        z, d = xs
        prep, _, _ = prepare(z, params, apply, st)
        p = dense_probs(prep, threshold(prep, "auto", 64))
        best = argmax(prep.z)
        if update is not None:
            st = update(st, d)
        return st, (p, best, prep.greedy)

    xs = (jnp.swapaxes(logits, 0, 1), jnp.swapaxes(fed_next, 0, 1))
    _, (p, best, greedy) = lax.scan(position, state, xs)
    p = jnp.swapaxes(p, 0, 1)  # [B, K+1, V]
    best = jnp.swapaxes(best, 0, 1)  # [B, K+1]
    greedy = greedy[0]  # [B] (the parameters do not change along the row)

    u_acc, u_draw = _uniforms(keys, positions, k + 1)
    safe = jnp.clip(fed, 0, vocab - 1)[..., None]
    p_d = jnp.where(in_range, jnp.take_along_axis(p[:, :k], safe, axis=-1)[..., 0], 0.0)
    r_d = jnp.take_along_axis(r[:, :k], safe, axis=-1)[..., 0]
    ok = jnp.where(greedy[:, None], drafts == best[:, :k], u_acc[:, :k] * r_d < p_d) & in_range
    accepted = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=-1), axis=-1).astype(jnp.int32)

    # The correction (or bonus) token at every position; only the one at
    # `accepted` is emitted. Position K has r = 0: a draw from p_{K+1}.
    resid = jnp.maximum(p - r, 0.0)
    resid = jnp.where(jnp.sum(resid, axis=-1, keepdims=True) > 0, resid, p)
    flat = _dense_draw(resid.reshape(-1, vocab), u_draw.reshape(-1)).reshape(batch, k + 1)
    fix = jnp.where(greedy[:, None], best, flat)
    fix = jnp.take_along_axis(fix, accepted[:, None], axis=-1)[:, 0]

    idx = jnp.arange(k + 1, dtype=jnp.int32)[None, :]
    drafts_pad = jnp.concatenate([drafts, jnp.zeros((batch, 1), jnp.int32)], axis=1)
    tokens = jnp.where(idx < accepted[:, None], drafts_pad,
                       jnp.where(idx == accepted[:, None], fix[:, None], -1)).astype(jnp.int32)

    if update is not None:
        state = lax.fori_loop(0, k + 1, lambda i, st: update(st, tokens[:, i]), state)
    return VerifyOutput(tokens, accepted, accepted + 1, state)


_verify = jax.jit(verify_impl, static_argnames=("apply", "update"))


def _array(name: str, x: Any) -> Any:
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name} must be a jax or numpy array, got {type(x).__name__}")
    return x


def verify(key: Any, draft_tokens: Any, target_logits: Any, params: SamplingParams | None = None,
           *, positions: Any, draft_probs: Any = None, processors: Any = None,
           state: Any = None, stop_ids: Any = ()) -> VerifyOutput:
    """Verifies K draft tokens per row against the target's logits (speculative sampling).

    The emitted tokens are distributed exactly as tokens sampled one by one with
    `nucleax.sample` from the full pipeline (processors, temperature, top-k,
    top-p, min-p), each with the processors' state advanced by the tokens
    before it: draft `d_i` is accepted iff `u_i r_i(d_i) < p_i(d_i)`; the
    first rejection emits a draw from `max(p_i - r_i, 0)` (renormalised; `p_i`
    if that is zero); all accepted emit a bonus from `p_{K+1}`. Greedy rows
    (`T = 0`) accept iff `d_i` is the argmax of the processed logits and emit
    that argmax. Leviathan et al., 2023; Chen et al., 2023.

    Args:
      key: one key (row `b` uses `fold_in(key, b)`) or `[B]` keys. The token
        at absolute position `q` of row `b` uses only `fold_in(key_b, q)`.
      draft_tokens: int `[B, K]`, K >= 1.
      target_logits: float `[B, K+1, V]`: the target's logits for the position
        of each draft, then for the position after the last draft.
      params: `SamplingParams` (scalars or `[B]` per row), processor fields
        included.
      positions: int `[B]`, absolute position of the first draft of each row.
      draft_probs: float `[B, K, V]`, the distributions the drafts were drawn
        from, or None for one-hot (deterministic) drafts.
      processors: extra processors, run after those `params` switches on.
      state: the processors' state before the first draft (default: `init`
        with no history).
      stop_ids: the model's EOS ids, for `min_tokens`.

    Returns:
      a `VerifyOutput` (tokens `[B, K+1]` padded with -1, accepted `[B]`,
      emitted `[B]`, the processors' state after the emitted tokens).

    Example:
      >>> import jax, jax.numpy as jnp, nucleax
      >>> from nucleax.speculative import verify
      >>> z = jnp.log(jnp.array([[[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]]))
      >>> out = verify(jax.random.key(0), jnp.array([[1]]), z,
      ...              nucleax.SamplingParams(temperature=0.0), positions=jnp.array([7]))
      >>> out.tokens.tolist(), out.accepted.tolist()
      ([[1, 0]], [1])
    """
    params = check_params(params)
    draft_tokens = _array("draft_tokens", draft_tokens)
    target_logits = _array("target_logits", target_logits)
    positions = _array("positions", positions)
    if draft_tokens.ndim != 2 or draft_tokens.shape[1] < 1:
        raise ValueError(f"draft_tokens must be [B, K] with K >= 1, got shape "
                         f"{tuple(draft_tokens.shape)}")
    if not jnp.issubdtype(draft_tokens.dtype, jnp.integer):
        raise TypeError(f"draft_tokens must hold integer token ids, got dtype "
                        f"{draft_tokens.dtype}")
    batch, k = draft_tokens.shape
    if not jnp.issubdtype(target_logits.dtype, jnp.floating):
        raise TypeError(f"target_logits must have a floating dtype, got {target_logits.dtype}")
    if target_logits.ndim != 3 or target_logits.shape[:2] != (batch, k + 1) \
            or target_logits.shape[2] < 1:
        raise ValueError(f"target_logits must be [B, K+1, V] = [{batch}, {k + 1}, V] for "
                         f"draft_tokens of shape {tuple(draft_tokens.shape)}, got shape "
                         f"{tuple(target_logits.shape)}")
    vocab = target_logits.shape[2]
    if draft_probs is not None:
        draft_probs = _array("draft_probs", draft_probs)
        if not jnp.issubdtype(draft_probs.dtype, jnp.floating):
            raise TypeError(f"draft_probs must have a floating dtype, got {draft_probs.dtype}")
        if tuple(draft_probs.shape) != (batch, k, vocab):
            raise ValueError(f"draft_probs must be [B, K, V] = [{batch}, {k}, {vocab}], got "
                             f"shape {tuple(draft_probs.shape)}; pass None for one-hot drafts")
    if positions.shape != (batch,) or not jnp.issubdtype(positions.dtype, jnp.integer):
        raise ValueError(f"positions must be an integer [B] array with B={batch} (absolute "
                         f"position of each row's first draft), got shape "
                         f"{tuple(positions.shape)} and dtype {positions.dtype}")
    params.check_batch(batch)
    keys = row_keys(key, batch, "the drafts' rows")
    chain = build_chain(params, processors, eos_ids=list(stop_ids or ()))
    state = init_state(chain, state, batch, vocab)
    apply = None if chain is None else chain.apply
    update = None if chain is None else chain.update
    return _verify(keys, jnp.asarray(draft_tokens, jnp.int32), draft_probs, target_logits,
                   jnp.asarray(positions, jnp.int32), params, apply, update, state)

