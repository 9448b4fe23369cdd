"""Named sampling settings for common scenarios (from the seed articles).

Each preset is a `SamplingParams` with a one-line description::

    >>> import nucleax
    >>> nucleax.presets.get("creative_writing")
    SamplingParams(temperature=0.7, top_k=0, top_p=0.8, min_p=0.0)

The scenario table (temperature / top-p per task), the two worked examples
(factual answers, storytelling) and the suggested starting point come from
the first seed article ("理解生成式模型中的Temperature、Top-k 以及 Top-p 参数").
"""

from __future__ import annotations

from typing import NamedTuple

from .._params import SamplingParams

__all__ = ["PRESETS", "Preset", "get", "names"]


class Preset(NamedTuple):
    params: SamplingParams
    description: str


PRESETS: dict[str, Preset] = {
    "code_generation": Preset(SamplingParams(temperature=0.2, top_p=0.1),
                              "code that follows established patterns; near-deterministic"),
    "creative_writing": Preset(SamplingParams(temperature=0.7, top_p=0.8),
                               "exploratory, varied text for stories"),
    "chatbot": Preset(SamplingParams(temperature=0.5, top_p=0.5),
                      "conversational replies balancing coherence and variety"),
    "code_comments": Preset(SamplingParams(temperature=0.3, top_p=0.2),
                            "concise, relevant code comments"),
    "data_analysis": Preset(SamplingParams(temperature=0.2, top_p=0.1),
                            "correct, efficient data-analysis scripts"),
    "exploratory_code": Preset(SamplingParams(temperature=0.6, top_p=0.7),
                               "code that explores alternative solutions"),
    "factual": Preset(SamplingParams(temperature=0.3, top_k=10),
                      "focused, deterministic factual answers (worked example 1)"),
    "storytelling": Preset(SamplingParams(temperature=1.0, top_p=0.95),
                           "creative, diverse storytelling (worked example 2)"),
    "default": Preset(SamplingParams(temperature=1.0, top_p=0.9),
                      "the suggested starting point when unsure"),
}


def names() -> list[str]:
    return list(PRESETS)


def get(name: str) -> SamplingParams:
    """The `SamplingParams` of a preset; a clear error for unknown names."""
    try:
        return PRESETS[name].params
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {names()}") from None
