"""Decode benchmark: tokens/s of `nucleax.decode.generate` on a GGUF model.

Run as `nucleax bench decode [--batch 1 8] [--new-tokens 64] [--dtype float32 bfloat16]`.
Compile time is excluded (one warm-up call per shape). Besides tokens/s it
reports the share of a decode step spent in sampling (the model step and the
sampler timed apart, both jitted), and the memory floor of one step: the time
to read every weight once (`sum` over all parameters), which bounds batch-1
speed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

import nucleax as nx

from ..decode import generate
from .bench import machine, write_json

PROMPT = "Once upon a time, in a faraway land, there was a magical forest where"


def _median_s(fn, reps):
    jax.block_until_ready(fn())  # warm-up / compile
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(batch: int, new_tokens: int, dtype: str, reps: int, path=None) -> dict:
    from ..models import load_gguf

    model, tok = load_gguf(path, dtype=jnp.dtype(dtype))
    prompts = [tok.encode(PROMPT)] * batch
    params = nx.SamplingParams(temperature=0.7, top_k=50, top_p=0.9)
    keys = jax.random.split(jax.random.key(0), batch)
    gen_s = _median_s(lambda: generate(model, prompts, params, key=keys,
                                       max_new_tokens=new_tokens).tokens, reps)
    prefill_s = _median_s(lambda: generate(model, prompts, params, key=keys,
                                           max_new_tokens=1).tokens, reps)
    decode_s = (gen_s - prefill_s) / (new_tokens - 1)

    graphdef, state = nnx.split(model)
    cache = model.init_cache(batch, 128)
    tokens = jnp.ones((batch, 1), jnp.int32)
    pos = jnp.full((batch, 1), 20, jnp.int32)
    step = jax.jit(lambda s, t, p, c: nnx.merge(graphdef, s)(t, p, c)[0][:, 0])
    model_s = _median_s(lambda: step(state, tokens, pos, cache), reps * 3)
    logits = step(state, tokens, pos, cache)
    sampler = jax.jit(lambda k, z, p: nx.sample(k, z, p, return_logprobs=True).tokens)
    sample_s = _median_s(lambda: sampler(keys, logits, params), reps * 10)
    leaves = jax.tree.leaves(state)
    weight_bytes = sum(x.size * x.dtype.itemsize for x in leaves)
    read_all = jax.jit(lambda s: sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(s)))
    floor_s = _median_s(lambda: read_all(state), reps * 3)
    return {**machine(), "B": batch, "new_tokens": new_tokens, "dtype": dtype,
            "tokens_per_s": batch / decode_s, "decode_step_ms": 1e3 * decode_s,
            "prefill_ms": 1e3 * prefill_s, "e2e_tokens_per_s": batch * new_tokens / gen_s,
            "model_step_ms": 1e3 * model_s, "sample_ms": 1e3 * sample_s,
            "sampling_share": sample_s / (model_s + sample_s),
            "weights_mb": weight_bytes / 1e6, "weights_read_ms": 1e3 * floor_s,
            "batch1_bound_tokens_per_s": 1.0 / floor_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nucleax bench decode", description=__doc__)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", default=None, help="a .gguf path (default: bundled SmolLM2)")
    ap.add_argument("--json", default="benchmarks/out/decode.json")
    args = ap.parse_args(argv)
    info = machine()
    print(f"# nucleax decode benchmark, {info['date']}, {info['cpu']} ({info['cores']} cores), "
          f"jax {info['jax']} on {info['backend']}")
    print(f"# T=0.7 top-k 50 top-p 0.9, {args.new_tokens} new tokens, compile excluded")
    cols = ["B", "dtype", "tok/s", "step_ms", "prefill_ms", "model_ms", "sample_ms",
            "sampling%", "weights_MB", "read_ms", "B1_bound"]
    print(" ".join(f"{c:>10}" for c in cols))
    records = []
    for dtype in args.dtype:
        for batch in args.batch:
            r = run(batch, args.new_tokens, dtype, args.reps, args.model)
            records.append(r)
            vals = [batch, dtype, f"{r['tokens_per_s']:.1f}", f"{r['decode_step_ms']:.1f}",
                    f"{r['prefill_ms']:.1f}", f"{r['model_step_ms']:.1f}",
                    f"{r['sample_ms']:.2f}", f"{100 * r['sampling_share']:.1f}%",
                    f"{r['weights_mb']:.0f}", f"{r['weights_read_ms']:.1f}",
                    f"{r['batch1_bound_tokens_per_s']:.1f}"]
            print(" ".join(f"{v!s:>10}" for v in vals), flush=True)
    write_json(records, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

