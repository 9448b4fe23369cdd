"""Exact sampling on logits split over a device mesh (batch axis, vocabulary axis, or both).

The logits of a vocabulary-parallel head arrive split over a `model` axis,
and the batch over a `data` axis. The usual way to sample them all-gathers
the whole `[B, V]` array first. These functions instead run nucleax's exact
pipeline on each device's block, with only small per-row quantities crossing
devices (see `nucleax._sharded` for the list): the row maximum, each shard's
`W` largest logits and their ids, partial masses and counts, the chosen id.
They return the same tokens, log-probabilities and distribution as
`nucleax.sample` / `probs` / `keep_mask` on one device with the same keys
(SEMANTICS, Sharding): a row's key depends on its global row index only.

Up to float rounding: the masses are summed shard by shard, so a top-p
boundary, or the draw's cumulative sum, that lands within a few float32 ulps
of the one-device value can fall the other way (as between the one-device
methods). With the vocabulary not split (`vocab_axis=None`) every device runs
the one-device computation on its rows (XLA may still round a reduction over
fewer rows differently, by an ulp).

Example (8 CPU devices: `XLA_FLAGS=--xla_force_host_platform_device_count=8`):

    >>> import jax, numpy as np, nucleax
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> from nucleax.sharding import sample_sharded
    >>> mesh = jax.make_mesh((2, 4), ("data", "model"))          # doctest: +SKIP
    >>> z = np.random.default_rng(0).normal(size=(8, 1000)).astype(np.float32)
    >>> z = jax.device_put(z, NamedSharding(mesh, P("data", "model")))  # doctest: +SKIP
    >>> params = nucleax.SamplingParams(temperature=0.8, top_p=0.9)
    >>> key = jax.random.key(0)
    >>> tokens = sample_sharded(key, z, params, mesh=mesh, batch_axis="data",
    ...                         vocab_axis="model")                # doctest: +SKIP
    >>> bool((tokens == nucleax.sample(key, z, params)).all())    # doctest: +SKIP
    True
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
from jax.sharding import Mesh

from . import _sharded
from ._params import SamplingParams
from ._sample import SampleOutput, _setup
from ._truncation import check_method

__all__ = [
    "CollectiveOp",
    "collectives",
    "dense_impl",
    "keep_mask_sharded",
    "layout",
    "probs_sharded",
    "sample_impl",
    "sample_sharded",
    "shard_model",
]


def _layout(mesh: Any, batch_axis: Any, vocab_axis: Any, method: str) -> _sharded.Layout:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((2, 4), "
                        f"('data', 'model'))), got {type(mesh).__name__}")
    seen: list[str] = []
    for arg, axis in (("batch_axis", batch_axis), ("vocab_axis", vocab_axis)):
        if axis is None:
            continue
        names = axis if isinstance(axis, tuple) else (axis,)
        for name in names:
            if not isinstance(name, str) or name not in mesh.axis_names:
                raise ValueError(f"{arg} must be None or a name of the mesh's axes "
                                 f"{tuple(mesh.axis_names)}, got {axis!r}")
            if name in seen:
                raise ValueError(f"batch_axis and vocab_axis must use different mesh axes, "
                                 f"got {name!r} in both")
            seen.append(name)
    if method == "sort" and vocab_axis is not None:
        raise ValueError("method='sort' sorts whole rows, which a split vocabulary does not "
                         "have on one device; use method='auto' (candidate window, then an "
                         "exact bisection) or 'bisect'")
    return _sharded.Layout(mesh, batch_axis, vocab_axis)


def sample_sharded(key: Any, logits: Any, params: SamplingParams | None = None, *, mesh: Mesh,
                   batch_axis: Any = None, vocab_axis: Any = None, processors: Any = None,
                   state: Any = None, return_logprobs: bool = False, top_n: int = 0,
                   method: str = "auto", window: int = 64) -> jax.Array | SampleOutput:
    """`nucleax.sample` on logits split over `mesh`: the same tokens, no `[B, V]` gather.

    Args:
      key: one PRNG key (row `i` uses `fold_in(key, i)`, `i` the global row
        index) or `[B]` keys, as in `nucleax.sample`.
      logits: `[B, V]` or `[V]`, any float dtype, ideally placed with
        `NamedSharding(mesh, P(batch_axis, vocab_axis))` (other placements are
        resharded first). `B` and `V` need not divide the axis sizes: the
        block is padded with -inf inside (for `V`, JAX cannot place such an
        array split, so it arrives whole on each device and is sliced locally).
      params: `SamplingParams` (scalars or `[B]` per-row values).
      mesh: the `jax.sharding.Mesh` (explicit or auto axis types).
      batch_axis: mesh axis name (or tuple of names) that splits the rows, or None.
      vocab_axis: mesh axis name (or tuple) that splits the vocabulary, or None.
      return_logprobs, top_n: as `nucleax.sample` (then a `SampleOutput`).
      method: `"auto"`/`"fast"` (candidate window of `window` values per
        shard, exact bisection for the rows it cannot decide) or `"bisect"`;
        `"sort"` only without `vocab_axis`.
      window: the static candidate count `W`.
      processors, state: as `nucleax.sample`: the processors `params`
        switches on, then `processors`, run on the global logits first (XLA
        partitions them; the built-in ones need no communication); raw
        log-probabilities and `top_ids` are those of the unprocessed logits.

    Returns:
      int32 `[B]` tokens split over `batch_axis` (a scalar for `[V]` logits),
      or a `SampleOutput`.

    Communication per call, per device, with `b` rows per device, `n`
    vocabulary shards: `b` floats (row max), `n W b` (value, id) pairs (the
    candidates), a few scalars; top-p rows without top-k add `b` floats (the
    row's mass). Rows beyond the window add 32 rounds of `b` counts or masses
    (bisection), `n b` floats and `2 b` ids/logits (the draw over shards).
    """
    check_method(method, window)
    if not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 0:
        raise ValueError(f"top_n must be an int >= 0, got {top_n!r}")
    layout = _layout(mesh, batch_axis, vocab_axis, method)
    params, apply, state = _setup(logits, params, processors, state)
    out = _sharded.sample_output(key, logits, params, state, layout, bool(return_logprobs),
                                 top_n, method, window, apply)
    return SampleOutput(*out) if isinstance(out, tuple) else out


def probs_sharded(logits: Any, params: SamplingParams | None = None, *, mesh: Mesh,
                  batch_axis: Any = None, vocab_axis: Any = None, processors: Any = None,
                  state: Any = None, method: str = "auto", window: int = 64) -> jax.Array:
    """`nucleax.probs` on logits split over `mesh`, returned split the same way.

    Float32 `[B, V]` (or `[V]`); see `sample_sharded` for the arguments. Each
    device normalises its block by the row's total mass (a `[b]` psum).
    """
    check_method(method, window)
    layout = _layout(mesh, batch_axis, vocab_axis, method)
    params, apply, state = _setup(logits, params, processors, state)
    return _sharded.dense_output(logits, params, state, layout, "probs", method, window, apply)


def keep_mask_sharded(logits: Any, params: SamplingParams | None = None, *, mesh: Mesh,
                      batch_axis: Any = None, vocab_axis: Any = None, processors: Any = None,
                      state: Any = None, method: str = "auto", window: int = 64) -> jax.Array:
    """`nucleax.keep_mask` on logits split over `mesh`, returned split the same way."""
    check_method(method, window)
    layout = _layout(mesh, batch_axis, vocab_axis, method)
    params, apply, state = _setup(logits, params, processors, state)
    return _sharded.dense_output(logits, params, state, layout, "mask", method, window, apply)


# ---------------------------------------------------------------------------
# The decoding loop on a mesh: the traced bodies `nucleax.decode` calls per step.


def layout(mesh: Mesh, batch_axis: Any = None, vocab_axis: Any = None, *,
           auto: bool = True) -> _sharded.Layout:
    """A validated, hashable description of a split for `sample_impl` / `dense_impl`.

    With `auto=True` (for a loop whose model XLA partitions, as after
    `Llama.shard`), the mesh's axes are made automatic, so that the sampler's
    placements are constraints XLA can propagate.
    """
    if auto and isinstance(mesh, Mesh):
        mesh = Mesh(mesh.devices, mesh.axis_names,
                    axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))
    return _layout(mesh, batch_axis, vocab_axis, "auto")


def sample_impl(key, logits, params, apply, state, return_logprobs, top_n, method, window, *,
                layout: _sharded.Layout):
    """`nucleax._sample.sample_impl` on a mesh: the traced body of `sample_sharded`.

    Same arguments (`apply` is the processors' `apply` or None, `params` a
    checked `SamplingParams`) plus `layout` (from `layout(...)`); no host
    checks, usable inside any jit (the decoding loop's step).
    """
    out = _sharded.sample_output(key, logits, params, state, layout, bool(return_logprobs),
                                 top_n, method, window, apply)
    return SampleOutput(*out) if isinstance(out, tuple) else out


def dense_impl(logits, params, apply, state, output, method, window, *,
               layout: _sharded.Layout):
    """`nucleax._sample.dense_output` on a mesh (`output` "probs" or "mask")."""
    return _sharded.dense_output(logits, params, state, layout, output, method, window, apply)


def shard_model(model: Any, mesh: Mesh, *, batch_axis: str | None = "data",
                model_axis: str | None = "model") -> Any:
    """Places a model's weights over `mesh` (`model.shard(...)`, e.g. `nucleax.models.Llama`).

    Raises TypeError for a model without a `shard` method (place its weights
    yourself; the sampler only needs the logits).
    """
    shard = getattr(model, "shard", None)
    if shard is None:
        raise TypeError(f"{type(model).__name__} has no shard(mesh, batch_axis=, model_axis=) "
                        "method; place its weights with jax.device_put and NamedSharding, or use "
                        "nucleax.models.Llama")
    return shard(mesh, batch_axis=batch_axis, model_axis=model_axis)


# ---------------------------------------------------------------------------
# Reading communication from compiled HLO (used by tests and benchmarks/sharding.py).

_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+) = (?P<shape>.+?) "
    r"(?P<op>all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute|"
    r"collective-broadcast)(?:-start)?\((?P<args>[^)]*)\)(?P<rest>.*)$")
_ARRAY = re.compile(r"(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


class CollectiveOp(NamedTuple):
    """One collective of a compiled program (sizes per device, in bytes).

    Attributes:
      op: HLO opcode (`all-reduce`, `all-gather`, ...).
      result_bytes: size of its result on one device.
      elements: largest array (in elements) among its results.
      group: devices per replica group.
      scope: the op's `op_name` metadata (named scopes show which stage ran it).
      computation: the HLO computation holding it (loop bodies and `cond`
        branches are separate computations).
    """

    op: str
    result_bytes: int
    elements: int
    group: int
    scope: str
    computation: str


def collectives(hlo_text: str) -> list[CollectiveOp]:
    """The collectives of `jax.jit(f).lower(...).compile().as_text()`.

    Example:
      >>> ops = collectives('%x = f32[8,4]{1,0} all-gather(f32[8,1]{1,0} %y), '
      ...                   'replica_groups={{0,1,2,3}}, dimensions={1}')
      >>> ops[0].op, ops[0].result_bytes, ops[0].group
      ('all-gather', 128, 4)
      >>> collectives("%r = f32[2] all-reduce(f32[2] %a), replica_groups=mesh['x'=2,'y'=4] "
      ...             "{'y'}, to_apply=%add")[0].group
      4
    """
    out = []
    computation = ""
    for line in hlo_text.splitlines():
        head = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and "=" not in line.split("{")[0]:
            computation = head.group(1)
            continue
        m = _COLLECTIVE.match(line)
        if not m:
            continue
        arrays = _ARRAY.findall(m.group("shape"))
        sizes = [(dt, _count(dims)) for dt, dims in arrays]
        group = _group_size(m.group("rest"))
        scope = re.search(r'op_name="([^"]*)"', m.group("rest"))
        out.append(CollectiveOp(m.group("op"), sum(_BYTES.get(dt, 4) * n for dt, n in sizes),
                                max((n for _, n in sizes), default=0), group,
                                scope.group(1) if scope else "", computation))
    return out


def _group_size(attrs: str) -> int:
    """Devices per replica group, from any of XLA's three spellings of `replica_groups`."""
    listed = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
    if listed:
        return len(listed.group(1).split(","))
    iota = re.search(r"replica_groups=\[\d+,(\d+)\]", attrs)
    if iota:
        return int(iota.group(1))
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
    if mesh:
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", mesh.group(1)))
        n = 1
        for axis in re.findall(r"'([^']+)'", mesh.group(2)):
            n *= int(sizes.get(axis, 1))
        return n
    return 1


def _count(dims: str) -> int:
    n = 1
    for d in dims.split(","):
        if d:
            n *= int(d)
    return n
