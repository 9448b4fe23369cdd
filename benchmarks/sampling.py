"""Sampling benchmark; the program lives in `nucleax.bench` so that the
installed `nucleax bench sampling` runs it too. Options: `--help`."""

import sys

from nucleax.apps.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
