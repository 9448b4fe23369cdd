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
  window are read off it exactly. Top-k with `k > W` and a top-p nucleus
  wider than the window are found by a bracketing search in value space
  (`narrow`: a few masked passes whatever the width, then a second window of
  the values just above the threshold, and one more pass when that window
  ends inside a tie group); the rare row the search does not
  settle takes an exact 32-step bisection over the float32 bit patterns of
  the row. Each runs only when some row of the batch needs it.
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
_SEARCH_WINDOW = 64  # the search stops when at most this many tokens lie in its bracket
_SEARCH_STEPS = 12  # masked passes before a row falls back to the bisection


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


def _next_up(x: jax.Array) -> jax.Array:
    """The next float32 above `x` (`x` finite or -inf)."""
    return key_to_float(ordered_key(x) + jnp.uint32(1))


def _next_down(x: jax.Array) -> jax.Array:
    """The next float32 below `x` (`x` finite or +inf)."""
    return key_to_float(ordered_key(x) - jnp.uint32(1))


def _search_top_k(r: Prepared, vals: jax.Array, need: jax.Array) -> jax.Array:
    """Exact top-k threshold for the rows `need` whose k exceeds the window `vals`: the search
    (`narrow_top_k`), and the bisection for the rows it does not settle."""
    tau, settled = narrow_top_k(r, vals, need)
    return _fill_in(need & ~settled, lambda: _bisect_top_k(r), tau)


def _search_top_p(r: Prepared, tau_k: jax.Array, total_k: jax.Array, vals: jax.Array,
                  need: jax.Array) -> jax.Array:
    """Exact top-p threshold for the rows `need` whose nucleus is wider than the window `vals`:
    the search (`narrow_top_p`), and the bisection for the rows it does not settle."""
    tau, settled = narrow_top_p(r, tau_k, total_k, vals, need)
    return _fill_in(need & ~settled, lambda: _bisect_top_p(r, tau_k, total_k), tau)


def narrow_top_k(r: Prepared, vals: jax.Array, need: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`narrow` on token counts: weight 1 per live token, `limit = k`."""
    def weigh(x):
        return jnp.where(x > NEG_INF, jnp.float32(1.0), jnp.float32(0.0))

    live = jnp.sum(weigh(r.z), axis=-1)
    return narrow(r, weigh, live, r.k.astype(jnp.float32), None, vals, need, log_above=True)


def narrow_top_p(r: Prepared, tau_k: jax.Array, total_k: jax.Array, vals: jax.Array,
                 need: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`narrow` on the masses of the top-k survivors, `limit = p * total_k`.

    The first probe, `zmax + T log(R / V)` with `R` the mass top-p removes, is a
    lower end by construction: the at most V tokens below it weigh less than
    `R` together.
    """
    limit = mass_limit(r, total_k)
    removed = jnp.maximum(total_k - limit, _TINY)
    first = r.zmax + r.t * jnp.log(removed / r.z.shape[-1])
    return narrow(r, lambda x: r.exp_weights(x, tau_k), total_k, limit, first, vals, need)


def narrow(r: Prepared, weigh, total: jax.Array, limit: jax.Array, first: jax.Array | None,
           vals: jax.Array, need: jax.Array, log_above: bool = False,
           ) -> tuple[jax.Array, jax.Array]:
    """The threshold `tau` keeping the tokens whose weight above them is `< limit`, by a search
    whose cost does not depend on how many tokens it keeps.

    `weigh` maps values to weights (elementwise; 0 for tokens that cannot
    survive), `total` is the row's total weight, `first` an optional first
    probe known to lie at or below the answer. Top-p: exponential weights and
    `limit = p * total`; top-k: weight 1 per live token and `limit = k`.
    Returns `(tau, settled)`; `tau` is exact where `settled`.

    A bracket `[lo, hi)` in value space with `below(lo) <= R < below(hi)`,
    where `below(t)` is the weight of the tokens `< t` and `R = total - limit`
    the weight the threshold removes, is narrowed by regula falsi, one masked
    pass per step: on `below(t)` for masses (close to linear in `t` on LLM-like
    rows), on `log(total - below(t))` for counts (close to exponential), with
    the Illinois rule so that neither end stalls, and a midpoint when the
    secant leaves the bracket. It starts from the lowest value of weight > 0
    (nothing weighs below it) and the first window's last value (all above it
    is in the window). It stops once the bracket holds at most
    `_SEARCH_WINDOW` tokens (each weighs at least `weigh(lo)`, so the weight
    in the bracket bounds their count); then the largest values below `hi` are
    read like the first window, starting from the weight above `hi`.

    The bench's wide family (nuclei of 100 to 86k tokens) and SmolLM2's logits
    at T up to 1.5 and p up to 0.99 take 4 to 10 steps; top-k with k from 1000
    to 20000 on Zipf rows, 3 to 4. A tie group wider than the second window at
    the threshold (bf16 logits: a 150k vocabulary holds a few thousand
    distinct bf16 values) keeps the bracket from ever holding 64 tokens, so
    the search runs its `_SEARCH_STEPS` steps; the second window then ends
    inside the group, and one pass (the weight below its last value) decides
    whether the threshold is that value. A row whose second window still
    cannot decide is not `settled`. Exact like the bisection: the answer
    differs from `method="sort"` only through the float rounding of the
    masses.
    """
    width = min(_SEARCH_WINDOW, r.z.shape[-1])
    w = weigh(r.z)
    removed = jnp.maximum(total - limit, _TINY)

    def below(t):
        return jnp.sum(jnp.where(r.z < t[:, None], w, 0.0), axis=-1)

    last = vals[:, -1]
    lowest = jnp.min(jnp.where(w > 0, r.z, jnp.inf), axis=-1)
    above_last = jnp.sum(jnp.where(vals > last[:, None], weigh(vals), 0.0), axis=-1)
    one = jnp.ones_like(total)
    start = {"lo": jnp.minimum(lowest, last), "hi": _next_up(last),
             "below_lo": jnp.zeros_like(total), "below_hi": total - above_last,
             "scale_lo": one, "scale_hi": one, "moved": jnp.zeros(last.shape, jnp.int32),
             "step": jnp.zeros((), jnp.int32)}

    def open_(s):  # rows still searching: more than `width` tokens may lie in the bracket
        return (need & (s["below_hi"] - s["below_lo"] > width * weigh(s["lo"]))
                & (_next_up(s["lo"]) < s["hi"]))

    def cond(s):
        return jnp.any(open_(s)) & (s["step"] < _SEARCH_STEPS)

    def body(s):
        act = open_(s)
        lo, hi = s["lo"], s["hi"]
        if log_above:  # counts: the number above t is close to exponential in t; aim
            # between two counts so that neither end is ever exactly on target
            aim = jnp.maximum(limit - 0.5, 0.25)
            f_lo = jnp.log(jnp.maximum(total - s["below_lo"], 0.5) / aim) * s["scale_lo"]
            f_hi = jnp.log(jnp.maximum(total - s["below_hi"], 0.5) / aim) * s["scale_hi"]
        else:  # masses: the mass below t is close to linear in t
            f_lo = (s["below_lo"] - removed) * s["scale_lo"]
            f_hi = (s["below_hi"] - removed) * s["scale_hi"]
        t = lo - f_lo * (hi - lo) / (f_hi - f_lo)
        if first is not None:
            t = jnp.where((s["step"] == 0) & (first > lo), first, t)
        # a secant that falls outside the bracket (an end exactly on target): bisect
        t = jnp.where((t > lo) & (t < hi), t, 0.5 * lo + 0.5 * hi)
        t = jnp.clip(t, _next_up(lo), _next_down(hi))
        b = below(t)
        up = act & (b > removed)  # the weight at or above t is below the limit: upper end
        down = act & ~(b > removed)
        # Illinois: an end kept a second time in a row counts half in the next secant
        scale_lo = jnp.where(up & (s["moved"] == 1), 0.5 * s["scale_lo"],
                             jnp.where(down, 1.0, s["scale_lo"]))
        scale_hi = jnp.where(down & (s["moved"] == -1), 0.5 * s["scale_hi"],
                             jnp.where(up, 1.0, s["scale_hi"]))
        return {"lo": jnp.where(down, t, lo), "hi": jnp.where(up, t, hi),
                "below_lo": jnp.where(down, b, s["below_lo"]),
                "below_hi": jnp.where(up, b, s["below_hi"]),
                "scale_lo": scale_lo, "scale_hi": scale_hi,
                "moved": jnp.where(up, 1, jnp.where(down, -1, s["moved"])),
                "step": s["step"] + 1}

    s = lax.while_loop(cond, body, start)
    second, _ = window_top_k(jnp.where(r.z < s["hi"][:, None], r.z, NEG_INF), width)
    w2 = weigh(second)
    exclusive = (total - s["below_hi"])[:, None] + jnp.cumsum(w2, axis=-1) - w2
    n = jnp.sum(exclusive < limit[:, None], axis=-1, dtype=jnp.int32)
    tau = jnp.take_along_axis(second, jnp.maximum(n - 1, 0)[:, None], axis=-1)[:, 0]
    decided = need & (n >= 1) & ((n < width) | (second[:, -1] == NEG_INF))
    # Every value of the second window survives: the threshold is its last value `v` (a tie
    # group that runs past the window, as bf16 logits have) when the tokens below `v` weigh
    # at most what the threshold removes; one pass, and only if some row needs it.
    v = second[:, -1]
    full = need & ~decided & (n >= 1)
    ties = lax.cond(jnp.any(full), lambda: full & ~(below(v) > removed),
                    lambda: jnp.zeros_like(full))
    return jnp.where(ties, v, tau), decided | ties


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
    undecided_k = undecided_k & live
    if vals is None:
        tau_k = _fill_in(undecided_k, lambda: by_rows(_bisect_top_k, r), tau_k)
    else:
        tau_k = _fill_in(undecided_k, lambda: by_rows(_search_top_k, r, vals, undecided_k),
                         tau_k)

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
    undecided_p = undecided_p & live
    if vals is None:
        tau_p = _fill_in(undecided_p, lambda: by_rows(_bisect_top_p, r, tau_k, total_k), tau_p)
    else:
        tau_p = _fill_in(undecided_p, lambda: by_rows(_search_top_p, r, tau_k, total_k, vals,
                                                      undecided_p), tau_p)
    return combine(r, tau_k, tau_p), (None if vals is None else (vals, ids))
