"""An independent float64 NumPy reference of the wider catalogue and of the peers' orders.

Written from SEMANTICS Part 2, one row at a time, with probabilities (not the
library's logits-and-thresholds formulation): every step keeps tokens of the
distribution renormalised over the survivors of the steps before it.
"""

import numpy as np

DEFAULT = ("temperature", "top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "epsilon", "eta",
           "xtc")
LLAMA_CPP = ("top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "xtc", "temperature")
VLLM = ("temperature", "min_p", "top_k", "top_p")
HF = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon", "eta")
ORDERS = {"nucleax": DEFAULT, "llama.cpp": LLAMA_CPP, "vllm": VLLM, "hf": HF}

OFF = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, top_n_sigma=-1.0, typical_p=1.0,
           epsilon=0.0, eta=0.0, xtc_probability=0.0, xtc_threshold=0.1, dynatemp_range=0.0,
           dynatemp_exponent=1.0, mirostat_tau=0.0, mirostat_eta=0.1)


def _q(z, alive, t):
    """The distribution at temperature t over the alive tokens (float64)."""
    s = np.where(alive, z, -np.inf)
    top = s.max()
    w = np.where(alive, np.exp((s - top) / t), 0.0)
    return w / w.sum()


def _entropy(q):
    nz = q > 0
    return float(-(q[nz] * np.log(q[nz])).sum())


def _mass_above(q):
    """For every token, the mass of the tokens strictly more probable than it."""
    qs = np.sort(q)
    cs = np.concatenate([[0.0], np.cumsum(qs)])
    return cs[-1] - cs[np.searchsorted(qs, q, side="right")]


def chain_row(z, order="nucleax", fire=False, mu=None, **values):
    """(alive, probabilities) of one row under `order`.

    `fire`: whether XTC's coin fires for this row (the library draws it from
    the key; tests pass xtc_probability 0 or 1, or compare with the mixture).
    `mu`: mirostat's state (default `2 * mirostat_tau`). `values` are the
    SamplingParams fields (others off). Also returns `gaps`: the distance of
    every comparison made to its boundary (for choosing cases away from float32
    rounding).
    """
    v = dict(OFF, **values)
    order = ORDERS[order] if isinstance(order, str) else order
    z = np.asarray(z, np.float64)
    z = np.where(np.isnan(z), -np.inf, z)
    size = z.size
    gaps = [np.inf]
    if v["temperature"] == 0 or not np.any(z > -np.inf):
        alive = np.zeros(size, bool)
        alive[int(np.argmax(z)) if np.any(z > -np.inf) else 0] = True
        return alive, alive.astype(np.float64), np.inf
    miro = v["mirostat_tau"] > 0
    if miro:
        v.update(top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0)
    alive = z > -np.inf
    t = 1.0
    for step in order:
        q = _q(z, alive, t)
        if step == "temperature":
            t = v["temperature"]
            d, e = v["dynatemp_range"], v["dynatemp_exponent"]
            if d > 0:
                q1 = _q(z, alive, 1.0)
                n = alive.sum()
                ratio = _entropy(q1) / np.log(n) if n > 1 else 0.0
                lo, hi = max(0.0, t - d), t + d
                t = lo + (hi - lo) * ratio ** e
                gaps.append(abs(t) / max(v["temperature"], 1e-9))
                if t == 0:
                    alive &= z == z[alive].max()
                    t = 1.0
        elif step == "top_n_sigma" and v["top_n_sigma"] >= 0:
            zs = z[alive]
            bound = zs.max() - v["top_n_sigma"] * zs.std()
            gaps.append(np.min(np.abs(zs - bound)) / (1 + abs(bound)))
            alive &= z >= bound
        elif step == "top_k" and 0 < v["top_k"] < size:
            ascending = np.sort(z[alive])
            greater = ascending.size - np.searchsorted(ascending, z, side="right")
            alive &= greater < v["top_k"]
        elif step == "typical_p" and v["typical_p"] < 1:
            h = _entropy(q)
            with np.errstate(divide="ignore"):
                score = np.where(q > 0, np.abs(-np.log(q) - h), np.inf)
            order_s = np.argsort(score, kind="stable")
            ss = score[order_s]
            cum = np.concatenate([[0.0], np.cumsum(q[order_s])])
            below = cum[np.searchsorted(ss, score, side="left")]  # mass of smaller scores
            live = alive & (q > 0)
            keep = live & (below < v["typical_p"])
            gaps.extend(np.abs(below[live] - v["typical_p"]))
            s_sorted = score[order_s][np.isfinite(score[order_s])]
            diffs = np.diff(s_sorted)
            close = diffs[diffs > 0]
            if close.size:
                gaps.append(close.min() / (1 + s_sorted.max()))
            alive &= keep
        elif step == "top_p" and v["top_p"] < 1:
            above = _mass_above(q)
            gaps.extend(np.abs(above[alive] - v["top_p"]))
            alive &= above < v["top_p"]
        elif step == "min_p" and v["min_p"] > 0:
            ratio = q / q.max()
            gaps.extend(np.abs(ratio[alive] - v["min_p"]))
            alive &= ratio >= v["min_p"]
        elif step == "epsilon" and v["epsilon"] > 0:
            gaps.extend(np.abs(q[alive] - v["epsilon"]) / v["epsilon"])
            alive &= (q >= v["epsilon"]) | (q == q.max())
        elif step == "eta" and v["eta"] > 0:
            h = v["eta"]
            bound = min(h, np.sqrt(h) * np.exp(-_entropy(q)))
            gaps.extend(np.abs(q[alive] - bound) / bound)
            alive &= (q >= bound) | (q == q.max())
        elif step == "xtc" and fire and v["xtc_probability"] > 0:
            c = v["xtc_threshold"]
            in_s = alive & (q >= c) & (q > 0)
            gaps.extend(np.abs(q[alive] - c))
            if in_s.sum() >= 2:
                alive &= ~(q > q[in_s].min())
    if miro:
        q = _q(z, alive, t)
        m = 2 * v["mirostat_tau"] if mu is None else mu
        with np.errstate(divide="ignore"):
            surprise = -np.log2(q)
        gaps.extend(np.abs(surprise[alive] - m) / (1 + m))
        alive &= (surprise <= m) | (q == q.max())
    return alive, _q(z, alive, t), float(np.min(gaps))


def mirostat_step(mu, q_drawn, tau, eta):
    """Mirostat v2's update of `mu` after drawing a token of final probability q_drawn."""
    return mu - eta * (-np.log2(q_drawn) - tau)
