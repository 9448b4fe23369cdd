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

NEG_INF = -jnp.inf  # the one masking constant: masked logits are -inf


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
    reads its inputs from here.
    """

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


def blocks(x: jax.Array, size: int, fill: float) -> jax.Array:
    """[B, V] -> [B, ceil(V/size), size], padding the tail with `fill`."""
    b, v = x.shape
    nb = -(-v // size)
    if nb * size != v:
        x = jnp.pad(x, ((0, 0), (0, nb * size - v)), constant_values=fill)
    return x.reshape(b, nb, size)
