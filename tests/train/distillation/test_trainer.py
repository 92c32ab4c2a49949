"""Distillation trainer: loss vs a numpy reference, gradient isolation, offline == online at full k,
vocabulary checks, and short runs through main.py on an 8-device simulated mesh.

Loss reference: Hinton et al. 2015,
total = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE
(../shared/reference/facts.md, "Distillation"); reverse KL = KL(student_T || teacher_T) (MiniLLM).
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import cpu_env, main_result, run, tmpfs

import models
from train import context, init_from, loop, step, validation
from train.distillation import store as distill_store
from train.distillation import teacher as teacher_lib
from train.distillation import trainer as distill


def _np_reference(s, t, targets, T, alpha, divergence, mix_weight=0.5):
  """float64 numpy: summed total / kd / ce / teacher CE / agreement over unmasked tokens."""
  s, t = s.astype(np.float64), t.astype(np.float64)

  def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))

  ps, pt = log_softmax(s / T), log_softmax(t / T)
  fwd = (np.exp(pt) * (pt - ps)).sum(-1)
  rev = (np.exp(ps) * (ps - pt)).sum(-1)
  mix = mix_weight * fwd + (1 - mix_weight) * rev
  kl = {'forward': fwd, 'reverse': rev, 'mix': mix}[divergence]
  mask = targets >= 0
  safe = np.maximum(targets, 0)
  ce = -np.take_along_axis(log_softmax(s), safe[..., None], -1)[..., 0]
  tce = -np.take_along_axis(log_softmax(t), safe[..., None], -1)[..., 0]
  kd = T * T * kl
  total = alpha * kd + (1 - alpha) * ce
  agree = s.argmax(-1) == t.argmax(-1)
  return {
    'loss': total[mask].sum(),
    'kd_loss': kd[mask].sum(),
    'ce_loss': ce[mask].sum(),
    'teacher_loss': tce[mask].sum(),
    'top1_agreement': agree[mask].sum(),
    'tokens': mask.sum(),
  }


def _random_logits(seed=0, shape=(3, 7, 11)):
  rng = np.random.default_rng(seed)
  s = rng.normal(size=shape).astype(np.float32) * 3
  t = rng.normal(size=shape).astype(np.float32) * 3
  targets = rng.integers(0, shape[-1], shape[:-1])
  targets[0, :2] = -1  # masked positions
  return s, t, targets


@pytest.mark.parametrize('divergence', ['forward', 'reverse', 'mix'])
@pytest.mark.parametrize('T,alpha', [(1.0, 0.5), (2.0, 0.0), (0.5, 1.0), (4.0, 0.3)])
def test_loss_matches_numpy_reference(divergence, T, alpha):
  s, t, targets = _random_logits()
  total, sums = distill.kd_sums(
    jnp.asarray(s), jnp.asarray(t), jnp.asarray(targets), T, alpha, divergence, 0.3
  )
  ref = _np_reference(s, t, targets, T, alpha, divergence, 0.3)
  assert set(sums) == set(ref)
  for key, value in ref.items():
    np.testing.assert_allclose(float(sums[key]), value, rtol=2e-5, atol=1e-5, err_msg=key)
  np.testing.assert_allclose(float(total), ref['loss'], rtol=2e-5)


@pytest.mark.parametrize('divergence', ['forward', 'reverse'])
def test_topk_loss_is_renormalised_kl_over_teacher_support(divergence):
  """Offline: KL between teacher and student, each renormalised over the teacher's top-k ids."""
  s, t, targets = _random_logits(1)
  k, T, alpha = 4, 2.0, 0.7
  values, indices = jax.lax.top_k(jnp.asarray(t), k)
  values16 = np.asarray(values).astype(np.float16)
  tnll = (
    jax.nn.logsumexp(t, -1) - np.take_along_axis(t, np.maximum(targets, 0)[..., None], -1)[..., 0]
  )
  _, sums = distill.topk_kd_sums(
    jnp.asarray(s),
    values16,
    np.asarray(indices, np.int16),
    tnll,
    jnp.asarray(targets),
    T,
    alpha,
    divergence,
  )
  # Reference: both restricted to the teacher's top-k ids and renormalised there (the
  # numpy reference over a k-entry "vocabulary"); CE and teacher CE over the full vocabulary.
  topk = _np_reference(
    np.take_along_axis(s, np.asarray(indices), -1),
    values16,
    np.where(targets >= 0, 0, -1),
    T,
    1.0,
    divergence,
  )
  full = _np_reference(s, t, targets, T, alpha, divergence)
  np.testing.assert_allclose(float(sums['kd_loss']), topk['kd_loss'], rtol=1e-4)
  np.testing.assert_allclose(float(sums['ce_loss']), full['ce_loss'], rtol=1e-5)
  np.testing.assert_allclose(float(sums['teacher_loss']), full['teacher_loss'], rtol=1e-5)
  np.testing.assert_allclose(
    float(sums['loss']), alpha * topk['kd_loss'] + (1 - alpha) * full['ce_loss'], rtol=1e-4
  )
  assert float(sums['top1_agreement']) == full['top1_agreement']


@pytest.fixture(scope='module')
def tiny_models():
  """(student config, teacher config, student params, teacher params, batch): 2 layers each."""
  student = models.ModelConfig(
    vocab_size=257, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=32
  )
  teacher = student.replace(d_model=32, d_ff=64, n_heads=4)
  init = jax.jit(models.init, static_argnums=0)
  sp, tp = init(student, jax.random.key(0)), init(teacher, jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (4, 17), 0, 257)
  return student, teacher, sp, tp, {'tokens': tokens}


def _section(**kw):
  d = distill.default_section()
  d.update(teacher='unused', **kw)
  return d


def test_t1_alpha0_reduces_to_lm_loss(tiny_models):
  student, teacher, sp, tp, batch = tiny_models
  lm = jax.jit(jax.value_and_grad(step.lm_loss(student), has_aux=True))
  kd = jax.jit(
    jax.value_and_grad(
      distill.online_loss_fn(student, teacher, _section(temperature=1.0, alpha=0.0)), has_aux=True
    )
  )
  (lm_total, lm_sums), g1 = lm(sp, batch)
  (total, sums), g2 = kd(sp, batch, tp)
  np.testing.assert_allclose(float(total), float(lm_total), rtol=1e-6)
  np.testing.assert_allclose(float(sums['loss']), float(lm_sums['loss']), rtol=1e-6)
  np.testing.assert_allclose(float(sums['ce_loss']), float(lm_sums['loss']), rtol=1e-6)
  assert float(sums['tokens']) == float(lm_sums['tokens'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g2)


def test_gradients_reach_only_the_student(tiny_models):
  student, teacher, sp, tp, batch = tiny_models
  loss_fn = distill.online_loss_fn(student, teacher, _section(alpha=0.9, temperature=2.0))
  gs, gt = jax.jit(jax.grad(lambda p, t: loss_fn(p, batch, t)[0], argnums=(0, 1)))(sp, tp)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(gt))
  assert all(float(jnp.abs(g).max()) > 0.0 for g in jax.tree.leaves(gs))


def test_offline_with_full_k_equals_online(tiny_models):
  """k = vocab: the top-k support is the whole vocabulary (permuted), so the losses, every
  logged sum and the gradients equal online mode's ('mix' exercises forward and reverse KL)."""
  student, teacher, sp, tp, batch = tiny_models
  divergence = 'mix'
  d = _section(alpha=0.6, temperature=1.5, divergence=divergence)
  online = distill.online_loss_fn(student, teacher, d)
  offline = distill.offline_loss_fn(student, d)
  tokens = batch['tokens']
  logits = jax.jit(models.logits, static_argnums=0)(teacher, tp, tokens[:, :-1])
  values, indices = jax.lax.top_k(logits, 257)  # k = vocab, sorted: a permutation of the vocab
  nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, tokens[:, 1:, None], -1)[..., 0]
  obatch = {
    'tokens': tokens,
    'teacher_values': values,
    'teacher_indices': indices.astype(jnp.int16),
    'teacher_nll': nll,
  }
  (l1, s1), g1 = jax.jit(jax.value_and_grad(online, has_aux=True))(sp, batch, tp)
  (l2, s2), g2 = jax.jit(jax.value_and_grad(offline, has_aux=True))(sp, obatch)
  np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5)
  for key in s1:
    np.testing.assert_allclose(float(s1[key]), float(s2[key]), rtol=1e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g2)


@pytest.mark.slow  # (12 s; the chunked LM loss by default: tests/models/test_loss.py)
def test_chunked_loss_equals_whole_rows(tiny_models):
  """model.loss_chunk (logits built chunk by chunk, never whole): online (the path sequence-level
  + word KD shares) and offline top-k KD give the whole-row losses, logged sums and gradients (the
  offline eval loss is loss.token_nll, checked in test_loss.py)."""
  student, teacher, sp, tp, batch = tiny_models
  chunked = student.replace(loss_chunk=4)  # rows of 16 positions: 4 chunks.
  d = _section(alpha=0.6, temperature=1.5, divergence='mix')
  tokens = batch['tokens']
  values, indices = jax.lax.top_k(models.logits(teacher, tp, tokens[:, :-1]), 8)
  obatch = {
    'tokens': tokens,
    'teacher_values': values,
    'teacher_indices': indices,
    'teacher_nll': jnp.ones(tokens[:, 1:].shape),
  }
  cases = {
    'online': (lambda m: distill.online_loss_fn(m, teacher, d), (batch, tp)),
    'offline': (lambda m: distill.offline_loss_fn(m, d), (obatch,)),
  }
  for name, (make, args) in cases.items():
    (l1, s1), g1 = jax.jit(jax.value_and_grad(make(student), has_aux=True))(sp, *args)
    (l2, s2), g2 = jax.jit(jax.value_and_grad(make(chunked), has_aux=True))(sp, *args)
    np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5, err_msg=name)
    for key in s1:
      np.testing.assert_allclose(float(s2[key]), float(s1[key]), rtol=1e-5, err_msg=name + key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g2, g1)


def _fake_teacher(path, vocab_size=257, tokenizer='byte'):
  """A teacher workdir with a config.json and an (empty) checkpoint step: enough for the checks."""
  from configs import base

  c = base.get_config()
  c.model.vocab_size = vocab_size
  c.data.tokenizer = tokenizer
  os.makedirs(os.path.join(path, 'checkpoints', '3'))
  with open(os.path.join(path, 'config.json'), 'w') as f:
    f.write(c.to_json())
  return str(path)


def _distill_config(tiny_config, teacher, **overrides):
  c = tiny_config(overrides)
  c.distill = distill.default_section()
  c.distill.teacher = teacher
  return c


def test_vocabulary_mismatch_is_a_clear_error_before_compiling(tiny_config, tmp_path):
  config = _distill_config(tiny_config, _fake_teacher(tmp_path / 't', vocab_size=300))
  work = tmp_path / 'student'
  with pytest.raises(ValueError, match=r'config\.distill\.teacher.*config\.model\.vocab_size'):
    distill.run(validation.derive(config), str(work))
  assert not work.exists()  # raised before the loop (and any compile) started
  other_tok = tmp_path / 'tok'
  other_tok.mkdir()
  config = _distill_config(tiny_config, _fake_teacher(tmp_path / 't2', tokenizer=str(other_tok)))
  with pytest.raises(ValueError, match=r'Tokenizer mismatch.*config\.distill\.teacher'):
    distill.run(validation.derive(config), str(work))
  with pytest.raises(ValueError, match='config.distill.divergence'):
    config.distill.divergence = 'js'
    validation.derive(config, 8)


def test_validate_rejects_unknown_keys_and_ranges(tiny_config):
  config = _distill_config(tiny_config, 'x')
  config.distill.alpha = 1.5
  with pytest.raises(ValueError, match='config.distill.alpha'):
    validation.derive(config, 8)
  config.distill.alpha = 0.5
  config.distill.mode = 'offline'
  config.distill.top_k = 1000
  with pytest.raises(ValueError, match='config.distill.top_k'):
    validation.derive(config, 8)
  config = _distill_config(tiny_config, 'x')
  config.distill.unknown = 1
  with pytest.raises(ValueError, match='config.distill.unknown'):
    validation.derive(config, 8)


def test_store_reads_bfloat16_and_refuses_incomplete_or_missing(tmp_path):
  """Read side of the offline store on hand-written files (no teacher run needed)."""
  shape = (2, 4, 3, 5)
  rng = np.random.default_rng(0)
  vals = rng.normal(size=shape).astype(jnp.bfloat16)
  np.save(tmp_path / 'values.p0of1.npy', vals.view(np.uint16))
  np.save(tmp_path / 'indices.p0of1.npy', rng.integers(0, 257, shape).astype(np.int16))
  np.save(tmp_path / 'teacher_nll.p0of1.npy', rng.random(shape[:3]).astype(np.float32))
  meta = {
    'top_k': 5,
    'values_dtype': 'bfloat16',
    'complete': False,
    'steps_done': 1,
    'num_steps': 2,
  }
  with open(tmp_path / 'meta.p0of1.json', 'w') as f:
    json.dump(meta, f)
  with pytest.raises(ValueError, match='incomplete'):
    distill_store.open_store(str(tmp_path))
  with pytest.raises(ValueError, match='train.distillation.store'):
    distill_store.open_store(str(tmp_path / 'nothing'))
  meta['complete'] = True
  with open(tmp_path / 'meta.p0of1.json', 'w') as f:
    json.dump(meta, f)
  store = distill_store.open_store(str(tmp_path))
  store.top_k = 3
  b = store.batch(1)
  assert b['teacher_values'].dtype == jnp.bfloat16 and b['teacher_values'].shape == (4, 3, 3)
  np.testing.assert_array_equal(
    b['teacher_values'].astype(np.float32), vals[1, :, :, :3].astype(np.float32)
  )
  assert b['teacher_indices'].dtype == np.int16 and b['teacher_nll'].shape == (4, 3)


# ------------------------------------------------------------------------------- end to end


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory, tiny_config):
  """A tiny teacher trained by the core loop (in-process, on the default 8 simulated devices)."""
  c = tiny_config(
    {
      'train.num_steps': 6,
      'train.log_every': 3,
      'train.eval_every': 6,
      'train.checkpoint_every': 6,
      'optimizer.lr': 3e-3,
    }
  )
  path = str(tmp_path_factory.mktemp('teacher'))
  loop.run(validation.derive(c), path)
  return path


def _cli(args, data_dir):
  out = run([sys.executable, *args], cpu_env(8))
  assert out.returncode == 0, out.stderr[-4000:]
  return out


def _student_flags(workdir, data_dir, teacher, mode, extra=()):
  return [
    '--config=configs/distill.py:' + mode,
    f'--workdir={workdir}',
    f'--config.distill.teacher={teacher}',
    f'--config.data.data_dir={data_dir}',
    '--config.model.d_model=16',
    '--config.model.n_layers=2',
    '--config.model.n_heads=2',
    '--config.model.d_ff=32',
    '--config.model.max_len=32',
    '--config.data.seq_len=32',
    '--config.train.global_batch_size=8',
    '--config.train.grad_accum_steps=2',
    '--config.train.num_steps=4',
    '--config.train.log_every=2',
    '--config.train.eval_every=4',
    '--config.train.eval_batches=1',
    '--config.train.checkpoint_every=2',
    '--config.train.async_checkpoint=False',
    '--config.optimizer.warmup_steps=1',
    '--config.mesh.data=2',
    '--config.mesh.fsdp=2',
    '--config.mesh.tensor=2',
    '--config.distill.alpha=0.7',
    '--config.distill.temperature=2.0',
  ] + list(extra)


def _rows(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]


@pytest.mark.slow
def test_online_and_offline_runs_through_main(teacher_dir, data_dir, tmp_path):
  """8 simulated devices (data=2 fsdp=2 tensor=2), grad_accum 2: online; resume; offline at
  k = vocab (float32 store) follows the online run's losses; the teacher is referenced only."""
  online = str(tmp_path / 'online')
  out = _cli(['main.py'] + _student_flags(online, data_dir, teacher_dir, 'online'), data_dir)
  result = main_result(out.stdout)
  assert result['teacher_params'] > 0 and np.isfinite(result['eval/teacher_loss'])
  for key in (
    'eval/loss',
    'eval/ce_loss',
    'eval/distill_loss',
    'eval/top1_agreement',
    'eval/bits_per_byte',
  ):
    assert key in result, key
  assert result['eval/loss'] == result['eval/ce_loss']
  rows = _rows(online)
  for key in (
    'train/loss',
    'train/kd_loss',
    'train/ce_loss',
    'train/teacher_loss',
    'train/top1_agreement',
  ):
    assert all(key in r for r in rows), key
  # loss = alpha * kd + (1 - alpha) * ce, per token.
  r = rows[-1]
  np.testing.assert_allclose(
    r['train/loss'], 0.7 * r['train/kd_loss'] + 0.3 * r['train/ce_loss'], rtol=1e-5
  )
  # Checkpoint: teacher referenced in meta (path + step), its weights not saved.
  ckpt = os.path.join(online, 'checkpoints', '4')
  meta = json.load(open(os.path.join(ckpt, 'meta', 'metadata')))
  assert meta['distill'] == {'teacher': teacher_dir, 'teacher_step': 6, 'mode': 'online'}
  import orbax.checkpoint as ocp

  saved = ocp.StandardCheckpointer().metadata(os.path.join(ckpt, 'state')).item_metadata.tree
  assert sorted(saved) == ['opt_state', 'params', 'step']
  student_shapes = models.param_shapes(init_from.workdir_model_config(online))
  assert jax.tree.map(lambda x: tuple(x.shape), saved['params']) == jax.tree.map(
    lambda x: tuple(x.shape), student_shapes
  )
  # Rerun: resumes and finds the run finished.
  again = _cli(['main.py'] + _student_flags(online, data_dir, teacher_dir, 'online'), data_dir)
  assert 'already finished' in again.stderr

  offline = str(tmp_path / 'offline')
  extra = ['--config.distill.top_k=257', '--config.distill.logits_dtype=float32']
  store = _cli(
    ['-m', 'train.distillation.store']
    + _student_flags(offline, data_dir, teacher_dir, 'offline', extra),
    data_dir,
  )
  assert 'bytes' in store.stdout and 'MB' in store.stdout
  smeta = json.load(open(os.path.join(offline, 'teacher_logits', 'meta.p0of1.json')))
  assert smeta['complete'] and smeta['indices_dtype'] == 'int16'
  assert smeta['shape'] == [4, 8, 32, 257]
  out = _cli(
    ['main.py'] + _student_flags(offline, data_dir, teacher_dir, 'offline', extra), data_dir
  )
  off = main_result(out.stdout)
  np.testing.assert_allclose(off['eval/teacher_loss'], result['eval/teacher_loss'], rtol=1e-5)
  assert off['teacher_params'] == result['teacher_params']
  for a, b in zip(rows, _rows(offline)):
    for key in ('train/loss', 'train/kd_loss', 'train/ce_loss', 'train/teacher_loss'):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-4, err_msg=key)
  np.testing.assert_allclose(off['eval/loss'], result['eval/loss'], rtol=1e-4)


def test_offline_store_float16_top_k_and_stream_check(teacher_dir, tiny_config, tmp_path):
  """In-process: float16/int16 store of top-4, read back per step, matching the teacher."""
  config = _distill_config(tiny_config, teacher_dir)
  config.distill.update(mode='offline', top_k=4)
  work = str(tmp_path / 's')
  meta = distill_store.write(validation.derive(config), work)
  assert meta['complete'] and meta['bytes'] == os.path.getsize(
    os.path.join(work, 'teacher_logits', 'values.p0of1.npy')
  ) + os.path.getsize(os.path.join(work, 'teacher_logits', 'indices.p0of1.npy')) + os.path.getsize(
    os.path.join(work, 'teacher_logits', 'teacher_nll.p0of1.npy')
  )
  store = distill_store.open_store(os.path.join(work, 'teacher_logits'))
  r = context.setup(validation.derive(config))
  store.check_stream(config, r)
  b = store.batch(2)
  assert b['teacher_values'].dtype == np.float16 and b['teacher_indices'].dtype == np.int16
  ref = teacher_lib.teacher_ref(config)
  _, tp = init_from.load_params(teacher_dir)
  logits = models.logits(ref.model, tp, r.train_ds.batch(2)[:, :-1])
  v, i = jax.lax.top_k(logits, 4)
  np.testing.assert_array_equal(b['teacher_indices'], np.asarray(i))
  np.testing.assert_allclose(b['teacher_values'].astype(np.float32), v, rtol=2e-3, atol=2e-3)
  # Preempted after 2 steps, then resumed to the end (checkpoint meta names the teacher).
  distill.run(validation.derive(config), work, stop_after=2)
  result = distill.run(validation.derive(config), work)
  assert np.isfinite(result['eval/loss'])
  assert result['eval/teacher_loss'] == meta['teacher_eval_loss']
  assert result['teacher_params'] == meta['teacher_params']
  assert [row['step'] for row in _rows(work)] == [2, 4]
  assert 'train/kd_loss' in _rows(work)[-1]
  config.seed = 1
  with pytest.raises(ValueError, match='different training stream'):
    store.check_stream(config, context.setup(validation.derive(config)))


# ------------------------------------------------------------------------ sequence-level KD


def _sequence_config(tiny_config, teacher, **distill):
  config = _distill_config(tiny_config, teacher)
  config.distill.update(**{'mode': 'sequence', 'alpha': 0.0, 'prompt_len': 8, **distill})
  return config


def test_sequence_loss_masks_the_prompt_and_mixes_word_kd(tiny_models):
  """CE only on the continuation's targets; alpha > 0 is kd_sums on the same masked targets."""
  student, teacher, sp, tp, batch = tiny_models
  tokens = batch['tokens']
  d = _section(mode='sequence', prompt_len=5, alpha=0.0)
  total, sums = distill.sequence_loss_fn(student, d)(sp, batch)
  targets = np.asarray(tokens[:, 1:]).copy()
  targets[:, :4] = -1
  ce, n = step.cross_entropy_sum(models.logits(student, sp, tokens[:, :-1]), targets)
  assert float(n) == 4 * (16 - 4) and float(sums['tokens']) == float(n)
  np.testing.assert_allclose(float(total), float(ce), rtol=1e-6)
  d.mask_prompt = False
  _, sums = distill.sequence_loss_fn(student, d)(sp, batch)
  assert float(sums['tokens']) == 4 * 16
  d.update(mask_prompt=True, alpha=0.4)
  total, sums = distill.sequence_loss_fn(student, d, teacher)(sp, batch, tp)
  ref, _ = distill.kd_sums(
    models.logits(student, sp, tokens[:, :-1]),
    models.logits(teacher, tp, tokens[:, :-1]),
    targets,
    alpha=0.4,
  )
  np.testing.assert_allclose(float(total), float(ref), rtol=1e-6)


def test_sequence_config_validation(tiny_config):
  config = _sequence_config(tiny_config, 'x')
  for key, bad in (
    ('prompt_len', 0),
    ('prompt_len', 33),
    ('gen_temperature', -1.0),
    ('gen_top_k', 300),
    ('gen_top_p', 0.0),
  ):
    c = _sequence_config(tiny_config, 'x', **{key: bad})
    with pytest.raises(ValueError, match=f'config.distill.{key}'):
      validation.derive(c, 8)
  assert validation.derive(config, 8).distill.mask_prompt is True
  config.distill = ml_collections.ConfigDict({**config.distill.to_dict(), 'mask_prompt': 1})
  with pytest.raises(ValueError, match='config.distill.mask_prompt: expected bool'):
    validation.derive(config, 8)


def test_sequence_store_reads_this_hosts_rows(tmp_path):
  """Host p of P opens tokens.p{p}of{P}.npy only; a logits store is not a sequence store."""
  rows = [np.full((3, 2, 5), p + 1, np.uint16) for p in range(2)]
  for p in range(2):
    np.save(tmp_path / f'tokens.p{p}of2.npy', rows[p])
    with open(tmp_path / f'meta.p{p}of2.json', 'w') as f:
      json.dump({'kind': 'sequences', 'complete': True, 'steps_done': 3, 'num_steps': 3}, f)
  store = distill_store.open_store(str(tmp_path), 1, 2, 'sequences')
  b = store.batch(2)
  assert b['tokens'].dtype == np.int32 and (b['tokens'] == 2).all() and b['tokens'].shape == (2, 5)
  with pytest.raises(ValueError, match='teacher sequences, not teacher logits.*logits_dir'):
    distill_store.open_store(str(tmp_path), 1, 2)
  with pytest.raises(ValueError, match=f'No stored teacher sequences.*{tmp_path}'):
    distill_store.open_store(str(tmp_path), 0, 1, 'sequences')


def test_sequence_store_resume_and_student_run(teacher_dir, tiny_config, tmp_path, monkeypatch):
  """Sampled store (keys from (seed, step)) cut at step 2 (flushed at 2) and resumed equals an
  uninterrupted one; prompts are the stream's, new tokens the teacher's top-k; a student trains
  on this host's rows; a missing or mismatching store is refused naming the path or field."""
  config = _sequence_config(tiny_config, teacher_dir, gen_temperature=1.0, gen_top_k=20)
  work = str(tmp_path / 'b')
  with pytest.raises(ValueError, match=f'No stored teacher sequences.*{work}'):
    distill.run(validation.derive(config), work)
  whole = distill_store.write(validation.derive(config), str(tmp_path / 'a'))
  generate, calls = models.generate, []

  def cut(*args, **kw):
    calls.append(1)
    if len(calls) == 3:  # step 2: the job dies after the flush at 2.
      raise KeyboardInterrupt
    return generate(*args, **kw)

  monkeypatch.setattr(models, 'generate', cut)
  with pytest.raises(KeyboardInterrupt):
    distill_store.write(validation.derive(config), work)
  monkeypatch.setattr(models, 'generate', generate)
  store_dir = os.path.join(work, 'teacher_sequences')
  with pytest.raises(ValueError, match=r'incomplete \(2/4 steps\)'):
    distill_store.open_store(store_dir, kind='sequences')
  resumed = distill_store.write(validation.derive(config), work)
  skip = ('seconds', 'tokens_per_sec')
  assert {k: v for k, v in resumed.items() if k not in skip} == {
    k: v for k, v in whole.items() if k not in skip
  }
  assert resumed['complete'] and resumed['generated_tokens'] == 4 * 8 * 25
  a, b = (np.load(os.path.join(tmp_path, w, 'teacher_sequences', 'tokens.p0of1.npy')) for w in 'ab')
  np.testing.assert_array_equal(a, b)
  assert a.shape == (4, 8, 33) and a.dtype == np.uint16
  r = context.setup(validation.derive(config))
  stream = np.stack([r.train_ds.batch(s) for s in range(4)])
  np.testing.assert_array_equal(a[:, :, :8], stream[:, :, :8])
  assert (a[:, :, 8:] != stream[:, :, 8:]).any()
  _, tp = init_from.load_params(teacher_dir)
  top20 = jax.lax.top_k(models.logits(teacher_lib.teacher_ref(config).model, tp, a[3, :, :-1]), 20)[
    1
  ]
  assert (np.asarray(top20)[:, 7:] == a[3, :, 8:, None]).any(-1).all()

  config.train.checkpoint_every = 4  # one save: the loop's resume is tested elsewhere.
  result = distill.run(validation.derive(config), work)
  assert (
    np.isfinite(result['eval/loss']) and result['eval/teacher_loss'] == whole['teacher_eval_loss']
  )
  assert [row['step'] for row in _rows(work)] == [2, 4]
  ckpt_meta = json.load(open(os.path.join(work, 'checkpoints', '4', 'meta', 'metadata')))
  assert ckpt_meta['distill']['mode'] == 'sequence' and ckpt_meta['distill']['prompt_len'] == 8
  store = distill_store.open_store(store_dir, kind='sequences')
  task = distill.sequence_task_fn(config, store)(r)
  np.testing.assert_array_equal(task.extra_batch(1, None)['tokens'], a[1])
  for key, value in (('prompt_len', 4), ('gen_temperature', 0.0), ('teacher', '/other')):
    bad = _sequence_config(tiny_config, teacher_dir, gen_temperature=1.0, gen_top_k=20)
    bad.distill[key] = value
    with pytest.raises(ValueError, match=f'config.distill.{key}'):
      store.check_stream(bad, r)
  bad.seed = 1
  with pytest.raises(ValueError, match='different training stream'):
    store.check_stream(bad, context.setup(validation.derive(bad)))


@pytest.mark.slow
def test_sequence_distillation_through_main(teacher_dir, data_dir, tmp_path):
  """8 simulated devices (data=2 fsdp=2 tensor=2), grad_accum 2: a greedy store (each new token
  is the teacher's argmax) by the CLI, then Seq-KD + word-level KD (alpha 0.7, teacher online)
  through main.py; a store for another prompt_len is one error line, exit code 2."""
  work = str(tmp_path / 'seq')
  flags = _student_flags(work, data_dir, teacher_dir, 'sequence', ['--config.distill.prompt_len=8'])
  out = _cli(['-m', 'train.distillation.store'] + flags, data_dir)
  assert 'tokens/s' in out.stdout
  store = distill_store.open_store(os.path.join(work, 'teacher_sequences'), kind='sequences')
  rows = store.batch(3)['tokens']
  _, tp = init_from.load_params(teacher_dir)
  greedy = np.asarray(
    jnp.argmax(models.logits(init_from.workdir_model_config(teacher_dir), tp, rows[:, :-1]), -1)
  )
  np.testing.assert_array_equal(rows[:, 8:], greedy[:, 7:])
  out = _cli(['main.py'] + flags, data_dir)
  result = main_result(out.stdout)
  assert result['eval/loss'] == result['eval/ce_loss']  # the student's CE on real text.
  r = _rows(work)[-1]
  np.testing.assert_allclose(
    r['train/loss'], 0.7 * r['train/kd_loss'] + 0.3 * r['train/ce_loss'], rtol=1e-5
  )
  bad = run(
    [sys.executable, 'main.py']
    + flags[:-1]
    + [
      '--config.distill.prompt_len=4',
      f'--config.distill.sequences_dir={work}/teacher_sequences',
      f'--workdir={tmp_path}/other',
    ],
    cpu_env(8),
  )
  last = bad.stderr.strip().splitlines()[-1]
  assert bad.returncode == 2 and last.startswith('error: ') and 'Traceback' not in bad.stderr
  assert 'config.distill.prompt_len' in last and f'{work}/teacher_sequences' in last


@pytest.mark.slow
def test_store_on_a_disk_too_small_is_one_error_and_no_bus_error(teacher_dir, data_dir, tmp_path):
  """`python -m train.distillation.store` writing to a 256 KiB filesystem: exit 1 with one `error:`
  line naming the full disk at the start (its files are reserved up front), never SIGBUS."""
  with tmpfs(tmp_path / 'small', '256k') as small:
    extra = ['--config.distill.top_k=257', f'--config.distill.logits_dir={small}/store']
    flags = _student_flags(str(tmp_path / 'w'), data_dir, teacher_dir, 'offline', extra)
    out = run([sys.executable, '-m', 'train.distillation.store', *flags], cpu_env(8))
  assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
  errors = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1 and 'disk full reserving' in errors[0], out.stderr[-3000:]
  assert 'Traceback' not in out.stderr
