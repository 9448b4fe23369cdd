"""Stage 3 in any order, with the wider catalogue (SEMANTICS Part 2).

The fast path (`_truncation`) covers the default order with only the four
knobs: every mask there is a threshold on the logits. This module runs the
general case: the steps of `params.order` one after another, each reading
the distribution left by the steps before it. A step removes tokens by
setting their logits to `-inf` (typical and XTC keep general survivor sets,
not suffixes of the sorted row), so the next step's "renormalised over the
survivors" is just a softmax over what is left. Greedy rows (`T = 0`) are
never cut: they take the argmax of the processed logits, as in Part 1.

Which path runs is decided on the host (`general`): parameters that are off
in every row leave the fast path's compiled code untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._rows import NEG_INF, Prepared, by_rows
from ._truncation import bisect_uint32, ordered_key, threshold, threshold_and_window

_NEG_INF32 = np.float32(-np.inf)
_INF32 = np.float32(np.inf)
_LN2 = np.float32(np.log(2.0))
_TINY = np.float32(np.finfo(np.float32).tiny)
_KNOBS = ("top_k", "top_p", "min_p")
XTC_STREAM = 0x58544301  # fold_in constant: XTC's coin, independent of the draw's uniform


@dataclasses.dataclass(frozen=True)
class Plan:
    """What stage 3 runs, decided on the host (hashable: static under jit)."""

    samplers: tuple[str, ...]  # catalogue samplers on (`SamplingParams.samplers_on`)
    steps: tuple[str, ...]  # the steps of the order that can change something, in order

    @property
    def general(self) -> bool:
        """True when stage 3 must run step by step."""
        fast = tuple(s for s in ("temperature",) + _KNOBS if s in self.steps)
        return bool(self.samplers) or self.steps != fast


def plan(params: Any) -> Plan:
    """The `Plan` of `params`: a knob counts as on unless known off on the host."""
    offs = {"top_k": lambda v: (v == 0) | (v == -1), "top_p": lambda v: v == 1,
            "min_p": lambda v: v == 0}
    on = set(params.samplers_on())
    for name in _KNOBS:
        value = getattr(params, name)
        if isinstance(value, jax.core.Tracer) or not np.all(offs[name](np.asarray(value))):
            on.add(name)
    steps = tuple(s for s in params.order if s == "temperature" or s in on)
    return Plan(params.samplers_on(), steps)


def general(params: Any) -> bool:
    """True when stage 3 must run step by step (static: decided on the host)."""
    return plan(params).general


def row_values(params: Any, batch: int) -> dict[str, jax.Array]:
    """Every per-row value stage 3 reads, as `[batch]` arrays by field name."""
    t, k, p, m = params.rows(batch)
    return {"temperature": t, "top_k": k, "top_p": p, "min_p": m,
            **params.sampler_rows(batch)}


def xtc_uniforms(keys: jax.Array) -> jax.Array:
    """XTC's coin: one uniform per row from the row's key, independent of the draw's."""
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, XTC_STREAM), (),
                                                 jnp.float32))(keys)


def stage3(z: jax.Array, how: Plan, v: dict[str, jax.Array], method: str, window: int,
           xtc_u: Any = None, mu: Any = None) -> tuple[Prepared, jax.Array, Any]:
    """Stages 2-3: `(r, tau, window)` for the draw and the dense views.

    `z` is the processed `[B, V]` float32 logits, `how` the host's `Plan`,
    `v` the per-row values (`row_values`). The fast path returns the
    prepared rows, the threshold and the fast method's window; the general
    path returns rows whose removed tokens are at `-inf`, `tau = -inf` and
    no window.
    """
    if not how.general:
        r = Prepared(z, v["temperature"], v["top_k"], v["top_p"], v["min_p"])
        tau, win = threshold_and_window(r, method, window)
        return r, tau, win
    return _run_steps(z, how, v, method, window, xtc_u, mu)


def _prep(z, t, k=None, p=None, m=None) -> Prepared:
    b = z.shape[0]
    k = jnp.zeros((b,), jnp.int32) if k is None else k
    p = jnp.ones((b,), jnp.float32) if p is None else p
    m = jnp.zeros((b,), jnp.float32) if m is None else m
    return Prepared(z, t, k, p, m)


def _groups(steps: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Consecutive runs of top-k, top-p, min-p in that relative order become one group
    (the fast threshold computes them together, exactly as separate steps would)."""
    out: list[tuple[str, ...]] = []
    for s in steps:
        if (s in _KNOBS and out and out[-1][0] in _KNOBS
                and _KNOBS.index(s) > _KNOBS.index(out[-1][-1])):
            out[-1] = out[-1] + (s,)
        else:
            out.append((s,))
    return out


def _run_steps(z, how, v, method, window, xtc_u, mu):
    batch = z.shape[0]
    t, k, p, m = v["temperature"], v["top_k"], v["top_p"], v["min_p"]
    on = set(how.samplers)
    base = _prep(z, t)  # cleaning, greedy rows
    z, greedy = base.z, base.greedy
    live = ~greedy
    one = jnp.ones((batch,), jnp.float32)
    t_cur = one  # steps before "temperature" see T = 1
    miro = (v["mirostat_tau"] > 0) & live if "mirostat" in on else jnp.zeros((batch,), bool)
    # Rows with mirostat on skip top-k, typical, top-p and min-p.
    k = jnp.where(miro, 0, k)
    p = jnp.where(miro, np.float32(1.0), p)
    m = jnp.where(miro, np.float32(0.0), m)
    typ = jnp.where(miro, np.float32(1.0), v["typical_p"])

    def cut(z, keep):
        return jnp.where(live[:, None] & ~keep, _NEG_INF32, z)

    for group in _groups(how.steps):
        step = group[0]
        if step == "temperature":
            t_cur = jnp.where(greedy, one, t)
            if "dynatemp" in on:
                t_cur, point = _dynatemp(z, t_cur, v["dynatemp_range"], v["dynatemp_exponent"])
                z = cut(z, ~point[:, None] | (z >= jnp.max(z, axis=-1, keepdims=True)))
                t_cur = jnp.where(point, one, t_cur)
            continue
        if step in _KNOBS:
            r = _prep(z, t_cur, *(x if n in group else None
                                  for n, x in zip(_KNOBS, (k, p, m), strict=True)))
            z = cut(z, z >= threshold(r, method, window)[:, None])
            continue
        r = _prep(z, t_cur)
        if step == "top_n_sigma":
            keep = _top_n_sigma_keep(r, v["top_n_sigma"])
        elif step == "typical_p":
            keep = by_rows(_typical_keep, r, typ)
        elif step == "epsilon":
            keep = _floor_keep(r, jnp.log(v["epsilon"]), v["epsilon"] > 0)
        elif step == "eta":
            h = v["eta"]
            logq, _ = _log_q(r)
            ent = _entropy(logq)
            bound = jnp.minimum(jnp.log(h), 0.5 * jnp.log(h) - ent)
            keep = _floor_keep(r, bound, h > 0)
        else:  # xtc
            keep = _xtc_keep(r, v["xtc_probability"], v["xtc_threshold"], xtc_u)
        z = cut(z, keep)
    if "mirostat" in on:
        r = _prep(z, t_cur)
        mu = jnp.broadcast_to(2.0 * v["mirostat_tau"] if mu is None else
                              jnp.asarray(mu, jnp.float32), (batch,))
        keep = _floor_keep(r, -mu * _LN2, miro)
        z = cut(z, keep)
    t_final = jnp.where(greedy, np.float32(0.0), t_cur)
    r = _prep(z, t_final)
    return r, jnp.full((batch,), _NEG_INF32), None


# ----------------------------------------------------------------------------
# The steps. Each returns `keep` ([B, V] bool) for the live rows; rows whose
# sampler is off keep everything.


def _log_q(r: Prepared) -> tuple[jax.Array, jax.Array]:
    """log q over the tokens alive in `r` (-inf elsewhere), and log of the row's total."""
    lw = r.log_weights(r.z, jnp.full(r.z.shape[:1], _NEG_INF32))
    log_total = jnp.log(jnp.sum(jnp.exp(lw), axis=-1))
    return lw - log_total[:, None], log_total


def _entropy(logq: jax.Array) -> jax.Array:
    """`-sum q log q`, terms with q = 0 counting 0."""
    q = jnp.exp(logq)
    return -jnp.sum(jnp.where(q > 0, q * logq, np.float32(0.0)), axis=-1)


def _floor_keep(r: Prepared, log_floor: jax.Array, on: jax.Array) -> jax.Array:
    """Keep `log q_x >= log_floor` (and the most probable tokens) where `on`."""
    logq, _ = _log_q(r)
    top = logq >= jnp.max(logq, axis=-1, keepdims=True)  # T = inf: every alive token
    keep = (logq >= log_floor[:, None]) | top
    return keep | ~on[:, None]


def _top_n_sigma_keep(r: Prepared, n: jax.Array) -> jax.Array:
    """`z >= max - n * std(z)` over the finite logits (a scale-free rule: T does not matter)."""
    alive = r.z > NEG_INF
    count = jnp.maximum(jnp.sum(alive, axis=-1), 1).astype(jnp.float32)
    # Shifted by the max (halved first: a row may span 2 * 3.4e38) and divided by the widest
    # gap, so that the squares neither overflow nor underflow: y is in [-1, 0].
    half = np.float32(0.5)
    zc = jnp.where(alive, r.z * half - (r.zmax * half)[:, None], np.float32(0.0))
    width = -jnp.min(zc, axis=-1)
    # XLA may divide by multiplying with 1 / width, which is subnormal (flushed to 0) for
    # width > 8.5e37: wide rows are scaled down by an exact power of two first.
    big = (width > np.float32(2.0**64))[:, None]
    scale = jnp.where(big, np.float32(2.0**-64), np.float32(1.0))
    width = jnp.where(width > 0, width, np.float32(1.0))[:, None]
    y = (zc * scale) / (width * scale)
    mean = jnp.sum(y, axis=-1) / count
    var = jnp.sum(jnp.where(alive, jnp.square(y - mean[:, None]), np.float32(0.0)),
                  axis=-1) / count
    bound = -n * jnp.sqrt(var)  # relative to the row max, in units of the widest gap
    on = (n >= 0) & ~r.uniform  # T = inf: every tempered logit is 0, so all survive
    keep = y >= jnp.where(jnp.isnan(bound), np.float32(0.0), bound)[:, None]
    return keep | ~on[:, None]


def _typical_keep(r: Prepared, typ: jax.Array) -> jax.Array:
    """Locally typical: keep x iff the mass of tokens with a strictly smaller score is < t.

    The score is `|-log q - H|`. The cut-off score is found exactly by a
    32-step bisection over its float32 bit pattern (scores are >= 0).
    """
    logq, _ = _log_q(r)
    ent = _entropy(logq)
    q = jnp.exp(logq)
    pos = q > 0
    score = jnp.where(pos, jnp.abs(-logq - ent[:, None]), _INF32)
    keys = ordered_key(score)
    total = jnp.sum(q, axis=-1)
    limit = jnp.maximum(jnp.where(typ > 0, typ, np.float32(0.0)) * total, _TINY)
    top = jnp.uint32(0xFFFFFFFF)

    def pred(c):  # mass of scores <= c reaches t (true at the top)
        mass = jnp.sum(jnp.where(keys <= c[:, None], q, np.float32(0.0)), axis=-1)
        return (mass >= limit) | (c == top)

    cut = bisect_uint32(pred, r.z.shape[0])
    keep = (keys <= cut[:, None]) & pos
    off = ~(typ < 1)
    return keep | off[:, None]


def _xtc_keep(r: Prepared, prob: jax.Array, thr: jax.Array, u: jax.Array) -> jax.Array:
    """Exclude top choices: when the coin fires and at least two tokens have q >= c,
    remove every one of them more probable than the least probable of them."""
    logq, _ = _log_q(r)
    in_s = (logq >= jnp.log(thr)[:, None]) & (logq > NEG_INF)
    two = jnp.sum(in_s, axis=-1) >= 2
    low = jnp.min(jnp.where(in_s, logq, _INF32), axis=-1)
    fire = (u < prob) & two
    return ~(fire[:, None] & (logq > low[:, None]))


def _dynatemp(z, t, d, e):
    """llama.cpp's entropy-scaled temperature. Returns `(T', point)`: `point` marks rows
    whose `T'` is 0 (they keep only their most probable tokens)."""
    r = _prep(z, jnp.ones_like(t))
    logq, _ = _log_q(r)
    ent = _entropy(logq)
    n = jnp.sum(z > NEG_INF, axis=-1).astype(jnp.float32)
    ratio = jnp.where(n > 1, ent / jnp.log(jnp.maximum(n, 2.0)), np.float32(0.0))
    ratio = jnp.clip(ratio, 0.0, 1.0)
    t_min, t_max = jnp.maximum(t - d, 0.0), t + d
    new = t_min + (t_max - t_min) * jnp.power(ratio, e)
    new = jnp.where((d > 0) & ~jnp.isnan(new), new, t)
    return new, ~(new > 0)
