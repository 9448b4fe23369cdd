"""nucleax: exact, per-row, jit-friendly sampling for LLM decoding in JAX.

The contract (what is sampled), in short:

1. Order: logits processors (`nucleax.processors`: penalties, bias, bans,
   built from `SamplingParams`' vLLM-named fields or chained by hand), then
   temperature `z / T`, then top-k, then top-p
   (on the distribution renormalised after top-k), then min-p, then one draw
   from the softmax over the surviving tokens (the order of HF transformers and
   SGLang; vLLM applies min-p before top-k/top-p, which differs only when min-p
   and top-p are both active). The wider catalogue (top-n-sigma, typical,
   epsilon, eta, XTC, dynamic temperature, mirostat v2) and the peers' orders
   (`SamplingParams(order="llama.cpp" | "vllm" | "hf")`): `nucleax.samplers`.
2. Masks are tie-inclusive, so permuting the vocabulary permutes the answer:
   top-k keeps x iff fewer than k tokens have a strictly larger logit; top-p
   keeps x iff the mass of strictly more probable tokens is < p; min-p keeps x
   iff `q_x >= min_p * max(q)`. The most probable token always survives.
3. Off values: `top_k` 0, -1 or >= V; `top_p` 1; `min_p` 0.
   `temperature = 0` is greedy (argmax, lowest index among ties).
4. Arithmetic is float32 whatever the logits' dtype (bf16/f16 are upcast).
5. Keys are explicit: one key (row i uses `fold_in(key, i)`) or one key per row.
   Same key, logits and parameters: same token, with or without jit, with any
   method.
6. Bad input: host-known values raise ValueError/TypeError naming the argument.
   Inside jit (traced values), the fallbacks are: temperature NaN or < 0 is
   greedy, +inf is uniform over the top-k survivors; top_k < -1 is off, and
   so is anything >= V (int64 beyond int32 is clipped, never wrapped); top_p
   <= 0 or NaN keeps only the most probable token(s), top_p > 1 is off; min_p
   NaN or <= 0 is off, >= 1 keeps the most probable token(s). Float32
   subnormals count as 0 on every platform. NaN logits count as -inf; a row
   with +inf logits is uniform over them; a row with no finite logit gives
   token 0, a point mass on token 0 in `probs`, and `valid = False`. The
   processors' traced fallbacks: repetition_penalty <= 0 or NaN is off;
   frequency/presence penalties NaN are off, others clipped to [-2, 2]. The
   catalogue's traced values: NaN turns a sampler off; values out of range act
   as the nearest valid one would (typical_p <= 0 keeps the token(s) of least
   score, epsilon or eta >= 1 keep the most probable token(s)); mirostat's
   `mu` NaN keeps the most probable token(s).
   `jax_enable_x64` changes nothing: the arithmetic stays float32 / int32.
"""

from . import processors, samplers
from ._params import SamplingParams
from ._sample import SampleOutput, keep_mask, probs, sample
from .apps import presets
from .apps.calibrate import calibrate_temperature
from .apps.check import SamplingWarning, check
from .apps.explain import explain
from .ops import greedy, mask_min_p, mask_top_k, mask_top_p, scale_temperature
from .speculative import VerifyOutput, generate_speculative, verify

__version__ = "0.1.0"

__all__ = [
    "SampleOutput",
    "SamplingParams",
    "SamplingWarning",
    "VerifyOutput",
    "calibrate_temperature",
    "check",
    "explain",
    "generate_speculative",
    "greedy",
    "keep_mask",
    "mask_min_p",
    "mask_top_k",
    "mask_top_p",
    "presets",
    "processors",
    "probs",
    "samplers",
    "sample",
    "scale_temperature",
    "verify",
]
