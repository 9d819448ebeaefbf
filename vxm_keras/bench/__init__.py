"""Benchmark: speed and memory of vxm-keras, alternatives side by side in one run.

``python -m vxm_keras.bench --help``. Every measurement runs in a fresh Python process, so its
peak resident memory (``ru_maxrss``) is its own. Times are the best and the median of
``--repeats`` runs after a warm-up. Ratios compare two things measured in the same process,
which is what to trust on a noisy machine.

- :mod:`.workers`: the measurements (forward, training step, NCC, warp, register.py's code, ANTs);
- :mod:`.run`: fixtures, orchestration, the command line; results as a dict and JSON;
- :mod:`.report`: the Markdown report from those results.
"""
