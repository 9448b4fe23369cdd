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
    settings = [nx.SamplingParams(*s[1:]) for s in DEMO_SETTINGS]
    params = nx.SamplingParams.stack(settings)  # one setting per row
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
        tokens = np.asarray(nx.sample(keys, rows, nx.SamplingParams.stack([settings[i]] * n)))
        counts = np.bincount(tokens, minlength=len(SEED_TOKENS))
        shown = ", ".join(f"{SEED_TOKENS[j]} {c}" for j, c in enumerate(counts) if c)
        print(f"  {label:<{width}} {shown}")
    if not args.no_model:
        _story_demo(args.max_new_tokens, args.seed)
    return 0


STORY = ("Once upon a time, in a faraway land, there was a magical forest where many "
         "wonderful stories happened. Continue the story.")
# (label, temperature, top_k, top_p, min_p): the article's knobs, side by side
STORY_SETTINGS = [
    ("greedy", 0.0, 0, 1.0, 0.0),
    ("T=0.7 top-k 50", 0.7, 50, 1.0, 0.0),
    ("T=1.0 top-p 0.95", 1.0, 0, 0.95, 0.0),
    ("T=1.5", 1.5, 0, 1.0, 0.0),
]


def _story_demo(max_new_tokens: int, seed: int) -> None:
    import time

    import jax

    import nucleax as nx

    from .decode import generate
    from .models import ModelNotFoundError, load_gguf

    try:
        model, tok = load_gguf()
    except ModelNotFoundError as err:
        print(f"\n(SmolLM2 demo skipped: {err})")
        return
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": STORY}]))
    params = nx.SamplingParams.stack([nx.SamplingParams(*s[1:]) for s in STORY_SETTINGS])
    n = len(STORY_SETTINGS)
    keys = jax.random.split(jax.random.key(seed), n)
    print(f"\nSmolLM2-135M-Instruct, one batch of {n} rows, one setting per row "
          f"(seed {seed}, up to {max_new_tokens} new tokens):")
    print(f"  prompt: {STORY}")
    t0 = time.perf_counter()
    out = generate(model, [prompt] * n, params, key=keys, max_new_tokens=max_new_tokens,
                   stop_ids=tok.stop_ids)
    out.tokens.block_until_ready()
    seconds = time.perf_counter() - t0
    for i, (label, *_) in enumerate(STORY_SETTINGS):
        text = tok.decode(np.asarray(out.tokens[i, : int(out.lengths[i])]))
        print(f"\n--- {label} ---\n{' '.join(text.split())}")
    total = int(np.asarray(out.lengths).sum())
    print(f"\n{total} tokens in {seconds:.1f} s, compilation included "
          "(`nucleax bench decode` measures steady-state speed)")


def _generate(args: argparse.Namespace) -> int:
    import time

    import jax

    from .decode import stream
    from .models import load_gguf

    params = _params_from_args(args)
    model, tok = load_gguf(args.model, dtype=args.dtype)
    text = args.prompt if args.raw else tok.apply_chat_template(
        [{"role": "user", "content": args.prompt}])
    prompts = [tok.encode(text)] * args.batch
    keys = jax.random.split(jax.random.key(args.seed), args.batch)
    generated = [[] for _ in range(args.batch)]
    shown, t_first, steps = "", None, 0
    for tokens, live in stream(model, prompts, params, key=keys,
                               max_new_tokens=args.max_new_tokens, stop_ids=tok.stop_ids):
        tokens, live = np.asarray(tokens), np.asarray(live)
        for i in np.flatnonzero(live):
            generated[i].append(int(tokens[i]))
        now = tok.decode(generated[0])
        print(now[len(shown):], end="", flush=True)
        shown, steps = now, steps + 1
        if steps == 2:  # the first two calls compile prefill and step
            t_first = time.perf_counter()
    print()
    for i in range(1, args.batch):
        print(f"\n--- sample {i} ---\n{tok.decode(generated[i])}")
    if t_first is not None and steps > 2:
        rate = args.batch * (steps - 2) / (time.perf_counter() - t_first)
        print(f"\n[{sum(map(len, generated))} tokens; decode {rate:.1f} tokens/s "
              f"at batch {args.batch}, compilation excluded]", file=sys.stderr)
    return 0


GENERATE_DEFAULTS = {"temperature": 0.7, "top_k": 50, "top_p": 1.0, "min_p": 0.0}


def _sampling_flags(parser: argparse.ArgumentParser, nargs: str | None) -> None:
    """--temperature --top-k --top-p --min-p --preset (explicit flags override a preset)."""
    kw = {"nargs": nargs} if nargs else {}
    parser.add_argument("--temperature", type=float, default=None, **kw)
    parser.add_argument("--top-k", type=int, default=None, **kw)
    parser.add_argument("--top-p", type=float, default=None, **kw)
    parser.add_argument("--min-p", type=float, default=None, **kw)
    parser.add_argument("--preset", default=None, **kw,
                        help="a named setting (`nucleax presets`); explicit flags override it")


def _params_from_args(args: argparse.Namespace):
    """One SamplingParams: defaults, then the preset, then explicit flags; with warnings."""
    import nucleax as nx

    values = dict(GENERATE_DEFAULTS)
    if args.preset:
        values = nx.presets.get(args.preset).scalars()
    for name in values:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    params = nx.SamplingParams(**values)
    for msg in nx.check(params, warn=False):
        print(f"warning: {msg}", file=sys.stderr)
    return params


def _explain(args: argparse.Namespace) -> int:
    import nucleax as nx
    from nucleax.apps import explain as ex

    if (args.logits is None) == (args.prompt is None):
        print("explain: give either --logits (with optional --tokens) or --prompt",
              file=sys.stderr)
        return 2
    if args.logits is not None:
        logits = np.asarray(args.logits, np.float32)
        tokens = args.tokens or [str(i) for i in range(logits.size)]
        shown = None
    else:
        logits, tokens = _next_token_logits(args)
        shown = np.argsort(-logits, kind="stable")[: args.top].tolist()
    settings = []
    if any(getattr(args, n) is not None for n in ("temperature", "top_k", "top_p", "min_p")) \
            or not args.preset:
        settings += ex.settings_grid(args.temperature or [1.0], args.top_k or [0],
                                     args.top_p or [1.0], args.min_p or [0.0])
    labels = [ex.label(s) for s in settings]
    for name in args.preset or []:
        settings.append(nx.presets.get(name))
        labels.append(name)
    e = ex.explain(logits, settings, tokens, labels)
    print(e.table(shown))
    for lbl, s in zip(labels, settings, strict=True):
        for msg in nx.check(s, logits, warn=False):
            print(f"warning ({lbl}): {msg}", file=sys.stderr)
    rows = shown if shown is not None else range(len(tokens))
    sub_logits = e.logits[list(rows)]
    sub_tokens = [e.tokens[i] for i in rows]
    if args.plot:
        ex.plot_bars(e, args.plot, rows=shown)
        print(f"wrote {args.plot}")
    if args.sweep_temperature:
        ex.plot_temperature_sweep(sub_logits, settings[0], args.sweep_temperature, sub_tokens)
        print(f"wrote {args.sweep_temperature}")
    if args.html:
        title = "nucleax explain" + (f": next token after {args.prompt!r} (top {len(rows)})"
                                     if args.prompt else "")
        ex.write_html(sub_logits, sub_tokens, args.html, settings[0], title)
        print(f"wrote {args.html}")
    return 0


def _next_token_logits(args: argparse.Namespace):
    import jax.numpy as jnp

    from .models import load_gguf

    model, tok = load_gguf(args.model)
    text = args.prompt if args.raw else tok.apply_chat_template(
        [{"role": "user", "content": args.prompt}])
    ids = tok.encode(text)
    positions = jnp.arange(len(ids), dtype=jnp.int32)[None]
    logits, _ = model(jnp.asarray([ids], jnp.int32), positions, model.init_cache(1, len(ids)))
    names = [repr(tok.decode([i], skip_special=False)) for i in range(model.config.vocab_size)]
    return np.asarray(logits[0, -1], np.float32), names


def _sweep(args: argparse.Namespace) -> int:
    from .apps import sweep as sw
    from .models import load_gguf

    grid = None
    if any(getattr(args, n) for n in ("temperature", "top_k", "top_p", "min_p")) \
            or not args.presets:
        grid = {"temperature": args.temperature or [1.0], "top_k": args.top_k or [0],
                "top_p": args.top_p or [1.0], "min_p": args.min_p or [0.0]}
    settings = sw.settings_from(grid, args.presets)
    model, tok = load_gguf(args.model)
    reports = sw.run_sweep(model, tok, args.prompt, settings, samples=args.samples,
                           max_new_tokens=args.max_new_tokens, seed=args.seed,
                           chat=not args.raw, batch_size=args.batch_size)
    print(sw.table(reports))
    if args.out:
        meta = {"seed": args.seed, "samples": args.samples, "max_new_tokens": args.max_new_tokens,
                "chat_template": not args.raw}
        sw.write_outputs(reports, args.prompt, args.out, meta)
        print(f"wrote {args.out}/report.md, results.json, chart.png")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import jax.numpy as jnp

    from .apps.calibrate import calibrate_temperature, plot_reliability
    from .apps.sweep import show_progress
    from .models import load_gguf

    model, tok = load_gguf(args.model)
    with open(args.text, encoding="utf-8") as f:
        ids = tok.encode(f.read())[: args.max_tokens + 1]
    if len(ids) < 2:
        raise SystemExit(f"calibrate: {args.text} holds {len(ids)} token(s); need at least 2")
    logits, targets = [], []
    chunks = range(0, len(ids) - 1, args.chunk)
    for n, start in enumerate(chunks):
        piece = ids[start:start + args.chunk + 1]
        x = jnp.asarray([piece[:-1]], jnp.int32)
        pos = jnp.arange(x.shape[1], dtype=jnp.int32)[None]
        out, _ = model(x, pos, model.init_cache(1, x.shape[1]))
        logits.append(np.asarray(out[0]))
        targets.extend(piece[1:])
        show_progress(n + 1, len(chunks), "chunks")
    z, y = np.concatenate(logits), np.asarray(targets, np.int32)
    res = calibrate_temperature(z, y)
    print(f"tokens scored: {len(y)} (chunks of {args.chunk})")
    print(f"fitted temperature: {res.temperature:.4f}")
    print(f"NLL per token: {res.nll_before:.4f} at T=1 -> {res.nll_after:.4f} at the fitted T")
    print(f"ECE (15 bins): {res.ece_before:.4f} -> {res.ece_after:.4f}")
    plot_reliability(z, y, res.temperature, args.plot)
    print(f"wrote {args.plot}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    import nucleax as nx
    from nucleax.apps import explain as ex

    width = max(map(len, nx.presets.PRESETS)) + 2
    for name, preset in nx.presets.PRESETS.items():
        print(f"{name:<{width}}{ex.label(preset.params):<22}{preset.description}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.what == "sampling":
        from .apps.bench import main as bench_main
    else:
        from .apps.bench_decode import main as bench_main
    return bench_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nucleax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="show what temperature, top-k, top-p and min-p do")
    demo.add_argument("--samples", type=int, default=2000, help="draws per setting")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--max-new-tokens", type=int, default=48)
    demo.add_argument("--no-model", action="store_true", help="skip the SmolLM2 part")
    demo.set_defaults(func=_demo)
    gen = sub.add_parser("generate", help="generate text with a GGUF model (streams)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--raw", action="store_true", help="no chat template")
    gen.add_argument("--model", default=None, help="a .gguf path (default: bundled SmolLM2)")
    gen.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    _sampling_flags(gen, nargs=None)
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch", type=int, default=1, help="samples of the same prompt")
    gen.set_defaults(func=_generate)
    exp = sub.add_parser("explain", help="table/charts/page of how the knobs reshape logits")
    exp.add_argument("--logits", type=float, nargs="+")
    exp.add_argument("--tokens", nargs="+")
    exp.add_argument("--prompt", help="explain the model's next-token distribution instead")
    exp.add_argument("--raw", action="store_true", help="no chat template for --prompt")
    exp.add_argument("--model", default=None, help="a .gguf path (default: bundled SmolLM2)")
    exp.add_argument("--top", type=int, default=15, help="tokens shown for --prompt")
    _sampling_flags(exp, nargs="+")
    exp.add_argument("--plot", help="write grouped bars to this PNG")
    exp.add_argument("--sweep-temperature", help="write probability-vs-temperature curves (PNG)")
    exp.add_argument("--html", help="write an interactive page with sliders")
    exp.set_defaults(func=_explain)
    swp = sub.add_parser("sweep", help="generate many samples per setting and measure them")
    swp.add_argument("--prompt", action="append", required=True, help="repeat for more prompts")
    swp.add_argument("--temperature", type=float, nargs="+")
    swp.add_argument("--top-k", type=int, nargs="+")
    swp.add_argument("--top-p", type=float, nargs="+")
    swp.add_argument("--min-p", type=float, nargs="+")
    swp.add_argument("--presets", nargs="+")
    swp.add_argument("--samples", type=int, default=8)
    swp.add_argument("--max-new-tokens", type=int, default=48)
    swp.add_argument("--seed", type=int, default=0)
    swp.add_argument("--raw", action="store_true", help="no chat template")
    swp.add_argument("--batch-size", type=int, default=32, help="rows per generate call")
    swp.add_argument("--model", default=None)
    swp.add_argument("--out", help="folder for report.md, results.json, chart.png")
    swp.set_defaults(func=_sweep)
    cal = sub.add_parser("calibrate", help="fit the temperature calibrating the model on a text")
    cal.add_argument("--text", required=True, help="a UTF-8 text file")
    cal.add_argument("--max-tokens", type=int, default=1024)
    cal.add_argument("--chunk", type=int, default=256, help="tokens per forward pass")
    cal.add_argument("--plot", default="reliability.png")
    cal.add_argument("--model", default=None)
    cal.set_defaults(func=_calibrate)
    pre = sub.add_parser("presets", help="list the named settings")
    pre.set_defaults(func=_presets)
    bench = sub.add_parser("bench", help="run a benchmark: sampling or decode")
    bench.add_argument("what", choices=["sampling", "decode"])
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
