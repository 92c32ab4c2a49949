"""Data layer tests: the offline stdlib corpus, tokenizers, packing, determinism, host sharding."""
import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import base
from train.data import pipeline
from train.data import stdlib_corpus
from train.data import tokenizers

BYTE = tokenizers.ByteTokenizer()


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A tmp TFDS data_dir with stdlib_corpus built and both splits byte-tokenized once."""
  tfds.disable_progress_bar()
  path = str(tmp_path_factory.mktemp('tfds'))
  start = time.time()
  pipeline.load_builder('stdlib_corpus', path)
  built = time.time()
  streams = {s: pipeline.load_token_stream('stdlib_corpus', s, BYTE, path)
             for s in ('train', 'validation')}
  done = time.time()
  print(f'\nstdlib_corpus: build {built - start:.1f}s, byte-tokenize {done - built:.1f}s; '
        + '; '.join(f'{s}: {st.num_documents} docs, {st.num_bytes} bytes, {st.num_tokens} tokens, '
                    f'bytes/token {st.bytes_per_token:.6f}, unigram entropy '
                    f'{st.unigram_byte_entropy_bits:.4f} bits' for s, st in streams.items()))
  return path


@pytest.fixture(scope='session')
def train_stream(data_dir):
  return pipeline.load_token_stream('stdlib_corpus', 'train', BYTE, data_dir)


def _read(data_dir, split, key, n=None):
  ds = tfds.builder('stdlib_corpus', data_dir=data_dir).as_dataset(split=split, shuffle_files=False)
  if n:
    ds = ds.take(n)
  return [ex[key] for ex in tfds.as_numpy(ds)]


def test_corpus_splits_disjoint_and_deterministic(data_dir):
  train = {p.decode() for p in _read(data_dir, 'train', 'path')}
  val = {p.decode() for p in _read(data_dir, 'validation', 'path')}
  files = stdlib_corpus.list_files()
  assert files == sorted(files) == stdlib_corpus.list_files()
  assert not any('site-packages' in f or 'dist-packages' in f for f in files)
  assert train and val and not train & val
  assert train | val == set(files)
  assert all(stdlib_corpus.split_of(p) == 'validation' for p in val)
  assert all(stdlib_corpus.split_of(p) == 'train' for p in train)
  assert 0.01 < len(val) / len(files) < 0.1


def test_packing_matches_documents_and_cache(data_dir):
  n_docs, seq_len = 5, 63
  stream = pipeline.load_token_stream('stdlib_corpus', 'train', BYTE, data_dir, max_documents=n_docs)
  docs = _read(data_dir, 'train', 'text', n_docs)
  expected = np.concatenate([np.append(np.frombuffer(d, np.uint8).astype(np.int64), BYTE.eos_id)
                             for d in docs])
  np.testing.assert_array_equal(stream.tokens, expected)
  assert (stream.tokens == BYTE.eos_id).sum() == n_docs and stream.tokens[-1] == BYTE.eos_id
  assert stream.num_documents == n_docs and stream.num_bytes == sum(map(len, docs))

  ds = pipeline.PackedDataset(stream, seq_len, global_batch_size=1, shuffle=False)
  rows = [ds.eval_batch(i) for i in range(ds.num_rows)]
  assert all(r.shape == (1, seq_len + 1) and r.dtype == np.int32 for r in rows)
  np.testing.assert_array_equal(np.concatenate(rows, axis=None),
                                stream.tokens[:ds.num_rows * (seq_len + 1)])
  np.testing.assert_array_equal(ds.eval_batch(ds.num_rows), rows[0])  # Eval wraps around.

  cache_dir = os.path.join(data_dir, 'stdlib_corpus', '1.0.0', 'tokenized')
  assert any(f.endswith('docs5.npy') for f in os.listdir(cache_dir))
  again = pipeline.load_token_stream('stdlib_corpus', 'train', BYTE, data_dir, max_documents=n_docs)
  assert isinstance(again.tokens, np.memmap)  # Served from the .npy cache.
  np.testing.assert_array_equal(again.tokens, stream.tokens)


def test_batch_is_deterministic_function_of_seed_and_step(train_stream):
  make = lambda seed: pipeline.PackedDataset(train_stream, 64, global_batch_size=8, seed=seed)
  a, b, c = make(0), make(0), make(1)
  assert a.batch(5).shape == (8, 65) and a.batch(5).dtype == np.int32
  np.testing.assert_array_equal(a.batch(5), b.batch(5))
  np.testing.assert_array_equal(a.batch(3), b.batch(3))
  assert not np.array_equal(a.batch(5), c.batch(5))
  assert not np.array_equal(a.batch(5), a.batch(6))


def test_host_sharding_and_epochs(train_stream):
  seq_len, batch, num_rows = 31, 12, 30
  small = pipeline.TokenStream(train_stream.tokens[:num_rows * (seq_len + 1) + 5], 1, 1,
                               np.ones(256, np.int64))
  full = pipeline.PackedDataset(small, seq_len, batch, seed=3)
  assert full.num_rows == num_rows
  ids = np.concatenate([full.row_ids(s) for s in range(5)])  # 60 ids = 2 epochs.
  assert sorted(ids[:num_rows]) == sorted(ids[num_rows:]) == list(range(num_rows))
  assert not np.array_equal(ids[:num_rows], ids[num_rows:])
  for processes in (1, 2, 3, 4):
    hosts = [pipeline.PackedDataset(small, seq_len, batch, seed=3, process_index=p,
                                    process_count=processes) for p in range(processes)]
    for step in (0, 2, 7):  # Step 2 straddles an epoch boundary.
      np.testing.assert_array_equal(np.concatenate([h.batch(step) for h in hosts]),
                                    full.batch(step))
  with pytest.raises(ValueError, match='global_batch_size'):
    pipeline.PackedDataset(small, seq_len, batch, process_count=5)
  with pytest.raises(ValueError, match='rows'):
    pipeline.PackedDataset(small, seq_len, global_batch_size=32)


def test_byte_tokenizer_round_trip():
  text = 'def f(x):\n  return "héllo ✓"\n'
  ids = BYTE.encode(text)
  assert ids == list(text.encode('utf-8')) and max(ids) < 256
  np.testing.assert_array_equal(BYTE.encode_batch([text])[0], ids)
  assert BYTE.decode(ids + [BYTE.eos_id]) == text
  assert (BYTE.vocab_size, BYTE.eos_id) == (257, 256)
  tokenizers.check_vocab(BYTE, 257)
  with pytest.raises(ValueError, match=r'config\.model\.vocab_size=256.*257'):
    tokenizers.check_vocab(BYTE, 256)


def _save_hf_tokenizer(path, eos_token='<eos>'):
  """Train a tiny byte-level BPE locally and save it as a transformers tokenizer dir."""
  import tokenizers as hf_tokenizers
  import transformers
  tok = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE())
  tok.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = hf_tokenizers.decoders.ByteLevel()
  trainer = hf_tokenizers.trainers.BpeTrainer(
      vocab_size=320, special_tokens=['<eos>'], show_progress=False,
      initial_alphabet=hf_tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(['def main():\n  return self.value\n'] * 20 + ['import os, sys'] * 5,
                          trainer)
  kwargs = {'eos_token': eos_token} if eos_token else {}
  transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs).save_pretrained(str(path))
  return str(path)


def test_hf_tokenizer_and_vocab_check(data_dir, tmp_path):
  path = _save_hf_tokenizer(tmp_path / 'tok')
  tok = tokenizers.make_tokenizer(path)
  assert isinstance(tok, tokenizers.HFTokenizer)
  assert tok.eos_id == 0 and 257 < tok.vocab_size <= 320
  text = 'def main():\n  return os.sys  # ünïcode\n'
  ids = tok.encode(text)
  assert tok.eos_id not in ids and len(ids) < len(text.encode())
  assert tok.decode(ids) == text

  config = base.get_config()
  config.data.data_dir = data_dir
  config.data.tokenizer = path
  config.data.max_documents = 3
  config.data.seq_len = 32
  config.train.global_batch_size = 4
  with pytest.raises(ValueError, match=r'config\.model\.vocab_size=257.*vocab_size=2[6-9]\d'):
    pipeline.make_datasets(config, 0, 1)
  config.model.vocab_size = 512
  train_ds, eval_ds, tok2 = pipeline.make_datasets(config, 0, 1)
  assert tok2.fingerprint == tok.fingerprint
  assert train_ds.stream.num_documents == 3
  assert (train_ds.stream.tokens == tok.eos_id).sum() == 3
  assert train_ds.batch(0).shape == (4, 33) and train_ds.batch(0).max() < tok.vocab_size
  assert train_ds.bytes_per_token > 1  # BPE merges some bytes.

  with pytest.raises(ValueError, match='eos'):
    tokenizers.make_tokenizer(_save_hf_tokenizer(tmp_path / 'no_eos', eos_token=None))
  with pytest.raises(ValueError, match=r'config\.data\.tokenizer'):
    tokenizers.make_tokenizer(str(tmp_path / 'missing'))


def test_stats(train_stream):
  st = train_stream
  assert st.num_tokens == st.num_bytes + st.num_documents
  assert st.bytes_per_token == pytest.approx(1 / (1 + st.num_documents / st.num_bytes))
  assert st.byte_histogram.sum() == st.num_bytes
  assert 0 < st.unigram_byte_entropy_bits < 8


def test_make_datasets_bytes(data_dir):
  config = base.get_config()
  config.data.data_dir = data_dir
  config.data.seq_len = 64
  config.train.global_batch_size = 8
  train_ds, eval_ds, tok = pipeline.make_datasets(config, 1, 2)
  assert isinstance(tok, tokenizers.ByteTokenizer)
  assert train_ds.batch(0).shape == eval_ds.eval_batch(0).shape == (4, 65)
  assert eval_ds.num_rows < train_ds.num_rows
  full_eval = pipeline.make_datasets(config, 0, 1)[1]
  np.testing.assert_array_equal(eval_ds.eval_batch(2), full_eval.eval_batch(2)[4:])
  assert 0.99 < eval_ds.bytes_per_token < 1
  with pytest.raises(ValueError, match='global_batch_size'):
    pipeline.make_datasets(config, 0, 3)
