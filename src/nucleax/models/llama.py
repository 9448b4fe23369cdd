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

Tensor parallelism (`Llama.shard`): the rows of the fused matrices are
ordered by what a device can own whole: q/k/v by KV head (the `group` query
heads of a KV head, then its key, then its value), gate/up by hidden unit
(its gate row, then its up row). A model axis then splits KV heads (q/k/v,
the output projection, the KV cache), hidden units (the MLP) and the
vocabulary (embedding and head) into contiguous row blocks, each where it
divides; the logits come out split over the vocabulary, as the sharded
sampler (`nucleax.sharding`) takes them. The matrices stay 2-D, so the
one-device dots are those of the plain layout.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


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
    """`x @ w.T` with float32 accumulation (w is `[out, in]`, any float dtype).

    On the CPU it is computed as `(w @ x.T).T`: the same products, and XLA's CPU
    dot runs a decode step 1.3-1.4x faster in that form at batch 8 (a few rows
    against `[out, in]` weights), the same at batch 1.
    """
    x = x.astype(w.dtype)
    if jax.default_backend() == "cpu":
        y = lax.dot_general(w, x, (((1,), (x.ndim - 1,)), ((), ())),
                            preferred_element_type=jnp.float32)
        return jnp.moveaxis(y, 0, -1)
    return lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())),
                           preferred_element_type=jnp.float32)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a sharded model's arrays live (static: part of the model's graph).

    Attributes:
      mesh: the mesh, with automatic axes (XLA partitions the model's ops).
      batch_axis: mesh axis of the batch (rows of tokens, cache, logits), or None.
      model_axis: mesh axis of the weights, or None.
      heads, hidden, vocab: whether KV heads, MLP hidden units and the
        vocabulary are split over `model_axis` (each only where it divides).
    """

    mesh: Mesh
    batch_axis: str | None
    model_axis: str | None
    heads: bool
    hidden: bool
    vocab: bool

    def batch(self, size: int) -> str | None:
        """The batch axis if `size` rows divide it, else None (rows replicated)."""
        n = self.mesh.shape[self.batch_axis] if self.batch_axis else 1
        return self.batch_axis if size % n == 0 else None

    def constrain(self, x: jax.Array, *spec) -> jax.Array:
        return lax.with_sharding_constraint(x, NamedSharding(self.mesh, P(*spec)))


class Block(nnx.Module):
    """One decoder layer's parameters (names as in `LAYER_SHAPES` / `BIAS_SHAPES`)."""

    def __init__(self, arrays: dict[str, np.ndarray], dtype: jnp.dtype, config: LlamaConfig):
        # q/k/v and gate/up are fused into one matrix each (fewer, larger dots),
        # rows ordered by KV head and by hidden unit so that a model axis can split them.
        kv, hd = config.n_kv_heads, config.head_dim

        def by_kv_head(q, k, v):  # rows: per KV head, its query heads, its key, its value
            rest = q.shape[1:]
            grouped = np.concatenate([q.reshape(kv, -1, *rest), k.reshape(kv, hd, *rest),
                                      v.reshape(kv, hd, *rest)], axis=1)
            return grouped.reshape(-1, *rest)

        fused = {"wqkv": by_kv_head(arrays["wq"], arrays["wk"], arrays["wv"]),
                 "w_gate_up": np.stack([arrays["w_gate"], arrays["w_up"]], axis=1)
                 .reshape(2 * config.hidden_dim, config.dim)}  # rows: gate_i, up_i, ...
        if "bq" in arrays:
            fused["bqkv"] = by_kv_head(arrays["bq"], arrays["bk"], arrays["bv"])
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
        qkv = qkv.reshape(b, t, c.n_kv_heads, -1)  # per KV head: group queries, key, value
        nq = group * c.head_dim
        q, k, v = qkv[..., :nq], qkv[..., nq:nq + c.head_dim], qkv[..., nq + c.head_dim:]
        q = rope(q.reshape(b, t, c.n_heads, c.head_dim), positions, c.rope_base,
                 c.rope_interleaved)
        k = rope(k, positions, c.rope_base, c.rope_interleaved)
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
        gate_up = _linear(h, self.w_gate_up[...]).reshape(b, t, c.hidden_dim, 2)
        gate = jax.nn.silu(gate_up[..., 0]) * gate_up[..., 1]
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
            Block({n: np.asarray(weights[n][i]) for n in names}, jnp.dtype(dtype), config)
            for i in range(config.n_layers)])
        self.placement = None  # set by `shard`

    def shard(self, mesh: Mesh, *, batch_axis: str | None = "data",
              model_axis: str | None = "model") -> Llama:
        """A copy of the model with its weights placed over `mesh` (tensor and data parallel).

        `model_axis` splits KV heads (q/k/v, output projection, KV cache),
        MLP hidden units and the vocabulary (embedding, output head), each
        only where its size divides the axis (else that weight is
        replicated); `batch_axis` splits the rows of tokens, cache and
        logits. XLA partitions the model's ops from these placements; the
        logits come out `[B, T, V]` split as `P(batch_axis, None,
        model_axis)`, ready for `nucleax.sharding.sample_sharded`. The
        outputs are those of the unsharded model (up to float summation
        order). The model itself is unchanged.

        Example:
          >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
          >>> config = LlamaConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2,
          ...                      n_kv_heads=1, hidden_dim=32, head_dim=8)
          >>> model = Llama(config, random_weights(config)).shard(mesh)
          >>> model.placement.vocab
          True
        """
        names = mesh.axis_names
        for arg, axis in (("batch_axis", batch_axis), ("model_axis", model_axis)):
            if axis is not None and axis not in names:
                raise ValueError(f"{arg} must be None or one of the mesh's axes {names}, "
                                 f"got {axis!r}")
        auto = Mesh(mesh.devices, names, axis_types=(AxisType.Auto,) * len(names))
        m = auto.shape[model_axis] if model_axis else 1
        c = self.config
        model = nnx.merge(*nnx.split(self))  # new Variables over the same arrays
        split = lambda n: model_axis is not None and n % m == 0  # noqa: E731
        heads, hidden, vocab = split(c.n_kv_heads), split(c.hidden_dim), split(c.vocab_size)
        h, f, v = (model_axis if on else None for on in (heads, hidden, vocab))

        def put(var, *spec):
            var.set_value(jax.device_put(var[...], NamedSharding(auto, P(*spec))))

        put(model.embed, v, None)
        put(model.norm)
        if not c.tie_embeddings:
            put(model.output, v, None)
        for block in model.layers:
            put(block.wqkv, h, None)  # rows: whole KV-head groups per device
            put(block.wo, None, h)  # columns: the same heads
            put(block.w_gate_up, f, None)  # rows: whole hidden units per device
            put(block.w_down, None, f)
            put(block.attn_norm)
            put(block.ffn_norm)
            if c.attn_bias:
                put(block.bqkv, h)
        model.placement = Placement(auto, batch_axis, model_axis, heads, hidden, vocab)
        return model

    def init_cache(self, batch: int, length: int) -> KVCache:
        c = self.config
        shape = (c.n_layers, batch, length, c.n_kv_heads, c.head_dim)
        k, v = jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)
        where = self.placement
        if where is not None:
            spec = (None, where.batch(batch), None, where.model_axis if where.heads else None)
            k, v = where.constrain(k, *spec), where.constrain(v, *spec)
        return KVCache(k, v)

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
        logits = _linear(x, head)
        where = self.placement
        if where is not None:  # keep the logits split over the vocabulary for the sampler
            logits = where.constrain(logits, where.batch(logits.shape[0]), None,
                                     where.model_axis if where.vocab else None)
        return logits, KVCache(k_all, v_all)
