"""Named sampling settings for common scenarios (from the seed article), and the default.

Each preset is a `SamplingParams` with a one-line description::

    >>> import nucleax
    >>> nucleax.presets.get("creative_writing").scalars()["top_p"]
    0.8
    >>> nucleax.presets.DEFAULT, nucleax.presets.get(nucleax.presets.DEFAULT).scalars()["top_p"]
    ('default', 0.9)

The scenario table (temperature / top-p per task), the two worked examples
(factual answers, storytelling) and the suggested starting point come from
the first seed article ("理解生成式模型中的Temperature、Top-k 以及 Top-p 参数").

`DEFAULT` names the one default setting of every tool (the command line,
sweep, explain, the decode benchmark): the article's starting point,
temperature 1.0 with top-p 0.9. `SamplingParams()` itself is the identity
(every knob off): a library value means exactly what is written.

Three rows of the article's table (code generation, code comments, data
analysis: temperature 0.2-0.3 with top-p 0.1-0.2) are revised: at such a
temperature the 0.1-0.2 nucleus holds a single token at almost every step,
so the pair is greedy decoding under another name, and `nucleax.check` warns
about exactly that. The presets keep the article's temperature, which alone
gives the focused, near-deterministic output the table asks for, and leave
top-p off. `Preset.article` keeps the table's values.
"""

from __future__ import annotations

import difflib
from typing import NamedTuple

from .._params import SamplingParams

__all__ = ["DEFAULT", "PRESETS", "Preset", "get", "names"]

DEFAULT = "default"


class Preset(NamedTuple):
    """A named setting: its params, what it is for, and the seed article's values."""

    params: SamplingParams
    description: str
    article: str  # the seed article's values for this scenario
    revised: str = ""  # why the preset differs from the article, if it does


_REVISED = ("at T<=0.3 a top-p of 0.1-0.2 keeps one token at almost every step (greedy in "
            "disguise, which nucleax.check warns about); the temperature alone keeps the "
            "output focused")

PRESETS: dict[str, Preset] = {
    "code_generation": Preset(SamplingParams(temperature=0.2),
                              "code that follows established patterns; near-deterministic",
                              "T=0.2 p=0.1", _REVISED),
    "creative_writing": Preset(SamplingParams(temperature=0.7, top_p=0.8),
                               "exploratory, varied text for stories", "T=0.7 p=0.8"),
    "chatbot": Preset(SamplingParams(temperature=0.5, top_p=0.5),
                      "conversational replies balancing coherence and variety", "T=0.5 p=0.5"),
    "code_comments": Preset(SamplingParams(temperature=0.3),
                            "concise, relevant code comments", "T=0.3 p=0.2", _REVISED),
    "data_analysis": Preset(SamplingParams(temperature=0.2),
                            "correct, efficient data-analysis scripts", "T=0.2 p=0.1", _REVISED),
    "exploratory_code": Preset(SamplingParams(temperature=0.6, top_p=0.7),
                               "code that explores alternative solutions", "T=0.6 p=0.7"),
    "factual": Preset(SamplingParams(temperature=0.3, top_k=10),
                      "focused, deterministic factual answers (worked example 1)", "T=0.3 k=10"),
    "storytelling": Preset(SamplingParams(temperature=1.0, top_p=0.95),
                           "creative, diverse storytelling (worked example 2)", "T=1 p=0.95"),
    DEFAULT: Preset(SamplingParams(temperature=1.0, top_p=0.9),
                    "the suggested starting point when unsure; every tool's default",
                    "T=1 p=0.9"),
}


def names() -> list[str]:
    """The preset names, in the article's order (`default` last)."""
    return list(PRESETS)


def get(name: str) -> SamplingParams:
    """The `SamplingParams` of a preset; a clear error for unknown names."""
    try:
        return PRESETS[name].params
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown preset {name!r}; expected one of {names()}{hint}") from None
