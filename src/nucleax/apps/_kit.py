"""The pieces the apps share, one place each.

- `prompt_ids`: a prompt as token ids, wrapped in the model's chat template
  (one user message) unless `chat=False`.
- `forward_logits`: one forward pass with a fresh KV cache, `[T, V]` logits.
- `next_token_logits`: the model's next-token logits after a prompt, with a
  printable name for every token of the vocabulary.
- `score_text`: a long text scored in chunks (logits and the next tokens).
- `stop_sequences`: stop texts as the token-id sequences that spell them.
- `breaker_ids`: DRY's sequence-breaker texts as token ids.
- `TextStreams`: the rows of a `decode.stream` as text: stop texts found on
  the host, the part safe to show while streaming, and each row's outcome.
- `Progress`: a progress bar on stderr (tqdm: rate and ETA) that prints one
  plain summary line instead when stderr is not a terminal.
- `rounded`: floats of a JSON-bound structure rounded to 6 significant digits.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np

__all__ = ["JSON_DIGITS", "Progress", "TextStreams", "breaker_ids", "find_stop",
           "forward_logits", "next_token_logits", "prompt_ids", "rounded", "score_text",
           "stop_sequences", "token_names"]

JSON_DIGITS = 6  # significant digits of every float written as JSON


def rounded(value: Any, digits: int = JSON_DIGITS) -> Any:
    """`value` with every float rounded to `digits` significant digits (for JSON).

    NumPy scalars and arrays become Python numbers and lists; NaN and
    infinities become None (JSON has no spelling for them).

    Example:
      >>> rounded({"p": np.float32(0.2), "xs": [1 / 3, 2, float("nan")]})
      {'p': 0.2, 'xs': [0.333333, 2, None]}
    """
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    if isinstance(value, np.ndarray):
        return rounded(value.tolist(), digits)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        if not np.isfinite(value):
            return None
        return float(f"{value:.{digits}g}")
    return value


def prompt_ids(tokenizer: Any, text: str, *, chat: bool = True) -> list[int]:
    """Token ids of `text`, as one user message of the chat template unless `chat=False`."""
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}])
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError(f"prompt {text!r} encodes to no tokens; give a non-empty prompt")
    return ids


def forward_logits(model: Any, ids: Sequence[int]) -> np.ndarray:
    """Logits `[T, V]` (float32) of one forward pass over `ids` with a fresh cache."""
    import jax.numpy as jnp

    if len(ids) == 0:
        raise ValueError("ids must hold at least one token, got none")
    x = jnp.asarray([list(ids)], jnp.int32)
    positions = jnp.arange(x.shape[1], dtype=jnp.int32)[None]
    logits, _ = model(x, positions, model.init_cache(1, x.shape[1]))
    return np.asarray(logits[0], np.float32)


def token_names(tokenizer: Any, vocab: int) -> list[str]:
    """A printable name per token id: the quoted text it decodes to (`' Paris'`)."""
    cache = getattr(tokenizer, "_nucleax_names", None)
    if cache is None or len(cache) != vocab:
        cache = [repr(tokenizer.decode([i], skip_special=False)) for i in range(vocab)]
        tokenizer._nucleax_names = cache
    return cache


def next_token_logits(model: Any, tokenizer: Any, text: str, *,
                      chat: bool = True) -> tuple[np.ndarray, list[str]]:
    """The model's next-token logits `[V]` after `text`, and a name per token."""
    logits = forward_logits(model, prompt_ids(tokenizer, text, chat=chat))[-1]
    return logits, token_names(tokenizer, logits.shape[-1])


def score_text(model: Any, ids: Sequence[int], *, chunk: int = 256,
               progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Logits `[N, V]` of every position of `ids` but the last, and the next tokens `[N]`.

    The text is cut into chunks of `chunk` positions, each scored by its own
    forward pass (a chunk sees only itself, so the cost stays linear).
    """
    if len(ids) < 2:
        raise ValueError(f"the text holds {len(ids)} token(s); scoring needs at least 2")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    starts = range(0, len(ids) - 1, chunk)
    logits, targets = [], []
    with Progress(len(starts), "chunks", "scoring", enabled=progress) as bar:
        for start in starts:
            piece = list(ids[start:start + chunk + 1])
            logits.append(forward_logits(model, piece[:-1]))
            targets.extend(piece[1:])
            bar.update(1)
    return np.concatenate(logits), np.asarray(targets, np.int32)


def _plain_ids(tokenizer: Any, text: str) -> list[int]:
    """`text` as token ids without BOS or other added tokens (a piece of mid-text)."""
    backend = getattr(tokenizer, "backend", None)
    if backend is not None:
        return list(backend.encode(text, add_special_tokens=False).ids)
    return list(tokenizer.encode(text))


def breaker_ids(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """DRY's sequence-breaker ids: every token id of each text's encoding, sorted, once each.

    Example:
      >>> class Chars:  # a tokenizer with one token per character
      ...     def encode(self, text): return [ord(c) for c in text]
      >>> breaker_ids(Chars(), ["\\n", ": ", ":"])
      [10, 32, 58]
    """
    ids: set[int] = set()
    for text in texts:
        got = _plain_ids(tokenizer, text)
        if not got:
            raise ValueError(f"--dry-sequence-breaker: {text!r} encodes to no tokens; give a "
                             "text the tokenizer can spell")
        ids.update(int(i) for i in got)
    return sorted(ids)


def stop_sequences(tokenizer: Any, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
    """Token-id sequences that spell each stop text, and which text each belongs to.

    A text can reach the model's output under several tokenizations: as
    encoded alone, after a space (`" END"` merges the space into the word),
    or one character at a time (`"\\n\\n"` as two newline tokens). All of
    them are returned, so a stop text split across tokens is still caught on
    the device; callers should also search the decoded text, which catches
    any spelling.

    Returns:
      `(sequences, owner)`: `owner[i]` is the index in `texts` of `sequences[i]`.
    """
    def enc(s: str) -> list[int]:  # no BOS: a stop sequence is mid-text
        return _plain_ids(tokenizer, s)

    seqs: list[list[int]] = []
    owner: list[int] = []
    for j, text in enumerate(texts):
        if not text:
            raise ValueError("stop texts must not be empty")
        variants = [enc(text)]
        if not text[0].isspace():
            variants.append(enc(" " + text))
        if len(text) <= 16:
            variants.append([t for ch in text for t in enc(ch)])
        for v in variants:
            if v and v not in [s for s, o in zip(seqs, owner, strict=True) if o == j]:
                seqs.append(v)
                owner.append(j)
    return seqs, owner


def find_stop(text: str, stops: Sequence[str]) -> tuple[int, int] | None:
    """`(position, index)` of the earliest stop text in `text`, or None."""
    best = None
    for j, s in enumerate(stops):
        pos = text.find(s)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, j)
    return best


class TextStreams:
    """The rows of a `nucleax.decode.stream` as text, with stop texts found on the host.

    Feed every `(tokens, live)` pair to `add`. A row finishes when the device
    stops it (a stop id, a stop sequence, `max_new_tokens`) or when its text
    contains one of `stop_texts`; its text then ends before that stop text.
    `settled(row)` is the text safe to print while streaming: it holds back
    as many characters as a stop text could still need, and an incomplete
    UTF-8 character.
    """

    def __init__(self, tokenizer: Any, batch: int, stop_texts: Sequence[str] = (),
                 stop_ids: Sequence[int] = (), ignore_eos: bool = False):
        self.tokenizer, self.stop_texts = tokenizer, list(stop_texts)
        self.stop_ids = () if ignore_eos else tuple(stop_ids)
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.finished = [False] * batch
        self.stop_at: list[tuple[int, int] | None] = [None] * batch
        self._hold = max((len(t) for t in self.stop_texts), default=1) - 1

    @property
    def done(self) -> bool:
        """True once every row has finished."""
        return all(self.finished)

    def add(self, tokens: Any, live: Any) -> None:
        """One step of `stream`: `tokens [B]`, `live [B]`."""
        tokens, live = np.asarray(tokens), np.asarray(live)
        for i in range(len(self.tokens)):
            if not live[i]:
                self.finished[i] = True
            elif not self.finished[i]:
                self.tokens[i].append(int(tokens[i]))
                if self.stop_texts:
                    self.stop_at[i] = find_stop(self.text(i), self.stop_texts)
                    self.finished[i] = self.stop_at[i] is not None

    def text(self, row: int) -> str:
        """Everything generated in `row` so far, decoded."""
        return self.tokenizer.decode(self.tokens[row])

    def settled(self, row: int) -> str:
        """The text of `row` that no later token can change or cut."""
        text = self.text(row)
        stop = self.stop_at[row]
        end = stop[0] if stop else len(text) if self.finished[row] else len(text) - self._hold
        return text[:max(end, 0)].rstrip("\ufffd")

    def outcome(self, row: int) -> dict[str, Any]:
        """`text`, `tokens`, `finish_reason` (stop, stop_text, length) and `stop_text`."""
        text, stop, toks = self.text(row), self.stop_at[row], self.tokens[row]
        if stop:
            reason, text = "stop_text", text[:stop[0]]
        elif toks and toks[-1] in self.stop_ids:
            reason = "stop"
        else:
            reason = "length"
        return {"text": text, "tokens": toks, "finish_reason": reason,
                "stop_text": self.stop_texts[stop[1]] if stop else None}


class Progress:
    """A progress bar on stderr, with rate and ETA (tqdm), while work runs.

    When stderr is not a terminal (a log file, a pipe, CI), nothing is
    redrawn: one plain line is printed at the end instead, so logs hold no
    carriage returns. `enabled=False` prints nothing at all.

    Example:
      >>> import io
      >>> log = io.StringIO()
      >>> with Progress(3, "steps", "demo", file=log) as bar:
      ...     bar.update(3)
      >>> log.getvalue().startswith("demo: 3/3 steps in ")
      True
    """

    def __init__(self, total: int, unit: str, desc: str, *, enabled: bool = True,
                 file: TextIO | None = None):
        self.total, self.unit, self.desc, self.enabled = total, unit, desc, enabled
        self.file = sys.stderr if file is None else file
        self.done = 0
        self._t0 = time.perf_counter()
        self._bar = None
        isatty = getattr(self.file, "isatty", None)
        if enabled and isatty is not None and isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=f" {unit}", desc=desc, file=self.file,
                             dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled:
            seconds = time.perf_counter() - self._t0
            print(f"{self.desc}: {self.done}/{self.total} {self.unit} in {seconds:.1f} s",
                  file=self.file, flush=True)
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
