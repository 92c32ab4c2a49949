"""Supervised examples packed whole into rows of seq_len + 1, with segment ids (a grain source).

Row r holds consecutive examples of the split's stream in file order, as many as fit (greedy); an
example longer than a row fills one alone, cut to its first seq_len + 1 tokens. A row is a dict of
int32 [seq_len + 1] arrays: 'tokens', 'loss_mask' (1: a target), 'segment_ids' (1, 2, ... per
example, 0 on the padding after the last) and 'positions' (0, 1, ... restarting per example). The
packing is a function of the example lengths only, computed when the source opens (16 bytes per
example held: its start and row); rows are then read with one positioned read per field.
"""

import logging

import numpy as np

from train.data import shards

KEYS = ('tokens', 'loss_mask', 'segment_ids', 'positions')  # models/loss.py PACKED_KEYS + tokens.


def pack(lengths: np.ndarray, row_len: int) -> np.ndarray:
  """Greedy packing of examples (in order) into rows: int64 [rows + 1], row r = examples
  [first[r], first[r + 1]); lengths above row_len count as row_len (cut)."""
  first, fill = [0], 0
  for k, n in enumerate(np.minimum(lengths, row_len).tolist()):
    if fill + n > row_len:
      first.append(k)
      fill = 0
    fill += n
  if fill:
    first.append(len(lengths))
  return np.asarray(first, np.int64)


class PackedExamples:
  """grain random-access source: row r = the examples packed into it (see the module doc)."""

  def __init__(self, split: shards.PreparedSplit, seq_len: int):
    self.split, self.row_len = split, seq_len + 1
    self._reader = shards.PackedRows(split, seq_len)  # positioned reads of tokens and mask.
    ends = self._reader.example_ends()
    self.starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    self.lengths = ends - self.starts
    self.first = pack(self.lengths, self.row_len)
    self.num_rows = len(self.first) - 1
    cut = int((self.lengths > self.row_len).sum())
    if cut:
      logging.warning(
        '%s: %d of %d examples are longer than config.data.seq_len+1=%d and were cut to it',
        split.path,
        cut,
        len(self.lengths),
        self.row_len,
      )

  def __len__(self) -> int:
    return self.num_rows

  def __getitem__(self, r: int) -> dict[str, np.ndarray]:
    r = int(r) % self.num_rows
    lo, hi = int(self.first[r]), int(self.first[r + 1])
    lengths = np.minimum(self.lengths[lo:hi], self.row_len)  # only a row's lone example is cut.
    start, used = int(self.starts[lo]), int(lengths.sum())
    tokens = self._reader.tokens(start, start + used)
    mask = self._reader.tokens(start, start + used, 'mask')
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
