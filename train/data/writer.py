"""TFDS text split -> tokenized, sharded token files (read by train/data/shards.py).

The writing side of the prepared splits, used by the `python -m train.data.prepare` command and by
training, which prepares the embedded corpora itself. Shard i of n holds the i-th of n even,
contiguous ranges of the split's documents; process p of P writes shards p, p+P, ..., finished
shards are skipped on a re-run, and whichever process completes the last shard writes
manifest.json, after which training reads the directory.
"""

import concurrent.futures
import contextlib
import dataclasses
import difflib
import fcntl
import glob
import logging
import math
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from train.data import embedded, jsonl_shards, shards, sources, tokenizers

_READ_BATCH = 256  # documents per tf.data batch / tokenizer call.
_SHARD_TEXT_BYTES = 64 << 20  # automatic shard count: about this much source text per shard.
_STALE_SECONDS = 600  # a shard's temp file untouched this long belongs to a dead writer.


def _register_builders() -> None:
  # Lazy: they import tensorflow_datasets (slow), needed only to build or read a TFDS dataset.
  from train.data import stdlib_corpus, synthetic_corpus  # noqa: F401  (registers the builders)


def _builder(dataset: str, data_dir: str | None) -> Any:
  """tfds.builder, or ValueError (with a did-you-mean) when TFDS knows no such dataset."""
  import tensorflow_datasets as tfds  # lazy: heavy (TensorFlow), only when TFDS is read.

  _register_builders()
  try:
    return tfds.builder(dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    known = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(dataset.split(':')[0].split('/')[0], known, n=1)
    hint = f'did you mean {close[0]!r}? ' if close else ''
    raise ValueError(
      f'config.data.dataset={dataset!r}: no such TFDS dataset ({hint}see '
      '`tfds.list_builders()`, or register your own builder)'
    ) from None


def check_known(dataset: str, data_dir: str | None = None) -> None:
  """ValueError (with a did-you-mean) unless TFDS knows `dataset` (or it is a jsonl: source)."""
  if not sources.is_jsonl(dataset):
    _builder(dataset, data_dir)


@contextlib.contextmanager
def _build_lock(version_dir: str) -> Iterator[None]:
  """Holds an flock beside a local dataset's version directory while it is built, so runs that
  start at once (scaling.parallel's members on a fresh machine) build it once, not race on it."""
  if '://' in version_dir:  # object stores have no flock; build it before a parallel start.
    yield
    return
  os.makedirs(os.path.dirname(version_dir), exist_ok=True)
  with open(version_dir.rstrip('/') + '.build.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def load_builder(dataset: str, data_dir: str | None) -> Any:
  """The prepared TFDS builder; prepares it if needed (offline only for the embedded corpora)."""
  builder = _builder(dataset, data_dir)
  try:
    with _build_lock(builder.data_dir):
      builder.download_and_prepare()
      if not builder.info.splits:  # another process built it while this one waited for the lock:
        builder = _builder(dataset, data_dir)  # this builder read the info before (no splits).
  except Exception as e:  # Network/manual-download failures come in many types.
    if embedded.is_embedded(dataset):
      raise
    raise ValueError(
      f'config.data.dataset={dataset!r} is not prepared in config.data.data_dir={data_dir!r} '
      'and could not be downloaded/prepared here; prepare it where the source is reachable '
      f'(tfds build {dataset} --data_dir=...) and point data_dir at it.'
    ) from e
  return builder


def _base_split(split: str, max_documents: int) -> str:
  return f'{split}[:{max_documents}]' if max_documents else split


@dataclasses.dataclass(frozen=True)
class SplitRequest:
  """One split to tokenize into shards: its TFDS dataset, feature and tokenizer, and where to."""

  dataset: str
  split: str
  out_dir: str
  tokenizer: str  # 'byte' or a local HuggingFace tokenizer directory.
  data_dir: str | None = None  # TFDS data_dir.
  text_key: str = 'text'
  max_documents: int = 0  # 0: the whole split.

  @classmethod
  def of(cls, data: sources.DataSection, source: sources.Source, split: str) -> 'SplitRequest':
    """`split` of a config.data source, into its prepared directory."""
    out_dir = sources.prepared_path(data, source, split)
    return cls(
      source.dataset,
      split,
      out_dir,
      data.tokenizer,
      data_dir=data.data_dir,
      text_key=source.text_key,
      max_documents=data.max_documents,
    )


@dataclasses.dataclass(frozen=True)
class Share:
  """This process's part: process p of P writes shards p, p+P, ... with `workers` local
  processes; num_shards 0: about 64 MiB of text each (an existing directory keeps its own)."""

  num_shards: int = 0
  process_index: int = 0
  process_count: int = 1
  workers: int = 1


ALONE = Share()  # one process writing every shard.


def split_spec(request: SplitRequest, tokenizer: tokenizers.Tokenizer, num_shards: int) -> dict:
  """What a prepared directory holds; two runs may share a directory only with equal specs."""
  return {
    'format': shards.FORMAT,
    'dataset': request.dataset,
    'split': request.split,
    'text_key': request.text_key,
    'max_documents': request.max_documents,
    'tokenizer': request.tokenizer,
    'tokenizer_fingerprint': tokenizer.fingerprint,
    'vocab_size': tokenizer.vocab_size,
    'eos_id': tokenizer.eos_id,
    'dtype': shards.token_dtype(max(tokenizer.vocab_size, tokenizer.eos_id + 1)),
    'num_shards': num_shards,
  }


_CACHE = {}  # per (worker) process: builder and tokenizer, made once.


def _cached(key: tuple, make: Callable[[], Any]) -> Any:
  if key not in _CACHE:
    _CACHE[key] = make()
  return _CACHE[key]


def _write_shard(out_dir: str, spec: dict, data_dir: str | None, i: int) -> dict:
  """Tokenize shard i of spec's split into out_dir; returns its stats (skips a finished one)."""
  if spec.get('fields'):  # a jsonl: source's supervised split.
    tokenizer = _cached(
      ('tokenizer', spec['tokenizer']), lambda: tokenizers.make_tokenizer(spec['tokenizer'])
    )
    return jsonl_shards.write_shard(out_dir, spec, i, tokenizer)
  import tensorflow_datasets as tfds  # lazy: heavy (TensorFlow), only when TFDS is read.

  n = spec['num_shards']
  name = shards.shard_name(i, n)
  final, stats_path = (os.path.join(out_dir, name + ext) for ext in ('.tokens', '.json'))
  if shards.exists(stats_path) and shards.exists(final):
    return shards.read_json(stats_path) | {'skipped': True}
  _register_builders()
  builder = _cached(
    ('builder', spec['dataset'], data_dir), lambda: load_builder(spec['dataset'], data_dir)
  )
  tokenizer = _cached(
    ('tokenizer', spec['tokenizer']), lambda: tokenizers.make_tokenizer(spec['tokenizer'])
  )
  sub = tfds.even_splits(_base_split(spec['split'], spec['max_documents']), n=n)[i]
  ds = builder.as_dataset(split=sub, shuffle_files=False)
  ds = ds.map(lambda ex: ex[spec['text_key']]).batch(_READ_BATCH)
  dtype = np.dtype(spec['dtype'])
  eos = np.array([spec['eos_id']], dtype)
  remote = shards.is_remote(out_dir)
  if not remote:  # an earlier, cut attempt's temp file is never read; drop it once clearly dead
    for stale in glob.glob(glob.escape(final) + '.tmp-*'):  # (a live writer keeps its mtime new)
      try:
        if time.time() - os.path.getmtime(stale) > _STALE_SECONDS:
          os.remove(stale)
      except FileNotFoundError:  # its writer just finished (renamed it).
        pass
  tmp = (
    os.path.join(os.environ.get('TMPDIR', '/tmp'), f'{name}.{uuid.uuid4().hex}')
    if remote
    else f'{final}.tmp-{uuid.uuid4().hex}'
  )
  stats, tic = shards.ShardStats(), time.time()
  try:
    with open(tmp, 'wb') as f:
      for docs in tfds.as_numpy(ds):
        docs = list(docs)
        stats.byte_histogram += np.bincount(np.frombuffer(b''.join(docs), np.uint8), minlength=256)
        stats.num_bytes += sum(map(len, docs))
        pieces = []
        for ids in tokenizer.encode_batch(docs):
          pieces += [ids.astype(dtype, copy=False), eos]
        block = np.concatenate(pieces)
        f.write(block.tobytes())
        stats.num_tokens += int(block.size)
        stats.num_documents += len(docs)
    if remote:
      shards._gfile().copy(tmp, final, overwrite=True)  # a GCS object appears whole.
      os.remove(tmp)
    else:
      os.replace(tmp, final)
  except BaseException:  # (a local temp file stays, as after a kill; the next try drops it)
    if remote and os.path.exists(tmp):
      os.remove(tmp)
    raise
  out = stats.to_json() | {'seconds': time.time() - tic}
  shards.write_json(stats_path, out)  # last: its presence means the shard is complete.
  return out


def _finalize(out_dir: str, spec: dict) -> dict | None:
  """Write manifest.json once every shard is done; returns it (None while some are not)."""
  _, missing = shards.progress(out_dir)
  if missing:
    return None
  n = spec['num_shards']
  per_shard = [
    shards.ShardStats.from_json(
      shards.read_json(os.path.join(out_dir, shards.shard_name(i, n) + '.json'))
    )
    for i in range(n)
  ]
  totals = shards.ShardStats()
  for st in per_shard:
    totals.num_tokens += st.num_tokens
    totals.num_documents += st.num_documents
    totals.num_bytes += st.num_bytes
    totals.byte_histogram += st.byte_histogram
  extras = {}
  if spec.get('fields'):
    extras = jsonl_shards.manifest_extras(spec, per_shard, out_dir)
    totals.num_targets = sum(st.num_targets or 0 for st in per_shard)
  manifest = spec | {
    'shard_tokens': [st.num_tokens for st in per_shard],
    'totals': totals.to_json(),
    **extras,
  }
  shards.write_json(os.path.join(out_dir, shards.MANIFEST), manifest)
  return manifest


def _auto_num_shards(builder: Any, split: str, max_documents: int, process_count: int) -> int:
  info = builder.info.splits[_base_split(split, max_documents)]
  docs = max(int(info.num_examples), 1)
  whole = builder.info.splits[split]
  text = int(whole.num_bytes * docs / max(whole.num_examples, 1))
  return max(1, min(docs, max(process_count, math.ceil(text / _SHARD_TEXT_BYTES))))


def _open_spec(request: SplitRequest, share: Share, tokenizer: tokenizers.Tokenizer) -> dict:
  """The directory's spec: written for a new one, checked (ValueError) for an existing one."""
  spec_path = os.path.join(request.out_dir, shards.SPEC)
  old = shards.read_json(spec_path) if shards.exists(spec_path) else None
  num_shards = share.num_shards
  described = {}
  if sources.is_jsonl(request.dataset):  # every line checked before anything is written.
    described = jsonl_shards.describe(
      request.dataset, request.split, tokenizer, request.tokenizer, request.max_documents
    )
    if old is None:
      num_shards = num_shards or jsonl_shards.auto_num_shards(described, share.process_count)
  elif old is None:
    builder = load_builder(request.dataset, request.data_dir)
    if request.text_key not in builder.info.features:
      raise ValueError(
        f'config.data.text_key={request.text_key!r} is not a feature of '
        f'{builder.info.full_name}; it has {sorted(builder.info.features.keys())}.'
      )
    num_shards = num_shards or _auto_num_shards(
      builder, request.split, request.max_documents, share.process_count
    )
  spec = split_spec(request, tokenizer, num_shards or old['num_shards']) | described
  if old is not None:
    why = shards.spec_mismatch(old, spec, request.out_dir)
    unfinished = shards.progress(request.out_dir)[1]
    if why and len(unfinished) == old['num_shards']:  # nothing written under the old spec yet
      logging.info(
        '%s: no shard was finished under its spec (%s); starting again', request.out_dir, why
      )
      shards.write_json(spec_path, spec)  # (e.g. a run that failed on a line, now fixed)
    elif why:
      raise ValueError(f'config.data.prepared_dir: {why}')
  else:
    shards.makedirs(request.out_dir)
    shards.write_json(spec_path, spec)
  return spec


def _write_shards(request: SplitRequest, spec: dict, mine: list[int], workers: int) -> list[dict]:
  """_write_shard for each of `mine`, in `workers` local processes when more than one."""
  args = [(request.out_dir, spec, request.data_dir, i) for i in mine]
  if workers > 1 and len(mine) > 1:
    ctx = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(mine)), mp_context=ctx) as pool:
      return list(pool.map(_write_shard, *zip(*args)))
  return [_write_shard(*a) for a in args]


def prepare_split(request: SplitRequest, share: Share = ALONE) -> dict | None:
  """Write this process's shards of one split (skipping finished ones); the manifest when the
  split is complete, else None. Refuses (ValueError, nothing written) a directory prepared with
  another tokenizer or shard count."""
  spec = _open_spec(request, share, tokenizers.make_tokenizer(request.tokenizer))
  mine = list(range(share.process_index, spec['num_shards'], share.process_count))
  tic = time.time()
  done = _write_shards(request, spec, mine, share.workers)
  new = [d for d in done if not d.get('skipped')]
  logging.info(
    '%s/%s: %d of my %d shards written (%d tokens) in %.1fs, %d already done; in %s',
    request.dataset,
    request.split,
    len(new),
    len(mine),
    sum(d['num_tokens'] for d in new),
    time.time() - tic,
    len(done) - len(new),
    request.out_dir,
  )
  manifest = _finalize(request.out_dir, spec)
  if manifest is None:
    logging.info(
      '%s/%s: other processes still have shards to write; the last one to finish '
      'writes the manifest.',
      request.dataset,
      request.split,
    )
  return manifest
