"""Supervised fine-tuning data and packing: JSONL shapes and their loss masks (byte and HF chat
templates), bad lines named by file and line, shards with mask and example ends, packed rows
(segments never attend to each other, positions restart, losses equal unpacked examples, prompts
get no gradient), batches by (seed, step) over hosts and mixtures, and a short SFT run."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import attention, backend, loss
from models.config import ModelConfig
from models.transformer import Transformer
from train import loop, step, validation
from train.data import examples, pipeline, shards, sources, supervised, tokenizers, toy_sft, writer

BYTE = tokenizers.ByteTokenizer()
CHATML = (
  "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
  "{% if m['role'] == 'assistant' %}"
  "{% generation %}{{ m['content'] }}<|im_end|>\n{% endgeneration %}"
  "{% else %}{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
  '{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}'
)
CHAT = [
  {'role': 'system', 'content': 'Be brief.'},
  {'role': 'user', 'content': 'upper abc'},
  {'role': 'assistant', 'content': 'ABC'},
  {'role': 'user', 'content': 'reverse abc'},
  {'role': 'assistant', 'content': 'cba'},
]


def _write_jsonl(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    for row in rows:
      f.write((row if isinstance(row, str) else json.dumps(row)) + '\n')
  return path


def _hf_tokenizer(path, template=None):
  """A tiny byte-level BPE with ChatML specials, built offline, saved as a transformers dir."""
  import tokenizers as hf_tokenizers
  import transformers

  tok = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE())
  tok.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = hf_tokenizers.decoders.ByteLevel()
  trainer = hf_tokenizers.trainers.BpeTrainer(
    vocab_size=300,
    special_tokens=['<eos>', '<|im_start|>', '<|im_end|>'],
    show_progress=False,
    initial_alphabet=hf_tokenizers.pre_tokenizers.ByteLevel.alphabet(),
  )
  tok.train_from_iterator(['user assistant system upper reverse abc ABC cba brief'] * 20, trainer)
  hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token='<eos>')
  if template:
    hf.chat_template = template
  hf.save_pretrained(str(path))
  return tokenizers.make_tokenizer(str(path))


# --- shapes and masks --------------------------------------------------------------------------


def _targets(ids, mask, tok=BYTE):
  return tok.decode(ids[mask > 0])


def test_byte_shapes_and_masks():
  ids, mask, text = supervised.encode(
    BYTE, 'completion', {'prompt': 'up: a\n', 'completion': 'A'}, 'x'
  )
  assert bytes(ids[:-1].astype(np.uint8)) == b'up: a\nA' and ids[-1] == BYTE.eos_id
  assert mask.tolist() == [0] * 6 + [1, 1] and text == b'up: a\nA'
  ids, mask, _ = supervised.encode(BYTE, 'text', {'text': 'hi'}, 'x')
  assert mask.tolist() == [1, 1, 1] and ids.tolist() == [104, 105, 256]
  ids, mask, text = supervised.encode(BYTE, 'messages', {'messages': CHAT}, 'x')
  rendered = '<|system|>\nBe brief.\n<|user|>\nupper abc\n<|assistant|>\nABC\n'
  rendered += '<|user|>\nreverse abc\n<|assistant|>\ncba\n'
  assert text.decode() == rendered and BYTE.decode(ids) == rendered
  assert _targets(ids, mask) == 'ABC\ncba\n' and mask[-1] == 1  # the closing EOS is a target.
  ids, mask, _ = supervised.encode(BYTE, 'messages', {'messages': CHAT[:2]}, 'x')
  assert mask.sum() == 0  # no assistant turn: nothing to learn from this line.


@pytest.mark.parametrize('marked', [True, False], ids=['generation-markers', 'after-prompt'])
def test_hf_chat_template_masks_assistant_turns(tmp_path, marked):
  template = (
    CHATML if marked else CHATML.replace('{% generation %}', '').replace('{% endgeneration %}', '')
  )
  tok = _hf_tokenizer(tmp_path / 'tok', template)
  assert tok.has_chat_template
  ids, mask, text = supervised.encode(tok, 'messages', {'messages': CHAT}, 'x')
  assert text.decode().startswith('<|im_start|>system\nBe brief.<|im_end|>\n')
  assert ids[-1] == tok.eos_id and mask[-1] == 1
  assert _targets(ids[:-1], mask[:-1], tok) == 'ABC<|im_end|>\ncba<|im_end|>\n'
  assert tok.decode(ids[:-1]) == text.decode()


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
  'rows,want',
  [
    ([{'text': 'a'}, {'text': 'b'}, '{"text": "c"'], r'train\.jsonl:3: malformed JSON'),
    ([{'text': 'a'}, '', {'prompt': 'p'}], r'train\.jsonl:3: not one of the shapes'),
    ([{'text': 'a', 'messages': []}], r'train\.jsonl:1: not one of the shapes'),
    ([{'prompt': 'p', 'completion': 3}], r'train\.jsonl:1: "completion" must be a string'),
    ([{'messages': CHAT[:2]}] * 3, r'train\.jsonl: lines 1-3: no target tokens'),
    ([], r'train\.jsonl: no examples'),
  ],
  ids=['malformed', 'shape', 'two-shapes', 'type', 'all-masked', 'empty'],
)
def test_bad_lines_name_file_and_line_and_write_nothing(tmp_path, rows, want):
  _write_jsonl(str(tmp_path / 'data' / 'train.jsonl'), rows)
  out = str(tmp_path / 'prepared')
  request = writer.SplitRequest(f'jsonl:{tmp_path / "data"}', 'train', out, 'byte')
  with pytest.raises(ValueError, match=want) as e:
    writer.prepare_split(request)
  assert '\n' not in str(e.value) and not os.path.exists(out)


def test_a_line_that_is_not_utf8_names_file_and_line(tmp_path):
  (tmp_path / 'data').mkdir()
  (tmp_path / 'data' / 'train.jsonl').write_bytes(b'{"text": "a"}\n{"text": "caf\xe9"}\n')
  request = writer.SplitRequest(f'jsonl:{tmp_path / "data"}', 'train', str(tmp_path / 'p'), 'byte')
  with pytest.raises(ValueError, match=r'train\.jsonl:2: not UTF-8 \(byte 0xe9 at character 13\)'):
    writer.prepare_split(request)
  assert not os.path.exists(tmp_path / 'p')


def test_a_chat_template_that_raises_names_the_line_and_the_fixed_file_prepares(tmp_path):
  """The template's own error (an unknown role) is one line naming file:line; the spec written
  before any shard finished does not block the corrected file (issue 35)."""
  strict = CHATML.replace(
    '{% for m in messages %}',
    "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}",
  )
  tok_dir = tmp_path / 'tok'
  _hf_tokenizer(tok_dir, strict)
  bad = [*CHAT[:3], {'role': 'tool', 'content': 'x'}]
  path = _write_jsonl(str(tmp_path / 'd' / 'train.jsonl'), [{'messages': CHAT}, {'messages': bad}])
  out = str(tmp_path / 'p')
  request = writer.SplitRequest(f'jsonl:{tmp_path / "d"}', 'train', out, str(tok_dir))
  with pytest.raises(ValueError, match=rf'{path}:2: the chat template failed: .*unknown role tool'):
    writer.prepare_split(request)
  _write_jsonl(path, [{'messages': CHAT}, {'messages': CHAT[:3]}])
  assert writer.prepare_split(request)['num_examples'] == 2


def test_messages_need_a_chat_template(tmp_path):
  tok_dir = tmp_path / 'tok'
  _hf_tokenizer(tok_dir)  # no chat template.
  path = _write_jsonl(str(tmp_path / 'd' / 'train.jsonl'), [{'text': 'a'}, {'messages': CHAT}])
  request = writer.SplitRequest(
    f'jsonl:{tmp_path / "d"}', 'train', str(tmp_path / 'p'), str(tok_dir)
  )
  with pytest.raises(ValueError, match=rf'{path}:2: "messages" needs a chat template') as e:
    writer.prepare_split(request)
  assert '\n' not in str(e.value)


# --- shards, packing, batches ------------------------------------------------------------------


def _sft_dir(tmp_path, n_train=60, n_val=12):
  data = str(tmp_path / 'sft')
  toy_sft.write(data, n_train, n_val)
  return data


def _open(data_dir, prepared, split='train', **data):
  from configs import base

  c = base.get_config()
  c.data.update(dataset=f'jsonl:{data_dir}', prepared_dir=prepared, **data)
  source = pipeline.parse_sources(c.data)[0]
  return source, pipeline.open_prepared(c.data, source, split, BYTE)


def test_shards_hold_mask_and_example_ends_and_rows_restart_positions(tmp_path):
  data = _sft_dir(tmp_path)
  source, split = _open(data, str(tmp_path / 'prepared'))
  assert split.supervised and split.manifest['format'] == shards.FORMAT_EXAMPLES
  assert split.stats.num_documents == 60 and 0 < split.stats.num_targets < split.num_tokens
  reader = shards.PackedRows(split, 64)
  ends = reader.example_ends()
  stream = reader.tokens(0, split.num_tokens)
  assert (stream[ends - 1] == BYTE.eos_id).all() and ends[-1] == split.num_tokens
  first = json.loads(open(os.path.join(data, 'train.jsonl')).readline())
  ids, mask, _ = supervised.encode(BYTE, *supervised.parse(json.dumps(first), 'x'), 'x')
  np.testing.assert_array_equal(stream[: ends[0]], ids)
  np.testing.assert_array_equal(reader.tokens(0, ends[0], 'mask'), mask)

  rows = examples.PackedExamples(split, 63)  # rows of 64.
  seen = 0
  for r in range(len(rows)):
    row = rows[r]
    seg, pos = row['segment_ids'], row['positions']
    starts = np.flatnonzero(np.diff(seg, prepend=0) != 0)
    used = int((seg > 0).sum())
    assert (seg[:used] > 0).all() and (np.diff(seg[:used]) >= 0).all()  # padding last.
    assert (np.unique(seg[:used]) == np.arange(1, seg.max() + 1)).all()
    assert (pos[starts] == 0).all()  # positions restart in every segment ...
    assert ((pos[1:] == pos[:-1] + 1) | (seg[1:] != seg[:-1]))[: used - 1].all()  # ... and count.
    pad = seg == 0
    assert (row['loss_mask'][pad] == 0).all() and (row['tokens'][pad] == BYTE.eos_id).all()
    seen += int(seg.max())
  assert seen == 60  # every example in exactly one row, in order.
  lengths = np.diff(np.concatenate([[0], ends]))
  assert examples.pack(lengths, 64).tolist()[-1] == 60


def test_old_plain_manifests_load_unchanged(tmp_path):
  """A format-1 directory (no 'fields', no num_targets) reads as before: tokens only."""
  d = tmp_path / 'plain'
  d.mkdir()
  np.arange(40, dtype='<u2').tofile(d / 'shard-00000-of-00001.tokens')
  totals = {'num_tokens': 40, 'num_documents': 2, 'num_bytes': 38, 'byte_histogram': [0] * 256}
  manifest = {'format': 1, 'dtype': '<u2', 'num_shards': 1, 'shard_tokens': [40], 'totals': totals}
  shards.write_json(str(d / shards.MANIFEST), manifest)
  split = shards.open_split(str(d), 'f')
  assert not split.supervised and split.fields == ('tokens',) and split.stats.num_targets is None
  np.testing.assert_array_equal(shards.PackedRows(split, 9)[1], np.arange(10, 20))


def _stream(splits, process_index=0, process_count=1, threads=0):
  return pipeline.TrainStream(splits, 63, 8, 3, process_index, process_count, threads)


def test_batches_by_seed_and_step_hosts_and_mixture(tmp_path, data_dir):
  data = _sft_dir(tmp_path, 200, 12)
  sft = _open(data, str(tmp_path / 'prepared'))
  plain_source = sources.Source('stdlib_corpus', 0.25, 'train', 'validation', 'text')
  from configs import base

  c = base.get_config()
  c.data.data_dir = data_dir
  plain = (plain_source, pipeline.open_prepared(c.data, plain_source, 'train', BYTE))
  sft = (sources.Source(sft[0].dataset, 0.75, 'train', 'validation', 'text'), sft[1])
  one, again = _stream([sft, plain], threads=2), _stream([sft, plain])
  steps = [one.batch_arrays(s) for s in range(4)]
  assert set(steps[0]) == set(examples.KEYS) and steps[0]['tokens'].shape == (8, 64)
  for s in (3, 0, 2):  # a fresh stream (a resume) at any step: the same arrays.
    for k in examples.KEYS:
      np.testing.assert_array_equal(again.batch_arrays(s)[k], steps[s][k])
  halves = [_stream([sft, plain], p, 2).batch_arrays(2) for p in (0, 1)]
  for k in examples.KEYS:
    np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), steps[2][k])
  for b in steps:  # 3:1, in every 4 sequences: 3 supervised rows, 1 plain row (one segment).
    plain_rows = (b['segment_ids'] == 1).all(1) & (b['loss_mask'] == 1).all(1)
    assert plain_rows.tolist() == [False, False, False, True] * 2
    np.testing.assert_array_equal(b['positions'][plain_rows], np.tile(np.arange(64), (2, 1)))
  assert (one.batch(1) == steps[1]['tokens']).all()
  alone = _stream([(sft[0], sft[1])])
  assert alone.packed and set(alone.batch_arrays(0)) == set(examples.KEYS)
  assert not _stream([plain]).packed and set(_stream([plain]).batch_arrays(0)) == {'tokens'}


def test_a_batch_without_targets_is_an_error(tmp_path):
  long_prompt = {'prompt': 'x' * 100, 'completion': 'y'}  # cut to its first 64: no target left.
  _write_jsonl(str(tmp_path / 'd' / 'train.jsonl'), [long_prompt] * 10)
  split = _open(str(tmp_path / 'd'), str(tmp_path / 'p'))
  right = [examples.Layout(truncation='right')]
  with pytest.raises(ValueError, match='step 0 .*no target token'):
    pipeline.TrainStream([split], 63, 8, 3, layouts=right).batch_arrays(0)
  assert examples.num_targets(_stream([split]).batch_arrays(0)) == 8 * 2  # cut left: 'y', EOS.


def _row_targets(row):
  """The tokens a row's loss counts (models/loss.py: mask 1 and in the previous token's segment)."""
  seg, mask = row['segment_ids'], row['loss_mask']
  return row['tokens'][1:][(mask[1:] > 0) & (seg[1:] == seg[:-1])].tolist()


def test_an_over_long_example_keeps_its_completion(tmp_path, caplog):
  """Rows of 32: a long prompt loses its start and keeps its completion (the row is the example's
  last 32 bytes, its targets the completion and EOS); a completion longer than a row keeps one
  prompt byte before it and loses its end; a long text is cut at the end; truncation='right' cuts
  all three at the end. The cut examples are counted in one log line per split."""
  rows = [
    {'prompt': 'Summarise: ' + 'lorem ipsum ' * 8, 'completion': 'short é answer'},
    {'prompt': 'Q: ', 'completion': 'a' * 20 + 'b' * 20},
    {'text': 'plain text ' * 5},
    {'prompt': 'p', 'completion': 'q'},
  ]
  _write_jsonl(str(tmp_path / 'd' / 'train.jsonl'), rows)
  _, split = _open(str(tmp_path / 'd'), str(tmp_path / 'p'))
  eos = [BYTE.eos_id]
  whole = [
    list((r.get('prompt', '') + r.get('completion', r.get('text', ''))).encode()) for r in rows
  ]
  with caplog.at_level('WARNING'):
    left = examples.PackedExamples(split, 31)
  assert len(left) == 4 and [left[r]['segment_ids'].max() for r in range(4)] == [1, 1, 1, 1]
  assert left[0]['tokens'].tolist() == (whole[0] + eos)[-32:]
  assert _row_targets(left[0]) == list('short é answer'.encode()) + eos
  assert left[1]['tokens'].tolist() == list(b' ' + b'a' * 20 + b'b' * 11)
  assert _row_targets(left[1]) == list(b'a' * 20 + b'b' * 11)
  assert left[2]['tokens'].tolist() == whole[2][:32] == whole[2][:1] + _row_targets(left[2])
  assert _row_targets(left[3]) == list(b'q') + eos
  cut = [r.getMessage() for r in caplog.records if 'longer than' in r.getMessage()]
  assert len(cut) == 1 and '3 of 4 examples are longer than config.data.seq_len+1=32' in cut[0]
  assert '2 also cut at the end' in cut[0]
  right = examples.PackedExamples(split, 31, examples.Layout(truncation='right'))
  for r in range(3):
    assert right[r]['tokens'].tolist() == whole[r][:32]
  assert _row_targets(right[0]) == []  # the old cut: the completion lost.


def _segments(rows):
  """The text of every example (segment) of every row, EOS dropped."""
  out = []
  for r in range(len(rows)):
    row = rows[r]
    for k in range(1, row['segment_ids'].max() + 1):
      out.append(BYTE.decode(row['tokens'][row['segment_ids'] == k]))
  return out


def test_eval_set_carved_from_train_when_no_validation_file(tiny_config, tmp_path, caplog):
  """No DIR/validation.jsonl: 5% of the training examples, spread over the file (every 20th of
  100), are the eval set, training reads the other 95, and the log says so; a bad fraction is one
  line from config validation, and `prepare` skips the missing file."""
  from train.data import prepare

  lines = [{'prompt': f'q{i}:', 'completion': f'a{i}'} for i in range(100)]
  _write_jsonl(str(tmp_path / 'd' / 'train.jsonl'), lines)
  config = tiny_config(
    {'data.dataset': f'jsonl:{tmp_path / "d"}', 'data.prepared_dir': str(tmp_path / 'p')}
  )
  assert [m['num_shards'] for m in prepare.prepare(config)] == [1]  # train only.
  with caplog.at_level('INFO'):
    train, evals, _ = pipeline.make_datasets(config, 0, 1)
  held = [f'q{i}:a{i}' for i in range(0, 100, 20)]
  assert sorted(_segments(evals._primary.rows)) == sorted(held)
  trained = _segments(train.rows[0])
  assert len(trained) == 95 and not set(trained) & set(held)
  assert set(trained) | set(held) == {f'q{i}:a{i}' for i in range(100)}
  said = [r.getMessage() for r in caplog.records if 'carved' in r.getMessage()]
  assert len(said) == 1 and f'no {tmp_path / "d" / "validation.jsonl"}' in said[0]
  assert '5 of its 100 examples' in said[0] and 'excluded from training' in said[0]
  config.data.eval_fraction = 1.0
  with pytest.raises(ValueError, match=r'config\.data\.eval_fraction must be in \(0, 1\), got 1'):
    validation.derive(config, jax.device_count())


# --- the model on packed rows ------------------------------------------------------------------


def _cfg(**kw):
  base = dict(vocab_size=257, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_len=64)
  return ModelConfig.make({**base, **kw})


def _packed_batch(seed=0, lengths=(9, 14, 7), row_len=33):
  """Three random examples (the first third of each a prompt) packed in one padded row."""
  rng = np.random.default_rng(seed)
  exs = [(rng.integers(0, 256, n), (np.arange(n) >= n // 3).astype(np.int32)) for n in lengths]
  pad = row_len - sum(lengths)
  cat = lambda xs, v: np.concatenate([*xs, np.full(pad, v)]).astype(np.int32)[None]
  batch = {
    'tokens': cat([t for t, _ in exs], 256),
    'loss_mask': cat([m for _, m in exs], 0),
    'segment_ids': cat([np.full(n, i + 1) for i, n in enumerate(lengths)], 0),
    'positions': cat([np.arange(n) for n in lengths], 0),
  }
  return exs, {k: jnp.asarray(v) for k, v in batch.items()}


IMPLS = [
  ('learned', 'xla'),
  ('learned', 'blockwise'),
  ('rope', 'xla'),
  ('rope', 'blockwise'),
]


@pytest.mark.parametrize('positions,impl', IMPLS, ids=['-'.join(x) for x in IMPLS])
def test_packed_row_losses_equal_the_examples_run_alone(positions, impl):
  """Per-target NLL of three examples packed in one row (with padding) == each run in a row of
  its own (right-padded: later padding never changes a causal prefix), to float tolerance."""
  cfg = _cfg(positions=positions, attention_impl=impl, attention_block=8)
  exs, batch = _packed_batch()
  params = models.init(cfg, jax.random.key(1))
  n = max(len(t) for t, _ in exs)
  alone = np.full((len(exs), n), -1, np.int32)  # targets: -1 on masked and padded positions.
  tokens = np.zeros((len(exs), n), np.int32)
  for i, (t, m) in enumerate(exs):
    tokens[i, : len(t)], alone[i, : len(t)] = t, np.where(m > 0, t, -1)

  @jax.jit
  def nlls(params):
    packed, _ = loss.token_nll(cfg, params, *loss.next_token_rows(batch))
    single, _ = loss.token_nll(cfg, params, jnp.asarray(tokens[:, :-1]), jnp.asarray(alone[:, 1:]))
    return packed[0], single, step.lm_loss(cfg)(params, batch)[1]  # the train step's sums.

  packed_L, single_ExL, sums = jax.tree.map(np.asarray, nlls(params))
  # The step divides by the batch's target tokens (not rows, not positions).
  assert sums['tokens'] == sum(m[1:].sum() for _, m in exs) == (alone[:, 1:] >= 0).sum()
  np.testing.assert_allclose(sums['loss'], single_ExL.sum(), rtol=1e-5)
  seg_L1 = np.asarray(batch['segment_ids'][0])
  for i, (t, m) in enumerate(exs):
    here = (seg_L1[1:] == i + 1) & (seg_L1[:-1] == i + 1)  # targets of example i, in order.
    np.testing.assert_allclose(packed_L[here], single_ExL[i, : len(t) - 1], atol=2e-5)
    assert (packed_L[here] > 0).sum() == m[1:].sum()


def test_unpacked_rows_hold_one_example_each_and_equal_the_packed_losses(tmp_path):
  """data.pack=false: one example per row (padded, the same masks); each example's summed loss
  over its targets equals its loss packed beside others, to 1e-6."""
  _, split = _open(_sft_dir(tmp_path, 16, 4), str(tmp_path / 'p'))
  packed = examples.PackedExamples(split, 63)
  alone = examples.PackedExamples(split, 63, examples.Layout(pack=False))
  assert len(alone) == 16 > len(packed)
  rows = [alone[r] for r in range(len(alone))]
  assert all(r['segment_ids'].max() == 1 for r in rows)
  assert _segments(alone) == _segments(packed)
  rows += [packed[r] for r in range(len(packed))]
  batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in examples.KEYS}
  cfg = _cfg(positions='rope', attention_impl='xla', n_layers=1)
  params = models.init(cfg, jax.random.key(3))
  nll_BxL = np.asarray(
    jax.jit(lambda p: loss.token_nll(cfg, p, *loss.next_token_rows(batch))[0])(params)
  )
  seg = np.asarray(batch['segment_ids'])
  per_example = []
  for b in range(len(rows)):
    same = seg[b, 1:] == seg[b, :-1]
    for k in range(1, seg[b].max() + 1):
      per_example.append(nll_BxL[b][same & (seg[b, 1:] == k)].astype(np.float64).sum())
  per_example = np.asarray(per_example)
  assert (per_example > 0).all()
  np.testing.assert_allclose(per_example[:16], per_example[16:], rtol=1e-6, atol=0)


@pytest.mark.parametrize('impl', ['xla', 'blockwise'])
def test_no_gradient_crosses_segments_and_prompts_get_none(impl):
  """d(loss of segment s) / d(input embeddings of any other segment or the padding) is exactly 0;
  d(loss) / d(logits) is exactly 0 at prompt positions (and segment ends, padding)."""
  cfg = _cfg(attention_impl=impl, attention_block=8, positions='rope')
  _, batch = _packed_batch(1)
  inputs, targets, ctx = loss.next_token_rows(batch)
  init = jax.jit(lambda key: Transformer(cfg).init(key, inputs, ctx=ctx))
  variables = nn.unbox(init(jax.random.key(2)))
  params, perturbations = variables['params'], variables['perturbations']
  seg_L = np.asarray(ctx['segment_ids_BxL'][0])

  @jax.jit
  def grads(segment):
    def of_embeddings(pert):
      logits = Transformer(cfg).apply({'params': params, 'perturbations': pert}, inputs, ctx=ctx)
      return loss.nll(logits, jnp.where(ctx['segment_ids_BxL'] == segment, targets, -1))[0].sum()

    logits = Transformer(cfg).apply({'params': params}, inputs, ctx=ctx)
    of_logits = lambda lg: loss.nll(lg, targets)[0].sum()  # noqa: E731
    return jax.grad(of_embeddings)(perturbations)['embedding'][0], jax.grad(of_logits)(logits)[0]

  for segment in (1, 2, 3):
    g_LxD, g_logits_LxV = (np.abs(np.asarray(g)) for g in grads(segment))
    assert g_LxD[seg_L != segment].max() == 0  # other segments, padding: exactly 0.
    mine = np.flatnonzero(seg_L == segment)[:-1]  # (a segment's last input predicts nothing)
    assert (g_LxD[mine].max(-1) > 0).all()
  masked = np.asarray(targets[0]) < 0  # prompts, segment starts and padding.
  assert masked.sum() > 10 and g_logits_LxV[masked].max() == 0
  assert (g_logits_LxV[~masked].max(-1) > 0).all()


def _per_segment_reference(q, k, v, seg, scale):
  """Causal attention of each segment run alone (the padding, segment 0, likewise), in numpy."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  group = q.shape[2] // k.shape[2]
  k, v = (np.repeat(x, group, axis=2) for x in (k, v))  # grouped-query: kv head h // group.
  out = np.zeros(q.shape)
  for b in range(q.shape[0]):
    for s in np.unique(seg[b]):
      idx = np.flatnonzero(seg[b] == s)
      s_HxTxS = np.einsum('thd,shd->hts', q[b, idx], k[b, idx]) * scale
      s_HxTxS = np.where(np.tri(len(idx), dtype=bool), s_HxTxS, -np.inf)
      p_HxTxS = np.exp(s_HxTxS - s_HxTxS.max(-1, keepdims=True))
      p_HxTxS /= p_HxTxS.sum(-1, keepdims=True)
      out[b, idx] = np.einsum('hts,shd->thd', p_HxTxS, v[b, idx])
  return out


@pytest.mark.parametrize('impl', ['xla', 'blockwise', 'splash'])
def test_kernels_attend_within_segments(impl):
  B, L, H, K, Dh = 2, 128, 4, 2, 16
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(kk, (B, L, n, Dh)) for kk, n in zip(keys, (H, K, K)))
  seg = np.concatenate([np.repeat([1, 2, 3, 0], [40, 30, 50, 8]), np.repeat([1, 2], [100, 28])])
  seg = jnp.asarray(seg.reshape(B, L), jnp.int32)
  want = _per_segment_reference(q, k, v, np.asarray(seg), 0.25)
  if impl == 'splash':  # Pallas interpret mode on CPU.
    got = attention.splash_attention(q, k, v, 0.25, seg)
  else:
    got = attention.causal(_cfg(attention_impl=impl, attention_block=32), q, k, v, 0.25, seg)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def test_auto_falls_back_for_packed_rows_and_cudnn_refuses_them():
  gpu = backend.BACKENDS['gpu']
  bf16 = _cfg(dtype='bfloat16')
  assert attention.resolve(bf16, 256, gpu) == 'cudnn'
  assert attention.resolve(bf16, 256, gpu, packed=True) == 'xla'
  assert attention.resolve(bf16, 256, backend.BACKENDS['cpu'], packed=True) == 'blockwise'
  from configs import base

  c = base.get_config()
  c.data.dataset = 'jsonl:/nowhere'
  c.model.update(attention_impl='cudnn', dtype='bfloat16')
  with pytest.raises(ValueError, match=r"attention_impl='cudnn' does not support packed rows"):
    validation.derive(c, jax.device_count())
  with pytest.raises(ValueError, match='cudnn'):
    attention.causal(
      _cfg(attention_impl='cudnn'),
      *[jnp.zeros((1, 8, 4, 8))] * 3,
      None,
      jnp.ones((1, 8), jnp.int32),
    )


# --- end to end --------------------------------------------------------------------------------


SHAPE = {'data.seq_len': 64, 'model.max_len': 64, 'model.n_layers': 1}  # pre-training and SFT


def _sft_config(tiny_config, tmp_path, init_from, steps=4):
  data = _sft_dir(tmp_path, 120, 24)
  return tiny_config(
    {
      'init_from': init_from,
      'data.dataset': f'jsonl:{data}',
      'data.prepared_dir': str(tmp_path / 'prepared'),
      **SHAPE,
      'train.num_steps': steps,
    }
  )


def test_sft_run_from_a_pretrained_workdir(tiny_config, tmp_path):
  """A tiny pre-training run, then SFT from it (init_from) on packed JSONL rows: finite losses per
  target token, an eval loss of the completions, the packed stream in the checkpoint's meta."""
  pre = str(tmp_path / 'pre')
  loop.run(
    validation.derive(tiny_config(SHAPE)), pre, stop_after=1
  )  # one step and its checkpoint, no eval.
  sft = str(tmp_path / 'sft')
  out = loop.run(validation.derive(_sft_config(tiny_config, tmp_path, pre)), sft)
  rows = [json.loads(line) for line in open(os.path.join(sft, 'metrics.jsonl'))]
  assert [r['step'] for r in rows] == [2, 4]
  assert all(np.isfinite(r['train/loss']) and 0 < r['train/loss'] < 6 for r in rows)
  assert 0 < out['eval/loss'] < 6 and np.isfinite(out['eval/bits_per_byte'])
  assert json.load(open(os.path.join(sft, 'config.json')))['init_from'] == pre


@pytest.mark.slow
def test_sft_resume_is_exact(tiny_config, tmp_path):
  pre = str(tmp_path / 'pre')
  loop.run(
    validation.derive(tiny_config(SHAPE)), pre, stop_after=1
  )  # one step and its checkpoint, no eval.
  config = _sft_config(tiny_config, tmp_path, pre)
  straight = loop.run(validation.derive(config), str(tmp_path / 'straight'))
  loop.run(validation.derive(config), str(tmp_path / 'split'), stop_after=2)
  resumed = loop.run(validation.derive(config), str(tmp_path / 'split'))
  assert resumed['train/loss'] == straight['train/loss']
  assert resumed['eval/loss'] == straight['eval/loss']


def test_sft_config_validates_and_opens_with_its_command():
  from configs import sft

  assert sft.__doc__.split('\n\n')[1].strip().startswith('python main.py --config=configs/sft.py')
  c = sft.get_config()
  d = validation.derive(c, jax.device_count())
  assert c.init_from == 'workdirs/default' and sources.is_jsonl(d.config.data.dataset)


def test_finetune_config_variants_follow_the_base_and_the_rule(tiny_config, tmp_path):
  """configs/finetune.py: the base's model and lr from its config.json, LoRA / scratch variants,
  steps by the rule, the pre-training corpus evaluated at weight 0, one line for a bad variant."""
  import json

  from configs import finetune

  assert 'python main.py --config=configs/finetune.py' in finetune.__doc__
  base = tmp_path / 'base'
  base.mkdir()
  saved = tiny_config({'model.d_model': 48, 'optimizer.lr': 0.004})
  (base / 'config.json').write_text(json.dumps(saved.to_dict()))
  data = tmp_path / 'task'
  data.mkdir()
  (data / 'train.jsonl').write_text('{"prompt": "a", "completion": "b"}\n' * 300)
  full = finetune.get_config(f'base={base},data={data}')
  assert full.model.d_model == 48 and full.init_from == str(base) and full.optimizer.lr == 0.001
  assert (
    full.train.num_steps == finetune.steps_for(300) == 60 and full.train.best_metric == 'eval/loss'
  )
  assert full.data.dataset == f'jsonl:{data}=1,stdlib_corpus=0'
  lora = finetune.get_config(f'base={base},data={data},lora=4,examples=2000,lm_eval=0')
  assert (lora.model.lora_rank, lora.optimizer.lr, lora.train.num_steps) == (4, 0.004, 375)
  assert not lora.lm_eval.tasks and finetune.get_config(f'base={base},scratch').init_from == ''
  with pytest.raises(ValueError, match=r"unknown variant\(s\) \['rank'\]"):
    finetune.get_config('rank=4')
