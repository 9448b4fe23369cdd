"""Sampling-only time with the serving set of logits processors on, beside the same mix without.

Usage: python benchmarks/processors.py [--batch 64] [--vocab 151936] [--reps 20] [--json FILE]

Every case samples `[B, V]` float32 logits (Zipf-like, as `nucleax bench sampling`) under jit with
the state of the processors built from a 64-token prompt and 32 generated tokens, and reports the
median time and its ratio to the `jnp.max` floor measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date

import jax
import jax.numpy as jnp
import numpy as np

import nucleax as nx
from nucleax.apps.bench_decode import serving_set


def _median_ms(fn, reps: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    b, v = args.batch, args.vocab
    rng = np.random.default_rng(0)
    ranks = np.argsort(rng.random((b, v)), axis=1) + 1
    logits = jnp.asarray(-1.1 * np.log(ranks) + rng.normal(0, 0.1, (b, v)), jnp.float32)
    keys = jax.random.split(jax.random.key(0), b)
    prompts = jnp.asarray(rng.integers(0, v, (b, 64)), jnp.int32)
    sampler = jax.jit(lambda k, z, p, s: nx.sample(k, z, p, state=s, return_logprobs=True))
    floor = _median_ms(lambda: jax.jit(lambda z: jnp.max(z, axis=-1))(logits), args.reps)
    records = []
    for mix in ({"temperature": 0.7}, {"temperature": 0.7, "top_k": 50},
                {"temperature": 0.7, "top_p": 0.9}, {"temperature": 0.0}):
        for on in (False, True):
            params = nx.SamplingParams(**mix, **(serving_set(v) if on else {}))
            state = None
            if on:
                chain = params.processors()
                state = chain.init(prompts, jnp.full((b,), 64, jnp.int32), v, 64)
                for _ in range(32):
                    state = chain.update(state, jnp.asarray(rng.integers(0, v, b), jnp.int32))
            ms = _median_ms(lambda p=params, s=state: sampler(keys, logits, p, s), args.reps)
            records.append({"mix": mix, "processors": on, "ms": round(ms, 3),
                            "x_floor": round(ms / floor, 2)})
            print(f"{json.dumps(mix):<40} processors={'on ' if on else 'off'} {ms:9.2f} ms "
                  f"{ms / floor:7.1f}x floor")
    meta = {"date": date.today().isoformat(), "machine": platform.machine(),
            "cpus": __import__("os").cpu_count(), "device": str(jax.devices()[0]),
            "jax": jax.__version__, "B": b, "V": v, "floor_ms": round(floor, 3)}
    print(f"floor (jnp.max) {floor:.2f} ms; {meta}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "records": records}, f, indent=1)


if __name__ == "__main__":
    main()
