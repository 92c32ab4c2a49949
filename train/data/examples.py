"""Supervised examples packed whole into rows of seq_len + 1, with segment ids (a grain source).

Row r holds consecutive examples of the split's stream in file order, as many as fit (greedy), or
one alone with `pack=False`. An example longer than a row fills one alone, cut to seq_len + 1
tokens: by default (`truncation='left'`) its prompt (the tokens before its first target) loses
its start, keeping one token before the completion, and only what still does not fit is cut from
the end; `truncation='right'` keeps its first seq_len + 1 tokens. A row is a dict of int32
[seq_len + 1] arrays: 'tokens', 'loss_mask' (1: a target), 'segment_ids' (1, 2, ... per example, 0
on the padding after the last) and 'positions' (0, 1, ... restarting per example). A `Layout` may
also hold out a spread of the examples as the eval set (a split carved in two). The packing is a
function of the example lengths only, computed when the source opens (three int64 per example
held: its number, start and length); rows are then read with one positioned read per field and
stretch of adjacent examples.
"""

import dataclasses
import logging

import numpy as np

from train.data import shards

KEYS = ('tokens', 'loss_mask', 'segment_ids', 'positions')  # models/loss.py PACKED_KEYS + tokens.


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a split's examples become rows: packed or one per row, the side an over-long example is
  cut from, and, for a split carved in two, which part (the held-out eval set or the rest)."""

  pack: bool = True
  truncation: str = 'left'
  holdout: float = 0.0  # > 0: this fraction of the examples is the eval set (held_out: its part).
  held_out: bool = False


DEFAULT = Layout()  # config.data's defaults: packed, prompts cut from the left, the whole split.


def held_out(num_examples: int, fraction: float) -> np.ndarray:
  """Example numbers of the carved eval set: k = round(fraction * n) (1 to n - 1) spread over the
  split, example floor(j * n / k) for j < k; ValueError when n < 2."""
  if num_examples < 2:
    raise ValueError(f'{num_examples} example(s): too few to carve an eval set from')
  k = min(max(int(round(fraction * num_examples)), 1), num_examples - 1)
  return np.arange(k, dtype=np.int64) * num_examples // k


def carve(num_examples: int, layout: Layout) -> np.ndarray:
  """The example numbers a layout reads, in order: all, the held-out ones, or the rest."""
  every = np.arange(num_examples, dtype=np.int64)
  if layout.holdout <= 0:
    return every
  held = held_out(num_examples, layout.holdout)
  return held if layout.held_out else np.setdiff1d(every, held)


def pack(lengths: np.ndarray, row_len: int, packed: bool = True) -> np.ndarray:
  """Greedy packing of examples (in order) into rows: int64 [rows + 1], row r = examples
  [first[r], first[r + 1]); lengths above row_len count as row_len (cut). Not packed: one each."""
  if not packed:
    return np.arange(len(lengths) + 1, dtype=np.int64)
  first, fill = [0], 0
  for k, n in enumerate(np.minimum(lengths, row_len).tolist()):
    if fill + n > row_len:
      first.append(k)
      fill = 0
    fill += n
  if fill:
    first.append(len(lengths))
  return np.asarray(first, np.int64)


def left_cut(mask_T: np.ndarray, row_len: int) -> int:
  """Tokens an over-long example drops from its start: its prompt (the tokens before its first
  target) but the prompt's last token (so the first target keeps a context), at most the excess."""
  prompt = int(np.argmax(mask_T > 0)) if (mask_T > 0).any() else len(mask_T)
  return min(max(prompt - 1, 0), len(mask_T) - row_len)


class PackedExamples:
  """grain random-access source: row r = the examples packed into it (see the module doc)."""

  def __init__(self, split: shards.PreparedSplit, seq_len: int, layout: Layout = DEFAULT):
    self.split, self.row_len, self.layout = split, seq_len + 1, layout
    self._reader = shards.PackedRows(split, seq_len)  # positioned reads of tokens and mask.
    ends = self._reader.example_ends()
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    self.num_split_examples = len(ends)
    self.index = carve(len(ends), layout)
    self.starts, self.lengths = starts[self.index], (ends - starts)[self.index]
    self.first = pack(self.lengths, self.row_len, layout.pack)
    self.num_rows = len(self.first) - 1
    self.skip = self._cut()  # {example: tokens dropped from its start} (left truncation).

  def _cut(self) -> dict[int, int]:
    """Where each over-long example starts reading; logs the count of cut examples once."""
    long = np.flatnonzero(self.lengths > self.row_len)
    skip = {}
    if self.layout.truncation == 'left':
      for k in long.tolist():
        start = int(self.starts[k])
        mask = self._reader.tokens(start, start + int(self.lengths[k]), 'mask')
        skip[k] = left_cut(mask, self.row_len)
    if len(long):
      ends = sum(int(self.lengths[k]) - skip.get(k, 0) > self.row_len for k in long.tolist())
      how = (
        f'their prompts cut from the left, completions kept; {ends} also cut at the end (the '
        'targets alone are longer than a row)'
        if self.layout.truncation == 'left'
        else 'cut at the end (config.data.truncation=right)'
      )
      part = ' (the held-out eval set)' if self.layout.held_out else ' (training)'
      logging.warning(
        '%s: %d of %d examples%s are longer than config.data.seq_len+1=%d: %s',
        self.split.path,
        len(long),
        len(self.lengths),
        part if self.layout.holdout else '',
        self.row_len,
        how,
      )
    return {k: s for k, s in skip.items() if s}

  def __len__(self) -> int:
    return self.num_rows

  def _read(self, starts: np.ndarray, lengths: np.ndarray, field: str) -> np.ndarray:
    """Tokens (or mask) of examples at `starts`, `lengths` long: one read per adjacent stretch."""
    ends, pieces, lo = starts + lengths, [], 0
    for j in range(1, len(starts) + 1):
      if j == len(starts) or starts[j] != ends[j - 1]:
        pieces.append(self._reader.tokens(int(starts[lo]), int(ends[j - 1]), field))
        lo = j
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)

  def __getitem__(self, r: int) -> dict[str, np.ndarray]:
    r = int(r) % self.num_rows
    lo, hi = int(self.first[r]), int(self.first[r + 1])
    lengths = np.minimum(self.lengths[lo:hi], self.row_len)  # only a row's lone example is cut.
    starts = self.starts[lo:hi] + np.asarray([self.skip.get(k, 0) for k in range(lo, hi)])
    tokens, mask = (self._read(starts, lengths, f) for f in ('tokens', 'mask'))
    used = int(lengths.sum())
    pad = self.row_len - used
    segment_ids = np.repeat(np.arange(1, hi - lo + 1, dtype=np.int32), lengths)
    positions = np.arange(used, dtype=np.int32) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    fill = lambda x, v: np.concatenate([x, np.full(pad, v, np.int32)]).astype(np.int32)
    return {
      'tokens': fill(tokens, self.split.manifest['eos_id']),
      'loss_mask': fill(mask, 0),
      'segment_ids': fill(segment_ids, 0),
      'positions': fill(positions, 0),
    }


def as_packed(row_L1: np.ndarray) -> dict[str, np.ndarray]:
  """A plain pre-training row as a packed one (one segment, every token a target), so it can
  share a batch with supervised rows (a mixture); its loss is the plain row's (to rounding)."""
  n = len(row_L1)
  return {
    'tokens': row_L1,
    'loss_mask': np.ones(n, np.int32),
    'segment_ids': np.ones(n, np.int32),
    'positions': np.arange(n, dtype=np.int32),
  }


def num_targets(batch: dict[str, np.ndarray]) -> int:
  """Target tokens of a packed batch [B, L+1] as the loss counts them (models/loss.py)."""
  seg = batch['segment_ids']
  return int(((batch['loss_mask'][:, 1:] > 0) & (seg[:, 1:] == seg[:, :-1])).sum())
