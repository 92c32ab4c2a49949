"""Command lines over a workdir, each `python -m train.tools.<name>`: compress, export, sample,
harness (lm-eval); the packed quantized workdirs compress writes (quantized.py).
May import models/ and the trainer core (train/*.py, train/data/); the core never imports them.
"""
