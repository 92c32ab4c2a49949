"""Studies: each runs its members (resumable) and writes CSVs, fits and plots to docs/<study>/:
fine-tuning (finetune.py), compression (compression.py, compression_report.py), the
distillation law (distillation.py). May import the scaling library (scaling/*.py), train/ and
models/; the library imports no study.
"""
