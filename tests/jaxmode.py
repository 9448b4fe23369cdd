"""A context manager the tests share: `jax_enable_x64` on inside the block, restored after."""

import contextlib

import jax


@contextlib.contextmanager
def x64():
    """`jax_enable_x64` on inside the block, restored after (even on failure)."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)
