"""Tiny distillation sweep: student sizes x {supervised, distilled} at one token budget.

Each student size is trained twice on the same tokens: from scratch (train.loop.run) and distilled
online from a fixed teacher (train.distillation.trainer.run, the `distill` section below);
results.csv adds `mode`, `teacher_params` and `teacher_loss` (the latter two from the distilled
members' metrics).

  # the teacher first (configs/distill.py, trained by the core trainer):
  python main.py --config=configs/distill.py:teacher --workdir=workdirs/distill/teacher
  python main.py --config=configs/sweeps/distill_tiny.py --workdir=workdirs/distill_sweep
  # another teacher: --config.sweep.distill.section.teacher=/path/to/workdir (or hf:/dir)

The teacher defaults to <repo>/workdirs/distill/teacher (TEACHER_WORKDIR below, resolved from this
file's location): configs/distill.py:teacher, d_model 192, 4 layers, 1.85M params (1.78M
non-embedding), eval loss 1.893. The students (8.4K, 23K and 63K params) are 30-220x smaller.
3 sizes x 2 modes x 0.6M tokens (146 steps of 32 x 128): 9m48s measured on a shared 2-core CPU,
the distilled members taking 1.6-2.3x their supervised twins (the teacher's forward pass in
every step). docs/distillation.md has the result.
"""

import os

import ml_collections

from configs.sweeps import tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEACHER_WORKDIR = os.path.join(REPO, 'workdirs', 'distill', 'teacher')


def get_config():
  c = tiny.training_config(lr=3e-3)
  c.sweep = tiny.sweep_section(kind='grid', sizes=(8e3, 2.4e4, 6.4e4), tokens=(6e5,))
  # The `distill` section of the distilled members (configs/base.py get_distill_config() keys;
  # omitted keys take its defaults).
  c.sweep.distill = ml_collections.ConfigDict(
    {
      'modes': ('supervised', 'distill'),
      'section': ml_collections.ConfigDict(
        {
          'teacher': TEACHER_WORKDIR,
          'mode': 'online',
          'temperature': 1.0,
          'alpha': 0.5,
          'divergence': 'forward',
        }
      ),
    }
  )
  return c
