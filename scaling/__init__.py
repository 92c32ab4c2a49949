"""Scaling sweeps, laws and studies, above train/ (which they run) and below main.py.

scaling/*.py: the library: sweeps, member hashes, results CSVs, laws and fits, validation, plots.
scaling/studies/: the studies (fine-tuning, compression, the distillation law); they import the
library, which imports none of them (tests/test_code_health.py).
"""
