"""Markdown tables from the benchmark JSON files (for benchmarks/RESULTS.md).

    python benchmarks/report.py benchmarks/out/sampling_default.json benchmarks/out/decode.json
"""

import json
import sys


def _f(x, fmt="{:.3f}"):
    return "-" if x is None else fmt.format(x)


def sampling_table(records):
    head = ("| B | V | dtype | mix | nucleax ms | compile s | floor ms | x floor | categorical ms "
            "| sort ms | HF ms | x faster than HF | x faster than sort |")
    lines = [head, "|---" * 13 + "|"]
    for r in records:
        ours = r["nucleax_ms"]
        lines.append("| " + " | ".join([
            str(r["B"]), str(r["V"]), r["dtype"], r["mix"], _f(ours),
            _f(r["nucleax_compile_s"], "{:.2f}"), _f(r.get("floor_ms")),
            _f(ours / r["floor_ms"] if r.get("floor_ms") else None, "{:.1f}x"),
            _f(r.get("categorical_ms")), _f(r.get("sort_ms")), _f(r.get("hf_ms")),
            _f(r["hf_ms"] / ours if r.get("hf_ms") else None, "{:.0f}x"),
            _f(r["sort_ms"] / ours if r.get("sort_ms") else None, "{:.0f}x")]) + " |")
    return "\n".join(lines)


def decode_table(records):
    head = ("| B | weights | decode tok/s | step ms | prefill ms | model step ms | sample ms "
            "| sampling share | weights MB | read-all-weights ms | batch-1 bound tok/s |")
    lines = [head, "|---" * 11 + "|"]
    for r in records:
        lines.append("| " + " | ".join([
            str(r["B"]), r["dtype"], _f(r["tokens_per_s"], "{:.1f}"),
            _f(r["decode_step_ms"], "{:.1f}"), _f(r["prefill_ms"], "{:.1f}"),
            _f(r["model_step_ms"], "{:.1f}"), _f(r["sample_ms"], "{:.2f}"),
            _f(100 * r["sampling_share"], "{:.1f}%"), _f(r["weights_mb"], "{:.0f}"),
            _f(r["weights_read_ms"], "{:.1f}"), _f(r["batch1_bound_tokens_per_s"], "{:.1f}")])
            + " |")
    return "\n".join(lines)


def main(paths):
    for path in paths:
        with open(path) as f:
            records = json.load(f)
        if not records:
            continue
        r0 = records[0]
        print(f"### {path}\n\n{r0['date']}, {r0['cpu']} ({r0['cores']} cores), "
              f"jax {r0['jax']} on {r0['backend']}\n")
        print(decode_table(records) if "tokens_per_s" in r0 else sampling_table(records))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
