"""An adversarial pass over the wider catalogue (SEMANTICS Part 2): hostile inputs and invariants.

Non-finite and extreme logits, tiny and huge temperatures, ties at every boundary, per-row mixes
(mirostat beside top-k / typical, greedy rows), traced values the host never saw inside a user's
own `jax.jit`, x64, a custom order against the float64 reference (tests/catref), `probs`
against `sample`'s frequencies, `keep_mask` / `logprobs` / `sample` consistent with each other
for the same key, batch invariance, the decoding loop with DRY + mirostat + XTC, and the
bad-host-value errors. Chi-square tests use a fixed seed and a false-alarm rate of 1e-3.

To stay fast, most tests share one compiled program: the public entry points inside a user's
`jax.jit` with every field traced (so every sampler is on and each row's values decide), on a
`[16, 40]` batch; small cases are tiled, or padded with `-inf` logits, to fill it.
"""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catref import OFF, chain_row
from chisq import check as chi2_check
from jaxmode import x64

import nucleax as nx
from nucleax import samplers

FIELDS = tuple(OFF)
B, V = 16, 40
SPECIAL = np.array([np.nan, np.inf, -np.inf, -1.0, 0.0, 1.0, 2.0, 1e-30, 1e30, 0.5, 0.05],
                   np.float32)
# One sampler on per entry (others off), then everything at once.
EVERYTHING = dict(top_n_sigma=1.0, typical_p=0.6, epsilon=0.01, eta=0.01, xtc_probability=1.0,
                  xtc_threshold=0.05, dynatemp_range=0.3, dynatemp_exponent=1.5, mirostat_tau=2.0)
ONE_EACH = [dict(top_n_sigma=1.0), dict(top_n_sigma=0.0), dict(typical_p=0.5),
            dict(epsilon=0.05), dict(eta=0.02), dict(xtc_probability=1.0, xtc_threshold=0.05),
            dict(xtc_probability=1.0, xtc_threshold=0.0), dict(dynatemp_range=0.5),
            dict(dynatemp_range=2.0, dynatemp_exponent=0.0), dict(mirostat_tau=1.0),
            dict(mirostat_tau=0.1), dict(top_k=3, top_p=0.6, min_p=0.1), EVERYTHING]


def _columns(rows, fields=FIELDS):
    """Per-row values -> {field: [len(rows)] array} (off where a row does not set it)."""
    return {f: np.array([r.get(f, OFF[f]) for r in rows], np.int32 if f == "top_k" else
                        np.float32) for f in fields}


@functools.partial(jax.jit, static_argnames=("order", "views"))
def _views_jit(keys, z, cols, mu, order="nucleax", views="all"):
    p = nx.SamplingParams(**cols, order=order)
    out = None if views == "dense" else nx.sample(keys, z, p, mu=mu, return_logprobs=True)
    pr = None if views == "draw" else nx.probs(z, p, key=keys, mu=mu)
    return out, pr, nx.keep_mask(z, p, key=keys, mu=mu)


def _views(z, rows, seed=0, mu=None, keys=None, order="nucleax", check=True, views="all"):
    """sample / probs / keep_mask for the same [B] keys, every field traced; `rows` are the
    per-row values (dicts) or columns. Checks the invariants every row must keep. `views`:
    "all", or "dense" (no sample) or "draw" (no probs) to compile less."""
    z = np.asarray(z, np.float32)
    cols = _columns(rows) if isinstance(rows, list) else rows
    cols = {f: jnp.asarray(c) for f, c in cols.items()}
    batch = z.shape[0]
    keys = jax.random.split(jax.random.key(seed), batch) if keys is None else keys
    if mu is None:  # mirostat's starting value
        mu = 2 * np.asarray(cols["mirostat_tau"])
    mu = jnp.asarray(mu, jnp.float32)
    out, pr, mask = _views_jit(keys, jnp.asarray(z), cols, mu, order=order, views=views)
    mask = np.asarray(mask)
    assert np.all(mask.any(-1)), "an empty row"
    pr = None if pr is None else np.asarray(pr)
    if pr is not None and check:
        assert np.all(np.isfinite(pr)) and np.all(pr >= 0), "NaN / inf / negative probs"
        np.testing.assert_allclose(pr.sum(-1), 1.0, atol=1e-5)
    if out is None:
        return pr, mask, None, None
    tokens, lp = np.asarray(out.tokens), np.asarray(out.logprobs)
    if check:
        rows_i = np.arange(batch)
        assert np.all((tokens >= 0) & (tokens < z.shape[1])), tokens
        assert np.all(mask[rows_i, tokens]), "a token outside keep_mask(key=same key)"
        assert not np.any(np.isnan(lp)) and np.all(lp <= 0)
        if pr is not None:
            assert np.all(pr[rows_i, tokens] > 0), "a token of probability 0"
            np.testing.assert_allclose(lp, np.log(pr[rows_i, tokens]), atol=1e-5)
    return pr, mask, tokens, lp


# ----------------------------------------------------------------------------
# Hostile logits and traced values


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hostile_rows_and_traced_values_inside_a_users_jit(seed):
    """NaN, all -inf, all NaN, +inf, 1e30 and 1e-30 rows, and values the host never saw (NaN,
    +-inf, negative, out of range, 1e30) for every field and for mu: never NaN, never an empty
    row, never an out-of-range token; mask == (probs > 0); logprobs = log probs[token]."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (B, V)).astype(np.float32)
    z[0] = -np.inf
    z[1] = np.nan
    z[2, [1, 4, 7]] = np.nan
    z[3, [2, 9]] = np.inf
    z[4, [0, 5]] = [1e30, -1e30]
    z[5, :V - 1] = -np.inf  # one finite logit
    z[6] *= 1e-30
    z[7] = np.round(z[7])  # ties
    cols = {f: rng.choice(SPECIAL, B) for f in FIELDS if f != "top_k"}
    cols["top_k"] = rng.choice([-5, -1, 0, 1, 2, V - 1, V, 100], B).astype(np.int32)
    mu = rng.choice(SPECIAL, B)
    pr, mask, tokens, lp = _views(z, cols, seed, mu=mu)
    np.testing.assert_array_equal(mask, pr > 0)
    assert tokens[0] == 0 and tokens[1] == 0 and tokens[5] == V - 1, tokens
    assert not mask[2, [1, 4, 7]].any()
    assert set(np.flatnonzero(mask[3])) <= {2, 9}
    params = types.SimpleNamespace(mirostat_tau=cols["mirostat_tau"],
                                   mirostat_eta=cols["mirostat_eta"])
    new_mu = np.asarray(samplers.mirostat_update(jnp.asarray(mu), jnp.asarray(lp), params))
    assert not np.any(np.isnan(new_mu) & ~np.isnan(mu)), "mirostat_update made a NaN"


def test_hostile_rows_with_each_sampler_and_finite_values():
    """The same hostile rows with ordinary values: every sampler alone (one per row), then
    with every sampler at once; +inf rows are uniform over their +inf tokens."""
    z = np.random.default_rng(3).normal(0.0, 2.0, (6, V)).astype(np.float32)
    z[0] = -np.inf
    z[1, [1, 4, 7]] = np.nan
    z[2, [2, 9]] = np.inf
    z[3, [0, 5]] = [1e30, -1e30]
    z[4] *= 1e-30
    z[5, :V - 1] = -np.inf
    for kw in ONE_EACH:
        rows = [dict(temperature=0.8, **kw)] * B
        pr, mask, tokens, _ = _views(np.concatenate([z, z, z[:4]]), rows, 3)
        assert tokens[0] == 0 and tokens[5] == V - 1, (kw, tokens)
        assert not mask[1, [1, 4, 7]].any(), kw
        assert set(np.flatnonzero(mask[2])) <= {2, 9}, kw
        if "xtc_probability" not in kw:
            np.testing.assert_allclose(pr[2, [2, 9]], 0.5, err_msg=str(kw))


@pytest.mark.parametrize("vocab", [1, 2])
def test_one_and_two_token_vocabularies(vocab):
    """Every sampler alone and all at once, greedy or not, on 1- and 2-token rows (tied,
    one -inf, all NaN)."""
    z = np.array([[0.3, -0.2], [1.0, 1.0], [-np.inf, 2.0], [np.nan, np.nan]],
                 np.float32)[:, :vocab]
    rows = [dict(temperature=t, **kw) for kw in ONE_EACH for t in (0.7, 0.0)]
    for start in (0, B):
        _, mask, tokens, lp = _views(np.tile(z, (B // 4, 1)),
                                     [rows[(start + j) % len(rows)] for j in range(B)], start,
                                     views="draw")
        assert np.all(np.isfinite(lp))
        assert np.all(tokens[3::4] == 0)
        if vocab == 2:
            assert np.all(tokens[2::4] == 1)


@pytest.mark.parametrize("temperature", [1e-30, 1e30])
def test_tiny_and_huge_temperatures_with_each_sampler(temperature):
    """At a tiny T only the maximum logits survive (every step keeps the most probable token
    and ties; XTC with c = 0 and dynamic temperature excepted); at a huge T every survivor
    weighs the same (float32)."""
    rng = np.random.default_rng(4)
    z = np.round(rng.normal(0.0, 2.0, (B, V)), 1).astype(np.float32)
    z[:, :2] = z.max() + 1.0  # a tie at the top
    rows = [dict(temperature=temperature, **kw) for kw in ONE_EACH]
    rows += [dict(temperature=temperature)] * (B - len(rows))
    pr, mask, _, _ = _views(z, rows, 4)
    for i, kw in enumerate(rows):
        if temperature < 1 and "dynatemp_range" not in kw and kw.get("xtc_threshold") != 0:
            np.testing.assert_array_equal(pr[i, :2], 0.5, err_msg=str(kw))
        if temperature > 1:
            kept = pr[i][mask[i]]
            np.testing.assert_allclose(kept, kept[0], rtol=1e-5, err_msg=str(kw))


def test_top_n_sigma_is_scale_free_over_a_moderate_range():
    """Multiplying the logits and T by s changes nothing (n * std scales with s), for
    s in [1e-4, 1e4]."""
    rng = np.random.default_rng(5)
    base = rng.normal(0.0, 1.0, (3, V))
    want = np.stack([chain_row(b, top_n_sigma=1.0)[0] for b in base])
    scales = (1e-4, 1e-2, 1.0, 1e2, 1e4)
    z = np.concatenate([base * s for s in scales] + [base[:1]])
    rows = [dict(temperature=s, top_n_sigma=1.0) for s in scales for _ in range(3)]
    _, mask, _, _ = _views(z, rows + rows[:1], 5)
    for j, s in enumerate(scales):
        np.testing.assert_array_equal(mask[3 * j:3 * j + 3], want, err_msg=f"scale {s}")


# ----------------------------------------------------------------------------
# Ties and permutations


def test_equal_logits_share_their_fate_and_permutations_commute():
    """Tie-inclusive: tokens with equal logits are kept or removed together by every sampler
    (rows with many ties); permuting the vocabulary permutes keep_mask and probs."""
    rng = np.random.default_rng(6)
    z = (np.round(rng.normal(0.0, 2.0, (B, V)) * 2) / 2).astype(np.float32)
    perm = rng.permutation(V)
    keys = jax.random.split(jax.random.key(6), B)
    rows = [dict(temperature=0.9, **kw) for kw in ONE_EACH]
    rows += [dict(temperature=0.9, top_k=5), dict(temperature=0.9, top_p=0.5),
             dict(temperature=0.9, typical_p=0.3, xtc_probability=1.0, xtc_threshold=0.1)]
    pr, mask, _, _ = _views(z, rows, keys=keys)
    for i in range(B):
        for value in np.unique(z[i]):
            group = mask[i][z[i] == value]
            assert np.all(group == group[0]), (rows[i], value)
    pr_p, mask_p, _, _ = _views(z[:, perm], rows, keys=keys)
    np.testing.assert_array_equal(mask_p, mask[:, perm])
    np.testing.assert_allclose(pr_p, pr[:, perm], atol=1e-6)


def test_ties_straddling_typical_xtc_epsilon_eta_and_mirostat_boundaries():
    """Hand-computed; equal probabilities have bitwise-equal scores, so a tie group is whole."""
    cases = [
        # q = (.4, .2, .2, .2): H = 1.3322 nats; scores .416 and .277 (x3): the tied three
        # come first (mass of smaller scores 0), then token 0 (mass .6 < .7): all kept
        ([0.4, 0.2, 0.2, 0.2], dict(typical_p=0.7), [1, 1, 1, 1]),
        # ... with t = .5 token 0 goes (.6 >= .5); the tied three stay together
        ([0.4, 0.2, 0.2, 0.2], dict(typical_p=0.5), [0, 1, 1, 1]),
        # XTC c = .2: S = every token; only token 0 is above S's least probable
        ([0.4, 0.2, 0.2, 0.2], dict(xtc_probability=1.0, xtc_threshold=0.2), [0, 1, 1, 1]),
        # XTC: S = the two tied tokens at .3, neither is above the other: nothing removed
        ([0.3, 0.3, 0.2, 0.2], dict(xtc_probability=1.0, xtc_threshold=0.25), [1, 1, 1, 1]),
        # XTC: a tie at S's least probable is kept whole
        ([0.4, 0.15, 0.15, 0.15, 0.15], dict(xtc_probability=1.0, xtc_threshold=0.15),
         [0, 1, 1, 1, 1]),
        # XTC c = 0: S = every live token; only the least probable (tied) remain
        ([0.4, 0.2, 0.2, 0.1, 0.1], dict(xtc_probability=1.0, xtc_threshold=0.0),
         [0, 0, 0, 1, 1]),
        # epsilon / eta / top-n-sigma 0 / mirostat keep the tied maxima whatever the floor
        ([0.3, 0.3, 0.2, 0.2], dict(epsilon=0.5), [1, 1, 0, 0]),
        ([0.3, 0.3, 0.2, 0.2], dict(eta=0.9), [1, 1, 0, 0]),
        ([0.3, 0.3, 0.2, 0.2], dict(top_n_sigma=0.0), [1, 1, 0, 0]),
        ([0.3, 0.3, 0.2, 0.2], dict(mirostat_tau=0.1), [1, 1, 0, 0]),
        # mirostat: mu = 2 bits keeps q >= 1/4: a uniform row of four stays whole
        ([0.25, 0.25, 0.25, 0.25], dict(mirostat_tau=1.0), [1, 1, 1, 1]),
        # top-n-sigma: std of log q is 0 for a uniform row
        ([0.25, 0.25, 0.25, 0.25], dict(top_n_sigma=0.0), [1, 1, 1, 1]),
    ]
    z = np.full((B, V), -np.inf, np.float32)
    rows = [dict()] * B
    for i, (q, kw, _) in enumerate(cases):
        z[i, :len(q)] = np.log(np.asarray(q, np.float64))
        rows[i] = kw
    z[len(cases):] = z[0]
    rows[len(cases):] = [rows[0]] * (B - len(cases))
    _, mask, _, _ = _views(z, rows)
    for i, (q, kw, want) in enumerate(cases):
        assert mask[i, :len(q)].astype(int).tolist() == want, (q, kw)
        assert not mask[i, len(q):].any()


# ----------------------------------------------------------------------------
# Per-row mixes, orders


def _stable_rows(rng, count, make, order="nucleax", vocab=V, min_gap=1e-4):
    """`count` (row, values, mu) whose reference result is away from float32 boundaries."""
    zs, vals = [], []
    while len(zs) < count:
        v, mu = make(rng, len(zs))
        z = rng.normal(0.0, float(rng.choice([0.5, 2.0, 4.0])), vocab).astype(np.float32)
        if chain_row(z, order, fire=True, mu=mu, **v)[2] > min_gap:
            zs.append(z)
            vals.append((v, mu))
    return np.stack(zs), vals


def test_mirostat_rows_beside_top_k_typical_and_greedy_rows():
    """One batch: mirostat on in some rows only (with top-k / typical / top-p also set there,
    which it replaces), top-k / typical / top-p / the others in other rows, greedy rows with
    everything set; each row against the float64 reference at its own mu."""
    kinds = [
        lambda r: dict(temperature=0.9, mirostat_tau=float(r.uniform(1, 4)), mirostat_eta=0.3,
                       top_k=3, typical_p=0.3, top_p=0.5, min_p=0.2),
        lambda r: dict(temperature=1.1, top_k=int(r.integers(2, 10))),
        lambda r: dict(temperature=0.8, typical_p=float(r.uniform(0.2, 0.9))),
        lambda r: dict(temperature=0.0, typical_p=0.5, mirostat_tau=2.0, xtc_probability=1.0,
                       top_n_sigma=0.5),
        lambda r: dict(temperature=1.0, top_p=0.7, xtc_probability=1.0, xtc_threshold=0.05,
                       top_n_sigma=2.0),
        lambda r: dict(temperature=1.3, epsilon=0.02, eta=0.01, dynatemp_range=0.4,
                       mirostat_tau=float(r.uniform(2, 5))),
        lambda r: dict(temperature=0.7, typical_p=0.8, top_k=15, min_p=0.05, dynatemp_range=0.2),
        lambda r: dict(temperature=1.0),
    ]

    def make(r, i):
        v = kinds[i % len(kinds)](r)
        return v, (float(r.uniform(0.5, 6.0)) if v.get("mirostat_tau", 0) > 0 else None)

    z, vals = _stable_rows(np.random.default_rng(7), B, make)
    mu = [m if m is not None else 0.0 for _, m in vals]
    pr, mask, tokens, _ = _views(z, [v for v, _ in vals], 7, mu=mu)
    for i, (v, m) in enumerate(vals):
        alive, want, _ = chain_row(z[i], fire=True, mu=m, **v)
        np.testing.assert_array_equal(mask[i], alive, err_msg=f"row {i}: {v}")
        np.testing.assert_allclose(pr[i], want, atol=1e-5, err_msg=f"row {i}: {v}")


def _values_for(steps):
    def make(r, i):
        v = dict(temperature=float(r.choice([0.6, 1.0, 1.4])),
                 dynatemp_range=float(r.choice([0.0, 0.3])), dynatemp_exponent=1.3,
                 mirostat_tau=float(r.choice([0.0, 0.0, 3.0])))
        draws = dict(top_n_sigma=dict(top_n_sigma=float(r.uniform(0.5, 2.5))),
                     typical_p=dict(typical_p=float(r.uniform(0.3, 0.95))),
                     xtc=dict(xtc_probability=1.0, xtc_threshold=float(r.uniform(0.02, 0.2))),
                     min_p=dict(min_p=float(r.uniform(0.01, 0.2))),
                     top_k=dict(top_k=int(r.integers(2, 20))),
                     eta=dict(eta=float(r.uniform(1e-3, 0.03))),
                     epsilon=dict(epsilon=float(r.uniform(1e-3, 0.03))),
                     top_p=dict(top_p=float(r.uniform(0.4, 0.95))))
        for s in steps:
            if s != "temperature" and r.random() < 0.6:
                v.update(draws[s])
        return v, None
    return make


@pytest.mark.parametrize("order", [
    ("min_p", "epsilon", "top_k", "xtc", "top_n_sigma", "eta", "typical_p", "top_p",
     "temperature"),
])
def test_a_custom_order_with_dynatemp_and_mirostat_matches_the_reference(order):
    """A shuffle of every step (temperature last, as llama.cpp: dynamic temperature over the
    survivors of truncations run at T = 1), mirostat after all, against the float64 chain.
    (llama.cpp's own order with dynatemp and mirostat: tests/test_catalogue.py.)"""
    steps = samplers.as_order(order)
    fields = [f for f in FIELDS if f not in ("epsilon", "eta") or f in steps]
    z, vals = _stable_rows(np.random.default_rng(len(steps)), B, _values_for(steps), order)
    cols = _columns([v for v, _ in vals], fields)
    pr, mask, _, _ = _views(z, cols, 8, order=order, views="dense")
    for i, (v, _) in enumerate(vals):
        alive, want, _ = chain_row(z[i], order, fire=True, **v)
        np.testing.assert_array_equal(mask[i], alive, err_msg=f"{v}")
        np.testing.assert_allclose(pr[i], want, atol=1e-5, err_msg=f"{v}")


# ----------------------------------------------------------------------------
# probs against sample; the keys decide XTC



CHI_SETTINGS = [
    dict(temperature=1.5, top_n_sigma=2.5, typical_p=0.9, eta=0.002),
    dict(temperature=1.2, xtc_probability=0.4, xtc_threshold=0.04, epsilon=0.003),
    dict(temperature=0.7, dynatemp_range=0.6, dynatemp_exponent=0.7, min_p=0.02, top_k=20,
         mirostat_tau=4.0),
    dict(temperature=1.0, typical_p=0.7, mirostat_tau=0.0),
]


def test_sample_frequencies_follow_probs():
    """Four settings, n draws each from one row with fresh keys: the token counts against the
    mean of `probs(key=k)` over the keys used (each draw's own distribution: XTC's coin is
    the key's), chi-square at 1e-3 each, fixed seed."""
    rng = np.random.default_rng(10)
    z = (-1.1 * np.log(rng.permutation(V) + 1.0) + rng.normal(0.0, 0.3, V)).astype(np.float32)
    n, per = 1600, B // len(CHI_SETTINGS)
    rows = [kw for kw in CHI_SETTINGS for _ in range(per)]
    zs = np.tile(z, (B, 1))
    counts = np.zeros((len(CHI_SETTINGS), V))
    expected = np.zeros((len(CHI_SETTINGS), V))
    for call in range(n // per):
        pr, _, tokens, _ = _views(zs, rows, 1000 + call, check=False)
        for j in range(len(CHI_SETTINGS)):
            part = slice(j * per, (j + 1) * per)
            counts[j] += np.bincount(tokens[part], minlength=V)
            expected[j] += pr[part].sum(0)
    for j, kw in enumerate(CHI_SETTINGS):
        assert np.count_nonzero(expected[j]) > 3, kw
        chi2_check(counts[j], expected[j] / expected[j].sum(), str(kw))


def test_keys_decide_xtc_and_every_view_agrees():
    """XTC a = 0.5 with mirostat: for each key the mask, probs and token agree; the keyed
    masks take exactly two values (the coin), and they match the float64 reference."""
    rng = np.random.default_rng(11)
    z = np.tile(rng.normal(0.0, 1.5, V).astype(np.float32), (B, 1))
    kw = dict(temperature=1.0, xtc_probability=0.5, xtc_threshold=0.05, mirostat_tau=3.0)
    pr, mask, _, _ = _views(z, [kw] * B, 11)
    np.testing.assert_array_equal(mask, pr > 0)
    fired = chain_row(z[0], fire=True, **kw)[1]
    kept = chain_row(z[0], fire=False, **kw)[1]
    assert not np.array_equal(fired > 0, kept > 0)
    n_fired = 0
    for i in range(B):
        want = fired if np.array_equal(mask[i], fired > 0) else kept
        np.testing.assert_allclose(pr[i], want, atol=1e-5)
        n_fired += want is fired
    assert 0 < n_fired < B, "the coin should fire for some keys and not others"


# ----------------------------------------------------------------------------
# Batch invariance


def test_a_rows_token_does_not_depend_on_the_other_rows():
    """[B] keys: after moving rows around and replacing the other rows (logits and values),
    the rows kept give the same token, logprob and mask, with every sampler on."""
    rng = np.random.default_rng(12)

    def rows(count):
        return [dict(temperature=float(rng.uniform(0.5, 1.5)), top_n_sigma=float(rng.uniform(1, 3)),
                     typical_p=float(rng.uniform(0.3, 1.0)), eta=float(rng.choice([0.0, 0.01])),
                     xtc_probability=float(rng.choice([0.0, 0.5, 1.0])), xtc_threshold=0.05,
                     dynatemp_range=float(rng.choice([0.0, 0.4])), mirostat_eta=0.3,
                     mirostat_tau=float(rng.choice([0.0, 2.5])), top_k=int(rng.integers(0, 30)))
                for _ in range(count)]

    z = rng.normal(0.0, 2.0, (B, V)).astype(np.float32)
    cols = _columns(rows(B))
    mu = rng.uniform(1.0, 8.0, B).astype(np.float32)
    keys = jax.random.split(jax.random.key(12), B)
    _, mask, tokens, lp = _views(z, cols, mu=mu, keys=keys)
    keep = np.array([3, 0, 11, 7, 15])
    at = np.array([9, 2, 14, 0, 5])  # where the kept rows go
    z2 = rng.normal(0.0, 2.0, (B, V)).astype(np.float32)
    cols2 = _columns(rows(B))
    mu2 = rng.uniform(1.0, 8.0, B).astype(np.float32)
    keys2 = jax.random.split(jax.random.key(99), B)
    z2[at] = z[keep]
    mu2[at] = mu[keep]
    for f in cols2:
        cols2[f][at] = cols[f][keep]
    keys2 = keys2.at[at].set(keys[keep])
    _, mask2, tokens2, lp2 = _views(z2, cols2, mu=mu2, keys=keys2)
    np.testing.assert_array_equal(tokens2[at], tokens[keep])
    np.testing.assert_array_equal(mask2[at], mask[keep])
    np.testing.assert_allclose(lp2[at], lp[keep], atol=1e-6)
    assert not np.array_equal(tokens2, tokens), "the other rows did change"


# ----------------------------------------------------------------------------
# x64


def test_x64_gives_the_float32_tokens_and_dtypes():
    rng = np.random.default_rng(9)
    z = rng.normal(0.0, 2.0, (B, V)).astype(np.float32)
    rows = [dict(temperature=0.9, top_n_sigma=2.0, typical_p=0.9, epsilon=1e-3,
                 xtc_probability=0.5, xtc_threshold=0.05, dynatemp_range=0.2,
                 mirostat_tau=float(rng.choice([0.0, 4.0]))) for _ in range(B)]
    want = _views(z, rows, 9)
    with x64():
        got = _views(z, rows, 9, views="draw")
        p64 = nx.SamplingParams(mirostat_tau=4.0)
        mu = samplers.mirostat_update(samplers.mirostat_init(p64, B), jnp.asarray(got[3]), p64)
        assert mu.dtype == jnp.float32
        assert got[2].dtype == np.int32 and got[3].dtype == np.float32
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_allclose(got[3], want[3], atol=1e-5)


# ----------------------------------------------------------------------------
# The decoding loop


def test_loop_with_dry_mirostat_and_xtc_is_batch_invariant():
    """generate with DRY + mirostat + XTC + typical per request: a request's tokens and
    logprobs do not depend on the other requests or its place in the batch ([B] keys)."""
    from nucleax import decode
    from nucleax.models.llama import Llama, LlamaConfig, random_weights

    config = LlamaConfig(vocab_size=32, dim=32, n_layers=1, n_heads=4, n_kv_heads=2,
                         hidden_dim=48, head_dim=8, context_length=64)
    model = Llama(config, random_weights(config, seed=4, scale=0.6))
    prompts = [[3, 4, 5, 3, 4], [10, 11], [7, 7, 7, 1, 2]]
    cols = dict(temperature=[1.0, 0.9, 1.3], mirostat_tau=[3.0, 0.0, 2.0],
                mirostat_eta=[0.5, 0.1, 0.2], xtc_probability=[0.5, 1.0, 0.0],
                xtc_threshold=[0.05, 0.08, 0.1], typical_p=[1.0, 0.7, 0.9],
                dry_multiplier=[1.5, 0.8, 0.0], dry_allowed_length=[1, 2, 2])
    keys = jnp.stack([jax.random.key(s) for s in (21, 22, 23)])

    def run(prompts, idx, keys):
        params = nx.SamplingParams(**{k: np.asarray(v)[idx] for k, v in cols.items()},
                                   dry_sequence_breakers=[[0]] * 3)
        return decode.generate(model, prompts, params, key=keys, max_new_tokens=8,
                               return_logprobs=True)

    full = run(prompts, [0, 1, 2], keys)
    tokens = np.asarray(full.tokens)
    assert np.all((tokens >= 0) & (tokens < 32))
    assert np.all(np.isfinite(np.asarray(full.logprobs)))
    # request 1 replaced by another one (other prompt, values, key); 0 and 2 swapped
    moved = run([prompts[2], [5, 6, 7, 8], prompts[0]], [2, 1, 0],
                jnp.stack([keys[2], jax.random.key(77), keys[0]]))
    np.testing.assert_array_equal(np.asarray(moved.tokens)[[2, 0]], tokens[[0, 2]])
    np.testing.assert_allclose(np.asarray(moved.logprobs)[[2, 0]],
                               np.asarray(full.logprobs)[[0, 2]], atol=1e-5)

# ----------------------------------------------------------------------------
# Bad host values


@pytest.mark.parametrize("field, bad, expected", [
    ("top_n_sigma", float("inf"), "finite"),
    ("typical_p", 0.0, "(0, 1]"),
    ("typical_p", [0.5, 1.01], "(0, 1]"),
    ("epsilon", 1.0, "[0, 1)"),
    ("eta", float("nan"), "[0, 1)"),
    ("xtc_probability", -0.5, "[0, 1]"),
    ("xtc_threshold", 1.5, "[0, 1]"),
    ("dynatemp_range", float("inf"), ">= 0"),
    ("dynatemp_exponent", -2.0, ">= 0"),
    ("mirostat_tau", [1.0, -3.0], ">= 0"),
    ("mirostat_eta", -0.25, ">= 0"),
])
def test_bad_host_values_name_field_expected_and_received(field, bad, expected):
    with pytest.raises(ValueError) as info:
        nx.SamplingParams(**{field: bad})
    msg = str(info.value)
    received = bad[-1] if isinstance(bad, list) else bad
    assert field in msg and expected in msg, msg
    assert str(received) in msg or repr(received) in msg, msg


def test_order_and_mu_errors_name_what_is_wrong():
    z = jnp.zeros((3, 5))
    with pytest.raises(ValueError, match=r"unknown step.*'top_a'"):
        nx.SamplingParams(order=("temperature", "top_a"))
    with pytest.raises(TypeError, match="order must be"):
        nx.SamplingParams(order=3)
    with pytest.raises(ValueError, match=r"\['epsilon', 'eta'\].*llama.cpp"):
        nx.probs(z, nx.SamplingParams(epsilon=0.1, eta=0.1, order="llama.cpp"))
    with pytest.raises(ValueError, match=r"\['top_k'\]"):
        nx.sample(jax.random.key(0), z, nx.SamplingParams(top_k=2, order=("temperature",)))
    with pytest.raises(ValueError, match=r"B=3.*\(2,\)"):
        nx.sample(jax.random.key(0), z, nx.SamplingParams(mirostat_tau=2.0), mu=jnp.ones(2))
