"""Metric writers: clu (TensorBoard + console) and one JSON object per logged step in metrics.jsonl."""

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface


class JsonlWriter(interface.MetricWriter):
  """Appends {'step': s, **scalars} per write to `path`; NaN/inf become null (valid JSON)."""

  def __init__(self, path: str) -> None:
    self._f = open(path, 'a')

  def write_scalars(self, step: int, scalars: Mapping[str, interface.Scalar]) -> None:
    row = {'step': int(step)}
    for k, v in scalars.items():
      if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        row[k] = int(v)  # counts (train/tokens_seen) stay integers, read back as on a first run.
        continue
      v = float(v)
      row[k] = v if math.isfinite(v) else None
    self._f.write(json.dumps(row) + '\n')
    self._f.flush()

  def write_summaries(
    self,
    step: int,
    values: Mapping[str, interface.Array],
    metadata: Mapping[str, Any] | None = None,
  ) -> None:
    pass

  def write_images(self, step: int, images: Mapping[str, interface.Array]) -> None:
    pass

  def write_videos(self, step: int, videos: Mapping[str, interface.Array]) -> None:
    pass

  def write_audios(
    self, step: int, audios: Mapping[str, interface.Array], *, sample_rate: int
  ) -> None:
    pass

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    pass

  def write_histograms(
    self,
    step: int,
    arrays: Mapping[str, interface.Array],
    num_buckets: Mapping[str, int] | None = None,
  ) -> None:
    pass

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    pass

  def flush(self) -> None:
    self._f.flush()

  def close(self) -> None:
    self._f.close()


class _FiniteOnly:
  """Drops non-finite scalars (e.g. MFU on a device without a known peak) before TensorBoard."""

  def __init__(self, inner: interface.MetricWriter) -> None:
    self._inner = inner

  def write_scalars(self, step: int, scalars: Mapping[str, interface.Scalar]) -> None:
    self._inner.write_scalars(step, {k: v for k, v in scalars.items() if math.isfinite(float(v))})

  def __getattr__(self, name: str) -> Any:
    return getattr(self._inner, name)


def _read_rows(path: str) -> tuple[list[bytes], int]:
  """(the complete rows of a metrics.jsonl as bytes, the bytes of a torn last row after them).
  A crash mid-write leaves a last row without its newline, or one that does not parse (e.g. a
  tail of NUL bytes); a bad row before the last is an error naming the file and line."""
  with open(path, 'rb') as f:
    data = f.read()
  *lines, tail = data.split(b'\n')  # `tail`: bytes after the last newline (b'' when none).
  rows, torn = [line + b'\n' for line in lines], len(tail)
  for i, row in enumerate(rows):
    if not row.strip(b' \t\r\n\0'):
      continue
    try:
      json.loads(row)
    except ValueError:
      if i < len(rows) - 1:
        raise ValueError(f'{path}: line {i + 1} is not a JSON row; fix or remove it') from None
      rows, torn = rows[:-1], torn + len(row)
  return rows, torn


def last_row(path: str) -> dict:
  """The metrics of the last row of a metrics.jsonl (without 'step'); {} if there is none."""
  if not os.path.exists(path):
    return {}
  rows = [r for r in _read_rows(path)[0] if r.strip(b' \t\r\n\0')]
  row = json.loads(rows[-1]) if rows else {}
  row.pop('step', None)
  return row


def truncate_jsonl(path: str, last_step: int) -> None:
  """Drop rows logged after `last_step` (the checkpoint a run resumes from), so a resumed run's
  metrics.jsonl reads like an uninterrupted one's instead of repeating those steps; a torn last
  row (a crash mid-write) is cut off with a warning."""
  if jax.process_index() > 0 or not os.path.exists(path):
    return
  rows, torn = _read_rows(path)
  if torn:
    logging.warning('%s ends in a torn row (%d bytes, cut off mid-write); dropped it', path, torn)
  steps = [json.loads(r)['step'] if r.strip(b' \t\r\n\0') else None for r in rows]
  keep = [r for r, s in zip(rows, steps) if s is not None and s <= last_step]
  dropped = [s for s in steps if s is not None and s > last_step]
  if dropped and not last_step:  # no checkpoint (e.g. checkpoints/ removed): a restart, say so.
    logging.warning(
      '%s: no checkpoint to resume from, starting again at step 0; dropped its %d rows (up to '
      'step %d)',
      path,
      len(dropped),
      max(dropped),
    )
  if torn or len(keep) != len(rows):
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
      f.writelines(keep)
    os.replace(tmp, path)


def make_writer(workdir: str) -> metric_writers.MultiWriter:
  """Process 0: TensorBoard (finite scalars) + metrics.jsonl; other processes write nothing.
  The console gets one `console_line` per logged step from the loop instead of clu's logging."""
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  tb = _FiniteOnly(metric_writers.SummaryWriter(os.path.join(workdir, 'tensorboard')))
  return metric_writers.MultiWriter([tb, JsonlWriter(os.path.join(workdir, 'metrics.jsonl'))])


def _duration(seconds: float) -> str:
  minutes, s = divmod(int(round(seconds)), 60)
  h, m = divmod(minutes, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def console_line(step: int, num_steps: int, m: dict, eta_seconds: float | None) -> str:
  """`step 250/500 | loss 2.106 | eval 2.313 (3.337 bits/byte) | lr 1.89e-03 | 4,571 tok/s | ETA 3m05s`;
  ETA is '-' until the step time is measured after compilation."""
  parts = [f'step {step}/{num_steps}', f'loss {m["train/loss"]:.4f}']
  if 'eval/loss' in m:
    parts.append(f'eval {m["eval/loss"]:.4f} ({m["eval/bits_per_byte"]:.4f} bits/byte)')
  rate = m['train/tokens_per_sec']
  parts += [
    f'lr {m["train/lr"]:.2e}',
    (f'{rate:,.0f}' if math.isfinite(rate) else '-') + ' tok/s',
    'ETA ' + ('-' if eta_seconds is None else _duration(eta_seconds)),
  ]
  return ' | '.join(parts)


def strict_json(obj: Any) -> object:
  """obj with non-finite floats as None, so json.dumps writes valid JSON (no NaN/Infinity)."""
  if isinstance(obj, dict):
    return {str(k): strict_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [strict_json(v) for v in obj]
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  if isinstance(obj, np.integer):
    return int(obj)
  return obj
