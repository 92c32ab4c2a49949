"""The distillation teacher: what it is (read from its config files), whether it fits the student,
its weights on a mesh, and where its stored outputs live (train/distillation/trainer.py,
train/distillation/store.py)."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import models
from models import hf
from train import init_from, sharding
from train import workdir as workdir_lib
from train.data import tokenizers

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


@dataclasses.dataclass(frozen=True)
class TeacherRef:
  """What a teacher is (read from its config files; no weights loaded)."""

  source: str  # config.distill.teacher
  step: int | None  # checkpoint step of one of our workdirs; None for hf:.
  model: models.ModelConfig  # as saved with the teacher.
  tokenizer: str | None  # the teacher's config.data.tokenizer / HF dir; None if unknown.

  @property
  def num_params(self) -> int:
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(models.param_shapes(self.model))))

  def meta(self) -> dict:
    return {'teacher': self.source, 'teacher_step': self.step}


def teacher_ref(config) -> TeacherRef:
  """Read config.distill.teacher's model config, tokenizer and checkpoint step."""
  src = config.distill.teacher
  if src.startswith('hf:'):
    path = src[3:]
    if not os.path.exists(os.path.join(path, 'config.json')):
      raise ValueError(f'config.distill.teacher={src!r}: no config.json in {path!r}')
    has_tok = any(
      os.path.exists(os.path.join(path, f))
      for f in ('tokenizer.json', 'tokenizer_config.json', 'vocab.json')
    )
    return TeacherRef(src, None, hf.read_config(path), path if has_tok else None)
  try:
    model = init_from.workdir_model_config(src)
  except ValueError as e:
    raise ValueError(f'config.distill.teacher={src!r}: {e}') from None
  with open(os.path.join(src, 'config.json')) as f:
    tokenizer = json.load(f).get('data', {}).get('tokenizer')
  step = workdir_lib.latest_checkpoint_step(src)
  if step is None:
    raise ValueError(
      f'config.distill.teacher={src!r}: no checkpoint under {src}/checkpoints '
      '(train the teacher first)'
    )
  return TeacherRef(src, step, model, tokenizer)


def _same_tokenizer(a: str, b: str) -> bool:
  if a == b:
    return True
  if 'byte' in (a, b) or not (os.path.isdir(a) and os.path.isdir(b)):
    return False
  ta, tb = tokenizers.make_tokenizer(a), tokenizers.make_tokenizer(b)
  return ta.eos_id == tb.eos_id and ta._tok.get_vocab() == tb._tok.get_vocab()


def check_compatible(
  config, vocab_size: int, tokenizer: str | None, max_len: int, positions: str = 'learned'
):
  """ValueError unless the teacher (vocab, tokenizer, context) fits the student's config."""
  src = config.distill.teacher
  if vocab_size != config.model.vocab_size:
    raise ValueError(
      f'Vocabulary mismatch: config.distill.teacher={src!r} has vocab_size={vocab_size} but '
      f'config.model.vocab_size={config.model.vocab_size}; teacher and student must share the '
      'tokenizer and vocabulary.'
    )
  if tokenizer is not None and not _same_tokenizer(tokenizer, config.data.tokenizer):
    raise ValueError(
      f'Tokenizer mismatch: config.distill.teacher={src!r} uses tokenizer {tokenizer!r} but '
      f'config.data.tokenizer={config.data.tokenizer!r} (config.model.vocab_size='
      f'{config.model.vocab_size}); teacher and student must share the tokenizer.'
    )
  if positions == 'learned' and max_len < config.data.seq_len:
    raise ValueError(
      f'config.distill.teacher={src!r} has max_len={max_len} < '
      f'config.data.seq_len={config.data.seq_len}'
    )


def teacher_model(config, ref: TeacherRef) -> models.ModelConfig:
  """The teacher's model config for this run: compute dtype of the student, no remat."""
  return ref.model.replace(dtype=config.model.dtype, remat='none')


def load_teacher(config, ref: TeacherRef, mesh):
  """(teacher ModelConfig, params in the compute dtype, their shardings) on `mesh`."""
  tmodel = teacher_model(config, ref)
  shapes = models.param_shapes(tmodel)
  shardings = sharding.tree_shardings(models.logical_axes(tmodel), shapes, mesh)
  _, params = init_from.load_params(ref.source, model_config=tmodel, shardings=shardings)
  dtype = _DTYPES[tmodel.dtype]
  cast = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype), p), out_shardings=shardings)
  return tmodel, cast(params), shardings


def store_dir(config, workdir: str) -> str:
  """The offline (logits) or sequence store: its config.distill key, else under `workdir`."""
  d = config.distill
  if d.get('mode') == 'sequence':
    return d.get('sequences_dir') or os.path.join(workdir, 'teacher_sequences')
  return d.get('logits_dir') or os.path.join(workdir, 'teacher_logits')
