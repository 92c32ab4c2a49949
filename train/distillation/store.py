"""Offline and sequence-level distillation: run the teacher once over the training stream and
store its top-k logits (distill.mode 'offline') or its continuations (mode 'sequence').

  python -m train.distillation.store --config=configs/distill.py:offline --workdir=W
  python main.py --config=configs/distill.py:offline --workdir=W    # the student reads them

The teacher (config.distill.teacher) runs over exactly the batches the student will see,
`Run.train_ds.batch(step)` for step = 0 .. num_steps-1 (the stream is a function of seed and
step), sharded on the configured mesh, and the top-k logits of every position are written
to config.distill.logits_dir (default W/teacher_logits). Per host p of P processes:

  values.p{p}of{P}.npy       [num_steps, host_batch, seq_len, k]  teacher logits, largest first,
                             float16 | float32 | bfloat16 (stored as its uint16 bit pattern)
  indices.p{p}of{P}.npy      [num_steps, host_batch, seq_len, k]  token ids, int16 when the
                             vocabulary has <= 32768 entries, else int32
  teacher_nll.p{p}of{P}.npy  [num_steps, host_batch, seq_len]     float32 teacher CE per target
                             (top-k alone cannot give it; logged as teacher_loss)
  meta.p{p}of{P}.json        stream identity, teacher reference (path + step), k, dtypes,
                             steps done, teacher eval loss, bytes

Row j of step s is row j of host p's `train_ds.batch(s)`: every host writes and later reads
only its own rows (no cross-host traffic, no shared filesystem needed beyond each host's
view of logits_dir); the student must run with the same number of processes. Writing is
resumable: progress is flushed every config.train.checkpoint_every steps. The storage size
(bytes and MB) is printed and recorded. A student may use a smaller top_k than was stored
(the first k of the sorted entries) and fewer steps.

Sequence mode (Kim & Rush 2016, see `_sequences_plan`) stores, the same way, per host:

  tokens.p{p}of{P}.npy       [num_steps, host_batch, seq_len + 1]  the first prompt_len tokens
                             of the stream's row, then the teacher's continuation (uint16 when
                             the vocabulary fits, else int32)
  meta.p{p}of{P}.json        as above, with kind 'sequences', the generation settings (prompt_len,
                             gen_temperature, gen_top_k, gen_top_p), seconds and tokens/s

in config.distill.sequences_dir (default W/teacher_sequences). Sampling keys are a function of
(seed, step), so a resumed store equals an uninterrupted one.
"""

import dataclasses
import errno
import json
import logging
import os
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax.experimental import multihost_utils
from ml_collections import config_flags

import models
from configs import schema
from models import generation, loss
from models.config import PyTree
from train import cli, context, distributed, evaluators, sharding, validation
from train import step as step_lib
from train import workdir as workdir_lib
from train.distillation import teacher as teacher_lib

FORMAT = 1
_GEN_SALT = 0x5E9  # folded into the seed: sampling keys apart from the init's.


def _name(kind: str, p: int, n: int) -> str:
  return f'{kind}.p{p}of{n}.npy' if kind != 'meta' else f'meta.p{p}of{n}.json'


def stream_identity(config: schema.Config) -> dict:
  """What the training batches depend on (not the student model): must match to reuse logits."""
  d = config.data
  return {
    'seed': config.seed,
    'dataset': d.dataset,
    'train_split': d.train_split,
    'text_key': d.text_key,
    'tokenizer': d.tokenizer,
    'max_documents': d.max_documents,
    'seq_len': d.seq_len,
    'global_batch_size': config.train.global_batch_size,
  }


def _indices_dtype(vocab_size: int):
  return np.int16 if vocab_size <= 32768 else np.int32


def _host_rows(x: jax.Array) -> np.ndarray:
  """This host's rows of a batch-sharded global array, in the order it fed them."""
  by_start = {}
  for s in x.addressable_shards:
    by_start.setdefault(s.index[0].start or 0, s.data)
  return np.concatenate([np.asarray(by_start[k]) for k in sorted(by_start)])


def _same_job(a: dict, b: dict) -> bool:
  skip = (
    'steps_done',
    'complete',
    'bytes',
    'teacher_eval_loss',
    'teacher_eval_bits_per_byte',
    'seconds',
    'generated_tokens',
    'tokens_per_sec',
  )
  strip = lambda m: {k: v for k, v in m.items() if k not in skip}
  return strip(a) == strip(b)


def _reserve(path: str) -> None:
  """Allocate a memmapped file's blocks now: on a full disk this is one ENOSPC error, where a
  store page written later through the memmap would kill the process with SIGBUS."""
  with open(path, 'r+b') as f:
    try:
      os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    except OSError as e:
      if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
        return  # a filesystem without fallocate: written as before.
      raise OSError(
        e.errno,
        f'disk full reserving {os.fstat(f.fileno()).st_size:,} bytes for {path}; steps stored '
        'so far are kept: free space and run the same command to resume',
      ) from None


class _Writer:
  """This host's part of a store: one .npy memmap [num_steps, ...] per kind, and its meta json.

  Arrays are flushed before the meta (replaced atomically) records `steps_done`, so a flush cut
  half-way leaves the previous meta and its steps are written again on resume. A store begun
  for another job (different meta) restarts at step 0, its old meta replaced first.
  """

  def __init__(self, out_dir: str, meta: dict, specs: dict):
    os.makedirs(out_dir, exist_ok=True)
    p, n = meta['process_index'], meta['process_count']
    self.out_dir, self.meta = out_dir, meta
    self.meta_path = os.path.join(out_dir, _name('meta', p, n))
    self.paths = {kind: os.path.join(out_dir, _name(kind, p, n)) for kind in specs}
    self.start, self.complete = 0, False
    if os.path.exists(self.meta_path):
      with open(self.meta_path) as f:
        old = json.load(f)
      if _same_job(old, meta) and all(os.path.exists(x) for x in self.paths.values()):
        if old['complete']:
          self.meta, self.complete = old, True
          return
        self.start = old['steps_done']
        meta['seconds'] = old.get('seconds', 0.0)
        logging.info('Resuming the store in %s at step %d', out_dir, self.start)
    if not self.start:
      workdir_lib.write_json(
        self.meta_path, meta
      )  # an older job's meta never describes the new files.
    mode = 'r+' if self.start else 'w+'
    self.arrays = {
      kind: np.lib.format.open_memmap(self.paths[kind], mode, dtype, tuple(shape))
      for kind, (dtype, shape) in specs.items()
    }
    for path in self.paths.values():
      _reserve(path)

  def flush(self, done: int, **extra):
    for mm in self.arrays.values():
      mm.flush()
    self.meta.update(steps_done=done, **extra)
    workdir_lib.write_json(self.meta_path, self.meta)

  def fill(
    self,
    compute: Callable[[int], dict],
    config: schema.Config,
    stop_after: int | None = None,
  ) -> bool:
    """arrays[kind][step] = compute(step)[kind] from the resume point on; True once all steps are.

    Flushes every config.train.checkpoint_every steps and at `stop_after` (an early stop, as a
    preemption would); meta['seconds'] adds up the time spent here over resumes.
    """
    num_steps, t = self.meta['num_steps'], config.train
    end = num_steps if stop_after is None else min(stop_after, num_steps)
    tic = time.time()
    for step in range(self.start, end):
      for kind, rows in compute(step).items():
        self.arrays[kind][step] = rows
      done = step + 1
      if done % t.checkpoint_every == 0 or done == end:
        now = time.time()
        self.flush(done, seconds=self.meta.get('seconds', 0.0) + now - tic)
        tic = now
      if done % t.log_every == 0:
        logging.info('Stored %d/%d steps in %s', done, num_steps, self.out_dir)
    return end == num_steps

  def finish(self, **extra) -> dict:
    size = sum(os.path.getsize(x) for x in self.paths.values())
    self.flush(self.meta['num_steps'], complete=True, bytes=size, **extra)
    return self.meta


def _teacher_eval(r: context.Run, tmodel: models.ModelConfig, teacher: PyTree, tsh: PyTree) -> dict:
  """The teacher's CE on the eval batches: teacher_eval_loss and teacher_eval_bits_per_byte."""
  ev = context.jit_eval_step(r, step_lib.lm_loss(tmodel), params_shardings=tsh)
  out = evaluators.evaluate(r, ev, teacher, ())
  return {
    'teacher_eval_loss': out['eval/loss'],
    'teacher_eval_bits_per_byte': out['eval/bits_per_byte'],
  }


def _teacher(derived: validation.Derived):
  """Validated distill section, TeacherRef (checked against the student), and the Run (built on
  `derived`, after the teacher checks: those fail before any data is read)."""
  config = derived.config
  d = validation.distill_section(derived)
  ref = teacher_lib.teacher_ref(config)
  teacher_lib.check_compatible(
    config, ref.model.vocab_size, ref.tokenizer, ref.model.max_len, ref.model.positions
  )
  return d, ref, context.setup(derived)


def _base_meta(
  config: schema.Config,
  r: context.Run,
  ref: teacher_lib.TeacherRef,
  kind: str,
  shape: tuple,
) -> dict:
  return {
    'format': FORMAT,
    'kind': kind,
    'stream': stream_identity(config),
    'num_steps': r.derived.num_steps,
    'process_index': jax.process_index(),
    'process_count': jax.process_count(),
    **ref.meta(),
    'teacher_vocab_size': ref.model.vocab_size,
    'teacher_tokenizer': ref.tokenizer,
    'teacher_params': ref.num_params,
    'shape': shape,
    'steps_done': 0,
    'complete': False,
  }


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What one kind of store puts into the skeleton both share (_store)."""

  kind: str  # 'logits' | 'sequences'
  shape: list[int]
  meta: dict  # its own meta keys (after the common ones)
  arrays: dict  # array name -> (dtype, shape)
  # (teacher ModelConfig, teacher params, their shardings) -> step -> {array name: host rows}
  compute: Callable[[models.ModelConfig, PyTree, PyTree], Callable[[int], dict]]
  complete_note: Callable[[dict], str]  # meta -> the line for a store found complete
  summary: Callable[[dict], str]  # final meta -> the closing line
  finish_extra: Callable[[dict], dict] = lambda meta: {}  # meta -> keys added when complete


def _store(
  config: schema.Config,
  r: context.Run,
  ref: teacher_lib.TeacherRef,
  out_dir: str,
  stop_after: int | None,
  plan: _Plan,
) -> dict:
  """Open (or resume) this host's store, fill every step with the teacher, then add the
  teacher's eval loss and print the summary; returns the meta (a found-complete store's as is)."""
  meta = {**_base_meta(config, r, ref, plan.kind, plan.shape), **plan.meta}
  w = _Writer(out_dir, meta, plan.arrays)
  if w.complete:
    print(plan.complete_note(w.meta), flush=True)
    return w.meta
  with jax.set_mesh(r.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    tmodel, teacher, tsh = teacher_lib.load_teacher(config, ref, r.mesh)
    if not w.fill(plan.compute(tmodel, teacher, tsh), config, stop_after):
      return w.meta
    teacher_eval = _teacher_eval(r, tmodel, teacher, tsh)
  meta = w.finish(**plan.finish_extra(w.meta), **teacher_eval)
  print(plan.summary(meta), flush=True)
  return meta


def write(derived: validation.Derived, workdir: str, stop_after: int | None = None) -> dict:
  """Store what config.distill.mode of `derived` (validation.derive(config)) needs ('offline':
  top-k logits, `_logits_plan`; 'sequence': teacher continuations, `_sequences_plan`); returns
  the meta dict (resumes a cut store)."""
  config = validation.expect(derived).config
  d, ref, r = _teacher(derived)
  out_dir = teacher_lib.store_dir(config, workdir)
  plan = (_sequences_plan if d.mode == 'sequence' else _logits_plan)(config, d, ref, r, out_dir)
  return _store(config, r, ref, out_dir, stop_after, plan)


def _logits_plan(
  config: schema.Config,
  d: schema.DistillConfig,
  ref: teacher_lib.TeacherRef,
  r: context.Run,
  out_dir: str,
) -> _Plan:
  """The top-k teacher logits (values and ids) and the teacher's NLL of every training token."""
  num_steps, k, seq_len = r.derived.num_steps, d.top_k, config.data.seq_len
  shape = [num_steps, r.derived.host_batch, seq_len, k]
  values_dtype = {'float16': np.float16, 'float32': np.float32, 'bfloat16': np.uint16}[
    d.logits_dtype
  ]
  indices_dtype = _indices_dtype(ref.model.vocab_size)
  out_dtype = jnp.bfloat16 if d.logits_dtype == 'bfloat16' else values_dtype

  def compute(tmodel: models.ModelConfig, teacher: PyTree, tsh: PyTree) -> Callable[[int], dict]:
    def forward(tp: PyTree, batch: dict) -> tuple:
      tokens = batch['tokens']
      logits = models.logits(tmodel, tp, tokens[:, :-1])
      top_v, top_i = jax.lax.top_k(logits, k)
      targets = tokens[:, 1:]
      return (top_v.astype(out_dtype), top_i.astype(indices_dtype), loss.nll(logits, targets)[0])

    fwd = jax.jit(forward, in_shardings=(tsh, r.batch_sharding), out_shardings=r.batch_sharding)

    def rows(step: int) -> dict:
      v, i, t = fwd(teacher, context.global_batch(r, {'tokens': r.train_ds.batch(step)}))
      v = _host_rows(v)
      return {
        'values': v.view(np.uint16) if d.logits_dtype == 'bfloat16' else v,
        'indices': _host_rows(i),
        'teacher_nll': _host_rows(t),
      }

    return rows

  def summary(meta: dict) -> str:
    size, tokens = meta['bytes'], num_steps * r.derived.host_batch * seq_len
    return (
      f'Stored top-{k} teacher logits ({d.logits_dtype} values, {meta["indices_dtype"]} ids, '
      f'float32 teacher NLL) for {num_steps} steps x {r.derived.host_batch} rows x {seq_len} '
      f'tokens in {out_dir}: {size} bytes ({size / 1e6:.1f} MB, {size / tokens:.1f} bytes/token)'
      + _on_host(meta)
    )

  return _Plan(
    kind='logits',
    shape=shape,
    meta={
      'top_k': k,
      'values_dtype': d.logits_dtype,
      'indices_dtype': np.dtype(indices_dtype).name,
    },
    arrays={
      'values': (values_dtype, shape),
      'indices': (indices_dtype, shape),
      'teacher_nll': (np.float32, shape[:3]),
    },
    compute=compute,
    complete_note=lambda m: (
      f'Stored logits in {out_dir} are complete: {m["bytes"]} bytes ({m["bytes"] / 1e6:.1f} MB)'
    ),
    summary=summary,
  )


def _on_host(meta: dict) -> str:
  p, n = meta['process_index'], meta['process_count']
  return f' on host {p} of {n}' if n > 1 else ''


def generation_identity(config: schema.Config) -> dict:
  """What the teacher's continuations depend on besides the stream and the teacher."""
  d = config.distill
  return {
    'prompt_len': d.prompt_len,
    'gen_temperature': float(d.gen_temperature),
    'gen_top_k': d.gen_top_k,
    'gen_top_p': float(d.gen_top_p),
  }


def generation_rng(seed: int, step: int) -> jax.Array:
  """The sampling key of `step`: a pure function of (seed, step), apart from the init's keys."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _GEN_SALT), step)


def _sequences_plan(
  config: schema.Config,
  d: schema.DistillConfig,
  ref: teacher_lib.TeacherRef,
  r: context.Run,
  out_dir: str,
) -> _Plan:
  """Sequence-level KD data (Kim & Rush 2016): the teacher continues the first
  config.distill.prompt_len tokens of every training row to seq_len + 1 tokens. Stores this host's
  rows as tokens.p{p}of{P}.npy [num_steps, host_batch, seq_len + 1] (uint16 when the vocabulary
  fits, else int32) in config.distill.sequences_dir (default W/teacher_sequences), with
  meta.p{p}of{P}.json; resumable like the logits store."""
  num_steps, seq_len, prompt_len = r.derived.num_steps, config.data.seq_len, d.prompt_len
  new_tokens = seq_len + 1 - prompt_len
  shape = [num_steps, r.derived.host_batch, seq_len + 1]
  tokens_dtype = np.uint16 if ref.model.vocab_size <= 2**16 else np.int32
  generated = num_steps * r.derived.host_batch * new_tokens
  sampling = dict(
    temperature=float(d.gen_temperature), top_k=int(d.gen_top_k), top_p=float(d.gen_top_p)
  )

  def compute(tmodel: models.ModelConfig, teacher: PyTree, tsh: PyTree) -> Callable[[int], dict]:
    del tsh  # Each host continues its own rows; with several processes on a full copy.
    local = teacher if jax.process_count() == 1 else multihost_utils.process_allgather(teacher)

    def rows(step: int) -> dict:
      prompts_BxP = r.train_ds.batch(step)[:, :prompt_len]
      rng_gen, rng_last = jax.random.split(generation_rng(config.seed, step))
      rows_BxL = prompts_BxP
      # models.generate keeps prompt + new tokens within max_len (= seq_len here) although the
      # last new token is never fed back: it comes from one full forward over the row instead.
      if new_tokens > 1:
        rows_BxL = models.generate(
          tmodel, local, prompts_BxP, new_tokens - 1, rng=rng_gen, **sampling
        )
      last_BxV = models.logits(tmodel, local, rows_BxL)[:, -1]
      last_B = generation.sample(
        last_BxV,
        rng_last,
        d.gen_temperature == 0,
        sampling['temperature'] or 1.0,
        sampling['top_k'],
        sampling['top_p'],
      )
      return {'tokens': np.concatenate([np.asarray(rows_BxL), np.asarray(last_B)[:, None]], 1)}

    return rows

  def summary(meta: dict) -> str:
    seconds = meta['seconds']
    return (
      f'Stored teacher continuations of {prompt_len}-token prompts ({new_tokens} new tokens '
      f'per row, {sampling}) for {num_steps} steps x {r.derived.host_batch} rows in {out_dir}: '
      f'{generated} tokens generated in {seconds:.1f} s ({generated / max(seconds, 1e-9):.0f} '
      f'tokens/s), {meta["bytes"]} bytes' + _on_host(meta)
    )

  return _Plan(
    kind='sequences',
    shape=shape,
    meta={
      'generation': generation_identity(config),
      'new_tokens_per_row': new_tokens,
      'tokens_dtype': np.dtype(tokens_dtype).name,
    },
    arrays={'tokens': (tokens_dtype, shape)},
    compute=compute,
    complete_note=lambda m: (
      f'Stored teacher sequences in {out_dir} are complete: {m["bytes"]} bytes'
    ),
    summary=summary,
    finish_extra=lambda m: {
      'generated_tokens': generated,
      'tokens_per_sec': generated / max(m['seconds'], 1e-9),
    },
  )


_KINDS = {'logits': ('values', 'indices', 'teacher_nll'), 'sequences': ('tokens',)}
_WHAT = {'logits': 'teacher logits', 'sequences': 'teacher sequences'}


class Store:
  """Read side: this host's stored arrays (memory-mapped) and their meta; top-k logits."""

  def __init__(self, directory: str, meta: dict, arrays: dict):
    self.directory, self.meta, self.arrays = directory, meta, arrays
    self.top_k = meta.get('top_k')

  def _check_common(self, config: schema.Config, r: context.Run) -> str:
    m = self.meta
    where = f'stored {_WHAT[m.get("kind", "logits")]} in {self.directory}'
    if m['stream'] != stream_identity(config):
      diff = {
        k: (v, stream_identity(config).get(k))
        for k, v in m['stream'].items()
        if stream_identity(config).get(k) != v
      }
      raise ValueError(
        f'{where} were written for a different training stream '
        f'(stored vs config: {diff}); rerun train.distillation.store.'
      )
    if m['teacher'] != config.distill.teacher:
      raise ValueError(
        f'{where} come from teacher {m["teacher"]!r} but config.distill.teacher='
        f'{config.distill.teacher!r}'
      )
    if r.derived.num_steps > m['num_steps']:
      raise ValueError(
        f'{where} cover {m["num_steps"]} steps but the run needs {r.derived.num_steps}'
      )
    return where

  def check_stream(self, config: schema.Config, r: context.Run):
    """ValueError unless these logits were stored for config's stream, teacher and k."""
    self._check_common(config, r)
    top_k = r.derived.distill.top_k
    if top_k > self.meta['top_k']:
      raise ValueError(
        f'config.distill.top_k={top_k} but only top-{self.meta["top_k"]} '
        f'logits were stored in {self.directory}'
      )
    self.top_k = top_k

  def batch(self, step: int) -> dict:
    """This host's rows at `step`: teacher_values/teacher_indices [rows, L, k], teacher_nll."""
    k = self.top_k
    v = np.asarray(self.arrays['values'][step, :, :, :k])
    if self.meta['values_dtype'] == 'bfloat16':
      v = v.view(jnp.bfloat16)
    return {
      'teacher_values': v,
      'teacher_indices': np.asarray(self.arrays['indices'][step, :, :, :k]),
      'teacher_nll': np.asarray(self.arrays['teacher_nll'][step]),
    }


class SequenceStore(Store):
  """Read side of a sequence store: this host's teacher-continued rows by step."""

  def check_stream(self, config: schema.Config, r: context.Run):
    """ValueError unless these sequences were generated for config's stream, teacher, sampling."""
    where = self._check_common(config, r)
    want = generation_identity(config)
    for key, value in self.meta['generation'].items():
      if want[key] != value:
        raise ValueError(
          f'{where} were generated with {key}={value!r} but config.distill.{key}='
          f'{want[key]!r}; rerun train.distillation.store or set '
          'config.distill.sequences_dir to a matching store.'
        )

  def batch(self, step: int) -> dict:
    """This host's rows at `step`: tokens [rows, seq_len + 1] int32, prompt then continuation."""
    return {'tokens': np.asarray(self.arrays['tokens'][step], np.int32)}


def open_store(
  directory: str, process_index: int = 0, process_count: int = 1, kind: str = 'logits'
) -> Store:
  """Open this host's part of a complete store of `kind` ('logits' | 'sequences'); a ValueError
  naming the path and what to run otherwise."""
  what = _WHAT[kind]
  meta_path = os.path.join(directory, _name('meta', process_index, process_count))
  if not os.path.exists(meta_path):
    raise ValueError(
      f'No stored {what} for host {process_index} of {process_count} in {directory} '
      f'({meta_path} missing); run `python -m train.distillation.store --config=... --workdir=...` '
      'with the same config first.'
    )
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get('kind', 'logits') != kind:
    raise ValueError(
      f'{directory} holds {_WHAT[meta["kind"]]}, not {what}; point '
      f'config.distill.{"logits_dir" if kind == "logits" else "sequences_dir"} '
      'at a store of the right kind.'
    )
  if not meta.get('complete'):
    raise ValueError(
      f'Stored {what} in {directory} are incomplete '
      f'({meta["steps_done"]}/{meta["num_steps"]} steps); rerun train.distillation.store '
      'to finish them.'
    )
  arrays = {
    k: np.load(os.path.join(directory, _name(k, process_index, process_count)), mmap_mode='r')
    for k in _KINDS[kind]
  }
  return (SequenceStore if kind == 'sequences' else Store)(directory, meta, arrays)


def main(argv: list[str]) -> None:
  del argv
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  distributed.initialize(config.distributed)
  meta = write(validation.derive(config), workdir)
  if jax.process_index() == 0:
    print(json.dumps(meta, indent=1, sort_keys=True), flush=True)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Config file (path[:arg]).', lock_config=True)
  flags.DEFINE_string(
    'workdir',
    None,
    'Student workdir (the store goes to '
    '<workdir>/teacher_logits or <workdir>/teacher_sequences unless '
    'config.distill.logits_dir / sequences_dir is set).',
  )
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
