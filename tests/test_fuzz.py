"""Fuzzing the sampling contract with adversarial logits and parameters (hypothesis).

Every example is a batch of 4 rows, each from an adversarial family (ties,
flat, huge and tiny magnitudes, subnormals, NaN / +-inf sprinkled, rows with
no finite logit), with its own parameters: valid extremes, and (in the traced
tests) invalid values that only a traced run can carry, which must follow the
documented fallbacks. Every method runs on the same example.

Properties (against `npref.reference_full`, an independent float64 reference):
  - no NaN anywhere (none is documented); tokens in range; rows sum to 1;
  - the most probable token is alive; greedy and empty rows are one-hot;
  - the mask and `probs` (within 1e-5) equal the reference, and the token
    equals the reference's float64 inverse CDF, except where float32 rounding
    may legitimately decide (a top-p / min-p boundary, or a uniform within
    rounding of a cumulative edge): those rows are counted and excluded;
  - every method gives the same token (same exclusions);
  - processed log-probabilities within 1e-5 of float64, raw ones too;
  - rows are independent: permuting the batch and replacing other rows
    changes nothing for a row;
  - bf16 / f16 logits give exactly the results of their float32 values;
  - x64 mode changes nothing, bit for bit.

Profiles: the CI profile (default) runs a few hundred examples, derandomized,
on a few fixed vocabulary sizes (compilations are the cost); the long profile
(`NUCLEAX_FUZZ=long python -m pytest tests/test_fuzz.py -s`) runs thousands of
random examples on more sizes, up to V = 200k, and prints its counts.
"""

import collections
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from jaxmode import x64
from npref import (
    cdf_interval,
    clean_row,
    effective_params,
    inverse_cdf,
    log_softmax64,
    near_boundary,
    reference_full,
    reference_logprobs,
)

import nucleax as nx

LONG = os.environ.get("NUCLEAX_FUZZ", "ci") == "long"
settings.register_profile("nucleax-fuzz-ci", deadline=None, derandomize=True, database=None,
                          print_blob=True, suppress_health_check=list(HealthCheck))
settings.register_profile("nucleax-fuzz-long", deadline=None, database=None, print_blob=True,
                          suppress_health_check=list(HealthCheck))
PROFILE = settings.get_profile("nucleax-fuzz-long" if LONG else "nucleax-fuzz-ci")


def fuzz(ci: int, long: int):
    """Hypothesis settings: `ci` examples by default, `long` with NUCLEAX_FUZZ=long
    (NUCLEAX_FUZZ_EXAMPLES=n overrides both, for a quick try)."""
    n = int(os.environ.get("NUCLEAX_FUZZ_EXAMPLES", 0)) or (long if LONG else ci)
    return settings(PROFILE, max_examples=n)


METHODS = ("auto", "bisect", "sort")
B = 4
# Vocabulary sizes: few and fixed, since every (size, method, dtype, x64) compiles anew.
# 5003 > 4 * 64 * 16 takes the block-maxima window path; 200003 is rare (long profile only).
VOCABS = (1, 3, 61, 5003) if not LONG else (1, 2, 3, 16, 61, 1000, 5003, 65536, 200003)
STATS = collections.Counter()
# How far the float32 draw's uniform may sit from a float64 cdf edge and still go either way
# (float32 cumulative sums over sqrt(V)-sized blocks and weights exp((z - max) / T)).
DRAW_TOL = 2e-5


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if STATS:
        print("\nfuzz counts: " + ", ".join(f"{k}={v}" for k, v in sorted(STATS.items())))


# -- strategies --------------------------------------------------------------------------------

FAMILIES = ("normal", "ties", "flat", "peaked", "huge", "tiny", "wide", "bf16grid")
F32_MAX = float(np.finfo(np.float32).max)


def make_row(rng, family, vocab):
    """One adversarial row of float32 logits."""
    if family == "normal":
        z = rng.normal(0, rng.choice([0.01, 1.0, 5.0, 50.0]), vocab)
    elif family == "ties":
        z = np.round(rng.normal(0, 2, vocab) * rng.choice([1, 2, 4])) / 2
    elif family == "flat":
        z = np.full(vocab, rng.choice([0.0, -3.0, 7.5, 1e30, -1e30, 1e-40, F32_MAX]))
    elif family == "peaked":
        z = -1.3 * np.log(rng.permutation(vocab) + 1.0) + rng.normal(0, 0.3, vocab)
    elif family == "huge":
        z = rng.choice([-1.0, 1.0], vocab) * 10.0 ** rng.uniform(20, 38.53, vocab)
    elif family == "tiny":
        z = rng.normal(0, 1, vocab) * rng.choice([1e-38, 1e-42, 1e-45])
    elif family == "wide":
        z = rng.choice([1e5, 1e6, -1e6, 3e7]) + rng.normal(0, 3, vocab)
    else:  # values on the bfloat16 grid: many ties
        z = np.asarray(jnp.asarray(rng.normal(0, 3, vocab), jnp.bfloat16), np.float64)
    z = np.clip(z, -F32_MAX, F32_MAX).astype(np.float32)
    if rng.random() < 0.15:
        z[rng.random(vocab) < 0.5] = -0.0
    if rng.random() < 0.3:
        z[rng.random(vocab) < rng.uniform(0, 1)] = -np.inf
    if rng.random() < 0.15:
        z[rng.random(vocab) < rng.uniform(0, 0.3)] = np.nan
    if rng.random() < 0.06:
        z[rng.integers(vocab, size=rng.integers(1, 3))] = np.inf
    if rng.random() < 0.04:
        z[:] = rng.choice([-np.inf, np.nan])
    return z


T_VALID = (0.0, -0.0, 1e-45, 1e-30, 1e-3, 0.7, 1.0, 2.5, 1e30, F32_MAX)
T_TRACED = (np.inf, np.nan, -1.0, -np.inf)
P_VALID = (1.0, 0.9, 0.5, 1e-6, 1e-40, float(np.nextafter(np.float32(1), np.float32(0))))
P_TRACED = (0.0, -0.5, np.nan, 1.5, np.inf)
M_VALID = (0.0, 0.0, 1e-4, 0.1, 0.999, 1.0)
M_TRACED = (np.nan, -1.0, 2.0, np.inf, -np.inf)


@st.composite
def row_params(draw, vocab, traced):
    """(T, k, p, m) for one row; `traced` allows values only a traced run can carry."""
    bad = traced and draw(st.integers(0, 4)) == 0
    t = draw(st.sampled_from(T_VALID + (T_TRACED if bad else ())) | st.floats(0.05, 3.0))
    k_choices = [0, -1, 1, 2, vocab - 1, vocab, vocab + 5, 2**31 - 1]
    k = draw(st.sampled_from(k_choices + ([-7, -2**31] if bad else []))
             | st.integers(1, max(1, min(vocab, 80))))
    p = draw(st.sampled_from(P_VALID + (P_TRACED if bad else ())) | st.floats(0.01, 1.0))
    m = draw(st.sampled_from(M_VALID + (M_TRACED if bad else ())) | st.floats(0.0, 0.5))
    return float(np.float32(t)), int(k), float(np.float32(p)), float(np.float32(m))


@st.composite
def batches(draw, vocabs=VOCABS, traced=True):
    """(z [B, V] float32, params [(T, k, p, m)] * B, seed)."""
    if LONG and len(vocabs) > 3:  # big vocabularies stay rare
        weights = [8] * (len(vocabs) - 2) + [2, 1]
        vocab = draw(st.sampled_from(sum(([v] * w for v, w in zip(vocabs, weights,
                                                                  strict=True)), [])))
    else:
        vocab = draw(st.sampled_from(vocabs))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rows = [make_row(rng, draw(st.sampled_from(FAMILIES)), vocab) for _ in range(B)]
    params = [draw(row_params(vocab, traced)) for _ in range(B)]
    note(f"V={vocab} seed={seed} params={params}")
    return np.stack(rows), params, seed


# -- the functions under test ------------------------------------------------------------------

def _as_arrays(params):
    t, k, p, m = zip(*params, strict=True)
    return (np.array(t, np.float32), np.array(k, np.int32), np.array(p, np.float32),
            np.array(m, np.float32))


def _outputs(keys, z, t, k, p, m, method):
    params = nx.SamplingParams(t, k, p, m)
    out = nx.sample(keys, z, params, method=method, return_logprobs=True, top_n=3)
    return nx.probs(z, params, method=method), nx.keep_mask(z, params, method=method), out


_traced = jax.jit(_outputs, static_argnames="method")  # every value traced: the fallbacks


def _host(keys, z, params, method):
    """The public API called directly with validated host values (no outer jit)."""
    sp = nx.SamplingParams(*_as_arrays(params))
    out = nx.sample(keys, z, sp, method=method, return_logprobs=True, top_n=3)
    return nx.probs(z, sp, method=method), nx.keep_mask(z, sp, method=method), out


def _keys(seed):
    return jax.random.split(jax.random.key(seed % 2**31), B)


def _uniforms(keys):
    """The draw's uniform per row, computed here with jax.random (not the library)."""
    return np.array([float(jax.random.uniform(k, (), jnp.float32)) for k in keys])


# -- the checks ----------------------------------------------------------------------------------

def _np(out):
    return jax.tree.map(np.asarray, out)


def check_contract(z, params, outputs, uniforms, method):
    """Checks one method's outputs against the float64 reference.

    Returns `[B]` bools: True where the row is decided exactly in float32 (no boundary
    within rounding, and the draw not within rounding of a cumulative edge), so that its
    token equals the float64 inverse CDF's and every method's."""
    probs, mask, out = _np(outputs)
    vocab = z.shape[-1]
    for leaf in (probs, out.logprobs, out.raw_logprobs, out.top_logprobs, out.top_raw_logprobs):
        assert not np.isnan(leaf).any(), "NaN in an output"
    tokens = out.tokens
    assert tokens.dtype == np.int32 and ((tokens >= 0) & (tokens < vocab)).all()
    assert probs.dtype == np.float32 and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    decided = np.zeros(len(params), bool)
    for i, (t, k, p, m) in enumerate(params):
        row = z[i].astype(np.float32)
        want_mask, want = reference_full(row, t, k, p, m)
        greedy = effective_params(t, k, p, m, vocab)[0]
        clean = clean_row(row)
        valid = bool(np.any(clean > -np.inf))
        assert bool(out.valid[i]) == valid
        top = int(np.argmax(clean))  # the first maximum (0 for a row with no finite logit)
        assert mask[i, top] and probs[i, top] > 0, "the most probable token must survive"
        assert mask[i, tokens[i]] and probs[i, tokens[i]] > 0, "the token must be alive"
        assert not (probs[i] > 0)[~mask[i]].any(), "mass outside the mask"
        if greedy or not valid:
            np.testing.assert_array_equal(np.flatnonzero(probs[i]), [top])
            assert probs[i, top] == 1.0
            assert tokens[i] == top and out.logprobs[i] == 0.0
        raw = log_softmax64(row)
        np.testing.assert_allclose(out.raw_logprobs[i], raw[tokens[i]], atol=1e-5, rtol=1e-6)
        ids = out.top_ids[i]
        order = np.lexsort((np.arange(vocab), -clean))  # by value, then lowest id
        np.testing.assert_array_equal(ids, order[: ids.size])
        np.testing.assert_allclose(out.top_raw_logprobs[i], raw[ids], atol=1e-5, rtol=1e-6)
        boundary = near_boundary(row, t, k, p, m)
        STATS["rows"] += 1
        if boundary:
            STATS[f"rows at a {boundary} boundary (excluded from exact checks)"] += 1
        if boundary:
            continue
        np.testing.assert_array_equal(mask[i], want_mask, err_msg=f"row {i} mask")
        np.testing.assert_allclose(probs[i], want, atol=1e-5, rtol=0, err_msg=f"row {i} probs")
        log_want = reference_logprobs(row, t, k, p, m)
        log_want[log_want < -F32_MAX] = -np.inf  # float32 rounds them to -inf
        np.testing.assert_allclose(out.logprobs[i], log_want[tokens[i]], atol=1e-5, rtol=1e-6)
        np.testing.assert_allclose(out.top_logprobs[i], log_want[ids], atol=1e-5, rtol=1e-6)
        token, margin = inverse_cdf(want, uniforms[i])
        lo, hi = cdf_interval(want, tokens[i])
        assert lo - DRAW_TOL <= uniforms[i] <= hi + DRAW_TOL, (
            f"row {i}: drew {tokens[i]} (cdf [{lo}, {hi}]), u={uniforms[i]}, float64 {token}")
        if margin <= DRAW_TOL:
            STATS["draws within rounding of a cdf edge (token checked up to rounding)"] += 1
            STATS["... of which a neighbour was drawn"] += int(tokens[i] != token)
            continue
        assert tokens[i] == token, f"row {i}: drew {tokens[i]}, float64 inverse CDF {token}"
        decided[i] = True
    return decided


# -- the tests -----------------------------------------------------------------------------------

@fuzz(ci=90, long=2500)
@given(batches())
def test_fuzz_traced_values_every_method(example):
    """Values traced inside jit (valid extremes and invalid fallbacks), every method."""
    z, params, seed = example
    keys = _keys(seed)
    u = _uniforms(keys)
    arrays = _as_arrays(params)
    results, decided = {}, np.ones(B, bool)
    for method in METHODS:
        results[method] = _np(_traced(keys, z, *arrays, method=method))
        decided &= check_contract(z, params, results[method], u, method)
    for i in np.flatnonzero(decided):
        drawn = {int(results[m][2].tokens[i]) for m in METHODS}
        assert len(drawn) == 1, f"row {i}: methods drew {drawn}"
    STATS["traced examples"] += 1
    STATS[f"traced examples with V={z.shape[-1]}"] += 1
    STATS["rows with the same token in every method, checked"] += int(decided.sum())

    # Rows are independent: reverse the batch and replace its last row (the old first).
    perm = np.arange(B)[::-1]
    z2, keys2 = z[perm].copy(), keys[perm]
    params2 = [params[j] for j in perm]
    z2[-1] = np.where(np.isnan(z2[-1]), 1.0, -z2[-1])
    params2[-1] = (float("inf"), 3, float("nan"), 0.5)
    probs, mask, out = _np(_traced(keys2, z2, *_as_arrays(params2), method="auto"))
    probs1, mask1, out1 = results["auto"]
    for new, old in enumerate(perm[:-1]):
        np.testing.assert_array_equal(probs[new], probs1[old])
        np.testing.assert_array_equal(mask[new], mask1[old])
        if decided[old]:
            assert out.tokens[new] == out1.tokens[old]
            np.testing.assert_allclose(out.logprobs[new], out1.logprobs[old], atol=1e-6)


@fuzz(ci=25, long=400)
@given(batches(vocabs=(61,) if not LONG else (3, 61, 5003), traced=False),
       st.sampled_from(("auto",) if not LONG else METHODS))
def test_fuzz_host_values_without_jit(example, method):
    """Validated host values through the public API, no outer jit."""
    z, params, seed = example
    keys = _keys(seed)
    check_contract(z, params, _host(keys, z, params, method), _uniforms(keys), method)
    STATS["host examples"] += 1


LOW = ((jnp.bfloat16, "auto"), (jnp.float16, "bisect"), (jnp.bfloat16, "sort"))


@fuzz(ci=20, long=300)
@given(batches(vocabs=(61,) if not LONG else (61, 5003)),
       st.sampled_from(LOW if not LONG else [(d, m) for d in (jnp.bfloat16, jnp.float16)
                                             for m in METHODS]))
def test_fuzz_low_precision_logits(example, dtype_method):
    """bf16 / f16 logits sample exactly as their float32 values do."""
    dtype, method = dtype_method
    z, params, seed = example
    with np.errstate(over="ignore"):
        low = jnp.asarray(z, dtype)
    up = np.asarray(low.astype(jnp.float32))
    keys = _keys(seed)
    arrays = _as_arrays(params)
    got = _np(_traced(keys, low, *arrays, method=method))
    want = _np(_traced(keys, jnp.asarray(up), *arrays, method=method))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    check_contract(up, params, got, _uniforms(keys), method)
    STATS[f"{jnp.dtype(dtype).name} examples"] += 1


@fuzz(ci=12, long=200)
@given(batches(vocabs=(61,) if not LONG else (3, 61, 5003)), st.sampled_from(METHODS))
def test_fuzz_x64_changes_nothing(example, method):
    """jax_enable_x64 on: the same bits out (float32 arithmetic inside)."""
    z, params, seed = example
    keys = _keys(seed)
    arrays = _as_arrays(params)
    want = _np(_traced(keys, z, *arrays, method=method))
    with x64():
        got = _np(_traced(keys, z, *arrays, method=method))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    STATS["x64 examples"] += 1
