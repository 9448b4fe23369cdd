"""Speculative verification: exact in distribution, greedy by argmax, keys per (row, position).

A toy "model" on a 12-token vocabulary: the target's logits after token t are
`L[t]` (which favour repeating t, so the repetition penalty on the drafts
matters), a draft model's distribution after t is `Q[t]`. Statistical tests use
a fixed seed and a chi-square test at false-alarm rate 1e-3 each (cells with
expected count < 5 pooled; a token of probability 0 must never appear).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from chisq import check as chi2_check

import nucleax as nx
from nucleax.speculative import VerifyOutput, verify

V = 12
RNG = np.random.default_rng(1234)
L = (RNG.normal(size=(V, V)) * 1.5 + 3.0 * np.eye(V)).astype(np.float32)  # logits after t
_SOFT = np.exp(L - L.max(-1, keepdims=True))
# draft distribution after token t: close enough to the target to accept often
Q = 0.7 * _SOFT / _SOFT.sum(-1, keepdims=True) + 0.3 * RNG.dirichlet(np.full(V, 0.7), size=V)
PROMPT = [3, 5, 3, 7]
BATCH = 21000  # one batch size for the statistical tests: fewer compilations
PARAMS = dict(top_k=9, top_p=0.92, min_p=0.03, repetition_penalty=1.4)


def _params(batch, temperature, **changes):
    """Per-row temperatures and the same fields every time (one compilation per shape)."""
    temp = np.broadcast_to(np.asarray(temperature, np.float32), (batch,)).copy()
    return nx.SamplingParams(temperature=temp, **{**PARAMS, **changes})


def _state(params, batch):
    chain = params.processors()
    prompts = jnp.asarray(np.tile(PROMPT, (batch, 1)), jnp.int32)
    return chain, chain.init(prompts, jnp.full((batch,), len(PROMPT), jnp.int32), V, 16)


def _keys(batch, seed):
    return jax.random.split(jax.random.key(seed), batch)


def _round(rng, prev, batch, k, full):
    """Drafts sampled from Q along the chain from `prev [B]`, and the target's logits."""
    drafts = np.zeros((batch, k), np.int32)
    dprobs = np.zeros((batch, k, V), np.float32)
    ctx = np.asarray(prev)
    logits = [L[ctx]]
    for i in range(k):
        q = Q[ctx]
        cum = np.cumsum(q, axis=-1)
        d = np.minimum((rng.random(batch)[:, None] > cum).sum(-1), V - 1).astype(np.int32)
        drafts[:, i], dprobs[:, i] = d, q
        logits.append(L[d])
        ctx = d
    logits = np.stack(logits, axis=1)
    return jnp.asarray(drafts), (jnp.asarray(dprobs) if full else None), jnp.asarray(logits)


def _conditional(params):
    """[V, V]: the pipeline's probs after the prompt and one output token t (row t)."""
    chain, st = _state(params, V)
    st = chain.update(st, jnp.arange(V, dtype=jnp.int32))
    return np.asarray(nx.probs(jnp.asarray(L), params, state=st), np.float64)


@pytest.mark.parametrize("k,full", [(3, False), (3, True), (1, True)])
def test_emitted_tokens_follow_the_pipeline_jointly_over_two_positions(k, full):
    greedy_rows, batch = 1000, BATCH
    params = _params(batch, np.where(np.arange(batch) < greedy_rows, 0.0, 0.9))
    one = nx.SamplingParams(temperature=0.9, **PARAMS)
    rng = np.random.default_rng(7 + k + full)
    keys = _keys(batch, 100 + k)
    chain, st = _state(params, batch)
    pos = jnp.full((batch,), len(PROMPT), jnp.int32)
    prev = np.full(batch, PROMPT[-1])
    d, r, z = _round(rng, prev, batch, k, full)
    out = verify(keys, d, z, params, positions=pos, draft_probs=r, state=st)
    assert isinstance(out, VerifyOutput) and out.tokens.shape == (batch, k + 1)
    toks, n_emit = np.asarray(out.tokens), np.asarray(out.emitted)
    t0 = toks[:, 0]
    # rows that emitted one token: the next verify call, at the next position, gives the second
    d2, r2, z2 = _round(rng, t0, batch, k, full)
    out2 = verify(keys, d2, z2, params, positions=pos + 1, draft_probs=r2, state=out.state)
    t1 = np.where(n_emit >= 2, toks[:, 1], np.asarray(out2.tokens)[:, 0])

    _, st1 = _state(one, 1)
    p0 = np.asarray(nx.probs(jnp.asarray(L[PROMPT[-1]]), one, state=st1), np.float64)
    cond = _conditional(one)
    assert (p0 == 0).sum() >= 3  # the truncations and the penalty are doing something
    rand = slice(greedy_rows, None)
    chi2_check(np.bincount(t0[rand], minlength=V), p0, "first token")
    joint = np.zeros((V, V))
    np.add.at(joint, (t0[rand], t1[rand]), 1)
    chi2_check(joint, p0[:, None] * cond, "first two tokens")
    assert 0 < np.mean(n_emit[rand] >= 2) < 1  # both paths to the second token were taken

    # greedy rows: the argmax chain under the processors (float64 reference below)
    g0 = _greedy_chain(2)
    assert (t0[:greedy_rows] == g0[0]).all() and (t1[:greedy_rows] == g0[1]).all()


def _penalised(z, seen, r=1.4):
    z = np.asarray(z, np.float64).copy()
    idx = np.array(sorted(seen))
    z[idx] = np.where(z[idx] > 0, z[idx] / r, z[idx] * r)
    return z


def _greedy_chain(n):
    seen, prev, out = set(PROMPT), PROMPT[-1], []
    for _ in range(n):
        t = int(np.argmax(_penalised(L[prev], seen)))
        out.append(t)
        seen.add(t)
        prev = t
    return out


@pytest.mark.parametrize("full", [False, True])
def test_greedy_rows_accept_the_argmax_chain_and_stop_at_the_first_miss(full):
    k, batch = 3, 8
    chain_toks = _greedy_chain(k + 1)
    params = _params(batch, 0.0)
    misses = [None, 0, 1, 2] * 2
    drafts = np.tile(chain_toks[:k], (batch, 1)).astype(np.int32)
    for row, at in enumerate(misses):
        if at is not None:
            drafts[row, at] = (drafts[row, at] + 1 + row) % V
    prev = np.concatenate([np.full((batch, 1), PROMPT[-1]), drafts], axis=1)
    r = jnp.asarray(Q[prev[:, :k]], jnp.float32) if full else None
    _, st = _state(params, batch)
    out = verify(_keys(batch, 3), jnp.asarray(drafts), jnp.asarray(L[prev]), params,
                 positions=jnp.full((batch,), 4, jnp.int32), draft_probs=r, state=st)
    for row, at in enumerate(misses):
        n = k if at is None else at
        want = chain_toks[:n + 1] + [-1] * (k - n)
        assert np.asarray(out.tokens)[row].tolist() == want, row
        assert int(out.accepted[row]) == n and int(out.emitted[row]) == n + 1


def test_drafts_of_probability_zero_are_all_rejected_and_the_draw_is_exact():
    k = 3
    params = _params(BATCH, 0.8, top_k=3, top_p=1.0, min_p=0.0)
    _, st = _state(params, BATCH)
    one = params.take([0])
    _, st1 = _state(one, 1)
    p0 = np.asarray(nx.probs(jnp.asarray(L[PROMPT[-1]])[None], one, state=st1)[0], np.float64)
    dead = np.flatnonzero(p0 == 0)
    rng = np.random.default_rng(5)
    d = rng.choice(dead, size=(BATCH, k)).astype(np.int32)
    z = np.concatenate([L[PROMPT[-1]][None].repeat(BATCH, 0)[:, None], L[d]], axis=1)
    for full in (False, True):
        r = None
        if full:  # a draft model whose whole mass is on tokens the target never emits
            r = np.zeros((BATCH, k, V), np.float32)
            r[:, :, dead] = 1.0 / dead.size
            r = jnp.asarray(r)
        out = verify(_keys(BATCH, 9), jnp.asarray(d), jnp.asarray(z), params,
                     positions=jnp.full((BATCH,), 4, jnp.int32), draft_probs=r, state=st)
        assert (np.asarray(out.accepted) == 0).all()
        toks = np.asarray(out.tokens)
        assert (toks[:, 1:] == -1).all()
        chi2_check(np.bincount(toks[:, 0], minlength=V), p0, f"correction (full={full})")


def test_all_accepted_random_rows_draw_the_bonus_from_the_last_position():
    # the target is (nearly) a point mass on the draft at the first K positions
    k = 3
    params = _params(BATCH, 1.0, top_k=0, top_p=1.0, min_p=0.0)
    chain, st = _state(params, BATCH)
    z = np.full((BATCH, k + 1, V), -5.0, np.float32)
    d = np.tile([4, 9, 3], (BATCH, 1)).astype(np.int32)
    z[:, 0, 4] = z[:, 1, 9] = z[:, 2, 3] = 200.0
    z[:, k] = L[0]
    out = verify(_keys(BATCH, 2), jnp.asarray(d), jnp.asarray(z), params,
                 positions=jnp.zeros((BATCH,), jnp.int32), state=st)
    assert (np.asarray(out.accepted) == k).all() and (np.asarray(out.emitted) == k + 1).all()
    toks = np.asarray(out.tokens)
    assert (toks[:, :k] == d).all()
    one = params.take([0])
    _, st1 = _state(one, 1)
    for t in (4, 9, 3):  # the bonus sees the penalty on the accepted drafts
        st1 = chain.update(st1, jnp.array([t], jnp.int32))
    bonus = np.asarray(nx.probs(jnp.asarray(L[0])[None], one, state=st1)[0], np.float64)
    chi2_check(np.bincount(toks[:, k], minlength=V), bonus, "bonus token")


def test_state_is_advanced_by_exactly_the_emitted_tokens_and_rows_are_batch_invariant():
    batch, k = 8, 3
    params = _params(batch, [0.0, 1.0] * 4)
    chain, st = _state(params, batch)
    rng = np.random.default_rng(0)
    d, r, z = _round(rng, np.full(batch, PROMPT[-1]), batch, k, True)
    d = d.at[0].set(jnp.asarray(_greedy_chain(k)))  # row 0 (greedy) accepts every draft
    z = z.at[0].set(jnp.asarray(L[np.array([PROMPT[-1]] + _greedy_chain(k))]))
    keys = _keys(batch, 4)
    pos = jnp.arange(batch, dtype=jnp.int32) + 4
    out = verify(keys, d, z, params, positions=pos, draft_probs=r, state=st)
    assert 0 < int(out.accepted.sum()) < batch * k  # some drafts accepted, some rejected
    want = st
    for i in range(k + 1):
        want = chain.update(want, out.tokens[:, i])
    for a, b in zip(jax.tree.leaves(out.state), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    order = np.array([5, 0, 7, 2, 1, 3, 6, 4])  # each row's tokens do not depend on the others
    again = verify(keys[order], d[order], z[order], params.take(order), positions=pos[order],
                   draft_probs=r[order], state=jax.tree.map(lambda x: x[order], st))
    np.testing.assert_array_equal(again.tokens, out.tokens[order])


def test_bad_arguments_raise_naming_them():
    z = jnp.zeros((2, 4, V))
    d = jnp.zeros((2, 3), jnp.int32)
    pos = jnp.zeros((2,), jnp.int32)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="target_logits"):
        verify(key, d, jnp.zeros((2, 3, V)), positions=pos)
    with pytest.raises(TypeError, match="draft_tokens"):
        verify(key, d.astype(jnp.float32), z, positions=pos)
    with pytest.raises(ValueError, match="draft_tokens"):
        verify(key, jnp.zeros((2, 0), jnp.int32), jnp.zeros((2, 1, V)), positions=pos)
    with pytest.raises(ValueError, match="draft_probs"):
        verify(key, d, z, positions=pos, draft_probs=jnp.zeros((2, 3, V + 1)))
    with pytest.raises(ValueError, match="positions"):
        verify(key, d, z, positions=jnp.zeros((3,), jnp.int32))
    with pytest.raises(TypeError, match="target_logits"):
        verify(key, d, z.astype(jnp.int32), positions=pos)


def test_ngram_drafts_continue_the_latest_earlier_match():
    from nucleax.speculative import ngram_drafts

    hist = jnp.asarray([[1, 2, 3, 4, 1, 2, 3, 9, 1, 2, 0, 0],
                        [5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0]], jnp.int32)
    got = jax.jit(ngram_drafts, static_argnums=(2, 3))(hist, jnp.asarray([10, 4]), 3, 3)
    # row 0: suffix [1, 2] last seen at 4..5, followed by 3, 9, 1; row 1: no match, repeat 8
    assert got.tolist() == [[3, 9, 1], [8, 8, 8]]


def _tiny():
    from nucleax.models import Llama, LlamaConfig, random_weights

    config = LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         hidden_dim=48, head_dim=8, context_length=64)
    return Llama(config, random_weights(config, seed=5, scale=0.6))


def test_greedy_speculative_generation_equals_greedy_generate_on_the_tiny_model():
    from nucleax import decode
    from nucleax.speculative import generate_speculative

    model = _tiny()
    prompts = [[3, 4, 5, 3, 4, 5, 3, 4], [10, 11, 12, 13, 14, 15, 16], [7]]
    params = nx.SamplingParams(temperature=0.0, repetition_penalty=np.float32([1.0, 1.2, 1.0]))
    keys = _keys(3, 0)
    plain = decode.generate(model, prompts, params, key=keys, max_new_tokens=20)
    spec = generate_speculative(model, prompts, params, key=keys, max_new_tokens=20,
                                draft_tokens=3, ngram=1)
    np.testing.assert_array_equal(spec.output.tokens, plain.tokens)
    np.testing.assert_array_equal(spec.output.lengths, plain.lengths)
    accepted, steps = np.asarray(spec.accepted), np.asarray(spec.steps)
    assert int(np.sum(spec.drafted)) > 0  # ngram=1: a step drafts when a token recurs
    np.testing.assert_array_equal(steps + accepted, 20)  # prefill 1, then accepted + 1 per call
    assert (accepted <= np.asarray(spec.drafted)).all()
    assert (np.asarray(spec.drafted) <= 3 * (steps - 1)).all()  # K per call, 0 on plain steps
    # stop ids end rows at the same place (same shapes: no new compilation); via generate
    stop = int(np.asarray(plain.tokens)[1, 5])
    plain = decode.generate(model, prompts, params, key=keys, max_new_tokens=20, stop_ids=[stop])
    spec_out = decode.generate(model, prompts, params, key=keys, max_new_tokens=20,
                               stop_ids=[stop], speculative="ngram", draft_tokens=3, ngram=1)
    assert bool(np.asarray(plain.stopped)[1])
    np.testing.assert_array_equal(spec_out.tokens, plain.tokens)
    np.testing.assert_array_equal(spec_out.stopped, plain.stopped)


def test_a_draft_model_equal_to_the_target_accepts_everything_and_sampling_is_exact():
    # draft = the target's 2 of 2 layers (`truncated`, sharing the weights): r = p at every
    # position, so every draft is accepted, and the output is still sampled from the target
    # (a 64-token vocabulary: chi-square on the second token, false-alarm rate 1e-3: chisq.ALPHA)
    from nucleax.speculative import generate_speculative, truncated

    model = _tiny()
    draft = truncated(model, 2)
    assert draft is not model and draft.layers[1].wqkv[...] is model.layers[1].wqkv[...]
    batch, k = 2000, 2
    prompts = np.tile([3, 4, 5], (batch, 1))
    params = nx.SamplingParams(temperature=1.0, top_k=20, repetition_penalty=1.3)
    keys = _keys(batch, 11)
    spec = generate_speculative(model, prompts, params, key=keys, max_new_tokens=3, draft=draft,
                                draft_tokens=k)
    # r and p differ only by float rounding (one position vs K+1 positions per call)
    assert np.mean(np.asarray(spec.accepted) == k) > 0.99
    # the law of the second token given the first, from the pipeline:
    first = np.asarray(spec.output.tokens)[:, 0]
    second = np.asarray(spec.output.tokens)[:, 1]
    t0 = int(np.bincount(first).argmax())  # condition on the most frequent first token
    rows = first == t0
    ctx = jnp.asarray([[3, 4, 5, t0]], jnp.int32)
    logits, _ = model(ctx, jnp.arange(4, dtype=jnp.int32)[None], model.init_cache(1, 4))
    chain = params.processors()
    st = chain.init(jnp.asarray([[3, 4, 5]], jnp.int32), jnp.asarray([3]), 64, 4)
    st = chain.update(st, jnp.asarray([t0], jnp.int32))
    want = np.asarray(nx.probs(logits[:, -1], params, state=st)[0], np.float64)
    chi2_check(np.bincount(second[rows], minlength=64), want, "second token after a full accept")


def test_greedy_speculative_equals_greedy_generate_on_smollm2():
    from smollm import needs_smollm, smollm

    if needs_smollm.args[0]:
        pytest.skip(needs_smollm.kwargs["reason"])
    from nucleax import decode
    from nucleax.apps._kit import prompt_ids
    from nucleax.speculative import generate_speculative

    model, tok = smollm()
    # the README's example (same shapes: its compilation is reused in one pytest session)
    text = "Every night the keeper climbed the stairs, lit the lamp and watched the ships."
    ids = prompt_ids(tok, "Repeat the following sentence word for word:\n\n" + text)
    params = nx.SamplingParams(temperature=0.0)
    key = jax.random.key(0)
    common = dict(key=key, max_new_tokens=32, stop_ids=tok.stop_ids)
    plain = decode.generate(model, [ids], params, **common)
    spec = generate_speculative(model, [ids], params, draft_tokens=4, **common)
    np.testing.assert_array_equal(spec.output.tokens, plain.tokens)
    n = int(plain.lengths[0])
    # drafts start once 3 output tokens match the prompt; then the copy comes from drafts
    assert int(spec.accepted[0]) >= n // 3 and int(spec.steps[0]) < n


def test_generate_speculative_argument_errors():
    from nucleax import decode
    from nucleax.speculative import generate_speculative, truncated

    model = _tiny()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="draft_tokens 4 - 1 = 67 exceeds the model.s context"):
        generate_speculative(model, [[1] * 32], key=key, max_new_tokens=32, draft_tokens=4)
    with pytest.raises(ValueError, match="return_logprobs"):
        decode.generate(model, [[1]], key=key, max_new_tokens=2, speculative="ngram",
                        return_logprobs=True)
    with pytest.raises(ValueError, match="mesh"):
        decode.generate(model, [[1]], key=key, max_new_tokens=2, speculative="ngram",
                        mesh=jax.make_mesh((1, 1), ("data", "model")))
    with pytest.raises(ValueError, match="'ngram'"):
        decode.generate(model, [[1]], key=key, max_new_tokens=2, speculative="eagle")
    with pytest.raises(ValueError, match="draft_tokens"):
        generate_speculative(model, [[1]], key=key, max_new_tokens=2, draft_tokens=0)
    with pytest.raises(ValueError, match="n_layers"):
        truncated(model, 3)
    with pytest.raises(TypeError, match="draft"):
        generate_speculative(model, [[1]], key=key, max_new_tokens=2, draft=3)
