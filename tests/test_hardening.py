"""Issue 15: one regression test per example that broke, at its root.

x64 mode, traced T = +inf, integer fields beyond int32, tiny / subnormal top_p,
raw log-probabilities of huge logits, messages that show the value given.
(The decoding loop's arguments are in test_loop_args.py, the fuzzing suite in
test_fuzz.py.)
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import core, source_info_util
from jaxmode import x64
from npref import reference_row

import nucleax as nx

METHODS = ["auto", "bisect", "sort"]


def _ops(method):
    params = nx.SamplingParams(np.array([0.8, 1.0, 0.0, 1.3]), np.array([10, 0, 3, 2000]),
                               np.array([0.9, 1.0, 0.5, 0.3]), np.array([0.01, 0.2, 0.0, 0.0]))
    key = jax.random.key(3)
    return {
        "probs": lambda z: nx.probs(z, params, method=method),
        "keep_mask": lambda z: nx.keep_mask(z, params, method=method),
        "sample": lambda z: nx.sample(key, z, params, method=method),
        "sample_logprobs": lambda z: nx.sample(key, z, params, method=method,
                                               return_logprobs=True, top_n=3),
        "mask_top_k": lambda z: nx.mask_top_k(z, np.array([5, 0, 1, 70]), method=method),
        "mask_top_p": lambda z: nx.mask_top_p(z, 0.7, method=method),
        "mask_min_p": lambda z: nx.mask_min_p(z, 0.1, method=method),
        "scale_temperature": lambda z: nx.scale_temperature(z, np.array([0.5, 0.0, 2.0, 1.0])),
        "greedy": lambda z: nx.greedy(z),
    }


def _logits():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (4, 3001)).astype(np.float32)  # 3001: not a multiple of any block
    z[1, ::7] = -np.inf
    z[2, 5] = np.nan
    return z


EAGER = ("probs", "sample_logprobs", "mask_top_k", "scale_temperature", "greedy")


def _all_ops(method):
    ops = _ops(method)
    return lambda z: {name: f(z) for name, f in ops.items()}


def _assert_same(want, got, name):
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        assert a.dtype == b.dtype, name
        assert b.dtype in (jnp.float32, jnp.int32, jnp.bool_), (name, b.dtype)
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("method", METHODS)
def test_x64_mode_changes_nothing(method):
    """Under jax_enable_x64 every op runs (it used to raise "cond branches must have equal
    output types") and returns the same float32 / int32 results, bit for bit, in a user's jit
    and (for the default method) called directly."""
    z = _logits()
    want = jax.jit(_all_ops(method))(z)
    with x64():
        got = jax.jit(_all_ops(method))(z)
        ops = _ops(method)
        eager = {name: ops[name](z) for name in EAGER} if method == "auto" else {}
    for name in want:
        _assert_same(want[name], got[name], name)
    for name in eager:
        _assert_same(want[name], eager[name], name)


_KERNEL_FILES = ("_rows.py", "_truncation.py", "_draw.py", "_keys.py", "ops.py")


def _wide_values(jaxpr, found):
    """(primitive, dtype, source) of every 64-bit value the kernel's own code makes."""
    for eqn in jaxpr.eqns:
        where = source_info_util.summarize(eqn.source_info)
        for var in eqn.outvars:
            dtype = getattr(var.aval, "dtype", None)
            if (isinstance(dtype, np.dtype) and dtype.kind in "fiu" and dtype.itemsize == 8
                    and any(f"nucleax/{name}" in where for name in _KERNEL_FILES)):
                found.append((eqn.primitive.name, str(dtype), where))
        for sub in core.jaxprs_in_params(eqn.params):
            _wide_values(sub, found)
    return found


@pytest.mark.parametrize("method", METHODS)
def test_x64_mode_computes_in_32_bits(method):
    """No float64 / int64 intermediate in the kernel: float32 arithmetic inside, as promised."""
    z = _logits()
    with x64():
        for name, f in _ops(method).items():
            jaxpr = jax.make_jaxpr(f)(z)
            assert _wide_values(jaxpr.jaxpr, []) == [], name


def test_x64_mode_in_the_decoding_loop():
    from nucleax import decode
    from nucleax.models import Llama, LlamaConfig, random_weights

    config = LlamaConfig(vocab_size=64, dim=32, n_layers=1, n_heads=4, n_kv_heads=2,
                         hidden_dim=48, head_dim=8, context_length=32)
    model = Llama(config, random_weights(config, seed=5, scale=0.6))
    params = nx.SamplingParams(temperature=np.array([0.9, 0.0]), top_k=np.array([8, 0]),
                               top_p=np.array([0.9, 1.0]))

    def run():
        return decode.generate(model, [[3, 4, 5], [7]], params, key=jax.random.key(1),
                               max_new_tokens=4, return_logprobs=True)

    want = run()
    with x64():
        got = run()
    np.testing.assert_array_equal(got.tokens, want.tokens)
    assert got.tokens.dtype == jnp.int32 and got.logprobs.dtype == jnp.float32


# -- traced temperature = +inf: uniform over the top-k survivors, never NaN ----------------------

@jax.jit
def _run_traced(key, z, t, k, p, m):
    params = nx.SamplingParams(t, k, p, m)
    out = nx.sample(key, z, params, return_logprobs=True)
    return nx.probs(z, params), out, nx.scale_temperature(z, t), nx.keep_mask(z, params)


@pytest.mark.parametrize("method", METHODS)
def test_traced_infinite_temperature_is_uniform_over_survivors(method):
    """exp((-inf - zmax) / inf) used to be exp(NaN): NaN probabilities, a constant token."""
    vocab = 1001  # not a multiple of the block size: the padding is -inf too
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (3, vocab)).astype(np.float32)
    z[:, rng.choice(vocab, 300, replace=False)] = -np.inf
    z[1, 10] = 1e38  # a huge row: z - max would overflow for the most negative logits
    z[1, 11] = -3e38
    finite = np.isfinite(z)
    t = jnp.full((3,), jnp.inf)
    k = jnp.array([0, 0, 50])
    p = jnp.array([0.3, 1.0, 0.5])  # top-p keeps every token: they are all equally probable
    m = jnp.array([0.0, 0.9, 1.0])  # so does min-p
    probs, out, scaled, mask = _run_traced(jax.random.key(0), z, t, k, p, m)
    probs = np.asarray(probs)
    assert not np.isnan(probs).any()
    for row in (0, 1):
        np.testing.assert_allclose(probs[row], finite[row] / finite[row].sum(), rtol=1e-6)
    top50 = finite[2] & (z[2] >= np.sort(z[2])[-50])
    assert top50.sum() == 50
    np.testing.assert_allclose(probs[2], top50 / 50, rtol=1e-6)
    np.testing.assert_array_equal(mask, probs > 0)
    np.testing.assert_array_equal(scaled, np.where(finite, 0.0, -np.inf))
    # the draw: many keys give many different tokens, all alive, each with logprob -log(N)
    keys = jax.random.split(jax.random.key(1), 64)
    tokens = np.stack([np.asarray(_run_traced(key, z, t, k, p, m)[1].tokens) for key in keys])
    for row, alive in enumerate([finite[0], finite[1], top50]):
        assert alive[tokens[:, row]].all()
        assert len(set(tokens[:, row].tolist())) > 20
    np.testing.assert_allclose(out.logprobs, -np.log([finite[0].sum(), finite[1].sum(), 50]),
                               rtol=1e-6)
    assert not np.isnan(np.asarray(out.raw_logprobs)).any()


def test_huge_finite_temperature_matches_float64():
    """T = 1e38 is valid: (z - max) / T must not overflow for logits spanning 6e38."""
    z = np.array([[3e38, -3e38, 0.0, 1e38, -np.inf], [0.0, 1.28e37, 0.0, 0.0, -1e37]], np.float32)
    # above 2**126, 1 / T is subnormal: a division done as a product by 1 / T must not flush it
    for t in (float(np.finfo(np.float32).max), 2e38, 1e38, 3e37, 2e30):
        for method in METHODS:
            got = np.asarray(nx.probs(z, nx.SamplingParams(temperature=t), method=method))
            for row in range(2):
                _, want = reference_row(z[row], t)
                np.testing.assert_allclose(got[row], want, atol=1e-6, err_msg=f"T={t} {method}")


# -- integer fields: checked as given, never wrapped -------------------------------------------

def test_top_k_beyond_int32_is_off_not_wrapped():
    z = np.random.default_rng(2).normal(size=(2, 40)).astype(np.float32)
    off = np.asarray(nx.probs(z))
    for k in (2**32 + 3, 2**31, 2**40, np.int64(2**33), np.uint64(2**64 - 1), 2**70):
        params = nx.SamplingParams(top_k=k)
        assert params.top_k.dtype == np.int32 and int(params.top_k) == 2**31 - 1
        np.testing.assert_allclose(nx.probs(z, params), off, atol=1e-7, err_msg=str(k))
    per_row = nx.SamplingParams(top_k=np.array([3, 2**32 + 3]))
    assert (np.asarray(nx.keep_mask(z, per_row)).sum(-1) == [3, 40]).all()


@pytest.mark.parametrize("k", [-2**40, -2**31 - 1, -2**70, -2])
def test_negative_top_k_shows_the_value_given(k):
    with pytest.raises(ValueError, match=rf"top_k must be an integer >= 0 \(0 or -1 means off\), "
                                         rf"got {k}$"):
        nx.SamplingParams(top_k=k)
    with pytest.raises(ValueError, match=rf"got {k} \(at row 1\)"):
        nx.SamplingParams(top_k=[5, k])


def test_top_k_bool_is_rejected():
    with pytest.raises(TypeError, match=r"top_k must be a number, got the bool True"):
        nx.SamplingParams(top_k=True)
    with pytest.raises(TypeError, match=r"top_k must be a number, got the bool False"):
        nx.SamplingParams(top_k=np.bool_(False))


def test_traced_wide_top_k_is_clipped_not_wrapped():
    """Under x64 a traced int64 top_k of 2**32 + 3 used to wrap to 3 when cast to int32."""
    z = np.random.default_rng(3).normal(size=(1, 30)).astype(np.float32)
    with x64():
        got = jax.jit(lambda z, k: nx.keep_mask(z, nx.SamplingParams(top_k=k)))(
            z, jnp.asarray([2**32 + 3], jnp.int64))
    assert np.asarray(got).sum() == 30


# -- tiny top_p: the most probable token always survives ---------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", [1e-40, 1e-45, 1e-50, 1e-30, 1e-6])
def test_tiny_top_p_keeps_the_most_probable_token(method, p):
    """bisect with a subnormal p (flushed to zero on the CPU) used to empty the row."""
    z = np.random.default_rng(4).normal(0, 2, (3, 700)).astype(np.float32)
    z[1, [3, 9]] = 9.0  # a tie at the top: both survive
    params = nx.SamplingParams(temperature=0.7, top_p=p)
    probs = np.asarray(nx.probs(z, params, method=method))
    assert not np.isnan(probs).any()
    top = z == z.max(-1, keepdims=True)
    np.testing.assert_allclose(probs, top / top.sum(-1, keepdims=True), rtol=1e-6)
    out = nx.sample(jax.random.key(0), z, params, method=method, return_logprobs=True)
    assert top[np.arange(3), np.asarray(out.tokens)].all()
    np.testing.assert_allclose(out.logprobs, -np.log(top.sum(-1)), atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_traced_degenerate_top_p_keeps_the_most_probable_token(method):
    z = np.random.default_rng(5).normal(0, 2, (4, 500)).astype(np.float32)
    p = jnp.array([0.0, jnp.nan, -3.0, 1e-44])

    @jax.jit
    def run(z, p):
        params = nx.SamplingParams(top_p=p)
        return (nx.probs(z, params, method=method),
                nx.sample(jax.random.key(0), z, params, method=method, return_logprobs=True))

    probs, out = run(z, p)
    np.testing.assert_array_equal(probs, np.eye(500)[z.argmax(-1)])
    np.testing.assert_array_equal(out.tokens, z.argmax(-1))
    np.testing.assert_array_equal(out.logprobs, 0.0)


# -- raw log-probabilities keep precision for huge logits ------------------------------------

def _log_softmax64(z):
    z = np.asarray(z, np.float64)
    top = z.max(-1, keepdims=True)
    return (z - top) - np.log(np.exp(z - top).sum(-1, keepdims=True))


@pytest.mark.parametrize("scale", [1.0, 1e5, 1e6, 1e30])
def test_raw_logprobs_stay_exact_for_huge_logits(scale):
    """`z - (zmax + log sum)` in float32 was off by 1.4e-3 near 1e5 and by 0.03 near 1e6."""
    rng = np.random.default_rng(6)
    z = (scale + rng.normal(0, 3, (3, 200))).astype(np.float32)
    out = nx.sample(jax.random.key(0), z, return_logprobs=True, top_n=4)
    want = _log_softmax64(z)
    rows = np.arange(3)
    np.testing.assert_allclose(out.raw_logprobs, want[rows, np.asarray(out.tokens)], atol=1e-5)
    np.testing.assert_allclose(out.top_raw_logprobs,
                               np.take_along_axis(want, np.asarray(out.top_ids), -1), atol=1e-5)


def test_raw_logprobs_of_extreme_row():
    z = np.array([1e30, -1e30, 0.0, 1e30], np.float32)
    out = nx.sample(jax.random.key(0), z, return_logprobs=True, top_n=4)
    assert int(out.tokens) in (0, 3)
    np.testing.assert_allclose(out.raw_logprobs, -np.log(2), atol=1e-6)
    np.testing.assert_allclose(out.logprobs, -np.log(2), atol=1e-6)


# -- messages show the value the caller passed ---------------------------------------------

def test_float_fields_are_checked_as_given():
    # in (0, 1] as given: accepted, and it keeps only the most probable token
    params = nx.SamplingParams(top_p=1e-50)
    assert 0 < params.top_p <= 1e-44
    z = np.array([1.0, 3.0, 2.0], np.float32)
    np.testing.assert_array_equal(nx.probs(z, params), [0, 1, 0])
    # finite as given: accepted, stored as the largest float32 (uniform for any sane logits)
    params = nx.SamplingParams(temperature=1e39)
    assert params.temperature == np.finfo(np.float32).max
    np.testing.assert_allclose(nx.probs(z, params), np.full(3, 1 / 3), rtol=1e-6)
    # above 1 as given, even if float32 rounds it to 1: rejected, showing the value given
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\] \(1 means off\), got "
                                         r"1\.0000000001$"):
        nx.SamplingParams(top_p=1 + 1e-10)
    with pytest.raises(ValueError, match=r"min_p must be in \[0, 1\] \(0 means off\), got "
                                         r"-1e-50$"):
        nx.SamplingParams(min_p=-1e-50)
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0 .*got "
                                         r"-1e-300 \(at row 1\)"):
        nx.SamplingParams(temperature=[1.0, -1e-300])
    with pytest.raises(ValueError, match=r"min_p must be .*got -0\.1$"):
        nx.SamplingParams(min_p=np.float32(-0.1))  # not -0.10000000149011612


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, np.float16, np.float32])
def test_low_precision_scalars_are_accepted(dtype):
    params = nx.SamplingParams(temperature=dtype(0.5), top_p=dtype(0.75), min_p=dtype(0.125))
    assert params.temperature.dtype == np.float32
    assert (float(params.temperature), float(params.top_p), float(params.min_p)) == \
        (0.5, 0.75, 0.125)
    per_row = nx.SamplingParams(temperature=jnp.array([0.5, 2.0], dtype))
    assert per_row.temperature.tolist() == [0.5, 2.0]
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\].*got 1\.5"):
        nx.SamplingParams(top_p=dtype(1.5))


def test_a_number_in_place_of_params_names_the_fix():
    z = np.zeros((2, 5), np.float32)
    with pytest.raises(TypeError, match=r"params must be a nucleax\.SamplingParams, got float"):
        nx.sample(jax.random.key(0), z, 0.5)
    with pytest.raises(TypeError, match=r"params must be a nucleax\.SamplingParams, got float"):
        nx.probs(z, 0.5)


def test_numpy_int_window_and_bad_method():
    z = np.random.default_rng(7).normal(size=(2, 300)).astype(np.float32)
    params = nx.SamplingParams(top_p=0.9)
    np.testing.assert_array_equal(nx.probs(z, params, window=np.int64(8)),
                                  nx.probs(z, params, window=8))
    with pytest.raises(ValueError, match=r"window must be a positive int .*got True"):
        nx.probs(z, params, window=True)
    with pytest.raises(ValueError, match=r"method must be one of .*got \['sort'\]"):
        nx.probs(z, params, method=["sort"])


@pytest.mark.parametrize("t", [float(np.finfo(np.float32).max), 2e38])
def test_processed_logprobs_use_the_one_weight_function(t):
    """Processed log-probabilities are log(probs) for every token, also where XLA divides by a
    huge T as a product by 1 / T (subnormal, flushed): they must come from Prepared.log_weights."""
    z = np.array([[-4.0934765e37, 4.6911318e22, -np.inf], [0.0, 1.28e37, 1.0]], np.float32)
    params = nx.SamplingParams(temperature=t)
    out = nx.sample(jax.random.key(0), z, params, return_logprobs=True, top_n=3)
    with np.errstate(divide="ignore"):
        log_probs = np.log(np.asarray(nx.probs(z, params), np.float64))
    np.testing.assert_allclose(out.top_logprobs, np.take_along_axis(log_probs, out.top_ids, -1),
                               atol=1e-6)
    np.testing.assert_allclose(out.logprobs, log_probs[[0, 1], out.tokens], atol=1e-6)
