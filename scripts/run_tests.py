"""Runs the test suite one test file per pytest process, then prints one summary line.

Each file gets a fresh process (and a fresh XLA client): a long single process accumulates many
compiled programs and 8 simulated devices' worth of buffers, and on this 2-core VM one such run
once died in XLA after 30 minutes. Arguments are passed to every pytest call (e.g. `-x`, `-k`).
Usage: python scripts/run_tests.py [pytest args] [tests/test_x.py ...]
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    files = [a for a in argv if a.endswith(".py") or "::" in a]
    opts = [a for a in argv if a not in files]
    if not files:
        files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py"))
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    failed_files = []
    start = time.perf_counter()
    for f in files:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", *opts, f], cwd=ROOT,
                              capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", out)}
        for k, n in counts.items():
            totals["error" if k.startswith("error") else k] += n
        ok = proc.returncode in (0, 5)  # 5: no tests collected (e.g. deselected by -k)
        if not ok:
            failed_files.append(f)
            if not counts.get("failed") and not counts.get("error") and not counts.get("errors"):
                totals["error"] += 1  # crashed without a summary
            print(out[-6000:])
        print(f"{f}: {'ok' if ok else 'FAILED'} "
              f"({', '.join(f'{n} {k}' for k, n in counts.items()) or 'no summary'}) "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
        if not ok and "-x" in opts:
            break
    print(f"suite time {time.perf_counter() - start:.0f} s; failed files: {failed_files or 'none'}")
    line = f"{totals['passed']} passed, {totals['failed'] + totals['error']} failed"
    if totals["skipped"]:
        line += f", {totals['skipped']} skipped"
    print(line)
    return 1 if failed_files else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
