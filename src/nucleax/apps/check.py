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
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .._params import SamplingParams

__all__ = ["HIGH_TEMPERATURE", "LOW_TOP_K", "LOW_TOP_P", "MANY_SURVIVORS", "SamplingWarning",
           "check"]

HIGH_TEMPERATURE = 1.3
LOW_TOP_P = 0.3
LOW_TOP_K = 3
LOW_TEMPERATURE = 0.3
MANY_SURVIVORS = 1000


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
    survivors = None
    if logits is not None:
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
    messages = list(dict.fromkeys(messages))  # scalar params: one message, not B copies
    if warn:
        for msg in messages:
            warnings.warn(msg, SamplingWarning, stacklevel=2)
    return messages
