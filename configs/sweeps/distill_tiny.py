"""Tiny distillation sweep: student sizes x {supervised, distilled} at one token budget.

Each student size is trained twice on the same tokens: from scratch (train.loop.run) and distilled
online from a fixed teacher (train.distill.run, the `distill` section below); results.csv adds
`mode`, `teacher_params` and `teacher_loss` (the latter two from the distilled members' metrics).

  # the teacher first (configs/distill.py, trained by the core trainer):
  python main.py --config=configs/distill.py:teacher --workdir=workdirs/distill/teacher
  python main.py --config=configs/sweeps/distill_tiny.py --workdir=workdirs/distill_sweep
  # another teacher: --config.sweep.distill.section.teacher=/path/to/workdir (or hf:/dir)

The teacher defaults to <repo>/workdirs/distill/teacher (TEACHER_WORKDIR below, resolved from this
file's location): configs/distill.py:teacher, d_model 192, 4 layers, 1.85M params (1.78M
non-embedding), eval loss 1.893. The students (8.4K, 23K and 63K params) are 30-220x smaller.
3 sizes x 2 modes x 0.6M tokens (146 steps of 32 x 128): 9m48s measured on a shared 2-core CPU,
the distilled members taking 1.6-2.3x their supervised twins (the teacher's forward pass in every step). docs/distillation.md has the result.
"""
import os

import ml_collections

from configs import base, default

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEACHER_WORKDIR = os.path.join(REPO, 'workdirs', 'distill', 'teacher')


def get_config():
  c = default.get_config()
  # Pinned (not inherited from configs/default.py), see configs/sweeps/isoflop_tiny.py.
  c.model.update(vocab_size=257, max_len=128, dtype='float32')
  c.data.update(seq_len=128, tokenizer='byte', dataset='stdlib_corpus')
  c.train.update(global_batch_size=32, grad_accum_steps=1, eval_batches=16, async_checkpoint=False)
  c.optimizer.update(lr=3e-3, schedule='cosine', min_lr_ratio=0.1, b1=0.9, b2=0.95,
                     weight_decay=0.1, grad_clip=1.0)
  c.sweep = base.get_sweep_config(
      kind='grid', sizes=(8e3, 2.4e4, 6.4e4), tokens=(6e5,), count='params', warmup_fraction=0.05,
      min_warmup_steps=5, min_steps=20, checkpoints_per_member=2, logs_per_member=4)
  c.sweep.family.update(family='gpt2', aspect=8.0, head_dim=4, tolerance=0.1)
  # The `distill` section of the distilled members (train/distill.py default_section() keys;
  # omitted keys take its defaults).
  c.sweep.distill = ml_collections.ConfigDict({
      'modes': ('supervised', 'distill'),
      'section': ml_collections.ConfigDict({
          'teacher': TEACHER_WORKDIR, 'mode': 'online', 'temperature': 1.0, 'alpha': 0.5,
          'divergence': 'forward'}),
  })
  return c
