"""Metric writers: TensorBoard events and one JSON object per logged step in metrics.jsonl."""

import json
import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


class JsonlWriter:
  """Appends {'step': s, **scalars} per write to `path`; NaN/inf become null (valid JSON)."""

  def __init__(self, path: str) -> None:
    self._f = open(path, 'a')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    row = {'step': int(step)}
    for k, v in scalars.items():
      if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        row[k] = int(v)  # counts (train/tokens_seen) stay integers, read back as on a first run.
        continue
      v = float(v)
      row[k] = v if math.isfinite(v) else None
    self._f.write(json.dumps(row) + '\n')
    self._f.flush()

  def flush(self) -> None:
    self._f.flush()

  def close(self) -> None:
    self._f.close()


class TensorBoardWriter:
  """Finite scalars (not e.g. MFU on a device without a known peak) as TensorBoard events.

  A local logdir is written through tensorboard's own record writer, without TensorFlow (its
  import is 7-9 s of every run's start); a remote one (gs://) through tensorboard's event-file
  writer, whose file system is TensorFlow's."""

  def __init__(self, logdir: str) -> None:
    from tensorboard.compat.proto import event_pb2

    if '://' in logdir:
      from tensorboard.summary.writer.event_file_writer import EventFileWriter

      self._events = EventFileWriter(logdir)
      self._add = self._events.add_event
      return
    from tensorboard.summary.writer.record_writer import RecordWriter

    os.makedirs(logdir, exist_ok=True)  # the file name and first event as EventFileWriter's.
    name = f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.0'
    self._events = RecordWriter(open(os.path.join(logdir, name), 'wb'))
    self._add(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _add(self, event) -> None:
    """A local file's event, on disk at once (as metrics.jsonl's row is)."""
    self._events.write(event.SerializeToString())
    self._events.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2

    values = [
      summary_pb2.Summary.Value(tag=k, simple_value=float(v))
      for k, v in scalars.items()
      if math.isfinite(float(v))
    ]
    summary = summary_pb2.Summary(value=values)
    self._add(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    self._events.flush()

  def close(self) -> None:
    self._events.close()


class Writers:
  """Several writers as one: each call goes to all of them."""

  def __init__(self, writers: list) -> None:
    self.writers = writers

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for w in self.writers:
      w.write_scalars(step, scalars)

  def flush(self) -> None:
    for w in self.writers:
      w.flush()

  def close(self) -> None:
    for w in self.writers:
      w.close()


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
      value = json.loads(row)
    except ValueError:
      value = None
    if not (isinstance(value, dict) and isinstance(value.get('step'), int)):
      if i < len(rows) - 1:
        raise ValueError(
          f"{path}: line {i + 1} is not a metrics row (a JSON object with a 'step'); fix or "
          'remove it'
        )
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


def make_writer(workdir: str) -> Writers:
  """Process 0: TensorBoard (finite scalars) + metrics.jsonl; other processes write nothing.
  The console gets one `console_line` per logged step from the loop."""
  if jax.process_index() > 0:
    return Writers([])
  tb = TensorBoardWriter(os.path.join(workdir, 'tensorboard'))
  return Writers([tb, JsonlWriter(os.path.join(workdir, 'metrics.jsonl'))])


def _duration(seconds: float) -> str:
  minutes, s = divmod(int(round(seconds)), 60)
  h, m = divmod(minutes, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def console_line(step: int, num_steps: int, m: dict, eta_seconds: float | None) -> str:
  """`step 250/500 | loss 2.106 | eval 2.313 (3.337 bits/byte) | lr 1.89e-03 | 4,571 tok/s | ETA 3m05s`
  (with `| lm-eval <task>/<metric> 0.5000` after the eval where lm-eval ran); ETA is '-' until the
  step time is measured after compilation."""
  parts = [f'step {step}/{num_steps}', f'loss {m["train/loss"]:.4f}']
  if 'eval/loss' in m:
    parts.append(f'eval {m["eval/loss"]:.4f} ({m["eval/bits_per_byte"]:.4f} bits/byte)')
  scores = [f'{k.split("/", 1)[1]} {v:.4f}' for k, v in m.items() if k.startswith('lm_eval/')]
  if scores:  # in-loop lm-eval (config.lm_eval.tasks): 'lm-eval <task>/<metric> value, ...'
    parts.append('lm-eval ' + ', '.join(scores))
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
