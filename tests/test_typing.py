"""The README's Python examples pass `mypy --strict` against the installed, typed package."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_package_is_marked_typed():
    import nucleax

    assert (Path(nucleax.__file__).parent / "py.typed").is_file()


def test_readme_examples_pass_mypy_strict(tmp_path):
    assert len(BLOCKS) >= 2
    files = []
    for i, code in enumerate(BLOCKS):
        path = tmp_path / f"readme_example_{i}.py"
        path.write_text(code)
        files.append(str(path))
    cmd = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
           "--cache-dir", str(ROOT / ".pytest_cache" / "mypy"), *files]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    report = (done.stdout + done.stderr).replace(str(tmp_path) + "/", "README ")
    assert done.returncode == 0, report
