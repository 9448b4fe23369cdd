"""Stage 3: the truncation thresholds (top-k, top-p, min-p) and the ways to find them.

Every mask of the contract keeps a *suffix of the sorted logits*: top-k, top-p
and min-p each keep `{x : z_x >= tau}` for a per-row threshold `tau`, because
probabilities are monotone in the logits for `T > 0`. A method (sort, window,
bisection) is only a way to find `tau`; the draw and the dense outputs
(`nucleax._draw`) are common to all methods. That is why all exact methods
return the *same token* for the same key (up to the float rounding of a
cumulative sum that lands exactly on a boundary).

Methods:

- `sort`: sorts every row (`O(V log V)`); the obviously-correct reference.
- `fast` (default): a static window of the `W` largest values per row, found
  without a full sort (block maxima, then `lax.top_k` on the few blocks that
  can hold them). Top-k with `k <= W` and top-p whose nucleus fits in the
  window are read off it exactly. Rows where the window cannot decide (top-k
  with `k > W`, or a top-p nucleus wider than the window) fall back to an
  exact 32-step bisection over the float32 bit patterns of the row, run only
  when some row of the batch needs it.
- `bisect`: the bisection alone, for every row (no window).

All three give the same `tau` up to float rounding of the cumulative mass,
so the same surviving set and, with the shared sampler, the same token.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._rows import NEG_INF, Prepared, blocks, by_rows

METHODS = ("auto", "fast", "bisect", "sort")
_WINDOW_BLOCK = 16  # block width for locating the window (best of 8..128 on a 2-core CPU)
_TINY = np.float32(np.finfo(np.float32).tiny)  # smallest normal float32


def top_k_from_window(r: Prepared, vals: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Top-k threshold from the K largest values of each row (descending).

    Returns `(tau_k, undecided)`: `undecided` marks rows whose k exceeds the window.
    """
    width = vals.shape[-1]
    idx = jnp.clip(r.k - 1, 0, width - 1)
    kth = jnp.take_along_axis(vals, idx[:, None], axis=-1)[:, 0]
    tau_k = jnp.where(r.k_on, kth, NEG_INF)
    undecided = r.k_on & (r.k > width)
    return tau_k, undecided


def top_p_from_window(r: Prepared, vals: jax.Array, tau_k: jax.Array,
                      total_k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Top-p threshold from the K largest values of each row (descending).

    Token x survives iff the mass of tokens strictly above it is < p, with
    masses renormalised over the top-k survivors (`total_k`). In sorted order
    that keeps every value >= the last position whose exclusive prefix mass is
    < p; ties with it survive too. Returns `(tau_p, undecided)`: `undecided` marks rows
    where the window holds less than p of the mass while alive tokens may lie
    beyond it, so the answer is not in the window.
    """
    w = r.exp_weights(vals, tau_k)
    inclusive = jnp.cumsum(w, axis=-1)
    exclusive = jnp.concatenate([jnp.zeros_like(inclusive[:, :1]), inclusive[:, :-1]], axis=-1)
    limit = mass_limit(r, total_k)
    n = jnp.maximum(jnp.sum(exclusive < limit[:, None], axis=-1, dtype=jnp.int32), 1)
    tau_p = jnp.take_along_axis(vals, (n - 1)[:, None], axis=-1)[:, 0]
    tau_p = jnp.where(r.p_on, tau_p, NEG_INF)
    last = vals[:, -1]
    undecided = (r.p_on & (inclusive[:, -1] < limit) & (last >= tau_k) & (last >= r.tau_m)
            & (vals.shape[-1] < r.z.shape[-1]))
    return tau_p, undecided


def mass_limit(r: Prepared, total_k: jax.Array) -> jax.Array:
    """`p * total_k`: the mass above a top-p survivor must be strictly below this.

    Floored at the smallest normal float32, so that a subnormal product (a tiny
    `p`, which the CPU flushes to zero) still lets the most probable token
    through: its own mass-above is 0, and every other token's is at least the
    top token's weight, 1.
    """
    return jnp.maximum(r.p * total_k, _TINY)


def total_mass(r: Prepared, tau: jax.Array) -> jax.Array:
    """Sum over the whole row of exp((z - zmax)/T) for z >= tau."""
    return by_rows(lambda r, tau: jnp.sum(r.exp_weights(r.z, tau), axis=-1), r, tau)


def combine(r: Prepared, tau_k: jax.Array, tau_p: jax.Array) -> jax.Array:
    """Final threshold: intersection of the three masks; the top token survives.

    A threshold above the row max, or NaN, becomes the row max.
    """
    tau = jnp.maximum(jnp.maximum(tau_k, tau_p), r.tau_m)
    return jnp.where(tau <= r.zmax, tau, r.zmax)


def bisect_uint32(pred, batch: int) -> jax.Array:
    """Smallest uint32 `t` per row with `pred(t)` true (pred monotone, true at max)."""
    lo = jnp.zeros((batch,), jnp.uint32)
    hi = jnp.full((batch,), 0xFFFFFFFF, jnp.uint32)

    def body(carry, _):
        lo, hi = carry
        mid = lo + (hi - lo) // 2
        ok = pred(mid)
        return (jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)), None

    # 32 halvings of [0, 2**32): a scan with no loop counter (no int64 under x64)
    return lax.scan(body, (lo, hi), None, length=32)[0][1]


def ordered_key(x: jax.Array) -> jax.Array:
    """float32 -> uint32 with the same order (for bisection over values)."""
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def key_to_float(key: jax.Array) -> jax.Array:
    """Inverse of `ordered_key`."""
    bits = jnp.where(key >> 31 == 1, key & jnp.uint32(0x7FFFFFFF), ~key)
    return lax.bitcast_convert_type(bits, jnp.float32)


def check_method(method: str, window: int) -> None:
    """Host checks of the static `method` and `window` (a Python or NumPy int >= 1)."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(window, numbers.Integral) or isinstance(window, bool | np.bool_) or (
            window < 1):
        raise ValueError(
            f"window must be a positive int (a static candidate count), got {window!r}")


def threshold(r: Prepared, method: str, window: int) -> jax.Array:
    """The final per-row threshold `tau` ([B] float32) for `method`."""
    return threshold_and_window(r, method, window)[0]


def threshold_and_window(r: Prepared, method: str, window: int):
    """`tau`, and the fast method's window `(values, ids)` (else None) for the draw."""
    if method == "sort":
        return _sort_threshold(r), None
    return _window_threshold(r, 0 if method == "bisect" else window)


def _sort_threshold(r: Prepared) -> jax.Array:
    vals = jnp.flip(jnp.sort(r.z, axis=-1), axis=-1)
    tau_k, _ = top_k_from_window(r, vals)
    total_k = jnp.sum(r.exp_weights(vals, tau_k), axis=-1)
    tau_p, _ = top_p_from_window(r, vals, tau_k, total_k)
    return combine(r, tau_k, tau_p)


def window_top_k(z: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """The `width` largest values of each row (descending) and their ids, with no full sort.

    The `width` largest values all lie in the `width` blocks with the largest
    block maxima (each of those maxima is a distinct element >= the width-th
    largest block maximum), so only those blocks go through `lax.top_k`.
    """
    b, v = z.shape
    width = min(width, v)
    if v < 4 * width * _WINDOW_BLOCK:
        vals, ids = lax.top_k(z, width)
        return vals, ids.astype(jnp.int32)
    zb = blocks(z, _WINDOW_BLOCK, NEG_INF)
    _, best = lax.top_k(jnp.max(zb, axis=-1), width)
    cand = jnp.take_along_axis(zb, best[:, :, None], axis=1).reshape(b, width * _WINDOW_BLOCK)
    vals, j = lax.top_k(cand, width)
    block = jnp.take_along_axis(best, j // _WINDOW_BLOCK, axis=-1)
    return vals, (block * _WINDOW_BLOCK + j % _WINDOW_BLOCK).astype(jnp.int32)


def _bisect_top_k(r: Prepared) -> jax.Array:
    """k-th largest value: smallest t with #{z > t} < k."""
    keys = ordered_key(r.z)
    t = bisect_uint32(lambda t: jnp.sum(keys > t[:, None], axis=-1, dtype=jnp.int32) < r.k,
                      r.z.shape[0])
    return key_to_float(t)


def _bisect_top_p(r: Prepared, tau_k: jax.Array, total_k: jax.Array) -> jax.Array:
    """Smallest t with mass{z > t} < p (mass renormalised over top-k)."""
    keys = ordered_key(r.z)
    w = r.exp_weights(r.z, tau_k)
    limit = mass_limit(r, total_k)

    def pred(t):
        return jnp.sum(jnp.where(keys > t[:, None], w, 0.0), axis=-1) < limit

    return key_to_float(bisect_uint32(pred, r.z.shape[0]))


def _fill_in(undecided: jax.Array, exact, current: jax.Array) -> jax.Array:
    """Replaces `current` by `exact()` where `undecided`, computing it only if any row is."""
    return lax.cond(jnp.any(undecided), lambda: jnp.where(undecided, exact(), current),
                    lambda: current)


def _window_threshold(r: Prepared, width: int) -> jax.Array:
    batch, vocab = r.z.shape
    live = ~r.greedy
    k_on, p_on = r.k_on & live, r.p_on & live
    if width > 0:
        width = min(width, vocab)
        vals, ids = lax.cond(jnp.any(k_on | p_on), lambda z: window_top_k(z, width),
                             lambda z: (jnp.full((batch, width), NEG_INF, jnp.float32),
                                        jnp.zeros((batch, width), jnp.int32)), r.z)
        tau_k, undecided_k = top_k_from_window(r, vals)
    else:
        vals = None
        tau_k, undecided_k = jnp.full((batch,), NEG_INF, jnp.float32), r.k_on
    tau_k = _fill_in(undecided_k & live, lambda: by_rows(_bisect_top_k, r), tau_k)

    if vals is not None:
        # When the window already holds every top-k survivor (its last value is
        # below tau_k), its own mass is the renormaliser; otherwise one pass.
        window_mass = jnp.sum(r.exp_weights(vals, tau_k), axis=-1)
        total_k = _fill_in(p_on & ~(vals[:, -1] < tau_k), lambda: total_mass(r, tau_k),
                           window_mass)
        tau_p, undecided_p = top_p_from_window(r, vals, tau_k, total_k)
    else:
        total_k = lax.cond(jnp.any(p_on), lambda: total_mass(r, tau_k),
                           lambda: jnp.ones((batch,), jnp.float32))
        tau_p, undecided_p = jnp.full((batch,), NEG_INF, jnp.float32), r.p_on
    tau_p = _fill_in(undecided_p & live, lambda: by_rows(_bisect_top_p, r, tau_k, total_k),
                     tau_p)
    return combine(r, tau_k, tau_p), (None if vals is None else (vals, ids))
