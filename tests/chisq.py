"""One chi-square goodness-of-fit check for the distribution tests (fixed seeds, stated alpha)."""

import numpy as np
from scipy import stats

ALPHA = 1e-3  # false-alarm rate of one check


def check(counts, expected_p, what, alpha=ALPHA):
    """Asserts that `counts` fit the probabilities `expected_p` (any shape, flattened).

    A token of probability 0 must never be drawn; cells expecting fewer than 5 draws are
    pooled into one.
    """
    counts = np.asarray(counts, np.float64).ravel()
    exp = np.asarray(expected_p, np.float64).ravel() * counts.sum()
    zero = exp == 0
    assert counts[zero].sum() == 0, f"{what}: a token of probability 0 was drawn"
    keep = exp >= 5
    obs = np.concatenate([counts[keep], [counts[~keep & ~zero].sum()]])
    ex = np.concatenate([exp[keep], [exp[~keep & ~zero].sum()]])
    if ex[-1] == 0:
        obs, ex = obs[:-1], ex[:-1]
    pval = stats.chisquare(obs, ex * obs.sum() / ex.sum()).pvalue
    assert pval > alpha, f"{what}: chi-square p-value {pval:.2e} < {alpha}"
