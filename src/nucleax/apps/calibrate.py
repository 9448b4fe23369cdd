"""Temperature calibration (Guo et al., 2017, "On Calibration of Modern Neural Networks").

`calibrate_temperature(logits, targets)` fits the single temperature `T` that
minimises the negative log-likelihood of `targets` under `softmax(logits / T)`,
with an optax optimiser on `log T`, and reports the NLL and the expected
calibration error (ECE, 15 equal-width confidence bins) before and after.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._extras import require

__all__ = ["CalibrationResult", "calibrate_temperature", "expected_calibration_error",
           "plot_reliability", "reliability"]


class CalibrationResult(NamedTuple):
    """The fitted temperature, and NLL (nats per token) and ECE before and after it."""

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float


def _check(logits: Any, targets: Any) -> tuple[jax.Array, jax.Array]:
    z = jnp.asarray(logits)
    t = jnp.asarray(targets)
    if not jnp.issubdtype(z.dtype, jnp.floating) or z.ndim != 2:
        raise ValueError(f"logits must be a float [N, V] array, got {z.dtype} shape {z.shape}")
    if not jnp.issubdtype(t.dtype, jnp.integer) or t.ndim != 1:
        raise ValueError(f"targets must be an int [N] array, got {t.dtype} shape {t.shape}")
    if t.shape[0] != z.shape[0]:
        raise ValueError(f"logits and targets must match: {z.shape[0]} rows of logits, "
                         f"{t.shape[0]} targets")
    if t.shape[0] < 1:
        raise ValueError("need at least one target token")
    if int(t.min()) < 0 or int(t.max()) >= z.shape[1]:
        raise ValueError(f"targets must be token ids in [0, {z.shape[1]}), got "
                         f"[{int(t.min())}, {int(t.max())}]")
    return z.astype(jnp.float32), t.astype(jnp.int32)


def _nll(z: jax.Array, t: jax.Array, temperature: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(z / temperature, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, t[:, None], axis=-1))


def reliability(logits: Any, targets: Any, temperature: float = 1.0, bins: int = 15):
    """Per-bin (mean confidence, accuracy, count) of the top-1 prediction."""
    z, t = _check(logits, targets)
    p = np.asarray(jax.nn.softmax(z / temperature, axis=-1))
    conf = p.max(-1)
    correct = p.argmax(-1) == np.asarray(t)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = idx == b
        out.append((float(conf[sel].mean()) if sel.any() else np.nan,
                    float(correct[sel].mean()) if sel.any() else np.nan, int(sel.sum())))
    return out


def expected_calibration_error(logits: Any, targets: Any, temperature: float = 1.0,
                               bins: int = 15) -> float:
    rel = reliability(logits, targets, temperature, bins)
    n = sum(c for _, _, c in rel)
    return float(sum(c * abs(conf - acc) for conf, acc, c in rel if c) / n)


def calibrate_temperature(logits: Any, targets: Any, *, steps: int = 300,
                          learning_rate: float = 0.05) -> CalibrationResult:
    """Fits `T` minimising NLL(softmax(logits / T), targets) with optax Adam on log T.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> a = rng.normal(0, 2, (4000, 10)).astype(np.float32)
      >>> y = np.array([rng.choice(10, p=np.exp(r) / np.exp(r).sum()) for r in a])
      >>> round(calibrate_temperature(a * 1.5, y).temperature, 1)  # overconfident by 1.5
      1.5
    """
    z, t = _check(logits, targets)
    opt = optax.adam(learning_rate)
    log_t = jnp.zeros(())
    state = opt.init(log_t)

    @jax.jit
    def step(log_t, state):
        loss, grad = jax.value_and_grad(lambda lt: _nll(z, t, jnp.exp(lt)))(log_t)
        updates, state = opt.update(grad, state)
        return optax.apply_updates(log_t, updates), state, loss

    for _ in range(steps):
        log_t, state, _ = step(log_t, state)
    temp = float(jnp.exp(log_t))
    return CalibrationResult(temp, float(_nll(z, t, 1.0)), float(_nll(z, t, temp)),
                             expected_calibration_error(z, t, 1.0),
                             expected_calibration_error(z, t, temp))


def plot_reliability(logits: Any, targets: Any, temperature: float, path: str) -> None:
    """Reliability diagram before (T=1) and after calibration."""
    matplotlib = require("matplotlib", "the reliability diagram")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "the reliability diagram")

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for temp, name in ((1.0, "T=1"), (temperature, f"T={temperature:.3f} (fitted)")):
        rel = [(c, a) for c, a, n in reliability(logits, targets, temp) if n]
        ax.plot(*zip(*rel, strict=True), marker="o", label=name)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
