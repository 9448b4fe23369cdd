"""The command line: the demo table, every user mistake as one line, conventions, benchmarks."""

import dataclasses
import json
import re
import sys

import numpy as np
import pytest
from smollm import needs_smollm, smollm
from test_models import TINY, _byte_vocab, write_tiny_gguf

import nucleax as nx
from nucleax import cli
from nucleax.apps import bench
from nucleax.models import MissingExtraError, random_weights


def run(capsys, *argv):
    """`nucleax ARGV` in-process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A tiny Llama GGUF file with a byte-level BPE tokenizer and a chat template."""
    tokens, _, _ = _byte_vocab()
    config = dataclasses.replace(TINY, vocab_size=len(tokens), context_length=128)
    path = tmp_path_factory.mktemp("m") / "tiny.gguf"
    write_tiny_gguf(path, config, random_weights(config, seed=8, scale=0.8))
    return str(path)


def test_demo_prints_the_seed_table(capsys):
    code, out, _ = run(capsys, "demo", "--samples", "200", "--no-model")
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    # column T=1 is the seed article's table
    day = [float(x) for x in lines["day"][2:]]
    assert abs(day[1] - 0.5121) < 1e-4
    assert lines["greedy"][1:] == ["day", "200"]
    assert lines["survivors"][1:] == ["6", "6", "6", "3", "2", "4", "4", "1"]


# --- every mistake: one line on stderr naming the flag, expected, received, fix ---------

MISTAKES = [  # (argv, flag named, the received value as shown)
    (["generate", "--prompt", "hi", "--preset", "chatbott"], "--preset", "'chatbott'"),
    (["generate", "--prompt", "hi", "--top-p", "1.5"], "--top-p", "'1.5'"),
    (["generate", "--prompt", "hi", "--temperature", "-1"], "--temperature", "'-1'"),
    (["generate", "--prompt", "hi", "--top-k", "2.5"], "--top-k", "'2.5'"),
    (["generate", "--prompt", "hi", "--min-p", "nan"], "--min-p", "'nan'"),
    (["generate", "--prompt", "hi", "--model", "/tmp"], "--model", "'/tmp'"),
    (["generate", "--prompt", "hi", "--model", "README.md"], "--model", "'README.md'"),
    (["generate", "--prompt", "hi", "--repetition-penalty", "0"], "--repetition-penalty", "'0'"),
    (["generate", "--prompt", "hi", "--presence-penalty", "3"], "--presence-penalty", "'3'"),
    (["generate", "--prompt", "hi", "--min-tokens", "-2"], "--min-tokens", "'-2'"),
    (["generate", "--prompt", "hi", "--logit-bias", "5"], "--logit-bias", "'5'"),
    (["generate", "--prompt", "hi", "--logit-bias", "5:-300"], "--logit-bias", "'5:-300'"),
    (["generate", "--prompt", "hi", "--stop", ""], "--stop", "''"),
    (["generate", "--prompt", "hi", "--seed", "-3"], "--seed", "'-3'"),
    (["generate", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens", "'0'"),
    (["generate", "--prompt", ""], "--prompt", "''"),
    (["explain", "--prompt", "", "--raw"], "--prompt", "''"),
    (["explain", "--prompt", "x", "--top", "0"], "--top", "'0'"),
    (["explain", "--logits", "1", "2", "--plot", "bars.txt"], "--plot", "'bars.txt'"),
    (["explain", "--logits", "1", "2", "--html", "/nonexistent-dir/p.html"], "--html",
     "'/nonexistent-dir/p.html'"),
    (["bench", "sampling", "--vocab", "0"], "--vocab", "'0'"),
    (["bench", "decode", "--new-tokens", "1"], "--new-tokens", "'1'"),
    (["calibrate", "--text", "missing.txt"], "--text", "'missing.txt'"),
    (["calibrate", "--text", "/tmp"], "--text", "'/tmp'"),
    (["sweep", "--prompt", "x", "--out", "/sys/nucleax-test"], "--out", "'/sys/nucleax-test'"),
    (["sweep", "--prompt", "x", "--out", "README.md/out"], "--out", "'README.md/out'"),
    (["sweep", "--prompt", "x", "--top-p", "0.9", "1.2"], "--top-p", "'1.2'"),
    (["sweep", "--prompt", "x", "--samples", "0"], "--samples", "'0'"),
    # the wider catalogue (issue 10): llama.cpp's names, HF's for epsilon / eta
    (["generate", "--prompt", "hi", "--typical", "0"], "--typical", "'0'"),
    (["generate", "--prompt", "hi", "--top-nsigma", "nan"], "--top-nsigma", "'nan'"),
    (["generate", "--prompt", "hi", "--xtc-probability", "1.5"], "--xtc-probability", "'1.5'"),
    (["generate", "--prompt", "hi", "--xtc-threshold", "-0.1"], "--xtc-threshold", "'-0.1'"),
    (["generate", "--prompt", "hi", "--dynatemp-range", "-1"], "--dynatemp-range", "'-1'"),
    (["generate", "--prompt", "hi", "--dynatemp-exp", "inf"], "--dynatemp-exp", "'inf'"),
    (["generate", "--prompt", "hi", "--mirostat", "1"], "--mirostat", "'1'"),
    (["generate", "--prompt", "hi", "--mirostat", "3"], "--mirostat", "'3'"),
    (["generate", "--prompt", "hi", "--mirostat-ent", "0"], "--mirostat-ent", "'0'"),
    (["generate", "--prompt", "hi", "--mirostat-lr", "-1"], "--mirostat-lr", "'-1'"),
    (["generate", "--prompt", "hi", "--epsilon-cutoff", "1"], "--epsilon-cutoff", "'1'"),
    (["generate", "--prompt", "hi", "--eta-cutoff", "x"], "--eta-cutoff", "'x'"),
    (["generate", "--prompt", "hi", "--dry-multiplier", "-1"], "--dry-multiplier", "'-1'"),
    (["generate", "--prompt", "hi", "--dry-base", "0.5"], "--dry-base", "'0.5'"),
    (["generate", "--prompt", "hi", "--dry-allowed-length", "0"], "--dry-allowed-length", "'0'"),
    (["generate", "--prompt", "hi", "--dry-penalty-last-n", "-2"], "--dry-penalty-last-n",
     "'-2'"),
    (["generate", "--prompt", "hi", "--dry-sequence-breaker", ""], "--dry-sequence-breaker",
     "''"),
    (["generate", "--prompt", "hi", "--samplers-order", "vLLM"], "--samplers-order", "'vLLM'"),
    (["explain", "--logits", "1", "2", "--typical", "0.9", "1.5"], "--typical", "'1.5'"),
    (["sweep", "--prompt", "x", "--xtc-threshold", "0.1", "2"], "--xtc-threshold", "'2'"),
    (["sweep", "--prompt", "x", "--dry-base", "1.75", "nan"], "--dry-base", "'nan'"),
]


def _one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv,flag,received", MISTAKES, ids=[" ".join(m[0]) for m in MISTAKES])
def test_each_mistake_is_one_line_with_exit_2(capsys, argv, flag, received):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    line = _one_line(err)
    prefix = "nucleax " + " ".join(argv[:2] if argv[0] == "bench" else argv[:1])
    assert line.startswith(f"{prefix}: error: {flag}: expected "), line
    assert received in line and re.search(r"\b(fix|pass)\b", line), line


def test_preset_typo_suggests_the_name(capsys):
    _, _, err = run(capsys, "generate", "--prompt", "hi", "--preset", "chatbott")
    assert _one_line(err).endswith("fix: --preset chatbot")


def test_parser_mistakes_are_one_line_too(capsys):
    for argv in (["generate"], ["explain"], ["explain", "--logits", "1", "--prompt", "x"],
                 ["nosuchcommand"], ["generate", "--prompt", "x", "--temprature", "1"]):
        code, _, err = run(capsys, *argv)
        assert code == 2
        assert "fix:" in _one_line(err)


def test_explain_tokens_must_match_logits(capsys):
    code, _, err = run(capsys, "explain", "--logits", "1", "2", "3", "--tokens", "a", "b")
    assert code == 2
    assert _one_line(err) == ("nucleax explain: error: --tokens: expected 3 names (one per "
                              "--logits value), got 2; fix: name every logit or drop --tokens")


def test_runtime_errors_are_one_line_with_exit_1(capsys, tmp_path, tiny_gguf):
    text = tmp_path / "short.txt"
    text.write_text("a")
    code, _, err = run(capsys, "calibrate", "--text", str(text), "--model", tiny_gguf)
    assert code == 1
    line = [x for x in err.splitlines() if not x.startswith("nucleax: ")]
    assert line == ["nucleax calibrate: error: --text: " + str(text) + " holds 1 token(s); "
                    "calibration needs at least 2; fix: give a longer text"]
    code, _, err = run(capsys, "generate", "--prompt", "hi", "--model", tiny_gguf,
                       "--logit-bias", "100000:5")
    assert code == 2 and "--logit-bias: expected token ids in [0, 263)" in err


def test_debug_shows_the_traceback(tmp_path, tiny_gguf):
    text = tmp_path / "short.txt"
    text.write_text("a")
    with pytest.raises(ValueError, match="needs at least 2"):
        cli.main(["calibrate", "--text", str(text), "--model", tiny_gguf, "--debug"])


# --- missing optional dependencies -------------------------------------------------------


def test_missing_model_extra(capsys, monkeypatch, tiny_gguf):
    from nucleax.models import read_gguf

    monkeypatch.setitem(sys.modules, "gguf", None)  # as if `gguf` were not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'nucleax\[model\]'") as info:
        read_gguf(tiny_gguf)
    assert isinstance(info.value, ImportError)
    code, out, err = run(capsys, "generate", "--prompt", "hi", "--model", tiny_gguf)
    assert code == 1 and out == ""
    assert _one_line(err) == (
        "nucleax generate: error: loading a GGUF model needs the optional package 'gguf', "
        "which is not installed; install it with: pip install 'nucleax[model]'")


def test_missing_tokenizer_and_template_extras(monkeypatch, tiny_gguf):
    from nucleax.models import load_gguf

    _, tok = load_gguf(tiny_gguf)
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(MissingExtraError, match=r"'jinja2'.*nucleax\[model\]"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(MissingExtraError, match=r"'tokenizers'.*nucleax\[model\]"):
        load_gguf(tiny_gguf)


def test_missing_plot_extra(capsys, monkeypatch, tmp_path):
    from nucleax.apps import explain as ex

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    e = nx.explain([1.0, 2.0, 3.0], nx.SamplingParams())
    with pytest.raises(MissingExtraError, match=r"'matplotlib'.*pip install 'nucleax\[plot\]'"):
        ex.plot_bars(e, tmp_path / "b.png")
    code, out, err = run(capsys, "explain", "--logits", "1", "2", "--plot",
                         str(tmp_path / "b.png"))
    assert code == 1 and out == "" and not (tmp_path / "b.png").exists()
    assert "pip install 'nucleax[plot]'" in _one_line(err)


# --- conventions ---------------------------------------------------------------------


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"nucleax {nx.__version__}"


def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_flag_has_help_and_help_shows_defaults(capsys):
    for parser in _all_parsers(cli.build_parser()):
        for action in parser._actions:
            assert action.help, f"{parser.prog} {action.option_strings or action.dest}"
    code, out, _ = run(capsys, "generate", "--help")
    assert code == 0
    text = " ".join(out.split())
    for shown in ("(default: 1, the `default` preset's", "(default: 0.9, the `default` preset's",
                  "(default: 128)", "(default: float32)"):
        assert shown in text, shown


def test_one_default_setting_everywhere():
    from nucleax.apps import presets

    default = presets.get(presets.DEFAULT).scalars()
    assert (default["temperature"], default["top_k"], default["top_p"]) == (1.0, 0, 0.9)
    args = cli.build_parser().parse_args(["generate", "--prompt", "x"])
    assert {k: v for k, v in cli._generate_params(args).items() if k in cli.KNOBS} == \
        {k: default[k] for k in cli.KNOBS}
    args = cli.build_parser().parse_args(["bench", "decode"])
    assert (args.temperature, args.top_k, args.top_p, args.min_p) == \
        tuple(default[k] for k in cli.KNOBS)
    # greedy turns the knobs the user did not set off: no spurious warning
    args = cli.build_parser().parse_args(["generate", "--prompt", "x", "--temperature", "0"])
    values = cli._generate_params(args)
    assert nx.check(nx.SamplingParams(**values), warn=False) == []
    # a preset is the base; explicit flags override it
    args = cli.build_parser().parse_args(["generate", "--prompt", "x", "--preset",
                                          "creative_writing", "--top-p", "0.5"])
    values = cli._generate_params(args)
    assert (values["temperature"], values["top_p"]) == (0.7, 0.5)


def test_no_preset_trips_the_library_warnings():
    from nucleax.apps import presets

    for name, p in presets.PRESETS.items():
        assert nx.check(p.params, warn=False) == [], name


def test_progress_bar_is_clean_without_a_terminal():
    import io

    from nucleax.apps._kit import Progress

    log = io.StringIO()
    with Progress(10, "samples", "sweep", file=log) as bar:
        for _ in range(10):
            bar.update(1)
    assert "\r" not in log.getvalue()
    assert re.fullmatch(r"sweep: 10/10 samples in \d+\.\d s\n", log.getvalue())

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    with Progress(4, "chunks", "scoring", file=tty) as bar:
        bar.update(4)
    assert "\r" in tty.getvalue() and "4/4" in tty.getvalue()  # tqdm's live bar


def test_presets_json(capsys):
    code, out, _ = run(capsys, "presets", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["creative_writing"]["params"]["temperature"] == 0.7
    assert rows["code_generation"]["article"] == "T=0.2 p=0.1" and rows["code_generation"][
        "revised"]
    assert [r["name"] for r in rows.values() if r["default"]] == ["default"]


def test_outputs_only_where_asked(capsys, tmp_path, monkeypatch, tiny_gguf):
    monkeypatch.chdir(tmp_path)
    text = tmp_path / "t.txt"
    text.write_text("hello world hello world hello world " * 4)
    code, out, _ = run(capsys, "calibrate", "--text", str(text), "--model", tiny_gguf,
                       "--max-tokens", "40", "--chunk", "20")
    assert code == 0 and "fitted temperature" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


# --- generation on a tiny model (fast): flags reach SamplingParams -------------------------


def test_generate_on_devices_gives_the_tokens_of_one_device(capsys, tiny_gguf):
    argv = ["generate", "--prompt", "hello", "--model", tiny_gguf, "--max-new-tokens", "5",
            "--json", "--batch", "2", "--temperature", "0.8", "--seed", "1"]
    code, one, err = run(capsys, *argv)
    assert code == 0, err
    code, four, err = run(capsys, *argv, "--devices", "4")
    assert code == 0, err
    tokens = lambda out: [s["tokens"] for s in json.loads(out)["samples"]]  # noqa: E731
    assert tokens(four) == tokens(one)
    code, _, err = run(capsys, *argv, "--devices", "64")
    assert code == 2 and "--devices: expected at most the 8 devices available, got 64" in err


def test_generate_json_and_processor_flags_on_a_tiny_model(capsys, tiny_gguf):
    code, out, err = run(capsys, "generate", "--prompt", "hello", "--model", tiny_gguf,
                         "--max-new-tokens", "6", "--json", "--batch", "2", "--temperature",
                         "0.8", "--repetition-penalty", "1.3", "--presence-penalty", "0.5",
                         "--frequency-penalty", "0.25", "--min-tokens", "6", "--logit-bias",
                         "40:-100", "41:2.5", "--seed", "3")
    assert code == 0, err
    assert "nucleax: loading tiny.gguf" in err and "compiling" in err
    doc = json.loads(out)
    p = doc["params"]
    assert (p["temperature"], p["top_p"], p["repetition_penalty"], p["presence_penalty"],
            p["frequency_penalty"], p["min_tokens"]) == (0.8, 0.9, 1.3, 0.5, 0.25, 6)
    assert doc["params"]["logit_bias"] == {"40": -100.0, "41": 2.5}
    assert doc["seed"] == 3 and len(doc["samples"]) == 2
    for s in doc["samples"]:
        assert len(s["tokens"]) == 6 and s["finish_reason"] == "length"  # min_tokens: no EOS
        assert 40 not in s["tokens"]  # banned by the bias


# --- benchmarks ----------------------------------------------------------------------


def test_bench_writes_json_records_only_when_asked(capsys, tmp_path):
    out = tmp_path / "b.json"
    args = ["--batch", "2", "--vocab", "3000", "--dtype", "bfloat16", "--mix", "T+p0.9", "mixed",
            "--baselines", "floor", "sort", "--reps", "3", "--budget", "0.2"]
    assert cli.main(["bench", "sampling", *args, "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["mix"] for r in records] == ["T+p0.9", "mixed"]
    for r in records:
        assert r["B"] == 2 and r["V"] == 3000 and r["dtype"] == "bfloat16"
        assert r["nucleax_ms"] > 0 and r["floor_ms"] > 0 and r["sort_ms"] > 0
    capsys.readouterr()


def test_bench_baseline_matches_nucleax_distribution():
    """The sort baseline samples the same distribution (it is a fair comparison)."""
    import jax

    z = bench.llm_like_logits(1, 50, np.float32)
    params = bench.row_params("T+k50+p0.9", 1)
    want = np.asarray(nx.probs(z, params))[0]
    n = 4000
    keys = jax.random.split(jax.random.key(0), n)
    toks = jax.vmap(lambda k: bench.sort_nucleus_fn(k, z, params)[0])(keys)
    counts = np.bincount(np.asarray(toks), minlength=50)
    assert counts[want == 0].sum() == 0
    assert np.abs(counts / n - want).max() < 0.03


# --- SmolLM2: stop texts, the real thing -----------------------------------------------


@pytest.fixture
def shared_smollm(monkeypatch):
    """The CLI loads the session's one SmolLM2 instead of reading the file again."""
    monkeypatch.setattr(cli, "_load_model", lambda path, dtype="float32": smollm())
    return smollm()


@needs_smollm
def test_generate_stops_on_a_stop_text_and_says_which(capsys, shared_smollm):
    # greedy, this prompt continues " Paris. ..." (README)
    argv = ["generate", "--prompt", "The capital of France is", "--raw", "--temperature", "0",
            "--max-new-tokens", "12", "--stop", "Lyon", "--stop", "."]
    code, out, err = run(capsys, *argv)
    assert code == 0
    assert out == " Paris\n"  # the text before the first stop text, which is not printed
    assert "sample 0 stopped on the stop text '.'" in err
    code, out, _ = run(capsys, *argv, "--json")
    sample = json.loads(out)["samples"][0]
    assert sample["text"] == " Paris" and sample["finish_reason"] == "stop_text"
    assert sample["stop_text"] == "." and len(sample["tokens"]) == 2  # stopped on the device


def test_text_streams_find_a_stop_text_split_across_tokens():
    from nucleax.apps._kit import TextStreams

    class Pieces:  # a tokenizer whose token i is the text PIECES[i]
        PIECES = ["ab", "E", "N", "D", "x", "<eos>"]

        def decode(self, ids):
            return "".join(self.PIECES[i] for i in ids if self.PIECES[i] != "<eos>")

    rows = TextStreams(Pieces(), 2, stop_texts=["END"], stop_ids=[5])
    shown = []
    for step in ([0, 0], [1, 4], [2, 4], [3, 4]):
        rows.add(np.array(step), np.array([True, True]))
        shown.append(rows.settled(0))
    assert shown == ["", "a", "ab", "ab"]  # len("END") - 1 characters held back
    assert rows.finished[0] and rows.outcome(0) == {
        "text": "ab", "tokens": [0, 1, 2, 3], "finish_reason": "stop_text", "stop_text": "END"}
    rows.add(np.array([4, 4]), np.array([False, False]))
    assert rows.done and rows.outcome(1)["finish_reason"] == "length"
    eos = TextStreams(Pieces(), 1, stop_ids=[5])
    eos.add(np.array([0]), np.array([True]))
    eos.add(np.array([5]), np.array([True]))
    eos.add(np.array([0]), np.array([False]))
    assert eos.outcome(0) == {"text": "ab", "tokens": [0, 5], "finish_reason": "stop",
                              "stop_text": None}


def test_stop_sequences_cover_split_spellings(tiny_gguf):
    from nucleax.apps._kit import stop_sequences
    from nucleax.models import load_gguf

    _, tok = load_gguf(tiny_gguf)
    seqs, owner = stop_sequences(tok, ["hel", "\n\n"])
    texts = [tok.decode(s, skip_special=False) for s in seqs]
    assert "hel" in texts and " hel" in texts and "\n\n" in texts
    assert all(("hel" in t) if o == 0 else ("\n\n" in t) for t, o in zip(texts, owner,
                                                                       strict=True))
    assert [tok.decode([t]) for t in seqs[texts.index("hel")]] == ["hel"]  # the merged token
    assert any(len(s) == 3 and o == 0 for s, o in zip(seqs, owner, strict=True))  # h, e, l


# --- speculative decoding (issue 13) -------------------------------------------------------


def test_generate_speculative_prints_acceptance_and_keeps_greedy_text(capsys, tiny_gguf):
    argv = ["generate", "--prompt", "abcabcabc", "--raw", "--model", tiny_gguf,
            "--max-new-tokens", "12", "--temperature", "0", "--batch", "2"]
    code, plain, err = run(capsys, *argv, "--json")
    assert code == 0, err
    code, spec, err = run(capsys, *argv, "--json", "--speculative", "ngram", "--draft-tokens",
                          "3")
    assert code == 0, err
    plain, spec = json.loads(plain), json.loads(spec)
    assert [s["tokens"] for s in spec["samples"]] == [s["tokens"] for s in plain["samples"]]
    info = spec["speculative"]
    assert info["draft"] == "ngram" and info["draft_tokens"] == 3
    assert info["drafted"] <= 3 * info["target_steps"] - 3 * 2  # the prefill drafts nothing
    assert 0 <= info["accepted"] <= info["drafted"]
    total = sum(len(s["tokens"]) for s in spec["samples"])
    assert info["tokens_per_target_step"] == pytest.approx(total / info["target_steps"])
    code, out, err = run(capsys, *argv, "--speculative", "ngram")
    assert code == 0, err
    assert re.search(r"decode [0-9.]+ tokens/s at batch 2", err), err
    assert re.search(r"speculative ngram, 4 draft tokens: acceptance \d+% \(\d+ of \d+ drafts\), "
                     r"[0-9.]+ tokens per target step", err), err
    assert out.strip()


@pytest.mark.parametrize("argv,flag", [
    (["--speculative", "ngram", "--draft-tokens", "0"], "--draft-tokens"),
    (["--draft-tokens", "4"], "--draft-tokens"),
    (["--speculative", "eagle"], "--speculative"),
])
def test_speculative_flag_mistakes_are_one_line_before_the_model_loads(capsys, argv, flag):
    code, out, err = run(capsys, "generate", "--prompt", "hi", *argv)
    assert code == 2 and out == ""
    line = _one_line(err)
    assert flag in line and "loading" not in err, line


# --- the wider catalogue's flags (issue 10) ---------------------------------------------


def test_catalogue_flags_reach_sampling_params():
    parse = cli.build_parser().parse_args
    args = parse(["generate", "--prompt", "x", "--temperature", "0.8", "--top-nsigma", "1.5",
                  "--typical", "0.9", "--epsilon-cutoff", "3e-4", "--eta-cutoff", "9e-4",
                  "--xtc-probability", "0.5", "--xtc-threshold", "0.2", "--dynatemp-range",
                  "0.3", "--dynatemp-exp", "2", "--mirostat", "2", "--mirostat-ent", "4",
                  "--mirostat-lr", "0.2", "--dry-multiplier", "0.8", "--dry-base", "2",
                  "--dry-allowed-length", "3", "--dry-penalty-last-n", "64",
                  "--samplers-order", "llama.cpp"])
    values = cli._generate_params(args)
    p = nx.SamplingParams(**values)
    got = p.scalars()
    want = {"temperature": 0.8, "top_p": 0.9, "top_n_sigma": 1.5, "typical_p": 0.9,
            "epsilon": 3e-4, "eta": 9e-4, "xtc_probability": 0.5, "xtc_threshold": 0.2,
            "dynatemp_range": 0.3, "dynatemp_exponent": 2.0, "mirostat_tau": 4.0,
            "mirostat_eta": 0.2, "dry_multiplier": 0.8, "dry_base": 2.0,
            "dry_allowed_length": 3, "dry_range": 64}
    assert {k: got[k] for k in want} == want
    assert p.order == nx.samplers.LLAMA_CPP
    # llama.cpp's conventions: --mirostat 2 alone targets 5 bits; -1 = the whole context
    # (dry_range 0), 0 switches DRY off; without the flags every sampler stays off
    args = parse(["generate", "--prompt", "x", "--mirostat", "2", "--dry-multiplier", "0.8",
                  "--dry-penalty-last-n", "-1"])
    got = nx.SamplingParams(**cli._generate_params(args)).scalars()
    assert (got["mirostat_tau"], got["mirostat_eta"], got["dry_range"]) == (5.0, 0.1, 0)
    args = parse(["generate", "--prompt", "x", "--dry-multiplier", "0.8",
                  "--dry-penalty-last-n", "0"])
    assert cli._generate_params(args)["dry_multiplier"] == 0.0
    plain = nx.SamplingParams(**cli._generate_params(parse(["generate", "--prompt", "x"])))
    assert plain.samplers_on() == () and plain.processors_on() == ()
    assert plain.order == nx.samplers.DEFAULT
    # explain and sweep: lists of values, every combination a setting, one order for all
    args = parse(["explain", "--logits", "1", "2", "--typical", "0.9", "1", "--xtc-probability",
                  "0", "0.5", "--samplers-order", "hf"])
    with pytest.raises(cli.UsageError, match="--samplers-order: .* got hf, which has none "
                       "for --xtc-probability; fix:"):
        cli._grid(args, cli.KNOBS + cli.CATALOGUE)
    args = parse(["sweep", "--prompt", "x", "--typical", "0.9", "1", "--mirostat", "0", "2",
                  "--dry-multiplier", "0.5", "--preset", "chatbot", "--samplers-order", "hf"])
    settings = cli._grid(args, cli.KNOBS + cli.PENALTIES + cli.CATALOGUE + cli.DRY)
    assert [lbl for lbl, _ in settings] == [
        "T=1 p=0.9 typical=0.9 dry=0.5", "T=1 p=0.9 typical=0.9 mirostat=5/0.1 dry=0.5",
        "T=1 p=0.9 dry=0.5", "T=1 p=0.9 mirostat=5/0.1 dry=0.5", "chatbot"]
    assert all(p.order == nx.samplers.HF for _, p in settings)  # presets too


def test_catalogue_flag_combinations_are_one_line_before_the_model_loads(capsys):
    cases = [
        (["--mirostat-ent", "4"], "--mirostat-ent: expected --mirostat 2 with it (mirostat is "
         "off), got --mirostat-ent 4 alone; fix: add --mirostat 2"),
        (["--mirostat", "0", "--mirostat-lr", "0.2"], "--mirostat-lr: expected --mirostat 2"),
        (["--typical", "0.9", "--samplers-order", "vllm"], "--samplers-order: expected an order "
         "with a step for every sampler that is on, got vllm, which has none for --typical; "
         "fix: drop those flags or use --samplers-order nucleax (every sampler)"),
        (["--dry-multiplier", "0.8", "--dry-sequence-breaker", "none", "--dry-sequence-breaker",
          ":"], "--dry-sequence-breaker: expected 'none' alone"),
    ]
    for flags, message in cases:
        code, out, err = run(capsys, "generate", "--prompt", "hi", *flags)
        assert code == 2 and out == "" and "loading" not in err, err
        assert _one_line(err).startswith("nucleax generate: error: " + message), err
    code, _, err = run(capsys, "sweep", "--prompt", "x", "--mirostat-ent", "4", "6")
    assert code == 2 and "--mirostat-ent 4 6 alone" in _one_line(err)


def test_dry_sequence_breakers_are_encoded_with_the_tokenizer(tiny_gguf):
    from nucleax.apps._kit import breaker_ids
    from nucleax.models import load_gguf

    _, tok = load_gguf(tiny_gguf)
    parse = cli.build_parser().parse_args
    # DRY on, no breaker given: llama.cpp's defaults
    args = parse(["generate", "--prompt", "x", "--dry-multiplier", "0.8"])
    fields, _ = cli._shared_processors(args, tok)
    defaults = breaker_ids(tok, ["\n", ":", '"', "*"])
    assert fields["dry_sequence_breakers"] == defaults and len(defaults) == 4
    assert sorted(tok.decode([i]) for i in defaults) == sorted(["\n", ":", '"', "*"])
    # given ones replace them; escapes are read; every id of a text's encoding is a breaker
    args = parse(["generate", "--prompt", "x", "--dry-multiplier", "0.8",
                  "--dry-sequence-breaker", "\\n", "--dry-sequence-breaker", "ab c"])
    fields, _ = cli._shared_processors(args, tok)
    ids = fields["dry_sequence_breakers"]
    assert ids == sorted(set(ids)) and tok.encode("\n")[-1] in ids
    assert set(tok.backend.encode("ab c", add_special_tokens=False).ids) <= set(ids)
    for argv in (["--dry-sequence-breaker", "none"], []):  # none, or DRY off: no breakers
        fields, _ = cli._shared_processors(parse(["generate", "--prompt", "x", *argv]), tok)
        assert "dry_sequence_breakers" not in fields


def test_generate_with_the_catalogue_on_a_tiny_model(capsys, tiny_gguf):
    code, out, err = run(capsys, "generate", "--prompt", "hello", "--model", tiny_gguf,
                         "--max-new-tokens", "5", "--json", "--batch", "2", "--temperature",
                         "0.9", "--top-nsigma", "2", "--typical", "0.95", "--xtc-probability",
                         "0.5", "--mirostat", "2", "--mirostat-ent", "6", "--dry-multiplier",
                         "0.8", "--samplers-order", "llama.cpp", "--seed", "2")
    assert code == 0, err
    doc = json.loads(out)
    p = doc["params"]
    assert (p["top_n_sigma"], p["typical_p"], p["xtc_probability"], p["mirostat_tau"],
            p["dry_multiplier"]) == (2.0, 0.95, 0.5, 6.0, 0.8)
    assert p["order"] == "llama.cpp" and p["dry_sequence_breakers"] == ["\n", ":", '"', "*"]
    assert any("mirostat is on (tau 6): it replaces top_p, typical_p" in w
               for w in doc["warnings"])
    for s in doc["samples"]:
        assert len(s["tokens"]) == 5 and all(0 <= t < 263 for t in s["tokens"])


def test_bench_catalogue_mixes_run_on_a_tiny_vocabulary(capsys, tmp_path):
    for mix in [*bench.MIXES, bench.MIXED]:  # the existing mixes: every new sampler off
        params = bench.row_params(mix, 4)
        assert params.samplers_on() == () and params.order == nx.samplers.DEFAULT, mix
    on = {mix: bench.row_params(mix, 4).samplers_on() for mix in bench.CATALOGUE_MIXES}
    assert on == {"T+typical0.9": ("typical_p",), "T1+nsigma1": ("top_n_sigma",),
                  "T+xtc0.5/0.1": ("xtc",)}
    # per-row arrays, as a server passes them
    assert np.asarray(bench.row_params("T+xtc0.5/0.1", 4).xtc_threshold).shape == (4,)
    out = tmp_path / "b.json"
    assert cli.main(["bench", "sampling", "--batch", "2", "--vocab", "300", "--dtype", "float32",
                     "--mix", *bench.CATALOGUE_MIXES, "--baselines", "floor", "sort", "--reps",
                     "2", "--budget", "0.1", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["mix"] for r in records] == list(bench.CATALOGUE_MIXES)
    for r in records:
        assert r["nucleax_ms"] > 0 and r["floor_ms"] > 0 and 1 <= r["nucleus"] <= 300
        assert "sort_ms" not in r  # the sort baseline samples another distribution
    printed = capsys.readouterr().out
    assert "T+typical0.9" in printed and "T1+nsigma1" in printed
    default = cli.build_parser().parse_args(["bench", "sampling"]).mix
    assert set(bench.CATALOGUE_MIXES) <= set(default) and set(bench.MIXES) <= set(default)
