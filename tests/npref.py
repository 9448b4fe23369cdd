"""An independent float64 NumPy reference of the sampling contract.

Written from the rules, token by token (counts and masses of strictly better
tokens), not from the library's threshold formulation.
"""

import numpy as np


def softmax64(s, alive):
    s = np.where(alive, s, -np.inf)
    top = np.max(s)
    e = np.where(alive, np.exp(s - top), 0.0)
    return e / e.sum()


def reference_row(z, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """Returns (alive mask, probabilities) for one row, in float64."""
    z = np.asarray(z, np.float64)
    z = np.where(np.isnan(z), -np.inf, z)
    v = z.size
    if not np.any(z > -np.inf):
        alive = np.zeros(v, bool)
        alive[0] = True
        return alive, alive.astype(np.float64)
    if temperature == 0:
        alive = np.zeros(v, bool)
        alive[int(np.argmax(z))] = True
        return alive, alive.astype(np.float64)
    alive = z > -np.inf
    s = (z - np.max(z)) / temperature
    # top-k: fewer than k strictly larger logits
    if 0 < top_k < v:
        ascending = np.sort(z)
        n_greater = v - np.searchsorted(ascending, z, side="right")
        alive &= n_greater < top_k
    # top-p on the distribution renormalised after top-k
    if top_p < 1:
        q = softmax64(s, alive)
        qs = np.sort(q)
        cs = np.concatenate([[0.0], np.cumsum(qs)])
        mass_greater = cs[-1] - cs[np.searchsorted(qs, q, side="right")]
        alive &= mass_greater < top_p
    # min-p
    if min_p > 0:
        q = softmax64(s, alive)
        alive &= q >= min_p * q.max()
    return alive, softmax64(s, alive)


def margins(z, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """How far the row is from a top-p or min-p boundary (float64).

    A float32 implementation may legitimately disagree with the float64 rule
    only when a token's mass-above sits within rounding of p, or its log
    probability ratio within rounding of log(min_p). Tests draw p and min_p
    away from those boundaries.
    """
    z = np.asarray(z, np.float64)
    if temperature == 0 or not np.any(np.isfinite(z)):
        return np.inf, np.inf
    alive = z > -np.inf
    s = (z - np.max(z)) / temperature
    v = z.size
    if 0 < top_k < v:
        ascending = np.sort(z)
        alive &= (v - np.searchsorted(ascending, z, side="right")) < top_k
    p_margin = np.inf
    if top_p < 1:
        q = softmax64(s, alive)
        qs = np.sort(q)
        cs = np.concatenate([[0.0], np.cumsum(qs)])
        mass_greater = cs[-1] - cs[np.searchsorted(qs, q, side="right")]
        p_margin = np.min(np.abs(mass_greater[alive] - top_p))
        alive &= mass_greater < top_p
    m_margin = np.inf
    if min_p > 0:
        ratio = s[alive] - s[alive].max()
        m_margin = np.min(np.abs(ratio - np.log(min_p)))
    return p_margin, m_margin


# -- the whole contract for adversarial rows (used by the fuzzing suite) ------------------------
# Written from SEMANTICS.md and the documented fallbacks, in float64, without the library.

EPS32 = float(np.finfo(np.float32).eps)
TINY32 = float(np.finfo(np.float32).tiny)  # float32 subnormals below this count as 0


def _flush(x):
    x = float(x)
    return 0.0 if abs(x) < TINY32 else x


def effective_params(temperature, top_k, top_p, min_p, vocab):
    """The documented meaning of any (possibly invalid, traced) per-row values.

    Returns (greedy, T, k, p, m) with every knob in its valid range: subnormal
    values count as 0; T NaN / <= 0 is greedy; k outside [1, V) is off (0); p
    NaN / <= 0 keeps the top token(s) (a p below any other token's mass-above),
    p >= 1 is off; m NaN / <= 0 is off, m >= 1 keeps the top token(s).
    """
    t = _flush(temperature)
    greedy = not t > 0
    k = int(top_k)
    k = k if 0 < k < vocab else 0
    p = _flush(top_p)
    p = 1.0 if p >= 1 else (p if p > 0 else 1e-300)
    m = _flush(min_p)
    m = 0.0 if not m > 0 else min(m, 1.0)
    return greedy, t, k, p, m


def clean_row(z):
    """NaN -> -inf; subnormals -> 0; a row holding +inf becomes 0 at its +inf tokens, -inf
    elsewhere."""
    z = np.asarray(z, np.float64)
    z = np.where(np.isnan(z), -np.inf, np.where(np.abs(z) < TINY32, 0.0, z))
    if np.any(z == np.inf):
        z = np.where(z == np.inf, 0.0, -np.inf)
    return z


def _mass_above(z, q, alive):
    """For each token, the probability mass of alive tokens with a strictly larger logit.

    Ordered by logits, not by float64 probabilities: q is strictly monotone in z
    for a finite T, while exp can round distinct logits to equal q (T = 1e30)."""
    order = np.argsort(-z, kind="stable")
    zs, qs = z[order], np.where(alive, q, 0.0)[order]
    cum = np.concatenate([[0.0], np.cumsum(qs)])
    first = np.searchsorted(-zs, -zs, side="left")  # first position of each value's tie group
    above = np.empty_like(q)
    above[order] = cum[first]
    return above


def _truncate(z, t, k, p, m):
    """alive mask after top-k, top-p, min-p, and the boundary distances (float64)."""
    v = z.size
    alive = z > -np.inf
    zmax = np.max(z)
    s = np.where(alive, (z - zmax) / t, -np.inf) if t < np.inf else np.where(alive, 0.0, -np.inf)
    if k:
        ascending = np.sort(z)
        alive &= (v - np.searchsorted(ascending, z, side="right")) < k
    p_gap = np.inf
    if p < 1 and t < np.inf:  # at T = inf all are equally probable: none is above another
        above = _mass_above(z, softmax64(s, alive), alive)
        exact = above == 0  # the top tie group: its mass-above is 0 in float32 too
        p_gap = np.min(np.abs(above[alive & ~exact] - p), initial=np.inf)
        alive &= above < p
    m_gap = np.inf
    if m >= 1 and t < np.inf:  # the row max exactly: no rounding
        alive &= z == zmax
    elif 0 < m and t < np.inf:
        log_m = np.log(m)
        # float32 computes tau = zmax + T log m within eps/2 of |tau| plus eps of |T log m|
        tau = zmax + t * log_m
        tol = 0.5 * EPS32 * abs(tau) + 2 * EPS32 * abs(t * log_m)
        rest = alive & (z < zmax)  # the top tie group always survives
        m_gap = np.min(np.abs(z[rest] - tau) / max(tol, 1e-300), initial=np.inf)
        alive &= s >= log_m
    return alive, s, p_gap, m_gap


def reference_full(z, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """(alive, probs) for one row of any logits and any per-row values (float64).

    Cleaning as `clean_row`; no finite logit: a point mass on token 0; greedy:
    a point mass on the first argmax; T = +inf: every token alive after top-k
    is equally probable, so top-p and min-p (tie-inclusive) keep them all.
    """
    z = clean_row(z)
    v = z.size
    greedy, t, k, p, m = effective_params(temperature, top_k, top_p, min_p, v)
    if not np.any(z > -np.inf) or greedy:
        alive = np.zeros(v, bool)
        alive[int(np.argmax(z)) if np.any(z > -np.inf) else 0] = True
        return alive, alive.astype(np.float64)
    alive, s, _, _ = _truncate(z, t, k, p, m)
    return alive, softmax64(s, alive)


def reference_logprobs(z, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """log of `reference_full`'s probabilities, in log space: `s - logsumexp(s)` over the
    survivors (finite where the probability underflows, -inf outside the survivors)."""
    alive, probs = reference_full(z, temperature, top_k, top_p, min_p)
    z = clean_row(z)
    greedy, t, k, p, m = effective_params(temperature, top_k, top_p, min_p, z.size)
    if greedy or not np.any(z > -np.inf):
        with np.errstate(divide="ignore"):
            return np.log(probs)
    s = np.where(alive, (z - np.max(z)) / t if t < np.inf else 0.0, -np.inf)
    top = np.max(s)
    return s - (top + np.log(np.sum(np.exp(s - top))))


def near_boundary(z, temperature, top_k=0, top_p=1.0, min_p=0.0, *, p_tol=5e-5, m_tol=4.0):
    """Why float32 rounding may legitimately decide a top-p or min-p boundary ("" if not).

    top-p: some token's mass-above (after top-k) lies within `p_tol` of p.
    min-p: some token below the row max lies within `m_tol` times the float32
    rounding bound of the threshold `max z + T log m` (compared in logits).
    """
    z = clean_row(z)
    greedy, t, k, p, m = effective_params(temperature, top_k, top_p, min_p, z.size)
    if greedy or not np.any(z > -np.inf):
        return ""
    _, _, p_gap, m_gap = _truncate(z, t, k, p, m)
    return "top-p" if p_gap <= p_tol else ("min-p" if m_gap <= m_tol else "")


def log_softmax64(z):
    """Raw log-probabilities of one cleaned row (float64; -inf where the row has no mass)."""
    z = clean_row(z)
    if not np.any(z > -np.inf):
        return np.full(z.size, -np.inf)
    top = np.max(z)
    with np.errstate(divide="ignore"):
        return (z - top) - np.log(np.sum(np.exp(z - top)))


def inverse_cdf(probs, u):
    """The first token whose cumulative probability exceeds u (vocabulary order), and how far
    u is from the nearest cumulative boundary (a float32 draw may go either way within it)."""
    cum = np.cumsum(probs)
    alive = probs > 0
    hits = np.flatnonzero((cum > u * cum[-1]) & alive)
    token = int(hits[0]) if hits.size else int(np.flatnonzero(alive)[-1])
    edges = (cum[alive] / cum[-1])[:-1]  # u < 1: the last edge decides nothing
    margin = float(np.min(np.abs(edges - u))) if edges.size else np.inf
    return token, margin


def cdf_interval(probs, token):
    """[cdf before token, cdf through token]: the uniforms that draw `token` (float64)."""
    cum = np.concatenate([[0.0], np.cumsum(probs)]) / np.sum(probs)
    return float(cum[token]), float(cum[token + 1])
