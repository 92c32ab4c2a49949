"""Knowledge distillation: the trainer main.py runs for a `distill` section (trainer.py), the
teacher (teacher.py), offline and sequence stores (store.py, `python -m train.distillation.store`).
May import models/ and the trainer core (train/*.py, train/data/); the core never imports it.
"""
