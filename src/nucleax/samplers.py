"""The sampler chain of stage 3: its steps, the peers' orders, and mirostat's state.

Stage 3 runs named steps in an *order*; each step reads the distribution left
by the steps before it (renormalised over their survivors) and removes tokens.
The values of every step come from `SamplingParams`; the order is
`SamplingParams(order=...)`: a peer's name, or your own tuple of step names.

Steps (`STEPS`) and their fields:

- `"temperature"`: `temperature`, and dynamic temperature (`dynatemp_range`,
  `dynatemp_exponent`). Steps before it see the logits at `T = 1`.
- `"top_n_sigma"`: `top_n_sigma` (Tang et al., 2024).
- `"top_k"`, `"top_p"`, `"min_p"`: the four knobs of SEMANTICS Part 1.
- `"typical_p"`: locally typical sampling (Meister et al., 2023).
- `"epsilon"`, `"eta"`: epsilon and eta sampling (Hewitt et al., 2022).
- `"xtc"`: exclude top choices (`xtc_probability`, `xtc_threshold`).

Mirostat v2 (`mirostat_tau`, `mirostat_eta`; Basu et al., 2021) is not a step:
on a row where it is on it replaces top-k, typical, top-p and min-p, and runs
last, just before the draw, in every order (as in llama.cpp).

Orders:

- `DEFAULT` (`"nucleax"`, SEMANTICS Part 2): temperature, top-n-sigma, top-k,
  typical, top-p, min-p, epsilon, eta, XTC.
- `LLAMA_CPP` (`"llama.cpp"`, its default `--samplers`): top-n-sigma, top-k,
  typical, top-p, min-p, XTC, then temperature *last*: every truncation sees
  the untempered distribution.
- `VLLM` (`"vllm"`): temperature, min-p, then top-k and top-p.
- `HF` (`"hf"`, transformers' warper order): temperature, top-k, top-p,
  min-p, typical, epsilon, eta.

A sampler that is on but absent from the order is an error (vLLM has no
typical sampling, for example), never silently skipped.

Example:
  >>> import jax.numpy as jnp, nucleax
  >>> z = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
  >>> [round(float(x), 3) for x in nucleax.probs(z, nucleax.SamplingParams(
  ...     temperature=2.0, top_p=0.7))]
  [0.431, 0.334, 0.236, 0.0]
  >>> [round(float(x), 3) for x in nucleax.probs(z, nucleax.SamplingParams(
  ...     temperature=2.0, top_p=0.7, order="llama.cpp"))]
  [0.564, 0.436, 0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DEFAULT", "HF", "LLAMA_CPP", "ORDERS", "STEPS", "VLLM", "as_order",
           "mirostat_init", "mirostat_update", "missing_steps"]

STEPS = ("temperature", "top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "epsilon", "eta",
         "xtc")
DEFAULT = ("temperature", "top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "epsilon",
           "eta", "xtc")
LLAMA_CPP = ("top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "xtc", "temperature")
VLLM = ("temperature", "min_p", "top_k", "top_p")
HF = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon", "eta")
ORDERS = {"nucleax": DEFAULT, "llama.cpp": LLAMA_CPP, "vllm": VLLM, "hf": HF}

# The step that each catalogue sampler / knob needs in the order.
STEP_OF = {"top_n_sigma": "top_n_sigma", "typical_p": "typical_p", "epsilon": "epsilon",
           "eta": "eta", "xtc": "xtc", "dynatemp": "temperature"}


def as_order(order: Any) -> tuple[str, ...]:
    """An order from a peer's name or a sequence of step names (validated)."""
    if isinstance(order, str):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {sorted(ORDERS)} or a sequence of step "
                             f"names from {STEPS}, got {order!r}")
        return ORDERS[order]
    if not isinstance(order, Sequence) or not all(isinstance(s, str) for s in order):
        raise TypeError(f"order must be a peer's name ({sorted(ORDERS)}) or a sequence of "
                        f"step names, got {order!r}")
    steps = tuple(order)
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"order has unknown step(s) {unknown}; steps are {STEPS}")
    if len(set(steps)) != len(steps):
        raise ValueError(f"order names a step twice: {steps}; name each step at most once")
    if "temperature" not in steps:
        raise ValueError(f"order must include 'temperature', got {steps}; put it where the "
                         "temperature applies (first: 'nucleax'/'hf'/'vllm'; last: 'llama.cpp')")
    return steps


def name_of(order: tuple[str, ...]) -> str:
    """The peer's name of an order, or the steps joined with `>`."""
    for name, steps in ORDERS.items():
        if steps == order:
            return name
    return ">".join(order)


def missing_steps(params: Any) -> list[str]:
    """The samplers (and knobs) that `params` switches on but whose step its order lacks.

    Example:
      >>> import nucleax
      >>> missing_steps(nucleax.SamplingParams(typical_p=0.9, order="vllm"))
      ['typical_p']
    """
    needed = [(f, STEP_OF[f]) for f in params.samplers_on() if f in STEP_OF]
    offs = {"top_k": lambda v: (v == 0) | (v == -1), "top_p": lambda v: v == 1,
            "min_p": lambda v: v == 0}
    for name, off in offs.items():
        value = getattr(params, name)
        if not isinstance(value, jax.core.Tracer) and not np.all(off(np.asarray(value))):
            needed.append((name, name))
    return list(dict.fromkeys(field for field, step in needed if step not in params.order))


def check_order(params: Any) -> None:
    """Raises when a sampler that `params` switches on has no step in its order."""
    missing = missing_steps(params)
    if missing:
        order = params.order
        raise ValueError(f"{missing} set, but order {name_of(order)!r} has no such step "
                         f"({order}); that peer has no such sampler. Use order='nucleax' "
                         "(every sampler) or give your own order with those steps")


def mirostat_init(params: Any, batch: int) -> jax.Array:
    """Mirostat's starting state: `mu = 2 * mirostat_tau` per row (`[batch]` float32)."""
    return 2.0 * jnp.broadcast_to(jnp.asarray(params.mirostat_tau, jnp.float32), (batch,))


def mirostat_update(mu: jax.Array, logprobs: jax.Array, params: Any) -> jax.Array:
    """Mirostat v2's step: `mu -= eta * (-log2 q'(x) - tau)` per row.

    `logprobs` are the processed log-probabilities of the drawn tokens
    (`sample(..., return_logprobs=True).logprobs`, natural log): `q'` is the
    final distribution the token was drawn from. Rows with mirostat off keep
    their `mu`; so do rows whose update is not finite (a token of probability
    0 cannot have been drawn).

    Example:
      >>> import jax.numpy as jnp, nucleax
      >>> p = nucleax.SamplingParams(mirostat_tau=3.0, mirostat_eta=0.5)
      >>> mu = nucleax.samplers.mirostat_init(p, 1)
      >>> [float(x) for x in nucleax.samplers.mirostat_update(mu, jnp.log(jnp.array([0.25])), p)]
      [6.5]
    """
    b = mu.shape[0]
    tau = jnp.broadcast_to(jnp.asarray(params.mirostat_tau, jnp.float32), (b,))
    eta = jnp.broadcast_to(jnp.asarray(params.mirostat_eta, jnp.float32), (b,))
    surprise = -jnp.asarray(logprobs, jnp.float32) / np.float32(np.log(2.0))
    new = mu - eta * (surprise - tau)
    return jnp.where((tau > 0) & jnp.isfinite(new), new, mu).astype(jnp.float32)
