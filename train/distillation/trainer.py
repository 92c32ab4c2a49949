"""Knowledge distillation: a student learns from a teacher's output distribution.

Entry point `run(validation.derive(config), workdir)` (main.py calls it for any config with a
`distill` section). It plugs a `context.Task` into the core training loop, so sharding, gradient
accumulation, checkpoints, resume and metrics are the core trainer's.

Loss, per unmasked token (targets < 0 are masked, as in `step.cross_entropy_sum`), all in
float32 and summed over tokens (Hinton et al. 2015):

    loss = alpha * T^2 * D(teacher_T, student_T) + (1 - alpha) * CE(student, target)

where p_T = softmax(logits / T), CE is the plain (T = 1) next-token cross-entropy and D is
  'forward'  KL(teacher_T || student_T)   (the classic, mean-seeking KD loss),
  'reverse'  KL(student_T || teacher_T)   (mode-seeking, MiniLLM),
  'mix'      w * forward + (1 - w) * reverse with w = config.distill.mix_weight.
The T^2 factor keeps the soft term's gradient scale comparable to CE's across temperatures.
Logged sums (metrics `train/<key>`, per token): 'loss' (the total), 'kd_loss' (T^2 * D, so
loss = alpha * kd_loss + (1 - alpha) * ce_loss), 'ce_loss', 'teacher_loss' (the teacher's
own CE on the targets) and 'top1_agreement' (argmax student == argmax teacher).
Evaluation reports the student's plain CE as eval/loss (and eval/bits_per_byte), so those
compare directly with a from-scratch run; eval/distill_loss is the objective.

Modes (config.distill.mode):
  'online'   The teacher runs inside the same jitted train step. Its params are loaded with
             `init_from.load_params` (its model config from its own workdir / HF dir), sharded
             over the same mesh by the same logical rules, cast to the student's compute dtype
             (config.model.dtype) and passed as a frozen jit input behind
             `jax.lax.stop_gradient`; they get no gradient and no optimizer state. Checkpoints
             record only the teacher reference (path and checkpoint step) in their metadata,
             never its weights; resuming with a different teacher is an error.
  'offline'  `python -m train.distillation.store --config=... --workdir=W` first runs the teacher over
             the deterministic training stream and stores its top-k logits per step
             (train/distillation/store.py). The student then reads them through `Task.extra_batch`
             and computes D over the top-k support, renormalised: the teacher's k stored
             logits v_1..v_k give p_i = softmax(v / T)_i (renormalised over its top-k), and the
             student's logits gathered at the same k indices give
             q_i = exp(s_i / T - logsumexp_j(s_j / T)) (logsumexp over the k gathered logits
             only, i.e. the student renormalised over the teacher's top-k). D is then computed
             between p and q exactly as above; CE stays over the full vocabulary. With
             k = vocab this is the online loss (up to the storage dtype; tests check it).
  'sequence' Sequence-level KD (Kim & Rush 2016). `python -m train.distillation.store` first has the
             teacher continue the first distill.prompt_len tokens of every training row to
             seq_len + 1 tokens (greedy, or sampled with gen_temperature / gen_top_k /
             gen_top_p, keys from (seed, step)) and stores them; the student then trains on
             those rows instead of the stream's (`Task.extra_batch` replaces 'tokens') with
             plain CE, the prompt's targets masked when distill.mask_prompt (Kim & Rush train
             on the teacher's output given the source). With alpha > 0 the word-level term is
             mixed in (Kim & Rush's Seq-KD + Word-KD), the teacher run online on the same rows.

Teacher and student must share the tokenizer: a vocabulary or tokenizer mismatch is a
ValueError naming config.distill.teacher and config.model.vocab_size, raised before any
compile. The final metrics dict has 'teacher_params' and 'eval/teacher_loss' (for sweeps).
"""

import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections

import models
from configs import base, schema
from models import loss
from models.config import PyTree
from models.transformer import readout
from train import context, init_from, loop, validation
from train.distillation import store as distill_store
from train.distillation import teacher as teacher_lib
from train.evaluators import Evaluator

# The section's schema and defaults live with the configs (configs are data); train/validation.py
# checks it (validation.derive -> Derived.distill).
default_section = base.get_distill_config
# The section as the loss functions read it: derived.distill (typed) or a ConfigDict.
DistillSection = schema.DistillConfig | ml_collections.ConfigDict


# --------------------------------------------------------------------------- loss


def _divergence(t_logp, s_logp, divergence: str, mix_weight: float):
  """Per-token D between teacher and student log-probs (last axis is the support)."""
  forward = lambda: jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), -1)
  reverse = lambda: jnp.sum(jnp.exp(s_logp) * (s_logp - t_logp), -1)
  if divergence == 'forward':
    return forward()
  if divergence == 'reverse':
    return reverse()
  if divergence == 'mix':
    return mix_weight * forward() + (1.0 - mix_weight) * reverse()
  raise ValueError(
    f'config.distill.divergence: {divergence!r} is not one of {validation.DIVERGENCES}'
  )


def _sums(kl, ce, teacher_nll, agree, mask, temperature, alpha):
  kd = temperature * temperature * kl
  total = alpha * kd + (1.0 - alpha) * ce
  msum = lambda x: jnp.sum(x.astype(jnp.float32) * mask)
  sums = {
    'loss': msum(total),
    'kd_loss': msum(kd),
    'ce_loss': msum(ce),
    'teacher_loss': msum(teacher_nll),
    'top1_agreement': msum(agree),
    'tokens': mask.sum(),
  }
  return sums['loss'], sums


def kd_terms(student_logits, teacher_logits, targets, temperature, divergence, mix_weight):
  """Per-token (D, student CE, teacher CE, top-1 agreement) over the full vocabulary."""
  s = student_logits.astype(jnp.float32)
  t = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
  kl = _divergence(
    jax.nn.log_softmax(t / temperature, -1),
    jax.nn.log_softmax(s / temperature, -1),
    divergence,
    mix_weight,
  )
  agree = jnp.argmax(s, -1) == jnp.argmax(t, -1)
  return kl, loss.nll(s, targets)[0], loss.nll(t, targets)[0], agree


def kd_sums(
  student_logits,
  teacher_logits,
  targets,
  temperature=1.0,
  alpha=0.5,
  divergence='forward',
  mix_weight=0.5,
):
  """(loss_sum, sums) of the distillation loss over the full vocabulary (see module doc)."""
  terms = kd_terms(student_logits, teacher_logits, targets, temperature, divergence, mix_weight)
  return _sums(*terms, (targets >= 0).astype(jnp.float32), temperature, alpha)


def topk_kd_terms(
  student_logits, teacher_values, teacher_indices, targets, temperature, divergence, mix_weight
):
  """Per-token (D over the teacher's top-k support, student CE, top-1 agreement)."""
  s = student_logits.astype(jnp.float32)
  values = jax.lax.stop_gradient(teacher_values.astype(jnp.float32))
  indices = teacher_indices.astype(jnp.int32)
  gathered = jnp.take_along_axis(s, indices, -1)
  kl = _divergence(
    jax.nn.log_softmax(values / temperature, -1),
    jax.nn.log_softmax(gathered / temperature, -1),
    divergence,
    mix_weight,
  )
  teacher_top1 = jnp.take_along_axis(indices, jnp.argmax(values, -1)[..., None], -1)[..., 0]
  return kl, loss.nll(s, targets)[0], jnp.argmax(s, -1) == teacher_top1


def topk_kd_sums(
  student_logits,
  teacher_values,
  teacher_indices,
  teacher_nll,
  targets,
  temperature=1.0,
  alpha=0.5,
  divergence='forward',
  mix_weight=0.5,
):
  """(loss_sum, sums) with D over the teacher's top-k support, both sides renormalised.

  teacher_values/indices [..., k]: the teacher's k largest logits and their token ids;
  teacher_nll [...]: the teacher's CE on the targets (stored, since top-k can't give it).
  Teacher: p = softmax(values / T) over the k entries. Student: the logits at the same k ids,
  q = softmax(gathered / T) over those k (logsumexp over the gathered logits only).
  """
  kl, ce, agree = topk_kd_terms(
    student_logits, teacher_values, teacher_indices, targets, temperature, divergence, mix_weight
  )
  mask = (targets >= 0).astype(jnp.float32)
  return _sums(kl, ce, teacher_nll.astype(jnp.float32), agree, mask, temperature, alpha)


def _kd(
  student_model: models.ModelConfig,
  params: PyTree,
  teacher_model: models.ModelConfig,
  teacher_params: PyTree,
  inputs: jax.Array,
  targets: jax.Array,
  kw: dict,
):
  """Full-vocabulary KD sums; when the student sets model.loss_chunk, both models' logits are built
  and used chunk by chunk along the sequence (never [B, L, V] at once)."""
  teacher_params = jax.lax.stop_gradient(teacher_params)
  if not loss.chunked(student_model, inputs.shape[1]):
    student = models.logits(student_model, params, inputs)
    teacher = models.logits(teacher_model, teacher_params, inputs)
    return kd_sums(student, jax.lax.stop_gradient(teacher), targets, **kw)
  xs_BxLxD, us_DxV = loss.features(student_model, params, inputs)
  xt_BxLxD, ut_DxV = loss.features(teacher_model, teacher_params, inputs)

  def one(xs, xt, t):
    s_logits, t_logits = readout(student_model, xs, us_DxV), readout(teacher_model, xt, ut_DxV)
    return kd_terms(s_logits, t_logits, t, kw['temperature'], kw['divergence'], kw['mix_weight'])

  terms = loss.chunk_map(one, student_model.loss_chunk, xs_BxLxD, xt_BxLxD, targets)
  return _sums(*terms, (targets >= 0).astype(jnp.float32), kw['temperature'], kw['alpha'])


def _kd_kwargs(d: DistillSection) -> dict:
  return dict(
    temperature=float(d.temperature),
    alpha=float(d.alpha),
    divergence=d.divergence,
    mix_weight=float(d.mix_weight),
  )


def _as_eval(sums):
  """Eval view: 'loss' is the student's CE (comparable to a scratch run), objective kept."""
  sums = dict(sums)
  sums['distill_loss'] = sums['loss']
  sums['loss'] = sums['ce_loss']
  return sums


def online_loss_fn(
  student_model: models.ModelConfig,
  teacher_model: models.ModelConfig,
  d: DistillSection,
  eval_mode: bool = False,
):
  """loss_fn(params, batch, teacher_params) with the teacher forward inside (no gradient)."""
  kw = _kd_kwargs(d)

  def loss_fn(params, batch, teacher_params):
    tokens = batch['tokens']
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    total, sums = _kd(student_model, params, teacher_model, teacher_params, inputs, targets, kw)
    return (total, _as_eval(sums)) if eval_mode else (total, sums)

  return loss_fn


def offline_loss_fn(student_model: models.ModelConfig, d: DistillSection):
  """loss_fn(params, batch) reading batch['teacher_values'/'teacher_indices'/'teacher_nll']."""
  kw = _kd_kwargs(d)

  cfg = student_model
  terms_kw = {k: kw[k] for k in ('temperature', 'divergence', 'mix_weight')}

  def loss_fn(params, batch):
    tokens = batch['tokens']
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    values, indices = batch['teacher_values'], batch['teacher_indices']
    if not loss.chunked(cfg, inputs.shape[1]):
      student = models.logits(cfg, params, inputs)
      return topk_kd_sums(student, values, indices, batch['teacher_nll'], targets, **kw)
    x_BxLxD, unembed_DxV = loss.features(cfg, params, inputs)
    one = lambda x, v, i, t: topk_kd_terms(readout(cfg, x, unembed_DxV), v, i, t, **terms_kw)
    kl, ce, agree = loss.chunk_map(one, cfg.loss_chunk, x_BxLxD, values, indices, targets)
    teacher_nll = batch['teacher_nll'].astype(jnp.float32)
    mask = (targets >= 0).astype(jnp.float32)
    return _sums(kl, ce, teacher_nll, agree, mask, kw['temperature'], kw['alpha'])

  return loss_fn


def offline_eval_loss_fn(student_model: models.ModelConfig):
  """Offline / sequence eval: nothing stored for the eval stream, so the student's plain CE
  (frozen jit inputs, e.g. a teacher, are ignored)."""
  cfg = student_model

  def loss_fn(params, batch, *frozen):
    del frozen
    tokens = batch['tokens']
    nll_BxL, mask_BxL = loss.token_nll(cfg, params, tokens[:, :-1], tokens[:, 1:])
    ce = nll_BxL.sum()
    return ce, {'loss': ce, 'ce_loss': ce, 'tokens': mask_BxL.sum()}

  return loss_fn


def sequence_loss_fn(
  student_model: models.ModelConfig,
  d: DistillSection,
  teacher_model: models.ModelConfig | None = None,
):
  """loss_fn(params, batch[, teacher_params]) on teacher-generated rows batch['tokens'] [B, L+1].

  CE on the continuation: with d.mask_prompt the targets inside the prompt (the first
  prompt_len - 1) are masked, as Kim & Rush train on the teacher's output given the source.
  With a teacher_model (alpha > 0) the word-level term is added, the teacher run online on the
  same rows: alpha * T^2 * D + (1 - alpha) * CE as in `kd_sums`.
  """
  kw = _kd_kwargs(d)
  first = d.prompt_len - 1 if d.mask_prompt else 0
  cfg = student_model

  def loss_fn(params, batch, *teacher_params):
    tokens = batch['tokens']
    inputs_BxL = tokens[:, :-1]
    targets_BxL = jnp.where(jnp.arange(inputs_BxL.shape[1]) >= first, tokens[:, 1:], -1)
    if teacher_model is None:  # as step.lm_loss (model.loss_chunk applies), prompt masked.
      nll_BxL, mask_BxL = loss.token_nll(cfg, params, inputs_BxL, targets_BxL)
      ce = nll_BxL.sum()
      return ce, {'loss': ce, 'ce_loss': ce, 'tokens': mask_BxL.sum()}
    return _kd(student_model, params, teacher_model, teacher_params[0], inputs_BxL, targets_BxL, kw)

  return loss_fn


# --------------------------------------------------------------------------- tasks and run


def online_task_fn(config: schema.Config, ref: teacher_lib.TeacherRef):
  def task_fn(r: context.Run) -> context.Task:
    d = r.derived.distill
    tmodel, teacher, shardings = teacher_lib.load_teacher(config, ref, r.mesh)
    logging.info(
      'Distilling online from %s (step %s, %d params, dtype %s)',
      ref.source,
      ref.step,
      ref.num_params,
      tmodel.dtype,
    )
    return context.Task(
      loss_fn=online_loss_fn(r.derived.model, tmodel, d),
      frozen=(teacher,),
      frozen_shardings=(shardings,),
      meta={'distill': {**ref.meta(), 'mode': 'online'}},
      eval_loss_fn=online_loss_fn(r.derived.model, tmodel, d, eval_mode=True),
    )

  return task_fn


def offline_task_fn(config: schema.Config, store: distill_store.Store):
  """Task reading the stored top-k logits of `store` (a distill_store.Store) by step."""

  def task_fn(r: context.Run) -> context.Task:
    store.check_stream(config, r)

    def extra_batch(step, host):
      del host
      return store.batch(step)

    return context.Task(
      loss_fn=offline_loss_fn(r.derived.model, r.derived.distill),
      extra_batch=extra_batch,
      meta={
        'distill': {
          'teacher': store.meta['teacher'],
          'teacher_step': store.meta['teacher_step'],
          'mode': 'offline',
          'top_k': store.meta['top_k'],
        }
      },
      eval_loss_fn=offline_eval_loss_fn(r.derived.model),
    )

  return task_fn


def sequence_task_fn(
  config: schema.Config,
  store: distill_store.SequenceStore,
  ref: teacher_lib.TeacherRef | None = None,
):
  """Task training on the teacher's sequences of `store` (a distill_store.SequenceStore): they
  replace the stream's rows step by step; with `ref` (alpha > 0) the teacher runs online too."""

  def task_fn(r: context.Run) -> context.Task:
    store.check_stream(config, r)
    tmodel, frozen, shardings = None, (), ()
    if ref is not None:
      tmodel, teacher, tsh = teacher_lib.load_teacher(config, ref, r.mesh)
      frozen, shardings = (teacher,), (tsh,)
    m = store.meta
    return context.Task(
      loss_fn=sequence_loss_fn(r.derived.model, r.derived.distill, tmodel),
      frozen=frozen,
      frozen_shardings=shardings,
      extra_batch=lambda step, host: store.batch(step),
      meta={
        'distill': {
          'teacher': m['teacher'],
          'teacher_step': m['teacher_step'],
          'mode': 'sequence',
          **m['generation'],
        }
      },
      eval_loss_fn=offline_eval_loss_fn(r.derived.model),
    )

  return task_fn


def _sequence_teacher(
  config: schema.Config, store: distill_store.SequenceStore
) -> teacher_lib.TeacherRef:
  """The teacher for the word-level term of sequence mode: the one that generated `store`."""
  ref = teacher_lib.teacher_ref(config)
  teacher_lib.check_compatible(
    config, ref.model.vocab_size, ref.tokenizer, ref.model.max_len, ref.model.positions
  )
  if ref.step != store.meta['teacher_step']:
    raise ValueError(
      f'config.distill.teacher={ref.source!r} is at step {ref.step} but the '
      f'sequences in {store.directory} were generated at step '
      f'{store.meta["teacher_step"]}; rerun train.distillation.store.'
    )
  return ref


def run(
  derived: validation.Derived,
  workdir: str,
  stop_after: int | None = None,
  evaluators: Sequence[Evaluator] = (),
) -> dict:
  """Distil into the student of `derived` (validation.derive(config)) in `workdir` (resuming);
  returns final metrics: the loop's plus 'teacher_params' and 'eval/teacher_loss'. `evaluators`
  as in `loop.run`."""
  config = validation.expect(derived).config
  d = validation.distill_section(derived)
  if d.mode == 'online':
    ref = teacher_lib.teacher_ref(config)
    teacher_lib.check_compatible(
      config, ref.model.vocab_size, ref.tokenizer, ref.model.max_len, ref.model.positions
    )
    task_fn, teacher_params, teacher_eval = online_task_fn(config, ref), ref.num_params, None
  else:
    kind = 'sequences' if d.mode == 'sequence' else 'logits'
    store = distill_store.open_store(
      teacher_lib.store_dir(config, workdir), jax.process_index(), jax.process_count(), kind
    )
    m = store.meta
    teacher_lib.check_compatible(config, m['teacher_vocab_size'], m['teacher_tokenizer'], 1 << 30)
    if d.mode == 'offline':
      task_fn = offline_task_fn(config, store)
    else:
      ref = _sequence_teacher(config, store) if d.alpha > 0 else None
      task_fn = sequence_task_fn(config, store, ref)
    teacher_params, teacher_eval = m['teacher_params'], m['teacher_eval_loss']
  result = loop.run(
    derived,
    workdir,
    task_fn=task_fn,
    init_params_fn=init_from.params_fn(config),
    stop_after=stop_after,
    evaluators=evaluators,
  )
  result['teacher_params'] = int(teacher_params)
  if teacher_eval is not None:
    result['eval/teacher_loss'] = float(teacher_eval)
  return result
