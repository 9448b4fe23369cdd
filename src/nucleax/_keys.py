"""Keys: one PRNG key per row, from one key or `[B]` keys (batch invariance)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def row_uniforms(key: Any, batch: int) -> jax.Array:
    """One uniform in [0, 1) per row from one key or `[B]` keys (see `row_keys`)."""
    keys = row_keys(key, batch, "the logits' rows")
    return jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)


def row_keys(key: Any, batch: int, rows: str) -> jax.Array:
    """`[B]` per-row keys from one key or `[B]` keys; `rows` names B in errors.

    One key: row i uses `fold_in(key, i)`, so a row's key does not depend on
    how many rows follow it. `[B]` keys: row i uses `key[i]` (batch invariant).
    Both new-style typed keys (`jax.random.key`) and raw uint32 keys
    (`jax.random.PRNGKey`) are accepted, and returned in the same form.
    """
    if not hasattr(key, "dtype"):
        raise TypeError(f"key must be a jax PRNG key (jax.random.key(seed)), got {type(key)!r}")
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    if typed:
        single, many = key.shape == (), key.shape == (batch,)
    elif key.dtype == jnp.uint32:
        single, many = key.shape == (2,), key.shape == (batch, 2)
    else:
        raise TypeError("key must be a jax PRNG key (jax.random.key(seed)) or a raw uint32 "
                        f"key (jax.random.PRNGKey(seed)), got dtype {key.dtype}")
    if single:
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch, dtype=jnp.int32))
    if many:
        return key
    want = "() or [B]" if typed else "[2] or [B, 2]"
    raise ValueError(f"key must have shape {want} with B={batch} ({rows}): one key, or [B] keys "
                     f"with B={batch}; got shape {tuple(key.shape)}")
