"""Distillation at CPU scale on the embedded corpus: a teacher, and one student trained
from scratch or distilled from it (online, from stored top-k logits, or on the teacher's own
continuations: sequence-level KD), on the same number of tokens.

Variants (`--config=configs/distill.py:<variant>`):
  teacher   the teacher, trained by the core trainer (a plain LM config, no `distill` section)
  scratch   the student alone (plain LM training), same data/steps as the distilled runs
  online    the student distilled online (teacher forward inside the jitted step)
  offline   the student distilled from stored top-k teacher logits
  sequence  sequence-level KD (Kim & Rush 2016): the teacher continues the first 32 tokens of
            each training row greedily; the student trains on those rows (CE on the continuation).
            Greedy text from this teacher loops: sampled (T = 1) with the prompt trained is the
            setting that works here (docs/distillation.md)

Commands, from the repo root (results in docs/distillation.md):

  python main.py --config=configs/distill.py:teacher --workdir=workdirs/distill/teacher
  python main.py --config=configs/distill.py:scratch --workdir=workdirs/distill/scratch
  python main.py --config=configs/distill.py:online  --workdir=workdirs/distill/online
  python -m train.distillation.store --config=configs/distill.py:offline --workdir=workdirs/distill/offline
  python main.py --config=configs/distill.py:offline --workdir=workdirs/distill/offline
  python -m train.distillation.store --config=configs/distill.py:sequence --workdir=workdirs/distill/sequence
  python main.py --config=configs/distill.py:sequence --workdir=workdirs/distill/sequence
  # sequence-level ablations: a sampled store (T = 1), the prompt's loss kept, Seq-KD + Word-KD:
  C="--config=configs/distill.py:sequence --config.distill.gen_temperature=1.0"
  S=--config.distill.sequences_dir=$PWD/workdirs/distill/sequence_t1/teacher_sequences
  python -m train.distillation.store $C --workdir=workdirs/distill/sequence_t1
  python main.py $C --workdir=workdirs/distill/sequence_t1
  python main.py $C $S --workdir=workdirs/distill/sequence_t1_nomask --config.distill.mask_prompt=False
  python main.py $C $S --workdir=workdirs/distill/sequence_t1_word --config.distill.alpha=0.5

The teacher defaults to <repo>/workdirs/distill/teacher; point elsewhere (one of our workdirs
or 'hf:/path/to/dir') with --config.distill.teacher=... . Any `distill` key can be overridden
the same way, e.g. --config.distill.temperature=2 --config.distill.divergence=reverse.
"""

import os

from configs import base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_WORKDIR = os.path.join(REPO, 'workdirs', 'distill', 'teacher')
VARIANTS = ('teacher', 'scratch', 'online', 'offline', 'sequence')


def _common(c):
  c.data.seq_len = 128
  c.train.update(
    global_batch_size=32,
    num_steps=300,
    log_every=25,
    eval_every=100,
    eval_batches=16,
    checkpoint_every=100,
  )
  c.optimizer.update(lr=3e-3, warmup_steps=30, weight_decay=0.1)
  return c


def teacher_model(m):
  """1.78M non-embedding params (1.85M total), 8x the student's (see docs/distillation.md)."""
  m.update(vocab_size=257, d_model=192, n_layers=4, n_heads=4, d_ff=768, max_len=128)


def student_model(m):
  """224K non-embedding params (261K total): smaller than configs/default.py (d 128, 4 layers)."""
  m.update(vocab_size=257, d_model=96, n_layers=2, n_heads=4, d_ff=384, max_len=128)


def distill_section():
  return base.get_distill_config(
    teacher=TEACHER_WORKDIR,
    mode='online',
    temperature=1.0,
    alpha=0.5,
    divergence='forward',
    mix_weight=0.5,
    top_k=32,
    logits_dir='',
    logits_dtype='float16',
    prompt_len=32,
    gen_temperature=0.0,
    gen_top_k=0,
    gen_top_p=1.0,
    mask_prompt=True,
    sequences_dir='',
  )


def get_config(variant: str = 'online'):
  if variant not in VARIANTS:
    raise ValueError(f'configs/distill.py:{variant}: variant must be one of {VARIANTS}')
  c = _common(base.get_config())
  if variant == 'teacher':
    teacher_model(c.model)
    c.optimizer.lr = 2e-3
    return c
  student_model(c.model)
  if variant == 'scratch':
    return c
  c.distill = distill_section()
  c.distill.mode = variant
  if variant == 'sequence':
    c.distill.alpha = 0.0  # pure Seq-KD: CE on the teacher's rows, no teacher at train time.
  return c
