"""`nucleax.sample / probs / keep_mask(..., mesh=, batch_axis=, vocab_axis=)` forward to the
sharded path and agree with one device (the sharded path itself: tests/test_sharded.py)."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import nucleax as nx


def test_public_entry_points_take_a_mesh():
    if jax.device_count() < 8:
        pytest.fail("needs the 8 CPU devices tests/conftest.py asks XLA for")
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    z = np.random.default_rng(0).normal(0, 2, (4, 1000)).astype(np.float32)
    zs = jax.device_put(z, NamedSharding(mesh, P("data", "model")))
    params = nx.SamplingParams(temperature=np.array([0.0, 0.7, 1.0, 1.3], np.float32),
                               top_p=0.9, repetition_penalty=1.2)
    keys = jax.random.split(jax.random.key(3), 4)
    axes = dict(mesh=mesh, batch_axis="data", vocab_axis="model")
    np.testing.assert_array_equal(nx.sample(keys, zs, params, **axes), nx.sample(keys, z, params))
    np.testing.assert_allclose(nx.probs(zs, params, **axes), nx.probs(z, params), atol=1e-6)
    np.testing.assert_array_equal(nx.keep_mask(zs, params, **axes), nx.keep_mask(z, params))


def test_generate_on_a_mesh_equals_one_device():
    """`generate(..., mesh=)` on the tiny Llama (2x4 mesh, processors on) and `stream` too."""
    import sharded_loop as sl

    from nucleax import decode

    if jax.device_count() < 8:
        pytest.fail("needs the 8 CPU devices tests/conftest.py asks XLA for")
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    model = sl.tiny_model()
    prompts = sl.prompts(4, 5, sl.TINY.vocab_size).tolist()
    params = nx.SamplingParams(temperature=np.array([0.0, 0.8, 1.0, 1.3], np.float32),
                               top_p=0.95, repetition_penalty=1.3, logit_bias={7: 3.0})
    keys = jax.random.split(jax.random.key(0), 4)
    kw = dict(key=keys, max_new_tokens=6, return_logprobs=True, return_stats=True)
    want = decode.generate(model, prompts, params, **kw)
    got = decode.generate(model, prompts, params, mesh=mesh, **kw)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.survivors, want.survivors)
    np.testing.assert_allclose(got.logprobs, want.logprobs, rtol=1e-5, atol=1e-5)
    streamed = [np.asarray(t) for t, _ in decode.stream(model, prompts, params, key=keys,
                                                        max_new_tokens=6, mesh=mesh)]
    np.testing.assert_array_equal(np.stack(streamed, axis=1), want.tokens)
