"""`nucleax` command line: one subcommand per user task."""

from __future__ import annotations

import argparse
import sys

import numpy as np

SEED_TOKENS = ["day", "space", "furniture", "experience", "problem", "challenge"]
SEED_LOGITS = [5.0, 2.2, 2.0, 4.5, 3.0, 2.7]

# (label, temperature, top_k, top_p, min_p)
DEMO_SETTINGS = [
    ("T=0.5", 0.5, 0, 1.0, 0.0),
    ("T=1", 1.0, 0, 1.0, 0.0),
    ("T=2", 2.0, 0, 1.0, 0.0),
    ("T=1 k=3", 1.0, 3, 1.0, 0.0),
    ("T=1 p=0.8", 1.0, 0, 0.8, 0.0),
    ("T=2 k=4 p=0.9", 2.0, 4, 0.9, 0.0),
    ("T=1 min_p=0.1", 1.0, 0, 1.0, 0.1),
    ("greedy", 0.0, 0, 1.0, 0.0),
]


def _demo(args: argparse.Namespace) -> int:
    import jax

    import nucleax as nx

    labels = [s[0] for s in DEMO_SETTINGS]
    t, k, p, m = (np.array([s[i] for s in DEMO_SETTINGS]) for i in range(1, 5))
    params = nx.SamplingParams(t, k.astype(np.int32), p, m)  # one setting per row
    logits = np.tile(np.array(SEED_LOGITS, np.float32), (len(labels), 1))
    table = np.asarray(nx.probs(logits, params))
    print('"It was a wonderful ___": next-token probabilities under each setting')
    print("(temperature, then top-k, then top-p, then min-p; 0 = masked)\n")
    width = max(len(x) for x in labels) + 1
    print(f"{'token':<11}{'logit':>6} " + "".join(f"{x:>{width}}" for x in labels))
    for j, (tok, z) in enumerate(zip(SEED_TOKENS, SEED_LOGITS, strict=True)):
        cells = "".join(f"{table[i, j]:>{width}.4f}" for i in range(len(labels)))
        print(f"{tok:<11}{z:>6.1f} " + cells)
    alive = (table > 0).sum(axis=1)
    print(f"{'survivors':<18}" + "".join(f"{a:>{width}d}" for a in alive))
    n = args.samples
    keys = jax.random.split(jax.random.key(args.seed), n)
    print(f"\n{n} draws per setting (seed {args.seed}), as counts:")
    for i, label in enumerate(labels):
        rows = np.broadcast_to(logits[i], (n, len(SEED_LOGITS)))
        row_params = nx.SamplingParams(*(np.full(n, x[i]) for x in (t, k.astype(np.int32), p, m)))
        tokens = np.asarray(nx.sample(keys, rows, row_params))
        counts = np.bincount(tokens, minlength=len(SEED_TOKENS))
        shown = ", ".join(f"{SEED_TOKENS[j]} {c}" for j, c in enumerate(counts) if c)
        print(f"  {label:<{width}} {shown}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.what == "sampling":
        from .bench import main as bench_main

        return bench_main(args.rest)
    print(f"unknown benchmark {args.what!r}; available: sampling", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nucleax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="show what temperature, top-k, top-p and min-p do")
    demo.add_argument("--samples", type=int, default=2000, help="draws per setting")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="run a benchmark (sampling)")
    bench.add_argument("what", choices=["sampling"])
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
