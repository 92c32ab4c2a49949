"""Tests for scaling/budget.py, family.py and sweep.py: exact counts, FLOP conventions, families, sweeps.

Published counts are from ../shared/reference/facts.md (HuggingFace GPT-2 layout; Hoffmann et al.
2022 Appendix F; Kaplan et al. 2020 Table 1).
"""

import csv
import json
import math
import os
import sys
import threading
import time

import ml_collections
import pytest
from helpers import (
  LLAMA_BLOCK,
  REPO,
  TINY_SWEEP,
  apply_overrides,
  cpu_env,
  main_cmd,
  main_result,
  run,
)

from configs import base, gpt2, llama
from scaling import budget, config_hash, family, laws, results, sweep
from train import loop, validation


def _model(**kw):
  m = base.get_model_config()
  m.update(kw)
  return m


# --- counts ----------------------------------------------------------------------------------------

# facts.md, "Parameter counts": total (HF sum of parameters) and without wte/wpe.
GPT2_FACTS = {
  '124m': (124_439_808, 85_056_000),
  '350m': (354_823_168, 302_311_424),
  '774m': (774_030_080, 708_390_400),
  '1.5b': (1_557_611_200, 1_475_561_600),
}


@pytest.mark.parametrize('size', list(GPT2_FACTS))
def test_gpt2_counts_match_facts(size):
  """GPT-2 shapes equal HF's published counts (facts.md table), by formula and by the pytree."""
  total, without_wte_wpe = GPT2_FACTS[size]
  c = budget.checked_param_counts(gpt2.get_config(size))
  assert c['params'] == total
  assert c['non_embedding_params'] == without_wte_wpe
  n_layer, d = gpt2.SIZES[size][:2]
  assert c['embedding_params'] == total - without_wte_wpe == (50257 + 1024) * d
  assert c['unembedding_params'] == 0
  assert c['non_embedding_params'] == n_layer * (12 * d * d + 13 * d) + 2 * d  # facts.md formula


PYTREE_CASES = {
  'gpt2_tiny': dict(),
  'gpt2_untied_nobias': dict(tie_embeddings=False, use_bias=False),
  'llama_gqa_untied': dict(
    LLAMA_BLOCK, n_heads=8, n_kv_heads=2, d_model=64, d_ff=176, tie_embeddings=False
  ),
  'llama_mqa_tied_headdim': dict(
    LLAMA_BLOCK, n_heads=4, n_kv_heads=1, head_dim=24, d_model=64, d_ff=96
  ),
  'qwen2_qkv_bias': dict(LLAMA_BLOCK, qkv_bias=True, n_heads=4, n_kv_heads=2, d_model=32, d_ff=80),
  'layernorm_nobias_unscanned': dict(use_bias=False, scan_layers=False, n_layers=3),
}


@pytest.mark.parametrize('case', list(PYTREE_CASES))
def test_counts_equal_pytree(case):
  """The config formula equals the initialised pytree's shapes, category by category."""
  m = _model(vocab_size=101, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16)
  m.update(PYTREE_CASES[case])
  assert budget.param_counts(m) == budget.pytree_param_counts(m)
  c = budget.param_counts(m)
  assert c['params'] == c['embedding_params'] + c['non_embedding_params']
  assert c['unembedding_params'] == (0 if m.tie_embeddings else m.d_model * m.vocab_size)
  assert c['position_embedding_params'] == (
    m.max_len * m.d_model if m.positions == 'learned' else 0
  )


@pytest.mark.parametrize('size', ['100m', '1b', '8b'])
def test_llama_counts_equal_pytree(size):
  config = llama.get_config(size)
  formula, pytree = budget.param_counts(config), budget.pytree_param_counts(config)
  assert formula == pytree
  assert formula['params'] == formula['embedding_params'] + formula['non_embedding_params'] > 0


def test_llama2_7b_count():
  """Llama-2-7B (32 layers, d 4096, d_ff 11008, vocab 32000, untied) has 6,738,415,616 params (HF)."""
  assert budget.checked_param_counts(llama.get_config('7b'))['params'] == 6_738_415_616


def test_hf_gpt2_tiny_count_equals_ours():
  """transformers' own count (sum of parameters; tied head counted once) for a tiny GPT-2 shape."""
  transformers = pytest.importorskip('transformers')
  hf = transformers.GPT2LMHeadModel(
    transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=101, n_positions=32)
  )
  hf_total = sum(p.numel() for p in hf.parameters())
  ours = budget.checked_param_counts(
    _model(vocab_size=101, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_len=32)
  )
  assert ours['params'] == hf_total
  hf_emb = hf.transformer.wte.weight.numel() + hf.transformer.wpe.weight.numel()
  assert ours['embedding_params'] == hf_emb


def test_flop_conventions():
  """6N, Kaplan (Table 1), Chinchilla App. F and the trainer's MFU convention, by hand for one shape."""
  m = _model(vocab_size=101, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_len=32)
  f = budget.flop_counts(m, seq_len=32)
  p = budget.param_counts(m)
  assert f['flops_per_token_6n'] == 6 * p['params']
  assert f['flops_per_token_6n_non_embedding'] == 6 * p['non_embedding_params']
  assert f['flops_per_token_kaplan_forward'] == 2 * p['non_embedding_params'] + 2 * 2 * 32 * 64
  assert f['flops_per_token_kaplan'] == 3 * f['flops_per_token_kaplan_forward']
  d, s, v, h, ff = 64, 32, 101, 4, 256
  layer = 2 * 3 * d * d + 2 * s * d + 3 * h * s + 2 * s * d + 2 * d * d + 2 * 2 * d * ff
  assert f['flops_per_token_chinchilla_forward'] == 2 * v * d + 2 * layer + 2 * d * v
  assert f['flops_per_token_chinchilla'] == 3 * f['flops_per_token_chinchilla_forward']
  assert f['flops_per_token_mfu'] == 6 * (2 * (4 * d * d + 2 * d * ff) + d * v) + 12 * 2 * d * s
  # Porian et al.: N with the (tied) head, C with attention and the head.
  assert f['non_embedding_params_with_head'] == p['non_embedding_params'] + d * v
  assert f['flops_per_token_attn_head'] == 6 * (p['non_embedding_params'] + d * v) + 6 * 2 * s * d


@pytest.mark.parametrize('size,seq_len', [('7b', 1024), ('8b', 1024), ('8b', 2048)])
def test_chinchilla_flops_close_to_6n_for_large_models(size, seq_len):
  """facts.md: 6·N·D is within a few percent of Appendix F above ~100M params (untied LLaMA shapes;
  the excess is the attention term 12·L·S·d_attn, growing with S / d_model)."""
  f = budget.flop_counts(llama.get_config(size), seq_len=seq_len)
  ratio = f['flops_per_token_chinchilla'] / f['flops_per_token_6n']
  assert 1.0 < ratio < (1.05 if seq_len == 1024 else 1.08), ratio


def test_count_cli():
  out = run(
    [
      sys.executable,
      '-m',
      'scaling.budget',
      '--config=configs/gpt2.py:124m',
      '--config.model.n_layers=6',
    ],
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  d = json.loads(out.stdout)
  for key in (
    'params',
    'non_embedding_params',
    'embedding_params',
    'flops_per_token_6n',
    'flops_per_token_chinchilla',
    'flops_per_token_kaplan',
    'flops_per_token_mfu',
  ):
    assert key in d
  assert d['params'] == 124_439_808 - 6 * (12 * 768**2 + 13 * 768)
  assert d['pytree_checked'] is True


# --- families --------------------------------------------------------------------------------------

TINY_TARGETS = (1e5, 3e5, 1e6, 3e6, 1e7)


@pytest.mark.parametrize(
  'rule',
  [
    family.ShapeRule(family='gpt2', aspect=32, head_dim=16, tolerance=0.05),
    family.ShapeRule(
      family='llama', aspect=32, head_dim=16, gqa=2, tie_embeddings=False, tolerance=0.05
    ),
    family.ShapeRule(
      family='gpt2', aspect=64, head_dim=16, count='non_embedding_params', tolerance=0.05
    ),
  ],
)
def test_family_members_within_tolerance(rule):
  members = family.family(TINY_TARGETS, rule)
  for m in members:
    assert abs(m.error) <= rule.tolerance, (m.target, m.matched)
    assert m.d_model % rule.head_dim == 0 and m.n_heads * rule.head_dim == m.d_model
    assert m.n_heads % m.n_kv_heads == 0 and m.n_heads // m.n_kv_heads == rule.gqa
    c = budget.checked_param_counts(m.model)  # the shapes are real configs, counts exact.
    assert (c['params'], c['non_embedding_params']) == (m.params, m.non_embedding_params)
  assert [m.params for m in members] == sorted(m.params for m in members)


def test_family_large_llama_targets():
  rule = family.ShapeRule(
    family='llama',
    aspect=128,
    head_dim=128,
    gqa=4,
    vocab_size=32000,
    max_len=2048,
    tie_embeddings=False,
    ff_multiple=256,
    tolerance=0.05,
  )
  for m in family.family((1e8, 1e9, 7e9), rule):
    assert abs(m.error) <= 0.05
    assert 64 <= m.aspect <= 400


def test_family_cli():
  out = run(
    [
      sys.executable,
      '-m',
      'scaling.family',
      '--targets=1e6,3e6,1e7',
      '--aspect=32',
      '--head_dim=16',
      '--family=gpt2',
    ],
    timeout=120,
  )
  assert out.returncode == 0, out.stderr
  lines = [l for l in out.stdout.splitlines() if l and not l.startswith('#')]
  assert lines[0].split()[:3] == ['target', 'params', 'non-embedding']
  assert len(lines) == 4
  assert all(abs(float(l.split()[-1])) <= 5 for l in lines[1:])


def _load_config_file(path, *args):
  """get_config(*args) of a config file, as config_flags loads it (by path, not as a package)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(
    os.path.basename(path)[:-3], os.path.join(REPO, path)
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(*args)


# --- sweep members ---------------------------------------------------------------------------------


def _sweep_config(**sweep_kw):
  from configs import default

  c = default.get_config()
  c.train.global_batch_size = 16
  c.sweep = sweep.get_sweep_config(**sweep_kw)
  c.sweep.family.update(family='gpt2', aspect=16.0, head_dim=8, tolerance=0.1)
  return c


def test_isoflop_members_d_equals_c_over_6n():
  budgets, sizes = (1e11, 1e12), (2e4, 5e4, 1e5)
  c = _sweep_config(
    kind='isoflop',
    budgets=budgets,
    sizes=sizes,
    warmup_fraction=0.05,
    min_warmup_steps=5,
    min_steps=10,
  )
  ms = sweep.members(c)
  assert [m.name for m in ms] == [
    f'C{b}_N{s}' for b in ('1e11', '1e12') for s in ('2e4', '5e4', '1e5')
  ]
  assert [m.name for m in sweep.members(c)] == [m.name for m in ms]  # deterministic
  tps = 16 * 128
  for m in ms:
    i, cfg = m.info, m.config
    n = budget.param_counts(cfg)['params']
    assert i['params'] == n and 'sweep' not in cfg
    want_d = i['budget'] / (6 * n)
    assert i['steps'] == max(round(want_d / tps), 10)
    assert cfg.train.num_steps == i['steps'] and cfg.train.total_tokens == 0
    assert i['tokens'] == i['steps'] * tps
    assert abs(i['tokens'] - want_d) <= tps / 2 + 1
    assert i['flops'] == pytest.approx(6 * n * i['tokens'])
    assert i['flops'] == pytest.approx(i['budget'], rel=0.05)
    assert cfg.optimizer.warmup_steps == max(5, round(0.05 * round(want_d / tps)))
    assert cfg.optimizer.warmup_steps <= cfg.train.num_steps
    assert cfg.train.eval_every == i['steps']
    assert abs(n / i['target_params'] - 1) <= 0.1
  # Same size, 10x the budget: 10x the steps (up to rounding).
  assert ms[3].info['steps'] == pytest.approx(10 * ms[0].info['steps'], rel=0.01)


def test_isoflop_non_embedding_count_and_grid_and_distill_axis():
  c = _sweep_config(kind='isoflop', budgets=(1e11,), sizes=(5e4,), count='non_embedding_params')
  (m,) = sweep.members(c)
  n = budget.param_counts(m.config)['non_embedding_params']
  assert m.info['flops'] == pytest.approx(6 * n * m.info['tokens'])
  assert abs(m.info['tokens'] - 1e11 / (6 * n)) <= 16 * 128

  g = _sweep_config(kind='grid', sizes=(2e4, 5e4), tokens=(1e6, 4e6), min_steps=1)
  g.sweep.distill = {'modes': ('supervised', 'distill'), 'section': {'teacher': '/t', 'alpha': 0.5}}
  ms = sweep.members(g)
  assert len(ms) == 8
  assert ms[0].name == 'N2e4_D1e6_supervised' and ms[1].name == 'N2e4_D1e6_distill'
  for m in ms:
    assert m.info['tokens'] == round(m.info['target_tokens'] / 2048) * 2048
    assert ('distill' in m.config) == (m.mode == 'distill')
    assert m.info['mode'] == m.mode
  assert ms[1].config.distill.teacher == '/t'


def test_config_hash_ignores_placement_only():
  c = _sweep_config(kind='isoflop', budgets=(1e11,), sizes=(5e4,))
  h = sweep.members(c)[0].config_hash
  c.data.data_dir = '/elsewhere'
  c.mesh.fsdp = 2
  assert sweep.members(c)[0].config_hash == h
  c.optimizer.lr = 1e-3
  assert sweep.members(c)[0].config_hash != h


def test_a_changed_default_moves_only_the_hashes_of_the_runs_it_changes(monkeypatch):
  """mup_lr_embedding_width_exp's default went from 1 to 0 (issue 37): a μP member written under
  1 is told which key restores it; an SP member's hash (the key means nothing there) is as before;
  a μP member that sets 0 explicitly (older studies) keeps its hash."""
  from scaling import config_hash

  sp = _sweep_config(kind='isoflop', budgets=(1e11,), sizes=(5e4,))
  before = sweep.members(sp)[0].config_hash
  monkeypatch.setattr(config_hash, 'ONLY_UNDER', {})  # the key counted everywhere: SP would move.
  assert sweep.members(sp)[0].config_hash != before
  monkeypatch.undo()
  mup = sweep.members(sp)[0].config
  mup.model.update(parametrization='mup', base_d_model=mup.model.d_model)
  mup.model.mup_lr_embedding_width_exp = 1.0
  old = config_hash.config_hash(mup)  # as the default 1 hashed: left out.
  mup.model.mup_lr_embedding_width_exp = 0.0
  assert config_hash.config_hash(mup) != old
  assert config_hash.written_under(mup, old)[:2] == ('model.mup_lr_embedding_width_exp', 1)
  assert config_hash.written_under(mup, config_hash.config_hash(mup)) is None


# Hashes the sweep code gave these isoflop_tiny members before the default-diff hash (its rule is
# scaling/config_hash.legacy_config_hash), hard-coded: workdirs written then must still resume.
LEGACY_HASHES = {'C5e10_N4e3': '6c2ea15547c078d4', 'C5e10_N4.8e3': 'dad68b94449e08e3'}


def test_member_written_under_the_legacy_hash_is_recognised_not_rerun(tmp_path, monkeypatch):
  config = _load_config_file('configs/sweeps/isoflop_tiny.py')
  config.sweep.member = 0
  ms = sweep.members(config)
  a, b = ms[0], ms[1]
  assert {a.name: LEGACY_HASHES[a.name], b.name: LEGACY_HASHES[b.name]} == LEGACY_HASHES
  assert a.config_hash != LEGACY_HASHES[a.name]  # the rule changed ...
  workdir = str(tmp_path)
  for m, files in ((a, ('sweep_member.json', 'result.json')), (b, ('sweep_member.json',))):
    os.makedirs(os.path.join(workdir, m.name))
    old = {'name': m.name, 'config_hash': LEGACY_HASHES[m.name], 'wall_s': 1.0, 'info': m.info}
    result = {**m.info, 'loss': 2.5, 'bits_per_byte': 3.0, 'wall_s': 1.0, 'status': 'ok'}
    for name, obj in zip(files, (old, {**result, 'config_hash': old['config_hash']})):
      sweep.workdir_lib.write_json(os.path.join(workdir, m.name, name), obj)

  def train(*args, **kwargs):
    raise AssertionError('a finished legacy member was trained again')

  monkeypatch.setattr(sweep, '_train', train)
  # Written before eval_set='spread' was the default: refused in one line that names the key ...
  with pytest.raises(ValueError, match=r'config\.train\.eval_set=first'):
    sweep.run(config, workdir)
  config.train.eval_set = 'first'
  a, b = sweep.members(config)[:2]
  summary = sweep.run(
    config, workdir
  )  # ... with it, the finished member is skipped, not retrained,
  assert summary['skipped'] == [a.name] and summary['ran'] == [] and summary['finished'] == 1
  rows = _rows(os.path.join(workdir, 'results.csv'))
  assert [(r['name'], r['config_hash']) for r in rows] == [(a.name, LEGACY_HASHES[a.name])]
  # ... and the partial one resumes (no result, no 'different config' error).
  assert sweep.finished(os.path.join(workdir, b.name), b.config, b.name) is None
  # A key the schema gains later, at its default, changes neither hash.
  defaults = config_hash._defaults()
  monkeypatch.setattr(
    config_hash, '_defaults', lambda: {**defaults, 'model.new_knob': 7, 'new_section.knob': 1}
  )
  with a.config.unlocked():  # ... nor does a whole section the schema gains, at its defaults.
    a.config.model.new_knob = 7
    a.config.new_section = ml_collections.ConfigDict({'knob': 1})
  assert config_hash.legacy_config_hash(a.config) == LEGACY_HASHES[a.name]
  assert a.config_hash == sweep.members(config)[0].config_hash
  a.config.optimizer.lr *= 2  # a changed config is still refused.
  with pytest.raises(ValueError, match='different config'):
    sweep.finished(os.path.join(workdir, a.name), a.config, a.name)


def test_sweep_config_errors():
  with pytest.raises(ValueError, match='budgets'):
    sweep.members(_sweep_config(kind='isoflop', sizes=(1e4,)))
  with pytest.raises(ValueError, match='kind'):
    sweep.members(_sweep_config(kind='random', sizes=(1e4,)))
  with pytest.raises(ValueError, match='unknown keys'):
    sweep.members(_sweep_config(kind='isoflop', budgets=(1e11,), sizes=(1e4,), bogus=1))
  with pytest.raises(ValueError, match='sizes_per_budget'):
    sweep.members(_sweep_config(kind='isoflop', budgets=(1e11, 1e12), sizes_per_budget=((1e4,),)))


def test_tiny_sweep_configs_members():
  """The shipped sweeps generate: tiny IsoFLOP 3 budgets x 4-5 sizes (FLOPs within 1% of each
  budget), the sizes x tokens grid, and the distillation sweep (supervised / distilled pairs)."""
  ms = sweep.members(_load_config_file('configs/sweeps/isoflop_tiny.py'))
  budgets = sorted({m.info['budget'] for m in ms})
  assert len(budgets) == 3
  for b in budgets:
    assert 4 <= sum(m.info['budget'] == b for m in ms) <= 5
  for m in ms:
    assert m.info['flops'] == pytest.approx(m.info['budget'], rel=0.01)
    assert m.config.train.global_batch_size * m.config.data.seq_len == m.info['tokens_per_step']
  grid = sweep.members(_load_config_file('configs/sweeps/sizes_tokens_tiny.py'))
  assert len(grid) == 9 and all(m.info['kind'] == 'grid' for m in grid)
  dist = sweep.members(_load_config_file('configs/sweeps/distill_tiny.py'))
  assert [m.mode for m in dist] == ['supervised', 'distill'] * 3
  for sup, dis in zip(dist[::2], dist[1::2]):
    assert sup.info['params'] == dis.info['params'] and sup.info['tokens'] == dis.info['tokens']
    assert 'distill' not in sup.config and dis.config.distill.teacher


# --- sweeps end to end -----------------------------------------------------------------------------

SIZES = (5e3, 1e4, 2e4)


def _cli_value(v):
  return (
    '(' + ','.join(repr(x) for x in v) + (',)' if len(v) == 1 else ')')
    if isinstance(v, tuple)
    else str(v)
  )


def _load_tiny(data_dir, sizes):
  c = _load_config_file('configs/sweeps/isoflop_tiny.py')
  overrides = {**TINY_SWEEP, 'sweep.sizes': tuple(sizes), 'data.data_dir': data_dir}
  return apply_overrides(c, overrides), overrides


def _main_sweep(workdir, overrides):
  flags = [f'--config.{k}={_cli_value(v)}' for k, v in overrides.items()]
  cmd = main_cmd(workdir, *flags, config='configs/sweeps/isoflop_tiny.py')
  out = run(cmd, cpu_env(), timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  return out


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _check_lr_areas(row, lrs, annealed=True):
  """A curves.csv row's lr_now, lr_sum (S1) and lr_anneal (S2) are those of the lrs the trainer
  used at steps 1..step (S2 > 0 once the lr has decayed); lr (the member's peak) is unchanged."""
  s1, s2 = laws.lr_areas(lrs, int(row['warmup_steps']))
  assert float(row['lr_now']) == pytest.approx(lrs[-1], rel=1e-6)
  assert float(row['lr_sum']) == pytest.approx(s1[-1], rel=1e-6)
  assert float(row['lr_anneal']) == pytest.approx(s2[-1], rel=1e-5, abs=1e-12)
  assert (s2[-1] > 0) == annealed
  if annealed:
    assert float(row['lr']) == pytest.approx(max(lrs), rel=1e-6)


def test_sweep_end_to_end_and_resume(data_dir, tmp_path):
  """main.py runs a 2-member IsoFLOP sweep: a finished member is skipped, a partial one resumes.

  First a 1-member sweep (in process) finishes member A; then member B is trained to step 3 by
  train.loop.run(stop_after=3) (an interruption); the 2-member sweep through main.py (on the
  test's 8 devices, so B's step comes from the session's compilation cache) then skips A and
  resumes B from step 3 (its metrics rows up to step 3 are not written again).
  """
  workdir = str(tmp_path / 'sweep')
  config, overrides = _load_tiny(data_dir, SIZES[:2])
  ms = sweep.members(config)
  assert len(ms) == 2
  a, b = ms
  assert b.info['steps'] >= 5, b.info

  first, _ = _load_tiny(data_dir, SIZES[:1])
  assert sweep.run(first, workdir)['ran'] == [a.name]
  rows = _rows(os.path.join(workdir, 'results.csv'))
  assert [r['name'] for r in rows] == [a.name]
  a_result = open(os.path.join(workdir, a.name, 'result.json')).read()

  b_dir = os.path.join(workdir, b.name)
  loop.run(validation.derive(b.config), b_dir, stop_after=3)
  b_rows_before = [json.loads(l) for l in open(os.path.join(b_dir, 'metrics.jsonl'))]
  assert b_rows_before[-1]['step'] == 3

  out = _main_sweep(workdir, overrides)
  assert f'{a.name}: finished earlier' in out.stderr
  assert f'{b.name}: resuming from step 3' in out.stderr
  assert 'Resumed from step 3' in out.stderr
  assert open(os.path.join(workdir, a.name, 'result.json')).read() == a_result  # not retrained
  b_rows = [json.loads(l) for l in open(os.path.join(b_dir, 'metrics.jsonl'))]
  steps = [r['step'] for r in b_rows]
  assert steps[: len(b_rows_before)] == [r['step'] for r in b_rows_before]
  assert steps == sorted(set(steps)) and steps[-1] == b.info['steps']  # continued, not restarted

  summary = main_result(out.stdout)
  assert summary['skipped'] == [a.name] and summary['ran'] == [b.name]
  rows = _rows(os.path.join(workdir, 'results.csv'))
  assert [r['name'] for r in rows] == [a.name, b.name]
  for r, m in zip(rows, ms):
    for col in (
      'name',
      'params',
      'non_embedding_params',
      'tokens',
      'flops',
      'loss',
      'config_hash',
      'bits_per_byte',
      'steps',
      'wall_s',
    ):
      assert r[col] != '', col
    assert int(r['params']) == m.info['params'] and int(r['steps']) == m.info['steps']
    assert r['config_hash'] == m.config_hash
    assert 0 < float(r['loss']) < 6 and math.isfinite(float(r['bits_per_byte']))
    assert float(r['flops']) == pytest.approx(6 * m.info['params'] * m.info['tokens'])
  curves = _rows(os.path.join(workdir, 'curves.csv'))  # approach 1's input: the final evals here.
  assert {r['name']: float(r['loss']) for r in curves if r['final'] == '1'} == {
    r['name']: float(r['loss']) for r in rows
  }
  for r in curves:  # step, lr there and lr areas, against the lr the trainer logged at each step.
    logged = [json.loads(line) for line in open(os.path.join(workdir, r['name'], 'metrics.jsonl'))]
    step, lrs = int(r['step']), {m['step']: m['train/lr'] for m in logged}
    assert step == int(r['tokens']) // 256 and sorted(lrs)[:step] == list(range(1, step + 1))
    _check_lr_areas(r, [lrs[i] for i in range(1, step + 1)])

  # The CSV feeds the fitting code as is.
  from scaling import results

  assert len(results.read_results(os.path.join(workdir, 'results.csv'), min_rows=2)) == 2

  # Running again has nothing to do; a changed member config is refused, not silently reused.
  assert sweep.run(config, workdir)['ran'] == []
  config.optimizer.lr = 1e-3
  with pytest.raises(ValueError, match='different config'):
    sweep.run(config, workdir)


def test_width_sweep_with_lr_and_seed_axes():
  c = _sweep_config(
    kind='width', widths=(16, 32), tokens=(2e5,), lrs=(1e-3, 2e-3, 4e-3), seeds=(0, 1), min_steps=1
  )
  ms = sweep.members(c)
  assert len(ms) == 2 * 3 * 2
  assert ms[0].name == 'd16_D2e5_lr1e-3_s0' and ms[1].name == 'd16_D2e5_lr1e-3_s1'
  assert [m.config.model.d_model for m in ms] == [16] * 6 + [32] * 6
  assert all(m.config.model.n_layers == c.model.n_layers for m in ms)
  assert [(m.info['lr'], m.info['seed']) for m in ms[:6]] == [
    (lr, s) for lr in (1e-3, 2e-3, 4e-3) for s in (0, 1)
  ]
  assert all(m.config.optimizer.lr == m.info['lr'] and m.config.seed == m.info['seed'] for m in ms)
  assert all(m.config.train.eval_every == m.info['steps'] for m in ms)
  c.sweep.evals_per_member = 4
  assert all(m.config.train.eval_every == math.ceil(m.info['steps'] / 4) for m in sweep.members(c))
  assert len({m.config_hash for m in ms}) == len(ms)
  with pytest.raises(ValueError, match='repeated'):
    sweep.members(_sweep_config(kind='width', widths=(16,), tokens=(2e5,), lrs=(1e-3, 1e-3)))
  with pytest.raises(ValueError, match='widths'):
    sweep.members(_sweep_config(kind='width', tokens=(2e5,)))


def test_transfer_sweep_configs():
  for p in ('sp', 'mup', 'umup'):
    ms = sweep.members(_load_config_file('configs/sweeps/mup_transfer.py', p))
    assert len(ms) == 4 * (9 if p == 'sp' else 7) * 2
    widths = sorted({m.config.model.d_model for m in ms})
    assert widths[-1] / widths[0] >= 8
    lrs = sorted({m.info['lr'] for m in ms})
    assert len(lrs) >= 7 and all(b / a == 2 for a, b in zip(lrs, lrs[1:]))
    assert {m.info['parametrization'] for m in ms} == {p}
    assert {m.config.model.base_d_model for m in ms} == ({widths[0]} if p == 'mup' else {0})


def test_concurrent_members_merge_results_without_losing_rows(tmp_path, monkeypatch):
  """15 members finishing at once (as array jobs would), each writing its result.json and merging,
  on a slow shared filesystem (the earliest CSV writes take longest, 300 ms): results.csv ends
  with every member exactly once, in member order. Without merge_results' lock rows are lost."""
  config = _load_config_file('configs/sweeps/isoflop_tiny.py')
  ms = sweep.members(config)
  workdir = str(tmp_path)
  write = results.write_csv

  delays = iter([max(0.0, 0.3 - 0.01 * k) for k in range(1000)])  # first readers write last.

  def slow_write(*args):
    time.sleep(next(delays))
    write(*args)

  monkeypatch.setattr(results, 'write_csv', slow_write)
  barrier = threading.Barrier(len(ms))

  def finish(i, m):
    os.makedirs(os.path.join(workdir, m.name), exist_ok=True)
    barrier.wait()
    time.sleep(0.01 * i)  # member i finishes 10 ms after member i - 1.
    sweep.workdir_lib.write_json(
      os.path.join(workdir, m.name, results.RESULT_FILE),
      {**m.info, 'loss': 2.0 + i / 100, 'config_hash': m.config_hash, 'status': 'ok'},
    )
    results.merge_results(workdir, ms)

  threads = [threading.Thread(target=finish, args=(i, m)) for i, m in enumerate(ms)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  rows = _rows(os.path.join(workdir, 'results.csv'))
  assert [r['name'] for r in rows] == [m.name for m in ms]
  assert [float(r['loss']) for r in rows] == [2.0 + i / 100 for i in range(len(ms))]
  assert not [f for f in os.listdir(workdir) if f.endswith('.tmp')]
  config.sweep.member = len(ms)
  with pytest.raises(ValueError, match='config.sweep.member'):
    sweep.run(config, workdir)


@pytest.mark.slow  # (21 s; sweeps end to end by default: test_sweep_end_to_end_and_resume, test_parallel_members_...)
def test_wsd_branches_equal_standalone_wsd_runs(data_dir, tmp_path):
  """kind='wsd': one trunk per size trains to each branch point; every branch (a result row)
  resumes from the trunk's checkpoint there and ends exactly where a standalone WSD run of its
  own step count ends (same batches, same lr at every step)."""
  config, _ = _load_tiny(data_dir, SIZES[:1])
  config.sweep.kind = 'wsd'
  config.sweep.tokens = (256 * 10, 256 * 20)  # 10 and 20 steps of 8 x 32 tokens.
  config.optimizer.decay_fraction = 0.2
  config.sweep.evals_per_member = 20  # evaluate every step.
  ms = sweep.members(config)
  assert [m.branch_step for m in ms] == [8, 16] and len({m.trunk for m in ms}) == 1
  assert all(m.config.optimizer.schedule == 'wsd' for m in ms)
  workdir = str(tmp_path / 'wsd')
  summary = sweep.run(config, workdir)
  assert summary['finished'] == 2
  trunk_dir = os.path.join(workdir, ms[0].trunk)
  trunk_ckpts = {int(d) for d in os.listdir(os.path.join(trunk_dir, 'checkpoints'))}
  assert {8, 16} <= trunk_ckpts and max(trunk_ckpts) == 16  # it never trains past a branch.
  rows = {r['name']: r for r in _rows(os.path.join(workdir, 'results.csv'))}
  for m in ms:
    row = rows[m.name]
    assert int(row['branch_tokens']) == m.branch_step * 256 and row['trunk'] == m.trunk
    assert int(row['tokens']) == m.info['steps'] * 256
    steps = [json.loads(l)['step'] for l in open(os.path.join(workdir, m.name, 'metrics.jsonl'))]
    assert steps[0] > m.branch_step  # the branch trained only its cooldown.
  # curves.csv: the lr areas of each branch's whole WSD schedule (the trunk's steps, then its own).
  logged = lambda d: {
    json.loads(l)['step']: json.loads(l)['train/lr']
    for l in open(os.path.join(workdir, d, 'metrics.jsonl'))
  }
  trunk = logged(ms[0].trunk)
  curves = _rows(os.path.join(workdir, 'curves.csv'))
  # The trunk's evaluations (every step here) are in the table once, on the last branch's curve.
  short_steps = [int(r['step']) for r in curves if r['name'] == ms[0].name]
  long_steps = [int(r['step']) for r in curves if r['name'] == ms[-1].name]
  assert min(short_steps) > ms[0].branch_step and long_steps == list(range(1, 21))
  for r in curves:
    m = next(m for m in ms if m.name == r['name'])
    lrs = {**{s: v for s, v in trunk.items() if s <= m.branch_step}, **logged(m.name)}
    step = int(r['step'])
    _check_lr_areas(r, [lrs[i] for i in range(1, step + 1)], annealed=step > m.branch_step + 1)
  # The longer branch (its trunk went through the shorter one's branch point first) alone:
  alone = loop.run(validation.derive(ms[-1].config), str(tmp_path / 'alone'))
  assert float(rows[ms[-1].name]['loss']) == alone['eval/loss']


def test_transfer_summary_by_label_pools_seeds(tmp_path):
  """scaling.transfer on CSVs written the way sweeps write them: a label per file groups settings
  (a label given twice pools two seeds); the optimum is the lowest seed-mean loss."""
  from scaling import transfer

  cols = ('name', 'd_model', 'lr', 'loss')
  losses = {'a0': (2.4, 2.3, 2.5), 'a1': (2.4, 2.1, 2.2), 'b0': (2.2, 2.3, 2.6)}
  paths = []
  for name, ls in losses.items():
    path = str(tmp_path / f'{name}.csv')
    rows = [{'name': f'm{i}', 'd_model': 32, 'lr': 2.0**-i, 'loss': x} for i, x in enumerate(ls)]
    results.write_csv(path, rows, cols)
    paths.append(path)
  data = transfer.read(paths, ['a', 'a', 'b'])
  a, b = transfer.summarize(data['a']), transfer.summarize(data['b'])
  assert a['seeds'] == 2 and a['optimal_lr'] == {32: 0.5} and a['loss_at_optimum'] == {32: 2.2}
  assert b['optimal_lr'] == {32: 1.0} and b['at_grid_edge'] == [32]
  with pytest.raises(ValueError, match='2 labels for 3'):
    transfer.read(paths, ['a', 'b'])
  transfer.plot(data, str(tmp_path / 'search.png'))  # one width: one panel, a curve per label.
  assert os.path.getsize(tmp_path / 'search.png') > 0


def test_a_narrower_plan_keeps_the_rows_of_other_finished_members(tmp_path):
  """Re-running a workdir with another seed or lr axis (a plan listing other members) rebuilds
  results.csv and curves.csv with the new members and keeps the finished members it does not list;
  a member whose result.json is gone (or failed) is not kept."""
  ms = sweep.members(_load_config_file('configs/sweeps/isoflop_tiny.py'))[:3]
  workdir = str(tmp_path)
  for i, m in enumerate(ms):
    os.makedirs(os.path.join(workdir, m.name))
    sweep.workdir_lib.write_json(
      os.path.join(workdir, m.name, results.RESULT_FILE),
      {**m.info, 'loss': 2.0 + i, 'config_hash': m.config_hash, 'status': 'ok'},
    )
  results.merge_results(workdir, ms[:2])  # the first plan: members 0 and 1.
  os.remove(os.path.join(workdir, ms[1].name, results.RESULT_FILE))  # 1's result is gone.
  results.merge_results(workdir, ms[2:])  # a narrower, other plan: member 2 only.
  rows = _rows(os.path.join(workdir, 'results.csv'))
  assert [(r['name'], float(r['loss'])) for r in rows] == [(ms[2].name, 4.0), (ms[0].name, 2.0)]
