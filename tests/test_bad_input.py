"""Bad input: clear host-side errors, and finite in-jit fallbacks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nucleax as nx


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-0.5), r"temperature must be a finite number >= 0.*got -0\.5"),
    (dict(temperature=float("nan")), r"temperature must be .*got nan"),
    (dict(temperature=float("inf")), r"temperature must be .*got inf"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\].*got 0\.0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\].*got 1\.5"),
    (dict(min_p=-0.1), r"min_p must be in \[0, 1\].*got -0\.1"),
    (dict(min_p=1.01), r"min_p must be in \[0, 1\]"),
    (dict(top_k=-2), r"top_k must be an integer >= 0 \(0 or -1 means off\), got -2"),
    (dict(top_k=np.array([1, -3])), r"top_k must be .*got -3 \(at row 1\)"),
    (dict(temperature=np.ones((2, 2))), r"temperature must be a scalar or a \[B\] array"),
    (dict(temperature=np.ones(3), top_p=np.ones(2)), r"same length B"),
])
def test_invalid_params_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nx.SamplingParams(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(top_k=2.5), r"top_k must be an integer .*got 2\.5"),
    (dict(temperature="hot"), r"temperature must be a number"),
    (dict(top_p=True), r"top_p must be a number, got the bool True"),
])
def test_wrong_types_raise_type_error(kwargs, match):
    with pytest.raises(TypeError, match=match):
        nx.SamplingParams(**kwargs)


def test_off_values_are_accepted():
    p = nx.SamplingParams(temperature=0, top_k=-1, top_p=1, min_p=0)
    assert repr(p) == "SamplingParams(temperature=0.0, top_k=-1, top_p=1.0, min_p=0.0)"


def test_batch_length_mismatch_names_the_field():
    z = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match=r"SamplingParams.top_k has 2 values but the logits "
                                         r"have 3 rows"):
        nx.probs(z, nx.SamplingParams(top_k=np.array([1, 2])))


def test_logits_must_be_float_and_1d_or_2d():
    with pytest.raises(TypeError, match=r"logits must have a floating dtype.*got int32"):
        nx.probs(np.zeros((2, 5), np.int32))
    with pytest.raises(ValueError, match=r"logits must be \[V\] or \[B, V\], got shape "
                                         r"\(2, 3, 4\)"):
        nx.probs(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"vocabulary of at least 1"):
        nx.probs(np.zeros((2, 0), np.float32))


def test_bad_keys_method_and_params_type():
    z = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match=r"key must have shape \(\) or \[B\] with B=3.*got "
                                         r"shape \(2,\)"):
        nx.sample(jax.random.split(jax.random.key(0), 2), z)
    with pytest.raises(TypeError, match="key must be a jax PRNG key"):
        nx.sample(np.zeros(2, np.float32), z)
    with pytest.raises(ValueError, match=r"method must be one of .*got 'magic'"):
        nx.probs(z, method="magic")
    with pytest.raises(TypeError, match="params must be a nucleax.SamplingParams, got dict"):
        nx.probs(z, {"temperature": 1.0})
    with pytest.raises(ValueError, match=r"top_n must be an int >= 0, got -1"):
        nx.sample(jax.random.key(0), z, top_n=-1)


@pytest.mark.parametrize("method", ["fast", "bisect", "sort"])
def test_nan_and_empty_rows_are_defined_and_isolated(method):
    rng = np.random.default_rng(0)
    good = rng.normal(size=(2, 50)).astype(np.float32)
    with_nan = good[0].copy()
    with_nan[[3, 7]] = np.nan
    z = np.stack([good[0], np.full(50, np.nan), np.full(50, -np.inf), with_nan, good[1]])
    z = z.astype(np.float32)
    params = nx.SamplingParams(0.8, 10, 0.9, 0.01)
    out = nx.sample(jax.random.key(1), z, params, return_logprobs=True, top_n=3, method=method)
    for leaf in (out.logprobs, out.raw_logprobs, out.top_logprobs, out.top_raw_logprobs):
        assert not np.isnan(np.asarray(leaf)).any()
    assert out.valid.tolist() == [True, False, False, True, True]
    assert out.tokens[1] == 0 and out.tokens[2] == 0
    assert out.raw_logprobs[1] == -np.inf and out.logprobs[1] == 0.0
    probs = np.asarray(nx.probs(z, params, method=method))
    assert not np.isnan(probs).any()
    np.testing.assert_array_equal(probs[1], np.eye(50)[0])
    assert probs[3, 3] == 0 and probs[3, 7] == 0 and out.tokens[3] not in (3, 7)
    # the good rows are untouched by their neighbours
    alone = np.asarray(nx.probs(good, params, method=method))
    np.testing.assert_array_equal(probs[[0, 4]], alone)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(jnp.array([0, 4]))
    alone_tokens = nx.sample(keys, good, params, method=method)
    np.testing.assert_array_equal(np.asarray(out.tokens)[[0, 4]], alone_tokens)


def test_positive_infinity_row_is_uniform_over_infinite_tokens():
    z = np.array([[1.0, np.inf, 0.0, np.inf]], np.float32)
    np.testing.assert_allclose(nx.probs(z), [[0, 0.5, 0, 0.5]])


def test_traced_invalid_values_use_documented_fallbacks():
    """Values only known inside jit bypass validation; results stay finite and in range."""
    z = np.random.default_rng(4).normal(size=(7, 30)).astype(np.float32)
    leaves = [np.array([-1.0, np.nan, np.inf, 1.0, 1.0, 1.0, 1.0], np.float32),
              np.array([0, 0, 0, -7, 0, 0, 0], np.int32),
              np.array([1.0, 1.0, 1.0, 1.0, np.nan, -0.5, 1.0], np.float32),
              np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0], np.float32)]
    params = nx.SamplingParams()
    params = jax.tree.unflatten(jax.tree.structure(params), leaves + jax.tree.leaves(params)[4:])

    @jax.jit
    def run(key, z, params):
        return nx.probs(z, params), nx.sample(key, z, params)

    probs, tokens = run(jax.random.key(0), z, params)
    probs, tokens = np.asarray(probs), np.asarray(tokens)
    assert not np.isnan(probs).any() and ((tokens >= 0) & (tokens < 30)).all()
    argmax = z.argmax(-1)
    for row in (0, 1, 4, 5, 6):  # greedy-like: only the top token survives
        np.testing.assert_array_equal(probs[row], np.eye(30)[argmax[row]])
        assert tokens[row] == argmax[row]
    np.testing.assert_allclose(probs[2], np.full(30, 1 / 30), atol=1e-6)  # T=inf: uniform
    np.testing.assert_allclose(probs[3], jax.nn.softmax(z[3]), atol=1e-6)  # k=-7: off


def test_scalars_and_stack_round_trip():
    a, b = nx.SamplingParams(0.7, 50, 0.9), nx.SamplingParams(0.0, -1, 1.0, 0.1)
    knobs = {n: a.scalars()[n] for n in ("temperature", "top_k", "top_p", "min_p")}
    assert knobs == {"temperature": 0.7, "top_k": 50, "top_p": 0.9, "min_p": 0.0}
    stacked = nx.SamplingParams.stack([a, b])
    assert stacked.batch_size == 2 and stacked.top_k.dtype == np.int32
    np.testing.assert_array_equal(stacked.top_k, [50, -1])
    np.testing.assert_allclose(stacked.min_p, [0.0, 0.1])
    with pytest.raises(ValueError, match=r"SamplingParams.temperature must be a scalar here, "
                                         r"got shape \(2,\)"):
        stacked.scalars()
