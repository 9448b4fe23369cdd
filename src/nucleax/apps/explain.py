"""See what the knobs do to one next-token distribution: a table, charts, a page.

`nucleax.explain(logits, settings)` computes, with one batched
`nucleax.probs` call over the *full* vocabulary, every token's probability
under every setting. Every view of the result shows the same numbers:

- `Explanation.table(rows)`: the chosen tokens (e.g. the top 15 by logit),
  then one "other tokens" row holding the rest of the vocabulary's mass,
  then survivors, entropy and top probability per setting;
- `plot_bars`: the same rows as grouped bars, one bar per setting;
- `plot_temperature_sweep`: each row's probability over temperature, one
  panel per distinct top-k / top-p / min-p, each requested temperature
  marked, computed over the full vocabulary at every temperature;
- `write_html`: a self-contained page with sliders. Its script holds the
  full vocabulary's logits and recomputes in float64 JavaScript with the
  same contract; a headless-Chromium test checks it against `nucleax.probs`.

Entropy is in nats (natural logarithm) here, as in `GenerateOutput.entropy`
and `nucleax sweep`.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._extras import require
from .._params import SamplingParams
from .._sample import probs as _probs
from ._kit import rounded

__all__ = ["ENTROPY_UNIT", "Explanation", "explain", "label", "plot_bars",
           "plot_temperature_sweep", "settings_grid", "write_html"]

ENTROPY_UNIT = "nats"
OTHER = "other tokens"

# knob -> (short name in labels, off value)
_EXTRA_KNOBS = {"repetition_penalty": ("rep", 1.0), "presence_penalty": ("pres", 0.0),
                "frequency_penalty": ("freq", 0.0), "min_tokens": ("min_tokens", 0)}


def _scalar(p: SamplingParams, name: str, default: Any) -> Any:
    value = getattr(p, name, default)
    if value is None:
        return default
    arr = np.asarray(value)
    return arr.item() if arr.ndim == 0 and arr.dtype != object else default


def label(p: SamplingParams) -> str:
    """A short label: `T=0.7 k=50 p=0.9 min_p=0.05` (knobs that are off are omitted).

    The wider catalogue shows as `nsigma=N typical=P eps=E eta=H xtc=A/C
    dynatemp=D^E mirostat=TAU/ETA dry=M` (only those that are on).

    Example:
      >>> label(SamplingParams(temperature=0.7, top_p=0.9))
      'T=0.7 p=0.9'
      >>> label(SamplingParams(temperature=0.7, typical_p=0.9, xtc_probability=0.5))
      'T=0.7 typical=0.9 xtc=0.5/0.1'
    """
    t, k = _scalar(p, "temperature", 1.0), _scalar(p, "top_k", 0)
    tp, m = _scalar(p, "top_p", 1.0), _scalar(p, "min_p", 0.0)
    parts = ["greedy" if t == 0 else f"T={t:g}"]
    if k > 0:
        parts.append(f"k={k}")
    if tp < 1:
        parts.append(f"p={tp:g}")
    if m > 0:
        parts.append(f"min_p={m:g}")
    for name, (short, off) in _EXTRA_KNOBS.items():
        v = _scalar(p, name, off)
        if v != off:
            parts.append(f"{short}={v:g}")
    parts += _catalogue_parts(p)
    return " ".join(parts)


def _catalogue_parts(p: SamplingParams) -> list[str]:
    """Label parts of the wider catalogue and DRY: `typical=0.9`, `xtc=0.5/0.1`, ..."""
    get = lambda name, default: _scalar(p, name, default)  # noqa: E731
    parts = []
    if get("top_n_sigma", -1.0) >= 0:
        parts.append(f"nsigma={get('top_n_sigma', -1.0):g}")
    if get("typical_p", 1.0) < 1:
        parts.append(f"typical={get('typical_p', 1.0):g}")
    for name, short in (("epsilon", "eps"), ("eta", "eta")):
        if get(name, 0.0) > 0:
            parts.append(f"{short}={get(name, 0.0):g}")
    if get("xtc_probability", 0.0) > 0:
        parts.append(f"xtc={get('xtc_probability', 0.0):g}/{get('xtc_threshold', 0.1):g}")
    if get("dynatemp_range", 0.0) > 0:
        e = get("dynatemp_exponent", 1.0)
        parts.append(f"dynatemp={get('dynatemp_range', 0.0):g}" + (f"^{e:g}" if e != 1 else ""))
    if get("mirostat_tau", 0.0) > 0:
        parts.append(f"mirostat={get('mirostat_tau', 0.0):g}/{get('mirostat_eta', 0.1):g}")
    if get("dry_multiplier", 0.0) > 0:
        parts.append(f"dry={get('dry_multiplier', 0.0):g}")
    return parts


def settings_grid(temperature: Sequence[float] = (1.0,), top_k: Sequence[int] = (0,),
                  top_p: Sequence[float] = (1.0,), min_p: Sequence[float] = (0.0,),
                  **more: Sequence[Any]) -> list[SamplingParams]:
    """Every combination of the given values, as a list of `SamplingParams`.

    Extra keyword lists (e.g. `repetition_penalty=[1.0, 1.2]`) are more
    `SamplingParams` fields to combine.

    Example:
      >>> [label(s) for s in settings_grid([0.5, 1.0], top_p=[0.9])]
      ['T=0.5 p=0.9', 'T=1 p=0.9']
    """
    axes = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p, **more}
    return [SamplingParams(**dict(zip(axes, values, strict=True)))
            for values in itertools.product(*axes.values())]


class Explanation(NamedTuple):
    """Probabilities of every token of the vocabulary under every setting.

    Attributes:
      labels: `[S]` one label per setting.
      tokens: `[V]` one printable name per token.
      logits: `[V]` float32, the logits explained.
      probs: `[S, V]` float64, `nucleax.probs` of the logits under each setting.
      survivors: `[S]` tokens with non-zero probability.
      entropy: `[S]` entropy in nats.
      top_prob: `[S]` probability of the most likely token.
      settings: `[S]` the `SamplingParams`.
    """

    labels: list[str]
    tokens: list[str]
    logits: np.ndarray
    probs: np.ndarray
    survivors: np.ndarray
    entropy: np.ndarray
    top_prob: np.ndarray
    settings: list[SamplingParams]

    def top(self, n: int | None = None) -> list[int]:
        """Ids of the `n` largest logits (all tokens if None); ties: lower id first."""
        order = np.argsort(-self.logits, kind="stable")
        return order[: n if n is not None else order.size].tolist()

    def other(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The tokens not in `rows`, together: their probability `[S]` and survivors `[S]`."""
        rest = np.ones(self.logits.size, bool)
        rest[list(rows)] = False
        return self.probs[:, rest].sum(-1), (self.probs[:, rest] > 0).sum(-1)

    def table(self, rows: Sequence[int] | None = None) -> str:
        """A text table: token, logit, probability per setting, "other tokens", summaries."""
        rows = list(range(len(self.tokens))) if rows is None else list(rows)
        n_other = len(self.tokens) - len(rows)
        other_name = f"{OTHER} ({n_other})"
        width = max(10, *(len(lbl) + 1 for lbl in self.labels))
        name_w = max(8, *(len(self.tokens[i]) + 1 for i in rows), len(other_name) + 1 - 8)

        def cell(v: float) -> str:
            return f"{v:>{width}.6f}" if v > 0 else f"{'0 (cut)':>{width}}"

        head = f"{'token':<{name_w}}{'logit':>8} " + "".join(f"{x:>{width}}" for x in self.labels)
        lines = [*self.samplers(), head]
        for i in rows:
            cells = "".join(cell(v) for v in self.probs[:, i])
            lines.append(f"{self.tokens[i]:<{name_w}}{self.logits[i]:>8.3f} {cells}")
        if n_other:
            mass, _ = self.other(rows)
            lines.append(f"{other_name:<{name_w + 9}}" + "".join(cell(v) for v in mass))
        summary = [("survivors", [f"{n:>{width}d}" for n in self.survivors]),
                   (f"entropy ({ENTROPY_UNIT})", [f"{h:>{width}.3f}" for h in self.entropy]),
                   ("top prob", [f"{p:>{width}.4f}" for p in self.top_prob])]
        for name, cells in summary:
            lines.append(f"{name:<{name_w + 9}}" + "".join(cells))
        return "\n".join(lines)

    def samplers(self) -> list[str]:
        """Lines naming the order and each setting's catalogue samplers, when any is on.

        Empty when every setting runs only temperature / top-k / top-p / min-p in
        the default order (the table then looks as it always did).
        """
        from ..samplers import DEFAULT, name_of

        order = self.settings[0].order
        on = [(lbl, s.samplers_on()) for lbl, s in zip(self.labels, self.settings, strict=True)]
        if order == DEFAULT and not any(names for _, names in on):
            return []
        lines = [f"order {name_of(order)}: {' > '.join(order)} > draw (mirostat, where on, "
                 "replaces top-k, typical, top-p and min-p, just before the draw)"]
        lines += [f"samplers on in {lbl}: {', '.join(names) if names else 'none of the catalogue'}"
                  for lbl, names in on]
        return lines

    def to_json(self, rows: Sequence[int] | None = None) -> dict[str, Any]:
        """A JSON-ready dict of the same numbers (floats to 6 significant digits)."""
        rows = list(range(len(self.tokens))) if rows is None else list(rows)
        mass, alive = self.other(rows)
        return rounded({
            "vocab_size": len(self.tokens),
            "entropy_unit": ENTROPY_UNIT,
            "order": list(self.settings[0].order),
            "settings": [{"label": lbl, "params": s.scalars(), "samplers_on": list(s.samplers_on()),
                          "survivors": int(n),
                          "entropy": float(h), "top_prob": float(tp)}
                         for lbl, s, n, h, tp in zip(self.labels, self.settings, self.survivors,
                                                     self.entropy, self.top_prob, strict=True)],
            "tokens": [{"id": int(i), "token": self.tokens[i], "logit": float(self.logits[i]),
                        "probs": self.probs[:, i].tolist()} for i in rows],
            "other": {"count": len(self.tokens) - len(rows), "probs": mass.tolist(),
                      "survivors": alive.tolist()},
        })


def explain(logits: Any, settings: SamplingParams | Sequence[SamplingParams],
            tokens: Sequence[str] | None = None,
            labels: Sequence[str] | None = None) -> Explanation:
    """Probabilities of one row of logits `[V]` under each setting, over the full vocabulary.

    Args:
      logits: `[V]` logits (the whole vocabulary).
      settings: one `SamplingParams` or a list of them (scalar values).
      tokens: a name per token (default: the token ids).
      labels: a label per setting (default: `label(setting)`).

    Example:
      >>> import nucleax
      >>> e = nucleax.explain([5, 2.2, 2.0, 4.5, 3.0, 2.7], nucleax.SamplingParams(1.0))
      >>> e.probs[0].round(6).tolist()[:2], int(e.survivors[0]), round(float(e.entropy[0]), 3)
      ([0.512106, 0.031141], 6, 1.245)
    """
    z = np.asarray(logits, np.float32)
    if z.ndim != 1 or z.size == 0:
        raise ValueError(f"logits must be one non-empty row [V], got shape {z.shape}")
    settings = [settings] if isinstance(settings, SamplingParams) else list(settings)
    if not settings:
        raise ValueError("settings must hold at least one SamplingParams, got none")
    tokens = [str(i) for i in range(z.size)] if tokens is None else [str(t) for t in tokens]
    if len(tokens) != z.size:
        raise ValueError(f"tokens must name every logit: got {len(tokens)} tokens for "
                         f"{z.size} logits")
    labels = list(labels) if labels is not None else [label(s) for s in settings]
    if len(labels) != len(settings):
        raise ValueError(f"labels must name every setting: got {len(labels)} labels for "
                         f"{len(settings)} settings")
    p = np.asarray(_probs(np.tile(z, (len(settings), 1)), SamplingParams.stack(settings)),
                   np.float64)
    return Explanation(labels, tokens, z, p, (p > 0).sum(-1), _entropy(p), p.max(-1), settings)


def _entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats along the last axis (0 log 0 = 0, never -0.0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return 0.0 - np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "drawing charts")
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", "drawing charts")


def _rows_with_other(e: Explanation, rows: Sequence[int] | None) -> tuple[list[int], list[str]]:
    rows = list(range(len(e.tokens))) if rows is None else list(rows)
    names = [e.tokens[i] for i in rows]
    if len(rows) < len(e.tokens):
        names.append(f"{OTHER} ({len(e.tokens) - len(rows)})")
    return rows, names


def _with_other(p: np.ndarray, rows: list[int], vocab: int) -> np.ndarray:
    """`p[..., rows]`, plus one last column holding the rest's mass when rows < V."""
    shown = p[..., rows]
    if len(rows) == vocab:
        return shown
    rest = np.ones(vocab, bool)
    rest[rows] = False
    return np.concatenate([shown, p[..., rest].sum(-1, keepdims=True)], axis=-1)


def plot_bars(e: Explanation, path: str | Path, rows: Sequence[int] | None = None) -> np.ndarray:
    """Grouped bars: one group per token (+ "other tokens"), one bar per setting; x = cut.

    Returns the plotted `[S, len(rows) (+1)]` probabilities.
    """
    plt = _pyplot()
    rows, names = _rows_with_other(e, rows)
    vals = _with_other(e.probs, rows, len(e.tokens))
    n = len(e.labels)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) * max(1, n / 3)), 4.5))
    x = np.arange(len(names))
    for s in range(n):
        pos = x - 0.4 + width * (s + 0.5)
        bars = ax.bar(pos, vals[s], width, label=e.labels[s])
        cut = vals[s] == 0
        ax.scatter(pos[cut], np.zeros(cut.sum()), marker="x", color=bars.patches[0].get_facecolor(),
                   zorder=3)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("probability")
    ax.set_title(f"Next-token probabilities per setting, over all {len(e.tokens)} tokens "
                 "(x = cut)", fontsize=11)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return vals


def _knobs(p: SamplingParams) -> str:
    """The label of `p` without its temperature (what a temperature sweep holds fixed)."""
    return " ".join(label(p).split(" ")[1:]) or "no cut"


def plot_temperature_sweep(e: Explanation, path: str | Path, rows: Sequence[int] | None = None,
                           temperatures: Sequence[float] | None = None) -> dict[str, Any]:
    """Each row's probability (+ "other tokens") as a curve over temperature.

    One panel per distinct top-k / top-p / min-p among the settings; a dashed
    line marks each requested temperature. The probabilities are computed over
    the full vocabulary at every temperature (a cut token's curve is dotted at
    0). This is the static counterpart of the seed article's temperature
    slider.

    Returns:
      `{"temperatures": [N], "panels": {knobs: [N, len(rows) (+1)]}}`, the
      plotted values; the requested temperatures are among the N.
    """
    plt = _pyplot()
    rows, names = _rows_with_other(e, rows)
    requested = [_scalar(s, "temperature", 1.0) for s in e.settings]
    top = max(2.0, *requested)
    temps = np.linspace(0.05, top, 79) if temperatures is None else np.asarray(temperatures)
    temps = np.unique(np.concatenate([temps, [t for t in requested if t > 0]]))
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(e.settings):
        groups.setdefault(_knobs(s), []).append(i)
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 3.6 * len(groups)), squeeze=False)
    panels = {}
    for ax, (knobs, members) in zip(axes[:, 0], groups.items(), strict=True):
        base = e.settings[members[0]]
        sweep = [base.replace(temperature=float(t)) for t in temps]
        p = np.asarray(_probs(np.tile(e.logits, (len(temps), 1)), SamplingParams.stack(sweep)),
                       np.float64)
        vals = _with_other(p, rows, len(e.tokens))
        panels[knobs] = vals
        for j, name in enumerate(names):
            style = {"color": "black", "linestyle": "--"} if j == len(rows) else {}
            (line,) = ax.plot(temps, np.where(vals[:, j] > 0, vals[:, j], np.nan), label=name,
                              **style)
            ax.plot(temps, np.where(vals[:, j] > 0, np.nan, 0.0), linestyle=":",
                    color=line.get_color())
        for i in members:
            t = requested[i]
            ax.axvline(max(t, temps[0]), color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(e.labels[i], (max(t, temps[0]), 1.0), rotation=90, fontsize=7,
                        va="top", ha="right", xycoords=("data", "axes fraction"))
        ax.set_ylabel("probability")
        ax.set_title(f"Probability vs temperature, {knobs} (all {len(e.tokens)} tokens; "
                     "dotted = cut)", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("temperature")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"temperatures": temps, "panels": panels}


_PAGE = Path(__file__).with_name("explain.html")
# The fields the page's controls hold, and their values when off (DRY, a processor, needs a
# history that one row of logits does not have; mirostat shows its first step, mu = 2 tau).
_PAGE_FIELDS = (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0), ("min_p", 0.0),
                ("top_n_sigma", -1.0), ("typical_p", 1.0), ("epsilon", 0.0), ("eta", 0.0),
                ("xtc_probability", 0.0), ("xtc_threshold", 0.1), ("dynatemp_range", 0.0),
                ("dynatemp_exponent", 1.0), ("mirostat_tau", 0.0))


def write_html(e: Explanation, path: str | Path, rows: Sequence[int] | None = None,
               title: str = "nucleax explain") -> None:
    """A self-contained page (no network) with sliders, a live column and one column per setting.

    The page embeds the full vocabulary's float32 logits (base64) and the
    names of the shown `rows`; its script implements the contract of
    `nucleax.probs` in float64 JavaScript over the whole vocabulary (one sort
    when the page loads, then linear work per slider move): the four knobs,
    the wider catalogue (a control each for top-n-sigma, typical, epsilon,
    eta, XTC, dynamic temperature and mirostat's first step) and the peers'
    orders. With XTC on it shows `probs` without a key: the average over
    XTC's coin. The settings must share one order (as `explain` requires).
    """
    from ..samplers import ORDERS, name_of

    rows = list(range(len(e.tokens))) if rows is None else list(rows)
    z = np.ascontiguousarray(e.logits, dtype="<f4")
    settings = [{"label": lbl, **{k: _scalar(s, k, d) for k, d in _PAGE_FIELDS}}
                for lbl, s in zip(e.labels, e.settings, strict=True)]
    order = e.settings[0].order
    name = name_of(order)
    data = json.dumps({"logits_b64": base64.b64encode(z.tobytes()).decode("ascii"),
                       "vocab": int(z.size), "rows": rows, "names": [e.tokens[i] for i in rows],
                       "settings": rounded(settings), "title": title, "order": list(order),
                       "order_name": name if name in ORDERS else "custom"})
    html = _PAGE.read_text(encoding="utf-8").replace("/*DATA*/null", data.replace("</", "<\\/"))
    Path(path).write_text(html, encoding="utf-8")
