"""A `tokenizers` BPE tokenizer and chat template built from GGUF metadata."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._extras import require
from .gguf import metadata_field

# Pre-tokenizer split patterns by `tokenizer.ggml.pre` (llama.cpp's names).
_GPT2 = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
          r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DIGIT_SPLIT = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"}
_CONTROL, _USER_DEFINED = 3, 4


class Tokenizer:
    """Text <-> token ids, plus the model's chat template.

    Attributes:
      bos_id, eos_id: special ids from the file (eos may be None).
      stop_ids: ids that end a generated turn (eos and, if present, `<|im_end|>`
        and `<|endoftext|>`).
    """

    def __init__(self, backend: Any, *, bos_id: int | None, eos_id: int | None,
                 add_bos: bool, chat_template: str | None):
        self.backend = backend
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos
        self.chat_template = chat_template
        stops = {eos_id} if eos_id is not None else set()
        for name in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            tid = backend.token_to_id(name)
            if tid is not None:
                stops.add(tid)
        self.stop_ids = tuple(sorted(stops))

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (special tokens written in the text are parsed)."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if self.add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray | Any, skip_special: bool = True) -> str:
        """Text of `ids` (a list, a NumPy or a JAX array of token ids)."""
        return self.backend.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                   skip_special_tokens=skip_special)

    def apply_chat_template(self, messages: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        """Renders the model's own Jinja chat template."""
        if not self.chat_template:
            raise ValueError("this model file has no chat template; use raw prompts")
        jinja2 = require("jinja2", "the chat template")
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self._token(self.bos_id), eos_token=self._token(self.eos_id))

    def _token(self, tid: int | None) -> str:
        return "" if tid is None else (self.backend.id_to_token(tid) or "")


def tokenizer_from_gguf(reader: Any) -> Tokenizer:
    """Builds the tokenizer from a `gguf.GGUFReader`'s metadata (BPE models)."""
    tk = require("tokenizers", "the GGUF tokenizer")
    AddedToken, Regex, Backend = tk.AddedToken, tk.Regex, tk.Tokenizer
    decoders, models, pre_tokenizers = tk.decoders, tk.models, tk.pre_tokenizers
    field = functools.partial(metadata_field, reader)

    kind = field("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"unsupported tokenizer model {kind!r}: only byte-level BPE "
                         "('gpt2', used by Llama-3, SmolLM, Qwen2) is supported")
    tokens = field("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges", [])]
    types = field("tokenizer.ggml.token_type", [1] * len(tokens))
    backend = Backend(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                 fuse_unk=False))
    pre = field("tokenizer.ggml.pre", "gpt2")
    pattern = _QWEN2 if pre == "qwen2" else _GPT2
    steps = [pre_tokenizers.Digits(individual_digits=True)] if pre in _DIGIT_SPLIT else []
    steps += [pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types, strict=True) if ty in (_CONTROL, _USER_DEFINED)]
    backend.add_special_tokens(special)

    def opt_int(key):
        v = field(key)
        return None if v is None else int(v)

    return Tokenizer(backend, bos_id=opt_int("tokenizer.ggml.bos_token_id"),
                     eos_id=opt_int("tokenizer.ggml.eos_token_id"),
                     add_bos=bool(field("tokenizer.ggml.add_bos_token", False)),
                     chat_template=field("tokenizer.chat_template"))
