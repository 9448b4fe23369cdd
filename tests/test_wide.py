"""Wide nuclei: top-p / large top-k rows whose survivors do not fit the window.

The fast method finds their threshold with a bracketing search in value space
(`nucleax._truncation.narrow`) and hands the rows it cannot settle to the exact
bisection, run on the CPU over groups of 8 rows (`nucleax._rows.by_rows`). Checked here: the same
surviving set as `method="sort"` and as the float64 reference (rows whose
boundary float32 rounding may legitimately decide are named and skipped
only for that check), the same tokens for the same keys, batch-size
invariance of the row grouping, NaN / inf rows mixed in, ties straddling the
window and the row groups, and no recompilation across parameter values.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from npref import near_boundary, reference_full

import nucleax as nx
from nucleax import _rows, _sample
from nucleax.apps.bench import WIDE, llm_like_logits, nucleus_width

VOCAB = 40000


def _wide_batch(batch: int, seed: int):
    """Zipf rows of the bench's wide family (shuffled ranks), with adversarial rows mixed in."""
    slopes = list(WIDE.values())
    z = np.concatenate([np.asarray(llm_like_logits(1, VOCAB, np.float32, seed=seed + i,
                                                   slope=slopes[i % len(slopes)]))
                        for i in range(batch)])
    rng = np.random.default_rng(seed)
    z[1, rng.choice(VOCAB, 50, replace=False)] = np.nan  # NaN counts as -inf
    z[3, :] = 0.0
    z[3, :7] = 4.0  # 7 winners, then 39993 ties straddling the window
    z[5, rng.choice(VOCAB, 3, replace=False)] = np.inf  # uniform over the +inf tokens
    z[6, :] = -np.inf  # no finite logit: token 0
    z[9, :] = np.repeat(np.arange(200, 0, -1), VOCAB // 200) / 40.0  # tie groups of 200
    z[10, :] = rng.normal(0, 1e-3, VOCAB)  # nearly flat: nucleus ~ p * V
    t = np.array([0.7, 1.2, 1.0, 1.0, 0.7, 1.0, 1.0, 0.9] * (batch // 8), np.float32)
    p = np.array([0.9, 0.95, 0.99, 0.5, 0.95, 0.9, 0.9, 0.97] * (batch // 8), np.float32)
    k = np.array([0, 0, 20000, 0, 5000, 0, 0, 0] * (batch // 8), np.int32)
    m = np.zeros(batch, np.float32)
    return z, nx.SamplingParams(t, k, p, m)


@pytest.mark.parametrize("batch", [16, 24])
def test_wide_rows_match_sort_and_float64_reference(batch):
    z, params = _wide_batch(batch, seed=batch)
    want = np.asarray(nx.keep_mask(z, params, method="sort"))
    widths = want.sum(axis=1)
    assert widths.max() > 5000 and np.median(widths) > 64  # really wider than the window
    for method in ("fast", "bisect"):
        got = np.asarray(nx.keep_mask(z, params, method=method))
        np.testing.assert_array_equal(got, want, err_msg=method)
    rows = zip(z, params.temperature, params.top_k, params.top_p, params.min_p, strict=True)
    checked = 0
    for i, (zi, t, k, p, m) in enumerate(rows):
        if near_boundary(zi, float(t), int(k), float(p), float(m), p_tol=1e-5):
            continue
        ref_mask, _ = reference_full(zi, float(t), int(k), float(p), float(m))
        np.testing.assert_array_equal(want[i], ref_mask, err_msg=f"row {i}")
        checked += 1
    assert checked >= batch // 3, checked  # the others: float32 rounding may decide
    assert want[3].sum() == VOCAB  # p=0.5 lands in the tie group: all of it survives
    assert want[6].sum() == 1 and want[6, 0]


def test_same_tokens_as_sort_for_the_same_keys():
    z, params = _wide_batch(16, seed=3)
    for seed in range(3):
        keys = jax.random.split(jax.random.key(seed), 16)
        want = np.asarray(nx.sample(keys, z, params, method="sort"))
        for method in ("fast", "bisect"):
            np.testing.assert_array_equal(nx.sample(keys, z, params, method=method), want,
                                          err_msg=f"{method}, seed {seed}")
        assert 0 <= want.min() and want.max() < VOCAB


def test_row_groups_do_not_change_any_row():
    """A row's token depends on its own key, logits and parameters only: B=16 (two groups of 8)
    gives the same tokens as each row alone."""
    z, params = _wide_batch(16, seed=5)
    keys = jax.random.split(jax.random.key(7), 16)
    batched = np.asarray(nx.sample(keys, z, params))
    for i in range(16):
        one = nx.SamplingParams(*(np.asarray(x)[i:i + 1] for x in
                                  (params.temperature, params.top_k, params.top_p, params.min_p)))
        assert int(nx.sample(keys[i:i + 1], z[i:i + 1], one)[0]) == batched[i], f"row {i}"


def test_whole_pipeline_row_groups_match_one_pass(monkeypatch):
    """`sample` runs the pipeline in groups of 8 rows on the CPU (stage 1 too when every
    processor is a built-in one); with the groups switched off the same batch gives the same
    tokens and the same log-probabilities (up to the rounding of the draw's total: window vs
    two-level sum), catalogue samplers and processors included, and a user's processor that
    closes over a whole-batch array still works (it runs on the whole batch)."""
    rng = np.random.default_rng(3)
    z = jnp.asarray((rng.normal(size=(16, 3000)) * rng.choice([0.3, 3.0], (16, 1)))
                    .astype(np.float32))
    keys = jax.random.split(jax.random.key(2), 16)
    settings = [
        nx.SamplingParams(temperature=np.linspace(0.0, 1.5, 16).astype(np.float32), top_p=0.9,
                          top_k=np.arange(16, dtype=np.int32) * 5, repetition_penalty=1.3),
        nx.SamplingParams(temperature=0.8, typical_p=0.9, xtc_probability=0.5, top_n_sigma=2.0,
                          mirostat_tau=np.where(np.arange(16) % 3, 0.0, 3.0).astype(np.float32)),
    ]
    def run(params, extra=None, z=z):  # a fresh jit: traced again under the current ROW_CHUNK
        chain = params.processors(extra=extra)
        state = None if chain is None else chain.init(
            jnp.zeros((16, 1), jnp.int32), jnp.ones((16,), jnp.int32), 3000, 1)
        fn = jax.jit(_sample.sample_impl, static_argnums=(3, 5, 6, 7, 8))
        return fn(keys, z, params, None if chain is None else chain.apply, state, True, 2,
                  "auto", 64)

    # a user's processor closing over a whole-batch array: stage 1 must see the whole batch
    shift = jnp.asarray(rng.normal(size=(16, 3000)).astype(np.float32))
    user = nx.processors.Processor(lambda *a: (), lambda s, z: z + shift, lambda s, t: s)
    # bf16: each group is sliced from the bf16 batch and widened inside the loop
    cases = [(settings[0], None, z), (settings[1], None, z), (settings[0], [user], z),
             (settings[0], None, z.astype(jnp.bfloat16))]
    for params, extra, logits in cases:
        grouped = run(params, extra, logits)
        monkeypatch.setattr(_rows, "ROW_CHUNK", 10**9)
        whole = run(params, extra, logits)
        monkeypatch.undo()
        np.testing.assert_array_equal(grouped.tokens, whole.tokens)
        np.testing.assert_array_equal(grouped.top_ids, whole.top_ids)
        np.testing.assert_allclose(grouped.logprobs, whole.logprobs, atol=1e-6)
        np.testing.assert_allclose(grouped.raw_logprobs, whole.raw_logprobs, atol=1e-6)


def test_bench_wide_family_is_wide():
    """The bench's wide workloads have the nucleus widths they are named after (V=151936)."""
    params = nx.SamplingParams(np.float32(0.7), top_p=np.float32(0.9))
    got = [nucleus_width(llm_like_logits(1, 151936, np.float32, slope=s), params)
           for s in WIDE.values()]
    for want, width in zip((100, 1000, 10000, 50000), got, strict=True):
        assert 0.7 * want <= width <= 1.3 * want, (want, got)


def test_no_recompilation_across_parameter_values():
    z, params = _wide_batch(16, seed=9)
    keys = jax.random.split(jax.random.key(0), 16)
    nx.sample(keys, z, params)
    before = _sample._sample._cache_size()
    rng = np.random.default_rng(0)
    for _ in range(3):
        other = nx.SamplingParams(rng.uniform(0.5, 1.5, 16).astype(np.float32),
                                  rng.integers(0, 30000, 16).astype(np.int32),
                                  rng.uniform(0.5, 1.0, 16).astype(np.float32),
                                  rng.uniform(0.0, 0.1, 16).astype(np.float32))
        nx.sample(keys, z, other)
    assert _sample._sample._cache_size() == before


def _search(z, t, p, k=None):
    """`(tau, settled, undecided)` of the width-independent top-p search on rows `z`."""
    from nucleax import _truncation as tr
    from nucleax._rows import Prepared

    batch = z.shape[0]
    k = np.zeros(batch, np.int32) if k is None else k

    @jax.jit
    def run(z):
        r = Prepared(z, jnp.asarray(t, jnp.float32), jnp.asarray(k), jnp.asarray(p, jnp.float32),
                     jnp.zeros(batch, jnp.float32))
        vals, _ = tr.window_top_k(r.z, 64)
        tau_k, beyond = tr.top_k_from_window(r, vals)
        tau_k = jnp.where(beyond, tr._bisect_top_k(r), tau_k)
        total_k = tr.total_mass(r, tau_k)
        _, undecided = tr.top_p_from_window(r, vals, tau_k, total_k)
        tau, settled = tr.narrow_top_p(r, tau_k, total_k, vals, undecided)
        return tau, settled, undecided

    return [np.asarray(x) for x in run(jnp.asarray(z))]


def test_search_settles_the_wide_family_and_matches_sort():
    """The bench's wide family (V=151936, nuclei of 100 to 86k tokens): every row is settled by
    the search (no bisection), and its threshold keeps exactly `method="sort"`'s tokens."""
    vocab = 151936
    z = np.concatenate([np.asarray(llm_like_logits(2, vocab, np.float32, seed=i, slope=s))
                        for i, s in enumerate(WIDE.values())])
    p = np.tile(np.float32([0.9, 0.95]), 4)
    t = np.full(8, 0.7, np.float32)
    tau, settled, undecided = _search(z, t, p)
    assert undecided.all() and settled.all()
    want = np.asarray(nx.keep_mask(z, nx.SamplingParams(t, top_p=p), method="sort"))
    np.testing.assert_array_equal(z >= tau[:, None], want)
    assert want.sum(axis=1).min() > 64  # really past the first window


def test_search_on_adversarial_rows_is_exact_or_hands_over():
    """Rows built against the search: two far clusters, a tie group holding the boundary, a first
    probe below the row minimum, a nearly flat row, huge and tiny temperatures, top-k beyond the
    window. Every row past the first window is settled (the tie groups wider than the second
    window by the tie check) and keeps exactly sort's tokens; `nucleax.keep_mask` (fast) equals
    sort on every row."""
    vocab = 30000
    rng = np.random.default_rng(11)
    rows, ts, ps, ks = [], [], [], []

    def add(z, t, p, k=0):
        rows.append(z.astype(np.float32)), ts.append(t), ps.append(p), ks.append(k)

    two = np.where(np.arange(vocab) < vocab // 2, 0.0, -5.0) + rng.normal(0, 1e-3, vocab)
    add(two, 1.0, 0.999)             # the boundary inside the far, light cluster
    add(two, 1.0, 0.3)               # inside the heavy cluster
    ties = rng.normal(-3, 1, vocab)
    ties[:5000] = -1.0               # 5000 equal values around the boundary
    add(ties, 1.0, 0.5)
    add(-0.7 * np.log(rng.permutation(vocab) + 1.0), 0.7, 0.97)  # first probe below the min
    add(rng.normal(0, 1e-4, vocab), 1.0, 0.9)                    # nearly flat
    add(rng.normal(0, 3, vocab), 2.0**100, 0.9)                  # huge T: flat weights
    add(rng.normal(0, 3, vocab), 1e-30, 0.9)                     # tiny T: the max only
    add(rng.normal(0, 1, vocab), 1.0, 0.9, 5000)                 # top-k beyond the window
    add(rng.normal(0, 1, vocab), 1.5, 0.95, 200)
    add(np.repeat(np.arange(300, 0, -1), vocab // 300) / 50.0, 1.0, 0.8)  # groups of 100 ties
    z = np.stack(rows)
    t, p, k = np.float32(ts), np.float32(ps), np.int32(ks)
    tau, settled, undecided = _search(z, t, p, k)
    params = nx.SamplingParams(t, k, p, np.zeros(len(rows), np.float32))
    want = np.asarray(nx.keep_mask(z, params, method="sort"))
    top_k = np.where(k > 0, np.sort(z, axis=1)[np.arange(len(rows)), vocab - np.maximum(k, 1)],
                     -np.inf)
    for i in np.flatnonzero(undecided & settled):
        np.testing.assert_array_equal((z[i] >= tau[i]) & (z[i] >= top_k[i]), want[i],
                                      err_msg=f"row {i}")
    assert undecided.sum() == 9  # all but the tiny-T row are past the first window
    assert settled[undecided].all()  # rows 2 and 9: tie groups wider than the second window
    np.testing.assert_array_equal(np.asarray(nx.keep_mask(z, params)), want)
    keys = jax.random.split(jax.random.key(4), len(rows))
    np.testing.assert_array_equal(nx.sample(keys, z, params), nx.sample(keys, z, params,
                                                                        method="sort"))


def test_top_k_beyond_the_window_is_searched_exactly():
    """k > the window: the count search settles every row (a tie group wider than the second
    window too) and gives exactly the k-th largest value; `sample` gives the same tokens as
    sort."""
    from nucleax import _truncation as tr
    from nucleax._rows import Prepared

    vocab = 40000
    rng = np.random.default_rng(5)
    slopes = [0.7, 1.0, 1.3]
    z = np.stack([*(np.asarray(llm_like_logits(1, vocab, np.float32, seed=i, slope=s))[0]
                    for i, s in enumerate(slopes)),
                  rng.normal(0, 1, vocab), rng.normal(0, 1e-4, vocab),
                  np.repeat(np.arange(400, 0, -1), vocab // 400) / 9.0]).astype(np.float32)
    z[1, rng.choice(vocab, 3000, replace=False)] = -np.inf  # banned tokens do not count
    k = np.int32([65, 5000, 39000, 200, 12345, 250])
    batch = len(k)

    @jax.jit
    def run(z):
        r = Prepared(z, jnp.ones(batch), jnp.asarray(k), jnp.ones(batch), jnp.zeros(batch))
        vals, _ = tr.window_top_k(r.z, 64)
        _, beyond = tr.top_k_from_window(r, vals)
        return (beyond,) + tr.narrow_top_k(r, vals, beyond)

    beyond, tau, settled = (np.asarray(x) for x in run(jnp.asarray(z)))
    assert beyond.all()
    kth = np.sort(z, axis=1)[np.arange(batch), vocab - k]
    assert settled.all()  # the last row: 100-token tie groups
    np.testing.assert_array_equal(tau, kth)
    params = nx.SamplingParams(np.float32(0.9), k)
    keys = jax.random.split(jax.random.key(1), batch)
    np.testing.assert_array_equal(nx.keep_mask(z, params), nx.keep_mask(z, params, method="sort"))
    np.testing.assert_array_equal(nx.sample(keys, z, params),
                                  nx.sample(keys, z, params, method="sort"))


def test_ties_at_the_boundary_settle_without_the_bisection():
    """bf16 logits tie in groups far wider than the second window (a 150k vocabulary has a few
    thousand distinct bf16 values), so the search's second window often ends inside the tie
    group that holds the threshold: the tie check settles those rows (one pass) with the exact
    threshold (the wide family; without it half of these bf16 rows took the bisection). Top-p
    and top-k beyond the window keep exactly sort's tokens, Gaussian rows too."""
    vocab = 151936
    wide = np.concatenate([np.asarray(llm_like_logits(1, vocab, np.float32, seed=i, slope=s))
                           for i, s in enumerate(WIDE.values())])
    z = np.asarray(jnp.asarray(np.tile(wide, (2, 1))).astype(jnp.bfloat16).astype(jnp.float32))
    t = np.float32([0.7, 0.7, 0.7, 0.7, 1.0, 1.0, 1.5, 1.5])
    p = np.float32([0.9, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.99])
    tau, settled, undecided = _search(z, t, p)
    assert undecided.all() and settled.all()
    want = np.asarray(nx.keep_mask(z, nx.SamplingParams(t, top_p=p), method="sort"))
    np.testing.assert_array_equal(z >= tau[:, None], want)
    gauss = np.random.default_rng(1).normal(size=(4, vocab)).astype(np.float32)
    z = np.asarray(jnp.asarray(np.concatenate([z[:4], gauss])).astype(jnp.bfloat16)
                   .astype(jnp.float32))
    k = np.int32([200, 3000, 40000, 100000, 1000, 5000, 20000, 77777])
    for params in (nx.SamplingParams(t, top_p=p), nx.SamplingParams(t, k)):
        np.testing.assert_array_equal(nx.keep_mask(z, params),
                                      nx.keep_mask(z, params, method="sort"))


def test_rows_the_search_leaves_take_the_exact_bisection(monkeypatch):
    """With the search's steps switched off, wide rows are not settled by the second window; they
    take the bisection, and `keep_mask` and `sample` still equal sort on every row."""
    from nucleax import _truncation as tr

    monkeypatch.setattr(tr, "_SEARCH_STEPS", 0)
    vocab = 20011  # a shape no other test traces: compiled afresh under the patch
    z = np.concatenate([np.asarray(llm_like_logits(1, vocab, np.float32, seed=i, slope=s))
                        for i, s in enumerate(WIDE.values())])
    t, p = np.full(4, 1.0, np.float32), np.full(4, 0.95, np.float32)
    _, settled, undecided = _search(z, t, p)
    assert undecided.all() and not settled.any()
    params = nx.SamplingParams(t, top_p=p)
    np.testing.assert_array_equal(nx.keep_mask(z, params), nx.keep_mask(z, params, method="sort"))
    keys = jax.random.split(jax.random.key(7), 4)
    np.testing.assert_array_equal(nx.sample(keys, z, params),
                                  nx.sample(keys, z, params, method="sort"))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_row_groups_need_no_full_size_copy_of_the_batch(dtype):
    """On the CPU the pipeline runs in groups of 8 rows sliced inside the loop: its scratch
    stays below one copy of the batch at the logits' own width (XLA would otherwise widen or
    bit-cast a bf16 batch into a full-size copy before the loop, and a call's scratch is
    allocated afresh: above 32 MiB that is page faults on every call)."""
    batch, vocab = 128, 8192
    z = jnp.zeros((batch, vocab), dtype)
    # the knobs are traced: one program holds every path (greedy, window, search, bisection)
    params = nx.SamplingParams(0.7, top_k=1000, top_p=0.9)
    fn = jax.jit(lambda z, key, params: nx.sample(key, z, params))
    scratch = fn.lower(z, jax.random.key(0), params).compile().memory_analysis().temp_size_in_bytes
    assert scratch < z.size * z.dtype.itemsize, scratch
