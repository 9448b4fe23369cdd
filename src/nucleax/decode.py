"""The decoding loop: prefill, then a fully jitted `lax.while_loop`.

Model protocol (what `generate` needs from a model)::

    model.init_cache(batch: int, length: int) -> cache            # any pytree
    model(tokens [B, T] int32, positions [B, T] int32, cache)
        -> (logits [B, T, V] float, cache)

`positions` are absolute per row; the token at position `p` must be visible
to queries at positions `>= p` (see `nucleax.models.llama`). A Flax NNX module
is split into graph and state so the weights are traced arguments, not
constants; any other callable is closed over.

Logits processors that carry state through the loop (penalties need per-row
token counts) follow::

    proc.init(prompts [B, T] int32, lengths [B] int32, vocab: int) -> state
    proc(state, logits [B, V]) -> logits              # before sampling
    proc.update(state, tokens [B] int32) -> state     # after each token

They must be hashable (they are static under jit); per-row values live in
their state. They run in order, before temperature (see the contract).

Randomness: request `b` has its own key; the token that will sit at absolute
position `p` is drawn with `fold_in(key_b, p)`. Regenerating a request in
another batch (other rows, other order, other padding) gives the same tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ._keys import row_keys
from ._params import SamplingParams
from ._sample import probs, sample

__all__ = ["GenerateOutput", "generate", "stream"]


class GenerateOutput(NamedTuple):
    """What `generate` returns.

    Attributes:
      tokens: int32 `[B, max_new_tokens]`, `pad_id` after a row stops.
      lengths: int32 `[B]`, generated tokens per row (a stop token counts).
      stopped: bool `[B]`, True where a stop id ended the row (else the
        row hit `max_new_tokens`).
      logprobs: float32 `[B, max_new_tokens]` processed log-probabilities of
        the generated tokens (0 after a row stops), if requested, else None.
      raw_logprobs: the same under the raw logits (`log_softmax`), or None.
      survivors: int32 `[B, max_new_tokens]`, tokens alive in the distribution
        each token was drawn from (0 after a row stops), if `return_stats`.
      entropy: float32 `[B, max_new_tokens]`, that distribution's entropy in
        nats (0 after a row stops), if `return_stats`.
    """

    tokens: jax.Array
    lengths: jax.Array
    stopped: jax.Array
    logprobs: jax.Array | None = None
    raw_logprobs: jax.Array | None = None
    survivors: jax.Array | None = None
    entropy: jax.Array | None = None


def _prepare(model: Any, prompts: Sequence[Sequence[int]], key: Any, params: Any,
             max_new_tokens: int, stop_ids: Any, bucket: int):
    """Host-side validation and padding. Returns arrays and static sizes."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if isinstance(prompts, np.ndarray | jax.Array):
        prompts = [list(map(int, row)) for row in np.asarray(prompts)]
    if not prompts:
        raise ValueError("prompts must hold at least one prompt, got an empty list")
    lengths = [len(p) for p in prompts]
    empty = [i for i, n in enumerate(lengths) if n == 0]
    if empty:
        raise ValueError(f"prompts must not be empty; prompt(s) {empty} have no tokens")
    config = getattr(model, "config", None)
    limit = getattr(config, "context_length", None)
    longest = max(lengths)
    if limit is not None and longest + max_new_tokens > limit:
        raise ValueError(
            f"prompt length {longest} + max_new_tokens {max_new_tokens} = "
            f"{longest + max_new_tokens} exceeds the model's context of {limit} tokens; "
            "shorten the prompt or ask for fewer tokens")
    vocab = getattr(config, "vocab_size", None)
    flat = [t for p in prompts for t in p]
    if vocab is not None and (min(flat) < 0 or max(flat) >= vocab):
        raise ValueError(f"prompt token ids must be in [0, {vocab}), got "
                         f"min {min(flat)} and max {max(flat)}")
    batch = len(prompts)
    width = -(-longest // bucket) * bucket  # pad to a bucket: fewer recompilations
    if limit is not None:
        width = min(width, max(longest, limit - max_new_tokens))
    tokens = np.zeros((batch, width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    cache_len = width + max_new_tokens
    if params is None:
        params = SamplingParams()
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be a nucleax.SamplingParams, got {type(params).__name__}")
    params.rows(batch)  # checks per-row lengths against the batch
    keys = row_keys(key, batch, "one per prompt")
    stops = np.full((batch, max(1, len(stop_ids or ()))), -1, np.int32)
    if stop_ids:
        stops[:] = np.asarray(list(stop_ids), np.int32)
    return tokens, np.asarray(lengths, np.int32), keys, params, stops, cache_len


def _split(model: Any):
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
        return graphdef, state
    return _Opaque(model), None


class _Opaque:
    """Wraps a non-NNX model so it can be a static jit argument."""

    def __init__(self, model):
        self.model = model

    def __hash__(self):
        return id(self.model)

    def __eq__(self, other):
        return isinstance(other, _Opaque) and other.model is self.model


def _merge(graphdef, state):
    return graphdef.model if isinstance(graphdef, _Opaque) else nnx.merge(graphdef, state)


def _pick(logits, positions, keys, params, processors, proc_states):
    """Processors, then one sampled token per row for the given positions.

    Returns the sample, the processors' new states and the processed logits
    (what the token was drawn from, for `return_stats`).
    """
    logits = logits.astype(jnp.float32)
    for proc, st in zip(processors, proc_states, strict=True):
        logits = proc(st, logits)
    step_keys = jax.vmap(jax.random.fold_in)(keys, positions)
    out = sample(step_keys, logits, params, return_logprobs=True)
    proc_states = tuple(proc.update(st, out.tokens)
                        for proc, st in zip(processors, proc_states, strict=True))
    return out, proc_states, logits


def _stats(logits, params):
    """Survivors and entropy of `probs(logits, params)` ([B] each)."""
    p = probs(logits.astype(jnp.float32), params)
    ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return jnp.sum(p > 0, axis=-1).astype(jnp.int32), ent


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len", "processors"))
def _prefill(graphdef, state, tokens, lengths, keys, params, stops, *, cache_len, processors):
    model = _merge(graphdef, state)
    batch, width = tokens.shape
    cache = model.init_cache(batch, cache_len)
    positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (batch, width))
    logits, cache = model(tokens, positions, cache)
    last = logits[jnp.arange(batch), lengths - 1]
    proc_states = tuple(p.init(tokens, lengths, last.shape[-1]) for p in processors)
    out, proc_states, last = _pick(last, lengths, keys, params, processors, proc_states)
    done = jnp.any(out.tokens[:, None] == stops, axis=-1)
    return out, cache, done, proc_states, last


@functools.partial(jax.jit, static_argnames=("graphdef", "processors"), donate_argnums=(3,))
def _step(graphdef, state, tokens, cache, positions, keys, params, stops, done, proc_states, *,
          processors):
    """Feeds `tokens` at `positions`; samples the tokens for `positions + 1`."""
    model = _merge(graphdef, state)
    logits, cache = model(tokens[:, None], positions[:, None], cache)
    out, proc_states, drawn_from = _pick(logits[:, 0], positions + 1, keys, params, processors,
                                         proc_states)
    new_done = done | jnp.any(out.tokens[:, None] == stops, axis=-1)
    return out, cache, new_done, proc_states, drawn_from


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new", "cache_len", "processors",
                                             "pad_id", "stats"))
def _generate(graphdef, state, tokens, lengths, keys, params, stops, *, max_new, cache_len,
              processors, pad_id, stats):
    first, cache, done, proc_states, last = _prefill.__wrapped__(
        graphdef, state, tokens, lengths, keys, params, stops, cache_len=cache_len,
        processors=processors)
    batch = tokens.shape[0]
    out_tokens = jnp.full((batch, max_new), pad_id, jnp.int32).at[:, 0].set(first.tokens)
    out_lp = jnp.zeros((batch, max_new), jnp.float32).at[:, 0].set(first.logprobs)
    out_raw = jnp.zeros((batch, max_new), jnp.float32).at[:, 0].set(first.raw_logprobs)
    gen_len = jnp.ones((batch,), jnp.int32)
    n_alive = jnp.zeros((batch, max_new if stats else 0), jnp.int32)
    ent = jnp.zeros((batch, max_new if stats else 0), jnp.float32)
    if stats:
        alive0, ent0 = _stats(last, params)
        n_alive, ent = n_alive.at[:, 0].set(alive0), ent.at[:, 0].set(ent0)

    def cond(carry):
        i, done = carry[0], carry[8]
        return (i < max_new) & ~jnp.all(done)

    def body(carry):
        i, cur, pos, cache, toks, lp, raw, gen_len, done, proc_states, n_alive, ent = carry
        out, cache, new_done, proc_states, logits = _step.__wrapped__(
            graphdef, state, cur, cache, pos, keys, params, stops, done, proc_states,
            processors=processors)
        live = ~done
        toks = toks.at[:, i].set(jnp.where(live, out.tokens, pad_id))
        lp = lp.at[:, i].set(jnp.where(live, out.logprobs, 0.0))
        raw = raw.at[:, i].set(jnp.where(live, out.raw_logprobs, 0.0))
        gen_len = jnp.where(live, i + 1, gen_len)
        if stats:
            alive_i, ent_i = _stats(logits, params)
            n_alive = n_alive.at[:, i].set(jnp.where(live, alive_i, 0))
            ent = ent.at[:, i].set(jnp.where(live, ent_i, 0.0))
        return (i + 1, out.tokens, pos + 1, cache, toks, lp, raw, gen_len, new_done, proc_states,
                n_alive, ent)

    carry = (jnp.int32(1), first.tokens, lengths, cache, out_tokens, out_lp, out_raw, gen_len,
             done, proc_states, n_alive, ent)
    _, _, _, _, toks, lp, raw, gen_len, done, _, n_alive, ent = jax.lax.while_loop(
        cond, body, carry)
    return toks, gen_len, done, lp, raw, n_alive, ent


def generate(model: Any, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None,
             *, key: Any, max_new_tokens: int, stop_ids: Sequence[int] | None = None,
             pad_id: int = 0, return_logprobs: bool = False, return_stats: bool = False,
             processors: Sequence[Any] = (), bucket: int = 16) -> GenerateOutput:
    """Generates up to `max_new_tokens` tokens for every prompt, in one jitted call.

    Args:
      model: follows the model protocol (module docs), e.g. `nucleax.models.Llama`.
      prompts: token id lists of any (non-zero) lengths, one per request.
      params: `SamplingParams`, scalars or `[B]` per-request values. Changing
        values never recompiles.
      key: one key (request `b` uses `fold_in(key, b)`) or `[B]` keys, one per
        request (use these for results independent of the batch).
      max_new_tokens: the most tokens generated per request.
      stop_ids: token ids that end a request (e.g. `tokenizer.stop_ids`); the
        stop token is part of the output.
      pad_id: written after a request stops.
      return_logprobs: fill `logprobs` and `raw_logprobs`.
      return_stats: fill `survivors` and `entropy` (costs one `probs` per step).
      processors: stateful logits processors (module docs).
      bucket: prompts are padded to a multiple of this (fewer compilations).

    Returns:
      a `GenerateOutput`.
    """
    tokens, lengths, keys, params, stops, cache_len = _prepare(
        model, prompts, key, params, max_new_tokens, stop_ids, bucket)
    graphdef, state = _split(model)
    toks, gen_len, done, lp, raw, n_alive, ent = _generate(
        graphdef, state, tokens, lengths, keys, params, stops, max_new=max_new_tokens,
        cache_len=cache_len, processors=tuple(processors), pad_id=int(pad_id),
        stats=bool(return_stats))
    if not return_logprobs:
        lp = raw = None
    if not return_stats:
        n_alive = ent = None
    return GenerateOutput(toks, gen_len, done, lp, raw, n_alive, ent)


def stream(model: Any, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None,
           *, key: Any, max_new_tokens: int, stop_ids: Sequence[int] | None = None,
           pad_id: int = 0, processors: Sequence[Any] = (),
           bucket: int = 16) -> Iterator[tuple[jax.Array, jax.Array]]:
    """Like `generate`, yielding `(tokens [B], live [B])` after every step.

    `live[b]` is False once request `b` has stopped (its token is then
    `pad_id`). The tokens are exactly those of `generate` with the same
    arguments: the same prefill and step functions run, one jitted call per
    step instead of one loop.
    """
    tokens, lengths, keys, params, stops, cache_len = _prepare(
        model, prompts, key, params, max_new_tokens, stop_ids, bucket)
    graphdef, state = _split(model)
    processors = tuple(processors)
    out, cache, done, proc_states, _ = _prefill(graphdef, state, tokens, lengths, keys, params,
                                                stops, cache_len=cache_len, processors=processors)
    yield out.tokens, jnp.ones_like(done)
    positions = jnp.asarray(lengths)
    for _ in range(max_new_tokens - 1):
        if bool(jnp.all(done)):
            return
        live = ~done
        out, cache, done, proc_states, _ = _step(graphdef, state, out.tokens, cache, positions,
                                                 keys, params, stops, done, proc_states,
                                                 processors=processors)
        positions = positions + 1
        yield jnp.where(live, out.tokens, pad_id), live
