"""A distilled twin for the distillation scaling law (scaling/studies/distillation.py): a supervised
run's own config (model, data, batch, tokens, schedule, lr) with the student distilled online from a
teacher workdir instead of trained on the data alone.

  L=workdirs/ladder S=$L/N7.51e4_D1.5e6_lr7.81e-3 T=$L/N6.51e5_D1.3e7_lr7.81e-3
  python main.py --config=configs/distill_twin.py:student=$S,teacher=$T --workdir=W

Variants: `student=<workdir>` (the supervised twin), `teacher=<workdir>`, `alpha=<a>` (default 1:
pure distillation, forward KL at T = 1; 0.5: the mixed objective with the data's cross-entropy).
"""

import os

from configs import distill, recover


def get_config(arg: str = ''):
  opts = dict(kv.partition('=')[::2] for kv in arg.split(',') if kv)
  unknown = set(opts) - {'student', 'teacher', 'alpha'}
  if unknown or not {'student', 'teacher'} <= set(opts):
    raise ValueError(
      f'configs/distill_twin.py: variants student=,teacher= required; unknown {sorted(unknown)}'
    )
  c = recover.get_config(f'rerun={opts["student"]}')
  c.distill = distill.distill_section()
  c.distill.update(
    teacher=os.path.abspath(opts['teacher']), alpha=float(opts.get('alpha', 1.0)), mode='online'
  )
  return c
