"""Stage 4: from a per-row threshold to outputs: the draw, the mask, the distribution.

Given `tau` (tokens with `z >= tau` survive), the draw is an inverse CDF in
vocabulary order with one uniform per row, and `keep_mask` / `dense_probs`
are the dense views of the same survivors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._rows import NEG_INF, Prepared, blocks, by_rows


def keep_mask(r: Prepared, tau: jax.Array) -> jax.Array:
    """[B, V] bool: the surviving tokens (one-hot argmax for greedy rows)."""
    vocab = r.z.shape[-1]
    onehot = jnp.arange(vocab, dtype=jnp.int32)[None, :] == first_max(r)[:, None]
    alive = (r.z >= tau[:, None]) & (r.z > NEG_INF)
    return jnp.where(r.greedy[:, None], onehot, alive)


def dense_probs(r: Prepared, tau: jax.Array) -> jax.Array:
    """[B, V] float32: the distribution sampled from."""
    w = r.exp_weights(r.z, tau)
    w = w / jnp.sum(w, axis=-1, keepdims=True)
    onehot = jax.nn.one_hot(first_max(r), r.z.shape[-1], dtype=jnp.float32)
    return jnp.where(r.greedy[:, None], onehot, w)


def _block_size(vocab: int) -> int:
    """A block size for the two-level inverse CDF: a divisor of V near sqrt(V)."""
    root = math.isqrt(vocab)
    best = None
    for d in range(max(1, root // 4), min(vocab, 4 * root) + 1):
        closer = best is None or abs(math.log(d / root)) < abs(math.log(best / root))
        if vocab % d == 0 and closer:
            best = d
    if best is not None and best >= 16:
        return best
    return 1 << max(4, round(math.log2(max(root, 1))))


def _first_crossing(cum: jax.Array, w: jax.Array, target: jax.Array) -> jax.Array:
    """First i with cum_i > target and w_i > 0; else the last i with w_i > 0."""
    n = cum.shape[-1]
    idx = jnp.arange(n, dtype=jnp.int32)
    hit = (cum > target[:, None]) & (w > 0)
    first = jnp.min(jnp.where(hit, idx, n), axis=-1)
    last = jnp.max(jnp.where(w > 0, idx, -1), axis=-1)
    return jnp.where(first < n, first, jnp.maximum(last, 0))


def draw(r: Prepared, tau: jax.Array, u: jax.Array,
         window: tuple[jax.Array, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
    """Inverse-CDF draw in vocabulary order with one uniform `u` per row.

    The first token whose cumulative weight exceeds `u * total` is drawn; the
    token always has positive weight and no per-token random numbers are
    needed. Returns `(tokens, total)`, `total` being the row's unnormalised
    mass (for log-probabilities).

    With `window = (values, ids)`, the `W` largest logits of each row: when
    every row's survivors lie inside its window (`tau > values[:, -1]`), the
    draw runs over those `W` candidates, sorted back into vocabulary order,
    and reads nothing else. Otherwise it is two-level over the whole row: block
    sums pick a block, a cumulative sum inside it picks the token (one pass).
    Both are the same inverse CDF; they can differ only by the float rounding
    of the cumulative sums.
    """
    # Greedy rows draw with u = 0 from the tokens at the row max: the first of
    # them, i.e. the argmax with the lowest index. A batch of greedy rows only
    # skips the weights: `first_max`, one pass of block maxima.
    tau = jnp.where(r.greedy, r.zmax, tau)
    u = jnp.where(r.greedy, jnp.float32(0.0), jnp.asarray(u, jnp.float32))

    def sampled():
        if window is None:
            return by_rows(_draw_blocks, r, tau, u)
        vals, ids = window
        inside = (tau > vals[:, -1]) & (vals[:, 0] > NEG_INF)
        return lax.cond(jnp.all(inside), lambda: _draw_window(r, tau, u, vals, ids),
                        lambda: by_rows(_draw_blocks, r, tau, u))

    return lax.cond(jnp.all(r.greedy), lambda: (first_max(r), jnp.ones_like(r.zmax)), sampled)


_MAX_BLOCK = 16  # block width of `first_max`


def first_max(r: Prepared) -> jax.Array:
    """Per row, the lowest index holding the row max `r.zmax` (token 0 for rows with no
    finite logit), the token every greedy row draws.

    One vectorised pass of block maxima, then the first block reaching the max
    and the first index inside it: `jnp.argmax` (a variadic reduction) is many
    times slower than a max on the CPU.
    """
    zb = blocks(r.z, _MAX_BLOCK, NEG_INF)
    b, j = _first_at(zb, jnp.max(zb, axis=-1), r.zmax)
    found = r.valid & (j < _MAX_BLOCK)
    return jnp.where(found, b * _MAX_BLOCK + j, 0).astype(jnp.int32)


def _first_at(zb: jax.Array, block_max: jax.Array, top: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(b, j)`: the first block of `zb [B, nb, size]` whose max (`block_max [B, nb]`) equals
    `top [B]`, and the first index inside it holding `top` (`size` where none does)."""
    nb, size = zb.shape[1:]
    hit = block_max == top[:, None]
    b = jnp.minimum(jnp.min(jnp.where(hit, jnp.arange(nb, dtype=jnp.int32), nb), axis=-1), nb - 1)
    inside = jnp.take_along_axis(zb, b[:, None, None], axis=1)[:, 0] == top[:, None]
    return b, jnp.min(jnp.where(inside, jnp.arange(size, dtype=jnp.int32), size), axis=-1)


_PLAIN_BLOCK = 64  # block width of `plain_first_max`' one pass
_TINY = np.float32(np.finfo(np.float32).tiny)  # smallest normal float32


def greedy_tokens(z: jax.Array) -> jax.Array:
    """`first_max` of `[B, V]` rows `z` not yet cleaned: `plain_first_max` when every row is
    plain, else the cleaned rows' `first_max`. The token of a greedy row (`nucleax.greedy`,
    and `sample` when every row is greedy)."""
    b = z.shape[0]
    tokens, plain = plain_first_max(z)

    def cleaned():
        zeros = jnp.zeros((b,), jnp.float32)
        return first_max(Prepared(z, zeros, jnp.zeros((b,), jnp.int32), zeros + 1, zeros))

    return lax.cond(plain, lambda: tokens, cleaned)


def plain_first_max(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(tokens, plain)`: `first_max` of `[B, V]` rows `z` (any float dtype: a max is exact
    in it) not yet cleaned, in about one pass, valid where `plain` (a scalar) is true.

    Block maxima of the raw values (a plain reduction: XLA's CPU backend runs
    it at the speed of `jnp.max`, where a select feeding it would be written
    out first), a NaN check by a row sum (a sum propagates NaN, the CPU's max
    does not reliably), then the first block reaching the row max and the
    first index inside it. The raw rows give the cleaned rows' answer when
    `plain`: no row holds NaN or has a row max of 0 or a subnormal (cleaning
    maps -0.0 and subnormals to +0.0, which then tie), and V is a multiple of
    the block. A +inf row gives its first +inf, a row of -inf token 0, as
    cleaned.
    """
    b, v = z.shape
    if v % _PLAIN_BLOCK or v // _PLAIN_BLOCK < 2:
        return jnp.zeros((b,), jnp.int32), jnp.bool_(False)
    nb = v // _PLAIN_BLOCK
    zb = z.reshape(b, nb, _PLAIN_BLOCK)
    block_max = jnp.max(zb, axis=-1)
    # the barrier keeps XLA from merging the two maxima into a second pass over `z`
    top = jnp.max(lax.optimization_barrier(block_max), axis=-1)
    plain = jnp.all(~jnp.isnan(jnp.sum(z, axis=-1)) & (jnp.abs(top) >= _TINY))
    b, j = _first_at(zb, block_max, top)
    return (b * _PLAIN_BLOCK + jnp.minimum(j, _PLAIN_BLOCK - 1)).astype(jnp.int32), plain


def _draw_window(r: Prepared, tau, u, vals, ids) -> tuple[jax.Array, jax.Array]:
    ids, vals = lax.sort((ids, vals), dimension=-1, num_keys=1)  # vocabulary order
    w = r.exp_weights(vals, tau)
    total = jnp.sum(w, axis=-1)
    j = _first_crossing(jnp.cumsum(w, axis=-1), w, u * total)
    return jnp.take_along_axis(ids, j[:, None], axis=-1)[:, 0].astype(jnp.int32), total


def locate_in_blocks(r: Prepared, tau, zb, block_sum, target):
    """The two-level inverse CDF over a blocked row `zb [B, nb, size]` with block masses
    `block_sum [B, nb]`: the first token whose cumulative weight exceeds `target`.

    Returns `(b, j, zsel)`: the block, the index inside it, and that block's logits.
    """
    cum_blocks = jnp.cumsum(block_sum, axis=-1)
    b = _first_crossing(cum_blocks, block_sum, target)
    before = jnp.take_along_axis(cum_blocks - block_sum, b[:, None], axis=-1)[:, 0]
    zsel = jnp.take_along_axis(zb, b[:, None, None], axis=1)[:, 0]
    wsel = r.exp_weights(zsel, tau)
    j = _first_crossing(before[:, None] + jnp.cumsum(wsel, axis=-1), wsel, target)
    return b, j, zsel


def _draw_blocks(r: Prepared, tau, u) -> tuple[jax.Array, jax.Array]:
    size = _block_size(r.z.shape[-1])
    zb = blocks(r.z, size, NEG_INF)
    block_sum = jnp.sum(r.exp_weights(zb, tau), axis=-1)
    total = jnp.sum(block_sum, axis=-1)
    b, j, _ = locate_in_blocks(r, tau, zb, block_sum, u * total)
    return (b * size + j).astype(jnp.int32), total
