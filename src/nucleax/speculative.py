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

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._draw import _first_crossing, dense_probs, first_max
from ._keys import row_keys
from ._params import SamplingParams
from ._sample import build_chain, check_params, init_state, prepare

__all__ = ["SpeculativeOutput", "VerifyOutput", "generate_speculative", "ngram_drafts",
           "timed_speculative", "truncated", "verify", "verify_impl"]


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
        prep, tau, _, _, _ = prepare(z, params, apply, st)
        p = dense_probs(prep, tau)
        best = first_max(prep)
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


def refuse_stateful(params: Any) -> None:
    """XTC (a coin per step) and mirostat (a state per emitted token) are not verified here."""
    on = [n for n in ("xtc", "mirostat") if n in params.samplers_on()]
    if on:
        raise NotImplementedError(
            f"speculative decoding does not support {on} (XTC's coin and mirostat's state "
            "change with every emitted token); decode without speculative= or turn them off")


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
    refuse_stateful(params)
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



# ----------------------------------------------------------------------------
# Prompt-lookup drafting and the speculative decoding loop


class SpeculativeOutput(NamedTuple):
    """What `generate_speculative` returns.

    Attributes:
      output: the `nucleax.decode.GenerateOutput` (tokens, lengths, stopped,
        stop_sequence; no log-probabilities or stats).
      steps: int32 `[B]`, target-model calls while the row was live (the
        prefill counts as one).
      drafted: int32 `[B]`, draft tokens proposed to the row while live (none
        on the plain steps of prompt lookup).
      accepted: int32 `[B]`, draft tokens accepted.
    """

    output: Any
    steps: jax.Array
    drafted: jax.Array
    accepted: jax.Array


def ngram_drafts(history: jax.Array, length: jax.Array, k: int, ngram: int) -> jax.Array:
    """Prompt-lookup drafts: `[B, k]` tokens that followed the latest earlier match of the suffix.

    `history [B, H]` holds each row's tokens (prompt then output), `length [B]`
    of them valid. The longest suffix of `n <= ngram` tokens that also occurs
    earlier (ending before the last token) proposes the `k` tokens after that
    occurrence (the last known token repeated where they run past the end).
    With no match, the last token is repeated. Drafts are proposals only:
    `verify` keeps the output exact whatever they are.
    """
    return _ngram_lookup(history, length, k, ngram)[0]


def _ngram_lookup(history: jax.Array, length: jax.Array, k: int,
                  ngram: int) -> tuple[jax.Array, jax.Array]:
    """`ngram_drafts`, and whether each row's last `ngram` tokens occur earlier `[B]`."""
    batch, width = history.shape
    idx = jnp.arange(width, dtype=jnp.int32)
    last = jnp.take_along_axis(history, jnp.maximum(length - 1, 0)[:, None], axis=-1)[:, 0]
    start = jnp.full((batch,), -1, jnp.int32)
    for n in range(1, ngram + 1):  # a longer match overrides a shorter one
        suffix_at = length[:, None] - n + jnp.arange(n, dtype=jnp.int32)[None, :]
        suffix = jnp.take_along_axis(history, jnp.clip(suffix_at, 0, width - 1), axis=-1)
        hit = (idx[None, :] + n < length[:, None]) & (length[:, None] >= n + 1)
        for t in range(n):
            shifted = jnp.roll(history, -t, axis=-1)
            hit = hit & (shifted == suffix[:, t:t + 1])
        latest = jnp.max(jnp.where(hit, idx[None, :], -1), axis=-1)
        start = jnp.where(latest >= 0, latest + n, start)
        found = latest >= 0  # kept from the last pass, n = ngram
    at = start[:, None] + jnp.arange(k, dtype=jnp.int32)[None, :]
    drafts = jnp.take_along_axis(history, jnp.clip(at, 0, width - 1), axis=-1)
    drafts = jnp.where((start[:, None] >= 0) & (at < length[:, None]), drafts, last[:, None])
    return drafts.astype(jnp.int32), found


_DRAFT_SALT = 0x5D  # a draft model's draw for position q: fold_in(fold_in(key_b, q), _DRAFT_SALT)


@dataclasses.dataclass(frozen=True)
class _Drafter:
    """How drafts are made (static: part of the compiled loop)."""

    k: int
    ngram: int
    graphdef: Any = None  # the draft model's graph (None: prompt lookup)


def truncated(model: Any, n_layers: int) -> Any:
    """A self-speculative draft: the first `n_layers` layers of `model`, then its norm and head.

    The draft shares the target's weight arrays (nothing is copied) and has its
    own KV cache (`n_layers` layers). It follows the decoding loop's model
    protocol, so it can be passed as `draft=` to `generate_speculative` (or as
    `speculative=` to `nucleax.decode.generate`). An untrained early exit is a
    weak draft (low acceptance); the output stays exact whatever it proposes.

    Args:
      model: a `nucleax.models.Llama` (an NNX module with `config.n_layers`
        and a `layers` list run in order, then `norm` and the head).
      n_layers: layers kept, `1 <= n_layers <= model.config.n_layers`.
    """
    from flax import nnx

    from . import _validate as va

    config = getattr(model, "config", None)
    total = getattr(config, "n_layers", None)
    if not isinstance(model, nnx.Module) or total is None or not hasattr(model, "layers"):
        raise TypeError(f"model must be a nucleax.models.Llama (an NNX module with config."
                        f"n_layers and layers), got {type(model).__name__}")
    n = va.int_arg("n_layers", n_layers, minimum=1)
    if n > total:
        raise ValueError(f"n_layers must be <= the model's {total} layers, got {n}")
    draft = nnx.merge(*nnx.split(model))  # new Variables over the same arrays
    draft.layers = nnx.List(list(draft.layers)[:n])
    draft.config = dataclasses.replace(config, n_layers=n)
    return draft


def _draft_uniforms(keys: jax.Array, positions: jax.Array) -> jax.Array:
    return jax.vmap(lambda key, q: jax.random.uniform(
        jax.random.fold_in(jax.random.fold_in(key, q), _DRAFT_SALT), (), jnp.float32))(
            keys, positions)


def _model_drafts(dmodel, dcache, cur, pos, req, procs, static, k):
    """K drafts from a draft model, each drawn from the pipeline on the draft's logits.

    The draft sees the processors' state advanced by its own drafts; greedy rows
    take the argmax. The draft's cache is then filled up to position `pos + K`.
    Returns drafts `[B, K]`, their distributions `[B, K, V]` and the cache.
    """

    def one(carry, i):
        tok, dcache, st = carry
        logits, dcache = dmodel(tok[:, None], (pos + i)[:, None], dcache)
        prep, tau, _, _, _ = prepare(logits[:, 0].astype(jnp.float32), req.params,
                                     static.apply, st)
        p = dense_probs(prep, tau)
        best = first_max(prep)
        drawn = _dense_draw(p, _draft_uniforms(req.keys, pos + 1 + i))
        d = jnp.where(prep.greedy, best, drawn).astype(jnp.int32)
        r = jnp.where(prep.greedy[:, None], jax.nn.one_hot(best, p.shape[-1], dtype=p.dtype), p)
        if static.update is not None:
            st = static.update(st, d)
        return (d, dcache, st), (d, r)

    (last, dcache, _), (d, r) = lax.scan(one, (cur, dcache, procs),
                                         jnp.arange(k, dtype=jnp.int32))
    _, dcache = dmodel(last[:, None], (pos + k)[:, None], dcache)
    return d.T, jnp.swapaxes(r, 0, 1), dcache


def _loop(graphdef, state, dstate, tokens, lengths, req, prog, *, max_new, cache_len, static,
          drafter):
    from . import decode as dec
    from .processors import suffix_matches

    first, cache, prog, _ = dec._prefill.__wrapped__(graphdef, state, tokens, lengths, req, prog,
                                                     cache_len=cache_len, static=static)
    batch, width = tokens.shape
    k = drafter.k
    pad = static.pad_id
    rows = jnp.arange(batch)
    dcache = None
    if drafter.graphdef is not None:  # the draft model reads the prompt too
        dmodel = dec._merge(drafter.graphdef, dstate)
        dcache = dmodel.init_cache(batch, cache_len)
        _, dcache = dmodel(tokens, jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32),
                                                     (batch, width)), dcache)
    hist = jnp.zeros((batch, cache_len), jnp.int32).at[:, :width].set(tokens)
    hist = hist.at[rows, lengths].set(first.tokens)
    out = jnp.full((batch, max_new), pad, jnp.int32).at[:, 0].set(first.tokens)
    ones = jnp.ones((batch,), jnp.int32)
    zeros = jnp.zeros((batch,), jnp.int32)
    # pos: position of the last emitted token (emitted, not yet fed to the model)
    carry = (jnp.asarray(lengths, jnp.int32), cache, dcache, prog, hist, out, ones, zeros, zeros)

    def cond(c):
        prog = c[3]
        return ~jnp.all(prog.done | (prog.generated >= max_new))

    def body(c):
        pos, cache, dcache, prog, hist, out, steps, drafted, acc = c
        live = ~prog.done & (prog.generated < max_new)
        cur = jnp.take_along_axis(hist, pos[:, None], axis=-1)
        at = pos[:, None] + jnp.arange(k + 1, dtype=jnp.int32)[None, :]
        model = dec._merge(graphdef, state)

        def speculate(cache, drafts, dprobs):
            logits, cache = model(jnp.concatenate([cur, drafts], axis=1), at, cache)
            v = verify_impl(req.keys, drafts, dprobs, logits, pos + 1, req.params, static.apply,
                            static.update, prog.procs)
            return v, cache, jnp.int32(k)

        if drafter.graphdef is None:
            drafts, found = _ngram_lookup(hist, pos + 1, k, drafter.ngram)

            def plain(cache):  # no live row matched `ngram` tokens: one position, as plain
                logits, cache = model(cur, pos[:, None], cache)
                v = verify_impl(req.keys, drafts[:, :0], None, logits, pos + 1, req.params,
                                static.apply, static.update, prog.procs)
                pad = jnp.full((batch, k), -1, jnp.int32)
                return v._replace(tokens=jnp.concatenate([v.tokens, pad], axis=1)), cache, \
                    jnp.int32(0)

            v, cache, n_drafts = lax.cond(jnp.any(found & live),
                                          lambda c: speculate(c, drafts, None), plain, cache)
        else:
            drafts, dprobs, dcache = _model_drafts(dec._merge(drafter.graphdef, dstate), dcache,
                                                   cur[:, 0], pos, req, prog.procs, static, k)
            v, cache, n_drafts = speculate(cache, drafts, dprobs)

        def emit(p, i):  # the i-th emitted token: stop checks as in the plain loop
            tok = v.tokens[:, i]
            ok = ~p.done & (p.generated < max_new) & (i < v.emitted)
            tail = jnp.where(ok[:, None],
                             jnp.concatenate([p.tail[:, 1:], tok[:, None]], axis=-1), p.tail) \
                if p.tail.shape[-1] else p.tail
            generated = p.generated + ok.astype(jnp.int32)
            hit_id = jnp.any(tok[:, None] == req.stops, axis=-1)
            seq_hits = suffix_matches(tail, req.seqs) & (generated >= req.min_tokens)[:, None]
            hit_seq = jnp.any(seq_hits, axis=-1)
            first_seq = jnp.argmax(seq_hits, axis=-1).astype(jnp.int32)
            stop_sequence = jnp.where(ok & hit_seq & ~hit_id, first_seq, p.stop_sequence)
            done = p.done | (ok & (hit_id | hit_seq))
            return p._replace(done=done, generated=generated, tail=tail,
                              stop_sequence=stop_sequence), (tok, ok, p.generated)

        prog2, (toks, oks, slots) = lax.scan(emit, prog, jnp.arange(k + 1, dtype=jnp.int32))
        toks, oks, slots = toks.T, oks.T, slots.T  # [B, K+1]
        n = jnp.sum(oks, axis=-1).astype(jnp.int32)
        out = out.at[rows[:, None], jnp.where(oks, slots, max_new)].set(toks, mode="drop")
        hist = hist.at[rows[:, None], jnp.where(oks, at + 1, cache_len)].set(toks, mode="drop")
        prog2 = prog2._replace(procs=v.state)
        pos = pos + n
        steps = steps + live.astype(jnp.int32)
        drafted = drafted + jnp.where(live, n_drafts, 0)
        acc = acc + jnp.where(live, jnp.minimum(v.accepted, n), 0)
        return pos, cache, dcache, prog2, hist, out, steps, drafted, acc

    c = lax.while_loop(cond, body, carry)
    return c[5], c[3], c[6], c[7], c[8]


_loop_jit = jax.jit(_loop, static_argnames=("graphdef", "max_new", "cache_len", "static",
                                            "drafter"))


def _setup(model, prompts, params, key, max_new_tokens, stop_ids, pad_id, bucket, processors,
           draft, draft_tokens, ngram):
    """Host checks and the loop's arguments: (args, static keywords)."""
    from . import _validate as va
    from . import decode as dec

    k = va.int_arg("draft_tokens", draft_tokens, minimum=1)
    n = va.int_arg("ngram", ngram, minimum=1)
    graphdef, state, tokens, lengths, req, prog, static, cache_len, max_new = dec._prepare(
        model, prompts, key, params, max_new_tokens, stop_ids, pad_id, bucket, processors)
    refuse_stateful(req.params)
    dgraph, dstate = None, ()  # () not None: a compiled call keeps every argument
    if isinstance(draft, str):
        if draft != "ngram":
            raise ValueError(f"draft (generate's speculative=) must be 'ngram' (prompt "
                             f"lookup) or a draft model, got "
                             f"{draft!r}")
        models = [model]
    else:
        if not (callable(draft) and hasattr(draft, "init_cache")):
            raise TypeError(f"draft (generate's speculative=) must be 'ngram' or a model with "
                            f"init_cache and __call__ (the decoding loop's protocol), got "
                            f"{type(draft).__name__}")
        dgraph, dstate = dec._split(draft)
        v_target = dec._vocab_size(model, graphdef, state)
        v_draft = dec._vocab_size(draft, dgraph, dstate)
        if v_draft != v_target:
            raise ValueError(f"draft's vocabulary ({v_draft} tokens) must be the target's "
                             f"({v_target}); use a draft model with the same tokenizer")
        models = [model, draft]
    longest = int(max(lengths))
    for m in models:  # the loop feeds K draft positions past the last emitted token
        limit = getattr(getattr(m, "config", None), "context_length", None)
        if limit is not None and longest + max_new + k - 1 > limit:
            raise ValueError(
                f"prompt length {longest} + max_new_tokens {max_new} + draft_tokens {k} - 1 = "
                f"{longest + max_new + k - 1} exceeds the model's context of {limit} tokens "
                f"(speculative decoding feeds {k} draft positions past the last token); "
                f"shorten the prompt, ask for fewer tokens or use fewer draft tokens")
    args = (graphdef, state, dstate, jnp.asarray(tokens), jnp.asarray(lengths), req, prog)
    kw = dict(max_new=max_new, cache_len=cache_len + k + 1, static=static,
              drafter=_Drafter(k, n, dgraph))
    return args, kw


def _output(result) -> SpeculativeOutput:
    from . import decode as dec

    toks, prog, steps, drafted, acc = result
    out = dec.GenerateOutput(toks, prog.generated, prog.done, stop_sequence=prog.stop_sequence)
    return SpeculativeOutput(out, steps, drafted, acc)


def generate_speculative(model: Any, prompts: Any, params: SamplingParams | None = None, *,
                         key: Any, max_new_tokens: int, stop_ids: Any = None, pad_id: int = 0,
                         processors: Any = None, bucket: int = 16, draft: Any = "ngram",
                         draft_tokens: int = 4, ngram: int = 3) -> SpeculativeOutput:
    """`nucleax.decode.generate` with speculative decoding, in one jitted loop.

    Every step proposes K = `draft_tokens` tokens per row, runs the target
    model once on the K+1 positions (writing the KV cache at absolute
    positions; rejected slots are overwritten later), and `verify`s them: the
    output is distributed exactly as plain sampling, with every parameter and
    processor (greedy rows give the same tokens as `generate`). The first
    token comes from the prefill, as in `generate`; the token at absolute
    position `q` of request `b` then uses only `fold_in(key_b, q)`.

    Drafts: `draft="ngram"` (prompt lookup, `ngram_drafts`: free, good when the
    output copies the prompt or itself; a step where no live row's last
    `ngram` tokens occur earlier is a plain one-position step, since short
    matches rarely predict well), or a draft model following the
    loop's model protocol with the target's vocabulary (a smaller model, or
    `truncated(model, n)`): it runs K+1 single-token steps per round on its
    own KV cache, each draft drawn from the full pipeline (same parameters and
    processors) on the draft's logits, with `fold_in(fold_in(key_b, q), 0x5D)`.

    Arguments as in `nucleax.decode.generate`, plus:
      draft: "ngram" or a draft model.
      draft_tokens: K, the drafts per step (static), >= 1. The prompt,
        `max_new_tokens` and K - 1 must fit the model's context.
      ngram: the longest suffix looked up by prompt lookup (static), >= 1; a
        step drafts only when some live row's last `ngram` tokens match.

    Returns:
      a `SpeculativeOutput`: the `GenerateOutput` (no log-probabilities or
      stats), and per row the target calls, drafts proposed and accepted.
    """
    args, kw = _setup(model, prompts, params, key, max_new_tokens, stop_ids, pad_id, bucket,
                      processors, draft, draft_tokens, ngram)
    return _output(_loop_jit(*args, **kw))


def timed_speculative(model: Any, prompts: Any, params: SamplingParams | None = None,
                      **kwargs: Any) -> tuple[SpeculativeOutput, float, float]:
    """`generate_speculative`, compiled first: (output, compile seconds, run seconds)."""
    import time

    t0 = time.perf_counter()
    args, kw = _setup(model, prompts, params, kwargs.pop("key"), kwargs.pop("max_new_tokens"),
                      kwargs.pop("stop_ids", None), kwargs.pop("pad_id", 0),
                      kwargs.pop("bucket", 16), kwargs.pop("processors", None),
                      kwargs.pop("draft", "ngram"), kwargs.pop("draft_tokens", 4),
                      kwargs.pop("ngram", 3))
    if kwargs:
        raise TypeError(f"unexpected arguments {sorted(kwargs)}")
    compiled = _loop_jit.lower(*args, **kw).compile()
    t1 = time.perf_counter()
    result = compiled(*args[1:])  # graphdef is static
    jax.block_until_ready(result)
    return _output(result), t1 - t0, time.perf_counter() - t1
