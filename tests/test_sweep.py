"""The sweep client and temperature calibration."""

import dataclasses
import json

import numpy as np
import pytest
from smollm import needs_smollm, smollm
from test_models import TINY, _byte_vocab, write_tiny_gguf

import nucleax as nx
from nucleax import cli
from nucleax.apps import sweep as sw
from nucleax.apps.calibrate import calibrate_temperature, expected_calibration_error
from nucleax.models import load_gguf, random_weights


def test_metrics_known_answers():
    assert sw.distinct_n([[1, 2, 3], [1, 2, 4]], 1) == 4 / 6
    assert sw.distinct_n([[1, 2, 3], [1, 2, 4]], 2) == 3 / 4
    assert sw.repetition([1, 2, 3, 1, 2, 3, 1, 2, 3], 3) == 1 - 3 / 7
    assert sw.repetition([1, 2, 3, 4]) == 0.0
    assert sw.pairwise_overlap([[1, 2, 3], [1, 2, 3], [7, 8, 9]]) == pytest.approx((1 + 0 + 0) / 3)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    tokens, _, _ = _byte_vocab()
    config = dataclasses.replace(TINY, vocab_size=len(tokens), context_length=128)
    path = tmp_path_factory.mktemp("m") / "tiny.gguf"
    write_tiny_gguf(path, config, random_weights(config, seed=8, scale=0.8))
    return path


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return load_gguf(tiny_path)


def test_sweep_on_a_tiny_model(tiny, tmp_path):
    model, tok = tiny
    settings = [("greedy", nx.SamplingParams(0.0)), ("hot", nx.SamplingParams(1.5)),
                ("nucleus", nx.SamplingParams(0.8, top_p=0.9))]
    prompts = ["hello", "world 42"]
    reports = sw.run_sweep(model, tok, prompts, settings, samples=4, max_new_tokens=6,
                           batch_size=6, progress=False)  # a chunk mixes hot and nucleus
    greedy, hot, _ = reports
    assert greedy.overlap == 1.0 and greedy.survivors == 1.0 and greedy.entropy == 0.0
    assert hot.distinct_2 > greedy.distinct_2 and hot.survivors > 1
    assert all(len(r.texts) == 2 and len(r.texts[0]) == 4 for r in reports)
    # a setting's samples do not depend on what else is in the sweep
    alone = sw.run_sweep(model, tok, prompts, [settings[2]], samples=4, max_new_tokens=6,
                         batch_size=8, progress=False)  # other batch mates
    assert alone[0].texts == reports[2].texts
    written = sw.write_outputs(reports, prompts, tmp_path, {"seed": 0})
    assert sorted(p.name for p in written) == ["chart.png", "report.md", "results.json"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert [s["label"] for s in data["settings"]] == ["greedy", "hot", "nucleus"]
    # the same column names on screen and in the JSON, floats rounded to 6 digits
    header = sw.table(reports).splitlines()[0].split()
    assert header[1:] == list(sw.COLUMNS) and set(sw.COLUMNS) <= set(data["settings"][0])
    nucleus = data["settings"][2]
    assert nucleus["params"]["temperature"] == 0.8 and nucleus["params"]["top_p"] == 0.9
    assert all(v == float(f"{v:.6g}") for v in nucleus.values() if isinstance(v, float))
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert "| sample | greedy | hot | nucleus |" in (tmp_path / "report.md").read_text()


def test_settings_from_grid_and_presets():
    got = sw.settings_from({"temperature": [0.2, 0.7], "top_p": [0.5, 1.0]}, ["chatbot"])
    assert [name for name, _ in got] == ["T=0.2 p=0.5", "T=0.2", "T=0.7 p=0.5", "T=0.7",
                                         "chatbot"]
    with pytest.raises(ValueError, match="unknown preset"):
        sw.settings_from(None, ["nope"])


@pytest.mark.parametrize("true_t", [0.6, 1.7])
def test_calibration_recovers_a_known_temperature(true_t):
    rng = np.random.default_rng(int(true_t * 10))
    a = rng.normal(0, 2.5, (6000, 12)).astype(np.float32)  # the true logits
    p = np.exp(a - a.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.random((6000, 1))).argmax(1).astype(np.int32)
    res = calibrate_temperature(a * true_t, y)  # the model's logits: off by true_t
    assert abs(res.temperature - true_t) / true_t < 0.02, res
    assert res.nll_after < res.nll_before and res.ece_after < res.ece_before
    assert res.ece_before == pytest.approx(expected_calibration_error(a * true_t, y))


def test_calibration_errors():
    z = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match="3 rows of logits, 2 targets"):
        calibrate_temperature(z, np.array([1, 2]))
    with pytest.raises(ValueError, match=r"targets must be token ids in \[0, 5\)"):
        calibrate_temperature(z, np.array([1, 2, 5]))
    with pytest.raises(ValueError, match="need at least one target"):
        calibrate_temperature(np.zeros((0, 5), np.float32), np.zeros(0, np.int32))


def test_cli_sweep_with_processor_flags_on_a_tiny_model(tiny_path, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = cli.main(["sweep", "--prompt", "hello", "--model", str(tiny_path), "--temperature",
                     "1.2", "--repetition-penalty", "1.0", "1.5", "--logit-bias", "40:-100",
                     "--stop", "hel", "--samples", "2", "--max-new-tokens", "6",
                     "--out", str(out)])
    assert code == 0
    table, err = capsys.readouterr()
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["T=1.2", "T=1.2"]
    assert "rep=1.5" in table
    data = json.loads((out / "results.json").read_text())
    assert [s["params"]["repetition_penalty"] for s in data["settings"]] == [1.0, 1.5]
    assert data["meta"]["stop"] == ["hel"] and data["meta"]["logit_bias"] == {"40": -100.0}
    assert "sweep: 4/4 samples in" in err  # no terminal: one plain progress line


def test_cli_sweep_with_catalogue_and_dry_flags_on_a_tiny_model(tiny_path, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = cli.main(["sweep", "--prompt", "hello", "--model", str(tiny_path), "--temperature",
                     "1.2", "--typical", "0.9", "1", "--xtc-probability", "0.5",
                     "--xtc-threshold", "0.05", "--dry-multiplier", "0.8",
                     "--dry-allowed-length", "1", "--dry-sequence-breaker", "\\n",
                     "--samplers-order", "llama.cpp", "--samples", "2", "--max-new-tokens",
                     "6", "--out", str(out)])
    assert code == 0
    table, _ = capsys.readouterr()
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["T=1.2", "T=1.2"]
    assert "typical=0.9 xtc=0.5/0.05 dry=0.8" in table
    data = json.loads((out / "results.json").read_text())
    params = [s["params"] for s in data["settings"]]
    assert [p["typical_p"] for p in params] == [0.9, 1.0]
    assert all((p["xtc_probability"], p["xtc_threshold"], p["dry_multiplier"],
                p["dry_allowed_length"]) == (0.5, 0.05, 0.8, 1) for p in params)
    assert data["meta"]["order"] == "llama.cpp"
    assert data["meta"]["dry_sequence_breakers"] == ["\n"]
    assert all(len(r["texts"][0]) == 2 and 0 < r["length"] <= 6 for r in data["settings"])


@needs_smollm
def test_cli_sweep_and_calibrate_on_smollm2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load_model", lambda path, dtype="float32": smollm())
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "--prompt", "Once upon a time", "--presets", "code_generation",
                     "creative_writing", "--samples", "3", "--max-new-tokens", "8",
                     "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "code_generation" in table and "creative_writing" in table
    assert (out / "report.md").exists() and (out / "chart.png").exists()
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 6)
    assert cli.main(["calibrate", "--text", str(text), "--max-tokens", "48", "--chunk", "24",
                     "--plot", str(tmp_path / "rel.png")]) == 0
    assert "fitted temperature" in capsys.readouterr().out
    assert (tmp_path / "rel.png").exists()
