"""Sweeps: a grid of runs (traces × policies × options × seeds) through one runner.

`spec` reads a YAML spec into cells, `runner` runs the cells that are not finished yet
on an executor (`executors`: a local process pool or Ray) and `store` keeps one directory
per cell, keyed by a hash of the cell's inputs, so an interrupted sweep resumes.
Experiments with their own command line (`gpufleet experiment fgd-inflation`, `hetero`,
`continual`, `rap`, and `gpufleet compare`) build cells and go through the same runner,
and a spec can name each of them (`spec.EXPERIMENTS`; compare's cells are `simulate`).
"""
