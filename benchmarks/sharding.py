"""Sharded sampling: bytes crossing devices per step (read from compiled HLO), and step times.

Compares `nucleax.sharding.sample_sharded` on logits split over a mesh's
vocabulary axis with the usual way, an all-gather of the `[B, V]` logits
followed by one-device sampling. Bytes come from the collectives of the
compiled step (`nucleax.sharding.collectives`), per device, as a ring
algorithm sends them: an all-gather of a result of R bytes over n devices
sends `(n - 1) / n * R`, an all-reduce of S bytes `2 (n - 1) / n * S`.

- common case: every collective except those under the `nx_exact` scope
  (the exact fallbacks), i.e. rows whose survivors fit in the candidate
  window (narrow nuclei, top-k <= W);
- fallback bound: all collectives, those inside the bisection loop counted
  32 times (its fixed trip count), all branches taken.

Timings run on simulated CPU devices (`--xla_force_host_platform_device_count`),
which share this machine's cores: they show that the sharded step runs and
what it costs in compute here, not the speed of a real interconnect.

    python benchmarks/sharding.py                        # grid, JSON to benchmarks/results
    python benchmarks/sharding.py --batch 64 --vocab 151936 --no-time
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import nucleax as nx  # noqa: E402
from nucleax.apps.bench import llm_like_logits, machine, measure, write_json  # noqa: E402
from nucleax.sharding import collectives, sample_sharded  # noqa: E402

BISECT_STEPS = 32  # nucleax._truncation.bisect_uint32 runs a fixed 32 steps


def sent_bytes(op) -> float:
    """Bytes one device sends for a collective (ring algorithms)."""
    n = op.group
    if n <= 1:
        return 0.0
    if op.op == "all-reduce":
        return 2 * (n - 1) / n * op.result_bytes
    if op.op in ("all-gather", "all-to-all"):
        return (n - 1) / n * op.result_bytes
    if op.op == "reduce-scatter":
        return (n - 1) * op.result_bytes
    return float(op.result_bytes)  # collective-permute, broadcast


def traffic(hlo: str) -> dict:
    ops = collectives(hlo)
    common = [op for op in ops if "nx_exact" not in op.scope]
    exact = [op for op in ops if "nx_exact" in op.scope]
    looped = [op for op in exact if "while" in op.scope or "scan" in op.scope]
    return {"common_bytes": sum(map(sent_bytes, common)),
            "bound_bytes": sum(map(sent_bytes, ops))
            + (BISECT_STEPS - 1) * sum(map(sent_bytes, looped)),
            "largest_elements": max((op.elements for op in ops), default=0),
            "collectives": len(ops)}


def programs(mesh, batch_axis, vocab_axis, params, return_logprobs=False):
    """The sharded step and the all-gather baseline, as jitted functions of (key, logits)."""
    def sharded(key, z):
        return sample_sharded(key, z, params, mesh=mesh, batch_axis=batch_axis,
                              vocab_axis=vocab_axis, return_logprobs=return_logprobs)

    gathered = NamedSharding(mesh, P(batch_axis, None))

    def baseline(key, z):
        z = jax.sharding.reshard(z, gathered)  # the all-gather every serving stack does
        if batch_axis is None:
            return nx.sample(key, z, params, return_logprobs=return_logprobs)
        keys = jax.sharding.reshard(jax.random.split(key, z.shape[0]),
                                    NamedSharding(mesh, P(batch_axis)))
        return jax.shard_map(lambda k, z: nx.sample(k, z, params), mesh=mesh,
                             in_specs=(P(batch_axis), P(batch_axis, None)),
                             out_specs=P(batch_axis), check_vma=False)(keys, z)

    return jax.jit(sharded), jax.jit(baseline)


def run_one(args, batch: int, vocab: int, shape: tuple[int, int]) -> dict:
    mesh = jax.make_mesh(shape, ("data", "model"))
    batch_axis = "data" if shape[0] > 1 else None
    spec = NamedSharding(mesh, P(batch_axis, "model"))
    params = nx.SamplingParams(0.7, top_p=0.9)  # the common case: a narrow nucleus
    sharded, baseline = programs(mesh, batch_axis, "model", params)
    key = jax.random.key(0)
    shaped = jax.ShapeDtypeStruct((batch, vocab), jnp.float32, sharding=spec)
    rec = {"B": batch, "V": vocab, "mesh": f"{shape[0]}x{shape[1]}", "vocab_shards": shape[1],
           "window": 64, "mix": "T0.7+p0.9"}
    mine = traffic(sharded.lower(key, shaped).compile().as_text())
    base = traffic(baseline.lower(key, shaped).compile().as_text())
    rec.update({f"sharded_{k}": v for k, v in mine.items()})
    rec.update({f"allgather_{k}": v for k, v in base.items()})
    rec["ratio_common"] = base["common_bytes"] / max(mine["common_bytes"], 1)
    rec["ratio_bound"] = base["common_bytes"] / max(mine["bound_bytes"], 1)
    if args.time:
        z = jax.device_put(llm_like_logits(batch, vocab, jnp.float32), spec)
        timed = [("sharded", sharded)]
        if batch * vocab <= args.max_baseline_elements:
            timed.append(("allgather", baseline))
        for name, fn in timed:
            m = measure(fn, (key, z), args.reps, args.budget)
            rec[f"{name}_ms"], rec[f"{name}_compile_s"] = m["median_ms"], m["compile_s"]
        tokens = sharded(key, z)
        same = np.array_equal(tokens, nx.sample(key, np.asarray(z), params))
        rec["same_tokens_as_one_device"] = bool(same)
        del z
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 64, 256])
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 151936, 262144])
    ap.add_argument("--mesh", nargs="+", default=["1x8", "2x4"],
                    help="data x model mesh shapes (8 devices)")
    ap.add_argument("--no-time", dest="time", action="store_false",
                    help="bytes only (compile, do not run)")
    ap.add_argument("--max-baseline-elements", type=int, default=64 * 262144,
                    help="time the all-gather baseline only where B*V is at most this (it "
                         "holds the whole batch on each of the 8 simulated devices)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--json", default="benchmarks/results/sharding.json")
    args = ap.parse_args(argv)
    info = machine() | {"devices": jax.device_count(), "xla_flags": os.environ["XLA_FLAGS"],
                        "load_average_at_start": os.getloadavg()[0]}
    print("#", info)
    cols = ("B", "V", "mesh", "sharded_common_bytes", "sharded_bound_bytes",
            "allgather_common_bytes", "ratio_common", "ratio_bound", "sharded_ms", "allgather_ms")
    print(" ".join(f"{c:>14}" for c in cols))
    records = []
    for shape in args.mesh:
        shape = tuple(int(x) for x in shape.split("x"))
        for vocab in args.vocab:
            for batch in args.batch:
                rec = run_one(args, batch, vocab, shape)
                records.append(rec)
                print(" ".join(f"{_fmt(rec.get(c, '-')):>14}" for c in cols), flush=True)
    write_json([{"machine": info}] + records, args.json)
    return 0


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if x < 1e4 else f"{x:.4g}"
    return str(x)


if __name__ == "__main__":
    sys.exit(main())
