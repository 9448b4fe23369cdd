"""A Flax NNX Llama-family decoder (Llama, SmolLM, Qwen2) with a KV cache.

GQA attention, RoPE, RMSNorm, SwiGLU MLP, tied or separate output embedding,
optional q/k/v biases (Qwen2). Each layer is its own `Block` module with its
own parameters, and the layers run as an unrolled Python loop. (A `lax.scan`
over stacked weights would slice, and on CPU copy, every layer's weights at
every step: twice the memory traffic of a batch-1 decode step.)

The cache keeps one slot per absolute position: the token at position `p` of
row `b` is written to slot `p`, and a query at position `q` attends to slots
`<= q`. Rows of different lengths therefore need no left padding: a prompt
padded on the right writes junk past its end, which the row's own generated
tokens overwrite, in order, before any query can see it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shapes and constants of a Llama-family model."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    head_dim: int
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    context_length: int = 2048
    attn_bias: bool = False  # Qwen2 has q/k/v biases
    rope_interleaved: bool = True  # llama.cpp-permuted weights rotate adjacent pairs
    tie_embeddings: bool = True
    arch: str = "llama"

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                             f"({self.n_kv_heads})")


class KVCache(NamedTuple):
    """Keys and values, `[layers, B, S, kv_heads, head_dim]` each."""

    k: jax.Array
    v: jax.Array


# Per-layer weight names, their shapes as (rows, cols) functions of the config.
LAYER_SHAPES = {
    "attn_norm": lambda c: (c.dim,),
    "wq": lambda c: (c.n_heads * c.head_dim, c.dim),
    "wk": lambda c: (c.n_kv_heads * c.head_dim, c.dim),
    "wv": lambda c: (c.n_kv_heads * c.head_dim, c.dim),
    "wo": lambda c: (c.dim, c.n_heads * c.head_dim),
    "ffn_norm": lambda c: (c.dim,),
    "w_gate": lambda c: (c.hidden_dim, c.dim),
    "w_up": lambda c: (c.hidden_dim, c.dim),
    "w_down": lambda c: (c.dim, c.hidden_dim),
}
BIAS_SHAPES = {
    "bq": lambda c: (c.n_heads * c.head_dim,),
    "bk": lambda c: (c.n_kv_heads * c.head_dim,),
    "bv": lambda c: (c.n_kv_heads * c.head_dim,),
}


def weight_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every weight's shape; layer weights carry a leading `n_layers` axis."""
    shapes = {"embed": (config.vocab_size, config.dim), "norm": (config.dim,)}
    if not config.tie_embeddings:
        shapes["output"] = (config.vocab_size, config.dim)
    layer = dict(LAYER_SHAPES, **(BIAS_SHAPES if config.attn_bias else {}))
    shapes.update({n: (config.n_layers, *f(config)) for n, f in layer.items()})
    return shapes


def random_weights(config: LlamaConfig, seed: int = 0, scale: float = 0.2) -> dict[str, np.ndarray]:
    """Random float32 weights (for tests and examples); norms near 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in weight_shapes(config).items():
        if name.endswith("norm"):
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            fan_in = shape[-1] if len(shape) > 1 else 1
            out[name] = (scale * rng.standard_normal(shape) / np.sqrt(max(fan_in, 1)) * 4)
            out[name] = out[name].astype(np.float32)
    return out


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    scale = lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return x32 * scale * weight.astype(jnp.float32)


def rope(x: jax.Array, positions: jax.Array, base: float, interleaved: bool) -> jax.Array:
    """Rotary embedding of `x` `[B, T, H, D]` at `positions` `[B, T]`.

    Interleaved: pairs `(x[2i], x[2i+1])` rotate by `pos * base^(-2i/D)`
    (llama.cpp's layout for Llama); otherwise the halves `(x[i], x[i+D/2])`
    (the "neox" layout, Qwen2).
    """
    d = x.shape[-1]
    freqs = base ** (-jnp.arange(0, d // 2, dtype=jnp.float32) * 2.0 / d)
    angles = positions.astype(jnp.float32)[..., None] * freqs  # [B, T, D/2]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
        return out.reshape(x.shape)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _linear(x: jax.Array, w: jax.Array) -> jax.Array:
    """`x @ w.T` with float32 accumulation (w is `[out, in]`, any float dtype)."""
    return lax.dot_general(x.astype(w.dtype), w, (((x.ndim - 1,), (1,)), ((), ())),
                           preferred_element_type=jnp.float32)


class Block(nnx.Module):
    """One decoder layer's parameters (names as in `LAYER_SHAPES` / `BIAS_SHAPES`)."""

    def __init__(self, arrays: dict[str, np.ndarray], dtype: jnp.dtype):
        # q/k/v and gate/up are fused into one matrix each: fewer, larger dots.
        fused = {"wqkv": np.concatenate([arrays["wq"], arrays["wk"], arrays["wv"]]),
                 "w_gate_up": np.concatenate([arrays["w_gate"], arrays["w_up"]])}
        if "bq" in arrays:
            fused["bqkv"] = np.concatenate([arrays["bq"], arrays["bk"], arrays["bv"]])
        for name in ("attn_norm", "ffn_norm", "wo", "w_down"):
            fused[name] = arrays[name]
        for name, arr in fused.items():
            keep_f32 = name.endswith("norm") or name.startswith("b")
            setattr(self, name, nnx.Param(jnp.asarray(arr, jnp.float32 if keep_f32 else dtype)))

    def __call__(self, c: LlamaConfig, x, positions, k_all, v_all, idx, visible):
        b, t, _ = x.shape
        rows = jnp.arange(b)[:, None]
        group = c.n_heads // c.n_kv_heads
        h = rms_norm(x, self.attn_norm[...], c.norm_eps)
        qkv = _linear(h, self.wqkv[...])
        if c.attn_bias:
            qkv = qkv + self.bqkv[...]
        nq, nkv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        q, k, v = qkv[..., :nq], qkv[..., nq:nq + nkv], qkv[..., nq + nkv:]
        q = rope(q.reshape(b, t, c.n_heads, c.head_dim), positions, c.rope_base,
                 c.rope_interleaved)
        k = rope(k.reshape(b, t, c.n_kv_heads, c.head_dim), positions, c.rope_base,
                 c.rope_interleaved)
        v = v.reshape(b, t, c.n_kv_heads, c.head_dim)
        k_all = k_all.at[idx, rows, positions].set(k)
        v_all = v_all.at[idx, rows, positions].set(v)
        keys, values = k_all[idx], v_all[idx]  # [B, S, Hkv, D]
        qg = q.reshape(b, t, c.n_kv_heads, group, c.head_dim)
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, keys) / np.sqrt(c.head_dim)
        scores = jnp.where(visible[:, None, None], scores, -jnp.inf)
        attn = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bkgts,bskd->btkgd", attn, values).reshape(b, t, -1)
        x = x + _linear(out, self.wo[...])
        h = rms_norm(x, self.ffn_norm[...], c.norm_eps)
        gate_up = _linear(h, self.w_gate_up[...])
        gate = jax.nn.silu(gate_up[..., :c.hidden_dim]) * gate_up[..., c.hidden_dim:]
        return x + _linear(gate, self.w_down[...]), k_all, v_all


class Llama(nnx.Module):
    """Llama-family decoder. Call: `(tokens, positions, cache) -> (logits, cache)`.

    Args:
      config: the `LlamaConfig`.
      weights: a dict from `weight_shapes(config)` names to arrays (float32
        NumPy arrays from `nucleax.models.read_gguf`, or `random_weights`);
        layer weights stacked on a leading layer axis.
      dtype: the matrices' dtype (float32 or bfloat16); norms, biases,
        activations, softmax and logits stay float32.
    """

    def __init__(self, config: LlamaConfig, weights: dict[str, np.ndarray],
                 dtype: jnp.dtype = jnp.float32):
        self.config = config
        shapes = weight_shapes(config)
        missing = sorted(set(shapes) - set(weights))
        if missing:
            raise ValueError(f"weights are missing {missing}")
        for name, shape in shapes.items():
            if np.shape(weights[name]) != shape:
                raise ValueError(f"weight {name!r} must have shape {shape}, "
                                 f"got {np.shape(weights[name])}")
        self.embed = nnx.Param(jnp.asarray(weights["embed"], dtype))
        self.norm = nnx.Param(jnp.asarray(weights["norm"], jnp.float32))
        if not config.tie_embeddings:
            self.output = nnx.Param(jnp.asarray(weights["output"], dtype))
        names = list(LAYER_SHAPES) + (list(BIAS_SHAPES) if config.attn_bias else [])
        self.layers = nnx.List([
            Block({n: np.asarray(weights[n][i]) for n in names}, jnp.dtype(dtype))
            for i in range(config.n_layers)])

    def init_cache(self, batch: int, length: int) -> KVCache:
        c = self.config
        shape = (c.n_layers, batch, length, c.n_kv_heads, c.head_dim)
        return KVCache(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))

    def __call__(self, tokens: jax.Array, positions: jax.Array,
                 cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Logits `[B, T, V]` (float32) for `tokens` `[B, T]` at `positions` `[B, T]`."""
        c = self.config
        x = jnp.take(self.embed[...], tokens, axis=0).astype(jnp.float32)
        slots = jnp.arange(cache.k.shape[2])
        visible = slots[None, None, :] <= positions[:, :, None]  # [B, T, S]
        k_all, v_all = cache
        for i, block in enumerate(self.layers):
            x, k_all, v_all = block(c, x, positions, k_all, v_all, i, visible)
        x = rms_norm(x, self.norm[...], c.norm_eps)
        head = self.embed[...] if c.tie_embeddings else self.output[...]
        return _linear(x, head), KVCache(k_all, v_all)
