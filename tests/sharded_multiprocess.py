"""One of several processes sampling on one mesh (`jax.distributed`, CPU collectives, localhost).

    XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
        python tests/sharded_multiprocess.py PROCESS_ID NUM_PROCESSES PORT OUT.json

Every process runs this same program (multi-controller JAX): each holds 4 CPU
devices, the processes together form a (processes x 4) mesh, "data" across
processes and "model" across each process's devices. It samples logits placed
over that mesh, and runs the tiny model's decoding loop with its weights split
over "model" and its batch over "data". Process 0 writes the gathered tokens,
log-probabilities and probabilities to OUT.json; tests/test_sharded.py
compares them with one process on one device.
"""

import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import nucleax as nx  # noqa: E402
from nucleax import sharding  # noqa: E402

BATCH, VOCAB, STEPS = 8, 1000, 6


def case():
    """The logits and parameters both the processes and the one-device reference use."""
    rng = np.random.default_rng(42)
    z = (-1.2 * np.log(rng.permutation(VOCAB * BATCH).reshape(BATCH, VOCAB) % VOCAB + 1.0)
         + rng.normal(0, 0.3, (BATCH, VOCAB))).astype(np.float32)
    z[1, 124:126] = 9.0  # a greedy tie across a shard boundary
    z[2] = -np.inf
    params = nx.SamplingParams(np.array([0.7, 0.0, 1.0, 1.0, 1.3, 0.9, 1.0, 0.5], np.float32),
                               np.array([0, 0, 0, 700, 0, 20, 0, 0], np.int32),
                               np.array([0.9, 1.0, 0.8, 1.0, 0.95, 1.0, 0.999, 0.6], np.float32),
                               np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.02, 0.0], np.float32))
    return z, params, jax.random.key(9)


def main(process_id: int, processes: int, port: int, out: str) -> None:
    import sharded_loop as sl

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", processes, process_id)
    mesh = jax.make_mesh((processes, jax.local_device_count()), ("data", "model"))
    z, params, key = case()
    spec = NamedSharding(mesh, P("data", "model"))
    zs = jax.make_array_from_callback(z.shape, spec, lambda index: z[index])
    axes = dict(mesh=mesh, batch_axis="data", vocab_axis="model")
    got = sharding.sample_sharded(key, zs, params, **axes, return_logprobs=True, top_n=2)
    probs = sharding.probs_sharded(zs, params, **axes)

    model = sl.tiny_model(mesh)
    loop = sl.decode(model, sl.prompts(BATCH, 5, sl.TINY.vocab_size), params, key, STEPS,
                     layout=sharding.layout(mesh, "data", "model"))

    def gather(x):
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    result = {"devices": jax.device_count(), "local_devices": jax.local_device_count(),
              "processes": jax.process_count(),
              "tokens": gather(got.tokens).tolist(), "logprobs": gather(got.logprobs).tolist(),
              "top_ids": gather(got.top_ids).tolist(), "probs": gather(probs).tolist(),
              "loop": gather(loop).tolist()}
    if process_id == 0:
        with open(out, "w") as f:
            json.dump(result, f, allow_nan=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
