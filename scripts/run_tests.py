"""Runs the test suite one test file per pytest process, then prints one summary line.

Each file gets a fresh process (and a fresh XLA client): a long single process accumulates many
compiled programs and 8 simulated devices' worth of buffers, and on this 2-core VM one such run
once died in XLA after 30 minutes. Two files run at a time (at most one per core): most of a file's
time is XLA compiling, on one thread. No test measures time, so sharing the cores changes no
outcome. Arguments are passed to every pytest call (e.g. `-x`, `-k`).
Usage: python scripts/run_tests.py [pytest args] [tests/test_x.py ...]
"""

from __future__ import annotations

import concurrent.futures
import os
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

    def run(f: str) -> tuple[str, subprocess.CompletedProcess, float]:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", *opts, f], cwd=ROOT,
                              capture_output=True, text=True)
        return f, proc, time.perf_counter() - t0

    jobs = max(1, min(2, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        pending = [pool.submit(run, f) for f in files]
        for done in concurrent.futures.as_completed(pending):
            f, proc, seconds = done.result()
            out = proc.stdout + proc.stderr
            found = re.findall(r"(\d+) (passed|failed|skipped|errors?)", out)
            counts = {k: int(n) for n, k in found}
            for k, n in counts.items():
                totals["error" if k.startswith("error") else k] += n
            ok = proc.returncode in (0, 5)  # 5: no tests collected (e.g. deselected by -k)
            if not ok:
                failed_files.append(f)
                if not any(counts.get(k) for k in ("failed", "error", "errors")):
                    totals["error"] += 1  # crashed without a summary
                print(out[-6000:])
            print(f"{f}: {'ok' if ok else 'FAILED'} "
                  f"({', '.join(f'{n} {k}' for k, n in counts.items()) or 'no summary'}) "
                  f"in {seconds:.0f} s", flush=True)
            if not ok and "-x" in opts:
                for other in pending:
                    other.cancel()  # files not started yet
    print(f"suite time {time.perf_counter() - start:.0f} s; failed files: {failed_files or 'none'}")
    line = f"{totals['passed']} passed, {totals['failed'] + totals['error']} failed"
    if totals["skipped"]:
        line += f", {totals['skipped']} skipped"
    print(line)
    return 1 if failed_files else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
