"""Sampling: distribution, keys and batch invariance, methods, jit, logprobs."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nucleax as nx

METHODS = ["fast", "bisect", "sort"]
Z_3719 = 3.719  # standard normal quantile for a one-sided 1e-4 false-alarm rate


def chi2_critical(df, z=Z_3719):
    """Wilson-Hilferty upper quantile of chi-square(df) (alpha = 1e-4 by default)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


MIXES = {
    "plain": nx.SamplingParams(),
    "temperature": nx.SamplingParams(temperature=0.6),
    "top_k": nx.SamplingParams(temperature=1.3, top_k=5),
    "top_p": nx.SamplingParams(temperature=0.9, top_p=0.8),
    "k_and_p": nx.SamplingParams(temperature=1.1, top_k=7, top_p=0.9),
    "min_p": nx.SamplingParams(temperature=1.0, min_p=0.1),
}


@pytest.mark.parametrize("mix", sorted(MIXES))
@pytest.mark.parametrize("method", ["fast", "sort"])
def test_frequencies_match_probs(mix, method):
    """Chi-square goodness of fit, 20000 draws, false-alarm rate 1e-4 per case.

    The seed is fixed, so the outcome is deterministic; the stated rate is the
    chance that a correct sampler would fail with a random seed.
    """
    n = 20000
    rng = np.random.default_rng(42)
    z = rng.normal(0, 1.5, 12).astype(np.float32)
    params = MIXES[mix]
    want = np.asarray(nx.probs(z, params), np.float64)
    keys = jax.random.split(jax.random.key(123), n)
    tokens = np.asarray(nx.sample(keys, np.broadcast_to(z, (n, 12)), params, method=method))
    counts = np.bincount(tokens, minlength=12)
    assert counts[want == 0].sum() == 0, "a masked token was sampled"
    support = want > 0
    expected = want[support] * n
    stat = float(np.sum((counts[support] - expected) ** 2 / expected))
    df = int(support.sum()) - 1
    if df == 0:
        assert counts[support].tolist() == [n]
    else:
        assert stat < chi2_critical(df), (stat, df, counts, expected)


def test_every_method_returns_the_same_token_for_the_same_key():
    rng = np.random.default_rng(9)
    batch, vocab = 32, 5000
    z = (-1.2 * np.log(rng.permuted(np.tile(np.arange(1, vocab + 1.0), (batch, 1)), axis=1))
         + rng.normal(0, 0.2, (batch, vocab))).astype(np.float32)
    params = nx.SamplingParams(rng.uniform(0.3, 1.5, batch), rng.choice([0, 5, 50, 4000], batch),
                               rng.choice([1.0, 0.9, 0.5, 0.99], batch),
                               rng.choice([0.0, 0.05], batch))
    for seed in range(4):
        key = jax.random.key(seed)
        toks = {m: np.asarray(nx.sample(key, z, params, method=m)) for m in METHODS}
        np.testing.assert_array_equal(toks["fast"], toks["sort"])
        np.testing.assert_array_equal(toks["bisect"], toks["sort"])
        np.testing.assert_array_equal(nx.sample(key, z, params, window=3), toks["sort"])


def _batch():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (6, 300)).astype(np.float32)
    params = nx.SamplingParams(np.array([0.0, 0.5, 1.0, 1.5, 0.8, 1.0]),
                               np.array([0, 10, 0, 40, 0, 3]),
                               np.array([1.0, 0.9, 0.7, 1.0, 0.95, 1.0]),
                               np.array([0.0, 0.0, 0.05, 0.0, 0.02, 0.0]))
    keys = jax.random.split(jax.random.key(7), 6)
    return z, params, keys


def _subset(params, idx):
    return params.take(idx)


def test_batch_invariance_with_per_row_keys():
    z, params, keys = _batch()
    full = np.asarray(nx.sample(keys, z, params))
    for idx in ([5, 0, 3], [2], [4, 4, 1, 0, 2, 3, 5]):
        idx = np.array(idx)
        sub_params = _subset(params, idx)
        sub = nx.sample(keys[idx], z[idx], sub_params)
        np.testing.assert_array_equal(sub, full[idx])


def test_single_key_is_fold_in_per_row():
    z, params, _ = _batch()
    key = jax.random.key(3)
    per_row = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(6))
    np.testing.assert_array_equal(nx.sample(key, z, params), nx.sample(per_row, z, params))
    # adding rows at the end leaves the first rows' tokens unchanged
    z2 = np.concatenate([z, z[:2]])
    p2 = params.take(np.r_[np.arange(6), 0, 1])
    np.testing.assert_array_equal(nx.sample(key, z2, p2)[:6], nx.sample(key, z, params))


def test_raw_uint32_keys_work():
    z, params, _ = _batch()
    raw = jax.random.PRNGKey(0)
    assert nx.sample(raw, z, params).shape == (6,)
    assert nx.sample(jax.random.split(raw, 6), z, params).shape == (6,)


@pytest.mark.parametrize("method", METHODS)
def test_same_tokens_with_and_without_jit(method):
    z, params, keys = _batch()
    jitted = np.asarray(jax.jit(lambda k, z, p: nx.sample(k, z, p, method=method))(keys, z, params))
    with jax.disable_jit():
        eager = np.asarray(nx.sample(keys, z, params, method=method))
    np.testing.assert_array_equal(eager, jitted)


def test_no_recompilation_when_values_change():
    z, _, keys = _batch()
    traced = chex.assert_max_traces(n=1)(
        lambda key, logits, params: nx.sample(key, logits, params, return_logprobs=True))
    f = jax.jit(traced)
    settings = [dict(temperature=0.7), dict(temperature=1, top_k=50), dict(top_p=0.3),
                dict(temperature=0, min_p=0.1), dict(temperature=2.0, top_k=-1, top_p=1.0),
                dict(top_k=3, top_p=0.5, min_p=0.5)]
    for s in settings:
        jax.block_until_ready(f(keys, z, nx.SamplingParams(**s)))
    per_row = [nx.SamplingParams(np.full(6, t, np.float32), np.full(6, k, np.int32))
               for t, k in [(0.1, 1), (0.9, 200)]]
    counted = chex.assert_max_traces(n=1)(lambda k, z, p: nx.probs(z, p) + 0 * k.shape[0])
    g = jax.jit(counted)
    for p in per_row:
        jax.block_until_ready(g(keys, z, p))
    assert f._cache_size() == 1 and g._cache_size() == 1


def test_logprobs_and_top_n():
    z, params, keys = _batch()
    out = nx.sample(keys, z, params, return_logprobs=True, top_n=4)
    chex.assert_shape([out.tokens, out.logprobs, out.raw_logprobs, out.valid], (6,))
    chex.assert_shape([out.top_ids, out.top_logprobs, out.top_raw_logprobs], (6, 4))
    chex.assert_type([out.tokens, out.top_ids], jnp.int32)
    p = np.asarray(nx.probs(z, params), np.float64)
    rows = np.arange(6)
    np.testing.assert_allclose(out.logprobs, np.log(p[rows, out.tokens]), atol=1e-5)
    raw = np.asarray(jax.nn.log_softmax(z))
    np.testing.assert_allclose(out.raw_logprobs, raw[rows, out.tokens], atol=1e-5)
    np.testing.assert_array_equal(out.top_ids, np.argsort(-z, axis=-1, kind="stable")[:, :4])
    with np.errstate(divide="ignore"):
        want_top = np.log(np.take_along_axis(p, np.asarray(out.top_ids), -1))
    np.testing.assert_allclose(out.top_logprobs, want_top, atol=1e-5)
    assert out.logprobs[0] == 0.0  # greedy row: a point mass
    np.testing.assert_array_equal(out.tokens, nx.sample(keys, z, params))


class OpsVariantsTest(chex.TestCase):
    """The ops under chex variants: with and without jit, and with device placement."""

    @chex.variants(with_jit=True, without_jit=True, with_device=True)
    def test_ops_shapes_and_values(self):
        z = jnp.asarray(np.random.default_rng(2).normal(size=(4, 64)), jnp.float32)
        t = jnp.array([0.5, 1.0, 0.0, 2.0])
        probs = self.variant(lambda z, t: nx.probs(z, nx.SamplingParams(t, 10, 0.9)))(z, t)
        chex.assert_shape(probs, (4, 64))
        chex.assert_type(probs, jnp.float32)
        chex.assert_trees_all_close(probs.sum(-1), jnp.ones(4), atol=1e-6)
        masked = self.variant(nx.mask_top_k)(z, jnp.array([1, 2, 3, 64]))
        chex.assert_trees_all_equal((masked > -jnp.inf).sum(-1), jnp.array([1, 2, 3, 64]))
        tokens = self.variant(lambda k, z, t: nx.sample(k, z, nx.SamplingParams(t)))(
            jax.random.key(0), z, t)
        chex.assert_shape(tokens, (4,))
        chex.assert_type(tokens, jnp.int32)
        self.assertEqual(int(tokens[2]), int(jnp.argmax(z[2])))
