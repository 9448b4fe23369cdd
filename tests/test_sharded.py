"""Sampling on logits split over a mesh equals sampling them on one device (SEMANTICS, Sharding).

Runs on the 8 CPU devices that tests/conftest.py asks XLA for
(`--xla_force_host_platform_device_count=8`); the one-device references run
on the default device of the same process.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sharded_loop as sl
import sharded_multiprocess as mp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from npref import margins
from smollm import needs_smollm, smollm

import nucleax as nx
from nucleax import sharding
from nucleax.sharding import collectives, keep_mask_sharded, probs_sharded, sample_sharded

MESHES = [(8, 1), (1, 8), (2, 4), (4, 2)]
AXES = dict(batch_axis="data", vocab_axis="model")
WINDOW = 64  # the default candidate window


@pytest.fixture(scope="module", autouse=True)
def eight_devices():
    if jax.device_count() < 8:
        pytest.fail("test_sharded needs 8 devices: run it under tests/conftest.py, which sets "
                    "XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax starts")


def _mesh(shape, axis_type=AxisType.Explicit):
    return jax.make_mesh(shape, ("data", "model"), axis_types=(axis_type, axis_type))


def _place(z, mesh):
    return jax.device_put(z, NamedSharding(mesh, P("data", "model")))


def _hard_rows(vocab, seed=0):
    """16 rows, one per edge case; ties sit on the shard boundaries of V=1000 over 2, 4 and 8."""
    rng = np.random.default_rng(seed)
    boundary = sorted({i % vocab for i in (10, 124, 125, 249, 250, 251, 499, 500, 874, 875)})
    rows, settings = [], []

    def add(z, t=1.0, k=0, p=1.0, m=0.0):
        rows.append(np.asarray(z, np.float32))
        settings.append((t, k, p, m))

    peaked = lambda: -1.3 * np.log(rng.permutation(vocab) + 1.0) + rng.normal(0, .3, vocab)  # noqa: E731
    add(peaked(), 0.8, 0, 0.9)                                   # narrow nucleus
    add(rng.normal(0, 0.05, vocab), 1.0, 0, 0.95)                # wide nucleus: bisection
    ties = np.full(vocab, -3.0)
    ties[boundary] = 4.0
    add(ties, 1.0, 3)                                            # k=3 inside a 10-way tie
    greedy = rng.normal(0, 1, vocab)
    greedy[[124 % vocab, 125 % vocab, vocab - 1]] = 9.0
    add(greedy, 0.0, 5, 0.5)                                     # argmax tied across shards
    nan = rng.normal(0, 2, vocab)
    nan[rng.choice(vocab, vocab // 3, replace=False)] = np.nan
    add(nan, 1.0, 0, 0.8)                                        # NaN counts as -inf
    add(np.full(vocab, np.nan), 0.7, 10, 0.9)                    # no finite logit
    add(np.full(vocab, -np.inf), 1.0, 0, 0.5)                    # all -inf
    inf = rng.normal(0, 1, vocab)
    inf[[3, 500 % vocab, vocab - 2]] = np.inf
    add(inf, 0.7, 2)                                             # uniform over the +inf
    add(rng.normal(0, 2, vocab), 1.2, 700)                       # k beyond the window
    add(rng.normal(0, 2, vocab), 1.0, 0, 1.0, 0.05)              # min-p only
    add(rng.normal(0, 2, vocab), 1.3)                            # no truncation
    add(peaked(), 1.0, 40, 0.7, 0.02)                            # all three
    add(rng.normal(0, 2, vocab), 0.9, 1)                         # top-1
    add(peaked(), 1e-4, 0, 0.9)                                  # tiny temperature
    wide = rng.normal(0, 3, vocab)
    p = next(p for p in np.linspace(0.999, 0.99, 91) if margins(wide, 1.0, 0, p)[0] > 2e-5)
    add(wide, 1.0, 0, p)                                         # very wide nucleus
    add(np.round(rng.normal(0, 2, vocab) * 2) / 2, 1.0, 10, 0.6)  # coarse grid: ties everywhere
    return np.stack(rows), settings


def _narrow_rows(vocab, batch, seed=1):
    """Rows whose survivors all lie inside the candidate window (the common case)."""
    rng = np.random.default_rng(seed)
    rows, settings = [], []
    for i in range(batch):
        rows.append((-1.3 * np.log(rng.permutation(vocab) + 1.0)
                     + rng.normal(0, 0.3, vocab)).astype(np.float32))
        settings.append([(0.8, 0, 0.9, 0.0), (1.0, 20, 1.0, 0.0), (1.0, 0, 0.7, 0.05),
                         (0.0, 0, 1.0, 0.0), (1.5, 50, 0.95, 0.0)][i % 5])
    return np.stack(rows), settings


def _params(settings):
    t, k, p, m = (np.array([s[i] for s in settings]) for i in range(4))
    return nx.SamplingParams(t.astype(np.float32), k.astype(np.int32), p.astype(np.float32),
                             m.astype(np.float32))


def _away_from_boundaries(z, settings):
    """Float32 sums in another order may move a top-p / min-p boundary by a few ulps only."""
    for row, (t, k, p, m) in zip(z, settings, strict=True):
        row = np.where(np.isnan(row), -np.inf, row)  # the contract's cleaning
        if np.isposinf(row).any():
            row = np.where(np.isposinf(row), 0.0, -np.inf)
        p_margin, m_margin = margins(row, t, k, p, m)
        assert p_margin > 2e-5 and m_margin > 1e-3, (t, k, p, m, p_margin, m_margin)


def _assert_same_output(got, want):
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.valid, want.valid)
    np.testing.assert_array_equal(got.top_ids, want.top_ids)
    for a, b in [(got.logprobs, want.logprobs), (got.raw_logprobs, want.raw_logprobs),
                 (got.top_logprobs, want.top_logprobs),
                 (got.top_raw_logprobs, want.top_raw_logprobs)]:
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
        np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], rtol=1e-6, atol=2e-6)
        assert not np.isnan(a).any()


@pytest.mark.parametrize("shape", MESHES)
def test_sample_and_probs_equal_one_device(shape):
    mesh = _mesh(shape)
    z, settings = _hard_rows(1000)
    _away_from_boundaries(z, settings)
    params = _params(settings)
    zs = _place(z, mesh)
    for seed in range(3):
        key = jax.random.key(seed)
        want = nx.sample(key, z, params, return_logprobs=True, top_n=4)
        got = sample_sharded(key, zs, params, mesh=mesh, **AXES, return_logprobs=True, top_n=4)
        _assert_same_output(got, want)
        assert got.tokens.sharding.spec == P("data")
    got = probs_sharded(zs, params, mesh=mesh, **AXES)
    assert got.sharding.spec == P("data", "model")  # the distribution stays split
    np.testing.assert_allclose(got, nx.probs(z, params), atol=1e-6, rtol=0)
    if shape not in [(1, 8), (2, 4)]:
        return  # keep_mask is one more compilation: checked on two of the meshes
    # the edge cases behave as the contract says (not only "as one device")
    mask = np.asarray(keep_mask_sharded(zs, params, mesh=mesh, **AXES))
    np.testing.assert_array_equal(mask, nx.keep_mask(z, params))
    assert mask[2].sum() == 10 and mask[3].tolist().index(True) == 124
    assert mask[5].tolist().index(True) == 0 and mask[6].sum() == 1
    assert np.flatnonzero(mask[7]).tolist() == [3, 500, 998]


def _random_rows(rng, vocab, batch):
    """Random rows and per-row parameters (narrow and wide nuclei, ties, bans), away from
    float32 boundaries."""
    rows, settings = [], []
    while len(rows) < batch:
        kind = rng.integers(4)
        if kind == 0:  # ties everywhere
            z = np.round(rng.normal(0, 2, vocab) * 2) / 2
        elif kind == 1:  # peaked, LLM-like
            z = -1.3 * np.log(rng.permutation(vocab) + 1.0) + rng.normal(0, 0.3, vocab)
        else:
            z = rng.normal(0, [0.05, 3.0][kind - 2], vocab)
        if rng.random() < 0.3:  # banned tokens
            z[rng.choice(vocab, vocab // 3, replace=False)] = -np.inf
        z = z.astype(np.float32)
        t = float(rng.choice([0.0, rng.uniform(0.1, 2.0), rng.uniform(0.1, 2.0)]))
        k = int(rng.choice([0, 1, rng.integers(1, 64), rng.integers(64, vocab)]))
        p = float(rng.choice([1.0, rng.uniform(0.05, 0.99), 0.99]))
        m = float(rng.choice([0.0, 0.0, rng.uniform(0.0, 0.3)]))
        p_margin, m_margin = margins(z, t, k, p, m)
        if p_margin > 2e-5 and m_margin > 1e-3:
            rows.append(z)
            settings.append((t, k, p, m))
    return np.stack(rows), settings


@pytest.mark.parametrize("shape", [(1, 8), (2, 4)])
def test_random_rows_equal_one_device(shape):
    mesh = _mesh(shape)
    rng = np.random.default_rng(sum(shape) * 10 + shape[0])
    for _ in range(3):
        z, settings = _random_rows(rng, 1000, 16)  # the shapes above: no new compilation
        params = _params(settings)
        key = jax.random.key(int(rng.integers(1 << 30)))
        want = nx.sample(key, z, params, return_logprobs=True, top_n=4)
        got = sample_sharded(key, _place(z, mesh), params, mesh=mesh, **AXES,
                             return_logprobs=True, top_n=4)
        _assert_same_output(got, want)


@pytest.mark.parametrize("shape", [(1, 8), (2, 4)])
def test_common_case_draws_from_the_window(shape):
    """Narrow nuclei only: every survivor is in the window, so the draw reads candidates only."""
    mesh = _mesh(shape)
    z, settings = _narrow_rows(1000, 16)
    params = _params(settings)
    mask = np.asarray(nx.keep_mask(z, params))
    kth = -np.sort(-z, axis=-1)[:, WINDOW - 1]
    assert all(z[i][mask[i]].min() > kth[i] for i in range(len(z)))  # the window path's case
    zs = _place(z, mesh)
    keys = jax.random.split(jax.random.key(7), 16)  # one key per row
    for step in range(4):
        key = jax.vmap(lambda k, s=step: jax.random.fold_in(k, s))(keys)
        want = nx.sample(key, z, params, return_logprobs=True, top_n=4)
        _assert_same_output(sample_sharded(key, zs, params, mesh=mesh, **AXES,
                                           return_logprobs=True, top_n=4), want)


def test_shapes_that_do_not_divide_the_mesh():
    """B=13 rows over 2, V=1003 and V=50 over 4: padded with -inf inside, same answers."""
    mesh = _mesh((2, 4))
    for vocab in (1003, 50):  # 50: fewer columns per shard (13) than the window (64)
        z, settings = _hard_rows(vocab, seed=vocab)
        z, settings = z[:13], settings[:13]
        z[2, [0, vocab - 1]] = 4.0
        _away_from_boundaries(z, settings)
        params = _params(settings)
        key = jax.random.key(3)
        got = sample_sharded(key, z, params, mesh=mesh, **AXES, return_logprobs=True, top_n=4)
        _assert_same_output(got, nx.sample(key, z, params, return_logprobs=True, top_n=4))
        assert got.tokens.shape == (13,) and int(np.max(got.tokens)) < vocab
        if vocab == 50:
            continue
        got = probs_sharded(z, params, mesh=mesh, **AXES)
        assert got.shape == (13, vocab)
        np.testing.assert_allclose(got, nx.probs(z, params), atol=1e-6, rtol=0)


def test_inside_jit_auto_mesh_one_row_and_bisect():
    mesh = _mesh((2, 4), AxisType.Auto)
    z, settings = _hard_rows(1000, seed=5)
    params = _params(settings)
    zs = _place(z, mesh)
    key = jax.random.key(11)

    @jax.jit
    def step(key, z, params):
        return sample_sharded(key, z, params, mesh=mesh, **AXES, method="bisect")

    np.testing.assert_array_equal(step(key, zs, params), nx.sample(key, z, params))
    one = sample_sharded(key, z[0], params=nx.SamplingParams(0.8, top_p=0.9), mesh=mesh,
                         vocab_axis="model")
    assert one.shape == () and int(one) == int(nx.sample(key, z[0], nx.SamplingParams(0.8,
                                                                                       top_p=0.9)))


def test_vocab_not_split_and_new_values_do_not_recompile():
    mesh = _mesh((8, 1))
    z, settings = _hard_rows(1000, seed=9)
    zs = _place(z, mesh)
    key = jax.random.key(4)
    for shift in (0.0, 0.05):
        params = _params([(t + shift * (t > 0), k, p, m) for t, k, p, m in settings])
        got = sample_sharded(key, zs, params, mesh=mesh, batch_axis="data",
                             return_logprobs=True)
        want = nx.sample(key, z, params, return_logprobs=True)
        np.testing.assert_array_equal(got.tokens, want.tokens)
        np.testing.assert_allclose(got.logprobs, want.logprobs, rtol=1e-6, atol=1e-6)
        if shift == 0.0:
            compiled = sharding._sharded.sample_output._cache_size()
    assert sharding._sharded.sample_output._cache_size() == compiled


def test_processors_run_first_and_raw_logprobs_are_unprocessed():
    """The processors `params` switches on (a per-row logit bias), then extra ones (a ban list)."""
    mesh = _mesh((2, 4))
    z, settings = _narrow_rows(1000, 8)
    t, k, p, m = (np.array([s[i] for s in settings]) for i in range(4))
    params = nx.SamplingParams(t, k.astype(np.int32), p, m,
                               logit_bias=[{7: 3.0 * i, 600: 1.0} for i in range(8)])
    allowed = nx.processors.allowed_token_ids(list(range(0, 1000, 3)) + [7])
    key = jax.random.key(5)
    got = sample_sharded(key, _place(z, mesh), params, mesh=mesh, **AXES, processors=allowed,
                         return_logprobs=True, top_n=3)
    want = nx.sample(key, z, params, processors=allowed, return_logprobs=True, top_n=3)
    _assert_same_output(got, want)
    assert all(t % 3 == 0 or t == 7 for t in np.asarray(got.tokens).tolist())  # allowed only
    raw = np.asarray(jax.nn.log_softmax(z, axis=-1))
    np.testing.assert_allclose(got.raw_logprobs, raw[np.arange(8), np.asarray(got.tokens)],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probs_sharded(_place(z, mesh), params, mesh=mesh, **AXES,
                                             processors=allowed),
                               nx.probs(z, params, processors=allowed), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(1, 8), (2, 4)])
def test_no_collective_carries_the_logits(shape):
    """The compiled step moves candidates and per-row numbers only, never a [B, V] block."""
    mesh = _mesh(shape)
    batch, vocab = 16, 32768
    nb, nv = shape
    z = jax.ShapeDtypeStruct((batch, vocab), jnp.float32,
                             sharding=NamedSharding(mesh, P("data", "model")))
    params = nx.SamplingParams(np.full(batch, 0.8, np.float32), top_p=np.full(batch, 0.9,
                                                                              np.float32))
    step = jax.jit(lambda key, z, p: sample_sharded(key, z, p, mesh=mesh, **AXES))
    ops = collectives(step.lower(jax.random.key(0), z, params).compile().as_text())
    rows = batch // nb
    assert ops and max(op.elements for op in ops) == rows * nv * WINDOW  # the candidates
    assert max(op.elements for op in ops) * 8 <= rows * vocab // nv  # << one device's block
    # the parser does see a gather of the logits when there is one
    gather = jax.jit(lambda z: jax.sharding.reshard(z, NamedSharding(mesh, P("data", None))) * 2)
    ops = collectives(gather.lower(z).compile().as_text())
    assert max(op.elements for op in ops) == rows * vocab


def test_bad_arguments_name_the_fix():
    mesh = _mesh((2, 4))
    z = np.zeros((4, 16), np.float32)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="vocab_axis must be None or a name"):
        sample_sharded(key, z, mesh=mesh, vocab_axis="tensor")
    with pytest.raises(ValueError, match="different mesh axes"):
        probs_sharded(z, mesh=mesh, batch_axis="model", vocab_axis="model")
    with pytest.raises(ValueError, match="method='sort'"):
        keep_mask_sharded(z, mesh=mesh, vocab_axis="model", method="sort")
    with pytest.raises(TypeError, match="jax.sharding.Mesh"):
        sample_sharded(key, z, mesh=jax.devices(), vocab_axis="model")
    with pytest.raises(ValueError, match="top_n"):
        sample_sharded(key, z, mesh=mesh, vocab_axis="model", top_n=-1)


# --- the decoding loop on a mesh, and several processes ---------------------------------


def test_decoding_loop_on_a_mesh_equals_one_device():
    """The tiny Llama split over "model" (KV heads, MLP, vocabulary), its batch over "data"."""
    mesh = _mesh((2, 4))
    params = nx.SamplingParams(np.array([0.0, 0.8, 1.0, 1.3], np.float32),
                               np.array([0, 0, 40, 0], np.int32),
                               np.array([1.0, 0.9, 0.95, 1.0], np.float32))
    prompt, key = sl.prompts(4, 5, sl.TINY.vocab_size), jax.random.key(0)
    model = sl.tiny_model()
    sharded = model.shard(mesh)
    assert model.placement is None  # shard returns a copy
    assert sharded.placement.heads and sharded.placement.hidden and sharded.placement.vocab
    assert sharded.layers[0].wqkv[...].sharding.spec == P("model", None)
    got = sl.decode(sharded, prompt, params, key, 6, layout=sharding.layout(mesh, "data", "model"))
    want = sl.decode(model, prompt, params, key, 6)
    np.testing.assert_array_equal(got, want)
    assert got.sharding.spec == P("data")
    assert len(set(np.asarray(want)[1].tolist())) > 1  # a sampled row, not a constant


@pytest.mark.slow
@needs_smollm
def test_smollm2_decoding_loop_on_a_mesh_equals_one_device():
    """SmolLM2 (9 heads, 3 KV heads: attention stays whole; MLP and vocabulary split by 4)."""
    model, tok = smollm()
    mesh = _mesh((2, 4))
    params = nx.SamplingParams(np.array([0.0, 0.8], np.float32), top_p=np.array([1.0, 0.9],
                                                                                  np.float32))
    prompt = np.array([tok.encode("The capital of France is")] * 2, np.int32)
    key = jax.random.key(0)
    sharded = model.shard(mesh)
    assert not sharded.placement.heads and sharded.placement.vocab
    got = sl.decode(sharded, prompt, params, key, 4, layout=sharding.layout(mesh, "data", "model"))
    want = sl.decode(model, prompt, params, key, 4)
    np.testing.assert_array_equal(got, want)
    assert tok.decode(np.asarray(want)[0].tolist()).startswith(" Paris")


@pytest.mark.slow
def test_two_processes_give_the_tokens_of_one(tmp_path):
    """`jax.distributed` on localhost: 2 processes x 4 CPU devices, one (2, 4) mesh."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = tmp_path / "result.json"
    procs = [subprocess.Popen([sys.executable, os.path.join(here, "sharded_multiprocess.py"),
                               str(i), "2", str(port), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    got = json.loads(out.read_text())
    assert (got["processes"], got["devices"], got["local_devices"]) == (2, 8, 4)
    z, params, key = mp.case()
    want = nx.sample(key, z, params, return_logprobs=True, top_n=2)
    np.testing.assert_array_equal(got["tokens"], want.tokens)
    np.testing.assert_array_equal(got["top_ids"], want.top_ids)
    np.testing.assert_allclose(got["logprobs"], want.logprobs, rtol=1e-6, atol=2e-6)
    np.testing.assert_allclose(got["probs"], nx.probs(z, params), atol=1e-6, rtol=0)
    loop = sl.decode(sl.tiny_model(), sl.prompts(mp.BATCH, 5, sl.TINY.vocab_size), params, key,
                     mp.STEPS)
    np.testing.assert_array_equal(got["loop"], loop)
