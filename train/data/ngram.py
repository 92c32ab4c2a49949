"""n-gram references: the eval-split cross-entropy of a count model of the train split.

  python -m train.data.ngram --config=configs/default.py [--orders=1,2,3]

A model's eval loss means little until it is set beside what counting does: a unigram (the byte
entropy), bigram and trigram model fitted on the train split and scored on the eval split, in the
model's own units (nats per token, and bits per byte). Interpolated absolute discounting (Ney,
Essen & Kneser 1994, D = 0.75) backs each order off to the one below; the unigram is add-one
smoothed, so every token of the vocabulary has mass. Small vocabularies only (V^order counts).
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from absl import flags
from ml_collections import config_flags

from configs import schema
from train import cli
from train.data import pipeline, shards, sources, tokenizers

DISCOUNT = 0.75
MAX_TABLE = 2**26  # cells of the largest count table (V^order): 512 MiB of float64.


@dataclasses.dataclass(frozen=True)
class Reference:
  order: int
  nats_per_token: float
  bits_per_byte: float


def tokens_of(split: shards.PreparedSplit) -> np.ndarray:
  """Every token of a prepared split, in stream order (EOS-separated documents)."""
  parts = []
  for i in range(split.num_shards):
    with open(split.shard_path(i), 'rb') as f:
      parts.append(np.frombuffer(f.read(), split.dtype))
  return np.concatenate(parts).astype(np.int64)


def _contexts(ids: np.ndarray, k: int, vocab: int) -> np.ndarray:
  """The index of the k tokens before each position k.. (base-`vocab` number)."""
  n = len(ids) - k
  h = np.zeros(n, np.int64)
  for j in range(k):
    h = h * vocab + ids[j : j + n]
  return h


def probabilities(train: np.ndarray, vocab: int, order: int) -> np.ndarray:
  """P(w | previous order-1 tokens) as a [V^(order-1), V] table, interpolated absolute discounting."""
  if vocab**order > MAX_TABLE:
    raise ValueError(f'--orders: a {order}-gram table of vocab {vocab} has {vocab**order} cells')
  p = (np.bincount(train, minlength=vocab) + 1.0) / (len(train) + vocab)
  table = p[None, :]
  for k in range(1, order):
    h = _contexts(train, k, vocab)
    c = np.bincount(h * vocab + train[k:], minlength=vocab ** (k + 1)).reshape(-1, vocab)
    total = c.sum(1, keepdims=True)
    types = (c > 0).sum(1, keepdims=True)
    lower = table[np.arange(vocab**k) % vocab ** (k - 1)]  # back off: drop the oldest token
    seen = np.maximum(total, 1)
    interp = np.maximum(c - DISCOUNT, 0) / seen + DISCOUNT * types / seen * lower
    table = np.where(total > 0, interp, lower)
  return table


def cross_entropy(table: np.ndarray, ids: np.ndarray, vocab: int, order: int) -> float:
  """Mean -log P (nats) of ids[order-1:] under `table` (probabilities)."""
  k = order - 1
  h = _contexts(ids, k, vocab) if k else np.zeros(len(ids), np.int64)
  return float(-np.log(table[h, ids[k:]]).mean())


def references(config: schema.Config | schema.Section, orders: Sequence[int]) -> list[Reference]:
  """The n-gram references of the first data source of `config` (train counts, eval scored)."""
  tokenizer = tokenizers.make_tokenizer(config.data.tokenizer)
  source = sources.parse_sources(config.data)[0]
  train = pipeline.open_prepared(config.data, source, source.train_split, tokenizer)
  evals = pipeline.open_prepared(config.data, source, source.eval_split, tokenizer)
  vocab = config.model.vocab_size
  train_ids, eval_ids = tokens_of(train), tokens_of(evals)
  if max(train_ids.max(), eval_ids.max()) >= vocab:
    raise ValueError(f'config.model.vocab_size={vocab} is smaller than the prepared token ids')
  out = []
  for order in orders:
    nats = cross_entropy(probabilities(train_ids, vocab, order), eval_ids, vocab, order)
    out.append(Reference(order, nats, nats / math.log(2) / evals.bytes_per_token))
  return out


def eval_set_spread(config: schema.Config | schema.Section, order: int, draws: int) -> dict:
  """How much an eval set of n rows (config.train's eval_batches x eval batch) moves a fixed
  model's loss: the `order`-gram's nats/token on `draws` spread sets (row j of n is row
  floor((j + u) n_rows / n), u = i / draws) and on `draws` contiguous sets (n rows from an offset
  spaced over the split, what 'first' measures at offset 0); each set's mean over its rows."""
  tokenizer = tokenizers.make_tokenizer(config.data.tokenizer)
  source = sources.parse_sources(config.data)[0]
  train = pipeline.open_prepared(config.data, source, source.train_split, tokenizer)
  evals = pipeline.open_prepared(config.data, source, source.eval_split, tokenizer)
  vocab, row = config.model.vocab_size, config.data.seq_len + 1
  ids = tokens_of(evals)
  k = order - 1
  table = probabilities(tokens_of(train), vocab, order)
  nll = np.zeros(len(ids))
  nll[k:] = -np.log(table[_contexts(ids, k, vocab) if k else 0, ids[k:]])
  n_rows = len(ids) // row
  per_row = nll[: n_rows * row].reshape(n_rows, row)[:, 1:].mean(1)  # row r's targets 1..L.
  n = config.train.eval_batches * (config.train.eval_batch_size or config.train.global_batch_size)
  j = np.arange(n)
  spread = [per_row[((j + i / draws) * n_rows / n).astype(np.int64)].mean() for i in range(draws)]
  starts = np.linspace(0, n_rows - n, draws).astype(np.int64)
  first = [per_row[s : s + n].mean() for s in starts]
  return {
    'order': order,
    'rows': n,
    'split_rows': n_rows,
    'whole_split': float(per_row.mean()),
    **{
      f'{name}_{stat}': float(f(v))
      for name, v in (('spread', spread), ('contiguous', first))
      for stat, f in (('mean', np.mean), ('sd', np.std), ('min', np.min), ('max', np.max))
    },
    'spread_default': float(spread[0]),
    'first_default': float(first[0]),
  }


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  with cli.one_line_errors():
    if f.eval_sets:
      r = eval_set_spread(f.config, int(f.orders[-1]), f.eval_sets)
      print(
        f"{r['order']}-gram nats/token on eval sets of {r['rows']} of the split's "
        f'{r["split_rows"]} rows (whole split {r["whole_split"]:.4f}); {f.eval_sets} sets each:'
      )
      for name in ('spread', 'contiguous'):
        mean, sd = r[f'{name}_mean'], r[f'{name}_sd']
        print(
          f'  {name:<10} mean {mean:.4f}  sd {sd:.4f} ({100 * sd / mean:.2f} %)  '
          f'range {r[f"{name}_min"]:.4f}-{r[f"{name}_max"]:.4f}'
        )
      print(f'  the default sets: spread {r["spread_default"]:.4f}, first {r["first_default"]:.4f}')
      return
    orders = [int(o) for o in f.orders]
    for r in references(f.config, orders):
      print(
        f'{r.order}-gram: {r.nats_per_token:.4f} nats/token, {r.bits_per_byte:.4f} bits/byte',
        flush=True,
      )


if __name__ == '__main__':  # flags defined here: importing the module defines none.
  config_flags.DEFINE_config_file('config', None, 'Training config file (path[:arg]).')
  flags.DEFINE_list('orders', ['1', '2', '3'], 'n-gram orders to report.')
  flags.DEFINE_integer(
    'eval_sets', 0, '> 0: the eval-set spread (this many spread and contiguous sets; last order)'
  )
  flags.mark_flag_as_required('config')
  cli.run(main)
