"""TFDS text split -> tokenized, EOS-separated stream -> packed rows served by step number.

Batches are a pure function of (seed, step, process), so resuming needs only the step, and each
host computes just its own slice of the global batch.
"""
import dataclasses
import difflib
import json
import logging
import os
import re
import time
import uuid

import numpy as np
import tensorflow_datasets as tfds

from train.data import stdlib_corpus
from train.data import tokenizers

_EMBEDDED_DATASETS = (stdlib_corpus.StdlibCorpus.name,)
_READ_BATCH = 256  # documents per tf.data batch / tokenizer call.


@dataclasses.dataclass
class TokenStream:
  """One split as a flat token array (EOS after every document) plus raw-byte statistics."""

  tokens: np.ndarray            # 1-D, uint16 or int32.
  num_documents: int
  num_bytes: int                # UTF-8 bytes of all documents, EOS not counted.
  byte_histogram: np.ndarray    # [256] counts of the raw document bytes.

  @property
  def num_tokens(self) -> int:
    return int(self.tokens.shape[0])

  @property
  def bytes_per_token(self) -> float:
    """Raw bytes per token (EOS included): bits/byte = loss_bits_per_token / bytes_per_token."""
    return self.num_bytes / max(self.num_tokens, 1)

  @property
  def unigram_byte_entropy_bits(self) -> float:
    """Shannon entropy of the byte histogram: a bits/byte baseline a model should beat."""
    p = self.byte_histogram[self.byte_histogram > 0] / max(self.num_bytes, 1)
    return float(-(p * np.log2(p)).sum())


def load_builder(dataset: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder; prepares it if needed (offline only for the embedded corpus)."""
  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    close = difflib.get_close_matches(dataset, tfds.list_builders(), n=1)
    hint = f'did you mean {close[0]!r}? ' if close else ''
    raise ValueError(f'config.data.dataset={dataset!r}: no such TFDS dataset ({hint}see '
                     '`tfds.list_builders()`, or register your own builder)') from None
  try:
    builder.download_and_prepare()
  except Exception as e:  # Network/manual-download failures come in many types.
    if dataset in _EMBEDDED_DATASETS:
      raise
    raise ValueError(
        f'config.data.dataset={dataset!r} is not prepared in config.data.data_dir={data_dir!r} '
        'and could not be downloaded/prepared here; prepare it where the source is reachable '
        f'(tfds build {dataset} --data_dir=...) and point data_dir at it.') from e
  return builder


def _cache_path(builder, split: str, text_key: str, tokenizer, max_documents: int) -> str:
  safe_split = re.sub(r'[^A-Za-z0-9_.-]+', '_', split)
  name = f'{safe_split}.{text_key}.{tokenizer.fingerprint}.docs{max_documents or "all"}.npy'
  return os.path.join(os.fspath(builder.data_dir), 'tokenized', name)


def _tokenize(builder, split: str, text_key: str, tokenizer, max_documents: int) -> TokenStream:
  features = builder.info.features
  if text_key not in features:
    raise ValueError(f'config.data.text_key={text_key!r} is not a feature of '
                     f'{builder.info.full_name}; it has {sorted(features.keys())}.')
  ds = builder.as_dataset(split=split, shuffle_files=False)
  if max_documents > 0:
    ds = ds.take(max_documents)
  ds = ds.map(lambda ex: ex[text_key]).batch(_READ_BATCH)
  eos = np.array([tokenizer.eos_id], dtype=np.int64)
  pieces, hist, num_docs, num_bytes = [], np.zeros(256, np.int64), 0, 0
  for docs in tfds.as_numpy(ds):
    docs = list(docs)
    for doc in docs:
      raw = np.frombuffer(doc, dtype=np.uint8)
      hist += np.bincount(raw, minlength=256)
      num_bytes += raw.size
    for ids in tokenizer.encode_batch(docs):
      pieces += [ids, eos]
    num_docs += len(docs)
  dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
  tokens = np.concatenate(pieces).astype(dtype) if pieces else np.zeros(0, dtype)
  return TokenStream(tokens, num_docs, num_bytes, hist)


def _save(stream: TokenStream, path: str) -> None:
  """Write tokens (.npy) and stats (.json) via temp files + rename, so readers never see halves."""
  import tensorflow as tf  # Already loaded by tfds; gfile also handles gs:// data_dirs.
  tf.io.gfile.makedirs(os.path.dirname(path))
  stats = {'num_documents': stream.num_documents, 'num_bytes': stream.num_bytes,
           'byte_histogram': stream.byte_histogram.tolist()}
  tmp = f'{path}.tmp-{uuid.uuid4().hex}'
  with tf.io.gfile.GFile(tmp + '.json', 'w') as f:
    json.dump(stats, f)
  with tf.io.gfile.GFile(tmp, 'wb') as f:
    np.save(f, stream.tokens)
  tf.io.gfile.rename(tmp + '.json', path + '.json', overwrite=True)
  tf.io.gfile.rename(tmp, path, overwrite=True)  # .npy last: its presence means complete.


def _load(path: str) -> TokenStream | None:
  import tensorflow as tf
  if not (tf.io.gfile.exists(path) and tf.io.gfile.exists(path + '.json')):
    return None
  with tf.io.gfile.GFile(path + '.json', 'r') as f:
    stats = json.load(f)
  if '://' in path:
    with tf.io.gfile.GFile(path, 'rb') as f:
      tokens = np.load(f)
  else:
    tokens = np.load(path, mmap_mode='r')
  return TokenStream(tokens, stats['num_documents'], stats['num_bytes'],
                     np.asarray(stats['byte_histogram'], np.int64))


def load_token_stream(dataset: str, split: str, tokenizer, data_dir: str | None = None,
                      text_key: str = 'text', max_documents: int = 0) -> TokenStream:
  """Tokenized split, read from the .npy cache beside the TFDS data or built and cached."""
  builder = load_builder(dataset, data_dir)
  path = _cache_path(builder, split, text_key, tokenizer, max_documents)
  stream = _load(path)
  if stream is None:
    start = time.time()
    stream = _tokenize(builder, split, text_key, tokenizer, max_documents)
    _save(stream, path)
    logging.info('Tokenized %s/%s: %d docs, %d bytes -> %d tokens in %.1fs; cached at %s',
                 dataset, split, stream.num_documents, stream.num_bytes, stream.num_tokens,
                 time.time() - start, path)
  return stream


class PackedDataset:
  """Non-overlapping rows of seq_len+1 tokens; `batch(step)` is this host's slice of step's batch.

  Global sequence ids step*B .. step*B+B-1 index an endless series of epochs; with shuffle, epoch e
  visits rows in the order `default_rng([seed, e]).permutation(num_rows)`, else in file order
  (wrapping around). Host p of P gets global rows [p*B/P, (p+1)*B/P).
  """

  def __init__(self, stream: TokenStream, seq_len: int, global_batch_size: int, seed: int = 0,
               process_index: int = 0, process_count: int = 1, shuffle: bool = True):
    if global_batch_size % process_count:
      raise ValueError(f'config.train.global_batch_size={global_batch_size} is not divisible by '
                       f'the number of processes ({process_count}).')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index} not in [0, {process_count}).')
    row_len = seq_len + 1
    num_rows = stream.num_tokens // row_len
    min_rows = global_batch_size if shuffle else 1
    if num_rows < min_rows:
      raise ValueError(
          f'Split has {stream.num_tokens} tokens = {num_rows} rows of config.data.seq_len+1='
          f'{row_len}, fewer than the {min_rows} needed (config.train.global_batch_size='
          f'{global_batch_size}); use more data or a smaller seq_len/batch.')
    self.stream = stream
    self.seq_len = seq_len
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count
    self.shuffle = shuffle
    self.num_rows = num_rows
    self._rows = stream.tokens[:num_rows * row_len].reshape(num_rows, row_len)
    self._perms = {}

  @property
  def bytes_per_token(self) -> float:
    return self.stream.bytes_per_token

  @property
  def unigram_byte_entropy_bits(self) -> float:
    return self.stream.unigram_byte_entropy_bits

  @property
  def steps_per_epoch(self) -> int:
    """Full global batches per pass over the rows (eval: batches that cover the split once)."""
    if self.shuffle:
      return self.num_rows // self.global_batch_size
    return -(-self.num_rows // self.global_batch_size)

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) >= 2:  # A batch spans at most two epochs.
        self._perms.pop(min(self._perms))
      self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
    return self._perms[epoch]

  def row_ids(self, step: int) -> np.ndarray:
    """Indices into the packed rows of this host's part of the global batch at `step`."""
    b = self.local_batch_size
    ids = step * self.global_batch_size + self.process_index * b + np.arange(b, dtype=np.int64)
    epochs, pos = np.divmod(ids, self.num_rows)
    if not self.shuffle:
      return pos
    out = np.empty_like(pos)
    for e in np.unique(epochs):
      m = epochs == e
      out[m] = self._permutation(int(e))[pos[m]]
    return out

  def batch(self, step: int) -> np.ndarray:
    """int32 [local_batch_size, seq_len + 1]; inputs = [:, :-1], targets = [:, 1:]."""
    return np.asarray(self._rows[self.row_ids(step)], dtype=np.int32)

  def eval_batch(self, i: int) -> np.ndarray:
    """Same as `batch`; named for the unshuffled eval dataset."""
    return self.batch(i)


def make_datasets(config, process_index: int, process_count: int):
  """(train PackedDataset, eval PackedDataset, tokenizer) for this host, from config.data/train."""
  d = config.data
  tokenizer = tokenizers.make_tokenizer(d.tokenizer)
  tokenizers.check_vocab(tokenizer, config.model.vocab_size)
  common = dict(seq_len=d.seq_len, global_batch_size=config.train.global_batch_size,
                seed=config.seed, process_index=process_index, process_count=process_count)
  datasets = []
  for split, shuffle in ((d.train_split, True), (d.eval_split, False)):
    stream = load_token_stream(d.dataset, split, tokenizer, data_dir=d.data_dir,
                               text_key=d.text_key, max_documents=d.max_documents)
    datasets.append(PackedDataset(stream, shuffle=shuffle, **common))
  return datasets[0], datasets[1], tokenizer
