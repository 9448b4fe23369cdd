"""The parameter-sweep client: many settings x prompts x samples, measured.

The first seed article's advice, as one command: fix a goal, start from the
defaults, change one knob at a time, generate many samples and compare.
Every (prompt, setting, sample) is one row of a batched `generate` call (per-row
parameters let one batch hold many settings). Its key depends only on the seed,
the prompt, the setting's values and the sample index, so a setting's samples
are identical whether it ran alone or inside a larger sweep.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._extras import require
from .._params import SamplingParams
from ..decode import generate
from ._kit import Progress, prompt_ids, rounded
from .explain import label

__all__ = ["COLUMNS", "SettingReport", "distinct_n", "pairwise_overlap", "repetition",
           "run_sweep", "settings_from", "table", "write_outputs"]


def _ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams over all n-grams, pooled across samples (Li et al., 2016)."""
    grams = [g for s in samples for g in _ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition(sample: Sequence[int], n: int = 3) -> float:
    """Share of the sample's n-grams that repeat an earlier n-gram of the same sample."""
    grams = _ngrams(sample, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def pairwise_overlap(samples: Sequence[Sequence[int]], n: int = 2) -> float:
    """Mean Jaccard overlap of the n-gram sets of every pair of samples."""
    sets = [set(_ngrams(s, n)) for s in samples]
    pairs = [(a, b) for a, b in itertools.combinations(sets, 2) if a or b]
    return float(np.mean([len(a & b) / len(a | b) for a, b in pairs])) if pairs else 0.0


@dataclasses.dataclass
class SettingReport:
    """Measurements of one setting over all its prompts and samples."""

    label: str
    params: dict[str, float]
    distinct_1: float
    distinct_2: float
    overlap: float  # mean pairwise bigram Jaccard overlap between samples
    repetition: float
    logprob: float  # mean per-token log-probability under the raw model (T=1), nats
    survivors: float  # mean tokens alive per step
    entropy: float  # mean entropy (nats) of the sampled distribution per step
    length: float  # mean tokens per sample
    stopped: float  # share of samples that ended on a stop id or a stop sequence
    texts: list[list[str]]  # [prompt][sample]


def _request_key(seed: int, prompt: str, params: dict[str, float], sample: int) -> jax.Array:
    tag = json.dumps([prompt, params], sort_keys=True).encode()
    key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(tag) & 0x7FFFFFFF)
    return jax.random.fold_in(key, sample)


def run_sweep(model: Any, tokenizer: Any, prompts: Sequence[str],
              settings: Sequence[tuple[str, SamplingParams]], *, samples: int = 8,
              max_new_tokens: int = 48, seed: int = 0, chat: bool = True,
              batch_size: int = 32, progress: bool = True) -> list[SettingReport]:
    """Generates every (prompt, setting, sample) and measures each setting.

    Args:
      model, tokenizer: from `nucleax.models.load_gguf`.
      prompts: texts (the chat template is applied unless `chat=False`).
      settings: `(label, SamplingParams)` pairs with scalar values.
      samples: samples per (prompt, setting).
      batch_size: rows per `generate` call (memory bound on the CPU).
    """
    if samples < 1 or max_new_tokens < 1 or not prompts or not settings:
        raise ValueError("need at least one prompt, one setting, samples >= 1 and "
                         f"max_new_tokens >= 1; got {len(prompts)} prompts, {len(settings)} "
                         f"settings, samples={samples}, max_new_tokens={max_new_tokens}")
    encoded = [prompt_ids(tokenizer, p, chat=chat) for p in prompts]
    rows = [(pi, si, k) for si in range(len(settings)) for pi in range(len(prompts))
            for k in range(samples)]
    values = [p.scalars() for _, p in settings]
    results = {}
    bar = Progress(len(rows), "samples", "sweep", enabled=progress)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        params = SamplingParams.stack([settings[si][1] for _, si, _ in chunk])
        keys = jnp.stack([_request_key(seed, prompts[pi], values[si], k) for pi, si, k in chunk])
        out = generate(model, [encoded[pi] for pi, _, _ in chunk], params, key=keys,
                       max_new_tokens=max_new_tokens, stop_ids=tokenizer.stop_ids,
                       return_logprobs=True, return_stats=True)
        out = jax.tree.map(np.asarray, out)
        for j, row in enumerate(chunk):
            n = int(out.lengths[j])
            results[row] = (out.tokens[j, :n].tolist(), out.raw_logprobs[j, :n],
                            out.survivors[j, :n], out.entropy[j, :n], bool(out.stopped[j]))
        bar.update(len(chunk))
    bar.close()
    reports = []
    for si, (name, _) in enumerate(settings):
        mine = [results[(pi, si, k)] for pi in range(len(prompts)) for k in range(samples)]
        toks = [m[0] for m in mine]
        per_prompt = [[tokenizer.decode(results[(pi, si, k)][0]) for k in range(samples)]
                      for pi in range(len(prompts))]
        overlap = np.mean([pairwise_overlap([results[(pi, si, k)][0] for k in range(samples)])
                           for pi in range(len(prompts))])
        reports.append(SettingReport(
            label=name, params=values[si], distinct_1=distinct_n(toks, 1),
            distinct_2=distinct_n(toks, 2), overlap=float(overlap),
            repetition=float(np.mean([repetition(t) for t in toks])),
            logprob=float(np.mean(np.concatenate([m[1] for m in mine]))),
            survivors=float(np.mean(np.concatenate([m[2] for m in mine]))),
            entropy=float(np.mean(np.concatenate([m[3] for m in mine]))),
            length=float(np.mean([len(t) for t in toks])),
            stopped=float(np.mean([m[4] for m in mine])), texts=per_prompt))
    return reports


# column (the same name on screen and in results.json) -> format on screen
COLUMNS = {"distinct_1": "{:.3f}", "distinct_2": "{:.3f}", "overlap": "{:.3f}",
           "repetition": "{:.3f}", "logprob": "{:.3f}", "survivors": "{:.1f}",
           "entropy": "{:.3f}", "length": "{:.1f}", "stopped": "{:.2f}"}
COLUMN_DOCS = ("distinct_1, distinct_2: distinct n-grams over all n-grams, pooled across "
               "samples; overlap: mean pairwise bigram Jaccard between samples; repetition: "
               "share of repeated trigrams inside a sample; logprob: mean per-token "
               "log-probability (nats) under the raw model (T=1), a coherence proxy; survivors "
               "and entropy (nats): of the distribution each token was drawn from, per step; "
               "length: tokens per sample; stopped: share of samples that ended on a stop id "
               "or stop sequence.")


def table(reports: Sequence[SettingReport]) -> str:
    """The measurements as a text table, one row per setting."""
    width = max(12, *(len(r.label) + 2 for r in reports))
    lines = [f"{'setting':<{width}}" + "".join(f"{c:>11}" for c in COLUMNS)]
    for r in reports:
        cells = "".join(f"{fmt.format(getattr(r, c)):>11}" for c, fmt in COLUMNS.items())
        lines.append(f"{r.label:<{width}}" + cells)
    return "\n".join(lines)


def write_outputs(reports: Sequence[SettingReport], prompts: Sequence[str], out: str | Path,
                  meta: dict[str, Any], *, chart: bool = True) -> list[Path]:
    """report.md (samples side by side), results.json and chart.png under `out`.

    results.json holds `meta`, the prompts, and per setting its label, its
    parameters and the columns of `table` (floats to 6 significant digits).
    Returns the paths written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "prompts": list(prompts), "columns": COLUMN_DOCS,
           "settings": [dataclasses.asdict(r) for r in reports]}
    (out / "results.json").write_text(json.dumps(rounded(doc), indent=1, ensure_ascii=False),
                                      encoding="utf-8")
    md = ["# nucleax sweep", "", "```", table(reports), "```", "", "Columns: " + COLUMN_DOCS, ""]
    for pi, prompt in enumerate(prompts):
        md += [f"## Prompt: {prompt}", "", "| sample | " + " | ".join(r.label for r in reports)
               + " |", "|---" * (len(reports) + 1) + "|"]
        for k in range(len(reports[0].texts[pi])):
            cells = [" ".join(r.texts[pi][k].split()).replace("|", "\\|") for r in reports]
            md.append(f"| {k} | " + " | ".join(cells) + " |")
        md.append("")
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    written = [out / "report.md", out / "results.json"]
    if not chart:
        return written
    matplotlib = require("matplotlib", "the sweep chart")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "the sweep chart")
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in reports:
        ax.scatter(r.logprob, r.distinct_2)
        ax.annotate(r.label, (r.logprob, r.distinct_2), textcoords="offset points",
                    xytext=(5, 4), fontsize=9)
    ax.set_xlabel("coherence proxy: mean log-probability per token under the model (T=1)")
    ax.set_ylabel("diversity: distinct-2 across samples")
    ax.set_title("Diversity vs coherence, one point per setting")
    fig.tight_layout()
    fig.savefig(out / "chart.png", dpi=110)
    plt.close(fig)
    return [*written, out / "chart.png"]


def settings_from(grid: dict[str, Sequence[Any]] | None,
                  presets: Sequence[str] | None) -> list[tuple[str, SamplingParams]]:
    """Settings from a grid of values (every combination) and/or preset names."""
    from . import presets as preset_lib
    from .explain import settings_grid

    out = []
    if grid:
        out += [(label(p), p) for p in settings_grid(**grid)]
    for name in presets or []:
        out.append((name, preset_lib.get(name)))
    if not out:
        raise ValueError("give at least one setting (values or presets)")
    return out
