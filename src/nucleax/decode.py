"""The decoding loop: prefill, then a fully jitted `lax.while_loop`.

Model protocol (what `generate` needs from a model)::

    model.init_cache(batch: int, length: int) -> cache            # any pytree
    model(tokens [B, T] int32, positions [B, T] int32, cache)
        -> (logits [B, T, V] float, cache)

`positions` are absolute per row; the token at position `p` must be visible
to queries at positions `>= p` (see `nucleax.models.llama`). A Flax NNX module
is split into graph and state so the weights are traced arguments, not
constants; any other callable is closed over.

One step of the loop, for every row: the model's logits for the next
position; the logits processors (`nucleax.processors`: the chain that
`params` switches on, then `processors=`), whose state was built by `init`
from the prompts before the loop; temperature, truncation and the draw
(`nucleax.sample`); then `update` of the processors with the accepted token
(rows that have stopped pass no token, so their counts stop too); then the
stop checks: a stop id (the model's EOS ids unless `ignore_eos`, plus
`stop_token_ids`) or a stop sequence (`stop`, matched on device against the
end of the output once `min_tokens` tokens are out) ends the row.

Randomness: request `b` has its own key; the token that will sit at absolute
position `p` is drawn with `fold_in(key_b, p)`. Regenerating a request in
another batch (other rows, other order, other padding) gives the same tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import _validate as va
from ._keys import row_keys
from ._params import SamplingParams
from ._sample import build_chain, check_params, dense_output, sample_impl
from .processors import suffix_matches
from .samplers import check_order, mirostat_init, mirostat_update

__all__ = ["GenerateOutput", "generate", "stream"]


class GenerateOutput(NamedTuple):
    """What `generate` returns.

    Attributes:
      tokens: int32 `[B, max_new_tokens]`, `pad_id` after a row stops.
      lengths: int32 `[B]`, generated tokens per row (a stop token or the
        last token of a stop sequence counts).
      stopped: bool `[B]`, True where a stop id or a stop sequence ended the
        row (else the row hit `max_new_tokens`).
      logprobs: float32 `[B, max_new_tokens]` processed log-probabilities of
        the generated tokens (0 after a row stops), if requested, else None.
      raw_logprobs: the same under the raw logits, before any processor
        (`log_softmax` of the model's logits), or None.
      survivors: int32 `[B, max_new_tokens]`, tokens alive in the distribution
        each token was drawn from (0 after a row stops), if `return_stats`.
      entropy: float32 `[B, max_new_tokens]`, that distribution's entropy in
        nats (0 after a row stops), if `return_stats`.
      stop_sequence: int32 `[B]`, the index in the row's `params.stop` list of
        the stop sequence that ended the row, -1 if none did.
    """

    tokens: jax.Array
    lengths: jax.Array
    stopped: jax.Array
    logprobs: jax.Array | None = None
    raw_logprobs: jax.Array | None = None
    survivors: jax.Array | None = None
    entropy: jax.Array | None = None
    stop_sequence: jax.Array | None = None


class _Requests(NamedTuple):
    """Per-request values the loop reads (traced)."""

    keys: jax.Array  # [B] keys
    params: SamplingParams
    stops: jax.Array  # [B, S] int32 stop ids, -1 padding
    seqs: jax.Array  # [B, N, L] int32 stop sequences, right-aligned, -1 padding
    min_tokens: jax.Array  # [B] int32


class _Progress(NamedTuple):
    """Per-request state the loop carries."""

    done: jax.Array  # [B] bool
    generated: jax.Array  # [B] int32, tokens accepted so far
    procs: Any  # the processors' state
    tail: jax.Array  # [B, L] int32, the last output tokens (for stop sequences)
    stop_sequence: jax.Array  # [B] int32
    mu: jax.Array  # [B] float32, mirostat's state (unused when mirostat is off)


@dataclasses.dataclass(frozen=True)
class _Static:
    """What decides the compiled loop (hashable)."""

    apply: Any  # the processors' apply, or None
    update: Any  # the processors' update, or None
    pad_id: int
    stats: bool
    layout: Any = None  # a `nucleax.sharding.layout` when the loop runs on a mesh


def _vocab_size(model: Any, graphdef: Any, state: Any) -> int:
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None:
        return int(vocab)

    def probe():
        m = _merge(graphdef, state)
        return m(jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32), m.init_cache(1, 1))

    return int(jax.eval_shape(probe)[0].shape[-1])


def _prepare(model: Any, prompts: Any, key: Any, params: Any, max_new_tokens: Any,
             stop_ids: Any, pad_id: Any, bucket: Any, processors: Any):
    """Host-side validation, padding and the processors' initial state."""
    max_new = va.int_arg("max_new_tokens", max_new_tokens, minimum=1)
    bucket = va.int_arg("bucket", bucket, minimum=1)
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    rows = va.prompts_arg(prompts, vocab)
    eos = va.token_ids_arg("stop_ids", stop_ids, vocab)
    pad = va.token_id_arg("pad_id", pad_id, vocab, sentinel=-1)
    params = check_params(params)
    batch = len(rows)
    params.check_batch(batch)
    check_order(params)
    lengths = [int(r.size) for r in rows]
    limit = getattr(config, "context_length", None)
    longest = max(lengths)
    if limit is not None and longest + max_new > limit:
        raise ValueError(
            f"prompt length {longest} + max_new_tokens {max_new} = {longest + max_new} exceeds "
            f"the model's context of {limit} tokens; shorten the prompt or ask for fewer tokens")
    width = -(-longest // bucket) * bucket  # pad to a bucket: fewer recompilations
    if limit is not None:
        width = min(width, max(longest, limit - max_new))
    tokens = np.zeros((batch, width), np.int32)
    for i, r in enumerate(rows):
        tokens[i, : r.size] = r
    lengths = np.asarray(lengths, np.int32)
    keys = row_keys(key, batch, "one per prompt")
    chain = build_chain(params, processors, eos_ids=eos.tolist())

    stops = params.stop_ids_per_row(eos.tolist())
    stops = np.broadcast_to(stops, (batch, stops.shape[-1])) if stops.ndim == 1 else stops
    if stops.shape[-1] == 0:
        stops = np.full((batch, 1), -1, np.int32)
    seqs = np.asarray(params.stop)
    if seqs.size == 0:
        seqs = np.full((batch, 1, 1), -1, np.int32)
    elif seqs.ndim == 2:
        seqs = np.broadcast_to(seqs, (batch,) + seqs.shape)
    if vocab is not None:
        for name, ids in (("stop_token_ids", params.stop_token_ids), ("stop", params.stop)):
            if np.asarray(ids).size and np.max(ids) >= vocab:
                raise ValueError(f"params.{name} holds token id {int(np.max(ids))}, outside the "
                                 f"vocabulary [0, {vocab}); check the tokenizer")
    min_tokens = np.broadcast_to(np.asarray(params.min_tokens, np.int32), (batch,))
    requests = _Requests(keys, params, jnp.asarray(stops, jnp.int32), jnp.asarray(seqs, jnp.int32),
                         jnp.asarray(min_tokens))
    graphdef, state = _split(model)
    proc_state = None
    if chain is not None:
        proc_state = chain.init(jnp.asarray(tokens), jnp.asarray(lengths),
                                _vocab_size(model, graphdef, state), max_new)
    static = _Static(None if chain is None else chain.apply,
                     None if chain is None else chain.update, pad, False)
    progress = _Progress(jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.int32), proc_state,
                         jnp.full((batch, seqs.shape[-1]), -1, jnp.int32),
                         jnp.full((batch,), -1, jnp.int32), mirostat_init(params, batch))
    return graphdef, state, tokens, lengths, requests, progress, static, width + max_new, max_new


def _on_mesh(model: Any, mesh: Any, batch_axis: Any, model_axis: Any,
             params: Any) -> tuple[Any, Any]:
    """The model placed over `mesh` and the sampler's layout (or the model and None).

    Refuses `params` the sharded sampler does not support (the catalogue, another order).
    """
    if mesh is None:
        return model, None
    from . import sharding
    from ._sharded import refuse_catalogue

    refuse_catalogue(check_params(params))

    placed = sharding.shard_model(model, mesh, batch_axis=batch_axis, model_axis=model_axis)
    return placed, sharding.layout(mesh, batch_axis, model_axis)


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


def _next_token(logits, positions, req: _Requests, prog: _Progress, static: _Static):
    """One sampled token per row for `positions`, then the processors and the stop checks.

    Returns the sample (`SampleOutput`), the new progress, and the row's
    survivors and entropy when `static.stats`.
    """
    logits = logits.astype(jnp.float32)
    step_keys = jax.vmap(jax.random.fold_in)(req.keys, positions)
    miro = "mirostat" in req.params.samplers_on()
    mu = prog.mu if miro else None
    if static.layout is None:
        out = sample_impl(step_keys, logits, req.params, static.apply, prog.procs, True, 0,
                          "auto", 64, mu)
    else:  # logits split over a mesh: no [B, V] gather (nucleax.sharding)
        from . import sharding

        out = sharding.sample_impl(step_keys, logits, req.params, static.apply, prog.procs, True,
                                   0, "auto", 64, layout=static.layout)
    stats = None
    if static.stats:
        if static.layout is None:
            p = dense_output(logits, req.params, static.apply, prog.procs, "probs", "auto", 64,
                             step_keys, mu)
        else:
            from . import sharding

            p = sharding.dense_impl(logits, req.params, static.apply, prog.procs, "probs",
                                    "auto", 64, layout=static.layout)
        ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
        stats = (jnp.sum(p > 0, axis=-1).astype(jnp.int32), ent)
    live = ~prog.done
    accepted = jnp.where(live, out.tokens, -1)
    procs = prog.procs if static.update is None else static.update(prog.procs, accepted)
    generated = prog.generated + live.astype(jnp.int32)
    tail = prog.tail
    if tail.shape[-1]:
        tail = jnp.where(live[:, None],
                         jnp.concatenate([tail[:, 1:], out.tokens[:, None]], axis=-1), tail)
    hit_id = jnp.any(out.tokens[:, None] == req.stops, axis=-1)
    seq_hits = suffix_matches(tail, req.seqs) & (generated >= req.min_tokens)[:, None]
    hit_seq = jnp.any(seq_hits, axis=-1)
    first_seq = jnp.argmax(seq_hits, axis=-1).astype(jnp.int32)
    stop_sequence = jnp.where(live & hit_seq & ~hit_id, first_seq, prog.stop_sequence)
    done = prog.done | (live & (hit_id | hit_seq))
    new_mu = prog.mu
    if miro:
        new_mu = jnp.where(live, mirostat_update(prog.mu, out.logprobs, req.params), prog.mu)
    return out, _Progress(done, generated, procs, tail, stop_sequence, new_mu), stats


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len", "static"))
def _prefill(graphdef, state, tokens, lengths, req, prog, *, cache_len, static):
    model = _merge(graphdef, state)
    batch, width = tokens.shape
    cache = model.init_cache(batch, cache_len)
    positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (batch, width))
    logits, cache = model(tokens, positions, cache)
    # take_along_axis: on a mesh this compiles with no collective over the batch axis
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    out, prog, stats = _next_token(last, lengths, req, prog, static)
    return out, cache, prog, stats


@functools.partial(jax.jit, static_argnames=("graphdef", "static"), donate_argnums=(3,))
def _step(graphdef, state, tokens, cache, positions, req, prog, *, static):
    """Feeds `tokens` at `positions`; samples the tokens for `positions + 1`."""
    model = _merge(graphdef, state)
    logits, cache = model(tokens[:, None], positions[:, None], cache)
    out, prog, stats = _next_token(logits[:, 0], positions + 1, req, prog, static)
    return out, cache, prog, stats


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new", "cache_len", "static"))
def _generate(graphdef, state, tokens, lengths, req, prog, *, max_new, cache_len, static):
    first, cache, prog, stats0 = _prefill.__wrapped__(graphdef, state, tokens, lengths, req, prog,
                                                      cache_len=cache_len, static=static)
    batch = tokens.shape[0]
    pad = static.pad_id
    out_tokens = jnp.full((batch, max_new), pad, jnp.int32).at[:, 0].set(first.tokens)
    out_lp = jnp.zeros((batch, max_new), jnp.float32).at[:, 0].set(first.logprobs)
    out_raw = jnp.zeros((batch, max_new), jnp.float32).at[:, 0].set(first.raw_logprobs)
    n_stat = max_new if static.stats else 0
    n_alive = jnp.zeros((batch, n_stat), jnp.int32)
    ent = jnp.zeros((batch, n_stat), jnp.float32)
    if static.stats:
        n_alive, ent = n_alive.at[:, 0].set(stats0[0]), ent.at[:, 0].set(stats0[1])

    def cond(carry):
        i, prog = carry[0], carry[4]
        return (i < max_new) & ~jnp.all(prog.done)

    def body(carry):
        i, cur, pos, cache, prog, toks, lp, raw, n_alive, ent = carry
        live = ~prog.done
        out, cache, prog, stats = _step.__wrapped__(graphdef, state, cur, cache, pos, req, prog,
                                                    static=static)
        toks = toks.at[:, i].set(jnp.where(live, out.tokens, pad))
        lp = lp.at[:, i].set(jnp.where(live, out.logprobs, 0.0))
        raw = raw.at[:, i].set(jnp.where(live, out.raw_logprobs, 0.0))
        if static.stats:
            n_alive = n_alive.at[:, i].set(jnp.where(live, stats[0], 0))
            ent = ent.at[:, i].set(jnp.where(live, stats[1], 0.0))
        return i + 1, out.tokens, pos + 1, cache, prog, toks, lp, raw, n_alive, ent

    carry = (jnp.int32(1), first.tokens, jnp.asarray(lengths), cache, prog, out_tokens, out_lp,
             out_raw, n_alive, ent)
    _, _, _, _, prog, toks, lp, raw, n_alive, ent = jax.lax.while_loop(cond, body, carry)
    return toks, prog, lp, raw, n_alive, ent


def generate(model: Any, prompts: Any, params: SamplingParams | None = None, *, key: Any,
             max_new_tokens: int, stop_ids: Sequence[int] | None = None, pad_id: int = 0,
             return_logprobs: bool = False, return_stats: bool = False,
             processors: Any = None, bucket: int = 16, speculative: Any = None,
             draft_tokens: int = 4, ngram: int = 3, mesh: Any = None,
             batch_axis: str | None = "data", model_axis: str | None = "model") -> GenerateOutput:
    """Generates up to `max_new_tokens` tokens for every prompt, in one jitted call.

    Args:
      model: follows the model protocol (module docs), e.g. `nucleax.models.Llama`.
      prompts: token-id lists of any (non-zero) lengths, one per request, or
        a `[B, T]` integer array.
      params: `SamplingParams`, scalars or `[B]` per-request values, including
        the processors' fields (penalties, bias, bans, `min_tokens`) and the
        stop fields (`stop`, `stop_token_ids`, `ignore_eos`). Changing values
        never recompiles.
      key: one key (request `b` uses `fold_in(key, b)`) or `[B]` keys, one per
        request (use these for results independent of the batch).
      max_new_tokens: the most tokens generated per request.
      stop_ids: the model's end-of-sequence ids (e.g. `tokenizer.stop_ids`);
        they end a request unless its `ignore_eos` is set. The stop token is
        part of the output.
      pad_id: written after a request stops: a token id, or -1.
      return_logprobs: fill `logprobs` and `raw_logprobs`.
      return_stats: fill `survivors` and `entropy` (costs one `probs` per step).
      processors: extra logits processors (a `nucleax.processors.Processor` or
        a list), run after those `params` switches on; their `init` sees the
        prompts, their `update` each accepted token.
      bucket: prompts are padded to a multiple of this (fewer compilations).
      speculative: None (plain decoding), "ngram" (prompt-lookup drafts) or a
        draft model (e.g. `nucleax.speculative.truncated(model, n)`):
        speculative decoding, exactly the same distribution (greedy: the same
        tokens); see `nucleax.speculative.generate_speculative`, which also
        returns the acceptance counts. Not with `return_logprobs`,
        `return_stats` or `mesh`.
      draft_tokens: drafts per target call with `speculative` (static), >= 1.
      ngram: the longest suffix looked up by `speculative="ngram"`, >= 1.
      mesh, batch_axis, model_axis: run on a `jax.sharding.Mesh`: requests
        split over `batch_axis`, the model's heads, MLP and vocabulary head
        over `model_axis` (`model.shard`), logits left vocabulary-split for
        the sampler. The same tokens as one device (see docs/SHARDING.md).

    Returns:
      a `GenerateOutput`.
    """
    if speculative is not None:
        if return_logprobs or return_stats or mesh is not None:
            raise ValueError("return_logprobs, return_stats and mesh are not supported with "
                             f"speculative={speculative!r}; pass speculative=None for them")
        from .speculative import generate_speculative

        return generate_speculative(
            model, prompts, params, key=key, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
            pad_id=pad_id, processors=processors, bucket=bucket, draft=speculative,
            draft_tokens=draft_tokens, ngram=ngram).output
    model, layout = _on_mesh(model, mesh, batch_axis, model_axis, params)
    graphdef, state, tokens, lengths, req, prog, static, cache_len, max_new = _prepare(
        model, prompts, key, params, max_new_tokens, stop_ids, pad_id, bucket, processors)
    static = dataclasses.replace(static, stats=bool(return_stats), layout=layout)
    toks, prog, lp, raw, n_alive, ent = _generate(
        graphdef, state, tokens, lengths, req, prog, max_new=max_new, cache_len=cache_len,
        static=static)
    if not return_logprobs:
        lp = raw = None
    if not return_stats:
        n_alive = ent = None
    return GenerateOutput(toks, prog.generated, prog.done, lp, raw, n_alive, ent,
                          prog.stop_sequence)


def stream(model: Any, prompts: Any, params: SamplingParams | None = None, *, key: Any,
           max_new_tokens: int, stop_ids: Sequence[int] | None = None, pad_id: int = 0,
           processors: Any = None, bucket: int = 16, mesh: Any = None,
           batch_axis: str | None = "data",
           model_axis: str | None = "model") -> Iterator[tuple[jax.Array, jax.Array]]:
    """Like `generate`, yielding `(tokens [B], live [B])` after every step.

    `live[b]` is False once request `b` has stopped (its token is then
    `pad_id`). The tokens are exactly those of `generate` with the same
    arguments: the same prefill and step functions run, one jitted call per
    step instead of one loop.
    """
    model, layout = _on_mesh(model, mesh, batch_axis, model_axis, params)
    graphdef, state, tokens, lengths, req, prog, static, cache_len, max_new = _prepare(
        model, prompts, key, params, max_new_tokens, stop_ids, pad_id, bucket, processors)
    static = dataclasses.replace(static, layout=layout)
    out, cache, prog, _ = _prefill(graphdef, state, tokens, lengths, req, prog,
                                   cache_len=cache_len, static=static)
    yield out.tokens, jnp.ones_like(prog.done)
    positions = jnp.asarray(lengths)
    for _ in range(max_new - 1):
        if bool(jnp.all(prog.done)):
            return
        live = ~prog.done
        out, cache, prog, _ = _step(graphdef, state, out.tokens, cache, positions, req, prog,
                                    static=static)
        positions = positions + 1
        yield jnp.where(live, out.tokens, static.pad_id), live
