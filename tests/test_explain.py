"""explain tables and charts, the interactive page in a real browser, presets, warnings."""

import json
import re
import shutil
import warnings

import numpy as np
import pytest
from smollm import needs_smollm, smollm

import nucleax as nx
from nucleax import cli
from nucleax.apps import explain as ex

SEED_LOGITS = [5.0, 2.2, 2.0, 4.5, 3.0, 2.7]
SEED_TOKENS = ["day", "space", "furniture", "experience", "problem", "challenge"]
SEED_PROBS = [0.512106, 0.031141, 0.025496, 0.310608, 0.069306, 0.051343]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_table_reproduces_the_article(capsys):
    code, out, _ = run(capsys, "explain", "--logits", *map(str, SEED_LOGITS), "--tokens",
                       *SEED_TOKENS, "--temperature", "0.5", "1", "2", "--top-p", "1")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()}
    for tok, want in zip(SEED_TOKENS, SEED_PROBS, strict=True):
        assert abs(float(rows[tok][3]) - want) < 1e-6  # column T=1
    assert float(rows["day"][2]) > 0.7 > 0.35 > float(rows["day"][4])  # 0.5 sharpens, 2 flattens
    assert rows["survivors"][1:] == ["6", "6", "6"]
    assert "other" not in rows  # every token is shown: no remainder row
    entropy = out.splitlines()[-2].split()
    assert entropy[:2] == ["entropy", "(nats)"]
    p = np.asarray(SEED_PROBS)
    assert float(entropy[3]) == pytest.approx(-(p * np.log(p)).sum(), abs=1e-3)


def test_explain_numbers_come_from_probs():
    settings = [nx.SamplingParams(0.7, 3, 0.9), nx.SamplingParams(1.5, 0, 0.8, 0.1)]
    e = nx.explain(SEED_LOGITS, settings, SEED_TOKENS)
    for i, s in enumerate(settings):
        np.testing.assert_array_equal(e.probs[i], np.asarray(nx.probs(SEED_LOGITS, s), np.float64))
    assert e.labels == ["T=0.7 k=3 p=0.9", "T=1.5 p=0.8 min_p=0.1"]
    assert e.survivors.tolist() == [(e.probs[0] > 0).sum(), (e.probs[1] > 0).sum()]
    np.testing.assert_allclose(e.top_prob, e.probs.max(-1))
    p = e.probs[1][e.probs[1] > 0]
    assert abs(e.entropy[1] + np.sum(p * np.log(p))) < 1e-9  # nats
    with pytest.raises(ValueError, match="tokens must name every logit: got 2 tokens for 6"):
        nx.explain(SEED_LOGITS, settings, ["a", "b"])


@pytest.fixture(scope="module")
def big():
    """A 3000-token vocabulary with ties, two settings, the top 8 tokens shown."""
    rng = np.random.default_rng(0)
    logits = np.round(rng.normal(0, 2, 3000), 1).astype(np.float32)
    settings = [nx.SamplingParams(1.5, top_p=0.9), nx.SamplingParams(0.7, top_k=40, min_p=0.05)]
    e = nx.explain(logits, settings, [f"t{i}" for i in range(3000)])
    want = np.stack([np.asarray(nx.probs(logits, s), np.float64) for s in settings])
    return e, e.top(8), want


def test_every_view_is_the_full_vocabulary(big, tmp_path):
    e, rows, want = big
    assert rows == np.argsort(-e.logits, kind="stable")[:8].tolist()
    rest = np.ones(3000, bool)
    rest[rows] = False
    other = want[:, rest].sum(-1)
    assert other.min() > 0.3  # the tail matters here: renormalising over 8 tokens would lie
    # the table
    lines = {ln.split()[0]: ln.split() for ln in e.table(rows).splitlines()}
    for i in rows:
        np.testing.assert_allclose([float(x) for x in lines[f"t{i}"][2:]], want[:, i], atol=1e-6)
    np.testing.assert_allclose([float(x) for x in lines["other"][3:]], other, atol=1e-6)
    assert lines["survivors"][1:] == [str(n) for n in (want > 0).sum(-1)]
    # JSON
    doc = e.to_json(rows)
    assert [t["id"] for t in doc["tokens"]] == rows and doc["vocab_size"] == 3000
    np.testing.assert_allclose(doc["other"]["probs"], other, rtol=1e-5)
    np.testing.assert_allclose([t["probs"] for t in doc["tokens"]], want[:, rows].T, rtol=1e-5)
    assert [s["label"] for s in doc["settings"]] == e.labels and doc["entropy_unit"] == "nats"
    # bars
    bars = ex.plot_bars(e, tmp_path / "bars.png", rows)
    np.testing.assert_array_equal(bars[:, :-1], e.probs[:, rows])  # the explanation's numbers
    np.testing.assert_allclose(bars, np.concatenate([want[:, rows], other[:, None]], 1),
                               atol=1e-6)
    # temperature sweep: one panel per (k, p, min_p); at each requested T, the same numbers
    sweep = ex.plot_temperature_sweep(e, tmp_path / "sweep.png", rows)
    assert list(sweep["panels"]) == ["p=0.9", "k=40 min_p=0.05"]
    for s, (panel, t) in enumerate(zip(sweep["panels"].values(), (1.5, 0.7), strict=True)):
        at = int(np.argmin(np.abs(sweep["temperatures"] - t)))
        assert sweep["temperatures"][at] == pytest.approx(t)
        np.testing.assert_allclose(panel[at], bars[s], atol=1e-6)
    for f in ("bars.png", "sweep.png"):
        data = (tmp_path / f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_cli_shows_every_setting_in_every_view(capsys, tmp_path):
    rng = np.random.default_rng(1)
    logits = [f"{x:.2f}" for x in rng.normal(0, 2, 300)]
    page, sweep, bars = tmp_path / "p.html", tmp_path / "s.png", tmp_path / "b.png"
    code, out, err = run(capsys, "explain", "--logits", *logits, "--top", "5",
                         "--temperature", "1.5", "--top-p", "0.9", "1.0", "--json",
                         "--html", str(page), "--sweep-temperature", str(sweep),
                         "--plot", str(bars))
    assert code == 0, err
    doc = json.loads(out)
    labels = [s["label"] for s in doc["settings"]]
    assert labels == ["T=1.5 p=0.9", "T=1.5"] and len(doc["tokens"]) == 5
    assert doc["other"]["count"] == 295
    data = json.loads(page.read_text().split("const DATA = ")[1].split(";\n")[0])
    assert [s["label"] for s in data["settings"]] == labels and data["vocab"] == 300
    assert sweep.exists() and bars.exists()
    assert f"wrote {page}" in err


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (Debian package "
                    "`chromium`; the README's test command installs it where apt-get works)")
def test_interactive_page_agrees_with_probs_in_a_real_browser(big, tmp_path):
    from playwright.sync_api import sync_playwright

    e, rows, want = big
    logits = e.logits
    page_path = tmp_path / "page.html"
    ex.write_html(e, page_path, rows)
    assert "http" not in page_path.read_text().split("<script>")[1]  # no network resources
    moves = [dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
             dict(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0),
             dict(temperature=1.3, top_k=4, top_p=1.0, min_p=0.0),
             dict(temperature=0.8, top_k=0, top_p=0.7, min_p=0.0),
             dict(temperature=1.7, top_k=800, top_p=0.9, min_p=0.05),
             dict(temperature=0.0, top_k=3, top_p=0.5, min_p=0.0)]
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update"]
    rest = np.ones(logits.size, bool)
    rest[rows] = False

    def shown(page, suffix=""):
        got = [float(page.inner_text(f"#prob-{suffix}{i}")) for i in range(len(rows))]
        return got, float(page.inner_text(f"#prob-{suffix}other"))

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=args)
        page = browser.new_page()
        page.goto(page_path.as_uri())
        for s in range(2):  # one column per requested setting, over the full vocabulary
            got, other = shown(page, f"s{s}-")
            np.testing.assert_allclose(got, want[s, rows], atol=2e-6)
            assert other == pytest.approx(want[s, rest].sum(), abs=2e-6)
            assert int(page.inner_text(f"#survivors-s{s}")) == int((want[s] > 0).sum())
            assert page.inner_text(f"#label-s{s}") == e.labels[s]
        for move in moves:
            for name, value in move.items():  # move each slider as a user would
                page.eval_on_selector(f"#{name}", "(el, v) => { el.value = v; "
                                      "el.dispatchEvent(new Event('input')); }", str(value))
            p = np.asarray(nx.probs(logits, nx.SamplingParams(**move)), np.float64)
            got, other = shown(page)
            np.testing.assert_allclose(got, p[rows], atol=2e-6, err_msg=str(move))
            assert other == pytest.approx(p[rest].sum(), abs=2e-6)
            assert int(page.inner_text("#survivors")) == int((p > 0).sum()), move
            h = -(p[p > 0] * np.log(p[p > 0])).sum()
            assert float(page.inner_text("#entropy")) == pytest.approx(h, abs=2e-3)
        page.click("#use-s1")  # a setting's button loads it into the sliders
        got, _ = shown(page)
        np.testing.assert_allclose(got, want[1, rows], atol=2e-6)
        browser.close()


@needs_smollm
def test_explain_a_prompt_over_the_full_vocabulary(capsys, monkeypatch):
    """The issue's case: one truth per setting, computed over all 49152 tokens."""
    from nucleax.apps._kit import forward_logits, prompt_ids

    model, tok = smollm()
    monkeypatch.setattr(cli, "_load_model", lambda path, dtype="float32": (model, tok))
    code, out, _ = run(capsys, "explain", "--prompt", "The capital of France is", "--raw",
                       "--top", "8", "--temperature", "1.5", "--top-p", "0.9", "1.0", "--json")
    assert code == 0
    doc = json.loads(out)
    z = forward_logits(model, prompt_ids(tok, "The capital of France is", chat=False))[-1]
    assert doc["vocab_size"] == 49152 and doc["tokens"][0]["token"] == "' Paris'"
    for s, setting in enumerate([nx.SamplingParams(1.5, top_p=0.9), nx.SamplingParams(1.5)]):
        p = np.asarray(nx.probs(z, setting), np.float64)
        assert doc["settings"][s]["survivors"] == int((p > 0).sum())
        ids = [t["id"] for t in doc["tokens"]]
        np.testing.assert_allclose([t["probs"][s] for t in doc["tokens"]], p[ids], rtol=1e-4)
        assert doc["other"]["probs"][s] == pytest.approx(1 - p[ids].sum(), abs=1e-5)
    assert doc["settings"][0]["survivors"] > 1000  # not 5: the tail is counted


def test_presets_hold_the_article_values_or_say_why_not(capsys):
    want = {"code_generation": (0.2, 0, 1.0), "creative_writing": (0.7, 0, 0.8),
            "chatbot": (0.5, 0, 0.5), "code_comments": (0.3, 0, 1.0),
            "data_analysis": (0.2, 0, 1.0), "exploratory_code": (0.6, 0, 0.7),
            "factual": (0.3, 10, 1.0), "storytelling": (1.0, 0, 0.95), "default": (1.0, 0, 0.9)}
    assert set(nx.presets.names()) == set(want)
    for name, (t, k, p) in want.items():
        preset = nx.presets.PRESETS[name]
        got = nx.presets.get(name).scalars()
        assert (got["temperature"], got["top_k"], got["top_p"]) == (t, k, p), name
        assert preset.description and preset.article
        # a preset differs from the article's table only with a reason
        assert bool(preset.revised) == (preset.article != ex.label(preset.params)), name
    assert sorted(n for n, p in nx.presets.PRESETS.items() if p.revised) == \
        ["code_comments", "code_generation", "data_analysis"]
    with pytest.raises(ValueError, match=r"unknown preset 'chatbott'.*did you mean 'chatbot'"):
        nx.presets.get("chatbott")
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"creative_writing +T=0.7 p=0.8 +T=0.7 p=0.8 ", out)
    assert re.search(r"code_generation +T=0.2 +T=0.2 p=0.1 .*revised", out)


def test_explicit_flags_override_a_preset(capsys):
    code, out, _ = run(capsys, "explain", "--logits", *map(str, SEED_LOGITS), "--preset",
                       "factual")
    assert code == 0 and "factual" in out
    parsed = cli.build_parser().parse_args(["generate", "--prompt", "x", "--preset",
                                            "creative_writing", "--top-p", "0.5"])
    values = cli._generate_params(parsed)
    assert (values["temperature"], values["top_p"]) == (0.7, 0.5)


@pytest.mark.parametrize("params,fragment", [
    (nx.SamplingParams(temperature=1.6), "may become incoherent"),
    (nx.SamplingParams(temperature=1.5, top_p=0.98), "the effects compound"),
    (nx.SamplingParams(temperature=0.8, top_p=0.2), "top_p 0.2 <= 0.3: output may become repet"),
    (nx.SamplingParams(temperature=0.8, top_k=2), "top_k 2 <= 3"),
    (nx.SamplingParams(temperature=0.2, top_p=0.1), "both push towards greedy decoding"),
    (nx.SamplingParams(temperature=0.0, top_p=0.9), "temperature 0 is greedy"),
    (nx.SamplingParams(temperature=0.9, top_k=1, top_p=0.9), "top_k=1 keeps only"),
])
def test_each_warning_triggers(params, fragment):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msgs = nx.check(params)
    assert any(fragment in m for m in msgs)
    assert any(w.category is nx.SamplingWarning and fragment in str(w.message) for w in caught)


def test_no_warning_for_sensible_settings_and_filterable():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nx.check(nx.SamplingParams(0.7, 50, 0.9)) == []
        assert nx.check(nx.presets.get("storytelling")) == []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=nx.SamplingWarning)
        assert nx.check(nx.SamplingParams(2.0))  # still returned, not raised


def test_warnings_use_the_actual_distribution():
    peaked = np.array([10.0, 0.0, 0.0, 0.0], np.float32)
    msgs = nx.check(nx.SamplingParams(0.7, top_p=0.9), peaked, warn=False)
    assert any("only one token survives" in m for m in msgs)
    flat = np.zeros(5000, np.float32)
    msgs = nx.check(nx.SamplingParams(1.2), flat, warn=False)
    assert any("5000 tokens survive" in m for m in msgs)
    per_row = nx.SamplingParams(np.array([0.7, 1.6]), top_p=np.array([0.9, 0.95]))
    msgs = nx.check(per_row, warn=False)
    assert msgs and all(m.startswith("row 1: ") for m in msgs)


# --- the wider catalogue (issue 10): explain, the page, check ------------------------------


def test_explain_names_the_samplers_that_are_on(capsys):
    argv = ["explain", "--logits", *map(str, SEED_LOGITS), "--tokens", *SEED_TOKENS,
            "--temperature", "0.7", "--top-p", "1", "--typical", "0.9", "1", "--top-nsigma",
            "1.0", "--xtc-probability", "0.5", "--xtc-threshold", "0.2"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("order nucleax: temperature > top_n_sigma > top_k > typical_p")
    assert lines[1] == "samplers on in T=0.7 nsigma=1 typical=0.9 xtc=0.5/0.2: top_n_sigma, " \
        "typical_p, xtc"
    assert lines[2] == "samplers on in T=0.7 nsigma=1 xtc=0.5/0.2: top_n_sigma, xtc"
    code, out, _ = run(capsys, *argv, "--json")
    doc = json.loads(out)
    assert doc["order"] == list(nx.samplers.DEFAULT)
    settings = [nx.SamplingParams(0.7, top_n_sigma=1.0, typical_p=t, xtc_probability=0.5,
                                  xtc_threshold=0.2) for t in (0.9, 1.0)]
    for s, want in zip(doc["settings"], settings, strict=True):
        assert s["samplers_on"] == list(want.samplers_on())
        assert (s["params"]["typical_p"], s["params"]["xtc_threshold"]) == \
            (want.scalars()["typical_p"], 0.2)
    got = np.array([t["probs"] for t in doc["tokens"]]).T
    np.testing.assert_allclose(got, nx.explain(SEED_LOGITS, settings).probs, atol=1e-6)
    # the default order with only the four knobs: the table as it always was
    _, plain, _ = run(capsys, "explain", "--logits", "1", "2", "--temperature", "1")
    assert plain.splitlines()[0].startswith("token ")
    # another order is named too
    _, out, _ = run(capsys, "explain", "--logits", "1", "2", "3", "--samplers-order", "llama.cpp")
    assert out.splitlines()[0].startswith("order llama.cpp: top_n_sigma > top_k > typical_p > "
                                          "top_p > min_p > xtc > temperature > draw")


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (Debian package "
                    "`chromium`; the README's test command installs it where apt-get works)")
def test_interactive_page_runs_the_catalogue_and_the_orders(big, tmp_path):
    """A control per sampler; the page's float64 script agrees with `nucleax.probs`."""
    from playwright.sync_api import sync_playwright

    e, rows, _ = big
    logits = e.logits
    settings = [nx.SamplingParams(1.0, typical_p=0.9),
                nx.SamplingParams(0.7, xtc_probability=0.5, xtc_threshold=0.05)]
    page_path = tmp_path / "page.html"
    mine = nx.explain(logits, settings, e.tokens)
    ex.write_html(mine, page_path, rows)
    off = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, top_n_sigma=-1.0,
               typical_p=1.0, epsilon=0.0, eta=0.0, xtc_probability=0.0, xtc_threshold=0.1,
               dynatemp_range=0.0, dynatemp_exponent=1.0, mirostat_tau=0.0)
    moves = [dict(top_n_sigma=1.0, epsilon=0.001),
             dict(temperature=0.8, typical_p=0.9, eta=0.002),
             dict(dynatemp_range=1.5, temperature=0.8, dynatemp_exponent=2.0, mirostat_tau=3.0),
             dict(temperature=0.5, top_p=0.9, typical_p=0.95, xtc_probability=0.3,
                  order="llama.cpp"),
             dict(temperature=1.3, top_p=0.8, min_p=0.05, order="vllm")]
    want = {}  # one probs call per order: rows of a batch are independent
    for order in dict.fromkeys(m.get("order", "nucleax") for m in moves):
        mine_ = [m for m in moves if m.get("order", "nucleax") == order]
        params = nx.SamplingParams.stack([nx.SamplingParams(**{**off, **m, "order": order})
                                          for m in mine_])
        table = np.asarray(nx.probs(np.tile(logits, (len(mine_), 1)), params), np.float64)
        want.update({id(m): row for m, row in zip(mine_, table, strict=True)})
    rest = np.ones(logits.size, bool)
    rest[rows] = False
    set_value = "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_page()
        page.goto(page_path.as_uri())
        for s in range(2):  # the requested settings' columns
            got = [float(page.inner_text(f"#prob-s{s}-{i}")) for i in range(len(rows))]
            np.testing.assert_allclose(got, mine.probs[s, rows], atol=2e-6)
            assert int(page.inner_text(f"#survivors-s{s}")) == int(mine.survivors[s])
        for move in moves:
            values = {**off, **move}
            order = values.pop("order", "nucleax")
            for name, value in values.items():
                page.eval_on_selector(f"#{name}", set_value, str(value))
            page.eval_on_selector("#order", set_value, order)
            p = want[id(move)]
            got = [float(page.inner_text(f"#prob-{i}")) for i in range(len(rows))]
            np.testing.assert_allclose(got, p[rows], atol=2e-6, err_msg=str(move))
            assert float(page.inner_text("#prob-other")) == pytest.approx(p[rest].sum(),
                                                                          abs=2e-6)
            assert int(page.inner_text("#survivors")) == int((p > 0).sum()), move
            assert page.inner_text("#order-text").startswith(" > ".join(
                nx.samplers.ORDERS[order]))
        page.click("#use-s1")  # loads XTC's setting into the controls
        assert page.eval_on_selector("#xtc_probability", "el => el.value") == "0.5"
        got = [float(page.inner_text(f"#prob-{i}")) for i in range(len(rows))]
        np.testing.assert_allclose(got, mine.probs[1, rows], atol=2e-6)
        browser.close()


@pytest.mark.parametrize("params,fragment", [
    (nx.SamplingParams(0.8, top_p=0.9, mirostat_tau=5.0), "it replaces top_p, which are ignored"),
    (nx.SamplingParams(0.8, top_k=40, typical_p=0.9, mirostat_tau=5.0),
     "it replaces top_k, typical_p"),
    (nx.SamplingParams(0.8, xtc_probability=0.5, xtc_threshold=0.6),
     "xtc_threshold 0.6 > 0.5: XTC can never fire"),
    (nx.SamplingParams(0.8, xtc_probability=0.5, xtc_threshold=0.0),
     "removes all but the least likely"),
    (nx.SamplingParams(0.8, top_n_sigma=0.0), "greedy decoding in disguise"),
    (nx.SamplingParams(0.5, dynatemp_range=0.8), "dynatemp_range 0.8 > temperature 0.5"),
    (nx.SamplingParams(0.0, typical_p=0.9, mirostat_tau=3.0),
     "temperature 0 is greedy: typical_p, mirostat have no effect"),
    (nx.SamplingParams(0.8, typical_p=0.9, order="vllm"),
     "typical_p on, but order 'vllm' has no such step: sampling raises"),
])
def test_each_catalogue_warning_triggers(params, fragment):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msgs = nx.check(params)
    assert any(fragment in m for m in msgs), msgs
    assert any(w.category is nx.SamplingWarning and fragment in str(w.message) for w in caught)


def test_no_catalogue_warning_for_sensible_settings():
    from nucleax.samplers import missing_steps

    for p in (nx.SamplingParams(0.7, typical_p=0.9), nx.SamplingParams(1.0, top_n_sigma=1.0),
              nx.SamplingParams(0.7, xtc_probability=0.5, xtc_threshold=0.1),
              nx.SamplingParams(1.0, mirostat_tau=5.0), nx.SamplingParams(0.8, epsilon=3e-4),
              nx.SamplingParams(1.0, dynatemp_range=0.5),
              nx.SamplingParams(0.7, top_p=0.9, order="llama.cpp"),
              nx.SamplingParams(0.7, xtc_probability=0.0, xtc_threshold=0.9)):  # XTC off
        assert nx.check(p, warn=False) == [], p
    assert missing_steps(nx.SamplingParams(0.7, top_n_sigma=1.0, epsilon=0.01, top_p=0.9,
                                           order="vllm")) == ["top_n_sigma", "epsilon"]
    assert missing_steps(nx.SamplingParams(0.7, top_p=0.9, order=("temperature", "min_p"))) \
        == ["top_p"]
    # per row: only the row that contradicts itself is named
    rows = nx.SamplingParams(np.array([0.7, 0.7]), xtc_probability=np.array([0.5, 0.5]),
                             xtc_threshold=np.array([0.1, 0.7]))
    msgs = nx.check(rows, warn=False)
    assert msgs and all(m.startswith("row 1: ") for m in msgs)
    # with logits, a missing step is reported instead of raising
    msgs = nx.check(nx.SamplingParams(0.7, typical_p=0.9, order="vllm"), np.zeros(5), warn=False)
    assert any("sampling raises" in m for m in msgs)
