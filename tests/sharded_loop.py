"""A minimal decoding loop (prefill, then one jitted step per token) for the mesh tests.

The same steps as `nucleax.decode` (keys folded with the position of the token
being drawn), with the sampler swappable: `nucleax.sample_impl` on one device,
`nucleax.sharding.sample_impl` on a mesh. Used by tests/test_sharded.py and by
the multi-process script tests/sharded_multiprocess.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nucleax import sharding
from nucleax.models.llama import Llama, LlamaConfig, random_weights

TINY = LlamaConfig(vocab_size=512, dim=64, n_layers=2, n_heads=8, n_kv_heads=4, hidden_dim=128,
                   head_dim=8, context_length=64)


def tiny_model(mesh=None, *, batch_axis="data", model_axis="model"):
    model = Llama(TINY, random_weights(TINY, seed=3))
    return model if mesh is None else model.shard(mesh, batch_axis=batch_axis,
                                                  model_axis=model_axis)


def prompts(batch: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (batch, length)).astype(np.int32)


def decode(model, tokens: np.ndarray, params, key, steps: int, layout=None):
    """`[B, steps]` tokens: prefill the prompts, then draw `steps` tokens one at a time.

    `layout` (from `nucleax.sharding.layout`) samples on the mesh, else on one device.
    Returns a jax Array (split over the batch axis on a mesh).
    """
    from nucleax._sample import sample_impl as one_device

    graphdef, state = nnx.split(model)
    batch, width = tokens.shape
    keys = jax.random.split(key, batch)

    def draw(logits, positions):
        step_keys = jax.vmap(jax.random.fold_in)(keys, positions)
        if layout is None:
            return one_device(step_keys, logits, params, None, None, False, 0, "auto", 64)
        return sharding.sample_impl(step_keys, logits, params, None, None, False, 0, "auto",
                                    64, layout=layout)

    @jax.jit
    def prefill(state, tokens):
        m = nnx.merge(graphdef, state)
        positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (batch, width))
        logits, cache = m(tokens, positions, m.init_cache(batch, width + steps))
        return draw(logits[:, -1], jnp.full((batch,), width, jnp.int32)), cache

    @jax.jit
    def step(state, token, position, cache):
        m = nnx.merge(graphdef, state)
        logits, cache = m(token[:, None], position[:, None], cache)
        return draw(logits[:, 0], position + 1), cache

    token, cache = prefill(state, jnp.asarray(tokens))
    out = [token]
    position = jnp.full((batch,), width, jnp.int32)
    for _ in range(steps - 1):
        token, cache = step(state, token, position, cache)
        position = position + 1
        out.append(token)
    return jnp.stack(out, axis=1)
