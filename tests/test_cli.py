"""The command line: the demo table and a tiny benchmark run."""

import json

import numpy as np

from nucleax import cli
from nucleax.apps import bench


def test_demo_prints_the_seed_table(capsys):
    assert cli.main(["demo", "--samples", "200"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    # column T=1 is the seed article's table
    day = [float(x) for x in lines["day"][2:]]
    assert abs(day[1] - 0.5121) < 1e-4
    assert lines["greedy"][1:] == ["day", "200"]
    assert lines["survivors"][1:] == ["6", "6", "6", "3", "2", "4", "4", "1"]


def test_bench_writes_json_records(tmp_path):
    out = tmp_path / "b.json"
    args = ["--batch", "2", "--vocab", "3000", "--dtype", "bfloat16", "--mix", "T+p0.9", "mixed",
            "--baselines", "floor", "sort", "--reps", "3", "--budget", "0.2", "--json", str(out)]
    assert cli.main(["bench", "sampling", *args]) == 0
    records = json.loads(out.read_text())
    assert [r["mix"] for r in records] == ["T+p0.9", "mixed"]
    for r in records:
        assert r["B"] == 2 and r["V"] == 3000 and r["dtype"] == "bfloat16"
        assert r["nucleax_ms"] > 0 and r["floor_ms"] > 0 and r["sort_ms"] > 0


def test_bench_baseline_matches_nucleax_distribution():
    """The sort baseline samples the same distribution (it is a fair comparison)."""
    import jax

    import nucleax as nx

    z = bench.llm_like_logits(1, 50, np.float32)
    params = bench.row_params("T+k50+p0.9", 1)
    want = np.asarray(nx.probs(z, params))[0]
    n = 4000
    keys = jax.random.split(jax.random.key(0), n)
    toks = jax.vmap(lambda k: bench.sort_nucleus_fn(k, z, params)[0])(keys)
    counts = np.bincount(np.asarray(toks), minlength=50)
    assert counts[want == 0].sum() == 0
    assert np.abs(counts / n - want).max() < 0.03
