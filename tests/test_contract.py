"""The distribution contract: known answers, the float64 reference, invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from npref import margins, reference_row

import nucleax as nx

METHODS = ["fast", "bisect", "sort"]
SEED_LOGITS = np.array([5.0, 2.2, 2.0, 4.5, 3.0, 2.7], np.float32)
SEED_PROBS = [0.512106, 0.031141, 0.025496, 0.310608, 0.069306, 0.051343]


def test_seed_article_table_at_temperature_one():
    got = np.asarray(nx.probs(SEED_LOGITS, nx.SamplingParams(temperature=1.0)))
    np.testing.assert_allclose(got, SEED_PROBS, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_seed_article_with_masks(method):
    # T=0.5: the two leading tokens carry > 0.99 of the mass.
    params = nx.SamplingParams(temperature=np.array([0.5, 1.0, 2.0, 1.0]),
                               top_k=np.array([0, 3, 0, 0]),
                               top_p=np.array([1.0, 1.0, 0.8, 1.0]),
                               min_p=np.array([0.0, 0.0, 0.0, 0.2]))
    got = np.asarray(nx.probs(np.stack([SEED_LOGITS] * 4), params, method=method))
    for row, (t, k, p, m) in enumerate([(0.5, 0, 1, 0), (1, 3, 1, 0), (2, 0, 0.8, 0),
                                        (1, 0, 1, 0.2)]):
        _, want = reference_row(SEED_LOGITS, t, k, p, m)
        np.testing.assert_allclose(got[row], want, atol=1e-6)
    # top-k 3 keeps day, experience, problem
    assert (got[1] > 0).tolist() == [True, False, False, True, True, False]
    # min-p 0.2 keeps tokens with q >= 0.2 * 0.512: day, experience
    assert (got[3] > 0).tolist() == [True, False, False, True, False, False]


def _random_case(rng, vocab):
    """One row of logits and parameters, drawn away from float32 boundaries."""
    kind = rng.integers(4)
    if kind == 0:  # ties everywhere: logits on a coarse grid
        z = np.round(rng.normal(0, 2, vocab) * 2) / 2
    elif kind == 1:  # peaked, LLM-like
        z = -1.3 * np.log(rng.permutation(vocab) + 1.0) + rng.normal(0, 0.3, vocab)
    elif kind == 2:  # flat
        z = rng.normal(0, 0.05, vocab)
    else:
        z = rng.normal(0, 3, vocab)
    if vocab > 3 and rng.random() < 0.3:  # some banned tokens
        z[rng.choice(vocab, vocab // 3, replace=False)] = -np.inf
        z[rng.integers(vocab)] = 1.0
    z = z.astype(np.float32)
    t = float(rng.choice([0.0, 1e-4, rng.uniform(0.1, 2.0), rng.uniform(0.1, 2.0)]))
    k = int(rng.choice([0, -1, 1, vocab, vocab + 5, rng.integers(1, vocab + 1),
                        rng.integers(1, 80)]))
    for _ in range(100):
        p = float(rng.choice([1e-6, 1.0, rng.uniform(0.05, 1.0), 0.999]))
        m = float(rng.choice([0.0, 0.0, rng.uniform(0.0, 0.5), 1e-4]))
        p_margin, m_margin = margins(z, t, k, p, m)
        if p_margin > 2e-4 and m_margin > 2e-3:
            return z, (t, k, p, m)
    raise AssertionError("could not draw parameters away from a boundary")


def _cases(seed, vocab, batch):
    rng = np.random.default_rng(seed)
    rows = [_random_case(rng, vocab) for _ in range(batch)]
    z = np.stack([r[0] for r in rows])
    t, k, p, m = (np.array([r[1][i] for r in rows]) for i in range(4))
    return z, nx.SamplingParams(t, k.astype(np.int32), p, m), [r[1] for r in rows]


@pytest.mark.parametrize("vocab,batch,n_batches", [(2, 16, 3), (3, 16, 3), (7, 16, 4),
                                                   (50, 16, 4), (1000, 16, 3),
                                                   (50000, 8, 2)])
@pytest.mark.parametrize("method", METHODS)
def test_matches_float64_reference(vocab, batch, n_batches, method):
    for seed in range(n_batches):
        z, params, rows = _cases(1000 * vocab + seed, vocab, batch)
        got_mask = np.asarray(nx.keep_mask(z, params, method=method))
        got_probs = np.asarray(nx.probs(z, params, method=method))
        assert not np.isnan(got_probs).any()
        for i, (t, k, p, m) in enumerate(rows):
            want_mask, want_probs = reference_row(z[i], t, k, p, m)
            np.testing.assert_array_equal(got_mask[i], want_mask,
                                          err_msg=f"row {i}: T={t} k={k} p={p} m={m}")
            np.testing.assert_allclose(got_probs[i], want_probs, atol=1e-5, rtol=0,
                                       err_msg=f"row {i}: T={t} k={k} p={p} m={m}")


@pytest.mark.parametrize("method", ["fast", "bisect"])
def test_small_window_and_adversarial_rows_match_sort(method):
    """Rows built to defeat a candidate window: the fast path must fall back."""
    rng = np.random.default_rng(7)
    vocab = 40000
    flat = rng.normal(0, 0.01, vocab)
    ties = np.zeros(vocab)
    ties[:10] = 5.0  # ten winners, then 39990 ties straddling any window
    steps = np.repeat(np.arange(400, 0, -1), vocab // 400).astype(np.float64) / 50
    z = np.stack([flat, flat, ties, ties, steps, steps, flat, ties]).astype(np.float32)
    params = nx.SamplingParams(
        temperature=np.array([1.0, 1.0, 1.0, 0.5, 1.0, 0.9, 2.0, 1.0]),
        top_k=np.array([0, 30000, 12, 0, 150, 0, vocab - 1, 10]),
        top_p=np.array([0.999, 0.5, 1.0, 0.9999, 1.0, 0.97, 1.0, 0.9]),
        min_p=np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9, 0.0]))
    for window in (4, 64):
        want = np.asarray(nx.keep_mask(z, params, method="sort"))
        got = np.asarray(nx.keep_mask(z, params, method=method, window=window))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(nx.probs(z, params, method=method, window=window),
                                   nx.probs(z, params, method="sort"), atol=1e-7)
    assert want[2].sum() == vocab  # k=12 lands in the tie group: all of it survives
    assert want[7].sum() == 10 and want[0].sum() > 30000


@pytest.mark.parametrize("method", METHODS)
def test_permutation_equivariance(method):
    rng = np.random.default_rng(3)
    z = (np.round(rng.normal(0, 2, (4, 300)) * 2) / 2).astype(np.float32)  # many ties
    params = nx.SamplingParams(np.array([1.0, 0.7, 1.3, 0.5]), np.array([5, 0, 40, 17]),
                               np.array([1.0, 0.8, 0.95, 0.6]), np.array([0.0, 0.05, 0.0, 0.1]))
    perm = rng.permutation(300)
    base_mask = np.asarray(nx.keep_mask(z, params, method=method))
    perm_mask = np.asarray(nx.keep_mask(z[:, perm], params, method=method))
    np.testing.assert_array_equal(perm_mask, base_mask[:, perm])
    np.testing.assert_allclose(nx.probs(z[:, perm], params, method=method),
                               np.asarray(nx.probs(z, params, method=method))[:, perm], atol=1e-7)


def test_greedy_is_argmax_with_lowest_index_on_ties():
    z = np.array([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    params = nx.SamplingParams(temperature=0.0, top_k=3, top_p=0.5, min_p=0.5)
    np.testing.assert_array_equal(nx.probs(z, params), [[0, 1, 0, 0], [1, 0, 0, 0]])
    for seed in range(5):
        assert nx.sample(jax.random.key(seed), z, params).tolist() == [1, 0]
    assert nx.greedy(z).tolist() == [1, 0]


def test_top_k_one_without_ties_is_greedy():
    z = np.random.default_rng(0).normal(size=(6, 500)).astype(np.float32)
    params = nx.SamplingParams(temperature=1.5, top_k=1)
    for seed in range(3):
        np.testing.assert_array_equal(nx.sample(jax.random.key(seed), z, params), z.argmax(-1))


def test_top_k_keeps_ties_with_the_kth_value():
    z = np.array([4.0, 3.0, 3.0, 3.0, 1.0], np.float32)
    assert np.asarray(nx.keep_mask(z, nx.SamplingParams(top_k=2))).tolist() == \
        [True, True, True, True, False]


@pytest.mark.parametrize("k", [0, -1, 6, 11])
def test_top_k_off_values(k):
    np.testing.assert_allclose(nx.probs(SEED_LOGITS, nx.SamplingParams(top_k=k)), SEED_PROBS,
                               atol=1e-6)


def test_tiny_temperature_is_finite_and_peaked():
    z = np.array([[1.0, 1.0 + 1e-3, -3.0], [2.0, 2.0, 1.0]], np.float32)
    got = np.asarray(nx.probs(z, nx.SamplingParams(temperature=1e-30)))
    np.testing.assert_array_equal(got, [[0, 1, 0], [0.5, 0.5, 0]])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("method", METHODS)
def test_low_precision_logits_are_upcast_first(dtype, method):
    rng = np.random.default_rng(5)
    z = jnp.asarray(rng.normal(0, 3, (3, 2000)), dtype)
    params = nx.SamplingParams(0.8, 40, 0.9, 0.02)
    got = nx.probs(z, params, method=method)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, nx.probs(z.astype(jnp.float32), params, method=method))
    key = jax.random.key(1)
    np.testing.assert_array_equal(nx.sample(key, z, params, method=method),
                                  nx.sample(key, z.astype(jnp.float32), params, method=method))


def test_one_row_input_gives_one_row_output():
    params = nx.SamplingParams(0.7, 3, 0.9)
    assert nx.probs(SEED_LOGITS, params).shape == (6,)
    assert nx.sample(jax.random.key(0), SEED_LOGITS, params).shape == ()
    np.testing.assert_array_equal(nx.probs(SEED_LOGITS, params),
                                  nx.probs(SEED_LOGITS[None], params)[0])


def test_single_ops_compose_to_probs():
    rng = np.random.default_rng(11)
    z = (rng.normal(0, 2, (5, 700))).astype(np.float32)
    t = np.array([0.7, 1.0, 1.5, 0.3, 1.0])
    k = np.array([50, 0, 5, 300, 1])
    p = np.array([0.9, 0.5, 1.0, 0.95, 0.2])
    m = np.array([0.0, 0.1, 0.05, 0.0, 0.0])
    chained = nx.mask_min_p(nx.mask_top_p(nx.mask_top_k(nx.scale_temperature(z, t), k), p), m)
    np.testing.assert_allclose(jax.nn.softmax(chained), nx.probs(z, nx.SamplingParams(t, k, p, m)),
                               atol=1e-6)
    np.testing.assert_array_equal(chained > -jnp.inf,
                                  nx.keep_mask(z, nx.SamplingParams(t, k, p, m)))


def test_min_p_compares_probabilities_not_logits():
    # Negative logits: a peer bug compares m * max(logit) instead of m * max(q).
    z = np.array([-1.0, -1.5, -4.0], np.float32)
    got = np.asarray(nx.keep_mask(z, nx.SamplingParams(min_p=0.5)))
    # q ratios: 1, e^-0.5 = 0.61, e^-3 = 0.05
    assert got.tolist() == [True, True, False]


def test_top_p_uses_tempered_probabilities():
    # At T=1 the top token holds 0.51 < 0.6 so two tokens survive; at T=0.3 it holds > 0.6.
    assert int(nx.keep_mask(SEED_LOGITS, nx.SamplingParams(1.0, top_p=0.6)).sum()) == 2
    assert int(nx.keep_mask(SEED_LOGITS, nx.SamplingParams(0.3, top_p=0.6)).sum()) == 1


@pytest.mark.parametrize("vocab", [4096, 10007, 50000])
def test_window_top_k_equals_lax_top_k(vocab):
    """The sort-free window (block maxima, then top_k on a few blocks) is exact, ties too."""
    from nucleax._truncation import window_top_k

    rng = np.random.default_rng(vocab)
    z = np.round(rng.normal(0, 1, (3, vocab)) * 4).astype(np.float32)  # heavy ties
    z[1, rng.choice(vocab, vocab // 2, replace=False)] = -np.inf
    for width in (1, 64):
        vals, ids = window_top_k(jnp.asarray(z), width)
        np.testing.assert_array_equal(vals, jax.lax.top_k(z, width)[0])
        ids = np.asarray(ids)
        assert (ids < vocab).all() and all(len(set(row)) == width for row in ids)
        np.testing.assert_array_equal(np.take_along_axis(z, ids, axis=-1), vals)


@pytest.mark.parametrize("batch, vocab", [(5, 1000), (16, 1000), (16, 1024)])
def test_greedy_batch_is_the_first_maximum_of_the_cleaned_row(batch, vocab):
    """An all-greedy batch takes one pass over the raw rows when they need no cleaning
    (`_draw.greedy_tokens`: V a multiple of 64, no NaN, a max that is not 0 or subnormal), else
    the block maxima of the cleaned rows (`_draw.first_max`); a mixed batch the inverse CDF with
    u = 0. All, and `nucleax.greedy`, give the lowest index of the row max, with NaN as -inf,
    +inf winning, subnormals as 0, and token 0 for a row with nothing finite; ties straddle the
    blocks of 16 and 64 and the last, padded block."""
    rng = np.random.default_rng(batch)
    z = rng.normal(size=(batch, vocab)).astype(np.float32)
    z[0, [15, 16, 63, 64, 999]] = 9.0          # ties across block edges: 15 wins
    z[1, :] = np.nan
    z[1, 998] = -3.0                           # everything else NaN
    z[2, [7, 500]] = np.inf                    # +inf wins, first of them
    z[3, :] = -np.inf                          # nothing finite: token 0
    z[4, :] = 0.0
    z[4, 3] = 1e-40                            # subnormal counts as 0: token 0
    z[4, 9] = -0.0
    want = np.where(np.isnan(z), -np.inf, z)
    want = np.where(np.abs(want) < np.finfo(np.float32).tiny, 0.0, want)
    want = np.argmax(want, axis=1)
    want[3] = 0
    keys = jax.random.split(jax.random.key(0), batch)
    greedy = nx.SamplingParams(temperature=0.0)
    mixed = nx.SamplingParams(temperature=np.where(np.arange(batch) == batch - 1, 1.0, 0.0)
                              .astype(np.float32))
    np.testing.assert_array_equal(nx.sample(keys, z, greedy), want)
    np.testing.assert_array_equal(nx.sample(keys, z, mixed)[:-1], want[:-1])
    np.testing.assert_array_equal(nx.greedy(z), want)
    np.testing.assert_array_equal(np.argmax(nx.probs(z, greedy), axis=1), want)
    np.testing.assert_array_equal(np.asarray(nx.keep_mask(z, greedy)).sum(axis=1), 1)
    # rows that need no cleaning, as a batch of their own (the one-pass path when V % 64 == 0)
    negative = -np.abs(z[:1]) - 1.0            # a row whose max is negative
    negative[0, [64, 65, 700]] = -0.5
    zp = np.concatenate([z[[0, 2, 3] + list(range(5, batch))], negative])
    wp = np.argmax(zp, axis=1)
    wp[2] = 0                                  # the row of -inf
    np.testing.assert_array_equal(nx.sample(keys[:len(zp)], zp, greedy), wp)
    np.testing.assert_array_equal(nx.greedy(zp), wp)
