"""Prepared token shards -> packed rows -> (mixed) per-host batches served by step, via grain.

The batch at step s is a pure function of (seed, s): global sequence g = s*B + j is row
`shuffle_e(k)` of its source, where the mixture (grain's deterministic weighted interleave) maps
g to (source, k) and each source's rows are permuted per epoch e by grain's index shuffle (O(1)
memory, seeded from (seed, source)). Host p of P reads global sequences [p*B/P, (p+1)*B/P) of
every step and nothing else, so resuming needs only the step, on any number of hosts. Sequential
steps are read ahead by grain reader threads (config.data.read_threads).

Supervised (`jsonl:`) sources serve rows of whole examples with a loss mask, segment ids and
positions (train/data/examples.py, packed or one per row, over-long prompts cut from the left);
when a training mixture has one, every row comes in that form (plain rows as one segment) and
`batch_arrays(step)` has those keys beside 'tokens'. Without one it is {'tokens': ...} alone. A
`jsonl:` source without a file for its eval split has its eval set carved from its training
examples (config.data.eval_fraction of them, spread over the file), which training then skips.
"""

import dataclasses
import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from configs import schema
from train.data import embedded, examples, jsonl_shards, shards, sources, tokenizers, writer
from train.data.sources import DataSection, Source, parse_sources


def open_prepared(
  data: DataSection, source: Source, split: str, tokenizer: tokenizers.Tokenizer
) -> shards.PreparedSplit:
  """The prepared split, checked against the tokenizer; the embedded corpora are prepared here
  when missing, any other dataset must be prepared first (`python -m train.data.prepare`)."""
  request = writer.SplitRequest.of(data, source, split)
  field = 'config.data.prepared_dir' if data.prepared_dir else 'config.data.dataset'
  expect = {'tokenizer': data.tokenizer, 'tokenizer_fingerprint': tokenizer.fingerprint}
  if source.is_jsonl:  # a changed file is refused, not read through its old shards.
    path = jsonl_shards.source_file(source.dataset, split)
    expect |= {'source': path, 'source_fingerprint': jsonl_shards.fingerprint(path)}
  try:
    return shards.open_split(request.out_dir, field, expect)
  except FileNotFoundError:
    writer.check_known(source.dataset, data.data_dir)
    if not embedded.is_embedded(source.dataset) and not source.is_jsonl:
      raise ValueError(
        f'config.data.dataset={source.dataset!r}: split {split!r} is not prepared (no '
        f'{shards.MANIFEST} in {request.out_dir}); run `python -m train.data.prepare` once with '
        'this config (on every host of a pod, or one machine writing to a shared gs:// '
        'config.data.prepared_dir)'
      ) from None
  logging.info('Preparing %s/%s (local) in %s', source.dataset, split, request.out_dir)
  writer.prepare_split(request)
  return shards.open_split(request.out_dir, field, expect)


Rows = shards.PackedRows | examples.PackedExamples


def _rows(
  split: shards.PreparedSplit,
  seq_len: int,
  min_rows: int,
  what: str,
  layout: examples.Layout = examples.DEFAULT,
) -> Rows:
  """The split's rows of seq_len + 1: stream windows, or whole examples (supervised, `layout`)."""
  if split.supervised:
    rows = examples.PackedExamples(split, seq_len, layout)
  else:
    rows = shards.PackedRows(split, seq_len)
  if len(rows) < min_rows:
    raise ValueError(
      f'{what} ({split.path}) has {split.num_tokens} tokens = {len(rows)} rows of '
      f'config.data.seq_len+1={seq_len + 1}, fewer than the {min_rows} needed '
      '(config.train.global_batch_size); use more data or a smaller seq_len/batch.'
    )
  return rows


def _shuffle_seed(seed: int, source_index: int) -> int:
  """A 32-bit seed per (config seed, source) for grain's index shuffle."""
  return int(np.random.SeedSequence([seed % 2**63, source_index, 0x5EED]).generate_state(1)[0])


def _host_slice(
  ds: grain.MapDataset, global_batch_size: int, process_index: int, process_count: int
) -> grain.MapDataset:
  """Element s: host p's [B/P, L+1] int32 rows of global batch s (ds: global sequences)."""
  if global_batch_size % process_count:
    raise ValueError(
      f'config.train.global_batch_size={global_batch_size} is not divisible by '
      f'the number of processes ({process_count}).'
    )
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, {process_count}).')
  return ds.batch(global_batch_size // process_count, drop_remainder=True)[
    process_index::process_count
  ]


class _Prefetched:
  """`get(i)` of a MapDataset, read ahead by grain threads while i increases one by one."""

  def __init__(self, ds: grain.MapDataset, read_threads: int):
    self._ds, self._threads = ds, read_threads
    self._it, self._next, self._last = None, None, None

  def get(self, i: int) -> np.ndarray:
    if self._it is not None and i == self._next:
      out = next(self._it)
    else:
      self.close()
      if self._threads and self._last is not None and i == self._last + 1:
        opts = grain.ReadOptions(num_threads=self._threads, prefetch_buffer_size=2 * self._threads)
        self._it = iter(self._ds[i:].to_iter_dataset(opts))
        out = next(self._it)
      else:  # random access (first call, a jump): read just this one.
        out = self._ds[i]
    self._last, self._next = i, i + 1
    return out

  def close(self) -> None:
    """Stop the read-ahead threads (also when the stream is dropped, e.g. between sweep runs)."""
    if self._it is not None:
      getattr(self._it, 'close', lambda: None)()
      self._it = None

  __del__ = close


class TrainStream:
  """This host's rows of each step's global training batch; `batch(step)` is a pure function
  of (seed, step), read lazily from the prepared shards of every source (`layouts`: one per
  split, for its supervised rows; default examples.DEFAULT)."""

  def __init__(
    self,
    splits: list[tuple[Source, shards.PreparedSplit]],
    seq_len: int,
    global_batch_size: int,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    read_threads: int = 4,
    layouts: Sequence[examples.Layout] | None = None,
  ):
    self.sources = [s for s, _ in splits]
    self.splits = [split for _, split in splits]
    self.seq_len, self.global_batch_size, self.seed = seq_len, global_batch_size, seed
    self.process_index, self.process_count = process_index, process_count
    self.local_batch_size = global_batch_size // max(process_count, 1)
    # Rows carry loss mask, segment ids and positions when any trained source is supervised.
    self.packed = any(split.supervised for s, split in splits if s.weight > 0)
    self.rows: list[Rows] = []  # each trained source's rows, in order.
    parts, weights = [], []
    layouts = layouts or [examples.DEFAULT] * len(splits)
    for i, (source, split) in enumerate(splits):
      if source.weight == 0:
        continue  # an eval-only source.
      rows = _rows(
        split,
        seq_len,
        global_batch_size,
        f'config.data.dataset {source.dataset!r} split {source.train_split!r}',
        layouts[i],
      )
      self.rows.append(rows)
      part = grain.MapDataset.source(rows).shuffle(seed=_shuffle_seed(seed, i)).repeat()
      if self.packed and not split.supervised:
        part = part.map(examples.as_packed)
      parts.append(part)
      weights.append(source.weight)
    mixed = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)
    self._batches = _Prefetched(
      _host_slice(mixed, global_batch_size, process_index, process_count), read_threads
    )

  def batch(self, step: int) -> np.ndarray:
    """int32 [global_batch_size / processes, seq_len + 1]; inputs = [:, :-1], targets = [:, 1:]."""
    out = self._batches.get(step)
    return out['tokens'] if self.packed else out

  def batch_arrays(self, step: int) -> dict[str, np.ndarray]:
    """{'tokens': batch(step)}, plus 'loss_mask', 'segment_ids' and 'positions' (each int32
    [B / processes, seq_len + 1]) when packed; a packed batch without a target is a ValueError."""
    out = self._batches.get(step)
    if not self.packed:
      return {'tokens': out}
    if examples.num_targets(out) == 0:
      raise ValueError(
        f'config.data.dataset={",".join(s.dataset for s in self.sources)}: the rows of step '
        f'{step} (process {self.process_index}) have no target token (loss mask all zero, e.g. '
        f'examples cut at config.data.seq_len+1={self.seq_len + 1}); use longer rows or other data'
      )
    return out


class _Picked:
  """grain random-access source: rows[index[i]]."""

  def __init__(self, rows: Rows, index: np.ndarray):
    self._rows, self._index = rows, index

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, i: int) -> Any:
    return self._rows[int(self._index[i])]


def eval_index(num_rows: int, n: int, how: str) -> np.ndarray:
  """The split's row numbers of an eval set of n rows: 'spread' (row j is floor(j * num_rows / n):
  strided windows over every part of the split) or 'first' (rows 0..n-1, wrapping around)."""
  j = np.arange(n, dtype=np.int64)
  return (j * num_rows) // n if how == 'spread' else j % num_rows


class EvalSource:
  """One source's eval set (eval_index's rows, in split order), this host's part of each batch."""

  def __init__(
    self,
    source: Source,
    split: shards.PreparedSplit,
    seq_len: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    num_batches: int = 1,
    how: str = 'spread',
    layout: examples.Layout = examples.DEFAULT,
  ):
    self.source, self.split = source, split
    self.weight = source.weight
    self.packed = split.supervised
    rows = _rows(
      split,
      seq_len,
      1,
      f'config.data.dataset {source.dataset!r} split {source.eval_split!r}',
      layout,
    )
    self.num_rows = len(rows)
    self.index = eval_index(self.num_rows, num_batches * global_batch_size, how)
    self.rows, self.how = rows, how
    self._batches = _host_slice(
      grain.MapDataset.source(_Picked(rows, self.index)),
      global_batch_size,
      process_index,
      process_count,
    )

  @functools.cached_property
  def _description(self) -> dict:
    return self._describe()

  def describe(self) -> dict:
    """_describe's dict, read once (loop, group and log ask for it)."""
    return dict(self._description)

  def _describe(self) -> dict:
    """What the eval set covers: its rows, the split's, their stride and span, and the document
    segments the rows hold (EOS-separated pieces; packed examples: one each)."""
    segments, eos = len(self.index), self.split.manifest.get('eos_id')
    if not self.packed and eos is not None:
      segments = sum(int(np.sum(self.rows[int(i)][:-1] == eos)) + 1 for i in self.index)
    span = (int(self.index.max()) - int(self.index.min()) + 1) / self.num_rows
    return {
      'eval_set': self.how,
      'eval_rows': len(self.index),
      'eval_split_rows': self.num_rows,
      'eval_span': round(span, 4),
      'eval_doc_segments': segments,
    }

  @property
  def bytes_per_token(self) -> float:
    return self.split.bytes_per_token

  def eval_batch(self, i: int) -> np.ndarray:
    """Rows [i*B + p*B/P, ...) mod num_rows: int32 [B/P, seq_len + 1]."""
    out = self._batches[i]
    return out['tokens'] if self.packed else out

  def eval_arrays(self, i: int) -> dict[str, np.ndarray]:
    """eval_batch(i) as a batch dict: with the packed keys for a supervised source."""
    out = self._batches[i]
    return out if self.packed else {'tokens': out}


class EvalStream:
  """The eval split of every source; `metrics` turns per-source mean sums into eval/ metrics."""

  def __init__(self, sources: list[EvalSource]):
    self.sources = {s.source.name: s for s in sources}
    self._primary = max(sources, key=lambda s: s.weight)

  def eval_batch(self, i: int) -> np.ndarray:
    """The (heaviest) source's eval batch i: for tools that probe one fixed batch."""
    return self._primary.eval_batch(i)

  def describe(self) -> dict:
    """EvalSource.describe of the heaviest source (a result's eval_* fields)."""
    return self._primary.describe()

  @property
  def bytes_per_token(self) -> float:
    """Raw bytes per token of the mixture (weights as in training)."""
    return sum(s.weight * s.bytes_per_token for s in self.sources.values())

  @property
  def unigram_byte_entropy_bits(self) -> float:
    """Entropy of the mixture's byte distribution (each source's histogram weighted)."""
    hist = sum(
      s.weight * s.split.stats.byte_histogram / max(s.split.stats.num_bytes, 1)
      for s in self.sources.values()
    )
    return shards.entropy_bits(np.asarray(hist))

  def metrics(self, means: dict[str, dict[str, float]]) -> dict[str, float]:
    """{source name: {key: mean per token}} -> eval/<key> (weighted over sources) and
    eval/bits_per_byte; with several sources also eval/<source>/<key> and its bits/byte."""
    out = {}
    for name, m in means.items():
      src = self.sources[name]
      if len(means) > 1:
        out.update({f'eval/{name}/{k}': v for k, v in m.items()})
        out[f'eval/{name}/bits_per_byte'] = m['loss'] / math.log(2) / src.bytes_per_token
    weights = {n: self.sources[n].weight for n in means}
    total = sum(weights.values()) or 1.0
    for k in next(iter(means.values())):
      out[f'eval/{k}'] = sum(weights[n] * means[n][k] for n in means) / total
    # Bits per byte of raw text: nats/token -> bits/token -> bits/byte; compares across tokenizers.
    bpt = sum(weights[n] * self.sources[n].bytes_per_token for n in means) / total
    out['eval/bits_per_byte'] = out['eval/loss'] / math.log(2) / bpt
    return out


def _layouts(data: DataSection, source: Source) -> tuple[examples.Layout, examples.Layout, bool]:
  """(training layout, eval layout, carved) of a source from config.data."""
  base = examples.Layout(pack=data.pack, truncation=data.truncation)
  if not source.carves_eval:
    return base, base, False
  cut = dataclasses.replace(base, holdout=data.eval_fraction)
  return cut, dataclasses.replace(cut, held_out=True), True


def _log_source(source: Source, train: shards.PreparedSplit, ev: EvalSource, carved: bool) -> None:
  """One line per source: its training tokens and what its eval set covers (carved: from which
  file, how many examples, and that training skips them)."""
  e = ev.describe()
  of = 'the held-out examples' if carved else f'{ev.split.num_tokens} tokens'
  covers = (
    f'eval {e["eval_rows"]} of the {e["eval_split_rows"]} rows of {of} ({e["eval_set"]}, '
    f'spanning {100 * e["eval_span"]:.0f}% of them, {e["eval_doc_segments"]} document segments)'
  )
  name = f'Data source {source.dataset} (weight {source.weight:.3g})'
  if not carved:
    logging.info('%s: train %d tokens in %s; %s', name, train.num_tokens, train.path, covers)
    return
  held = ev.rows
  logging.info(
    '%s: no %s, so the eval set is carved from %s: %d of its %d examples '
    '(config.data.eval_fraction=%g, spread over the file) are held out and excluded from '
    'training, which reads the other %d; %s',
    name,
    sources.jsonl_path(source.dataset, source.eval_split),
    sources.jsonl_path(source.dataset, source.train_split),
    len(held.index),
    held.num_split_examples,
    held.layout.holdout,
    held.num_split_examples - len(held.index),
    covers,
  )


def make_datasets(
  config: schema.Config | schema.Section, process_index: int, process_count: int
) -> tuple[TrainStream, EvalStream, tokenizers.Tokenizer]:
  """(TrainStream, EvalStream, tokenizer) for this host from config.data / config.train."""
  d = config.data
  sources_ = parse_sources(d)
  tokenizer = tokenizers.make_tokenizer(d.tokenizer)
  tokenizers.check_vocab(tokenizer, config.model.vocab_size)
  train, layouts, evals = [], [], []
  eval_batch = config.train.eval_batch_size or config.train.global_batch_size
  for s in sources_:
    train_layout, eval_layout, carved = _layouts(d, s)
    train.append((s, open_prepared(d, s, s.train_split, tokenizer)))
    layouts.append(train_layout)
    split = train[-1][1] if carved else open_prepared(d, s, s.eval_split, tokenizer)
    evals.append(
      EvalSource(
        s,
        split,
        d.seq_len,
        eval_batch,
        process_index,
        process_count,
        config.train.eval_batches,
        config.train.eval_set,
        eval_layout,
      )
    )
    _log_source(s, train[-1][1], evals[-1], carved)
  train_ds = TrainStream(
    train,
    d.seq_len,
    config.train.global_batch_size,
    config.seed,
    process_index,
    process_count,
    d.read_threads,
    layouts,
  )
  return train_ds, EvalStream(evals), tokenizer
