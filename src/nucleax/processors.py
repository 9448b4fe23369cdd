"""Stage 1 of the pipeline: logits processors, as composable values (optax-style).

A processor is a `Processor(init, apply, update)` of pure functions::

    state  = proc.init(prompts [B, T] int32, lengths [B] int32, vocab, max_new_tokens)
    logits = proc.apply(state, logits [B, V] float32)        # before temperature
    state  = proc.update(state, tokens [B] int32)            # after each accepted token

`update` takes one token per row; a negative id means "no token for this row"
(a padded row, or a request that has stopped), and changes nothing. Each
processor's state is an explicit NamedTuple holding its per-row values and
its history, so every value is a traced array: new penalties, biases or
banned lists (with the same padded sizes) never recompile. `chain(...)`
composes processors; its state is the tuple of their states.

`apply` and `update` are static under `jax.jit` (they decide the computation),
so the built-in ones are module-level functions and a chain compares equal to
another chain of the same functions: building a fresh chain with new values
for every call reuses the compiled code. A custom processor should do the
same: define `apply` and `update` once (at module level) and keep its values
in the state that `init` returns. See the README for one.

The built-in processors implement the contract's step 1 (SEMANTICS Part 2); in
the default order that `SamplingParams.processors()` builds (vLLM's):
`allowed_token_ids`, `bad_words`, `min_tokens`, `logit_bias`,
`repetition_penalty`, `frequency_penalty` / `presence_penalty`,
`no_repeat_ngram`, then `dry`.

Per-row values: every factory takes one value for every row (a scalar, or one
list) or one per row (a `[B]` array, or a list of `B` lists). Ragged lists
are packed into padded arrays (`-1` is padding), their sizes rounded up to a
power of two so that nearby sizes share one compilation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "AllowedState",
    "BadWordsState",
    "BiasState",
    "DryState",
    "MinTokensState",
    "NgramState",
    "OutputCountsState",
    "Processor",
    "RepetitionState",
    "allowed_token_ids",
    "bad_words",
    "chain",
    "dry",
    "frequency_penalty",
    "logit_bias",
    "min_tokens",
    "no_repeat_ngram",
    "output_penalties",
    "presence_penalty",
    "repetition_penalty",
]

NEG_INF = -jnp.inf


class Processor(NamedTuple):
    """A logits processor: three pure functions (see the module docs).

    Attributes:
      init: `(prompts [B, T] int32, lengths [B] int32, vocab: int,
        max_new_tokens: int) -> state`. Prompt row `b` holds `lengths[b]`
        tokens, then padding.
      apply: `(state, logits [B, V] float32) -> logits [B, V] float32`.
      update: `(state, tokens [B] int32) -> state`; negative ids are ignored.
    """

    init: Callable[..., Any]
    apply: Callable[[Any, jax.Array], jax.Array]
    update: Callable[[Any, jax.Array], Any]


# ----------------------------------------------------------------------------
# Packing host values into padded per-row arrays


def _pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _is_seq(x: Any) -> bool:
    return isinstance(x, list | tuple | np.ndarray) or (
        isinstance(x, jax.Array) and x.ndim >= 1)


def _int_list(name: str, value: Any) -> list[int]:
    """A flat list of non-negative ints (token ids); clear errors otherwise."""
    if isinstance(value, str) or not _is_seq(value):
        raise TypeError(f"{name} must be a list of token ids (ints), got {value!r}; "
                        "encode text with the tokenizer first (tokenizer.encode(text))")
    out = []
    for v in (np.asarray(value).tolist() if isinstance(value, np.ndarray | jax.Array) else value):
        if isinstance(v, bool | np.bool_) or not isinstance(v, int | np.integer):
            raise TypeError(f"{name} must hold token ids (ints), got {v!r} in {value!r}")
        if v < 0 or v >= 2**31:
            raise ValueError(f"{name} must hold token ids in [0, vocab size), got {int(v)}")
        out.append(int(v))
    return out


def _right_aligned(seqs: list[list[int]], width: int) -> np.ndarray:
    out = np.full((len(seqs), width), -1, np.int32)
    for i, s in enumerate(seqs):
        if s:
            out[i, width - len(s):] = s
    return out


def pack_id_lists(name: str, value: Any, *, allow_empty: bool) -> np.ndarray:
    """Token-id list(s) -> `[L]` (one list for every row) or `[B, L]` (one per row), -1 padded.

    `None` gives `[0]` (off). A per-row entry of `None` (or `[]` where
    `allow_empty`) is a row of padding.
    """
    if value is None:
        return np.zeros((0,), np.int32)
    if isinstance(value, str) or not _is_seq(value):
        raise TypeError(f"{name} must be a list of token ids, or one such list per row, "
                        f"got {value!r}")
    items = list(value)
    per_row = any(x is None or _is_seq(x) for x in items)
    if not per_row:
        ids = _int_list(name, items)
        if not ids and not allow_empty:
            raise ValueError(f"{name} must not be empty (use None for no restriction)")
        return np.asarray(ids, np.int32).reshape(-1)
    rows = []
    for i, x in enumerate(items):
        ids = [] if x is None else _int_list(f"{name}[{i}]", x)
        if x is not None and not ids and not allow_empty:
            raise ValueError(f"{name}[{i}] must not be empty (use None for no restriction)")
        rows.append(ids)
    width = _pow2(max((len(r) for r in rows), default=1))
    out = np.full((len(rows), width), -1, np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def pack_sequences(name: str, value: Any) -> np.ndarray:
    """Token-id sequences -> `[N, L]` (for every row) or `[B, N, L]` (per row).

    Sequences are right-aligned (the last token in the last column), `-1`
    padded; `None` gives `[0, 0]` (off).
    """
    if value is None:
        return np.zeros((0, 0), np.int32)
    if isinstance(value, str) or not _is_seq(value):
        raise TypeError(f"{name} must be a list of token-id sequences (e.g. [[12, 7], [99]]), "
                        f"or one such list per row, got {value!r}")
    items = list(value)
    if any(isinstance(x, str) or (_is_seq(x) and any(isinstance(y, str) for y in x))
           for x in items):
        raise TypeError(f"{name} holds token-id sequences, not text; encode each string "
                        f"first: {name}=[tokenizer.encode(s) for s in strings]")

    def depth_of(x):
        return 0 if not _is_seq(x) else 1 + max((depth_of(y) for y in x), default=0)

    depth = max((depth_of(x) for x in items if x is not None), default=1)
    if depth == 0:
        raise TypeError(f"{name} must be a list of sequences (e.g. [[12, 7], [99]]); "
                        f"wrap a single sequence in a list: [{list(items)!r}]")
    if depth == 1 and not any(x is None for x in items):  # one list for every row
        seqs = [_int_list(f"{name}[{i}]", s) for i, s in enumerate(items)]
        for i, s in enumerate(seqs):
            if not s:
                raise ValueError(f"{name}[{i}] is an empty sequence; remove it")
        width = _pow2(max(len(s) for s in seqs))
        n = _pow2(len(seqs))
        return _right_aligned(seqs + [[]] * (n - len(seqs)), width)
    rows = []
    for b, x in enumerate(items):
        row = [] if x is None else [_int_list(f"{name}[{b}][{i}]", s) for i, s in enumerate(x)]
        for i, s in enumerate(row):
            if not s:
                raise ValueError(f"{name}[{b}][{i}] is an empty sequence; remove it")
        rows.append(row)
    width = _pow2(max((len(s) for r in rows for s in r), default=1))
    n = _pow2(max((len(r) for r in rows), default=1))
    return np.stack([_right_aligned(r + [[]] * (n - len(r)), width) for r in rows])


def pack_bias(name: str, value: Any) -> tuple[np.ndarray, np.ndarray]:
    """`{id: bias}` -> (`[L]` ids, `[L]` biases), or per row `[B, L]` each."""
    if value is None:
        return np.zeros((0,), np.int32), np.zeros((0,), np.float32)

    def one(where: str, d: Any) -> tuple[list[int], list[float]]:
        if d is None:
            return [], []
        if not isinstance(d, dict):
            raise TypeError(f"{where} must be a dict {{token_id: bias}}, got {d!r}")
        ids = _int_list(f"{where} keys", list(d.keys()))
        vals = []
        for k, v in d.items():
            if isinstance(v, bool | np.bool_) or not isinstance(v, int | float | np.number):
                raise TypeError(f"{where}[{k}] must be a number in [-100, 100], got {v!r}")
            if not np.isfinite(float(v)) or not -100 <= float(v) <= 100:
                raise ValueError(f"{where}[{k}] must be a bias in [-100, 100], got {v!r}")
            vals.append(float(v))
        return ids, vals

    if isinstance(value, dict):
        ids, vals = one(name, value)
        return np.asarray(ids, np.int32), np.asarray(vals, np.float32)
    if isinstance(value, str) or not _is_seq(value):
        raise TypeError(f"{name} must be a dict {{token_id: bias}} or one dict (or None) per "
                        f"row, got {value!r}")
    rows = [one(f"{name}[{i}]", d) for i, d in enumerate(value)]
    width = _pow2(max((len(r[0]) for r in rows), default=1))
    ids = np.full((len(rows), width), -1, np.int32)
    vals = np.zeros((len(rows), width), np.float32)
    for i, (r_ids, r_vals) in enumerate(rows):
        ids[i, : len(r_ids)], vals[i, : len(r_vals)] = r_ids, r_vals
    return ids, vals


# ----------------------------------------------------------------------------
# Shared helpers (traced)


def _rows_of(x: Any, batch: int, dtype: Any) -> jax.Array:
    """A scalar or `[B]` value as a `[B]` array."""
    x = jnp.asarray(x, dtype)
    return jnp.broadcast_to(x, (batch,) + x.shape[1:]) if x.ndim else jnp.full((batch,), x)


def _per_row(packed: Any, batch: int, ndim: int) -> jax.Array:
    """Packed lists: add the batch axis to shared ones (`ndim` is the per-row rank)."""
    packed = jnp.asarray(packed, jnp.int32)
    if packed.ndim == ndim:
        packed = jnp.broadcast_to(packed, (batch,) + packed.shape)
    return packed


def _check_ids(name: str, ids: Any, vocab: int) -> None:
    """Host check: every listed id is in the vocabulary (skipped for traced ids)."""
    if isinstance(ids, jax.core.Tracer):
        return
    arr = np.asarray(ids)
    bad = arr[(arr >= vocab)]
    if bad.size:
        raise ValueError(f"{name} holds token id {int(bad.reshape(-1)[0])}, outside the "
                         f"vocabulary [0, {vocab}); remove it or check the tokenizer")


def _scatter_rows(shape: tuple[int, int], ids: jax.Array, values: Any, *, add: bool) -> jax.Array:
    """A `[B, V]` array with `values` at `(b, ids[b, j])`; ids < 0 are dropped."""
    batch, vocab = shape
    ids = jnp.where(ids < 0, vocab, ids)  # out of bounds: dropped
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], ids.shape)
    base = jnp.zeros(shape, jnp.asarray(values).dtype)
    at = base.at[rows, ids]
    return at.add(values, mode="drop") if add else at.set(values, mode="drop")


def _push(tail: jax.Array, tokens: jax.Array) -> jax.Array:
    """Appends one token per row to a right-aligned `[B, L]` history (negative: no-op)."""
    if tail.shape[-1] == 0:
        return tail
    shifted = jnp.concatenate([tail[:, 1:], tokens[:, None]], axis=-1)
    return jnp.where((tokens >= 0)[:, None], shifted, tail)


def suffix_matches(tail: jax.Array, seqs: jax.Array) -> jax.Array:
    """`[B, N]` bool: the right-aligned history `tail [B, L]` ends with sequence n.

    `seqs [B, N, L]` are right-aligned and `-1` padded; an all-padding slot
    never matches. The history must be at least as wide as the sequences.
    """
    width = seqs.shape[-1]
    tail = tail[:, -width:] if width else tail[:, :0]
    same = (seqs == tail[:, None, :]) | (seqs < 0)
    return jnp.all(same, axis=-1) & (seqs[..., -1] >= 0)


# ----------------------------------------------------------------------------
# The serving set


class AllowedState(NamedTuple):
    allowed: jax.Array  # [B, V] bool; a row allowing nothing listed is unrestricted


def allowed_token_ids(ids: Any) -> Processor:
    """Only the listed tokens may be drawn: every other token gets `-inf`.

    Args:
      ids: one list of token ids for every row, or one list (or `None`: no
        restriction) per row.

    Example:
      >>> import jax.numpy as jnp
      >>> p = allowed_token_ids([1, 3])
      >>> s = p.init(jnp.zeros((1, 1), jnp.int32), jnp.ones((1,), jnp.int32), 4, 0)
      >>> p.apply(s, jnp.zeros((1, 4))).tolist()
      [[-inf, 0.0, -inf, 0.0]]
    """
    return allowed_from_packed(pack_id_lists("allowed_token_ids", ids, allow_empty=False))


def allowed_from_packed(packed: Any) -> Processor:
    """`allowed_token_ids` from ids already packed (`[L]` or `[B, L]`, -1 padded)."""

    def init(prompts, lengths, vocab, max_new_tokens):
        del lengths, max_new_tokens
        _check_ids("allowed_token_ids", packed, vocab)
        ids = _per_row(packed, prompts.shape[0], 1)
        allowed = _scatter_rows((prompts.shape[0], vocab), ids, True, add=False)
        unrestricted = ~jnp.any(ids >= 0, axis=-1)
        return AllowedState(allowed | unrestricted[:, None])

    return Processor(init, _allowed_apply, _stateless_update)


def _allowed_apply(state: AllowedState, logits: jax.Array) -> jax.Array:
    return jnp.where(state.allowed, logits, NEG_INF)


def _stateless_update(state: Any, tokens: jax.Array) -> Any:
    del tokens
    return state


class BadWordsState(NamedTuple):
    words: jax.Array  # [B, N, L] int32, right-aligned, -1 padding
    tail: jax.Array  # [B, L - 1] int32: the last output tokens, right-aligned, -1 before them


def bad_words(words: Any) -> Processor:
    """Bans token sequences (SEMANTICS step 1.2).

    A one-token word is always banned. For a longer word, its last token gets
    `-inf` whenever the output (not the prompt) ends with all its other tokens.

    Args:
      words: a list of token-id sequences for every row, or one such list (or
        `None`) per row.
    """
    return bad_words_from_packed(pack_sequences("bad_words", words))


def bad_words_from_packed(packed: Any) -> Processor:
    """`bad_words` from sequences already packed (`[N, L]` or `[B, N, L]`)."""

    def init(prompts, lengths, vocab, max_new_tokens):
        del lengths, max_new_tokens
        _check_ids("bad_words", packed, vocab)
        w = _per_row(packed, prompts.shape[0], 2)
        tail = jnp.full((prompts.shape[0], max(w.shape[-1] - 1, 0)), -1, jnp.int32)
        return BadWordsState(w, tail)

    return Processor(init, _bad_words_apply, _bad_words_update)


def _bad_words_apply(state: BadWordsState, logits: jax.Array) -> jax.Array:
    words = state.words
    if words.shape[-1] == 0:
        return logits
    prefix = words[..., :-1]
    if prefix.shape[-1]:
        tail = state.tail[:, None, :]
        hit = jnp.all((prefix == tail) | (prefix < 0), axis=-1)
    else:
        hit = jnp.ones(words.shape[:2], bool)
    last = jnp.where(hit, words[..., -1], -1)
    banned = _scatter_rows(logits.shape, last, True, add=False)
    return jnp.where(banned, NEG_INF, logits)


def _bad_words_update(state: BadWordsState, tokens: jax.Array) -> BadWordsState:
    return state._replace(tail=_push(state.tail, tokens))


class MinTokensState(NamedTuple):
    min_tokens: jax.Array  # [B] int32
    stop_ids: jax.Array  # [B, S] int32, -1 padding
    generated: jax.Array  # [B] int32, tokens accepted so far


def min_tokens(n: Any, stop_ids: Any) -> Processor:
    """While fewer than `n` tokens are generated, every stop id gets `-inf`.

    Args:
      n: int `>= 0` per row (scalar or `[B]`); 0 is off.
      stop_ids: the ids that would end the request: one list for every row
        or one list per row.
    """
    return min_tokens_from_packed(n, pack_id_lists("stop_ids", stop_ids, allow_empty=True))


def min_tokens_from_packed(n: Any, packed: Any) -> Processor:
    """`min_tokens` with stop ids already packed (`[S]` or `[B, S]`, -1 padded)."""

    def init(prompts, lengths, vocab, max_new_tokens):
        del lengths, max_new_tokens
        _check_ids("stop_ids", packed, vocab)
        batch = prompts.shape[0]
        return MinTokensState(_rows_of(n, batch, jnp.int32), _per_row(packed, batch, 1),
                              jnp.zeros((batch,), jnp.int32))

    return Processor(init, _min_tokens_apply, _min_tokens_update)


def _min_tokens_apply(state: MinTokensState, logits: jax.Array) -> jax.Array:
    early = state.generated < state.min_tokens
    ids = jnp.where(early[:, None], state.stop_ids, -1)
    return jnp.where(_scatter_rows(logits.shape, ids, True, add=False), NEG_INF, logits)


def _min_tokens_update(state: MinTokensState, tokens: jax.Array) -> MinTokensState:
    return state._replace(generated=state.generated + (tokens >= 0).astype(jnp.int32))


class BiasState(NamedTuple):
    bias: jax.Array  # [B, V] float32, zero where no bias is listed


def logit_bias(bias: Any) -> Processor:
    """`z_x += b_x` for the listed tokens (OpenAI / vLLM `logit_bias`).

    Args:
      bias: a dict `{token_id: bias}` for every row, or one dict (or `None`)
        per row; biases in `[-100, 100]`.

    Example:
      >>> import jax.numpy as jnp
      >>> p = logit_bias({2: -100.0, 0: 1.5})
      >>> s = p.init(jnp.zeros((1, 1), jnp.int32), jnp.ones((1,), jnp.int32), 3, 0)
      >>> p.apply(s, jnp.zeros((1, 3))).tolist()
      [[1.5, 0.0, -100.0]]
    """
    return bias_from_packed(*pack_bias("logit_bias", bias))


def bias_from_packed(ids: Any, vals: Any) -> Processor:
    """`logit_bias` from `(ids, biases)` already packed (`[L]` or `[B, L]` each)."""

    def init(prompts, lengths, vocab, max_new_tokens):
        del lengths, max_new_tokens
        _check_ids("logit_bias", ids, vocab)
        batch = prompts.shape[0]
        ids_rows = _per_row(ids, batch, 1)
        vals_rows = jnp.broadcast_to(jnp.asarray(vals, jnp.float32), ids_rows.shape)
        vals_rows = jnp.where(jnp.isfinite(vals_rows), jnp.clip(vals_rows, -100.0, 100.0), 0.0)
        return BiasState(_scatter_rows((batch, vocab), ids_rows, vals_rows, add=True))

    return Processor(init, _bias_apply, _stateless_update)


def _bias_apply(state: BiasState, logits: jax.Array) -> jax.Array:
    return logits + state.bias


def _seen_from(prompts: jax.Array, lengths: jax.Array, vocab: int) -> jax.Array:
    """`[B, V]` bool: the tokens present in each prompt's first `lengths` tokens."""
    width = prompts.shape[1]
    ids = jnp.where(jnp.arange(width)[None, :] < lengths[:, None], prompts, -1)
    return _scatter_rows((prompts.shape[0], vocab), ids, True, add=False)


class RepetitionState(NamedTuple):
    penalty: jax.Array  # [B] float32
    seen: jax.Array  # [B, V] bool: occurs in the prompt or the output


def repetition_penalty(penalty: Any) -> Processor:
    """CTRL's repetition penalty (Keskar et al., 2019; HF / vLLM).

    For every token that occurs in the prompt or the output so far:
    `z_x / r` if `z_x > 0`, else `z_x * r`. `r = 1` is off; `r > 1`
    discourages repeats. Inside jit, `r <= 0` or NaN counts as off.

    Args:
      penalty: `r > 0`, a scalar or `[B]`.
    """

    def init(prompts, lengths, vocab, max_new_tokens):
        del max_new_tokens
        batch = prompts.shape[0]
        return RepetitionState(_rows_of(penalty, batch, jnp.float32),
                               _seen_from(prompts, lengths, vocab))

    return Processor(init, _repetition_apply, _repetition_update)


def _repetition_apply(state: RepetitionState, logits: jax.Array) -> jax.Array:
    r = state.penalty
    r = jnp.where((r > 0) & jnp.isfinite(r), r, 1.0)[:, None]
    penalised = jnp.where(logits > 0, logits / r, logits * r)
    return jnp.where(state.seen, penalised, logits)


def _repetition_update(state: RepetitionState, tokens: jax.Array) -> RepetitionState:
    hit = _scatter_rows(state.seen.shape, tokens[:, None], True, add=False)
    return state._replace(seen=state.seen | hit)


class OutputCountsState(NamedTuple):
    frequency: jax.Array  # [B] float32
    presence: jax.Array  # [B] float32
    counts: jax.Array  # [B, V] int32: occurrences in the output (not the prompt)


def output_penalties(frequency: Any = 0.0, presence: Any = 0.0) -> Processor:
    """OpenAI's frequency and presence penalties together, over one count table.

    `z_x -= f * c_x + q * [c_x > 0]`, `c_x` counting x in the output only
    (not the prompt). Both in `[-2, 2]`; 0 is off. Inside jit, NaN counts as
    off and values are clipped to `[-2, 2]`.
    """

    def init(prompts, lengths, vocab, max_new_tokens):
        del lengths, max_new_tokens
        batch = prompts.shape[0]
        return OutputCountsState(_rows_of(frequency, batch, jnp.float32),
                                 _rows_of(presence, batch, jnp.float32),
                                 jnp.zeros((batch, vocab), jnp.int32))

    return Processor(init, _output_apply, _output_update)


def frequency_penalty(f: Any) -> Processor:
    """`z_x -= f * c_x`, `c_x` = count of x in the output; `f` in `[-2, 2]`, 0 is off."""
    return output_penalties(frequency=f)


def presence_penalty(q: Any) -> Processor:
    """`z_x -= q` for every x already in the output; `q` in `[-2, 2]`, 0 is off."""
    return output_penalties(presence=q)


def _safe_penalty(x: jax.Array) -> jax.Array:
    return jnp.where(jnp.isnan(x), 0.0, jnp.clip(x, -2.0, 2.0))[:, None]


def _output_apply(state: OutputCountsState, logits: jax.Array) -> jax.Array:
    c = state.counts
    f, q = _safe_penalty(state.frequency), _safe_penalty(state.presence)
    return logits - (f * c.astype(jnp.float32) + q * (c > 0).astype(jnp.float32))


def _output_update(state: OutputCountsState, tokens: jax.Array) -> OutputCountsState:
    add = _scatter_rows(state.counts.shape, tokens[:, None], jnp.int32(1), add=True)
    return state._replace(counts=state.counts + add)


class NgramState(NamedTuple):
    size: jax.Array  # [B] int32, n (0 = off)
    history: jax.Array  # [B, H] int32: prompt then output, -1 after its end
    length: jax.Array  # [B] int32: tokens in `history`
    match: jax.Array  # [B, H] int32: common-suffix length of history[:j] and history[:length]


def no_repeat_ngram(n: Any) -> Processor:
    """HF's `no_repeat_ngram_size`: never complete an n-gram already in prompt + output.

    A token x gets `-inf` when the last `n - 1` tokens followed by x already
    occur in the prompt plus output. `n = 0` is off; `n = 1` bans every token
    seen so far. The history holds the last `H = prompt width + max_new_tokens`
    tokens.

    Args:
      n: int `>= 0`, a scalar or `[B]`.
    """

    def init(prompts, lengths, vocab, max_new_tokens):
        del vocab
        batch, width = prompts.shape
        cap = max(width + int(max_new_tokens), 1)
        return _ngram_init(_rows_of(n, batch, jnp.int32), jnp.asarray(prompts, jnp.int32),
                           jnp.asarray(lengths, jnp.int32), cap)

    return Processor(init, _ngram_apply, _ngram_update)


@functools.partial(jax.jit, static_argnames=("cap",))
def _ngram_init(size: jax.Array, prompts: jax.Array, lengths: jax.Array, cap: int) -> NgramState:
    """The n-gram state after replaying each prompt's tokens (compiled once per shape)."""
    batch = prompts.shape[0]
    state = NgramState(size, jnp.full((batch, cap), -1, jnp.int32),
                       jnp.zeros((batch,), jnp.int32), jnp.zeros((batch, cap), jnp.int32))
    return _replay(state, _ngram_update, prompts, lengths)


def _ngram_apply(state: NgramState, logits: jax.Array) -> jax.Array:
    n = state.size[:, None]
    cols = jnp.arange(state.history.shape[1])[None, :]
    # Candidate x = history[j] completes a repeat iff history[:j] ends with the
    # same n - 1 tokens as the whole history.
    hit = (cols < state.length[:, None]) & (state.match >= n - 1) & (n > 0)
    banned = _scatter_rows(logits.shape, jnp.where(hit, state.history, -1), True, add=False)
    return jnp.where(banned, NEG_INF, logits)


def _ngram_update(state: NgramState, tokens: jax.Array) -> NgramState:
    hist, length, match = _push_matched(state.history, state.length, state.match, tokens,
                                        jnp.zeros(tokens.shape, bool))
    return state._replace(history=hist, length=length, match=match)


def _push_matched(hist, length, match, tokens, breaks):
    """Appends `tokens` (-1: none) to the histories `[B, H]` and advances the match table.

    `match[j]` is the length of the common suffix of `history[:j]` and the whole
    history; appending t makes it `match[j - 1] + 1` where `history[j - 1] == t`
    (and t does not `break` matches), else 0. A full history slides by one (the
    oldest token is forgotten). Shared by `no_repeat_ngram` and `dry`.
    """
    cap = hist.shape[1]
    live = tokens >= 0
    full = length >= cap
    slide = (live & full)[:, None]
    hist = jnp.where(slide, jnp.roll(hist, -1, axis=1).at[:, -1].set(-1), hist)
    match = jnp.where(slide, jnp.roll(match, -1, axis=1).at[:, -1].set(0), match)
    length = jnp.where(live & full, cap - 1, length)
    prev_tok = jnp.concatenate([jnp.full((hist.shape[0], 1), -1, jnp.int32), hist[:, :-1]], 1)
    prev_match = jnp.concatenate([jnp.zeros((hist.shape[0], 1), jnp.int32), match[:, :-1]], 1)
    extend = (prev_tok == tokens[:, None]) & ~breaks[:, None]
    new_match = jnp.where(extend, prev_match + 1, 0)
    rows = jnp.arange(hist.shape[0])
    new_hist = hist.at[rows, jnp.minimum(length, cap - 1)].set(tokens)
    live_col = live[:, None]
    return (jnp.where(live_col, new_hist, hist), jnp.where(live, length + 1, length),
            jnp.where(live_col, new_match, match))


def _replay(state: Any, update: Callable[[Any, jax.Array], Any], prompts: jax.Array,
            lengths: jax.Array) -> Any:
    """`state` after `update` with each prompt's tokens in turn (-1 past a row's length)."""
    width = prompts.shape[1]
    if width == 0:
        return state
    cols = jnp.arange(width)[None, :] < lengths[:, None]
    toks = jnp.where(cols, prompts, -1).T  # [T, B]
    return jax.lax.fori_loop(0, width, lambda i, s: update(s, toks[i]), state)


class DryState(NamedTuple):
    multiplier: jax.Array  # [B] float32 (0 = off)
    base: jax.Array  # [B] float32
    allowed_length: jax.Array  # [B] int32
    range: jax.Array  # [B] int32 (0 = the whole context)
    breaker: jax.Array  # [B, V] bool: the row's sequence breakers
    history: jax.Array  # [B, H] int32: prompt then output, -1 after its end
    length: jax.Array  # [B] int32: tokens in `history`
    match: jax.Array  # [B, H] int32: breaker-free common suffix of history[:j] and history[:length]


def dry(multiplier: Any, base: Any = 1.75, allowed_length: Any = 2, range: Any = 0,
        sequence_breakers: Any = ()) -> Processor:
    """DRY, "don't repeat yourself" (llama.cpp / koboldcpp): penalise extending a repeat.

    The context `c_0 .. c_{L-1}` is the prompt then the output so far. With
    `range = R > 0` only its last R tokens are looked at (`s = max(0, L - R)`;
    `R = 0`: `s = 0`). For each follower position `j` in `[s, L - 1]`, `m_j`
    is the largest `n >= 0` with `c_{j-n} .. c_{j-1} == c_{L-n} .. c_{L-1}`,
    `j - n >= s`, and none of those n tokens a sequence breaker (the two
    copies may overlap). A candidate x gets `n_x = max m_j` over the j with
    `c_j == x` (x never seen: no penalty); a breaker is never penalised. Then::

        z_x -= multiplier * base ** (n_x - allowed_length)   if n_x >= allowed_length

    So when the context ends with a breaker nothing is penalised. The history
    holds the last `H = prompt width + max_new_tokens` tokens (older ones are
    forgotten, as in `no_repeat_ngram`); each `update` costs `O(H)` per row.

    Traced values that the host would reject fall back safely: a NaN or
    negative multiplier is 0 (off), a base below 1 (or NaN) is 1, an
    `allowed_length` below 1 is 1 and a negative range is 0 (the whole
    context). A penalty too large for float32 (a huge multiplier, base or
    match length) gives `-inf`: the token is banned, never NaN.

    Args:
      multiplier: float `>= 0`, a scalar or `[B]`; 0 is off.
      base: float `>= 1`, a scalar or `[B]` (1.75 is usual).
      allowed_length: int `>= 1`, a scalar or `[B]`: repeats this long are free.
      range: int `>= 0`, a scalar or `[B]`: how many of the last tokens to
        look at; 0 is the whole context.
      sequence_breakers: token ids that end a match (e.g. newline, `:`), one
        list for every row or one list (or `None`) per row.

    Example:
      >>> import jax.numpy as jnp
      >>> p = dry(1.0, base=2.0, allowed_length=2)
      >>> s = p.init(jnp.array([[1, 2, 3, 4, 1, 2, 3]]), jnp.array([7]), 5, 0)
      >>> p.apply(s, jnp.zeros((1, 5))).tolist()  # [1, 2, 3] was followed by 4
      [[0.0, 0.0, 0.0, 0.0, -2.0]]
      >>> p = dry(1.0, base=2.0, allowed_length=2, sequence_breakers=[2])
      >>> s = p.init(jnp.array([[1, 2, 3, 4, 1, 2, 3]]), jnp.array([7]), 5, 0)
      >>> p.apply(s, jnp.zeros((1, 5))).tolist()  # the match [3] stops at the breaker
      [[0.0, 0.0, 0.0, 0.0, 0.0]]

    Reference: p-e-w's DRY sampler (text-generation-webui, 2024; llama.cpp's
    `dry` sampler), with the exact rule above.
    """
    checks = (("multiplier", multiplier, lambda x: np.isfinite(x) & (x >= 0),
               "a finite number >= 0 (0 means off)"),
              ("base", base, lambda x: np.isfinite(x) & (x >= 1), "a finite number >= 1"),
              ("allowed_length", allowed_length, lambda x: x >= 1, "an integer >= 1"),
              ("range", range, lambda x: x >= 0, "an integer >= 0 (0 means the whole context)"))
    for name, value, ok, expected in checks:
        if isinstance(value, jax.core.Tracer):
            continue
        arr = np.asarray(value)
        integer = name in ("allowed_length", "range")
        if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or (
                not integer and np.issubdtype(arr.dtype, np.floating))) or arr.ndim > 1:
            kind = "an integer" if integer else "a number"
            raise TypeError(f"dry {name} must be {kind} or a [B] array, got {value!r}")
        if not np.all(ok(arr)):
            raise ValueError(f"dry {name} must be {expected}, got {value!r}")
    return dry_from_packed(multiplier, base, allowed_length, range,
                           pack_id_lists("sequence_breakers", sequence_breakers, allow_empty=True))


def dry_from_packed(multiplier: Any, base: Any, allowed_length: Any, range: Any,
                    breakers: Any) -> Processor:
    """`dry` with the sequence breakers already packed (`[L]` or `[B, L]`, -1 padded)."""

    def init(prompts, lengths, vocab, max_new_tokens):
        _check_ids("dry_sequence_breakers", breakers, vocab)
        batch, width = prompts.shape
        cap = max(width + int(max_new_tokens), 1)
        ids = _per_row(breakers, batch, 1)
        return _dry_init(_rows_of(multiplier, batch, jnp.float32),
                         _rows_of(base, batch, jnp.float32),
                         _rows_of(allowed_length, batch, jnp.int32),
                         _rows_of(range, batch, jnp.int32),
                         _scatter_rows((batch, vocab), ids, True, add=False),
                         jnp.asarray(prompts, jnp.int32), jnp.asarray(lengths, jnp.int32), cap)

    return Processor(init, _dry_apply, _dry_update)


@functools.partial(jax.jit, static_argnames=("cap",))
def _dry_init(multiplier, base, allowed_length, range_, breaker, prompts, lengths,
              cap: int) -> DryState:
    """The DRY state after replaying each prompt's tokens (compiled once per shape)."""
    batch = prompts.shape[0]
    state = DryState(multiplier, base, allowed_length, range_, breaker,
                     jnp.full((batch, cap), -1, jnp.int32), jnp.zeros((batch,), jnp.int32),
                     jnp.zeros((batch, cap), jnp.int32))
    return _replay(state, _dry_update, prompts, lengths)


def _dry_apply(state: DryState, logits: jax.Array) -> jax.Array:
    batch, vocab = logits.shape
    hist, length = state.history, state.length[:, None]
    cols = jnp.arange(hist.shape[1])[None, :]
    window = state.range[:, None]
    start = jnp.where(window > 0, jnp.maximum(length - window, 0), 0)
    follower = (cols >= start) & (cols < length)
    # m_j, capped by the window: the match may not reach before `start`.
    m = jnp.where(follower, jnp.minimum(state.match, cols - start), -1)
    ids = jnp.where(follower, hist, vocab)  # out of bounds: dropped
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], ids.shape)
    n = jnp.full((batch, vocab), -1, jnp.int32).at[rows, ids].max(m, mode="drop")
    n = jnp.where(state.breaker, -1, n)
    mult = state.multiplier
    mult = jnp.where(mult > 0, mult, 0.0)[:, None]  # NaN, negative: off
    base = jnp.where(state.base >= 1, state.base, 1.0)[:, None]
    allowed = jnp.maximum(state.allowed_length, 1)[:, None]
    hit = (n >= allowed) & (mult > 0)
    exponent = jnp.maximum(n - allowed, 0).astype(jnp.float32)
    penalty = mult * jnp.power(base, exponent)
    z = logits.astype(jnp.float32)
    out = jnp.where(jnp.isinf(penalty), NEG_INF, z - penalty)
    return jnp.where(hit, out, z).astype(logits.dtype)


def _dry_update(state: DryState, tokens: jax.Array) -> DryState:
    # A breaker never extends a match.
    rows = jnp.arange(tokens.shape[0])
    vocab = state.breaker.shape[1]
    breaks = state.breaker[rows, jnp.clip(tokens, 0, max(vocab - 1, 0))] & (tokens >= 0)
    hist, length, match = _push_matched(state.history, state.length, state.match, tokens,
                                        breaks)
    return state._replace(history=hist, length=length, match=match)


# ----------------------------------------------------------------------------
# Composition


@dataclasses.dataclass(frozen=True)
class _ChainInit:
    fns: tuple[Callable[..., Any], ...]

    def __call__(self, prompts, lengths, vocab, max_new_tokens):
        return tuple(f(prompts, lengths, vocab, max_new_tokens) for f in self.fns)


@dataclasses.dataclass(frozen=True)
class _ChainApply:
    fns: tuple[Callable[[Any, jax.Array], jax.Array], ...]

    def __call__(self, state, logits):
        for f, s in zip(self.fns, state, strict=True):
            logits = f(s, logits)
        return logits


@dataclasses.dataclass(frozen=True)
class _ChainUpdate:
    fns: tuple[Callable[[Any, jax.Array], Any], ...]

    def __call__(self, state, tokens):
        return tuple(f(s, tokens) for f, s in zip(self.fns, state, strict=True))


def as_list(processors: Any) -> list[Processor]:
    """A Processor or a list of them as a list; clear errors otherwise."""
    if isinstance(processors, Processor):
        return [processors]
    if isinstance(processors, Sequence) and not isinstance(processors, str) and all(
            isinstance(p, Processor) for p in processors):
        return list(processors)
    raise TypeError("processors must be a nucleax.processors.Processor (init, apply, update) or "
                    f"a list of them, got {type(processors).__name__}")


def _applies(f: Callable[..., Any]) -> list[Callable[..., Any]]:
    """The leaf `apply` functions of a (possibly nested) chain's apply."""
    return [g for h in f.fns for g in _applies(h)] if isinstance(f, _ChainApply) else [f]


def _builtin_applies() -> dict[Callable[..., Any], tuple[str, ...]]:
    """The built-in processors' `apply` functions and their SamplingParams fields."""
    return {_allowed_apply: ("allowed_token_ids",), _bad_words_apply: ("bad_words",),
            _min_tokens_apply: ("min_tokens",), _bias_apply: ("logit_bias",),
            _repetition_apply: ("repetition_penalty",),
            _output_apply: ("frequency_penalty", "presence_penalty"),
            _ngram_apply: ("no_repeat_ngram_size",), _dry_apply: ("dry_multiplier",)}


def builtin_fields(proc: Processor) -> tuple[str, ...]:
    """The SamplingParams fields of the built-in processors inside `proc` (chains searched)."""
    fields = _builtin_applies()
    return tuple(n for f in _applies(proc.apply) for n in fields.get(f, ()))


def row_local(apply: Callable[..., Any]) -> bool:
    """Whether `apply` is made only of built-in processors: each row of their output depends
    on that row of the logits and of the state alone, and every leaf of their state has the
    batch as its leading axis, so they can run on any group of rows (`nucleax.sample` runs
    them in 8-row groups on the CPU). A user's processor may close over whole-batch arrays,
    so a chain holding one runs on the whole batch."""
    builtin = _builtin_applies()
    return all(f in builtin for f in _applies(apply))


def chain(*processors: Processor | Sequence[Processor]) -> Processor:
    """Composes processors: `apply` runs them in the given order.

    The state is the tuple of the parts' states. Chains of the same functions
    compare equal, so under `jax.jit` a chain rebuilt with new values reuses
    the compiled code. Lists of processors are flattened.

    Example:
      >>> import jax.numpy as jnp
      >>> p = chain(logit_bias({0: 2.0}), repetition_penalty(2.0))
      >>> s = p.init(jnp.array([[0]]), jnp.array([1]), 3, 4)
      >>> p.apply(s, jnp.array([[1.0, 1.0, -1.0]])).tolist()
      [[1.5, 1.0, -1.0]]
    """
    parts: list[Processor] = []
    for p in processors:
        if isinstance(p, Processor):
            parts.append(p)
        elif _is_seq(p) and all(isinstance(x, Processor) for x in p):
            parts.extend(p)
        else:
            raise TypeError("chain() takes nucleax.processors.Processor values "
                            f"(init, apply, update), got {type(p).__name__}")
    return Processor(_ChainInit(tuple(p.init for p in parts)),
                     _ChainApply(tuple(p.apply for p in parts)),
                     _ChainUpdate(tuple(p.update for p in parts)))
