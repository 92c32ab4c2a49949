"""Recover a compressed model (python -m train.tools.compress): distilled from the model it was cut
from, fine-tuned on the pre-training data, or the same shape trained from scratch on the same
tokens.

  python -m train.tools.compress --workdir=W --out=W/../depth --prune=layers:2
  python main.py --config=configs/recover.py:student=W/../depth,teacher=W,recover=distill --workdir=R
  python main.py --config=configs/recover.py:student=W/../depth,teacher=W,recover=finetune --workdir=R2
  python main.py --config=configs/recover.py:student=W/../depth,teacher=W,recover=scratch --workdir=R3
  python main.py --config=configs/recover.py:rerun=W --config.sparsity.target=0.5 --workdir=R4

Variants, comma-separated: `student=<workdir>` (the compressed model: its config.json gives the
model and, except for scratch, the initial weights), `teacher=<workdir>` (the source: its
config.json gives data, batch and lr), `recover=distill|finetune|scratch`, `steps=<n>` (default
800: 1.6M tokens at the ladder's batch of 16 x 128, 1/8 of the 651K member's 13M).
`rerun=<workdir>` alone: that run's own config (model, data, schedule), to train it again with a
change given as flags, e.g. gradual sparsity or quantization-aware training
(--config.model.weight_quant=int4): the compressed twin of a dense run.

The rule (docs/compression.md): the teacher's data, batch and eval set; cosine from a 5 % warmup
to 0.1x; lr: distill and finetune at 1/4 of the teacher's peak (as full fine-tuning,
configs/finetune.py), scratch at the teacher's peak (μP: the same base hyperparameters transfer to
the new shape); distillation is pure (alpha = 1: forward KL to the teacher's distribution at T = 1,
online), as Minitron recovers; eval every steps/16.
"""

import json
import os

from configs import base, distill

RECOVERIES = ('distill', 'finetune', 'scratch')


def _saved(workdir: str) -> dict:
  if workdir.startswith('hf:'):  # an HF directory's config.json has no data, batch or lr.
    raise ValueError(
      f'configs/recover.py: {workdir} is an HF checkpoint; this config takes the data, batch and '
      'lr from one of our workdirs (train.tools.compress --out of the HF model gives the student; for '
      'the teacher, distil with configs/distill.py and distill.teacher=hf:...)'
    )
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ValueError(f'configs/recover.py: {workdir} has no config.json (train it first)')
  with open(path) as f:
    return json.load(f)


def _rerun(saved: dict):
  """A saved run's config: its model, data, batch and schedule (not its init_from)."""
  c = base.get_config()
  for section in ('model', 'data', 'train', 'optimizer'):
    c[section].update(saved[section])
  c.seed = saved.get('seed', 0)
  return c


def get_config(arg: str = ''):
  opts = dict(kv.partition('=')[::2] for kv in arg.split(',') if kv)
  if set(opts) == {'rerun'}:
    return _rerun(_saved(opts['rerun']))
  unknown = set(opts) - {'student', 'teacher', 'recover', 'steps'}
  if unknown or not {'student', 'teacher'} <= set(opts):
    raise ValueError(
      f'configs/recover.py: variants student=,teacher= required; unknown {sorted(unknown)}'
    )
  recover = opts.get('recover', 'distill')
  if recover not in RECOVERIES:
    raise ValueError(f'configs/recover.py: recover={recover!r} is not one of {RECOVERIES}')
  teacher, student = _saved(opts['teacher']), _saved(opts['student'])
  c = base.get_config()
  for section in ('data', 'train', 'optimizer'):
    c[section].update(teacher[section])
  c.seed = teacher.get('seed', 0)
  c.model.update(student['model'])
  c.data.max_documents = teacher['data'].get('max_documents', 0)
  steps = int(opts.get('steps', 800))
  c.train.update(
    num_steps=steps,
    total_tokens=0,
    log_every=max(steps // 16, 1),
    eval_every=max(steps // 16, 1),
    checkpoint_every=steps,
    keep_checkpoints=1,
  )
  peak = teacher['optimizer']['lr']
  c.optimizer.update(
    lr=peak if recover == 'scratch' else peak / 4,
    schedule='cosine',
    warmup_steps=max(steps // 20, 1),
    min_lr_ratio=0.1,
  )
  c.init_from = '' if recover == 'scratch' else os.path.abspath(opts['student'])
  if recover == 'distill':
    c.distill = distill.distill_section()
    c.distill.update(teacher=os.path.abspath(opts['teacher']), alpha=1.0, mode='online')
  return c
