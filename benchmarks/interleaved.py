"""nucleax's `sample` against the `jnp.max` floor, the two calls interleaved in one process.

Usage: python benchmarks/interleaved.py [--batch 8 64] [--vocab 151936] [--dtype float32 bfloat16]
           [--workload zipf wide] [--mix greedy T T+k50] [--rounds 5] [--calls 20] [--json FILE]

`nucleax bench sampling` times each callable on its own, one after the other. On a VM whose
speed drifts for seconds at a time (this project's 2-core machine: a cell can read 2-3x slower in
one run than in the next), that ratio carries the drift. Here every round alternates one call of
each, `--calls` times, and reports the ratio of the two medians: both sides see the same moment.
The ratio of each round is kept; the summary is their median. Before/after comparisons run this
script twice, once with `PYTHONPATH` pointing at the other tree.

Read its ratios as an A/B, not against the targets: the floor, called right after the sampler,
reads slower than alone (at B=64, V=151936 on this machine 1.5-2 ms against 1.0-1.3 ms), so the
ratios come out lower than `nucleax bench sampling`'s.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import nucleax as nx
from nucleax.apps import bench


def _ratio_rounds(fn, floor, rounds: int, calls: int) -> tuple[list[float], float]:
    jax.block_until_ready(fn())
    jax.block_until_ready(floor())
    ratios, ms = [], []
    for _ in range(rounds):
        a, b = [], []
        for _ in range(calls):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            t1 = time.perf_counter()
            jax.block_until_ready(floor())
            t2 = time.perf_counter()
            a.append(t1 - t0)
            b.append(t2 - t1)
        ratios.append(float(np.median(a) / np.median(b)))
        ms.append(float(np.median(a)) * 1e3)
    return ratios, float(np.median(ms))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--vocab", type=int, nargs="+", default=[151936])
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"],
                    choices=["float32", "bfloat16"])
    ap.add_argument("--workload", nargs="+", default=["zipf", "wide"], choices=bench.WORKLOADS)
    ap.add_argument("--mix", nargs="+", default=["greedy", "T", "T+k50", "T+k50+p0.9"],
                    choices=[*bench.MIXES, bench.MIXED])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()

    key = jax.random.key(0)
    sample = jax.jit(lambda key, z, params: nx.sample(key, z, params))
    floor = jax.jit(lambda z: jnp.max(z, axis=-1))
    records = []
    print(f"{'B':>3} {'V':>7} {'dtype':>9} {'workload':>9} {'mix':>11} {'ms':>8} {'x floor':>8}"
          "   rounds")
    for b in args.batch:
        for v in args.vocab:
            for dtype in args.dtype:
                for kind in args.workload:
                    for name, z in bench.workloads(kind, b, v, jnp.dtype(dtype)):
                        for mix in args.mix:
                            params = bench.row_params(mix, b)
                            ratios, ms = _ratio_rounds(
                                lambda z=z, params=params: sample(key, z, params),
                                lambda z=z: floor(z), args.rounds, args.calls)
                            ratio = float(np.median(ratios))
                            print(f"{b:>3} {v:>7} {dtype:>9} {name:>9} {mix:>11} {ms:8.3f} "
                                  f"{ratio:7.2f}x   " + " ".join(f"{r:.2f}" for r in ratios))
                            records.append({**bench.machine(), "B": b, "V": v, "dtype": dtype,
                                            "workload": name, "mix": mix, "nucleax_ms": ms,
                                            "x_floor": ratio, "x_floor_rounds": ratios})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
