"""Speculative decoding on SmolLM2: acceptance and end-to-end tokens/s against plain decoding.

Batch 1, greedy (so both paths must give the same tokens, which is checked), in the same run:

- plain `nucleax.decode.generate`;
- `generate_speculative` with prompt lookup (`draft="ngram"`, K draft tokens, n-gram 3);
- optionally a self-speculative draft: the target's first `--draft-layers` layers
  (`nucleax.speculative.truncated`), an untrained early exit (on the copy-text prompt only).

Three prompts: one whose answer copies the prompt (repeat a paragraph word for word), where
prompt lookup should accept most drafts; one asking to copy a code block renaming one function
(the 135M model rewrites the code rather than copying it); and a free story.
Every timing excludes compilation (one warm-up call first) and is the median of `--reps` runs
of the whole call (prefill included); the cases of a prompt run in turn, round after round, so
that they share the load of a shared machine alike.

    python benchmarks/speculative.py                      # JSON to benchmarks/results
    python benchmarks/speculative.py --reps 1 --max-new-tokens 64 --json /tmp/s.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

import nucleax as nx
from nucleax import decode
from nucleax.apps._kit import prompt_ids
from nucleax.models import load_gguf
from nucleax.speculative import generate_speculative, truncated

CODE = '''def add_numbers(values):
    """Return the sum of a list of numbers, skipping None entries."""
    total = 0
    for value in values:
        if value is None:
            continue
        total += value
    return total


def mean_of(values):
    kept = [v for v in values if v is not None]
    if not kept:
        raise ValueError("no values")
    return add_numbers(kept) / len(kept)
'''
TEXT = ("The old lighthouse stood at the edge of the cliff, its white paint peeling in the salt "
        "wind. Every night the keeper climbed the spiral stairs, lit the great lamp, and watched "
        "the ships pass safely through the narrow channel below. In winter the storms came "
        "without warning, and the waves broke so high that spray reached the lantern room. The "
        "keeper kept a logbook of every ship, every storm and every visitor, written in small "
        "careful letters by the light of a single candle.")
PROMPTS = {
    # the answer copies the prompt: prompt lookup should accept most drafts
    "copy-text": "Repeat the following paragraph word for word:\n\n" + TEXT,
    # asked to copy code with one change; SmolLM2-135M rewrites the code instead (honest number)
    "copy-code": ("Repeat this Python code exactly, changing only the function name add_numbers "
                  "to sum_values everywhere. Output only the code.\n\n```python\n" + CODE + "```"),
    # free text: little to look up
    "story": "Write a short story about a lighthouse keeper who finds a lost cat.",
}


def _interleaved(cases: dict[str, Callable[[], Any]], reps: int) -> dict[str, tuple[Any, float]]:
    """Each case compiled (one call), then `reps` rounds running every case in turn: the median
    seconds per case. Interleaving lets the cases share the machine's load (it is shared)."""
    outs: dict[str, Any] = {}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for name, fn in cases.items():
        outs[name] = jax.block_until_ready(fn())
    for _ in range(reps):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            outs[name] = jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: (outs[name], statistics.median(times[name])) for name in cases}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-new-tokens", type=int, default=128, help="default: 128")
    ap.add_argument("--draft-tokens", type=int, default=4, help="K (default: 4)")
    ap.add_argument("--reps", type=int, default=3, help="timed runs per case (default: 3)")
    ap.add_argument("--draft-layers", type=int, default=8,
                    help="layers of the self-speculative draft; 0 = skip it (default: 8)")
    ap.add_argument("--json", default="benchmarks/results/speculative.json",
                    help="where to write the records (default: %(default)s)")
    args = ap.parse_args(argv)

    model, tok = load_gguf()
    params = nx.SamplingParams(temperature=0.0)
    key = jax.random.key(0)
    drafts: list[tuple[str, object]] = [("ngram", "ngram")]
    if args.draft_layers:
        drafts.append((f"truncated-{args.draft_layers}", truncated(model, args.draft_layers)))
    records = []
    for name, text in PROMPTS.items():
        ids = prompt_ids(tok, text)
        common = dict(key=key, max_new_tokens=args.max_new_tokens, stop_ids=tok.stop_ids)
        cases: dict[str, Callable[[], Any]] = {
            "plain": lambda i=ids, c=common: decode.generate(model, [i], params, **c)}
        for label, draft in drafts:
            if label != "ngram" and name != "copy-text":
                continue  # the untrained early exit: one prompt is enough to see it
            cases[label] = lambda d=draft, i=ids, c=common: generate_speculative(
                model, [i], params, draft=d, draft_tokens=args.draft_tokens, **c)
        results = _interleaved(cases, args.reps)
        plain, t_plain = results.pop("plain")
        n_plain = int(plain.lengths[0])
        base = {"prompt": name, "prompt_tokens": len(ids), "batch": 1, "greedy": True}
        records.append({**base, "mode": "plain", "tokens": n_plain, "seconds": t_plain,
                        "tokens_per_s": n_plain / t_plain})
        print(f"{name:9s} plain            {n_plain:4d} tokens  {n_plain / t_plain:7.1f} tok/s")
        for label, (spec, t_spec) in results.items():
            n = int(spec.output.lengths[0])
            same = bool(np.array_equal(np.asarray(spec.output.tokens),
                                       np.asarray(plain.tokens)))
            acc = int(spec.accepted[0]) / max(int(spec.drafted[0]), 1)
            per_step = n / int(spec.steps[0])
            speedup = (n / t_spec) / (n_plain / t_plain)
            records.append({**base, "mode": f"speculative-{label}", "k": args.draft_tokens,
                            "tokens": n, "seconds": t_spec, "tokens_per_s": n / t_spec,
                            "acceptance": acc, "drafted": int(spec.drafted[0]),
                            "tokens_per_target_step": per_step,
                            "target_steps": int(spec.steps[0]), "speedup": speedup,
                            "same_tokens_as_plain": same})
            print(f"{name:9s} {label:16s} {n:4d} tokens  {n / t_spec:7.1f} tok/s  "
                  f"x{speedup:.2f}  acceptance {acc:.2f}  {per_step:.2f} tokens/step  "
                  f"same tokens: {same}")
        print(f"  output: {tok.decode(np.asarray(plain.tokens[0, :n_plain]))[:120]!r}")
    meta = {"date": datetime.date.today().isoformat(), "device": str(jax.devices()[0]),
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "model": "SmolLM2-135M-Instruct (float32)", "reps": args.reps,
            "max_new_tokens": args.max_new_tokens,
            "command": "python benchmarks/speculative.py " + " ".join(argv or [])}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
