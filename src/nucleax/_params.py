"""`SamplingParams`: the per-row sampling parameters, as a validated pytree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SamplingParams"]

def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


_INT32_MIN, _INT32_MAX = int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _shown(x: Any) -> str:
    """A value for an error message, as the caller wrote it (0.1, not 0.100000001)."""
    if isinstance(x, np.generic) and jnp.issubdtype(x.dtype, jnp.floating):
        return repr(x.item()) if x.dtype == np.float64 else str(x)
    return repr(x.item() if isinstance(x, np.generic) else x)


def _given(name: str, value: Any, integer: bool) -> np.ndarray:
    """The host value exactly as given, as a 0-d or 1-d NumPy array (no cast).

    Integers stay exact (Python ints beyond int64 as an object array); floats
    keep their dtype (float64, float32, float16, bfloat16).
    """
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a number, got the bool {bool(value)!r}")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"{name} must be a number or a [B] array of numbers, "
                        f"got {value!r}") from None
    if arr.dtype == object:
        items = arr.reshape(-1).tolist()
        numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in items)
        if not items or not numbers:
            raise TypeError(f"{name} must be a number or a [B] array of numbers, got {value!r}")
        if any(isinstance(x, float) for x in items):
            arr = arr.astype(np.float64)
    elif arr.dtype == np.bool_:
        raise TypeError(f"{name} must be a number, got the bools {value!r}")
    elif not (jnp.issubdtype(arr.dtype, jnp.integer) or jnp.issubdtype(arr.dtype, jnp.floating)):
        raise TypeError(f"{name} must be a number or a [B] array of numbers, got {value!r}")
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a [B] array, got shape {arr.shape}")
    if integer and not (arr.dtype == object or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise TypeError(f"{name} must be an integer (0 or -1 for off), got {value!r} of "
                        f"dtype {arr.dtype}")
    return arr


def _to_float32(name: str, given: np.ndarray, ok: Any) -> np.ndarray:
    """Rounds valid float values to float32, keeping them valid.

    A value inside the field's range whose float32 rounding falls outside it
    (`top_p=1e-50` rounds to 0, `temperature=1e39` to inf) moves to the
    nearest float32 inside it (1e-45, 3.4e38): the same distribution.
    """
    wide = given.astype(np.float64)
    with np.errstate(over="ignore", under="ignore"):
        cast = given.astype(np.float32)
    if ok is None:
        return cast
    with np.errstate(invalid="ignore"):
        broken = ~np.asarray(ok(cast), bool)
    if np.any(broken):
        toward = np.where(wide > cast, np.float32(np.inf), np.float32(-np.inf))
        cast = np.where(broken, np.nextafter(cast, toward), cast).astype(np.float32)
        with np.errstate(invalid="ignore"):
            still = ~np.asarray(ok(cast), bool)
        if np.any(still):
            bad = given[still] if given.ndim else given
            raise ValueError(f"{name}={_shown(bad.reshape(-1)[0])} has no float32 value in "
                             "range; pass a value float32 can hold")
    return cast


def _as_param(name: str, value: Any, *, integer: bool, ranges: Any = None) -> Any:
    """Converts one field to a 0-d or [B] array of the canonical dtype.

    Host-known values (Python / NumPy scalars and arrays, concrete jax arrays,
    any float dtype including bfloat16 / float16) are checked *as given*,
    before any cast, against the field's range (`ranges[name] = (ok,
    expected)`, by default the module's `_RANGES`), so errors show the value
    the caller passed. Then integers are clipped to int32 (a valid value
    beyond it, such as `top_k=2**40`, means the same as int32's max: k >= V is
    off) and floats rounded to float32 inside the range (see `_to_float32`).
    They become NumPy arrays, so that `0.7` and `1` give the same jit cache key.

    Traced values cannot be checked: they are cast (wide integers clipped to
    int32, finite floats beyond float32 clipped to its max) and left to the
    in-jit fallbacks.
    """
    dtype = np.int32 if integer else np.float32
    if _is_traced(value):
        if integer and not jnp.issubdtype(value.dtype, jnp.integer):
            raise TypeError(f"{name} must have an integer dtype, got {value.dtype}")
        if not jnp.issubdtype(value.dtype, jnp.integer) and not jnp.issubdtype(
                value.dtype, jnp.floating):
            raise TypeError(f"{name} must have a numeric dtype, got {value.dtype}")
        if value.ndim > 1:
            raise ValueError(f"{name} must be a scalar or a [B] array, got shape {value.shape}")
        if integer and value.dtype != jnp.int32:
            info = jnp.iinfo(value.dtype)
            lo, hi = max(int(info.min), _INT32_MIN), min(int(info.max), _INT32_MAX)
            value = jnp.clip(value, np.asarray(lo, value.dtype), np.asarray(hi, value.dtype))
        elif not integer and jnp.finfo(value.dtype).max > _FLOAT32_MAX:
            big = np.asarray(_FLOAT32_MAX, value.dtype)
            value = jnp.where(jnp.isfinite(value), jnp.clip(value, -big, big), value)
        return value.astype(dtype)
    given = _given(name, value, integer)
    if ranges is None:
        ranges = globals().get("_RANGES", {})
    ok, expected = ranges.get(name, (None, None))
    if ok is not None:
        with np.errstate(invalid="ignore"):
            _check_range(name, given, np.asarray(ok(given.astype(np.float64)), bool), expected)
    if integer:
        clipped = np.clip(given.astype(np.float64), _INT32_MIN, _INT32_MAX)
        return clipped.astype(np.int32)
    return _to_float32(name, given, ok)


def _check_range(name: str, arr: np.ndarray, ok: np.ndarray, expected: str) -> None:
    """Raises `ValueError` naming the first value of `arr` where `ok` is False."""
    if not np.all(ok):
        bad = arr[~ok] if arr.ndim else arr
        shown = _shown(bad.reshape(-1)[0])
        where = "" if arr.ndim == 0 else f" (at row {int(np.argmin(ok))})"
        raise ValueError(f"{name} must be {expected}, got {shown}{where}")


# Field kinds. Numeric fields are scalars or [B] arrays; list fields are packed
# into padded int arrays ([L] / [N, L] for every row, [B, L] / [B, N, L] per row).
_KNOBS = ("temperature", "top_k", "top_p", "min_p")
_NUMERIC = {  # name: (default, integer, off value)
    "temperature": (1.0, False, None),
    "top_k": (0, True, 0),
    "top_p": (1.0, False, 1.0),
    "min_p": (0.0, False, 0.0),
    "repetition_penalty": (1.0, False, 1.0),
    "frequency_penalty": (0.0, False, 0.0),
    "presence_penalty": (0.0, False, 0.0),
    "min_tokens": (0, True, 0),
    "no_repeat_ngram_size": (0, True, 0),
    # DRY (a processor, after the penalties)
    "dry_multiplier": (0.0, False, 0.0),
    "dry_base": (1.75, False, None),
    "dry_allowed_length": (2, True, None),
    "dry_range": (0, True, None),
    # the wider catalogue (stage 3; SEMANTICS Part 2)
    "top_n_sigma": (-1.0, False, lambda n: n < 0),
    "typical_p": (1.0, False, 1.0),
    "epsilon": (0.0, False, 0.0),
    "eta": (0.0, False, 0.0),
    "xtc_probability": (0.0, False, 0.0),
    "xtc_threshold": (0.1, False, None),
    "dynatemp_range": (0.0, False, 0.0),
    "dynatemp_exponent": (1.0, False, None),
    "mirostat_tau": (0.0, False, 0.0),
    "mirostat_eta": (0.1, False, None),
}
_RANGES = {  # name: (predicate on a NumPy array, expected)
    "temperature": (lambda t: np.isfinite(t) & (t >= 0), "a finite number >= 0 (0 means greedy)"),
    "top_k": (lambda k: k >= -1, "an integer >= 0 (0 or -1 means off)"),
    "top_p": (lambda p: (p > 0) & (p <= 1), "in (0, 1] (1 means off)"),
    "min_p": (lambda m: (m >= 0) & (m <= 1), "in [0, 1] (0 means off)"),
    "repetition_penalty": (lambda r: np.isfinite(r) & (r > 0),
                           "a finite number > 0 (1 means off, > 1 discourages repeats)"),
    "frequency_penalty": (lambda f: (f >= -2) & (f <= 2), "in [-2, 2] (0 means off)"),
    "presence_penalty": (lambda f: (f >= -2) & (f <= 2), "in [-2, 2] (0 means off)"),
    "min_tokens": (lambda n: n >= 0, "an integer >= 0 (0 means off)"),
    "no_repeat_ngram_size": (lambda n: n >= 0, "an integer >= 0 (0 means off)"),
    "dry_multiplier": (lambda x: np.isfinite(x) & (x >= 0), "a finite number >= 0 (0 means off)"),
    "dry_base": (lambda x: np.isfinite(x) & (x >= 1), "a finite number >= 1 (1.75 is usual)"),
    "dry_allowed_length": (lambda n: n >= 1, "an integer >= 1"),
    "dry_range": (lambda n: n >= 0, "an integer >= 0 (0 means the whole context)"),
    "top_n_sigma": (np.isfinite, "a finite number (negative means off)"),
    "typical_p": (lambda p: (p > 0) & (p <= 1), "in (0, 1] (1 means off)"),
    "epsilon": (lambda e: (e >= 0) & (e < 1), "in [0, 1) (0 means off)"),
    "eta": (lambda e: (e >= 0) & (e < 1), "in [0, 1) (0 means off)"),
    "xtc_probability": (lambda a: (a >= 0) & (a <= 1), "in [0, 1] (0 means off)"),
    "xtc_threshold": (lambda c: (c >= 0) & (c <= 1), "in [0, 1]"),
    "dynatemp_range": (lambda d: np.isfinite(d) & (d >= 0), "a finite number >= 0 (0 means off)"),
    "dynatemp_exponent": (lambda e: np.isfinite(e) & (e >= 0), "a finite number >= 0"),
    "mirostat_tau": (lambda t: np.isfinite(t) & (t >= 0),
                     "a finite number >= 0 (the target surprise in bits; 0 means off)"),
    "mirostat_eta": (lambda e: np.isfinite(e) & (e >= 0), "a finite number >= 0"),
}
_LISTS = ("logit_bias", "allowed_token_ids", "bad_words", "stop", "stop_token_ids",
          "dry_sequence_breakers")
_FIELDS = tuple(_NUMERIC) + ("ignore_eos",) + _LISTS
# The processors that the named fields switch on (SEMANTICS step 1).
PROCESSOR_FIELDS = ("allowed_token_ids", "bad_words", "min_tokens", "logit_bias",
                    "repetition_penalty", "frequency_penalty", "presence_penalty",
                    "no_repeat_ngram_size", "dry_multiplier")
# The catalogue samplers (stage 3) and the fields each one reads.
SAMPLER_FIELDS = {
    "top_n_sigma": ("top_n_sigma",),
    "typical_p": ("typical_p",),
    "epsilon": ("epsilon",),
    "eta": ("eta",),
    "xtc": ("xtc_probability", "xtc_threshold"),
    "dynatemp": ("dynatemp_range", "dynatemp_exponent"),
    "mirostat": ("mirostat_tau", "mirostat_eta"),
}


def _as_bool(name: str, value: Any) -> Any:
    if _is_traced(value):
        if value.dtype != jnp.bool_ or value.ndim > 1:
            raise TypeError(f"{name} must be a bool or a [B] bool array, got {value.dtype} "
                            f"{value.shape}")
        return value
    arr = np.asarray(value)
    if arr.dtype != np.bool_ or arr.ndim > 1:
        raise TypeError(f"{name} must be True/False or a [B] array of bools, got {value!r}")
    return arr


def _pack(name: str, value: Any) -> Any:
    from . import processors as pr

    if name == "logit_bias":
        return pr.pack_bias(name, value)
    if name in ("bad_words", "stop"):
        return pr.pack_sequences(name, value)
    return pr.pack_id_lists(name, value,
                            allow_empty=name in ("stop_token_ids", "dry_sequence_breakers"))


def _rows_in(name: str, value: Any) -> int | None:
    """`B` if the field holds one value per row, else None."""
    leaf = value[0] if name == "logit_bias" else value
    per_row_ndim = {"bad_words": 3, "stop": 3}.get(name, 1 if name not in _LISTS else 2)
    return int(leaf.shape[0]) if getattr(leaf, "ndim", 0) == per_row_ndim else None


def _is_off(value: Any, off: Any) -> bool:
    """True when the value is known on the host and off in every row."""
    if off is None or _is_traced(value):
        return False
    if callable(off):
        return bool(np.all(off(np.asarray(value))))
    return bool(np.all(np.asarray(value) == off))


def _shortest(x: Any) -> Any:
    """A float32 value as the shortest decimal that round-trips (0.7, not 0.699999988)."""
    if isinstance(x, np.floating):
        return float(str(x))
    return x.item() if isinstance(x, np.generic) else x


@jax.tree_util.register_pytree_node_class
class SamplingParams:
    """Sampling parameters: one value for every row, or one value per row.

    Every field is a scalar (or one list) for every row of the batch, or a
    `[B]` array (one list per row). All are pytree leaves, so inside
    `jax.jit` they are traced: new values never recompile; only a change of
    shape does (scalar vs `[B]`, a new `B`, or lists outgrowing their padded
    size, which is rounded up to a power of two). Names and ranges are
    vLLM's.

    The sampler (SEMANTICS steps 2-6):
      temperature: `T >= 0`. `T = 0` is greedy (argmax, lowest index on ties).
      top_k: keep the tokens with fewer than `k` strictly larger logits
        (ties with the k-th value kept). `0` or `-1` is off; `k >= V` is off.
      top_p: keep token `x` iff the probability mass of the tokens strictly
        more probable than `x` is `< p`. Must be in `(0, 1]`; `1` is off.
      min_p: keep token `x` iff `q_x >= min_p * max(q)`. In `[0, 1]`; `0` is off.

    The logits processors (step 1, in this order; see `nucleax.processors`):
      allowed_token_ids: only these ids may be drawn (a list, or one per row).
      bad_words: token-id sequences never to complete (`[[12, 7], [99]]`).
      min_tokens: stop ids are banned until this many tokens are generated.
      logit_bias: `{token_id: bias}`, biases in `[-100, 100]`, added to logits.
      repetition_penalty: `r > 0`, 1 is off: tokens in prompt or output get
        `z / r` (if `z > 0`) or `z * r`.
      frequency_penalty, presence_penalty: in `[-2, 2]`, 0 is off:
        `z -= f * count + q * [count > 0]`, counts over the output only.
      no_repeat_ngram_size: `n >= 0`, 0 is off: never repeat an n-gram of
        prompt plus output.
      dry_multiplier, dry_base, dry_allowed_length, dry_range,
        dry_sequence_breakers: DRY ("don't repeat yourself", llama.cpp /
        koboldcpp): a token that would extend a repeat of `n >=
        allowed_length` context tokens gets `z -= multiplier * base **
        (n - allowed_length)`; matches never cross a breaker id and look back
        `dry_range` tokens (0: the whole context). `dry_multiplier = 0` is off.

    The wider catalogue (stage 3, each off by default; see `nucleax.samplers`):
      top_n_sigma: keep `z >= max(z) - n * std(z)` (Tang et al., 2024);
        negative is off.
      typical_p: locally typical sampling (Meister et al., 2023): keep the
        tokens whose surprise is closest to the entropy, mass `< t` before
        them. In `(0, 1]`; 1 is off.
      epsilon, eta: truncation sampling (Hewitt et al., 2022): keep `q >= e`,
        or `q >= min(h, sqrt(h) * exp(-H))`. In `[0, 1)`; 0 is off.
      xtc_probability, xtc_threshold: exclude top choices (llama.cpp): with
        probability `a` per row and step, of the tokens with `q >= c` (if at
        least two), remove all but the least probable. `a = 0` is off.
      dynatemp_range, dynatemp_exponent: dynamic temperature (llama.cpp): `T`
        moves in `[T - d, T + d]` with the normalised entropy to the power `e`.
        `d = 0` is off.
      mirostat_tau, mirostat_eta: mirostat v2 (Basu et al., 2021), target
        surprise `tau` bits and learning rate `eta`; replaces top-k, typical,
        top-p and min-p on its rows; its state `mu` is carried by the
        decoding loop (or passed as `sample(..., mu=)`). `tau = 0` is off.
      order: the order of stage 3's steps: `"nucleax"` (default), a peer's
        (`"llama.cpp"`: temperature last; `"vllm"`: min-p before top-k/top-p;
        `"hf"`), or a tuple of step names. Static: changing it recompiles.

    Stopping (read by the decoding loop, `nucleax.decode.generate`):
      stop: token-id sequences that end the request when the output ends
        with one (matched on device; encode text with the tokenizer).
      stop_token_ids: ids that end the request, besides the model's EOS ids.
      ignore_eos: if True, the model's EOS ids (`stop_ids=` of `generate`)
        do not end the request.

    Host-known values are validated here and raise `ValueError` / `TypeError`
    naming the field. Traced values cannot be checked; the samplers then use
    the documented fallbacks (see `nucleax` module docs).

    Example:
      >>> import numpy as np, nucleax
      >>> p = nucleax.SamplingParams(temperature=np.array([0.0, 0.7]), top_p=0.9)
      >>> p.batch_size
      2
      >>> nucleax.SamplingParams(temperature=0.7, repetition_penalty=1.2)
      SamplingParams(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.2)
    """

    __slots__ = _FIELDS + ("_on", "_order")

    def __init__(self, temperature: Any = 1.0, top_k: Any = 0, top_p: Any = 1.0,
                 min_p: Any = 0.0, *, repetition_penalty: Any = 1.0,
                 frequency_penalty: Any = 0.0, presence_penalty: Any = 0.0,
                 min_tokens: Any = 0, no_repeat_ngram_size: Any = 0,
                 dry_multiplier: Any = 0.0, dry_base: Any = 1.75, dry_allowed_length: Any = 2,
                 dry_range: Any = 0, top_n_sigma: Any = -1.0, typical_p: Any = 1.0,
                 epsilon: Any = 0.0, eta: Any = 0.0, xtc_probability: Any = 0.0,
                 xtc_threshold: Any = 0.1, dynatemp_range: Any = 0.0,
                 dynatemp_exponent: Any = 1.0, mirostat_tau: Any = 0.0,
                 mirostat_eta: Any = 0.1, ignore_eos: Any = False,
                 logit_bias: Any = None, allowed_token_ids: Any = None, bad_words: Any = None,
                 stop: Any = None, stop_token_ids: Any = None,
                 dry_sequence_breakers: Any = None, order: Any = "nucleax"):
        given = dict(locals())
        for name in _FIELDS:
            object.__setattr__(self, name, self._convert(name, given[name]))
        from .samplers import as_order

        object.__setattr__(self, "_order", as_order(order))
        self._check_batch()
        self._set_on()

    def _set_on(self) -> None:
        """Which processors run: decided on the host, static under jit (the pytree's aux data).

        A processor field is on unless its value is known on the host and off
        in every row; switching one on or off compiles once, changing values
        never does.
        """
        on = []
        for name in PROCESSOR_FIELDS + tuple(f[0] for f in SAMPLER_FIELDS.values()):
            value = getattr(self, name)
            if name in _NUMERIC:
                if not _is_off(value, _NUMERIC[name][2]):
                    on.append(name)
            elif (value[0] if name == "logit_bias" else value).size:
                on.append(name)
        object.__setattr__(self, "_on", tuple(on))

    @staticmethod
    def _convert(name: str, value: Any) -> Any:
        if name in _NUMERIC:
            arr = _as_param(name, value, integer=_NUMERIC[name][1])
            if isinstance(arr, np.ndarray):
                ok, expected = _RANGES[name]
                with np.errstate(invalid="ignore"):
                    _check_range(name, arr, ok(arr), expected)
            return arr
        if name == "ignore_eos":
            return _as_bool(name, value)
        if isinstance(value, tuple) and name == "logit_bias" and len(value) == 2 and all(
                hasattr(v, "shape") for v in value):
            return value  # already packed (ids, biases)
        return _pack(name, value)

    def _check_batch(self) -> None:
        sizes = {n: b for n in _FIELDS if (b := _rows_in(n, getattr(self, n))) is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"per-row parameters must all have the same length B, got {sizes}; "
                             "give every per-row field one value per row")

    # -- pytree protocol: unflatten bypasses validation (leaves may be tracers
    # or placeholders during tree transformations).
    def tree_flatten(self):
        return tuple(getattr(self, n) for n in _FIELDS), (self._on, self._order)

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        for name, value in zip(_FIELDS, children, strict=True):
            object.__setattr__(obj, name, value)
        object.__setattr__(obj, "_on", aux[0])
        object.__setattr__(obj, "_order", aux[1])
        return obj

    @property
    def order(self) -> tuple[str, ...]:
        """The stage-3 order: step names, temperature included (see `nucleax.samplers`)."""
        return self._order

    @property
    def batch_size(self) -> int | None:
        """`B` if any field is per-row, else `None`."""
        for name in _FIELDS:
            b = _rows_in(name, getattr(self, name))
            if b is not None:
                return b
        return None

    def replace(self, **changes: Any) -> SamplingParams:
        """Returns a copy with some fields replaced (and validated)."""
        unknown = set(changes) - set(_FIELDS) - {"order"}
        if unknown:
            raise TypeError(f"unknown SamplingParams field(s) {sorted(unknown)}; "
                            f"expected some of {list(_FIELDS) + ['order']}")
        obj = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(self),
                                           jax.tree_util.tree_leaves(self))
        for name, value in changes.items():
            if name == "order":
                from .samplers import as_order

                object.__setattr__(obj, "_order", as_order(value))
            else:
                object.__setattr__(obj, name, self._convert(name, value))
        obj._check_batch()
        obj._set_on()
        return obj

    def take(self, rows: Any) -> SamplingParams:
        """The parameters of some rows: per-row fields indexed, shared ones kept.

        Example:
          >>> import numpy as np, nucleax
          >>> p = nucleax.SamplingParams(temperature=np.array([0.0, 0.7, 1.0]), top_p=0.9)
          >>> p.take([2, 0])
          SamplingParams(temperature=[1.0, 0.0], top_k=0, top_p=0.9, min_p=0.0)
        """
        idx = np.asarray(rows)
        obj = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(self),
                                           jax.tree_util.tree_leaves(self))
        for name in _FIELDS:
            value = getattr(self, name)
            if _rows_in(name, value) is not None:
                object.__setattr__(obj, name, jax.tree.map(lambda x: x[idx], value))
        return obj

    def processors_on(self) -> tuple[str, ...]:
        """The processor fields that run (not off in every row when the values were set)."""
        return tuple(n for n in self._on if n in PROCESSOR_FIELDS)

    def samplers_on(self) -> tuple[str, ...]:
        """The catalogue samplers that run (`"top_n_sigma"`, `"typical_p"`, `"epsilon"`,
        `"eta"`, `"xtc"`, `"dynatemp"`, `"mirostat"`): those not off in every row."""
        return tuple(s for s, fields in SAMPLER_FIELDS.items() if fields[0] in self._on)

    def sampler_rows(self, batch: int) -> dict[str, jax.Array]:
        """Every catalogue field broadcast to a `[batch]` float32 array, by field name."""
        self.check_batch(batch)
        return {name: jnp.broadcast_to(jnp.asarray(getattr(self, name), jnp.float32), (batch,))
                for fields in SAMPLER_FIELDS.values() for name in fields}

    def processors(self, eos_ids: Any = (), *, extra: Any = None) -> Any:
        """The chain of logits processors these values switch on, then `extra`; None if empty.

        Order (vLLM's): allowed_token_ids, bad_words, min_tokens, logit_bias,
        repetition_penalty, frequency/presence penalties, no_repeat_ngram_size,
        DRY; then the `extra` processors. This is the chain `sample`, `probs`,
        `keep_mask` and `generate` run for `params=self, processors=extra`, so
        its `init` gives the `state=` they take. As in HF transformers, a
        built-in processor both switched on here and given in `extra` is an
        error (it would run twice).

        Args:
          eos_ids: the model's end-of-sequence ids (e.g. `tokenizer.stop_ids`):
            `min_tokens` bans them, with `stop_token_ids`, until enough tokens
            are out (rows with `ignore_eos` keep only `stop_token_ids`).
          extra: a `nucleax.processors.Processor` or a list of them.

        Returns:
          a `nucleax.processors.Processor`, or None when nothing runs.
        """
        from . import processors as pr

        on = set(self.processors_on())
        parts = []
        if "allowed_token_ids" in on:
            parts.append(pr.allowed_from_packed(self.allowed_token_ids))
        if "bad_words" in on:
            parts.append(pr.bad_words_from_packed(self.bad_words))
        if "min_tokens" in on:
            stops = self.stop_ids_per_row(eos_ids)
            if stops.shape[-1]:
                parts.append(pr.min_tokens_from_packed(self.min_tokens, stops))
        if "logit_bias" in on:
            parts.append(pr.bias_from_packed(*self.logit_bias))
        if "repetition_penalty" in on:
            parts.append(pr.repetition_penalty(self.repetition_penalty))
        if on & {"frequency_penalty", "presence_penalty"}:
            parts.append(pr.output_penalties(self.frequency_penalty, self.presence_penalty))
        if "no_repeat_ngram_size" in on:
            parts.append(pr.no_repeat_ngram(self.no_repeat_ngram_size))
        if "dry_multiplier" in on:
            parts.append(pr.dry_from_packed(self.dry_multiplier, self.dry_base,
                                            self.dry_allowed_length, self.dry_range,
                                            self.dry_sequence_breakers))
        if extra is not None:
            extras = pr.as_list(extra)
            for proc in extras:
                twice = on & set(pr.builtin_fields(proc))
                if twice:
                    raise ValueError(
                        f"processors= repeats {sorted(twice)}, which params already switches "
                        "on: it would run twice. processors= runs after the chain params "
                        "builds; pass only your extra processors, or set the field off in "
                        "params to place it yourself")
            parts.extend(extras)
        return pr.chain(*parts) if parts else None

    def stop_ids_per_row(self, eos_ids: Any = ()) -> np.ndarray:
        """The ids that end each request: `stop_token_ids`, plus `eos_ids` unless `ignore_eos`.

        Returns `[S]` (the same for every row) or `[B, S]`, `-1` padded.
        """
        from . import processors as pr

        eos = pr.pack_id_lists("stop_ids", list(eos_ids) if eos_ids is not None else None,
                               allow_empty=True)
        extra, ignore = self.stop_token_ids, self.ignore_eos
        xp = jnp if _is_traced(extra) or _is_traced(ignore) else np
        extra, ignore = xp.asarray(extra, xp.int32), xp.asarray(ignore, bool)
        batch = self.batch_size
        if batch is None and extra.ndim == 1:
            eos_col = xp.where(ignore, -1, xp.asarray(eos, xp.int32))
            return xp.concatenate([extra, eos_col]).astype(xp.int32)
        batch = batch or 1
        extra = xp.broadcast_to(extra, (batch, extra.shape[-1])) if extra.ndim == 1 else extra
        eos_rows = xp.where(xp.broadcast_to(ignore, (batch,))[:, None], -1,
                            xp.broadcast_to(xp.asarray(eos, xp.int32), (batch, eos.shape[0])))
        return xp.concatenate([extra, eos_rows], axis=1).astype(xp.int32)

    def scalars(self) -> dict[str, Any]:
        """The numeric fields and `ignore_eos` as Python values, as typed (0.7, not 0.69999).

        Every one of them must be a scalar here.
        """
        out = {}
        for name in tuple(_NUMERIC) + ("ignore_eos",):
            value = np.asarray(getattr(self, name))
            if value.ndim:
                raise ValueError(f"SamplingParams.{name} must be a scalar here, got shape "
                                 f"{value.shape}; use one SamplingParams per setting")
            out[name] = _shortest(value[()])
        return out

    @classmethod
    def stack(cls, settings: Sequence[SamplingParams]) -> SamplingParams:
        """One row per setting: `[len(settings)]` arrays from scalar settings.

        List fields (bias, bans, stops) must be the same in every setting.
        """
        if not settings:
            raise ValueError("stack needs at least one SamplingParams, got none")
        rows = [s.scalars() for s in settings]
        values = {n: np.array([r[n] for r in rows],
                              bool if n == "ignore_eos" else
                              np.int32 if _NUMERIC[n][1] else np.float32)
                  for n in rows[0]}
        out = cls(**values)
        for name in _LISTS:
            first = getattr(settings[0], name)
            for s in settings[1:]:
                if not jax.tree_util.tree_all(jax.tree.map(
                        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                        getattr(s, name), first)):
                    raise ValueError(f"stack: {name} differs between settings; pass per-row "
                                     f"lists to SamplingParams({name}=[...]) instead")
            object.__setattr__(out, name, first)
        orders = {s.order for s in settings}
        if len(orders) > 1:
            raise ValueError(f"stack: the settings have different orders {sorted(orders)}; "
                             "one batch runs one order (make one batch per order)")
        object.__setattr__(out, "_order", settings[0].order)
        out._check_batch()
        out._set_on()
        return out

    def rows(self, batch: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """temperature, top_k, top_p, min_p broadcast to `[batch]` arrays (f32, i32, f32, f32)."""
        self.check_batch(batch)
        out = []
        for name in _KNOBS:
            dtype = jnp.int32 if name == "top_k" else jnp.float32
            out.append(jnp.broadcast_to(jnp.asarray(getattr(self, name), dtype), (batch,)))
        return tuple(out)

    def check_batch(self, batch: int) -> None:
        """Raises if a per-row field's length is not `batch`."""
        for name in _FIELDS:
            b = _rows_in(name, getattr(self, name))
            if b is not None and b != batch:
                raise ValueError(
                    f"SamplingParams.{name} has {b} values but the logits have {batch} rows; "
                    f"pass one value for every row or exactly {batch} values")

    def __repr__(self) -> str:
        def show(v):
            if isinstance(v, np.generic):
                return repr(_shortest(v))
            if isinstance(v, np.ndarray):
                if v.ndim == 0:
                    return repr(_shortest(v[()]))
                return "[" + ", ".join(repr(_shortest(x)) for x in v.reshape(-1)) + "]" \
                    if v.ndim == 1 else f"<{v.dtype}{list(v.shape)}>"
            if isinstance(v, tuple):
                return "(" + ", ".join(show(x) for x in v) + ")"
            return repr(v)

        parts = []
        for name in _FIELDS:
            value = getattr(self, name)
            if name not in _KNOBS:
                default, _, off = _NUMERIC.get(name, (None, None, None))
                if name in _NUMERIC and _is_off(value, default if off is None else off):
                    continue
                if name == "ignore_eos" and _is_off(value, False):
                    continue
                if name in _LISTS and not (value[0] if name == "logit_bias" else value).size:
                    continue
            parts.append(f"{name}={show(value)}")
        from .samplers import DEFAULT, ORDERS, name_of

        if self._order != DEFAULT:
            name = name_of(self._order)
            parts.append(f"order={name!r}" if name in ORDERS else f"order={self._order!r}")
        return f"SamplingParams({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SamplingParams):
            return NotImplemented
        try:
            a, b = jax.tree_util.tree_leaves(self), jax.tree_util.tree_leaves(other)
            return self._order == other._order and len(a) == len(b) and all(
                np.shape(x) == np.shape(y) and np.array_equal(np.asarray(x), np.asarray(y))
                for x, y in zip(a, b, strict=True))
        except (TypeError, jax.errors.TracerArrayConversionError):
            return self is other

    __hash__ = None  # mutable-array fields: not hashable
