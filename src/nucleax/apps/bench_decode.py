"""Decode benchmark: tokens/s of `nucleax.decode.generate` on a GGUF model.

Run as `nucleax bench decode [--batch 1 8] [--new-tokens 64] [--dtype float32 bfloat16]`.
It samples with the one default setting (the `default` preset, T=1 top-p 0.9)
unless `--temperature/--top-k/--top-p/--min-p` say otherwise.
Compile time is excluded (one warm-up call per shape). Besides tokens/s it
reports the share of a decode step spent in sampling (the model step and the
sampler timed apart, both jitted), and the memory floor of one step: the time
to read every weight once (`sum` over all parameters), which bounds batch-1
speed.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import nucleax as nx

from ..decode import generate
from . import presets
from .bench import machine, write_json
from .explain import label

PROMPT = "Once upon a time, in a faraway land, there was a magical forest where"


def _median_s(fn, reps):
    jax.block_until_ready(fn())  # warm-up / compile
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(batch: int, new_tokens: int, dtype: str, reps: int, params: nx.SamplingParams,
            path: str | None = None, processors: bool = False) -> dict:
    """One row of the benchmark: tokens/s, step times, sampling share, weight floor.

    With `processors`, `serving_set` is switched on over `params`.
    """
    from ..models import load_gguf

    model, tok = load_gguf(path, dtype=jnp.dtype(dtype))
    if processors:
        params = params.replace(**serving_set(model.config.vocab_size))
    prompts = [tok.encode(PROMPT)] * batch
    keys = jax.random.split(jax.random.key(0), batch)
    gen_s = _median_s(lambda: generate(model, prompts, params, key=keys,
                                       max_new_tokens=new_tokens).tokens, reps)
    prefill_s = _median_s(lambda: generate(model, prompts, params, key=keys,
                                           max_new_tokens=1).tokens, reps)
    chain = params.processors() if params.processors_on() else None
    proc_state = None if chain is None else chain.init(
        jnp.asarray(prompts, jnp.int32), jnp.full((batch,), len(prompts[0]), jnp.int32),
        model.config.vocab_size, new_tokens)
    decode_s = (gen_s - prefill_s) / (new_tokens - 1)

    graphdef, state = nnx.split(model)
    cache = model.init_cache(batch, 128)
    tokens = jnp.ones((batch, 1), jnp.int32)
    pos = jnp.full((batch, 1), 20, jnp.int32)
    step = jax.jit(lambda s, t, p, c: nnx.merge(graphdef, s)(t, p, c)[0][:, 0])
    model_s = _median_s(lambda: step(state, tokens, pos, cache), reps * 3)
    logits = step(state, tokens, pos, cache)
    sampler = jax.jit(lambda k, z, p, s: nx.sample(k, z, p, state=s,
                                                    return_logprobs=True).tokens)
    sample_s = _median_s(lambda: sampler(keys, logits, params, proc_state), reps * 10)
    leaves = jax.tree.leaves(state)
    weight_bytes = sum(x.size * x.dtype.itemsize for x in leaves)
    read_all = jax.jit(lambda s: sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(s)))
    floor_s = _median_s(lambda: read_all(state), reps * 3)
    return {**machine(), "B": batch, "new_tokens": new_tokens, "dtype": dtype,
            "sampling": label(params), "processors": list(params.processors_on()),
            "tokens_per_s": batch / decode_s, "decode_step_ms": 1e3 * decode_s,
            "prefill_ms": 1e3 * prefill_s, "e2e_tokens_per_s": batch * new_tokens / gen_s,
            "model_step_ms": 1e3 * model_s, "sample_ms": 1e3 * sample_s,
            "sampling_share": sample_s / (model_s + sample_s),
            "weights_mb": weight_bytes / 1e6, "weights_read_ms": 1e3 * floor_s,
            "batch1_bound_tokens_per_s": 1.0 / floor_s}


def add_arguments(ap: argparse.ArgumentParser, *, positive: Callable[[str, int], Any],
                  json_file: Callable[[str], str], model: Callable[[str], str],
                  knobs: dict[str, Callable[[str], Any]]) -> None:
    """The options of `nucleax bench decode` (the command line builds the parser)."""
    default = presets.get(presets.DEFAULT).scalars()
    ap.add_argument("--batch", type=positive("--batch", 8), nargs="+", default=[1, 8],
                    help="batch sizes")
    ap.add_argument("--new-tokens", type=_at_least_two(positive), default=64,
                    help="tokens generated per row (at least 2)")
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                    help="parameter dtypes")
    ap.add_argument("--reps", type=positive("--reps", 3), default=3, help="timed runs (median)")
    ap.add_argument("--model", type=model, default=None,
                    help="a .gguf model file (default: the bundled SmolLM2-135M-Instruct)")
    for name, parse in knobs.items():
        ap.add_argument("--" + name.replace("_", "-"), type=parse, default=default[name],
                        help=f"sampling {name} (the `{presets.DEFAULT}` preset's value)")
    ap.add_argument("--processors", action="store_true",
                    help="also time each row with the whole serving set of logits processors on "
                         "(serving_set(): penalties, bias, bans, allowed ids, min tokens, n-grams)")
    ap.add_argument("--json", type=json_file, default=None, metavar="FILE.json",
                    help="also write the records to this file (default: print only)")


def serving_set(vocab: int) -> dict[str, Any]:
    """Every logits processor on, with values a server would use, for a vocabulary of `vocab`."""
    return {"repetition_penalty": 1.1, "frequency_penalty": 0.2, "presence_penalty": 0.2,
            "logit_bias": {11: 2.0, 13: -2.0}, "bad_words": [[40, 41], [42]],
            "allowed_token_ids": list(range(9 * vocab // 10)), "min_tokens": 4,
            "no_repeat_ngram_size": 3}


def _at_least_two(positive: Callable[[str, int], Any]) -> Callable[[str], int]:
    check = positive("--new-tokens", 64)

    def parse(text: str) -> int:
        value = check(text)
        if value < 2:
            raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {text!r}; "
                                             "fix: e.g. --new-tokens 64")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    """`nucleax bench decode ARGV...`."""
    from ..cli import main as cli_main

    return cli_main(["bench", "decode", *(sys.argv[1:] if argv is None else argv)])


def run(args: argparse.Namespace) -> int:
    """Runs the decode benchmark with parsed options; prints a table as it goes."""
    params = nx.SamplingParams(**{n: getattr(args, n) for n in
                                  ("temperature", "top_k", "top_p", "min_p")})
    info = machine()
    print(f"# nucleax decode benchmark, {info['date']}, {info['cpu']} ({info['cores']} cores), "
          f"jax {info['jax']} on {info['backend']}")
    print(f"# sampling: {label(params)}, {args.new_tokens} new tokens, compile excluded")
    cols = ["B", "dtype", "procs", "tok/s", "step_ms", "prefill_ms", "model_ms", "sample_ms",
            "sampling%", "weights_MB", "read_ms", "B1_bound"]
    print(" ".join(f"{c:>10}" for c in cols))
    rows = [False, True] if args.processors else [False]
    records = []
    for dtype, batch, p in itertools.product(args.dtype, args.batch, rows):
        r = measure(batch, args.new_tokens, dtype, args.reps, params, args.model, p)
        records.append(r)
        vals = [batch, dtype, "all" if r["processors"] else "none", f"{r['tokens_per_s']:.1f}",
                f"{r['decode_step_ms']:.1f}", f"{r['prefill_ms']:.1f}",
                f"{r['model_step_ms']:.1f}", f"{r['sample_ms']:.2f}",
                f"{100 * r['sampling_share']:.1f}%", f"{r['weights_mb']:.0f}",
                f"{r['weights_read_ms']:.1f}", f"{r['batch1_bound_tokens_per_s']:.1f}"]
        print(" ".join(f"{v!s:>10}" for v in vals), flush=True)
    write_json(records, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

