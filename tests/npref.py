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
