"""Stage 2 of the pipeline: clean the logits and decode the per-row parameters.

`Prepared` holds a `[B, V]` float32 batch of logits after cleaning (NaN counts
as -inf, a row holding +inf is uniform over its +inf tokens) together with
everything temperature decides: the row maximum, which rows are greedy, the
safe temperature, and the weights `exp((z - max) / T)` the later stages use.
(Stage 1, the logits processors, runs before this on the raw logits; see
`nucleax.processors`.)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -jnp.inf  # the one masking constant: masked logits are -inf

# float32 constants: Python floats would become float64 under jax_enable_x64.
_NEG_INF32 = np.float32(-np.inf)
_ZERO32 = np.float32(0.0)
_FLT_MAX = np.float32(np.finfo(np.float32).max)
_TINY32 = np.float32(np.finfo(np.float32).tiny)  # smallest normal float32, 1.2e-38
_HUGE_T = np.float32(2.0**100)  # above this T, weights are computed on scaled-down values
_HUGE_T_SCALE = np.float32(2.0**-32)


def flush_subnormal(x: jax.Array) -> jax.Array:
    """0 where `|x|` is below the smallest normal float32 (subnormals, -0.0); NaN stays NaN.

    CPUs flush subnormals to zero in arithmetic and comparisons (XLA sets
    flush-to-zero); doing it explicitly gives the same answer on every platform.
    """
    return jnp.where(jnp.abs(x) >= _TINY32, x, jnp.where(jnp.isnan(x), x, _ZERO32))


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


class Prepared:
    """The cleaned logits and the decoded per-row parameters, computed once per call.

    Every later stage (truncation thresholds, the draw, the dense outputs)
    reads its inputs from here, and every weight of a token goes through one
    function, `log_weights` (`exp_weights` is its exponential).

    All arrays are float32 / int32 / bool whatever `jax_enable_x64` says.
    """

    def __init__(self, logits: jax.Array, t: jax.Array, k: jax.Array, p: jax.Array,
                 m: jax.Array):
        """`logits` is `[B, V]` float32, not yet cleaned; `t, k, p, m` are `[B]`.

        Cleaning: NaN counts as -inf; a row holding +inf is uniform over its
        +inf tokens; subnormal values (|z| < 1.2e-38) and -0.0 become +0.0,
        as CPU arithmetic flushes them, but on every platform and bit for bit
        (so ties compare equal). It is derived from one max pass, and the
        cleaned row is elementwise so that XLA can fuse it into each consumer.

        Parameters (traced values are not validated; these are the fallbacks):
        subnormal values count as 0, like subnormal logits. `t` NaN, negative
        or 0 is greedy; `t = +inf` is uniform over the top-k
        survivors (every token is then equally probable, so top-p and min-p,
        which keep ties, keep them all). `k` outside `[1, V)` is off. `p >= 1`
        is off; `p <= 0` or NaN keeps the most probable token(s). `m` NaN or
        `<= 0` is off, `m >= 1` keeps the most probable token(s).
        """
        logits = jnp.asarray(logits, jnp.float32)
        t, p, m = (flush_subnormal(jnp.asarray(x, jnp.float32)) for x in (t, p, m))
        k = jnp.asarray(k, jnp.int32)
        no_nan = jnp.where(jnp.abs(logits) >= _TINY32, logits,
                           jnp.where(jnp.isnan(logits), _NEG_INF32, _ZERO32))
        top = jnp.max(no_nan, axis=-1)
        self.valid = top > NEG_INF  # False: no finite (or +inf) logit in the row
        has_inf = top == jnp.inf
        self.z = jnp.where(has_inf[:, None], jnp.where(no_nan == jnp.inf, _ZERO32, _NEG_INF32),
                           no_nan)
        self.zmax = jnp.where(self.valid & ~has_inf, top, _ZERO32)
        self.greedy = ~(t > 0) | ~self.valid  # T = 0, NaN, negative, or nothing finite
        self.t = jnp.where(self.greedy, jnp.float32(1.0), t)  # safe temperature (+inf allowed)
        self.uniform = self.t == jnp.inf  # T = +inf: every token alive weighs exp(0) = 1
        # Rows with a huge T scale logits, max and T by 2**-32 (exactly: a power
        # of two) before `(x - zmax) / T`, so that `x - zmax` cannot overflow (a
        # row may span 2 * 3.4e38) and `1 / T`, which XLA may use for the
        # division, is not a subnormal flushed to 0 (T > 2**126). What the
        # scaling loses (|x| < 2**-94) is below `T`'s resolution. Other rows: 1.
        self._scale = jnp.where(self.t > _HUGE_T, _HUGE_T_SCALE, jnp.float32(1.0))
        self._zmax_s = self.zmax * self._scale
        self._t_s = self.t * self._scale
        vocab = self.z.shape[-1]
        self.k = k
        self.k_on = (k > 0) & (k < vocab)
        self.p = jnp.where(p > 0, p, _ZERO32)  # NaN and <= 0 keep the top token(s)
        self.p_on = ~(p >= 1) & ~self.uniform
        self.m = m
        # min-p: q_x >= m max(q)  <=>  (x - zmax) / T >= log(m)  <=>  x >= zmax + T log(m)
        log_m = jnp.log(jnp.clip(m, 0.0, 1.0))
        tau_m = (self._zmax_s + self._t_s * log_m) / self._scale
        tau_m = jnp.where(m >= 1, self.zmax, tau_m)  # T * log(1) is NaN for T = inf
        self.tau_m = jnp.where((m > 0) & ~self.uniform, tau_m, _NEG_INF32)

    def log_weights(self, x: jax.Array, tau: jax.Array) -> jax.Array:
        """`(x - zmax) / T` where x survives (`x >= tau` and `x > -inf`), else -inf.

        The one weight function of every path (thresholds, draw, dense outputs,
        log-probabilities): the log of a token's unnormalised probability.
        Never NaN: `T = +inf` gives 0 to every survivor (uniform), tiny `T`
        gives -inf below the row max and 0 at it, and a huge `T` cannot
        overflow `x - zmax`. `x` is `[B, ...]` (logits of the cleaned rows or
        padding at -inf), `tau` is `[B]`.
        """
        extra = (1,) * (x.ndim - 1)
        scale = self._scale.reshape(-1, *extra)
        zmax = self._zmax_s.reshape(-1, *extra)
        t = self._t_s.reshape(-1, *extra)
        tau = jnp.maximum(jnp.asarray(tau, jnp.float32), -_FLT_MAX).reshape(-1, *extra)
        return jnp.where(x >= tau, (x * scale - zmax) / t, _NEG_INF32)

    def exp_weights(self, x: jax.Array, tau: jax.Array) -> jax.Array:
        """`exp(log_weights(x, tau))`: `exp((x - zmax) / T)` for survivors, else 0."""
        return jnp.exp(self.log_weights(x, tau))


ROW_CHUNK = 8  # rows per group for `by_rows` on the CPU


def by_rows(fn, r: Prepared, *xs: jax.Array):
    """`fn(r, *xs)` computed on groups of `ROW_CHUNK` rows at a time on the CPU backend
    (`in_row_groups`). Every field of `r` and every `x` has the batch as leading
    axis; `fn` must treat rows independently and return arrays with the batch as
    leading axis.
    """
    def one(args):
        part, parts = args
        rr = object.__new__(Prepared)
        rr.__dict__.update(part)
        return fn(rr, *parts)

    return in_row_groups(one, (dict(vars(r)), xs), r.z.shape[0])


def in_row_groups(fn, rows, batch: int):
    """`fn(rows)` on groups of `ROW_CHUNK` rows at a time (a sequential loop) on the CPU
    backend, when the batch is a multiple of `ROW_CHUNK` above it; else `fn(rows)` once.

    `rows` is a pytree of arrays (or None) with the batch as leading axis; `fn`
    must treat rows independently and return arrays with the batch as leading
    axis. On the CPU, XLA's passes over a `[64, 151936]` batch run several times
    slower per element than over 8 rows (the working set leaves the cache), and
    every full-size temporary is paid for: the CPU runtime allocates a call's
    scratch afresh, and above 32 MiB glibc maps new pages each call (page faults
    cost more than the pass). So each group is sliced inside the loop, from
    arrays passed through an `optimization_barrier` together with the loop
    counter: XLA can then hoist nothing out of the loop, in particular not the
    widening of a bf16 batch (the CPU backend widens bf16 before slicing) into
    a full-size float32 copy. The result is the same either way: each row's
    arithmetic is unchanged. Other backends run `fn` once.
    """
    if batch <= ROW_CHUNK or batch % ROW_CHUNK or jax.default_backend() != "cpu":
        return fn(rows)

    def group(carry, i):
        whole, i = jax.lax.optimization_barrier((rows, i))
        part = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, i * ROW_CHUNK, ROW_CHUNK),
                            whole)
        return carry, fn(part)

    _, out = jax.lax.scan(group, None, jnp.arange(batch // ROW_CHUNK, dtype=jnp.int32))
    return jax.tree.map(lambda o: o.reshape(batch, *o.shape[2:]), out)


def blocks(x: jax.Array, size: int, fill: float) -> jax.Array:
    """[B, V] -> [B, ceil(V/size), size], padding the tail with `fill`."""
    b, v = x.shape
    nb = -(-v // size)
    if nb * size != v:
        x = jnp.pad(x, ((0, 0), (0, nb * size - v)), constant_values=np.asarray(fill, x.dtype))
    return x.reshape(b, nb, size)
