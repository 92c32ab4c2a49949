"""Offline distillation: run the teacher once over the training stream and store its top-k logits.

  python -m train.distill_store --config=configs/distill.py:offline --workdir=W
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
"""
import json
import logging
import math
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import models
from train import distill, loop, sharding
from train.step import cross_entropy_sum

FORMAT = 1


def _name(kind: str, p: int, n: int) -> str:
  return f'{kind}.p{p}of{n}.npy' if kind != 'meta' else f'meta.p{p}of{n}.json'


def stream_identity(config) -> dict:
  """What the training batches depend on (not the student model): must match to reuse logits."""
  d = config.data
  return {'seed': config.seed, 'dataset': d.dataset, 'train_split': d.train_split,
          'text_key': d.text_key, 'tokenizer': d.tokenizer, 'max_documents': d.max_documents,
          'seq_len': d.seq_len, 'global_batch_size': config.train.global_batch_size}


def _indices_dtype(vocab_size: int):
  return np.int16 if vocab_size <= 32768 else np.int32


def _host_rows(x: jax.Array) -> np.ndarray:
  """This host's rows of a batch-sharded global array, in the order it fed them."""
  by_start = {}
  for s in x.addressable_shards:
    by_start.setdefault(s.index[0].start or 0, s.data)
  return np.concatenate([np.asarray(by_start[k]) for k in sorted(by_start)])


def _write_json(path: str, obj: dict):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def _same_job(a: dict, b: dict) -> bool:
  skip = ('steps_done', 'complete', 'bytes', 'teacher_eval_loss', 'teacher_eval_bits_per_byte',
          'seconds')
  strip = lambda m: {k: v for k, v in m.items() if k not in skip}
  return strip(a) == strip(b)


def write(config, workdir: str) -> dict:
  """Run the teacher over the training stream; store top-k logits; return the meta dict."""
  d = distill.validate(config)
  ref = distill.teacher_ref(config)
  distill.check_compatible(config, ref.model.vocab_size, ref.tokenizer, ref.model.max_len,
                           ref.model.positions)
  r = loop.setup(config)
  out_dir = distill.logits_dir(config, workdir)
  os.makedirs(out_dir, exist_ok=True)
  p, n = jax.process_index(), jax.process_count()
  num_steps, k, seq_len = r.derived.num_steps, d.top_k, config.data.seq_len
  shape = [num_steps, r.derived.host_batch, seq_len, k]
  values_dtype = {'float16': np.float16, 'float32': np.float32,
                  'bfloat16': np.uint16}[d.logits_dtype]
  indices_dtype = _indices_dtype(ref.model.vocab_size)
  meta = {'format': FORMAT, 'stream': stream_identity(config), 'num_steps': num_steps,
          'process_index': p, 'process_count': n, **ref.meta(),
          'teacher_vocab_size': ref.model.vocab_size, 'teacher_tokenizer': ref.tokenizer,
          'teacher_params': ref.num_params, 'top_k': k, 'shape': shape,
          'values_dtype': d.logits_dtype, 'indices_dtype': np.dtype(indices_dtype).name,
          'steps_done': 0, 'complete': False}
  meta_path = os.path.join(out_dir, _name('meta', p, n))
  paths = {kind: os.path.join(out_dir, _name(kind, p, n))
           for kind in ('values', 'indices', 'teacher_nll')}
  start = 0
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      old = json.load(f)
    if _same_job(old, meta) and all(os.path.exists(x) for x in paths.values()):
      if old['complete']:
        print(f'Stored logits in {out_dir} are complete: {old["bytes"]} bytes '
              f'({old["bytes"] / 1e6:.1f} MB)', flush=True)
        return old
      start = old['steps_done']
      logging.info('Resuming the logits store in %s at step %d', out_dir, start)
  mode = 'r+' if start else 'w+'
  open_mm = lambda kind, dtype, shp: np.lib.format.open_memmap(paths[kind], mode, dtype, tuple(shp))
  values = open_mm('values', values_dtype, shape)
  indices = open_mm('indices', indices_dtype, shape)
  nll = open_mm('teacher_nll', np.float32, shape[:3])

  def flush(done, **extra):
    for mm in (values, indices, nll):
      mm.flush()
    meta.update(steps_done=done, **extra)
    _write_json(meta_path, meta)

  out_dtype = jnp.bfloat16 if d.logits_dtype == 'bfloat16' else values_dtype
  tic = time.time()
  with jax.set_mesh(r.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    tmodel, teacher, tsh = distill.load_teacher(config, ref, r.mesh)

    def forward(tp, batch):
      tokens = batch['tokens']
      logits = models.logits(tmodel, tp, tokens[:, :-1])
      top_v, top_i = jax.lax.top_k(logits, k)
      targets = tokens[:, 1:]
      safe = jnp.maximum(targets, 0)
      tnll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, safe[..., None], -1)[..., 0]
      tnll = tnll * (targets >= 0)
      return top_v.astype(out_dtype), top_i.astype(indices_dtype), tnll

    def eval_sums(tp, batch):
      tokens = batch['tokens']
      return cross_entropy_sum(models.logits(tmodel, tp, tokens[:, :-1]), tokens[:, 1:])

    fwd = jax.jit(forward, in_shardings=(tsh, r.batch_sharding), out_shardings=r.batch_sharding)
    for step in range(start, num_steps):
      v, i, t = fwd(teacher, loop.global_batch(r, {'tokens': r.train_ds.batch(step)}))
      v = _host_rows(v)
      values[step] = v.view(np.uint16) if d.logits_dtype == 'bfloat16' else v
      indices[step] = _host_rows(i)
      nll[step] = _host_rows(t)
      done = step + 1
      if done % config.train.checkpoint_every == 0 and done < num_steps:
        flush(done)
      if done % config.train.log_every == 0:
        logging.info('Stored teacher logits for %d/%d steps', done, num_steps)

    ev = jax.jit(eval_sums, in_shardings=(tsh, r.batch_sharding),
                 out_shardings=sharding.replicated(r.mesh))
    total = count = 0.0
    for b in range(config.train.eval_batches):
      s, c = jax.device_get(ev(teacher, loop.global_batch(r, {'tokens': r.eval_ds.eval_batch(b)})))
      total, count = total + float(s), count + float(c)
  eval_loss = total / max(count, 1.0)
  size = sum(os.path.getsize(x) for x in paths.values())
  flush(num_steps, complete=True, bytes=size, teacher_eval_loss=eval_loss,
        teacher_eval_bits_per_byte=eval_loss / math.log(2) / r.eval_ds.bytes_per_token,
        seconds=time.time() - tic)
  tokens = num_steps * r.derived.host_batch * seq_len
  print(f'Stored top-{k} teacher logits ({d.logits_dtype} values, {meta["indices_dtype"]} ids, '
        f'float32 teacher NLL) for {num_steps} steps x {r.derived.host_batch} rows x {seq_len} '
        f'tokens in {out_dir}: {size} bytes ({size / 1e6:.1f} MB, {size / tokens:.1f} bytes/token)'
        + (f' on host {p} of {n}' if n > 1 else ''), flush=True)
  return meta


class Store:
  """Read side: this host's stored arrays (memory-mapped) and their meta."""

  def __init__(self, directory: str, meta: dict, arrays: dict):
    self.directory, self.meta, self.arrays = directory, meta, arrays
    self.top_k = meta['top_k']

  def check_stream(self, config, r: loop.Run):
    """ValueError unless these logits were stored for config's stream, teacher and k."""
    m, where = self.meta, f'stored logits in {self.directory}'
    if m['stream'] != stream_identity(config):
      diff = {k: (v, stream_identity(config).get(k)) for k, v in m['stream'].items()
              if stream_identity(config).get(k) != v}
      raise ValueError(f'{where} were written for a different training stream '
                       f'(stored vs config: {diff}); rerun train.distill_store.')
    if m['teacher'] != config.distill.teacher:
      raise ValueError(f'{where} come from teacher {m["teacher"]!r} but config.distill.teacher='
                       f'{config.distill.teacher!r}')
    if r.derived.num_steps > m['num_steps']:
      raise ValueError(f'{where} cover {m["num_steps"]} steps but the run needs '
                       f'{r.derived.num_steps}')
    top_k = distill.validate(config).top_k
    if top_k > m['top_k']:
      raise ValueError(f'config.distill.top_k={top_k} but only top-{m["top_k"]} '
                       f'logits were stored in {self.directory}')
    self.top_k = top_k

  def batch(self, step: int) -> dict:
    """This host's rows at `step`: teacher_values/teacher_indices [rows, L, k], teacher_nll."""
    k = self.top_k
    v = np.asarray(self.arrays['values'][step, :, :, :k])
    if self.meta['values_dtype'] == 'bfloat16':
      v = v.view(jnp.bfloat16)
    return {'teacher_values': v,
            'teacher_indices': np.asarray(self.arrays['indices'][step, :, :, :k]),
            'teacher_nll': np.asarray(self.arrays['teacher_nll'][step])}


def open_store(directory: str, process_index: int = 0, process_count: int = 1) -> Store:
  """Open this host's part of a complete store (ValueError saying what to run otherwise)."""
  meta_path = os.path.join(directory, _name('meta', process_index, process_count))
  if not os.path.exists(meta_path):
    raise ValueError(
        f'No stored teacher logits for host {process_index} of {process_count} in {directory} '
        f'({meta_path} missing); run `python -m train.distill_store --config=... --workdir=...` '
        'with the same config first.')
  with open(meta_path) as f:
    meta = json.load(f)
  if not meta.get('complete'):
    raise ValueError(f'Stored teacher logits in {directory} are incomplete '
                     f'({meta["steps_done"]}/{meta["num_steps"]} steps); rerun train.distill_store '
                     'to finish them.')
  arrays = {kind: np.load(os.path.join(directory, _name(kind, process_index, process_count)),
                          mmap_mode='r') for kind in ('values', 'indices', 'teacher_nll')}
  return Store(directory, meta, arrays)


def main(argv):
  del argv
  from absl import flags
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  from train import distributed
  distributed.initialize(config.distributed)
  meta = write(config, workdir)
  if jax.process_index() == 0:
    print(json.dumps(meta, indent=1, sort_keys=True), flush=True)


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Config file (path[:arg]).', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Student workdir (logits go to <workdir>/teacher_logits '
                      'unless config.distill.logits_dir is set).')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
