"""Shared machinery: input checks, cleaning, thresholds, keys and the sampler.

Every mask of the contract keeps a *suffix of the sorted logits*: top-k, top-p
and min-p each keep `{x : z_x >= tau}` for a per-row threshold `tau`, because
probabilities are monotone in the logits for `T > 0`. A method (sort, window,
bisection) is only a way to find `tau`; everything after it (weights, sampling,
log-probabilities) is this module's and is common to all methods. That is why
all exact methods return the *same token* for the same key (up to the float
rounding of a cumulative sum that lands exactly on a boundary).

Batched code here works on `[B, V]` float32 arrays.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

NEG_INF = -jnp.inf  # the one masking constant: masked logits are -inf


# ----------------------------------------------------------------------------
# Input checks (host side, shapes and dtypes are static)


def as_batch(logits: Any, name: str = "logits") -> tuple[jax.Array, bool]:
    """Validates logits and returns them as `[B, V]` float32, and whether 1-D."""
    if not hasattr(logits, "dtype") or not hasattr(logits, "ndim"):
        logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype (float32, bfloat16, float16), "
                        f"got {logits.dtype}")
    if logits.ndim not in (1, 2):
        raise ValueError(f"{name} must be [V] or [B, V], got shape {tuple(logits.shape)}")
    if logits.shape[-1] < 1:
        raise ValueError(f"{name} must have a vocabulary of at least 1 token, "
                         f"got shape {tuple(logits.shape)}")
    z = jnp.asarray(logits).astype(jnp.float32)
    single = z.ndim == 1
    return (z[None] if single else z), single


class Rows:
    """Per-row quantities every method needs, computed once."""

    def __init__(self, logits: jax.Array, t: jax.Array, k: jax.Array, p: jax.Array,
                 m: jax.Array):
        """`logits` is `[B, V]` float32, not yet cleaned; `t, k, p, m` are `[B]`.

        Cleaning: NaN counts as -inf; a row holding +inf is uniform over its
        +inf tokens; -0.0 becomes +0.0 (so ties compare equal bit for bit).
        It is derived from one max pass, and the cleaned row is elementwise so
        that XLA can fuse it into each consumer.
        """
        no_nan = jnp.where(jnp.isnan(logits), NEG_INF, logits)
        top = jnp.max(no_nan, axis=-1)
        self.valid = top > NEG_INF  # False: no finite (or +inf) logit in the row
        has_inf = top == jnp.inf
        self.z = jnp.where(has_inf[:, None], jnp.where(no_nan == jnp.inf, 0.0, NEG_INF),
                           no_nan) + 0.0
        self.zmax = jnp.where(self.valid & ~has_inf, top, 0.0)
        self.greedy = ~(t > 0) | ~self.valid  # T = 0, NaN, negative, or nothing finite
        self.t = jnp.where(self.greedy, 1.0, t)  # safe temperature (+inf allowed)
        z = self.z
        vocab = z.shape[-1]
        self.k = k
        self.k_on = (k > 0) & (k < vocab)
        self.p = p
        self.p_on = ~(p >= 1)  # NaN counts as on (keeps the top token only)
        self.m = m
        # min-p: q_x >= m max(q)  <=>  (z_x - zmax) / T >= log(m)
        log_m = jnp.log(jnp.clip(m, 0.0, 1.0))
        tau_m = jnp.where(m >= 1, self.zmax, self.zmax + self.t * log_m)
        self.tau_m = jnp.where(m > 0, tau_m, NEG_INF)

    def exp_weights(self, x: jax.Array, tau: jax.Array) -> jax.Array:
        """exp((x - zmax) / T) where x >= tau, else 0 (x is [B, ...])."""
        extra = (1,) * (x.ndim - 1)
        zmax = self.zmax.reshape(-1, *extra)
        t = self.t.reshape(-1, *extra)
        tau = tau.reshape(-1, *extra)
        return jnp.where(x >= tau, jnp.exp((x - zmax) / t), 0.0)


def top_k_from_window(r: Rows, vals: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Top-k threshold from the K largest values of each row (descending).

    Returns `(tau_k, need)`: `need` marks rows whose k exceeds the window.
    """
    width = vals.shape[-1]
    idx = jnp.clip(r.k - 1, 0, width - 1)
    kth = jnp.take_along_axis(vals, idx[:, None], axis=-1)[:, 0]
    tau_k = jnp.where(r.k_on, kth, NEG_INF)
    need = r.k_on & (r.k > width)
    return tau_k, need


def top_p_from_window(r: Rows, vals: jax.Array, tau_k: jax.Array,
                      total_k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Top-p threshold from the K largest values of each row (descending).

    Token x survives iff the mass of tokens strictly above it is < p, with
    masses renormalised over the top-k survivors (`total_k`). In sorted order
    that keeps every value >= the last position whose exclusive prefix mass is
    < p; ties with it survive too. Returns `(tau_p, need)`: `need` marks rows
    where the window holds less than p of the mass while alive tokens may lie
    beyond it, so the answer is not in the window.
    """
    w = r.exp_weights(vals, tau_k)
    inclusive = jnp.cumsum(w, axis=-1)
    exclusive = jnp.concatenate([jnp.zeros_like(inclusive[:, :1]), inclusive[:, :-1]], axis=-1)
    limit = r.p * total_k
    n = jnp.maximum(jnp.sum(exclusive < limit[:, None], axis=-1), 1)
    tau_p = jnp.take_along_axis(vals, (n - 1)[:, None], axis=-1)[:, 0]
    tau_p = jnp.where(r.p_on, tau_p, NEG_INF)
    last = vals[:, -1]
    need = (r.p_on & (inclusive[:, -1] < limit) & (last >= tau_k) & (last >= r.tau_m)
            & (vals.shape[-1] < r.z.shape[-1]))
    return tau_p, need


def total_mass(r: Rows, tau: jax.Array) -> jax.Array:
    """Sum over the whole row of exp((z - zmax)/T) for z >= tau."""
    return jnp.sum(r.exp_weights(r.z, tau), axis=-1)


def combine(r: Rows, tau_k: jax.Array, tau_p: jax.Array) -> jax.Array:
    """Final threshold: intersection of the three masks; the top token survives."""
    tau = jnp.maximum(jnp.maximum(tau_k, tau_p), r.tau_m)
    return jnp.minimum(tau, r.zmax)


# ----------------------------------------------------------------------------
# Outputs from a threshold


def keep_mask(r: Rows, tau: jax.Array) -> jax.Array:
    """[B, V] bool: the surviving tokens (one-hot argmax for greedy rows)."""
    vocab = r.z.shape[-1]
    onehot = jnp.arange(vocab)[None, :] == jnp.argmax(r.z, axis=-1)[:, None]
    alive = (r.z >= tau[:, None]) & (r.z > NEG_INF)
    return jnp.where(r.greedy[:, None], onehot, alive)


def dense_probs(r: Rows, tau: jax.Array) -> jax.Array:
    """[B, V] float32: the distribution sampled from."""
    w = r.exp_weights(r.z, tau)
    w = w / jnp.sum(w, axis=-1, keepdims=True)
    onehot = jax.nn.one_hot(jnp.argmax(r.z, axis=-1), r.z.shape[-1], dtype=jnp.float32)
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


def blocks(x: jax.Array, size: int, fill: float) -> jax.Array:
    """[B, V] -> [B, ceil(V/size), size], padding the tail with `fill`."""
    b, v = x.shape
    nb = -(-v // size)
    if nb * size != v:
        x = jnp.pad(x, ((0, 0), (0, nb * size - v)), constant_values=fill)
    return x.reshape(b, nb, size)


def _first_crossing(cum: jax.Array, w: jax.Array, target: jax.Array) -> jax.Array:
    """First i with cum_i > target and w_i > 0; else the last i with w_i > 0."""
    n = cum.shape[-1]
    idx = jnp.arange(n)
    hit = (cum > target[:, None]) & (w > 0)
    first = jnp.min(jnp.where(hit, idx, n), axis=-1)
    last = jnp.max(jnp.where(w > 0, idx, -1), axis=-1)
    return jnp.where(first < n, first, jnp.maximum(last, 0))


def draw(r: Rows, tau: jax.Array, u: jax.Array,
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
    # them, i.e. the argmax with the lowest index (no separate argmax pass).
    tau = jnp.where(r.greedy, r.zmax, tau)
    u = jnp.where(r.greedy, 0.0, u)
    if window is None:
        return _draw_blocks(r, tau, u)
    vals, ids = window
    inside = (tau > vals[:, -1]) & (vals[:, 0] > NEG_INF)
    return lax.cond(jnp.all(inside), lambda: _draw_window(r, tau, u, vals, ids),
                    lambda: _draw_blocks(r, tau, u))


def _draw_window(r: Rows, tau, u, vals, ids) -> tuple[jax.Array, jax.Array]:
    order = jnp.argsort(ids, axis=-1)
    ids = jnp.take_along_axis(ids, order, axis=-1)
    w = r.exp_weights(jnp.take_along_axis(vals, order, axis=-1), tau)
    total = jnp.sum(w, axis=-1)
    j = _first_crossing(jnp.cumsum(w, axis=-1), w, u * total)
    return jnp.take_along_axis(ids, j[:, None], axis=-1)[:, 0].astype(jnp.int32), total


def _draw_blocks(r: Rows, tau, u) -> tuple[jax.Array, jax.Array]:
    size = _block_size(r.z.shape[-1])
    zb = blocks(r.z, size, NEG_INF)
    wb = r.exp_weights(zb, tau)
    block_sum = jnp.sum(wb, axis=-1)
    total = jnp.sum(block_sum, axis=-1)
    target = u * total
    cum_blocks = jnp.cumsum(block_sum, axis=-1)
    b = _first_crossing(cum_blocks, block_sum, target)
    before = jnp.take_along_axis(cum_blocks - block_sum, b[:, None], axis=-1)[:, 0]
    zsel = jnp.take_along_axis(zb, b[:, None, None], axis=1)[:, 0]
    wsel = r.exp_weights(zsel, tau)
    j = _first_crossing(before[:, None] + jnp.cumsum(wsel, axis=-1), wsel, target)
    return (b * size + j).astype(jnp.int32), total


# ----------------------------------------------------------------------------
# Keys


def row_uniforms(key: Any, batch: int) -> jax.Array:
    """One uniform in [0, 1) per row from one key or `[B]` keys (see `row_keys`)."""
    keys = row_keys(key, batch, "the logits' rows")
    return jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)


def row_keys(key: Any, batch: int, rows: str) -> jax.Array:
    """`[B]` per-row keys from one key or `[B]` keys; `rows` names B in errors.

    One key: row i uses `fold_in(key, i)`, so a row's key does not depend on
    how many rows follow it. `[B]` keys: row i uses `key[i]` (batch invariant).
    Both new-style typed keys (`jax.random.key`) and raw uint32 keys
    (`jax.random.PRNGKey`) are accepted, and returned in the same form.
    """
    if not hasattr(key, "dtype"):
        raise TypeError(f"key must be a jax PRNG key (jax.random.key(seed)), got {type(key)!r}")
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    if typed:
        single, many = key.shape == (), key.shape == (batch,)
    elif key.dtype == jnp.uint32:
        single, many = key.shape == (2,), key.shape == (batch, 2)
    else:
        raise TypeError("key must be a jax PRNG key (jax.random.key(seed)) or a raw uint32 "
                        f"key (jax.random.PRNGKey(seed)), got dtype {key.dtype}")
    if single:
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))
    if many:
        return key
    want = "() or [B]" if typed else "[2] or [B, 2]"
    raise ValueError(f"key must have shape {want} with B={batch} ({rows}): one key, or [B] keys "
                     f"with B={batch}; got shape {tuple(key.shape)}")


def bisect_uint32(pred, batch: int) -> jax.Array:
    """Smallest uint32 `t` per row with `pred(t)` true (pred monotone, true at max)."""
    lo = jnp.zeros((batch,), jnp.uint32)
    hi = jnp.full((batch,), 0xFFFFFFFF, jnp.uint32)

    def body(_, carry):
        lo, hi = carry
        mid = lo + (hi - lo) // 2
        ok = pred(mid)
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    return lax.fori_loop(0, 32, body, (lo, hi))[1]


def ordered_key(x: jax.Array) -> jax.Array:
    """float32 -> uint32 with the same order (for bisection over values)."""
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def key_to_float(key: jax.Array) -> jax.Array:
    """Inverse of `ordered_key`."""
    bits = jnp.where(key >> 31 == 1, key & jnp.uint32(0x7FFFFFFF), ~key)
    return lax.bitcast_convert_type(bits, jnp.float32)
