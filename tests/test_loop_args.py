"""The decoding loop's arguments: one test per bad argument of `generate` / `stream`.

Every bad value raises a `TypeError` / `ValueError` naming the argument, the
expected value and the value given (never a raw Python error such as
`OverflowError` or "truth value of an array is ambiguous"), in both entry
points; the valid spellings (NumPy ids, NumPy ints, 2-D arrays) work.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nucleax as nx
from nucleax import _validate, decode
from nucleax.models import Llama, LlamaConfig, random_weights

CONFIG = LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                     head_dim=8, context_length=48)
PROMPTS = [[3, 4, 5], [10, 11, 12, 13]]
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def model():
    return Llama(CONFIG, random_weights(CONFIG, seed=5, scale=0.6))


# One max_new_tokens, bucket and pad_id (static arguments) for the valid calls: one compilation.
N = 5


def _generate(model, prompts=PROMPTS, **kw):
    kw.setdefault("max_new_tokens", N)
    return decode.generate(model, prompts, nx.SamplingParams(temperature=0.0), key=KEY, **kw)


def _stream(model, prompts=PROMPTS, **kw):
    kw.setdefault("max_new_tokens", N)
    steps = list(decode.stream(model, prompts, nx.SamplingParams(temperature=0.0), key=KEY, **kw))
    return np.stack([np.asarray(t) for t, _ in steps], axis=1)


ENTRY_POINTS = [_generate, _stream]

# (keyword arguments, error type, message pattern): each names the argument, the expected
# value and the value received.
BAD_CALLS = {
    "bucket=0": (dict(bucket=0), ValueError, r"bucket must be an int >= 1, got 0"),
    "bucket=-3": (dict(bucket=-3), ValueError, r"bucket must be an int >= 1, got -3"),
    "bucket=2.5": (dict(bucket=2.5), TypeError, r"bucket must be an int, got float 2\.5"),
    "max_new_tokens=True": (dict(max_new_tokens=True), TypeError,
                            r"max_new_tokens must be an int, got the bool True"),
    "max_new_tokens=3.0": (dict(max_new_tokens=3.0), TypeError,
                           r"max_new_tokens must be an int, got float 3\.0"),
    "max_new_tokens=0": (dict(max_new_tokens=0), ValueError,
                         r"max_new_tokens must be an int >= 1, got 0"),
    "flat prompt": (dict(prompts=[3, 4, 5]), TypeError,
                    r"prompts must be a list of prompts .*flat list of ids \[3, 4, 5\]; "
                    r"wrap it: prompts=\[ids\]"),
    "flat array prompt": (dict(prompts=np.array([3, 4, 5])), ValueError,
                          r"prompts must be a batch .*shape \(3,\); wrap it: prompts=\[ids\]"),
    "string prompt": (dict(prompts="hello"), TypeError,
                      r"prompts must be token ids, got the string 'hello'; encode it"),
    "list of strings": (dict(prompts=["hello", "world"]), TypeError,
                        r"prompts must be token ids, got a list of strings .*encode each"),
    "float ids": (dict(prompts=[[1.5, 2.0]]), TypeError,
                  r"prompts\[0\] must hold integer token ids, got float 1\.5 at position 0"),
    "float id array": (dict(prompts=np.array([[1.5, 2.0]])), TypeError,
                       r"prompts\[0\] must hold integer token ids, got dtype float64"),
    "bool id": (dict(prompts=[[1, True]]), TypeError,
                r"prompts\[0\] must hold integer token ids, got the bool True at position 1"),
    "no prompts": (dict(prompts=[]), ValueError, r"prompts must hold at least one prompt"),
    "empty prompt": (dict(prompts=[[1], []]), ValueError,
                     r"prompts must not be empty; prompt\(s\) \[1\] have no tokens"),
    "id too large": (dict(prompts=[[1, 64]]), ValueError,
                     r"prompt token ids must be in \[0, 64\).*got 64 \(prompts\[0\]\[1\]\)"),
    "id 2**40": (dict(prompts=[[2**40]]), ValueError,
                 r"prompt token ids must be in \[0, 64\).*got 1099511627776"),
    "negative id": (dict(prompts=[[3], [-1]]), ValueError,
                    r"prompt token ids must be in \[0, 64\).*got -1 \(prompts\[1\]\[0\]\)"),
    "3-D prompts": (dict(prompts=np.zeros((1, 2, 3), np.int32)), ValueError,
                    r"prompts must be a 2-D array \[B, T\].*shape \(1, 2, 3\)"),
    "prompts=None": (dict(prompts=None), TypeError,
                     r"prompts must be a list of token-id lists or a 2-D integer array, "
                     r"got NoneType"),
    "stop_ids=[2**40]": (dict(stop_ids=[2**40]), ValueError,
                         r"stop_ids token ids must be in \[0, 64\).*got 1099511627776 "
                         r"\(stop_ids\[0\]\)"),
    "stop_ids=[-2]": (dict(stop_ids=[-2]), ValueError,
                      r"stop_ids token ids must be in \[0, 64\).*got -2"),
    "stop_ids=5": (dict(stop_ids=5), TypeError,
                   r"stop_ids must be a list of token ids, got the single value 5; "
                   r"wrap it: stop_ids=\[5\]"),
    "stop_ids='x'": (dict(stop_ids="x"), TypeError, r"stop_ids must be token ids, got the "
                                                    r"string 'x'"),
    "stop_ids=[1.0]": (dict(stop_ids=[1.0]), TypeError,
                       r"stop_ids must hold integer token ids, got float 1\.0 at position 0"),
    "stop_ids 2-D": (dict(stop_ids=np.array([[1, 2]])), ValueError,
                     r"stop_ids must be a 1-D sequence of token ids, got an array of shape "
                     r"\(1, 2\)"),
    "pad_id=2**40": (dict(pad_id=2**40), ValueError,
                     r"pad_id must be a token id in \[0, 64\).* or -1, got 1099511627776"),
    "pad_id=-99": (dict(pad_id=-99), ValueError,
                   r"pad_id must be a token id in \[0, 64\).* or -1, got -99"),
    "pad_id=64": (dict(pad_id=64), ValueError, r"pad_id must be a token id in \[0, 64\)"),
    "pad_id='x'": (dict(pad_id="x"), TypeError,
                   r"pad_id must be a token id \(an int\), got str 'x'"),
    "pad_id=1.0": (dict(pad_id=1.0), TypeError,
                   r"pad_id must be a token id \(an int\), got float 1\.0"),
    "pad_id=True": (dict(pad_id=True), TypeError,
                    r"pad_id must be a token id \(an int\), got the bool True"),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=["generate", "stream"])
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_argument_names_argument_expected_and_received(model, entry, case):
    kwargs, error, pattern = BAD_CALLS[case]
    with pytest.raises(error, match=pattern):
        entry(model, **kwargs)


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=["generate", "stream"])
def test_numpy_stop_ids_work_like_a_list(model, entry):
    """`stop_ids=np.array([...])` used to fail ("truth value of an array is ambiguous")."""
    free = np.asarray(_generate(model, max_new_tokens=N).tokens)
    stop = int(free[1, 2])
    want = entry(model, max_new_tokens=N, stop_ids=[stop])
    for spelling in (np.array([stop]), np.array([stop], np.int64), jnp.array([stop]), (stop,),
                     {stop}):
        got = entry(model, max_new_tokens=N, stop_ids=spelling)
        if entry is _generate:
            np.testing.assert_array_equal(got.tokens, want.tokens)
            np.testing.assert_array_equal(got.lengths, want.lengths)
            assert bool(got.stopped[1])
        else:
            np.testing.assert_array_equal(got, want)
    empty = entry(model, max_new_tokens=N, stop_ids=np.array([], np.int32))
    if entry is _generate:
        np.testing.assert_array_equal(empty.tokens, free)


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=["generate", "stream"])
def test_numpy_integers_are_accepted(model, entry):
    """`np.int64(3)` is an int for max_new_tokens, bucket and pad_id (it used to be refused)."""
    want = entry(model)
    got = entry(model, max_new_tokens=np.int64(N), bucket=np.int32(16), pad_id=np.int64(0))
    if entry is _generate:
        assert got.tokens.shape == (2, N)
        np.testing.assert_array_equal(got.tokens, want.tokens)
    else:
        assert got.shape == (2, N)
        np.testing.assert_array_equal(got, want)


def test_prompts_as_arrays_and_tuples(model):
    """A 2-D integer array (NumPy or JAX) and tuples of ids are prompts too."""
    same = [[3, 4, 5], [10, 11, 12]]
    want = np.asarray(_generate(model, prompts=same).tokens)
    for spelling in (np.array(same), np.array(same, np.int64), jnp.array(same),
                     [tuple(p) for p in same], [np.array(p) for p in same]):
        np.testing.assert_array_equal(_generate(model, prompts=spelling).tokens, want)


def test_pad_id_minus_one_is_the_no_token_sentinel(model):
    """-1 (the processors' "no token") may pad; any other negative id is an error."""
    free = np.asarray(_generate(model, max_new_tokens=N).tokens)
    stop = int(free[0, 1])
    out = _generate(model, max_new_tokens=N, stop_ids=[stop], pad_id=-1)
    n = int(out.lengths[0])
    assert n <= 2 and (np.asarray(out.tokens)[0, n:] == -1).all()
    np.testing.assert_array_equal(np.asarray(out.tokens)[0, :n], free[0, :n])


# -- the validators themselves (host only, no model) -------------------------------------------

def test_int_arg():
    assert _validate.int_arg("n", 3, minimum=1) == 3
    assert _validate.int_arg("n", np.int64(3), minimum=1) == 3
    assert _validate.int_arg("n", np.array(3), minimum=1) == 3
    assert type(_validate.int_arg("n", np.int16(3), minimum=1)) is int
    with pytest.raises(TypeError, match=r"n must be an int, got the bool True"):
        _validate.int_arg("n", True, minimum=0)
    with pytest.raises(TypeError, match=r"n must be an int, got the bool True"):
        _validate.int_arg("n", np.bool_(True), minimum=0)
    with pytest.raises(TypeError, match=r"n must be an int, got str '3'"):
        _validate.int_arg("n", "3", minimum=0)
    with pytest.raises(ValueError, match=r"n must be an int in \[1, 5\], got 6"):
        _validate.int_arg("n", 6, minimum=1, maximum=5)
    with pytest.raises(ValueError, match=r"n must be an int >= 1, got -1267650600228229401496703"):
        _validate.int_arg("n", -2**100, minimum=1)


def test_token_ids_arg():
    np.testing.assert_array_equal(_validate.token_ids_arg("ids", None, 10), np.zeros(0))
    got = _validate.token_ids_arg("ids", {3, 1}, 10)
    assert got.dtype == np.int32 and got.tolist() == [1, 3]
    assert _validate.token_ids_arg("ids", [2**31 - 1], None).tolist() == [2**31 - 1]
    with pytest.raises(ValueError, match=r"ids token ids must be in \[0, 2147483648\), got "
                                         r"2147483648"):
        _validate.token_ids_arg("ids", [2**31], None)
    with pytest.raises(TypeError, match=r"ids must hold integer token ids, got dtype bool"):
        _validate.token_ids_arg("ids", np.array([True]), 10)


def test_prompts_arg_returns_int32_rows():
    rows = _validate.prompts_arg([[1, 2], np.array([3], np.int64), (4, 5, 6)], vocab=None)
    assert [r.tolist() for r in rows] == [[1, 2], [3], [4, 5, 6]]
    assert all(r.dtype == np.int32 for r in rows)
    with pytest.raises(TypeError, match=r"prompts\[1\] must be a list of token ids, got the "
                                        r"int 3"):
        _validate.prompts_arg([[1, 2], 3], vocab=None)
