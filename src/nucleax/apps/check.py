"""Pitfall warnings for sampling settings (the seed article's "potential pitfalls").

`check(params)` returns human-readable warnings and also emits each as a
`SamplingWarning` (a `UserWarning` subclass), so they can be filtered with
`warnings.filterwarnings("ignore", category=nucleax.SamplingWarning)`. They
never block sampling.

Thresholds (documented, deliberately simple):

- `HIGH_TEMPERATURE = 1.3`: at or above it text tends to turn incoherent
  (the demo's T=1.5 row shows it on SmolLM2).
- `LOW_TOP_P = 0.3`, `LOW_TOP_K = 3`: at or below them output tends to turn
  repetitive and dull (fine for code, where repetition is expected).
- Compounding extremes: a high temperature with nothing trimming the tail
  (top-p >= 0.95, no top-k, no min-p), or a low temperature (<= 0.3) together
  with a low top-p/top-k: both push the same way.
- Inert knobs: `T = 0` makes top-k/top-p/min-p irrelevant; `top_k = 1` makes
  temperature/top-p/min-p irrelevant.
- With `logits` at hand, the actual distribution decides: a row where only
  one token survives is greedy in effect; a row where more than
  `MANY_SURVIVORS = 1000` tokens survive above T=1 is sampling the noisy tail.

Contradictions among the wider catalogue (SEMANTICS Part 2):

- mirostat on together with top-k, top-p, min-p or typical: mirostat
  replaces them, so they are ignored;
- an XTC threshold above 0.5 can never fire (two tokens cannot both hold
  probability >= c > 0.5); a threshold of 0 with XTC on removes every token
  but the least likely ones;
- `top_n_sigma = 0` keeps the largest logit only: greedy in disguise;
- `dynatemp_range > temperature`: the lowest temperature `T - range` is
  clipped at 0;
- `T = 0` is greedy: every catalogue sampler is then inert;
- a sampler on but absent from `params.order` (say typical with
  `order="vllm"`): sampling raises; `nucleax.samplers.missing_steps` names them.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .._params import SamplingParams
from ..samplers import missing_steps

__all__ = ["HIGH_TEMPERATURE", "LOW_TOP_K", "LOW_TOP_P", "MANY_SURVIVORS", "XTC_NEVER",
           "SamplingWarning", "check"]

HIGH_TEMPERATURE = 1.3
LOW_TOP_P = 0.3
LOW_TOP_K = 3
LOW_TEMPERATURE = 0.3
MANY_SURVIVORS = 1000
XTC_NEVER = 0.5  # above it, XTC can never fire
# the fields `check` reads per row, besides the four knobs
_CATALOGUE = ("top_n_sigma", "typical_p", "epsilon", "eta", "xtc_probability", "xtc_threshold",
              "dynatemp_range", "mirostat_tau")
_ON = {"top_n_sigma": lambda c: c["top_n_sigma"] >= 0, "typical_p": lambda c: c["typical_p"] < 1,
       "epsilon": lambda c: c["epsilon"] > 0, "eta": lambda c: c["eta"] > 0,
       "xtc": lambda c: c["xtc_probability"] > 0, "dynatemp": lambda c: c["dynatemp_range"] > 0,
       "mirostat": lambda c: c["mirostat_tau"] > 0}


class SamplingWarning(UserWarning):
    """A sampling setting that is likely to give poor or surprising output."""


def _row_warnings(t: float, k: int, p: float, m: float) -> list[str]:
    out = []
    k_on = k > 0
    if t == 0:
        if k_on or p < 1 or m > 0:
            out.append("temperature 0 is greedy: top-k, top-p and min-p have no effect")
        return out
    if k == 1:
        out.append("top_k=1 keeps only the most likely token: this is greedy decoding, and "
                   "temperature, top-p and min-p have no effect")
        return out
    if t >= HIGH_TEMPERATURE:
        out.append(f"temperature {t:g} >= {HIGH_TEMPERATURE}: text may become incoherent "
                   "(rare tokens gain too much probability)")
        if p >= 0.95 and not k_on and m == 0:
            out.append(f"temperature {t:g} with top_p {p:g} and no top-k/min-p: nothing trims "
                       "the long tail that the high temperature inflates; the effects compound")
    if p <= LOW_TOP_P:
        out.append(f"top_p {p:g} <= {LOW_TOP_P}: output may become repetitive or dull")
    if k_on and k <= LOW_TOP_K:
        out.append(f"top_k {k} <= {LOW_TOP_K}: output may become repetitive or dull")
    if t <= LOW_TEMPERATURE and (p <= LOW_TOP_P or (k_on and k <= LOW_TOP_K)):
        out.append(f"temperature {t:g} together with a small top-p/top-k: both push towards "
                   "greedy decoding, so output will be near-deterministic")
    return out


def _catalogue_warnings(t: float, k: int, p: float, m: float, c: dict[str, float]) -> list[str]:
    """The wider catalogue's contradictions in one row (`c`: its values by field name)."""
    out = []
    if c["mirostat_tau"] > 0:
        ignored = [name for name, on in (("top_k", k > 0), ("top_p", p < 1), ("min_p", m > 0),
                                         ("typical_p", c["typical_p"] < 1)) if on]
        if ignored:
            out.append(f"mirostat is on (tau {c['mirostat_tau']:g}): it replaces "
                       f"{', '.join(ignored)}, which are ignored; switch them off or mirostat")
    a, thr = c["xtc_probability"], c["xtc_threshold"]
    if a > 0 and thr > XTC_NEVER:
        out.append(f"xtc_threshold {thr:g} > {XTC_NEVER}: XTC can never fire (two tokens cannot "
                   f"both have probability >= {thr:g}); use a threshold <= 0.5, e.g. 0.1")
    if a > 0 and thr == 0:
        out.append("xtc_threshold 0 with xtc_probability > 0: every token is a top choice, so "
                   "XTC removes all but the least likely tokens; use e.g. 0.1")
    if c["top_n_sigma"] == 0:
        out.append("top_n_sigma 0 keeps only the largest logit: this is greedy decoding in "
                   "disguise (negative switches top-n-sigma off)")
    d = c["dynatemp_range"]
    if d > 0 and d > t:
        out.append(f"dynatemp_range {d:g} > temperature {t:g}: the lowest temperature "
                   f"{t:g} - {d:g} is clipped at 0, so low-entropy steps turn greedy")
    return out


def check(params: SamplingParams, logits: Any = None, *, warn: bool = True) -> list[str]:
    """Warnings for `params` (per row if it has `[B]` values), optionally on `logits`.

    Args:
      params: the `SamplingParams` to check (host-known values).
      logits: optional `[V]` or `[B, V]` logits; then the surviving-token
        count of the actual distribution informs the warnings.
      warn: also emit each message as a `SamplingWarning`.

    Returns:
      The messages, prefixed with `row i:` when the rows differ.
    """
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be a nucleax.SamplingParams, got {type(params).__name__}")
    batch = params.batch_size or (1 if logits is None or np.ndim(logits) == 1
                                  else int(np.shape(logits)[0]))
    cols = [np.broadcast_to(np.asarray(getattr(params, name)), (batch,))
            for name in ("temperature", "top_k", "top_p", "min_p")]
    more = {name: np.broadcast_to(np.asarray(getattr(params, name)), (batch,))
            for name in _CATALOGUE}
    survivors = None
    missing = missing_steps(params)
    if logits is not None and not missing:  # (with a step missing, sampling raises)
        from .._sample import keep_mask

        mask = np.asarray(keep_mask(logits, params))
        survivors = mask.reshape(-1, mask.shape[-1]).sum(-1)
        if survivors.shape[0] == 1 and batch > 1:
            survivors = np.broadcast_to(survivors, (batch,))
    messages = []
    for row in range(batch):
        t, k, p, m = (float(cols[0][row]), int(cols[1][row]), float(cols[2][row]),
                      float(cols[3][row]))
        found = _row_warnings(t, k, p, m)
        values = {n: float(v[row]) for n, v in more.items()}
        if t > 0:
            found += _catalogue_warnings(t, k, p, m, values)
        else:
            inert = [name for name, on in _ON.items() if on(values)]
            if inert:
                found.append(f"temperature 0 is greedy: {', '.join(inert)} "
                             f"{'has' if len(inert) == 1 else 'have'} no effect")
        if survivors is not None and t > 0 and k != 1:
            n = int(survivors[row])
            if n == 1:
                found.append("only one token survives on these logits: sampling is greedy "
                             "here, whatever the temperature")
            elif n > MANY_SURVIVORS and t > 1:
                found.append(f"{n} tokens survive on these logits at temperature {t:g}: "
                             "the noisy tail is being sampled; consider a lower top-p or a min-p")
        prefix = f"row {row}: " if batch > 1 and params.batch_size else ""
        messages += [prefix + f for f in found]
    if missing:
        from ..samplers import name_of

        messages.append(f"{', '.join(missing)} on, but order {name_of(params.order)!r} has no "
                        "such step: sampling raises; use order='nucleax' (every sampler) or an "
                        "order with those steps")
    messages = list(dict.fromkeys(messages))  # scalar params: one message, not B copies
    if warn:
        for msg in messages:
            warnings.warn(msg, SamplingWarning, stacklevel=2)
    return messages
