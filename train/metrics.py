"""Metric writers: clu (TensorBoard + console) and one JSON object per logged step in metrics.jsonl."""
import json
import math
import os

import jax
from clu import metric_writers
from clu.metric_writers import interface


class JsonlWriter(interface.MetricWriter):
  """Appends {'step': s, **scalars} per write to `path`; NaN/inf become null (valid JSON)."""

  def __init__(self, path: str):
    self._f = open(path, 'a')

  def write_scalars(self, step, scalars):
    row = {'step': int(step)}
    for k, v in scalars.items():
      v = float(v)
      row[k] = v if math.isfinite(v) else None
    self._f.write(json.dumps(row) + '\n')
    self._f.flush()

  def write_summaries(self, step, values, metadata=None): pass
  def write_images(self, step, images): pass
  def write_videos(self, step, videos): pass
  def write_audios(self, step, audios, *, sample_rate): pass
  def write_texts(self, step, texts): pass
  def write_histograms(self, step, arrays, num_buckets=None): pass
  def write_hparams(self, hparams): pass

  def flush(self):
    self._f.flush()

  def close(self):
    self._f.close()


class _FiniteOnly:
  """Drops non-finite scalars (e.g. MFU on a device without a known peak) before TensorBoard."""

  def __init__(self, inner):
    self._inner = inner

  def write_scalars(self, step, scalars):
    self._inner.write_scalars(step, {k: v for k, v in scalars.items() if math.isfinite(float(v))})

  def __getattr__(self, name):
    return getattr(self._inner, name)


def truncate_jsonl(path: str, last_step: int):
  """Drop rows logged after `last_step` (the checkpoint a run resumes from), so a resumed run's
  metrics.jsonl reads like an uninterrupted one's instead of repeating those steps."""
  if jax.process_index() > 0 or not os.path.exists(path):
    return
  with open(path) as f:
    rows = f.readlines()
  keep = [r for r in rows if r.strip() and json.loads(r)['step'] <= last_step]
  if len(keep) != len(rows):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(keep)
    os.replace(tmp, path)


def make_writers(workdir: str):
  """(metrics writer, progress writer). Process 0 writes TensorBoard + console, and the
  metrics writer also metrics.jsonl (one row per logging step); other hosts only log."""
  if jax.process_index() > 0:
    w = metric_writers.create_default_writer(None, just_logging=True)
    return w, w
  tb = _FiniteOnly(metric_writers.create_default_writer(os.path.join(workdir, 'tensorboard'),
                                                        asynchronous=False))
  jsonl = JsonlWriter(os.path.join(workdir, 'metrics.jsonl'))
  return metric_writers.MultiWriter([tb, jsonl]), tb
