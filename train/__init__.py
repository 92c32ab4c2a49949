"""The trainer, between models/ (which it imports) and scaling/ (which imports it).

train/*.py: the core: validation, sharding, state, step, the loop, hooks, evaluators, checkpoints.
train/data/: the input pipeline (sources, token shards, mixtures, supervised data, tokenizers).
train/distillation/: the distillation trainer, its teacher and its stores; imports the core.
train/tools/: command lines over a workdir (compress, export, sample, lm-eval); import the core.
The core and data/ import neither distillation/ nor tools/ (tests/test_code_health.py).
"""
