"""Host-side validation of the decoding loop's arguments (`generate`, `stream`).

Every check runs on the value as the caller gave it, before any cast, so an
error shows what was passed (never a wrapped int32 or a truncated float) and
no Python error (`OverflowError`, "truth value of an array is ambiguous")
escapes. Errors are `TypeError` (wrong kind of value) or `ValueError` (right
kind, wrong value) naming the argument, what was expected, what was received,
and the fix.

Example:
  >>> prompts_arg([[1, 2], (3,)], vocab=10)
  [array([1, 2], dtype=int32), array([3], dtype=int32)]
  >>> int_arg("bucket", 0, minimum=1)
  Traceback (most recent call last):
  ...
  ValueError: bucket must be an int >= 1, got 0
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["int_arg", "prompts_arg", "token_id_arg", "token_ids_arg"]

_INT32_MAX = 2**31 - 1


def _is_int(x: Any) -> bool:
    """A Python or NumPy integer scalar, not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool | np.bool_)


def _short(value: Any, limit: int = 80) -> str:
    """A short repr; NumPy scalars show as the Python value (`True`, not `np.True_`)."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _array_like(x: Any) -> bool:
    """A NumPy or JAX array (anything with dtype and ndim that is not a scalar type)."""
    return hasattr(x, "dtype") and hasattr(x, "ndim") and not isinstance(x, np.generic)


def int_arg(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    """`value` as a Python int in `[minimum, maximum]`.

    Accepts `int`, NumPy integers and 0-d integer arrays; rejects bools (`True`
    is not 1 here), floats and strings.
    """
    if _array_like(value) and value.ndim == 0 and np.issubdtype(value.dtype, np.integer):
        value = np.asarray(value)[()]
    if not _is_int(value):
        kind = "the bool" if isinstance(value, bool | np.bool_) else type(value).__name__
        raise TypeError(f"{name} must be an int, got {kind} {_short(value)}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        want = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {want}, got {value}")
    return value


def _id_bound(vocab: int | None) -> tuple[int, str]:
    if vocab is None:
        return _INT32_MAX + 1, f"[0, {_INT32_MAX + 1})"
    return vocab, f"[0, {vocab}) (the model's vocabulary)"


def token_id_arg(name: str, value: Any, vocab: int | None, *,
                 sentinel: int | None = None) -> int:
    """One token id (e.g. `pad_id`) as a Python int in `[0, vocab)`.

    `sentinel`, if given, is also accepted (e.g. -1, the "no token" value of
    the processors protocol, as a padding id that can never be a real token).
    """
    if _array_like(value) and value.ndim == 0 and np.issubdtype(value.dtype, np.integer):
        value = np.asarray(value)[()]
    if not _is_int(value):
        kind = "the bool" if isinstance(value, bool | np.bool_) else type(value).__name__
        raise TypeError(f"{name} must be a token id (an int), got {kind} {_short(value)}")
    bound, shown = _id_bound(vocab)
    if sentinel is not None and int(value) == sentinel:
        return sentinel
    if not 0 <= int(value) < bound:
        also = "" if sentinel is None else f" or {sentinel}"
        raise ValueError(f"{name} must be a token id in {shown}{also}, got {int(value)}")
    return int(value)


def _ids_row(row: Any, vocab: int | None, what: str, label: str) -> np.ndarray:
    """One 1-D sequence of token ids -> int32 array, checked before any cast.

    `what` names the sequence in errors (`prompts[2]`, `stop_ids`); `label`
    names its ids in range errors (`prompt token ids`, `stop_ids`).
    """
    if isinstance(row, str | bytes):
        raise TypeError(f"{what} must be token ids, got the string {_short(row)}; "
                        "encode text first (tokenizer.encode(text))")
    if _array_like(row):
        arr = np.asarray(row)
        if arr.ndim != 1:
            raise ValueError(f"{what} must be a 1-D sequence of token ids, "
                             f"got an array of shape {arr.shape}")
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{what} must hold integer token ids, got dtype {arr.dtype}"
                            + (f": {_short(arr.tolist())}" if arr.size else ""))
        values = arr.tolist()
    elif isinstance(row, list | tuple):
        values = list(row)
        for j, t in enumerate(values):
            if not _is_int(t):
                kind = "the bool" if isinstance(t, bool | np.bool_) else type(t).__name__
                raise TypeError(f"{what} must hold integer token ids, got {kind} "
                                f"{_short(t)} at position {j}")
        values = [int(t) for t in values]
    else:
        raise TypeError(f"{what} must be a list, tuple or 1-D array of token ids, "
                        f"got {type(row).__name__} {_short(row)}")
    bound, shown = _id_bound(vocab)
    bad = [(j, t) for j, t in enumerate(values) if not 0 <= t < bound]
    if bad:
        j, t = bad[0]
        raise ValueError(f"{label} must be in {shown}, got {t} ({what}[{j}])")
    return np.asarray(values, np.int32).reshape(-1)


def token_ids_arg(name: str, value: Any, vocab: int | None) -> np.ndarray:
    """A set of token ids (e.g. `stop_ids`) as a 1-D int32 array; None is empty.

    Accepts None, a list, tuple, set or 1-D integer array (NumPy or JAX).
    """
    if value is None:
        return np.zeros((0,), np.int32)
    if _is_int(value) or (_array_like(value) and value.ndim == 0):
        raise TypeError(f"{name} must be a list of token ids, got the single value "
                        f"{_short(value)}; wrap it: {name}=[{_short(value)}]")
    if isinstance(value, set | frozenset):
        value = sorted(value, key=lambda t: (not _is_int(t), t if _is_int(t) else 0))
    return _ids_row(value, vocab, name, f"{name} token ids")


def prompts_arg(prompts: Any, vocab: int | None) -> list[np.ndarray]:
    """The prompts as a list of non-empty 1-D int32 arrays with ids in `[0, vocab)`.

    Accepts a list (or tuple) of token-id sequences (lists, tuples, 1-D integer
    arrays) of any non-zero lengths, or a 2-D integer array (one row per
    prompt). A string, a list of strings, a flat list of ids, float ids and
    empty prompts are errors that say how to fix the call.
    """
    if isinstance(prompts, str | bytes):
        raise TypeError(f"prompts must be token ids, got the string {_short(prompts)}; "
                        "encode it and wrap it: prompts=[tokenizer.encode(text)]")
    if _array_like(prompts):
        arr = np.asarray(prompts)
        if arr.ndim == 1:
            raise ValueError(f"prompts must be a batch of prompts ([B, T]), got a 1-D array of "
                             f"shape {arr.shape}; wrap it: prompts=[ids]")
        if arr.ndim != 2:
            raise ValueError(f"prompts must be a 2-D array [B, T] or a list of token-id lists, "
                             f"got an array of shape {arr.shape}")
        rows = list(arr)
    elif isinstance(prompts, list | tuple):
        rows = list(prompts)
    else:
        raise TypeError(f"prompts must be a list of token-id lists or a 2-D integer array, "
                        f"got {type(prompts).__name__} {_short(prompts)}")
    if not rows:
        raise ValueError("prompts must hold at least one prompt, got an empty list")
    if all(_is_int(r) for r in rows):
        raise TypeError(f"prompts must be a list of prompts (a list of token-id lists), got a "
                        f"flat list of ids {_short(prompts)}; wrap it: prompts=[ids]")
    if all(isinstance(r, str | bytes) for r in rows):
        raise TypeError(f"prompts must be token ids, got a list of strings {_short(prompts)}; "
                        "encode each: prompts=[tokenizer.encode(t) for t in texts]")
    out = []
    for i, row in enumerate(rows):
        if _is_int(row):
            raise TypeError(f"prompts[{i}] must be a list of token ids, got the int {row}; "
                            "every prompt is a list: prompts=[[ids...], [ids...]]")
        out.append(_ids_row(row, vocab, f"prompts[{i}]", "prompt token ids"))
    empty = [i for i, ids in enumerate(out) if ids.size == 0]
    if empty:
        raise ValueError(f"prompts must not be empty; prompt(s) {empty} have no tokens "
                         "(give each at least one, e.g. the tokenizer's BOS id)")
    return out
