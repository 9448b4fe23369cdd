"""Running a logits processor by hand: init from ragged prompts, update with ragged outputs."""

import jax.numpy as jnp
import numpy as np


def run_chain(proc, z, prompts, outputs, max_new=8, update=None, apply=None):
    """init from ragged prompts, update with ragged outputs (-1 where a row has none), apply.

    `update` / `apply` replace `proc.update` / `proc.apply` (e.g. jitted once for many calls).
    """
    update = proc.update if update is None else update
    apply = proc.apply if apply is None else apply
    batch = len(prompts)
    width = max(1, max(map(len, prompts)))
    toks = np.zeros((batch, width), np.int32)
    for i, p in enumerate(prompts):
        toks[i, :len(p)] = p
    state = proc.init(jnp.asarray(toks), jnp.asarray([len(p) for p in prompts], jnp.int32),
                      z.shape[1], max_new)
    for step in range(max(map(len, outputs), default=0)):
        t = [o[step] if step < len(o) else -1 for o in outputs]
        state = update(state, jnp.asarray(t, jnp.int32))
    return np.asarray(apply(state, jnp.asarray(z, jnp.float32)))
