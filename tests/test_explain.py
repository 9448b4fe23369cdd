"""explain tables and charts, the interactive page in a real browser, presets, warnings."""

import shutil
import warnings

import numpy as np
import pytest

import nucleax as nx
from nucleax import cli
from nucleax.apps import explain as ex

SEED_LOGITS = [5.0, 2.2, 2.0, 4.5, 3.0, 2.7]
SEED_TOKENS = ["day", "space", "furniture", "experience", "problem", "challenge"]
SEED_PROBS = [0.512106, 0.031141, 0.025496, 0.310608, 0.069306, 0.051343]


def test_explain_table_reproduces_the_article(capsys):
    args = ["explain", "--logits", *map(str, SEED_LOGITS), "--tokens", *SEED_TOKENS,
            "--temperature", "0.5", "1", "2"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()}
    for tok, want in zip(SEED_TOKENS, SEED_PROBS, strict=True):
        assert abs(float(rows[tok][3]) - want) < 1e-6  # column T=1
    assert float(rows["day"][2]) > 0.7 > 0.35 > float(rows["day"][4])  # 0.5 sharpens, 2 flattens
    assert rows["survivors"][1:] == ["6", "6", "6"]


def test_explain_numbers_come_from_probs():
    settings = [nx.SamplingParams(0.7, 3, 0.9), nx.SamplingParams(1.5, 0, 0.8, 0.1)]
    e = ex.explain(SEED_LOGITS, settings, SEED_TOKENS)
    for i, s in enumerate(settings):
        np.testing.assert_array_equal(e.probs[i], np.asarray(nx.probs(SEED_LOGITS, s), np.float64))
    assert e.labels == ["T=0.7 k=3 p=0.9", "T=1.5 p=0.8 min_p=0.1"]
    assert e.survivors.tolist() == [(e.probs[0] > 0).sum(), (e.probs[1] > 0).sum()]
    np.testing.assert_allclose(e.top_prob, e.probs.max(-1))
    p = e.probs[1][e.probs[1] > 0]
    assert abs(e.entropy[1] + np.sum(p * np.log2(p))) < 1e-9
    with pytest.raises(ValueError, match="tokens must name every logit: got 2 tokens for 6"):
        ex.explain(SEED_LOGITS, settings, ["a", "b"])


def test_charts_are_written(tmp_path):
    e = ex.explain(SEED_LOGITS, [nx.SamplingParams(1.0), nx.SamplingParams(0.7, 2)], SEED_TOKENS)
    bars, sweep = tmp_path / "bars.png", tmp_path / "sweep.png"
    ex.plot_bars(e, bars)
    p = ex.plot_temperature_sweep(SEED_LOGITS, nx.SamplingParams(1.0, top_p=0.9), sweep,
                                  SEED_TOKENS)
    for f in (bars, sweep):
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 10_000
    assert p.shape == (79, 6) and (p[0] == np.eye(6)[0]).all()  # T=0.05: only "day"


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (Debian package "
                    "`chromium`; the README's test command installs it where apt-get works)")
def test_interactive_page_agrees_with_probs_in_a_real_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(0)
    logits = np.round(rng.normal(0, 2, 12), 1)  # rounding makes ties
    tokens = [f"tok{i}" for i in range(12)]
    page_path = tmp_path / "page.html"
    ex.write_html(logits, tokens, page_path, nx.SamplingParams(1.0))
    assert "http" not in page_path.read_text().split("<script>")[1]  # no network resources
    moves = [dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
             dict(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0),
             dict(temperature=1.3, top_k=4, top_p=1.0, min_p=0.0),
             dict(temperature=0.8, top_k=0, top_p=0.7, min_p=0.0),
             dict(temperature=1.7, top_k=8, top_p=0.9, min_p=0.05),
             dict(temperature=0.0, top_k=3, top_p=0.5, min_p=0.0)]
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=args)
        page = browser.new_page()
        page.goto(page_path.as_uri())
        for move in moves:
            for name, value in move.items():  # move each slider as a user would
                page.eval_on_selector(f"#{name}", "(el, v) => { el.value = v; "
                                      "el.dispatchEvent(new Event('input')); }", str(value))
            shown = [float(page.inner_text(f"#prob-{i}")) for i in range(12)]
            want = np.asarray(nx.probs(logits.astype(np.float32), nx.SamplingParams(**move)))
            np.testing.assert_allclose(shown, want, atol=2e-6, err_msg=str(move))
            assert int(page.inner_text("#survivors")) == int((want > 0).sum())
        browser.close()


def test_presets_hold_the_article_values(capsys):
    want = {"code_generation": (0.2, 0, 0.1), "creative_writing": (0.7, 0, 0.8),
            "chatbot": (0.5, 0, 0.5), "code_comments": (0.3, 0, 0.2),
            "data_analysis": (0.2, 0, 0.1), "exploratory_code": (0.6, 0, 0.7),
            "factual": (0.3, 10, 1.0), "storytelling": (1.0, 0, 0.95), "default": (1.0, 0, 0.9)}
    assert set(nx.presets.names()) == set(want)
    for name, (t, k, p) in want.items():
        got = nx.presets.get(name)
        assert (float(got.temperature), int(got.top_k), float(got.top_p)) == \
            pytest.approx((t, k, p)), name
        assert nx.presets.PRESETS[name].description
    with pytest.raises(ValueError, match=r"unknown preset 'poetry'; expected one of"):
        nx.presets.get("poetry")
    assert cli.main(["presets"]) == 0
    assert "creative_writing  T=0.7 p=0.8" in capsys.readouterr().out


def test_explicit_flags_override_a_preset(capsys):
    args = ["explain", "--logits", *map(str, SEED_LOGITS), "--preset", "factual"]
    assert cli.main(args) == 0
    assert "factual" in capsys.readouterr().out
    parsed = cli.build_parser().parse_args(["generate", "--prompt", "x", "--preset",
                                            "creative_writing", "--top-p", "0.5"])
    params = cli._params_from_args(parsed)
    assert (float(params.temperature), float(params.top_p)) == pytest.approx((0.7, 0.5))


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
