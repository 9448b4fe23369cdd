"""The apps: tools built on the sampling kernels, for a person at a terminal.

Nothing in the kernels (`nucleax._*`, `ops`, `decode`, `processors`,
`models`) imports from here. The command line (`nucleax.cli`) only parses
flags and prints; the work happens in these modules:

- `presets`: named settings (`nucleax.presets`), and `DEFAULT`, the one
  default setting every tool starts from.
- `check`: pitfall warnings (`nucleax.check`, `nucleax.SamplingWarning`).
- `explain`: tables, charts and a page of what the knobs do to one
  distribution (`nucleax.explain` is its main function).
- `sweep`: many settings x prompts x samples, generated and measured.
- `calibrate`: temperature calibration (`nucleax.calibrate_temperature`).
- `bench`, `bench_decode`: the benchmark programs.
- `_kit`: the pieces the apps share, one place each: chat wrapping, a
  forward pass with a fresh cache, next-token logits with token names,
  scoring a text in chunks, stop texts as token sequences, progress bars,
  rounding for JSON.
"""
