"""`SamplingParams`: the per-row sampling parameters, as a validated pytree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SamplingParams"]

_FIELDS = ("temperature", "top_k", "top_p", "min_p")


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _as_param(name: str, value: Any, *, integer: bool) -> Any:
    """Converts one field to a 0-d or [B] array of the canonical dtype.

    Host-known values (Python / NumPy scalars and arrays, concrete jax arrays)
    become NumPy arrays, so that `0.7` and `1` give the same jit cache key.
    Traced values are cast and left to the in-jit fallbacks.
    """
    dtype = np.int32 if integer else np.float32
    if _is_traced(value):
        if integer and not jnp.issubdtype(value.dtype, jnp.integer):
            raise TypeError(f"{name} must have an integer dtype, got {value.dtype}")
        if value.ndim > 1:
            raise ValueError(f"{name} must be a scalar or a [B] array, got shape {value.shape}")
        return value.astype(dtype)
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a number, got the bool {value!r}")
    arr = np.asarray(value)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(f"{name} must be a number or an array of numbers, got {value!r}")
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a [B] array, got shape {arr.shape}")
    if integer and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"{name} must be an integer (0 or -1 for off), got {value!r} of dtype {arr.dtype}"
        )
    return arr.astype(dtype)


def _check_range(name: str, arr: np.ndarray, ok: np.ndarray, expected: str) -> None:
    if not np.all(ok):
        bad = arr[~ok] if arr.ndim else arr
        shown = bad.reshape(-1)[0].item()
        where = "" if arr.ndim == 0 else f" (at row {int(np.argmin(ok))})"
        raise ValueError(f"{name} must be {expected}, got {shown!r}{where}")


@jax.tree_util.register_pytree_node_class
class SamplingParams:
    """Sampling parameters, one value for every row or one value per row.

    Each field is a scalar (applies to every row of the batch) or a `[B]`
    array (one value per row). All four are pytree leaves, so inside `jax.jit`
    they are traced: new values never recompile; only a change of shape
    (scalar vs `[B]`, or a new `B`) does.

    Args:
      temperature: `T >= 0`. `T = 0` is greedy (argmax, lowest index on ties).
      top_k: keep the tokens with fewer than `k` strictly larger logits
        (ties with the k-th value kept). `0` or `-1` is off; `k >= V` is off.
      top_p: keep token `x` iff the probability mass of the tokens strictly
        more probable than `x` is `< p`. Must be in `(0, 1]`; `1` is off.
      min_p: keep token `x` iff `q_x >= min_p * max(q)`. Must be in `[0, 1]`;
        `0` is off.

    Host-known values are validated here and raise `ValueError` / `TypeError`
    naming the field. Traced values cannot be checked; the samplers then use
    the documented fallbacks (see `nucleax` module docs): an invalid
    temperature samples greedily, an invalid `top_k` is off, `top_p <= 0` or
    NaN keeps only the most probable token(s), `min_p` is clipped to `[0, 1]`.

    Example:
      >>> import numpy as np, nucleax
      >>> p = nucleax.SamplingParams(temperature=np.array([0.0, 0.7]), top_p=0.9)
      >>> p.batch_size
      2
    """

    __slots__ = _FIELDS

    def __init__(self, temperature: Any = 1.0, top_k: Any = 0, top_p: Any = 1.0,
                 min_p: Any = 0.0):
        t = _as_param("temperature", temperature, integer=False)
        k = _as_param("top_k", top_k, integer=True)
        p = _as_param("top_p", top_p, integer=False)
        m = _as_param("min_p", min_p, integer=False)
        if isinstance(t, np.ndarray):
            _check_range("temperature", t, np.isfinite(t) & (t >= 0),
                         "a finite number >= 0 (0 means greedy)")
        if isinstance(k, np.ndarray):
            _check_range("top_k", k, k >= -1, "an integer >= 0 (0 or -1 means off)")
        if isinstance(p, np.ndarray):
            _check_range("top_p", p, (p > 0) & (p <= 1), "in (0, 1] (1 means off)")
        if isinstance(m, np.ndarray):
            _check_range("min_p", m, (m >= 0) & (m <= 1), "in [0, 1] (0 means off)")
        sizes = {n: v.shape[0] for n, v in zip(_FIELDS, (t, k, p, m), strict=True) if v.ndim == 1}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"per-row parameters must all have the same length B, got {sizes}")
        self.temperature, self.top_k, self.top_p, self.min_p = t, k, p, m

    # -- pytree protocol: unflatten bypasses validation (leaves may be tracers
    # or placeholders during tree transformations).
    def tree_flatten(self):
        return (self.temperature, self.top_k, self.top_p, self.min_p), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.temperature, obj.top_k, obj.top_p, obj.min_p = children
        return obj

    @property
    def batch_size(self) -> int | None:
        """`B` if any field is per-row, else `None`."""
        for v in self.tree_flatten()[0]:
            if getattr(v, "ndim", 0) == 1:
                return int(v.shape[0])
        return None

    def replace(self, **changes: Any) -> SamplingParams:
        """Returns a copy with some fields replaced (and validated)."""
        values = {n: getattr(self, n) for n in _FIELDS}
        unknown = set(changes) - set(_FIELDS)
        if unknown:
            raise TypeError(f"unknown SamplingParams field(s) {sorted(unknown)}; "
                            f"expected some of {list(_FIELDS)}")
        values.update(changes)
        return SamplingParams(**values)

    def scalars(self) -> dict[str, Any]:
        """The four fields as Python numbers; every field must be a scalar."""
        out = {}
        for name in _FIELDS:
            value = np.asarray(getattr(self, name))
            if value.ndim:
                raise ValueError(f"SamplingParams.{name} must be a scalar here, got shape "
                                 f"{value.shape}; use one SamplingParams per setting")
            out[name] = value.item()
        return out

    @classmethod
    def stack(cls, settings: Sequence[SamplingParams]) -> SamplingParams:
        """One row per setting: `[len(settings)]` arrays from scalar settings."""
        rows = [s.scalars() for s in settings]
        return cls(**{n: np.array([r[n] for r in rows], np.int32 if n == "top_k" else np.float32)
                      for n in _FIELDS})

    def rows(self, batch: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """The four fields broadcast to `[batch]` arrays (f32, i32, f32, f32)."""
        out = []
        for name in _FIELDS:
            v = getattr(self, name)
            shape = getattr(v, "shape", ())
            if len(shape) == 1 and shape[0] != batch:
                raise ValueError(
                    f"SamplingParams.{name} has {shape[0]} values but the logits have "
                    f"{batch} rows; pass a scalar or a [{batch}] array")
            dtype = jnp.int32 if name == "top_k" else jnp.float32
            out.append(jnp.broadcast_to(jnp.asarray(v, dtype), (batch,)))
        return tuple(out)

    def __repr__(self) -> str:
        def show(v):
            if isinstance(v, np.ndarray):
                return repr(v.item()) if v.ndim == 0 else np.array2string(v, separator=", ")
            return repr(v)
        body = ", ".join(f"{n}={show(getattr(self, n))}" for n in _FIELDS)
        return f"SamplingParams({body})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SamplingParams):
            return NotImplemented
        try:
            return all(np.array_equal(np.asarray(getattr(self, n)), np.asarray(getattr(other, n)))
                       for n in _FIELDS)
        except (TypeError, jax.errors.TracerArrayConversionError):
            return self is other

    __hash__ = None  # mutable-array fields: not hashable

