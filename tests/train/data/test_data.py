"""Data layer tests: the offline corpora, tokenizers, prepared shards (incl. a crash mid-prepare),
packing, determinism, host slicing, mixtures, bad input, and resume on two processes."""

import glob
import hashlib
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import (
  REPO,
  TINY_RUN,
  apply_overrides,
  config_flags,
  main_cmd,
  main_result,
  run,
  run_pair,
)

from configs import base, schema
from train.data import pipeline, prepare, shards, stdlib_corpus, tokenizers, writer

BYTE = tokenizers.ByteTokenizer()


def _config(data_dir, **data):
  c = base.get_config()
  c.data.data_dir = data_dir
  c.data.update(data)
  return c


@pytest.fixture(scope='session')
def corpus(data_dir):
  """data_dir with stdlib_corpus built and both splits prepared (byte tokens) once."""
  tfds.disable_progress_bar()
  pipeline.make_datasets(_config(data_dir, seq_len=64), 0, 1)
  return data_dir


def _read(data_dir, split, key, n=None):
  ds = tfds.builder('stdlib_corpus', data_dir=data_dir).as_dataset(split=split, shuffle_files=False)
  return [ex[key] for ex in tfds.as_numpy(ds.take(n) if n else ds)]


def _packed(docs) -> np.ndarray:
  return np.concatenate(
    [np.append(np.frombuffer(d, np.uint8).astype(np.int64), BYTE.eos_id) for d in docs]
  )


def _snapshot(path):
  return {
    p: hashlib.sha1(open(p, 'rb').read()).hexdigest()
    for p in sorted(glob.glob(os.path.join(path, '**'), recursive=True))
    if os.path.isfile(p)
  }


def test_corpus_splits_disjoint_and_deterministic(corpus):
  train = {p.decode() for p in _read(corpus, 'train', 'path')}
  val = {p.decode() for p in _read(corpus, 'validation', 'path')}
  files = stdlib_corpus.list_files()
  assert files == sorted(files) == stdlib_corpus.list_files()
  assert not any('site-packages' in f or 'dist-packages' in f for f in files)
  assert train and val and not train & val
  assert train | val == set(files)
  assert all(stdlib_corpus.split_of(p) == 'validation' for p in val)
  assert all(stdlib_corpus.split_of(p) == 'train' for p in train)
  assert 0.01 < len(val) / len(files) < 0.1


def test_prepared_rows_are_the_documents_packed(corpus):
  n_docs, seq_len = 5, 63
  c = _config(corpus, max_documents=n_docs, seq_len=seq_len)
  source = pipeline.parse_sources(c.data)[0]
  split = pipeline.open_prepared(c.data, source, 'train', BYTE)  # prepared here (embedded).
  assert split.path == os.path.join(corpus, 'tokenized', 'stdlib_corpus', 'train.text.docs5')
  assert sorted(os.listdir(split.path)) == [
    'manifest.json',
    'shard-00000-of-00001.json',
    'shard-00000-of-00001.tokens',
    'spec.json',
  ]
  docs = _read(corpus, 'train', 'text', n_docs)
  expected = _packed(docs)
  rows = shards.PackedRows(split, seq_len)
  np.testing.assert_array_equal(rows.tokens(0, split.num_tokens), expected)
  assert split.stats.num_documents == n_docs and split.stats.num_bytes == sum(map(len, docs))
  assert split.stats.byte_histogram.sum() == split.stats.num_bytes
  assert split.num_tokens == split.stats.num_bytes + n_docs

  # An eval set of every row: 'spread' over the split is the split in order.
  ev = pipeline.EvalSource(source, split, seq_len, global_batch_size=1, num_batches=len(rows))
  got = [ev.eval_batch(i) for i in range(ev.num_rows)]
  assert all(r.shape == (1, seq_len + 1) and r.dtype == np.int32 for r in got)
  np.testing.assert_array_equal(
    np.concatenate(got, axis=None), expected[: len(rows) * (seq_len + 1)]
  )
  n = len(rows)
  first = pipeline.EvalSource(source, split, seq_len, 2, num_batches=n, how='first')
  np.testing.assert_array_equal(first.eval_batch(n // 2), np.stack([got[0][0], got[1][0]]))  # wraps
  spread = pipeline.EvalSource(source, split, seq_len, 1, num_batches=4)
  for j in range(4):  # row j of 4 is row floor(j * n / 4): every quarter of the split.
    np.testing.assert_array_equal(spread.eval_batch(j), got[j * n // 4])
  d = spread.describe()
  assert d['eval_rows'] == 4 and d['eval_split_rows'] == n and d['eval_set'] == 'spread'
  assert d['eval_span'] == round((3 * n // 4 + 1) / n, 4)
  eos_in = sum(int(np.sum(got[j * n // 4][0, :-1] == BYTE.eos_id)) for j in range(4))
  assert d['eval_doc_segments'] == 4 + eos_in


def test_prepare_in_shards_survives_a_crash_and_matches_one_shard(corpus, tmp_path, monkeypatch):
  """4 shards, the tokenizer dies inside shard 2: the half shard is never read, the re-run keeps
  shards 0-1 and writes 2-3, and the stream equals a 1-shard preparation."""
  kw = dict(data_dir=corpus, max_documents=24)
  request = lambda out: writer.SplitRequest('stdlib_corpus', 'train', out, 'byte', **kw)
  one = writer.prepare_split(request(str(tmp_path / 'one')))
  out = str(tmp_path / 'four')
  calls, encode = [], tokenizers.ByteTokenizer.encode_batch

  def dies_in_third_shard(self, texts):
    calls.append(1)
    if len(calls) == 3:
      raise RuntimeError('killed')
    return encode(self, texts)

  monkeypatch.setattr(tokenizers.ByteTokenizer, 'encode_batch', dies_in_third_shard)
  with pytest.raises(RuntimeError, match='killed'):
    writer.prepare_split(request(out), writer.Share(num_shards=4))
  names = sorted(os.listdir(out))
  assert 'manifest.json' not in names and 'shard-00002-of-00004.json' not in names
  assert any(n.startswith('shard-00002-of-00004.tokens.tmp-') for n in names)  # the half shard
  with pytest.raises(ValueError, match=r'half-prepared \(2 of 4 shards done; shard-00002'):
    shards.open_split(out, 'config.data.prepared_dir')
  kept = {
    n: os.path.getmtime(os.path.join(out, n))
    for n in names
    if n.startswith('shard-0000') and '.tmp-' not in n
  }
  for n in names:  # the crash was 20 minutes ago: its temp file is clearly dead.
    if '.tmp-' in n:
      os.utime(os.path.join(out, n), (os.path.getmtime(os.path.join(out, n)) - 1200,) * 2)
  manifest = writer.prepare_split(request(out))
  assert manifest['num_shards'] == 4 and len(calls) == 3 + 2
  assert all(os.path.getmtime(os.path.join(out, n)) == t for n, t in kept.items())
  assert not glob.glob(os.path.join(out, '*.tmp-*'))
  a, b = shards.open_split(str(tmp_path / 'one'), 'x'), shards.open_split(out, 'x')
  assert one['totals'] == manifest['totals'] and b.shard_tokens.min() > 0
  ra, rb = shards.PackedRows(a, 255), shards.PackedRows(b, 255)
  np.testing.assert_array_equal(rb.tokens(0, b.num_tokens), ra.tokens(0, a.num_tokens))
  np.testing.assert_array_equal(
    np.stack([rb[i] for i in range(len(rb))]), np.stack([ra[i] for i in range(len(ra))])
  )  # rows span shards.


def test_batch_is_a_function_of_seed_and_step_prefetched_or_not(corpus):
  make = lambda seed, **kw: _train(corpus, seed, **kw)
  a, b, c = make(0), make(0, read_threads=0), make(1)
  seq = [a.batch(s) for s in range(12)]  # sequential: read ahead by grain threads.
  assert seq[5].shape == (8, 65) and seq[5].dtype == np.int32
  for s in (11, 3, 5, 0):  # a fresh stream (a resume) at any step, random access.
    np.testing.assert_array_equal(b.batch(s), seq[s])
  assert not np.array_equal(c.batch(5), seq[5])
  assert not np.array_equal(seq[5], seq[6])


def _train(
  data_dir, seed=0, seq_len=64, batch=8, process_index=0, process_count=1, read_threads=4, **data
):
  c = _config(data_dir, seq_len=seq_len, read_threads=read_threads, **data)
  c.seed = seed
  c.train.global_batch_size = batch
  return pipeline.make_datasets(c, process_index, process_count)[0]


def test_host_slicing_and_epochs(corpus):
  """Hosts' rows concatenate to the global batch for 1-4 processes; every epoch visits every row
  once, in a new order."""
  kw = dict(seq_len=511, batch=12, seed=3, max_documents=4)
  full = _train(corpus, **kw)
  data = _config(corpus, max_documents=4).data
  rows = shards.PackedRows(
    pipeline.open_prepared(data, pipeline.parse_sources(data)[0], 'train', BYTE), 511
  )
  index = {rows[i].tobytes(): i for i in range(len(rows))}
  assert len(index) == len(rows) >= 24
  epochs = -(-len(rows) // 12) * 2
  ids = [index[r.tobytes()] for s in range(epochs) for r in full.batch(s)]
  first, second = ids[: len(rows)], ids[len(rows) : 2 * len(rows)]
  assert sorted(first) == sorted(second) == list(range(len(rows))) and first != second
  for processes in (2, 3, 4):
    hosts = [
      _train(corpus, process_index=p, process_count=processes, **kw) for p in range(processes)
    ]
    for step in (0, 2, 7):
      np.testing.assert_array_equal(
        np.concatenate([h.batch(step) for h in hosts]), full.batch(step)
      )
  with pytest.raises(ValueError, match='global_batch_size'):
    _train(corpus, process_count=5, **kw)
  with pytest.raises(ValueError, match='rows'):
    _train(corpus, **(kw | {'batch': 4096}))


def test_mixture_weights_hosts_and_per_source_eval(corpus):
  """3:1 code + prose: exact proportions in every 4 global sequences, a pure function of (seed,
  step) on any host count; eval reports each source and their weighted mean."""
  data = dict(dataset='stdlib_corpus=3,synthetic_prose/small=1', seq_len=64)
  ds = _train(corpus, batch=8, **data)
  c = _config(corpus, **data)
  src = pipeline.parse_sources(c.data)
  prose_rows = shards.PackedRows(pipeline.open_prepared(c.data, src[1], 'train', BYTE), 64)
  prose = {prose_rows[i].tobytes() for i in range(len(prose_rows))}
  is_prose = lambda row: row.tobytes() in prose
  for step in range(6):
    assert [is_prose(r) for r in ds.batch(step)] == [False] * 3 + [True] + [False] * 3 + [True]
  halves = [_train(corpus, batch=8, process_index=p, process_count=2, **data) for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([h.batch(4) for h in halves]), ds.batch(4))
  np.testing.assert_array_equal(_train(corpus, batch=8, **data).batch(4), ds.batch(4))

  c.data.dataset = 'stdlib_corpus=3,synthetic_prose/small=0'
  train_ds, eval_ds, _ = pipeline.make_datasets(c, 0, 1)
  assert not any(is_prose(r) for s in range(4) for r in train_ds.batch(s))  # weight 0: eval only.
  c.data.dataset = data['dataset']
  eval_ds = pipeline.make_datasets(c, 0, 1)[1]
  assert set(eval_ds.sources) == {'stdlib_corpus', 'synthetic_prose_small'}
  assert eval_ds.sources['synthetic_prose_small'].split.path.endswith(
    os.path.join('synthetic_prose_small', 'validation.text')
  )
  # The loop's eval-loss evaluation over both sources, with a stand-in eval step: loss = the token id / 100.
  import types

  import jax.numpy as jnp

  from train import evaluators, sharding

  c.train.eval_batches = 2
  r = types.SimpleNamespace(
    config=c, eval_ds=eval_ds, batch_sharding=sharding.batch_sharding(sharding.make_mesh(c.mesh))
  )
  step = lambda params, batch: {
    'loss': jnp.sum(batch['tokens'][:, 1:] / 100),
    'tokens': jnp.asarray(batch['tokens'][:, 1:].size, jnp.float32),
  }
  m = evaluators.evaluate(r, step, None, ())
  mean = {
    n: np.mean([src.eval_batch(i)[:, 1:] / 100 for i in range(2)])
    for n, src in eval_ds.sources.items()
  }
  bpt = {n: src.bytes_per_token for n, src in eval_ds.sources.items()}
  for n in mean:
    assert m[f'eval/{n}/loss'] == pytest.approx(mean[n], rel=1e-5)
    assert m[f'eval/{n}/bits_per_byte'] == pytest.approx(mean[n] / np.log(2) / bpt[n], rel=1e-5)
  weighted = 0.75 * mean['stdlib_corpus'] + 0.25 * mean['synthetic_prose_small']
  assert m['eval/loss'] == pytest.approx(weighted, rel=1e-5)
  assert m['eval/bits_per_byte'] == pytest.approx(
    weighted / np.log(2) / (0.75 * bpt['stdlib_corpus'] + 0.25 * bpt['synthetic_prose_small']),
    rel=1e-5,
  )


@pytest.mark.parametrize(
  'field,value,expected',
  [
    ('dataset', 'stdlib_corpus=-1,synthetic_prose/small=1', 'must be a finite number >= 0'),
    ('dataset', 'stdlib_corpus=0,synthetic_prose/small=0', 'weights sum to 0'),
    ('dataset', 'stdlib_corpus=x', "weight 'x' of 'stdlib_corpus' is not a number"),
    ('dataset', 'stdlib_corpus=1,synthetic_prose/small', 'give every source a weight'),
    ('dataset', 'stdlib_corpus,stdlib_corpus', 'named twice'),
    ('dataset', 'stdlib_corpus,', 'empty source name'),
    ('eval_split', 'validation,validation,test', 'one per source'),
  ],
)
def test_bad_mixture_is_refused_by_validation(field, value, expected):
  from train import validation

  c = base.get_config()
  c.data.dataset = 'stdlib_corpus,synthetic_prose/small'
  c.data[field] = value
  with pytest.raises(ValueError, match=rf'config\.data\.{field}=.*{expected}'):
    validation.derive(c, 1)


def test_bad_data_inputs_name_the_field_and_write_nothing(corpus, tmp_path):
  with pytest.raises(
    ValueError,
    match=r"config\.data\.dataset='stdlib_corpuss': no such TFDS "
    r"dataset \(did you mean 'stdlib_corpus'",
  ):
    pipeline.make_datasets(_config(corpus, dataset='stdlib_corpuss'), 0, 1)
  with pytest.raises(
    ValueError,
    match=r"config\.data\.dataset='lm1b': split 'train' is not "
    r'prepared .*python -m train\.data\.prepare',
  ):
    pipeline.make_datasets(_config(corpus, dataset='lm1b', prepared_dir=str(tmp_path)), 0, 1)
  assert os.listdir(tmp_path) == []

  root = str(tmp_path / 'prepared')
  c = _config(corpus, prepared_dir=root, max_documents=3)
  pipeline.make_datasets(c, 0, 1)
  before = _snapshot(root)
  tok_dir = _save_hf_tokenizer(tmp_path / 'tok')
  c.data.tokenizer, c.model.vocab_size = tok_dir, 512
  with pytest.raises(
    ValueError,
    match=r'config\.data\.prepared_dir: .*train\.text\.docs3 was '
    r"prepared with tokenizer 'byte' \(fingerprint byte\), but "
    r'config\.data\.tokenizer=.* has fingerprint hf-',
  ):
    pipeline.make_datasets(c, 0, 1)
  with pytest.raises(ValueError, match='prepared with tokenizer'):
    prepare.prepare(c)
  assert _snapshot(root) == before

  split = os.path.join(root, 'stdlib_corpus', 'train.text.docs3')
  os.remove(os.path.join(split, 'manifest.json'))
  c.data.tokenizer, c.model.vocab_size = 'byte', 257
  with pytest.raises(
    ValueError,
    match=r'config\.data\.prepared_dir: .*docs3 is half-prepared '
    r'\(1 of 1 shards done; manifest\.json is not\)',
  ):
    pipeline.make_datasets(c, 0, 1)
  prepare.prepare(c)  # finishes it: writes only the manifest.
  shard = os.path.join(split, 'shard-00000-of-00001.tokens')
  with open(shard, 'r+b') as f:
    f.truncate(100)
  with pytest.raises(
    ValueError,
    match=r'shard .*shard-00000-of-00001\.tokens is 100 bytes, '
    'expected',
  ):
    pipeline.make_datasets(c, 0, 1)


def test_prepare_command_shares_shards_between_hosts(corpus, tmp_path):
  """Host 0 of 2 writes shards 0 and 2 (in process); `python -m train.data.prepare` as host 1
  writes 1 and 3 and, finishing last, the manifest; training reads the same stream as from the
  embedded corpus's own 1-shard preparation."""
  c = _config(corpus, prepared_dir=str(tmp_path), max_documents=12)
  assert prepare.prepare(c, num_shards=4, process_index=0, process_count=2) == []
  assert sorted(
    n for n in os.listdir(tmp_path / 'stdlib_corpus' / 'train.text.docs12') if n.endswith('.tokens')
  ) == ['shard-00000-of-00004.tokens', 'shard-00002-of-00004.tokens']
  cmd = [
    sys.executable,
    '-m',
    'train.data.prepare',
    '--config=configs/default.py',
    f'--config.data.data_dir={corpus}',
    f'--config.data.prepared_dir={tmp_path}',
    '--config.data.max_documents=12',
    '--process_index=1',
    '--process_count=2',
  ]
  out = run(cmd, dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'stdlib_corpus train: 4 shards, 12 documents' in out.stdout
  np.testing.assert_array_equal(
    pipeline.make_datasets(c, 0, 1)[0].batch(3),
    pipeline.make_datasets(_config(corpus, max_documents=12), 0, 1)[0].batch(3),
  )


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
    vocab_size=320,
    special_tokens=['<eos>'],
    show_progress=False,
    initial_alphabet=hf_tokenizers.pre_tokenizers.ByteLevel.alphabet(),
  )
  tok.train_from_iterator(
    ['def main():\n  return self.value\n'] * 20 + ['import os, sys'] * 5, trainer
  )
  kwargs = {'eos_token': eos_token} if eos_token else {}
  transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs).save_pretrained(str(path))
  return str(path)


def test_hf_tokenizer_and_vocab_check(corpus, tmp_path):
  path = _save_hf_tokenizer(tmp_path / 'tok')
  tok = tokenizers.make_tokenizer(path)
  assert isinstance(tok, tokenizers.HFTokenizer)
  assert tok.eos_id == 0 and 257 < tok.vocab_size <= 320
  text = 'def main():\n  return os.sys  # ünïcode\n'
  ids = tok.encode(text)
  assert tok.eos_id not in ids and len(ids) < len(text.encode())
  assert tok.decode(ids) == text

  config = _config(
    corpus, tokenizer=path, max_documents=3, seq_len=32, prepared_dir=str(tmp_path / 'prepared')
  )
  config.train.global_batch_size = 4
  with pytest.raises(ValueError, match=r'config\.model\.vocab_size=257.*vocab_size=2[6-9]\d'):
    pipeline.make_datasets(config, 0, 1)
  config.model.vocab_size = 512
  train_ds, eval_ds, tok2 = pipeline.make_datasets(config, 0, 1)
  assert tok2.fingerprint == tok.fingerprint
  split = pipeline.open_prepared(config.data, train_ds.sources[0], 'train', tok)
  assert split.manifest['tokenizer_fingerprint'] == tok.fingerprint
  assert split.stats.num_documents == 3 and split.dtype == np.dtype('<u2')
  assert (shards.PackedRows(split, 32).tokens(0, split.num_tokens) == tok.eos_id).sum() == 3
  assert train_ds.batch(0).shape == (4, 33) and train_ds.batch(0).max() < tok.vocab_size
  assert eval_ds.bytes_per_token > 1  # BPE merges some bytes.

  with pytest.raises(ValueError, match='eos'):
    tokenizers.make_tokenizer(_save_hf_tokenizer(tmp_path / 'no_eos', eos_token=None))
  with pytest.raises(ValueError, match=r'config\.data\.tokenizer'):
    tokenizers.make_tokenizer(str(tmp_path / 'missing'))


def test_make_datasets_bytes_and_stats(corpus):
  config = _config(corpus, seq_len=64)
  config.train.global_batch_size = 8
  train_ds, eval_ds, tok = pipeline.make_datasets(config, 1, 2)
  assert isinstance(tok, tokenizers.ByteTokenizer)
  assert train_ds.batch(0).shape == eval_ds.eval_batch(0).shape == (4, 65)
  full_eval = pipeline.make_datasets(config, 0, 1)[1]
  np.testing.assert_array_equal(eval_ds.eval_batch(2), full_eval.eval_batch(2)[4:])
  st = eval_ds.sources['stdlib_corpus'].split.stats
  assert st.num_tokens == st.num_bytes + st.num_documents
  assert eval_ds.bytes_per_token == pytest.approx(1 / (1 + st.num_documents / st.num_bytes))
  assert 0.99 < eval_ds.bytes_per_token < 1 and 0 < eval_ds.unigram_byte_entropy_bits < 8
  with pytest.raises(ValueError, match='global_batch_size'):
    pipeline.make_datasets(config, 0, 3)


@pytest.mark.slow  # ~60 s of CPU (an in-process run, then two main.py processes).
def test_resume_on_two_processes_matches_one_uninterrupted_run(corpus, tmp_path):
  """One process trains 4 steps (checkpoints 2, 4); from its step-2 checkpoint two processes
  (jax.distributed, other device count) finish steps 3-4 on the same global batches: same loss."""
  from configs import default
  from train import loop, validation

  flags = {
    **TINY_RUN,
    'model.n_layers': 1,
    'model.d_model': 32,
    'model.d_ff': 64,
    'data.seq_len': 64,
    'data.data_dir': corpus,
  }
  straight = loop.run(
    validation.derive(apply_overrides(default.get_config(), flags)), str(tmp_path / 'straight')
  )
  work = tmp_path / 'resumed'
  os.makedirs(work / 'checkpoints')
  os.rename(tmp_path / 'straight' / 'checkpoints' / '2', work / 'checkpoints' / '2')

  outs = run_pair(lambda *distributed: main_cmd(work, *distributed, *config_flags(flags)))
  assert 'Resumed from step 2' in outs[0][1]
  resumed = main_result(outs[0][0])
  for key in ('train/loss', 'eval/loss', 'train/grad_norm'):
    np.testing.assert_allclose(resumed[key], straight[key], rtol=1e-5, err_msg=key)


def test_checkpoint_of_another_batch_order_is_refused(tiny_config):
  """Resuming must replay the same batches: a checkpoint from the pre-shard pipeline is refused."""
  from train import checkpoint, context, validation

  current = context.stream_meta(validation.derive(tiny_config()).config)
  checkpoint.check_meta(current, current)
  old = {k: v for k, v in current.items() if k != 'pipeline'}
  with pytest.raises(ValueError, match='input pipeline'):
    checkpoint.check_meta(old, current)


@pytest.mark.slow  # two processes each importing TFDS and building the corpus: ~30 s of CPU.
def test_two_first_runs_at_once_build_the_corpus_once(tmp_path):
  """scaling.parallel's members start together on a fresh machine: both find the embedded corpus
  built (one builds it under the lock, the other waits), neither fails renaming TFDS's files."""
  import subprocess

  code = 'from train.data import writer; writer.load_builder("stdlib_corpus", {!r})'
  cmd = [sys.executable, '-c', code.format(str(tmp_path))]
  procs = [subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True) for _ in range(2)]
  errs = [p.communicate(timeout=600)[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], errs
  assert os.path.isdir(tmp_path / 'stdlib_corpus' / '1.0.0')


def test_eval_batch_size_fixes_the_eval_rows_across_training_batches(corpus):
  """eval_batches x eval_batch_size rows: members with different batches see the same eval set."""

  def eval_rows(batch, eval_batch_size, eval_batches):
    c = _config(corpus, seq_len=64)
    c.train.update(global_batch_size=batch, eval_batch_size=eval_batch_size)
    ev = pipeline.make_datasets(c, 0, 1)[1]
    return np.concatenate([ev.eval_batch(i) for i in range(eval_batches)])

  fixed = eval_rows(16, 0, 4)  # The default: the training batch.
  np.testing.assert_array_equal(eval_rows(8, 16, 4), fixed)
  assert eval_rows(8, 0, 4).shape[0] == 32  # What the first ladder's small rungs saw: half of it.
  with pytest.raises(ValueError, match='config.train.eval_batch_size'):
    c = base.get_config()
    c.train.eval_batch_size = -1
    schema.Config.make(c).check()
