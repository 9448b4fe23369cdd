"""Portability: the jitted sampler lowers for GPU and TPU with `jax.export` on this CPU machine.

No CPU-only construct (host callbacks, CPU custom calls) may reach the
compiled sampler. Lowering for ("cuda", "tpu") needs no accelerator; it
checks that every operation of every parameter mix has a lowering there.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nucleax as nx
from nucleax import _sample
from nucleax.apps.bench import MIXED, MIXES, llm_like_logits, row_params

PLATFORMS = ("cuda", "tpu")


@pytest.mark.parametrize("mix", [*MIXES, MIXED])
def test_sample_exports_for_cuda_and_tpu(mix):
    batch = 16  # two groups of 8 rows on the CPU
    z = llm_like_logits(batch, 3000, jnp.float32)
    params = row_params(mix, batch)
    keys = jax.random.split(jax.random.PRNGKey(0), batch)

    def fn(keys, z, params):
        return _sample.sample_impl(keys, z, params, None, None, False, 0, "auto", 64)

    exp = jax.export.export(jax.jit(fn), platforms=PLATFORMS)(keys, z, params)
    assert tuple(exp.platforms) == PLATFORMS
    assert exp.out_avals[0].shape == (batch,) and exp.out_avals[0].dtype == jnp.int32
    text = exp.mlir_module()
    assert "callback" not in text  # no host round trip
    if mix == MIXED:  # the exported function is the public entry point's
        want = np.asarray(nx.sample(keys, z, params))
        np.testing.assert_array_equal(np.asarray(jax.jit(fn)(keys, z, params)), want)


def test_sample_with_logprobs_exports():
    z = llm_like_logits(8, 3000, jnp.bfloat16)
    params = row_params(MIXED, 8)
    keys = jax.random.split(jax.random.PRNGKey(1), 8)

    def fn(keys, z, params):
        return _sample.sample_impl(keys, z, params, None, None, True, 5, "auto", 64)

    exp = jax.export.export(jax.jit(fn), platforms=PLATFORMS)(keys, z, params)
    assert tuple(exp.platforms) == PLATFORMS
    assert [a.shape for a in exp.out_avals][:4] == [(8,)] * 4
