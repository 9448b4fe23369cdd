"""DRY (processors.dry) against an independent brute-force float64 reference, and in the loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from npmodel import forward
from procrun import run_chain

import nucleax as nx
from nucleax import decode
from nucleax import processors as pr
from nucleax.models import Llama, LlamaConfig, random_weights

# ----------------------------------------------------------------------------
# The reference: the definition in `processors.dry`'s docstring, by brute force over j and n.


def ref_lengths(ctx, breakers=(), window=0):
    """{x: n_x} for every token x that follows some position of the window (breakers left out)."""
    ctx, brk = list(ctx), set(breakers)
    size = len(ctx)
    start = max(0, size - window) if window > 0 else 0
    best = {}
    for j in range(start, size):
        n = 0
        while (j - n - 1 >= start and ctx[j - n - 1] == ctx[size - n - 1]
               and ctx[size - n - 1] not in brk):
            n += 1
        best[ctx[j]] = max(best.get(ctx[j], 0), n)
    return {x: n for x, n in best.items() if x not in brk}


def ref_dry(z, ctx, mult, base, allowed, window=0, breakers=()):
    z = np.asarray(z, np.float64).copy()
    if mult == 0:
        return z
    for x, n in ref_lengths(ctx, breakers, window).items():
        if n >= allowed:
            z[x] -= mult * float(base) ** (n - allowed)
    return z


def run(proc, z, prompts, outputs, max_new=8):
    """`run_chain` with DRY's update and apply jitted once for the whole file."""
    return run_chain(proc, z, prompts, outputs, max_new, _update, _apply)


_update = jax.jit(pr.dry(1.0).update)
_apply = jax.jit(pr.dry(1.0).apply)


def assert_logits_close(got, want):
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-6, atol=1e-5)


def test_the_reference_finds_known_longest_matches():
    assert ref_lengths([1, 2, 3, 4, 1, 2, 3]) == {1: 0, 2: 0, 3: 0, 4: 3}
    assert ref_lengths([5, 5, 5, 5]) == {5: 3}  # overlapping copies
    assert ref_lengths([1, 2, 3, 4, 1, 2, 3], breakers=[1]) == {2: 0, 3: 0, 4: 2}
    assert ref_lengths([1, 2, 3, 4, 9, 1, 2, 3], window=6) == {3: 0, 4: 1, 9: 0, 1: 0, 2: 0}
    assert ref_lengths([1, 2, 3, 4, 9, 1, 2, 3], window=5) == {4: 0, 9: 0, 1: 0, 2: 0, 3: 0}


# ----------------------------------------------------------------------------
# Known answers: {token: penalty} for a context, written by hand.

KNOWN = [
    # (context, kwargs, {token: penalty})
    ([1, 2, 3, 4, 1, 2, 3], dict(base=2.0), {4: 2.0}),  # n = 3: 2^(3-2)
    ([1, 2, 3, 4, 1, 2, 3], dict(base=2.0, allowed_length=3), {4: 1.0}),
    ([1, 2, 3, 4, 1, 2, 3], dict(base=2.0, allowed_length=4), {}),
    ([5, 5, 5, 5], dict(base=3.0), {5: 3.0}),  # overlap: c_0..c_2 == c_1..c_3, n = 3
    ([1, 2, 3, 1, 2], dict(sequence_breakers=[2]), {}),  # the last token is a breaker
    ([1, 2, 3, 1, 2], dict(sequence_breakers=[9]), {3: 1.0}),
    ([1, 2, 3, 1, 2], dict(sequence_breakers=[3]), {}),  # a breaker is never penalised..
    ([1, 2, 4, 1, 2], dict(sequence_breakers=[4]), {}),  # ..even as the follower
    ([1, 2, 3, 4, 1, 2, 3], dict(base=2.0, sequence_breakers=[1]), {4: 1.0}),  # inside: n = 2
    ([1, 2, 3, 4, 1, 2, 3], dict(base=2.0, sequence_breakers=[2]), {}),  # n = 1
    ([1, 2, 3, 4, 9, 9, 1, 2, 3], dict(base=2.0), {4: 2.0}),
    ([1, 2, 3, 4, 9, 9, 1, 2, 3], dict(base=2.0, range=9), {4: 2.0}),
    ([1, 2, 3, 4, 9, 9, 1, 2, 3], dict(base=2.0, range=8), {4: 1.0}),  # window from c_1: n = 2
    ([1, 2, 3, 4, 9, 9, 1, 2, 3], dict(base=2.0, range=7), {}),  # n = 1
    ([1, 2, 3, 4, 9, 9, 1, 2, 3], dict(base=2.0, range=6), {}),  # 4 is at the window's start
    ([1, 2, 3, 4, 9, 9, 1, 2, 3], dict(base=2.0, range=5), {}),  # 4 is outside the window
    ([7, 8, 7, 8, 7, 8], dict(base=2.0, multiplier=0.5), {7: 2.0}),  # n = 4: 0.5 * 2^2
    ([6], {}, {}),
]


@pytest.mark.parametrize("ctx, kwargs, want", KNOWN)
@pytest.mark.parametrize("split", ["prompt", "output", "both"])
def test_known_penalties(ctx, kwargs, want, split):
    kwargs = {"multiplier": 1.0, **kwargs}
    cut = {"prompt": len(ctx), "output": 0, "both": len(ctx) // 2}[split]
    z = np.linspace(-1, 1, 10, dtype=np.float32)[None]
    got = run(pr.dry(**kwargs), z, [ctx[:cut]], [ctx[cut:]])
    expect = z[0].astype(np.float64)
    for x, pen in want.items():
        expect[x] -= pen
    np.testing.assert_allclose(got[0], expect, rtol=1e-6, atol=1e-6)
    args = (kwargs.get("multiplier"), kwargs.get("base", 1.75), kwargs.get("allowed_length", 2),
            kwargs.get("range", 0), kwargs.get("sequence_breakers", ()))
    np.testing.assert_allclose(ref_dry(z[0], ctx, *args), expect, rtol=1e-12)


def test_per_row_values_in_one_batch():
    ctx = [1, 2, 3, 4, 1, 2, 3]
    proc = pr.dry(np.array([1.0, 0.0, 2.0, 1.0, 1.0], np.float32),
                  base=np.array([2.0, 2.0, 3.0, 2.0, 2.0], np.float32),
                  allowed_length=np.array([2, 2, 1, 2, 2]), range=np.array([0, 0, 0, 5, 0]),
                  sequence_breakers=[[], None, [7], [], [3]])
    z = np.zeros((5, 8), np.float32)
    got = run(proc, z, [ctx] * 5, [[]] * 5)
    want = np.zeros((5, 8))
    want[0, 4] = -2.0  # 1 * 2^(3-2)
    want[2, 4] = -18.0  # 2 * 3^(3-1)
    # row 1: multiplier 0; row 3: the window [4, 1, 2, 3] caps the match at 0;
    # row 4: the context ends with a breaker
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_negative_token_changes_nothing():
    proc = pr.dry(1.0, base=2.0)
    z = np.zeros((2, 6), np.float32)
    a = run(proc, z, [[1, 2, 3], [4, 4]], [[1, 2], [4]])
    b = run(proc, z, [[1, 2, 3], [4, 4]], [[1, -1, -1, 2], [-1, 4, -1, -1]])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, [[0, 0, 0, -1, 0, 0], [0, 0, 0, 0, -1, 0]])  # n = 2, 2


def test_the_history_keeps_the_last_prompt_width_plus_max_new_tokens():
    # capacity 3 + 2 = 5: after 7 tokens DRY sees [3, 4, 1, 2, 3] only
    proc = pr.dry(1.0, base=2.0, allowed_length=1)
    z = np.zeros((1, 6), np.float32)
    got = run(proc, z, [[1, 2, 3]], [[4, 1, 2, 3]], max_new=2)
    want = ref_dry(z[0], [3, 4, 1, 2, 3], 1.0, 2.0, 1)
    np.testing.assert_allclose(got[0], want, atol=1e-6)
    assert got[0, 4] == -1.0  # n = 1 in the last five tokens (3, a penalty of 4, in all seven)


# ----------------------------------------------------------------------------
# Random contexts (one shape, so one compilation)

BATCH, WIDTH, NEW, VOCAB = 4, 6, 10, 8


@st.composite
def cases(draw):
    rows = []
    for _ in range(BATCH):
        alphabet = draw(st.integers(1, VOCAB))
        tok = st.integers(0, alphabet - 1)
        prompt = draw(st.lists(tok, max_size=WIDTH))
        out = draw(st.lists(st.one_of(tok, st.just(-1)), max_size=NEW))
        breakers = draw(st.lists(st.integers(0, VOCAB - 1), max_size=3))
        rows.append(dict(prompt=prompt, out=out, breakers=breakers,
                         mult=draw(st.sampled_from([0.0, 0.5, 1.0, 3.0])),
                         base=draw(st.sampled_from([1.0, 1.25, 1.75, 2.0])),
                         allowed=draw(st.integers(1, 4)), window=draw(st.integers(0, 9))))
    return rows


@settings(max_examples=60, deadline=None, derandomize=True)
@given(cases())
def test_random_contexts_match_the_reference(rows):
    width = pr._pow2(max(len(r["breakers"]) for r in rows))
    brk = np.full((BATCH, width), -1, np.int32)
    for b, r in enumerate(rows):
        brk[b, :len(r["breakers"])] = r["breakers"]
    proc = pr.dry_from_packed(np.array([r["mult"] for r in rows], np.float32),
                              np.array([r["base"] for r in rows], np.float32),
                              np.array([r["allowed"] for r in rows]),
                              np.array([r["window"] for r in rows]), brk)
    prompts = np.zeros((BATCH, WIDTH), np.int32)
    for b, r in enumerate(rows):
        prompts[b, :len(r["prompt"])] = r["prompt"]
    state = proc.init(jnp.asarray(prompts), jnp.asarray([len(r["prompt"]) for r in rows]),
                      VOCAB, NEW)
    z = np.random.default_rng(len(str(rows))).normal(0, 2, (BATCH, VOCAB)).astype(np.float32)
    for step in range(NEW):
        t = [r["out"][step] if step < len(r["out"]) else -1 for r in rows]
        state = _update(state, jnp.asarray(t, jnp.int32))
    got = np.asarray(_apply(state, jnp.asarray(z)))
    for b, r in enumerate(rows):
        ctx = r["prompt"] + [t for t in r["out"] if t >= 0]
        want = ref_dry(z[b], ctx, r["mult"], r["base"], r["allowed"], r["window"], r["breakers"])
        assert_logits_close(got[b], want)


# ----------------------------------------------------------------------------
# Traced values the host would reject fall back as documented, never NaN


def test_traced_bad_values_fall_back_safely():
    ctx = [1, 2, 3, 4, 1, 2, 3]
    z = jnp.asarray(np.linspace(-2, 2, 6, dtype=np.float32)[None].repeat(8, 0))
    proc = pr.dry(np.ones(8, np.float32), base=np.full(8, 2.0, np.float32))
    state = proc.init(jnp.asarray([ctx] * 8), jnp.full((8,), len(ctx)), 6, 0)
    inf, nan = np.inf, np.nan
    state = state._replace(
        multiplier=jnp.asarray([nan, -1.0, 0.0, 1.0, 1.0, 1.0, 1e30, 2.0], jnp.float32),
        base=jnp.asarray([2.0, 2.0, inf, 0.5, nan, 2.0, 1e30, inf], jnp.float32),
        allowed_length=jnp.asarray([2, 2, 2, 2, 0, -5, 1, 2], jnp.int32),
        range=jnp.asarray([0, 0, 0, -3, 0, 0, 0, 0], jnp.int32))
    got = np.asarray(jax.jit(proc.apply)(state, z))
    assert not np.isnan(got).any()
    z0 = np.asarray(z[0], np.float64)
    np.testing.assert_array_equal(got[:3], np.asarray(z[:3]))  # NaN, negative, 0 (inf base): off
    np.testing.assert_allclose(got[3], ref_dry(z0, ctx, 1.0, 1.0, 2), rtol=1e-6)  # base -> 1
    np.testing.assert_allclose(got[4], ref_dry(z0, ctx, 1.0, 1.0, 1), rtol=1e-6)  # NaN base
    np.testing.assert_allclose(got[5], ref_dry(z0, ctx, 1.0, 2.0, 1), rtol=1e-6)  # allowed -> 1
    np.testing.assert_array_equal(got[6, [0, 1, 2, 3, 5]], z0[[0, 1, 2, 3, 5]].astype(np.float32))
    assert got[6, 4] == -np.inf  # 1e30 * 1e30^2 overflows float32: banned
    np.testing.assert_array_equal(got[7, 4], -np.inf)  # 2 * inf^1
    assert got[7, 3] == np.float32(z0[3])


# ----------------------------------------------------------------------------
# Through SamplingParams, probs and the chain


def test_probs_run_dry_last_with_the_state_from_init():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 1, (3, 12)).astype(np.float32)
    params = nx.SamplingParams(
        dry_multiplier=np.array([0.8, 0.0, 2.0], np.float32),
        dry_base=np.array([1.75, 2.0, 1.5], np.float32), dry_allowed_length=np.array([2, 1, 1]),
        dry_range=np.array([0, 0, 4]), dry_sequence_breakers=[[11], None, [0, 5]],
        no_repeat_ngram_size=np.array([0, 0, 0]), repetition_penalty=1.3)
    chain = params.processors()
    assert pr.builtin_fields(chain)[-1] == "dry_multiplier"
    prompts = [[1, 2, 3, 1, 2, 3, 1], [4, 4, 4, 4, 4], [6, 7, 6, 7, 6]]
    outputs = [[2], [4, 4], [-1, 7, 5, 6, 7]]
    width = max(map(len, prompts))
    toks = np.array([p + [0] * (width - len(p)) for p in prompts], np.int32)
    state = chain.init(jnp.asarray(toks), jnp.asarray(list(map(len, prompts))), 12, 8)
    for step in range(5):
        t = [o[step] if step < len(o) else -1 for o in outputs]
        state = chain.update(state, jnp.asarray(t, jnp.int32))
    got = np.asarray(nx.probs(z, params, state=state))
    for b in range(3):
        ctx = prompts[b] + [t for t in outputs[b] if t >= 0]
        zr = z[b].astype(np.float64)
        for x in set(ctx):  # repetition penalty runs first
            zr[x] = zr[x] / 1.3 if zr[x] > 0 else zr[x] * 1.3
        zr = ref_dry(zr, ctx, float(params.dry_multiplier[b]), float(params.dry_base[b]),
                     int(params.dry_allowed_length[b]), int(params.dry_range[b]),
                     [[11], [], [0, 5]][b])
        want = np.exp(zr - np.logaddexp.reduce(zr))
        np.testing.assert_allclose(got[b], want, rtol=2e-5, atol=1e-7)
    assert ref_lengths(prompts[0] + outputs[0]) == {1: 0, 2: 0, 3: 5}  # row 0 penalises 3
    with pytest.raises(ValueError, match=r"repeats \['dry_multiplier'\]"):
        nx.probs(z, params, processors=[pr.dry(1.0)])


@pytest.mark.parametrize("kwargs, match", [
    (dict(dry_base=0.5), r"dry_base must be a finite number >= 1"),
    (dict(dry_base=float("inf")), r"dry_base must be"),
    (dict(dry_multiplier=-1.0), r"dry_multiplier must be a finite number >= 0"),
    (dict(dry_multiplier=float("nan")), r"dry_multiplier must be"),
    (dict(dry_allowed_length=0), r"dry_allowed_length must be an integer >= 1"),
    (dict(dry_range=-1), r"dry_range must be an integer >= 0"),
    (dict(dry_sequence_breakers="\n"), r"dry_sequence_breakers must be a list of token ids"),
    (dict(dry_sequence_breakers=[-3]), r"dry_sequence_breakers must hold token ids"),
])
def test_bad_host_values_raise_errors_naming_the_field(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        nx.SamplingParams(**kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(multiplier=-0.5), ValueError, r"dry multiplier must be a finite number >= 0"),
    (dict(multiplier=1.0, base=0.5), ValueError, r"dry base must be a finite number >= 1"),
    (dict(multiplier=1.0, allowed_length=0), ValueError, r"dry allowed_length must be"),
    (dict(multiplier=1.0, allowed_length=1.5), TypeError, r"dry allowed_length must be an int"),
    (dict(multiplier=1.0, range=-2), ValueError, r"dry range must be an integer >= 0"),
    (dict(multiplier="1"), TypeError, r"dry multiplier must be a number"),
    (dict(multiplier=1.0, sequence_breakers="\n"), TypeError, r"sequence_breakers must be"),
])
def test_the_factory_checks_host_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        pr.dry(**kwargs)


def test_breakers_outside_the_vocabulary_are_named():
    proc = pr.dry(1.0, sequence_breakers=[3, 40])
    with pytest.raises(ValueError, match=r"dry_sequence_breakers holds token id 40"):
        proc.init(jnp.zeros((1, 2), jnp.int32), jnp.ones((1,), jnp.int32), 10, 4)


# ----------------------------------------------------------------------------
# In the decoding loop (tiny model)

CONFIG = LlamaConfig(vocab_size=32, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                     head_dim=8, context_length=64)
WEIGHTS = random_weights(CONFIG, seed=3, scale=0.6)
PROMPTS = [[3, 4, 5, 3], [10, 11], [7, 7, 7, 1, 2]]
KEYS = jnp.stack([jax.random.key(s) for s in (1, 2, 3)])


@pytest.fixture(scope="module")
def model():
    return Llama(CONFIG, WEIGHTS)


NEW_TOKENS = 16
# Every DRY run below has the same shapes (per-row values, breakers packed to width 2): one
# compilation of the loop serves them all.
SETTINGS = [
    dict(mult=[0.8, 2.0, 0.0], base=[1.75, 1.2, 2.0], allowed=[2, 1, 3], window=[0, 5, 0],
         breakers=([3], None, [7, 1])),
    dict(mult=[1.5, 0.3, 1.0], base=[2.0, 1.75, 1.1], allowed=[1, 2, 2], window=[6, 0, 0],
         breakers=(None, [11, 4], None)),
]


def _params(temperature, mult, base=(1.75,) * 3, allowed=(2,) * 3, window=(0,) * 3,
            breakers=(None, [31, 30], None)):
    return nx.SamplingParams(
        temperature=np.asarray(temperature, np.float32),
        dry_multiplier=np.asarray(mult, np.float32), dry_base=np.asarray(base, np.float32),
        dry_allowed_length=np.asarray(allowed), dry_range=np.asarray(window),
        dry_sequence_breakers=list(breakers))


def _repeats(prompt, toks, allowed, **kw):
    """The generated positions whose token extended a repeat of `allowed` tokens or more."""
    return [i for i, t in enumerate(toks)
            if ref_lengths(prompt + toks[:i], **kw).get(t, 0) >= allowed]


def test_greedy_loops_without_dry_and_never_repeats_with_a_large_multiplier(model):
    free = decode.generate(model, PROMPTS, nx.SamplingParams(temperature=0.0), key=KEYS,
                           max_new_tokens=NEW_TOKENS)
    brk = [(), (31, 30), ()]
    loops = [_repeats(p, np.asarray(free.tokens[b]).tolist(), 2, breakers=brk[b])
             for b, p in enumerate(PROMPTS)]
    assert sum(map(len, loops)) >= 5, loops  # the tiny model loops greedily
    out = decode.generate(model, PROMPTS, _params([0.0] * 3, [1e4] * 3), key=KEYS,
                          max_new_tokens=NEW_TOKENS)
    for b, p in enumerate(PROMPTS):
        toks = np.asarray(out.tokens[b]).tolist()
        assert _repeats(p, toks, 2, breakers=brk[b]) == [], (b, toks)
        # greedy up to the first position where DRY changed the logits' order
        if loops[b]:
            first, greedy = loops[b][0], np.asarray(free.tokens[b]).tolist()
            assert toks[:first] == greedy[:first] and toks[first] != greedy[first]


def test_loop_logprobs_follow_the_reference_and_values_never_recompile(model):
    """Each token's processed log-probability equals the float64 reference (npmodel logits, then
    DRY with the history so far); new DRY values (same shapes) compile nothing."""
    before = None
    for s in SETTINGS:
        params = _params([1.0, 0.9, 1.2], s["mult"], s["base"], s["allowed"], s["window"],
                         s["breakers"])
        out = decode.generate(model, PROMPTS, params, key=KEYS, max_new_tokens=NEW_TOKENS,
                              return_logprobs=True)
        if before is None:
            before = decode._generate._cache_size()
        assert decode._generate._cache_size() == before
        temps = [1.0, 0.9, 1.2]
        for b, prompt in enumerate(PROMPTS):
            toks = np.asarray(out.tokens[b]).tolist()
            for i, t in enumerate(toks):
                z = forward(CONFIG, WEIGHTS, prompt + toks[:i])[-1]
                zp = ref_dry(z, prompt + toks[:i], s["mult"][b], s["base"][b], s["allowed"][b],
                             s["window"][b], s["breakers"][b] or ())
                proc = zp / temps[b] - np.logaddexp.reduce(zp / temps[b])
                np.testing.assert_allclose(out.logprobs[b, i], proc[t], atol=2e-4)
