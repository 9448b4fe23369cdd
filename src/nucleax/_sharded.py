"""Private: the sampling pipeline on logits split over a mesh (`nucleax.sharding`).

Each device holds a `[b, v]` block of the logits (`b = B / batch shards`,
`v = V / vocabulary shards`, padded with -inf when V does not divide). The
stages are those of the one-device kernel (`nucleax._rows`, `._truncation`,
`._draw`), run on the local block, with only small per-row quantities
crossing the vocabulary axis:

- cleaning: the row maximum (`pmax`, `[b]`);
- thresholds: every shard's `W` largest values and their ids (`all_gather`,
  `[b, shards * W]`), from which every shard reads the row's global `W` largest
  values, exactly (each of them is among its own shard's `W` largest);
  the exact fallbacks (top-k beyond the window, wide nuclei) bisect with
  `psum`-ed counts and masses (`[b]` per step, 32 steps);
- the draw: the same inverse CDF in global vocabulary order, over the window
  when it holds every survivor (no communication), else per-shard masses
  (`all_gather`, `[b, shards]`), the shard the row's target falls in, a local
  draw there, and a `psum` of the chosen id (`[b]`).

Collectives under `jax.named_scope("nx_exact")` run only when some row needs
the exact fallback; the benchmark reads the scopes from the compiled HLO.
Every `lax.cond` predicate is reduced over all the mesh axes first, so all
devices take the same branch.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ._draw import _block_size, _first_crossing, locate_in_blocks
from ._keys import row_keys
from ._rows import NEG_INF, Prepared, as_batch, blocks
from ._truncation import (
    bisect_uint32,
    combine,
    key_to_float,
    ordered_key,
    top_k_from_window,
    top_p_from_window,
    window_top_k,
)

_TINY = np.float32(np.finfo(np.float32).tiny)
EXACT = "nx_exact"  # named scope of the collectives that only the exact fallbacks run


class Comm(NamedTuple):
    """Where this shard sits and how to talk to the others (static)."""

    vocab: Any  # vocabulary axis name (or tuple of names), None if not split
    axes: tuple  # the batch axes (predicates are reduced over them)
    width: int  # local vocabulary width v (padded)
    vocab_size: int  # the real V

    def vsum(self, x):
        return lax.psum(x, self.vocab) if self.vocab else x

    def vmax(self, x):
        return lax.pmax(x, self.vocab) if self.vocab else x

    def vmin(self, x):
        return lax.pmin(x, self.vocab) if self.vocab else x

    def gather(self, x):
        """`[b, n]` per shard -> `[b, shards * n]`, in shard (vocabulary) order."""
        return lax.all_gather(x, self.vocab, axis=1, tiled=True) if self.vocab else x

    def offset(self):
        """Global id of this shard's first column."""
        return lax.axis_index(self.vocab).astype(jnp.int32) * self.width if self.vocab else 0

    def anywhere(self, x):
        """True on every device iff `x` is True for some row anywhere on the mesh."""
        hit = jnp.any(x).astype(jnp.int32)
        return (lax.pmax(hit, self.axes) if self.axes else hit) > 0

    def everywhere(self, x):
        return ~self.anywhere(~x)


def prepare(z, t, k, p, m, comm: Comm) -> Prepared:
    """`Prepared` for a local block: cleaning as in `nucleax._rows`, global row max.

    The per-row parameter decoding (greedy rows, safe temperature, min-p
    threshold) is `Prepared`'s own, run on the global row maxima (a `[b, 1]`
    stand-in row); the local block is then cleaned with the same rule.
    """
    no_nan = jnp.where(jnp.isnan(z), NEG_INF, z)
    top = comm.vmax(jnp.max(no_nan, axis=-1))
    r = Prepared(top[:, None], t, k, p, m)
    has_inf = top == jnp.inf
    r.z = jnp.where(has_inf[:, None], jnp.where(no_nan == jnp.inf, 0.0, NEG_INF), no_nan) + 0.0
    r.k_on = (k > 0) & (k < comm.vocab_size)
    return r


def _fill_in(comm: Comm, undecided, exact, current):
    """`exact()` where `undecided`, computed only if some row anywhere needs it."""
    def run():
        with jax.named_scope(EXACT):
            return jnp.where(undecided, exact(), current)
    return lax.cond(comm.anywhere(undecided), run, lambda: current)


def _global_top(vals, ids, width: int, comm: Comm):
    """The `width` largest of every shard's candidates (descending; ties: lowest id)."""
    if comm.vocab is None:
        return vals[:, :width], ids[:, :width]
    vals, ids = comm.gather(vals), comm.gather(ids + comm.offset())
    best, pos = lax.top_k(vals, width)
    return best, jnp.take_along_axis(ids, pos, axis=-1)


def window(r: Prepared, width: int, comm: Comm):
    """`(local, global_values)`: this shard's `W` largest logits `(values, local ids)`
    `[b, min(W, v)]`, and the row's `W` largest values `[b, W]` (only values cross)."""
    local = window_top_k(r.z, min(width, r.z.shape[-1]))
    if comm.vocab is None:
        return local, local[0][:, :width]
    return local, lax.top_k(comm.gather(local[0]), width)[0]


def top_n(z, n: int, comm: Comm):
    """`lax.top_k(z_row, n)` of the global rows: values and ids (ties: lowest id)."""
    vals, ids = lax.top_k(z, min(n, z.shape[-1]))
    return _global_top(vals, ids.astype(jnp.int32), n, comm)


def total_mass(r: Prepared, tau, comm: Comm):
    return comm.vsum(jnp.sum(r.exp_weights(r.z, tau), axis=-1))


def _mass_limit(r: Prepared, total_k):
    """`p * total_k`, floored at the smallest normal float32 (as `nucleax._truncation`):
    a subnormal product, flushed to zero, would otherwise drop the top token too."""
    return jnp.maximum(r.p * total_k, _TINY)


def _bisect_top_k(r: Prepared, comm: Comm):
    keys = ordered_key(r.z)
    count = lambda t: comm.vsum(jnp.sum(keys > t[:, None], axis=-1, dtype=jnp.int32))  # noqa: E731
    return key_to_float(bisect_uint32(lambda t: count(t) < r.k, r.z.shape[0]))


def _bisect_top_p(r: Prepared, tau_k, total_k, comm: Comm):
    keys = ordered_key(r.z)
    w = r.exp_weights(r.z, tau_k)
    limit = _mass_limit(r, total_k)

    def pred(t):
        return comm.vsum(jnp.sum(jnp.where(keys > t[:, None], w, 0.0), axis=-1)) < limit

    return key_to_float(bisect_uint32(pred, r.z.shape[0]))


def threshold(r: Prepared, method: str, width: int, comm: Comm):
    """Per-row `tau`, and `(local window, global window values)` (None for `bisect`).

    The same decisions as `nucleax._truncation` (window, then the exact
    bisection for rows the window cannot decide), with global counts/masses.
    """
    batch = r.z.shape[0]
    live = ~r.greedy
    k_on, p_on = r.k_on & live, r.p_on & live
    vocab = comm.vocab_size
    if method != "bisect":
        width = min(width, vocab)
        wl = min(width, r.z.shape[-1])
        empty = ((jnp.full((batch, wl), NEG_INF, jnp.float32), jnp.zeros((batch, wl), jnp.int32)),
                 jnp.full((batch, width), NEG_INF, jnp.float32))
        local, vals = lax.cond(comm.anywhere(k_on | p_on), lambda: window(r, width, comm),
                               lambda: empty)
        tau_k, undecided_k = top_k_from_window(r, vals)
    else:
        vals = None
        tau_k, undecided_k = jnp.full((batch,), NEG_INF, jnp.float32), r.k_on
    tau_k = _fill_in(comm, undecided_k & live, lambda: _bisect_top_k(r, comm), tau_k)

    if vals is not None:
        w = r.exp_weights(vals, tau_k)
        window_mass = jnp.sum(w, axis=-1)
        # The full row's mass is needed whenever top-k does not fit in the window
        # (in particular for every top-p row without top-k): one [b] psum.
        total_k = lax.cond(comm.anywhere(p_on & ~(vals[:, -1] < tau_k)),
                           lambda: jnp.where(p_on & ~(vals[:, -1] < tau_k),
                                             total_mass(r, tau_k, comm), window_mass),
                           lambda: window_mass)
        tau_p, _ = top_p_from_window(r, vals, tau_k, total_k)
        last = vals[:, -1]
        undecided_p = (r.p_on & (jnp.cumsum(w, axis=-1)[:, -1] < _mass_limit(r, total_k))
                       & (last >= tau_k) & (last >= r.tau_m) & (width < vocab))
    else:
        total_k = lax.cond(comm.anywhere(p_on), lambda: total_mass(r, tau_k, comm),
                           lambda: jnp.ones((batch,), jnp.float32))
        tau_p, undecided_p = jnp.full((batch,), NEG_INF, jnp.float32), r.p_on
    tau_p = _fill_in(comm, undecided_p & live, lambda: _bisect_top_p(r, tau_k, total_k, comm),
                     tau_p)
    return combine(r, tau_k, tau_p), (None if vals is None else (local, vals))


def _pick_shard(mass, u, comm: Comm):
    """Inverse CDF over shards: `(mine, target, total)`.

    `mass` `[b]` is this shard's survivors' mass; `total` the row's; the
    row's target `u * total` falls in the first shard whose cumulative mass
    exceeds it (`mine` on that shard), at `target` inside it.
    """
    shard_mass = comm.gather(mass[:, None])  # [b, shards]
    total = jnp.sum(shard_mass, axis=-1)
    target = u * total
    cum = jnp.cumsum(shard_mass, axis=-1)
    s = _first_crossing(cum, shard_mass, target)
    target = target - jnp.take_along_axis(cum - shard_mass, s[:, None], axis=-1)[:, 0]
    mine = s == (lax.axis_index(comm.vocab) if comm.vocab else 0)
    return mine, target, total


def _chosen(mine, tokens, z_tok, comm: Comm):
    """The chosen shard's global token id and its logit, on every shard."""
    if comm.vocab is None:
        return tokens, z_tok
    tokens = comm.vsum(jnp.where(mine, tokens + comm.offset(), 0))
    return tokens, comm.vsum(jnp.where(mine, z_tok, 0.0))


def _draw_full(r: Prepared, tau, u, comm: Comm):
    """Over the whole row: pick the shard, then the two-level draw of `nucleax._draw`."""
    size = _block_size(r.z.shape[-1])
    zb = blocks(r.z, size, NEG_INF)
    block_sum = jnp.sum(r.exp_weights(zb, tau), axis=-1)
    mine, target, total = _pick_shard(jnp.sum(block_sum, axis=-1), u, comm)
    b, j, zsel = locate_in_blocks(r, tau, zb, block_sum, target)
    tokens = (b * size + j).astype(jnp.int32)
    z_tok = jnp.take_along_axis(zsel, j[:, None], axis=-1)[:, 0]
    return *_chosen(mine, tokens, z_tok, comm), total


def _draw_window(r: Prepared, tau, u, vals, ids, comm: Comm):
    """Over each shard's window (every survivor is in one): as `nucleax._draw`'s window draw."""
    order = jnp.argsort(ids, axis=-1)
    ids = jnp.take_along_axis(ids, order, axis=-1)
    vals = jnp.take_along_axis(vals, order, axis=-1)
    w = r.exp_weights(vals, tau)
    mine, target, total = _pick_shard(jnp.sum(w, axis=-1), u, comm)
    j = _first_crossing(jnp.cumsum(w, axis=-1), w, target)[:, None]
    tokens = jnp.take_along_axis(ids, j, axis=-1)[:, 0].astype(jnp.int32)
    z_tok = jnp.take_along_axis(vals, j, axis=-1)[:, 0]
    return *_chosen(mine, tokens, z_tok, comm), total


def draw(r: Prepared, tau, u, win, comm: Comm):
    """As `nucleax._draw.draw`, returning `(tokens, z_token, total)`.

    One inverse CDF in global vocabulary order: shard by shard, then inside
    the chosen shard, over its window when the global window holds every
    survivor (each shard's survivors are then in its own window), else over
    its whole block.
    """
    tau = jnp.where(r.greedy, r.zmax, tau)
    u = jnp.where(r.greedy, 0.0, u)

    def full_row():
        with jax.named_scope(EXACT):
            return _draw_full(r, tau, u, comm)

    if win is None:
        return full_row()
    (local_vals, local_ids), vals = win
    inside = (tau > vals[:, -1]) & (vals[:, 0] > NEG_INF)
    return lax.cond(comm.everywhere(inside),
                    lambda: _draw_window(r, tau, u, local_vals, local_ids, comm), full_row)


def logprobs(r: Prepared, tau, tokens, z_tok, total, n: int, raw: Prepared | None,
             comm: Comm):
    """`(processed, raw)` log-probabilities of the tokens and of the top-n (as `_sample`)."""
    log_total = jnp.log(jnp.where(r.greedy, 1.0, total))
    src = r if raw is None else raw
    # log-sum-exp shifted by the row max, as `_sample`: precise for huge logits
    log_norm = jnp.log(comm.vsum(jnp.sum(jnp.exp(src.z - src.zmax[:, None]), axis=-1)))
    zero, minus_inf = jnp.float32(0.0), jnp.float32(-jnp.inf)

    def logps(zi, zi_raw, ids):
        proc = r.log_weights(zi, tau) - log_total[:, None]  # the one safe weight function
        proc = jnp.where(r.greedy[:, None], jnp.where(ids == tokens[:, None], zero, minus_inf),
                         proc)
        raw_lp = (zi_raw - src.zmax[:, None]) - log_norm[:, None]
        return proc, jnp.where(src.valid[:, None] & (zi_raw > NEG_INF), raw_lp, minus_inf)

    def lookup(z, ids):  # z[row, ids] for global ids [b, n], from whichever shard holds them
        local = ids - comm.offset()
        ok = (local >= 0) & (local < comm.width)
        got = jnp.take_along_axis(z, jnp.clip(local, 0, comm.width - 1), axis=-1)
        return comm.vsum(jnp.where(ok, got, 0.0))

    z_tok_raw = z_tok if raw is None else lookup(raw.z, tokens[:, None])[:, 0]
    proc, rawlp = logps(z_tok[:, None], z_tok_raw[:, None], tokens[:, None])
    if n:
        top_vals, top_ids = top_n(src.z, n, comm)
        z_top = top_vals if raw is None else lookup(r.z, top_ids)
        top_proc, top_raw = logps(z_top, top_vals, top_ids)
    else:
        top_ids = jnp.zeros((tokens.shape[0], 0), jnp.int32)
        top_proc = top_raw = jnp.zeros((tokens.shape[0], 0), jnp.float32)
    return proc[:, 0], rawlp[:, 0], top_ids, top_proc, top_raw


def dense(r: Prepared, tau, kind: str, comm: Comm):
    """The local `[b, v]` block of `probs` (kind "probs") or `keep_mask` ("mask")."""
    local_max = jnp.max(r.z, axis=-1)
    first = jnp.argmax(r.z, axis=-1).astype(jnp.int32) + comm.offset()
    top = jnp.where(r.valid, r.zmax, NEG_INF)  # the cleaned row's global maximum
    big = jnp.iinfo(jnp.int32).max
    argmax = comm.vmin(jnp.where(local_max == top, first, big))
    ids = jnp.arange(r.z.shape[-1], dtype=jnp.int32)[None, :] + comm.offset()
    onehot = ids == argmax[:, None]
    if kind == "mask":
        alive = (r.z >= tau[:, None]) & (r.z > NEG_INF)
        return jnp.where(r.greedy[:, None], onehot, alive)
    w = r.exp_weights(r.z, tau)
    w = w / comm.vsum(jnp.sum(w, axis=-1, keepdims=True))
    return jnp.where(r.greedy[:, None], onehot.astype(jnp.float32), w)


# ---------------------------------------------------------------------------
# Placement: padding to the mesh, shard_map, unpadding.


class Layout(NamedTuple):
    """Static description of how a call splits its `[B, V]` logits over the mesh."""

    mesh: Any
    batch_axis: Any
    vocab_axis: Any

    def size(self, axis) -> int:
        if axis is None:
            return 1
        names = axis if isinstance(axis, tuple) else (axis,)
        out = 1
        for name in names:
            out *= self.mesh.shape[name]
        return out

    @property
    def axes(self) -> tuple:
        out = ()
        for axis in (self.batch_axis, self.vocab_axis):
            if axis is not None:
                out += axis if isinstance(axis, tuple) else (axis,)
        return out

    @property
    def explicit(self) -> bool:
        return all(t == jax.sharding.AxisType.Explicit for t in self.mesh.axis_types)

    def place(self, x, spec):
        sharding = NamedSharding(self.mesh, spec)
        if self.explicit:
            return jax.sharding.reshard(x, sharding)
        return lax.with_sharding_constraint(x, sharding)

    def apply(self, apply, state, z):
        """`apply(state, z)` (the processors) on the global `[B, V]` logits, partitioned by XLA.

        On an explicit mesh the processors run with automatic axes: their
        scatters and gathers need no sharding annotations, and XLA keeps them
        local where the logits allow it (a per-token bias, a ban list).
        """
        def run(z):
            return apply(state, z).astype(jnp.float32)

        if not self.explicit or z.shape[-1] % self.size(self.vocab_axis):
            return run(z)
        spec = P(self.batch_axis if z.shape[0] % self.size(self.batch_axis) == 0 else None,
                 self.vocab_axis)
        return jax.sharding.auto_axes(run, out_sharding=NamedSharding(self.mesh, spec))(
            self.place(z, spec))


def _pad_to(x, axis: int, multiple: int, fill):
    size = x.shape[axis]
    extra = -size % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=fill)


def refuse_catalogue(params) -> None:
    """Sharded sampling runs the fast path only: the four knobs in the default order."""
    from ._catalogue import general

    if general(params):
        on = list(params.samplers_on())
        raise NotImplementedError(
            "sharded sampling (mesh=) supports temperature, top_k, top_p and min_p in the "
            f"default order; got samplers {on} and order {params.order}. Gather the logits "
            "and sample on one device (drop mesh=), or turn those samplers off")


def _inputs(layout: Layout, logits, params, apply, state, keep_raw: bool):
    """Validated, processed, padded and placed inputs: (zs, rows, B, V, single).

    `zs` is `[processed]`, or `[processed, raw]` when `keep_raw` and a
    processor changed the logits (raw log-probabilities need both).
    """
    z, single = as_batch(logits)
    batch, vocab = z.shape
    refuse_catalogue(params)
    rows = params.rows(batch)
    nb, nv = layout.size(layout.batch_axis), layout.size(layout.vocab_axis)
    zspec = P(layout.batch_axis, layout.vocab_axis)
    zs = [z]
    if apply is not None:
        zs = [layout.apply(apply, state, z)] + ([z] if keep_raw else [])
    zs = [layout.place(_pad_to(_pad_to(x, 0, nb, NEG_INF), 1, nv, NEG_INF), zspec) for x in zs]
    fills = (1.0, 0, 1.0, 0.0)
    rows = tuple(layout.place(_pad_to(x, 0, nb, f), P(layout.batch_axis))
                 for x, f in zip(rows, fills, strict=True))
    return zs, rows, batch, vocab, single


def _comm(layout: Layout, vocab: int) -> Comm:
    """Collectives only over axes of size > 1; predicates only over the batch axis.

    A `cond` predicate is a function of quantities every vocabulary shard of a
    row already agrees on (gathered values, row parameters), so reducing it
    over the batch axis makes it the same on every device, and the whole
    batch takes one branch, as on one device.
    """
    nb, nv = layout.size(layout.batch_axis), layout.size(layout.vocab_axis)
    batch = layout.batch_axis if nb > 1 else None
    names = () if batch is None else batch if isinstance(batch, tuple) else (batch,)
    return Comm(layout.vocab_axis if nv > 1 else None, names, -(-vocab // nv), vocab)


def _out(layout: Layout, x, batch: int, vocab: int | None, single: bool):
    """Drops the padding. A padded dimension cannot stay split (JAX places only
    dimensions that divide the mesh), so it is first gathered: `[B]` rows, or,
    for `probs` / `keep_mask` with V not dividing the vocabulary shards, the output."""
    spec = [layout.batch_axis, layout.vocab_axis if vocab is not None else None][:x.ndim]
    cut = [batch, vocab][:x.ndim]
    if any(c is not None and c != n for c, n in zip(cut, x.shape, strict=True)):
        spec = [None if c is not None and c != n else a
                for a, c, n in zip(spec, cut, x.shape, strict=True)]
        x = layout.place(x, P(*spec))
        x = x[:batch, :vocab] if x.ndim == 2 else x[:batch]
    return x[0] if single else x


@functools.partial(jax.jit, static_argnames=("layout", "kind", "method", "window", "apply"))
def dense_output(logits, params, state, layout: Layout, kind: str, method: str, window: int,
                 apply):
    """`probs` / `keep_mask` on a mesh; the result keeps the logits' placement."""
    (z,), rows, batch, vocab, single = _inputs(layout, logits, params, apply, state, False)
    comm = _comm(layout, vocab)

    def body(z, t, k, p, m):
        r = prepare(z, t, k, p, m, comm)
        tau, _ = threshold(r, method, window, comm)
        return dense(r, tau, kind, comm)

    spec = P(layout.batch_axis, layout.vocab_axis)
    row = P(layout.batch_axis)
    out = jax.shard_map(body, mesh=layout.mesh, in_specs=(spec, row, row, row, row),
                        out_specs=spec, check_vma=False)(z, *rows)
    return _out(layout, out, batch, vocab, single)


@functools.partial(jax.jit, static_argnames=("layout", "return_logprobs", "top_n", "method",
                                             "window", "apply"))
def sample_output(key, logits, params, state, layout: Layout, return_logprobs: bool,
                  top_n: int, method: str, window: int, apply):
    """`sample` on a mesh: tokens, or the fields of a `SampleOutput` (a tuple)."""
    extras = bool(return_logprobs or top_n)
    zs, rows, batch, vocab, single = _inputs(layout, logits, params, apply, state, extras)
    comm = _comm(layout, vocab)
    keys = row_keys(key, batch, "the logits' rows")
    u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)
    u = layout.place(_pad_to(u, 0, layout.size(layout.batch_axis), 0.0), P(layout.batch_axis))
    n = min(top_n, vocab)

    def body(u, t, k, p, m, z, raw=None):
        r = prepare(z, t, k, p, m, comm)
        tau, win = threshold(r, method, window, comm)
        tokens, z_tok, total = draw(r, tau, u, win, comm)
        if not extras:
            return tokens
        r_raw = None if raw is None else prepare(raw, t, k, p, m, comm)
        return (tokens, *logprobs(r, tau, tokens, z_tok, total, n, r_raw, comm), r.valid)

    row = P(layout.batch_axis)
    spec = P(layout.batch_axis, layout.vocab_axis)
    in_specs = (row,) * 5 + (spec,) * len(zs)
    out_specs = (row,) * 7 if extras else row
    out = jax.shard_map(body, mesh=layout.mesh, in_specs=in_specs, out_specs=out_specs,
                        check_vma=False)(
        u, *rows, *zs)
    if not extras:
        return _out(layout, out, batch, None, single)
    tokens, proc, raw_lp, top_ids, top_proc, top_raw, valid = (_out(layout, x, batch, None, single)
                                                              for x in out)
    return tokens, proc, raw_lp, valid, top_ids, top_proc, top_raw
