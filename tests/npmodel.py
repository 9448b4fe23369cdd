"""An independent float64 NumPy forward pass of a Llama-family model (no cache)."""

import numpy as np


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rotate(x, pos, base, interleaved):
    """x [T, H, D]: rotate pairs by pos * base^(-2i/D)."""
    d = x.shape[-1]
    out = np.empty_like(x)
    for i in range(d // 2):
        theta = pos[:, None] * base ** (-2.0 * i / d)  # [T, 1]
        a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + d // 2)
        xa, xb = x[:, :, a], x[:, :, b]
        out[:, :, a] = xa * np.cos(theta) - xb * np.sin(theta)
        out[:, :, b] = xa * np.sin(theta) + xb * np.cos(theta)
    return out


def forward(config, weights, tokens):
    """Logits [T, V] for one sequence of token ids, all in float64."""
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    c = config
    t = len(tokens)
    pos = np.arange(t, dtype=np.float64)
    x = w["embed"][np.asarray(tokens)]
    causal = np.tril(np.ones((t, t), bool))
    rep = c.n_heads // c.n_kv_heads
    for layer in range(c.n_layers):
        h = _rms(x, w["attn_norm"][layer], c.norm_eps)
        q = h @ w["wq"][layer].T
        k = h @ w["wk"][layer].T
        v = h @ w["wv"][layer].T
        if c.attn_bias:
            q, k, v = q + w["bq"][layer], k + w["bk"][layer], v + w["bv"][layer]
        q = _rotate(q.reshape(t, c.n_heads, c.head_dim), pos, c.rope_base, c.rope_interleaved)
        k = _rotate(k.reshape(t, c.n_kv_heads, c.head_dim), pos, c.rope_base, c.rope_interleaved)
        v = v.reshape(t, c.n_kv_heads, c.head_dim)
        heads = []
        for hd in range(c.n_heads):
            kv = hd // rep
            s = q[:, hd] @ k[:, kv].T / np.sqrt(c.head_dim)
            s = np.where(causal, s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            heads.append(p @ v[:, kv])
        x = x + np.concatenate(heads, -1) @ w["wo"][layer].T
        h = _rms(x, w["ffn_norm"][layer], c.norm_eps)
        g = h @ w["w_gate"][layer].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w["w_up"][layer].T)) @ w["w_down"][layer].T
    x = _rms(x, w["norm"], c.norm_eps)
    head = w["embed"] if c.tie_embeddings else w["output"]
    return x @ head.T
