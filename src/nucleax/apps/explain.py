"""See what the knobs do: tables, charts and an interactive page.

Every number here comes from `nucleax.probs` (one batched call, one setting
per row), except the interactive page, which recomputes in the browser as the
sliders move. Its script implements the same contract, and a headless-Chromium
test checks it against `nucleax.probs`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._params import SamplingParams
from .._sample import probs as _probs

__all__ = ["Explanation", "explain", "label", "plot_bars", "plot_temperature_sweep",
           "settings_grid", "write_html"]


def label(p: SamplingParams) -> str:
    """A short label: `T=0.7 k=50 p=0.9 min_p=0.05` (off knobs omitted)."""
    v = p.scalars()
    t, k, tp, m = v["temperature"], v["top_k"], v["top_p"], v["min_p"]
    parts = ["greedy" if t == 0 else f"T={t:g}"]
    if k > 0:
        parts.append(f"k={k}")
    if tp < 1:
        parts.append(f"p={tp:g}")
    if m > 0:
        parts.append(f"min_p={m:g}")
    return " ".join(parts)


def settings_grid(temperature=(1.0,), top_k=(0,), top_p=(1.0,), min_p=(0.0,)):
    """Every combination of the given values, as a list of `SamplingParams`."""
    return [SamplingParams(t, k, p, m)
            for t, k, p, m in itertools.product(temperature, top_k, top_p, min_p)]


class Explanation(NamedTuple):
    """Probabilities of every token under every setting (`probs` is `[S, V]`)."""

    labels: list[str]
    tokens: list[str]
    logits: np.ndarray
    probs: np.ndarray
    survivors: np.ndarray  # [S] tokens with non-zero probability
    entropy: np.ndarray  # [S] in bits
    top_prob: np.ndarray  # [S] probability of the most likely token

    def table(self, rows: Sequence[int] | None = None) -> str:
        """A text table: token, logit, probability per setting, then summaries."""
        rows = range(len(self.tokens)) if rows is None else rows
        width = max(10, *(len(lbl) + 1 for lbl in self.labels))
        name_w = max(8, *(len(self.tokens[i]) + 1 for i in rows))
        head = f"{'token':<{name_w}}{'logit':>8} " + "".join(f"{x:>{width}}" for x in self.labels)
        lines = [head]
        for i in rows:
            cells = "".join(f"{v:>{width}.6f}" if v > 0 else f"{'0 (cut)':>{width}}"
                            for v in self.probs[:, i])
            lines.append(f"{self.tokens[i]:<{name_w}}{self.logits[i]:>8.3f} {cells}")
        lines.append(f"{'survivors':<{name_w + 9}}" + "".join(f"{n:>{width}d}"
                                                            for n in self.survivors))
        lines.append(f"{'entropy (bits)':<{name_w + 9}}" + "".join(f"{h:>{width}.3f}"
                                                                 for h in self.entropy))
        lines.append(f"{'top prob':<{name_w + 9}}" + "".join(f"{p:>{width}.4f}"
                                                           for p in self.top_prob))
        return "\n".join(lines)


def explain(logits: Any, settings: Sequence[SamplingParams], tokens: Sequence[str] | None = None,
            labels: Sequence[str] | None = None) -> Explanation:
    """Probabilities of one row of logits `[V]` under each setting.

    Example:
      >>> import nucleax
      >>> e = explain([5, 2.2, 2.0, 4.5, 3.0, 2.7], [nucleax.SamplingParams(1.0)])
      >>> e.probs[0].round(6).tolist()[:2]
      [0.512106, 0.031141]
    """
    z = np.asarray(logits, np.float32)
    if z.ndim != 1:
        raise ValueError(f"logits must be one row [V], got shape {z.shape}")
    if not settings:
        raise ValueError("settings must hold at least one SamplingParams")
    tokens = [str(i) for i in range(z.size)] if tokens is None else [str(t) for t in tokens]
    if len(tokens) != z.size:
        raise ValueError(f"tokens must name every logit: got {len(tokens)} tokens for "
                         f"{z.size} logits")
    p = np.asarray(_probs(np.tile(z, (len(settings), 1)), SamplingParams.stack(settings)),
                   np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = 0.0 - np.sum(np.where(p > 0, p * np.log2(p), 0.0), axis=-1)  # no -0.0
    return Explanation(list(labels) if labels else [label(s) for s in settings], tokens, z, p,
                       (p > 0).sum(-1), entropy, p.max(-1))


def plot_bars(e: Explanation, path: str | Path, rows: Sequence[int] | None = None) -> None:
    """Grouped bars: one group per token, one bar per setting; cut tokens marked x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(range(len(e.tokens))) if rows is None else list(rows)
    n = len(e.labels)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) * max(1, n / 3)), 4.5))
    x = np.arange(len(rows))
    for s in range(n):
        vals = e.probs[s, rows]
        pos = x - 0.4 + width * (s + 0.5)
        bars = ax.bar(pos, vals, width, label=e.labels[s])
        cut = vals == 0
        ax.scatter(pos[cut], np.zeros(cut.sum()), marker="x", color=bars.patches[0].get_facecolor(),
                   zorder=3)
    ax.set_xticks(x, [e.tokens[i] for i in rows], rotation=30, ha="right")
    ax.set_ylabel("probability")
    ax.set_title("Next-token probabilities per setting (x = cut)", fontsize=11)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_temperature_sweep(logits: Any, params: SamplingParams, path: str | Path,
                           tokens: Sequence[str] | None = None,
                           temperatures: np.ndarray | None = None) -> np.ndarray:
    """Each token's probability as a curve over temperature (0.05 to 2).

    The other knobs of `params` (top-k, top-p, min-p) apply at every
    temperature; where a token is cut, its curve is drawn dotted at 0. This is
    the static counterpart of the seed article's temperature slider. Returns
    the `[len(temperatures), V]` probabilities plotted.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = np.asarray(logits, np.float32)
    temps = np.linspace(0.05, 2.0, 79) if temperatures is None else np.asarray(temperatures)
    settings = [params.replace(temperature=float(t)) for t in temps]
    p = np.asarray(_probs(np.tile(z, (len(temps), 1)), SamplingParams.stack(settings)))
    tokens = [str(i) for i in range(z.size)] if tokens is None else list(tokens)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, name in enumerate(tokens):
        alive = np.where(p[:, i] > 0, p[:, i], np.nan)
        (line,) = ax.plot(temps, alive, label=name)
        cut = np.where(p[:, i] > 0, np.nan, 0.0)
        ax.plot(temps, cut, linestyle=":", color=line.get_color())
    ax.set_xlabel("temperature")
    ax.set_ylabel("probability")
    knobs = label(params.replace(temperature=1.0))[4:] or "no cut"
    ax.set_title(f"Probability vs temperature ({knobs}; dotted = cut)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return p


_PAGE = Path(__file__).with_name("explain.html")


def write_html(logits: Any, tokens: Sequence[str] | None, path: str | Path,
               params: SamplingParams | None = None, title: str = "nucleax explain") -> None:
    """A self-contained page (no network) with sliders and a live bar chart.

    The page's script implements the contract of `nucleax.probs` in float64
    JavaScript for the given logits (meant for a few dozen tokens).
    """
    z = np.asarray(logits, np.float64)
    tokens = [str(i) for i in range(z.size)] if tokens is None else [str(t) for t in tokens]
    params = params or SamplingParams()
    init = params.scalars()
    data = json.dumps({"logits": z.tolist(), "tokens": tokens, "init": init, "title": title})
    html = _PAGE.read_text().replace("/*DATA*/null", data.replace("</", "<\\/"))
    Path(path).write_text(html, encoding="utf-8")
