"""The wider catalogue and the peers' orders against an independent float64 reference.

Samplers: top-n-sigma, typical, epsilon, eta, XTC, dynamic temperature, mirostat v2
(SEMANTICS Part 2), in the default order and in llama.cpp's, vLLM's and HF's.
Distribution tests use a fixed seed and a chi-square test at false-alarm rate 1e-3.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catref import OFF, chain_row, mirostat_step
from chisq import check as chi2_check
from jaxmode import x64

import nucleax as nx
from nucleax import _sample, samplers

FIELDS = tuple(OFF)
INT_FIELDS = ("top_k",)


def _row(rng, vocab):
    kind = rng.integers(4)
    if kind == 0:
        z = rng.normal(0.0, 3.0, vocab)  # peaked
    elif kind == 1:
        z = rng.normal(0.0, 0.3, vocab)  # flat
    elif kind == 2:
        z = -1.1 * np.log(rng.permutation(vocab) + 1.0) + rng.normal(0.0, 0.2, vocab)  # Zipf
    else:
        z = np.round(rng.normal(0.0, 2.0, vocab) * 2) / 2  # many ties
    return z.astype(np.float32)


def _values(rng, allowed):
    """Random per-row values; each sampler on with some probability (XTC's coin: a = 1)."""
    v = {"temperature": float(rng.choice([0.5, 0.7, 1.0, 1.3]))}
    draws = {
        "top_k": lambda: {"top_k": int(rng.integers(1, 50))},
        "top_p": lambda: {"top_p": float(rng.uniform(0.3, 0.95))},
        "min_p": lambda: {"min_p": float(rng.uniform(0.01, 0.3))},
        "top_n_sigma": lambda: {"top_n_sigma": float(rng.uniform(0.0, 3.0))},
        "typical_p": lambda: {"typical_p": float(rng.uniform(0.2, 0.95))},
        "epsilon": lambda: {"epsilon": float(rng.uniform(1e-4, 0.05))},
        "eta": lambda: {"eta": float(rng.uniform(1e-4, 0.05))},
        "xtc": lambda: {"xtc_probability": 1.0, "xtc_threshold": float(rng.uniform(0.02, 0.4))},
        "dynatemp": lambda: {"dynatemp_range": float(rng.uniform(0.05, 0.5)),
                             "dynatemp_exponent": float(rng.uniform(0.5, 2.0))},
        "mirostat": lambda: {"mirostat_tau": float(rng.uniform(1.0, 6.0))},
    }
    for name in allowed:
        if rng.random() < (0.2 if name == "mirostat" else 0.4):
            v.update(draws[name]())
    return v


def _columns(rows):
    return {f: np.array([r.get(f, OFF[f]) for r in rows],
                        np.int32 if f in INT_FIELDS else np.float32) for f in FIELDS}


def _stable_cases(rng, vocab, batch, order, allowed, min_gap=1e-4):
    """`batch` rows whose reference result is away from every float32 boundary."""
    rows, values = [], []
    while len(rows) < batch:
        z, v = _row(rng, vocab), _values(rng, allowed)
        if chain_row(z, order, fire=True, **v)[2] > min_gap:
            rows.append(z)
            values.append(v)
    return np.stack(rows), values


ALL = ("top_k", "top_p", "min_p", "top_n_sigma", "typical_p", "epsilon", "eta", "xtc",
       "dynatemp", "mirostat")
PEER_SAMPLERS = {
    "nucleax": ALL,
    "llama.cpp": ("top_k", "top_p", "min_p", "top_n_sigma", "typical_p", "xtc", "dynatemp",
                  "mirostat"),
    "hf": ("top_k", "top_p", "min_p", "typical_p", "epsilon", "eta"),
    "vllm": ("top_k", "top_p", "min_p"),
}


@pytest.mark.parametrize("order, vocab", [
    ("nucleax", 2), ("nucleax", 300), ("nucleax", 150_000), ("llama.cpp", 5),
    ("llama.cpp", 2000), ("hf", 3), ("hf", 700), ("vllm", 300)])
def test_probs_and_masks_match_the_float64_reference(order, vocab):
    rng = np.random.default_rng(vocab + len(order))
    batch = 8
    z, values = _stable_cases(rng, vocab, batch, order, PEER_SAMPLERS[order])
    cols = _columns(values)
    params = nx.SamplingParams(**cols, order=order)
    key = jax.random.key(3)
    got = np.asarray(nx.probs(jnp.asarray(z), params, key=key))
    mask = np.asarray(nx.keep_mask(jnp.asarray(z), params, key=key))
    out = nx.sample(key, jnp.asarray(z), params, return_logprobs=True)
    for i in range(batch):
        alive, want, _ = chain_row(z[i], order, fire=True, **values[i])
        np.testing.assert_array_equal(mask[i], alive, err_msg=f"row {i}: {values[i]}")
        np.testing.assert_allclose(got[i], want, atol=1e-5, err_msg=f"row {i}: {values[i]}")
        token = int(out.tokens[i])
        assert alive[token], (i, token, values[i])
        np.testing.assert_allclose(float(out.logprobs[i]), np.log(want[token]), atol=1e-4)


def test_known_answers():
    """Hand-computed: q = (0.5, 0.3, 0.15, 0.05), H = 1.1422 nats."""
    z = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))

    def kept(**kw):
        return np.asarray(nx.keep_mask(z, nx.SamplingParams(**kw), key=jax.random.key(0)))

    # scores |-log q - H| = 0.449, 0.062, 0.755, 1.853: token 1, then 0 (mass 0.3 < 0.5)
    assert kept(typical_p=0.5).tolist() == [True, True, False, False]
    # std of log q = 0.8626: keep log q >= -0.693 - 0.863
    assert kept(top_n_sigma=1.0).tolist() == [True, True, False, False]
    assert kept(top_n_sigma=0.0).tolist() == [True, False, False, False]
    assert kept(epsilon=0.2).tolist() == [True, True, False, False]
    # eta 0.2: min(0.2, sqrt(0.2) exp(-1.1422) = 0.1427)
    assert kept(eta=0.2).tolist() == [True, True, True, False]
    # XTC fires (a = 1), c = 0.1: S = {0, 1, 2}; 0 and 1 are above S's least probable
    assert kept(xtc_probability=1.0, xtc_threshold=0.1).tolist() == [False, False, True, True]
    # fewer than two tokens reach c = 0.4: nothing removed
    assert kept(xtc_probability=1.0, xtc_threshold=0.4).tolist() == [True] * 4
    # mirostat tau 1.5: mu = 3 bits, keep q >= 1/8
    assert kept(mirostat_tau=1.5).tolist() == [True, True, True, False]
    # XTC without a key: the mixture over the coin
    p = nx.probs(z, nx.SamplingParams(xtc_probability=0.5, xtc_threshold=0.1))
    np.testing.assert_allclose(np.asarray(p), [0.25, 0.15, 0.45, 0.15], atol=1e-6)


def test_peer_orders_differ_on_a_pinned_case():
    """T = 0.5, top-p 0.7, min-p 0.2 on q = (0.4, 0.25, 0.15, 0.1, 0.06, 0.04)."""
    z = jnp.log(jnp.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]))

    def probs(order):
        p = nx.SamplingParams(temperature=0.5, top_p=0.7, min_p=0.2, order=order)
        return np.asarray(nx.probs(z, p))

    # HF = nucleax's default here: T, top-p {0, 1}, min-p keeps both
    np.testing.assert_allclose(probs("hf"), [0.719, 0.281, 0, 0, 0, 0], atol=1e-3)
    np.testing.assert_array_equal(probs("hf"), probs("nucleax"))
    # vLLM: T, min-p {0, 1}, then top-p on those: 0.719 above token 1 >= 0.7
    np.testing.assert_array_equal(probs("vllm"), [1, 0, 0, 0, 0, 0])
    # llama.cpp: top-p and min-p at T = 1 keep {0, 1, 2}, then T = 0.5
    np.testing.assert_allclose(probs("llama.cpp"), [0.653, 0.255, 0.092, 0, 0, 0], atol=1e-3)


def test_xtc_coin_and_exclusion_chi_square():
    """XTC a = 0.5: the coin and the exclusion together, against the float64 mixture."""
    rng = np.random.default_rng(7)
    z = _row(rng, 40)
    n = 6000
    params = nx.SamplingParams(temperature=1.0, xtc_probability=0.5, xtc_threshold=0.05)
    keys = jax.random.split(jax.random.key(11), n)
    tokens = np.asarray(nx.sample(keys, jnp.asarray(np.tile(z, (n, 1))), params))
    fired = chain_row(z, fire=True, xtc_probability=0.5, xtc_threshold=0.05)[1]
    kept = chain_row(z, fire=False, xtc_probability=0.5, xtc_threshold=0.05)[1]
    assert not np.allclose(fired, kept)  # the case exercises the exclusion
    chi2_check(np.bincount(tokens, minlength=z.size), 0.5 * fired + 0.5 * kept, "xtc")


def test_mirostat_several_steps_chi_square_and_mu_trajectory():
    """Several steps of mirostat v2 on many independent rows: each step's draws against the
    float64 reference at each row's own mu (pooled expected counts), and every row's mu
    trajectory equal to the reference's for the same draws."""
    rng = np.random.default_rng(5)
    z = _row(rng, 30)
    n, tau, eta = 4000, 2.5, 0.3
    params = nx.SamplingParams(temperature=0.9, mirostat_tau=tau, mirostat_eta=eta)
    logits = jnp.asarray(np.tile(z, (n, 1)))
    mu = samplers.mirostat_init(params, n)
    mu_ref = np.full(n, 2 * tau)
    for step in range(3):
        keys = jax.random.split(jax.random.fold_in(jax.random.key(2), step), n)
        out = nx.sample(keys, logits, params, mu=mu, return_logprobs=True)
        tokens = np.asarray(out.tokens)
        expected = np.zeros(z.size)
        for m in np.unique(mu_ref):
            rows = mu_ref == m
            _, q, _ = chain_row(z, temperature=0.9, mirostat_tau=tau, mu=m)
            expected += rows.sum() * q
            drawn = tokens[rows]
            assert np.all(q[drawn] > 0), f"step {step}: a token outside mirostat's set"
            mu_ref[rows] = mirostat_step(m, q[drawn], tau, eta)
        chi2_check(np.bincount(tokens, minlength=z.size), expected / n, f"mirostat step {step}")
        mu = samplers.mirostat_update(mu, out.logprobs, params)
        np.testing.assert_allclose(np.asarray(mu), mu_ref, rtol=1e-5, atol=1e-5)
    assert len(np.unique(np.round(mu_ref, 4))) > 3  # the trajectories did diverge


def test_dynamic_temperature_matches_llama_cpp_formula():
    z = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    h = -(np.exp(z) * z).sum()
    t = 0.8 + (1.2 - 0.8) * (h / np.log(4)) ** 1.5
    want = np.exp(z / t) / np.exp(z / t).sum()
    got = nx.probs(jnp.asarray(z, jnp.float32),
                   nx.SamplingParams(temperature=1.0, dynatemp_range=0.2, dynatemp_exponent=1.5))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


def test_greedy_rows_ignore_the_catalogue():
    """T = 0 is the argmax of the processed logits, even where XTC or typical would
    remove the most probable token."""
    z = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 2))
    p = nx.SamplingParams(temperature=jnp.array([0.0, 1.0]), xtc_probability=1.0,
                          xtc_threshold=0.1)
    tokens = nx.sample(jax.random.key(0), z, p)
    assert int(tokens[0]) == 0 and int(tokens[1]) in (2, 3)
    np.testing.assert_array_equal(np.asarray(nx.keep_mask(z, p, key=jax.random.key(0)))[0],
                                  [True, False, False, False])


def test_new_values_do_not_recompile():
    z = jnp.asarray(_row(np.random.default_rng(0), 64)[None].repeat(4, 0))
    key = jax.random.key(0)

    def params(a):
        return nx.SamplingParams(temperature=0.8, top_n_sigma=a, typical_p=0.5 + a / 10,
                                 epsilon=a / 100, eta=a / 100, xtc_probability=a / 3,
                                 xtc_threshold=0.1, dynatemp_range=a / 5,
                                 mirostat_tau=a + 1.0)

    nx.sample(key, z, params(1.0))
    before = _sample._sample._cache_size()
    for a in (0.5, 1.5, 2.0):
        nx.sample(key, z, params(a))
        nx.sample(key, z, params(a), mu=jnp.full((4,), a))
    assert _sample._sample._cache_size() == before


def test_bf16_and_x64_give_the_float32_answer():
    rng = np.random.default_rng(1)
    z32 = jnp.asarray(np.stack([_row(rng, 500) for _ in range(4)])).astype(jnp.bfloat16)
    p = nx.SamplingParams(temperature=0.8, top_n_sigma=1.5, typical_p=0.8, eta=0.01,
                          xtc_probability=1.0, xtc_threshold=0.05)
    key = jax.random.key(4)
    want = np.asarray(nx.probs(z32.astype(jnp.float32), p, key=key))
    np.testing.assert_array_equal(np.asarray(nx.probs(z32, p, key=key)), want)
    with x64():
        p64 = nx.SamplingParams(temperature=0.8, top_n_sigma=1.5, typical_p=0.8, eta=0.01,
                                xtc_probability=1.0, xtc_threshold=0.05)
        got = nx.probs(z32.astype(jnp.float32), p64, key=key)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


def test_traced_bad_values_never_give_nan_or_empty_rows():
    z = jnp.asarray(np.stack([_row(np.random.default_rng(i), 50) for i in range(6)]))
    bad = jnp.array([jnp.nan, -1.0, 0.0, 2.0, jnp.inf, -jnp.inf], jnp.float32)

    @jax.jit
    def run(b):
        p = nx.SamplingParams(temperature=1.0, top_n_sigma=b, typical_p=b, epsilon=b, eta=b,
                              xtc_probability=b, xtc_threshold=b, dynatemp_range=b,
                              dynatemp_exponent=b, mirostat_tau=b, mirostat_eta=b)
        return _sample.dense_output(z, p, None, None, "probs", "auto", 64,
                                    jax.random.key(0), b)

    out = np.asarray(run(bad))
    assert np.all(np.isfinite(out)) and np.all(out >= 0)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kw, field", [
    (dict(typical_p=0.0), "typical_p"), (dict(typical_p=1.5), "typical_p"),
    (dict(top_n_sigma=float("nan")), "top_n_sigma"), (dict(epsilon=1.0), "epsilon"),
    (dict(eta=-0.1), "eta"), (dict(xtc_probability=1.2), "xtc_probability"),
    (dict(xtc_threshold=-0.1), "xtc_threshold"), (dict(dynatemp_range=-1.0), "dynatemp_range"),
    (dict(mirostat_tau=-1.0), "mirostat_tau"), (dict(mirostat_eta=float("inf")), "mirostat_eta"),
])
def test_bad_host_values_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        nx.SamplingParams(**kw)


def test_order_errors_are_clear():
    z = jnp.zeros((2, 5))
    with pytest.raises(ValueError, match="typical_p.*vllm"):
        nx.probs(z, nx.SamplingParams(typical_p=0.5, order="vllm"))
    with pytest.raises(ValueError, match="order must be one of"):
        nx.SamplingParams(order="sglang")
    with pytest.raises(ValueError, match="temperature"):
        nx.SamplingParams(order=("top_k", "top_p"))
    with pytest.raises(ValueError, match="twice"):
        nx.SamplingParams(order=("temperature", "top_k", "top_k"))
    with pytest.raises(ValueError, match="mirostat is off"):
        nx.probs(z, nx.SamplingParams(), mu=1.0)
    with pytest.raises(ValueError, match=r"mu must be a scalar or a \[B\]"):
        nx.probs(z, nx.SamplingParams(mirostat_tau=3.0), mu=jnp.ones(3))


def test_a_custom_order_is_a_chain_of_named_steps():
    """top-p before temperature is llama.cpp's top-p; an order is any sequence of steps."""
    z = jnp.log(jnp.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]))
    mine = nx.SamplingParams(temperature=0.5, top_p=0.7, order=("top_p", "temperature"))
    llama = nx.SamplingParams(temperature=0.5, top_p=0.7, order="llama.cpp")
    np.testing.assert_allclose(np.asarray(nx.probs(z, mine)), np.asarray(nx.probs(z, llama)))
    assert mine.order == ("top_p", "temperature")
    assert "order='llama.cpp'" in repr(llama)


def test_sharded_sampling_refuses_the_catalogue():
    mesh = jax.make_mesh((2,), ("v",))
    with pytest.raises(NotImplementedError, match="typical_p"):
        nx.sample(jax.random.key(0), jnp.zeros((2, 8)), nx.SamplingParams(typical_p=0.5),
                  mesh=mesh, vocab_axis="v")


# ----------------------------------------------------------------------------
# In the decoding loop (a tiny model; float64 logits from tests/npmodel.py)

def test_loop_carries_mirostat_and_applies_the_catalogue():
    """Every token of `generate` is drawn from the reference distribution at that step: the
    model's logits (npmodel), then the chain with mirostat's mu advanced by the tokens before
    (and XTC with a = 1, typical, top-n-sigma). New values compile nothing."""
    from npmodel import forward

    from nucleax import decode
    from nucleax.models.llama import Llama, LlamaConfig, random_weights

    config = LlamaConfig(vocab_size=32, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         hidden_dim=48, head_dim=8, context_length=64)
    weights = random_weights(config, seed=3, scale=0.6)
    model = Llama(config, weights)
    prompts = [[3, 4, 5, 3], [10, 11], [7, 7, 7, 1, 2]]
    keys = jnp.stack([jax.random.key(s) for s in (1, 2, 3)])
    settings = [
        dict(temperature=[1.0, 0.9, 1.2], mirostat_tau=[3.0, 0.0, 2.0],
             mirostat_eta=[0.5, 0.1, 0.2], typical_p=[1.0, 0.8, 1.0],
             top_n_sigma=[-1.0, 2.0, 1.5], xtc_probability=[0.0, 1.0, 0.0],
             xtc_threshold=[0.1, 0.05, 0.1]),
        dict(temperature=[0.8, 1.1, 1.0], mirostat_tau=[2.0, 0.0, 4.0],
             mirostat_eta=[0.3, 0.1, 0.6], typical_p=[1.0, 0.6, 1.0],
             top_n_sigma=[1.0, -1.0, 2.5], xtc_probability=[0.0, 1.0, 0.0],
             xtc_threshold=[0.1, 0.1, 0.1]),
    ]
    before = None
    for s in settings:
        params = nx.SamplingParams(**{k: np.asarray(v, np.float32) for k, v in s.items()})
        out = decode.generate(model, prompts, params, key=keys, max_new_tokens=10,
                              return_logprobs=True)
        if before is None:
            before = decode._generate._cache_size()
        assert decode._generate._cache_size() == before
        for b, prompt in enumerate(prompts):
            row = {k: v[b] for k, v in s.items()}
            mu = 2 * row["mirostat_tau"]
            toks = np.asarray(out.tokens[b]).tolist()
            for i, t in enumerate(toks):
                z = forward(config, weights, prompt + toks[:i])[-1].astype(np.float32)
                alive, q, _ = chain_row(z, fire=True, mu=mu, **row)
                assert alive[t], (b, i, t)
                np.testing.assert_allclose(out.logprobs[b, i], np.log(q[t]), atol=2e-4)
                if row["mirostat_tau"] > 0:
                    mu = mirostat_step(mu, q[t], row["mirostat_tau"], row["mirostat_eta"])


def test_speculative_refuses_xtc_and_mirostat():
    from nucleax.speculative import verify

    z = jnp.zeros((1, 2, 4))
    with pytest.raises(NotImplementedError, match="mirostat"):
        verify(jax.random.key(0), jnp.array([[1]]), z, nx.SamplingParams(mirostat_tau=3.0),
               positions=jnp.array([0]))


def test_top_n_sigma_is_scale_free_at_any_magnitude():
    """std of (2, 1, 0, -1, -2) * s is s * sqrt(2): keep z >= max - std for every s, without
    the squares overflowing or underflowing; a row spanning almost all of float32 too."""
    base = np.array([2.0, 1.0, 0.0, -1.0, -2.0], np.float32)
    for s in (1e-30, 1e-20, 1e-4, 1.0, 1e4, 1e20, 1e30):
        p = nx.SamplingParams(temperature=s, top_n_sigma=1.0)
        np.testing.assert_array_equal(nx.keep_mask(jnp.asarray(base * s), p),
                                      [True, True, False, False, False], err_msg=str(s))
        np.testing.assert_allclose(nx.probs(jnp.asarray(base * s), p)[:2], [0.731, 0.269],
                                   atol=1e-3)
    wide = jnp.asarray([3e38, 2.9e38, -3e38], jnp.float32)
    np.testing.assert_array_equal(nx.keep_mask(wide, nx.SamplingParams(top_n_sigma=1.0)),
                                  [True, True, False])


def test_infinite_temperature_is_uniform_for_the_probability_rules():
    """T = +inf (traced) makes every token equally probable: epsilon, eta, mirostat and XTC,
    which compare probabilities, keep them all."""
    z = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))

    @jax.jit
    def run(t):
        return jnp.stack([nx.probs(z, nx.SamplingParams(temperature=t, **kw),
                                   key=jax.random.key(0))
                          for kw in (dict(epsilon=0.3), dict(eta=0.2), dict(mirostat_tau=0.5),
                                     dict(xtc_probability=1.0, xtc_threshold=0.1))])

    np.testing.assert_allclose(run(jnp.float32(jnp.inf)), np.full((4, 4), 0.25))


def test_host_mu_must_be_finite():
    with pytest.raises(ValueError, match="mu must be finite"):
        nx.sample(jax.random.key(0), jnp.zeros((2, 4)), nx.SamplingParams(mirostat_tau=3.0),
                  mu=jnp.array([1.0, jnp.nan]))


def test_generate_on_a_mesh_refuses_the_catalogue_before_placing_anything():
    from nucleax import decode
    from nucleax.models.llama import Llama, LlamaConfig, random_weights

    config = LlamaConfig(vocab_size=32, dim=32, n_layers=1, n_heads=4, n_kv_heads=2,
                         hidden_dim=48, head_dim=8, context_length=64)
    model = Llama(config, random_weights(config, seed=0, scale=0.5))
    mesh = jax.make_mesh((2,), ("b",))
    for fn in (decode.generate, decode.stream):
        with pytest.raises(NotImplementedError, match="mirostat"):
            out = fn(model, [[1, 2], [3]], nx.SamplingParams(mirostat_tau=3.0),
                     key=jax.random.key(0), max_new_tokens=2, mesh=mesh, batch_axis="b")
            if fn is decode.stream:  # a generator: it starts when iterated
                next(iter(out))
