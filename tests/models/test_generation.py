"""KV-cached generation: the cached decode equals a full forward at every position, greedy tokens
equal transformers' `generate` on random-init GPT-2 and LLaMA checkpoints, sampling filters, the
sample CLI on a trained workdir, and the bad-input errors."""

import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from helpers import HF_GPT2, HF_LLAMA, cpu_env, make_hf, run, save

import models
from models import generation, hf

PROMPTS = [[5, 17, 3, 9, 22, 1, 8], [4, 2], [30, 31, 7, 7]]  # ragged: left-padded together.
NEW = 12  # one length everywhere: the tests share compiled decode loops.
FAMILIES = {
  'gpt2': (transformers.GPT2Config, dict(HF_GPT2, vocab_size=61)),
  'llama_gqa': (
    transformers.LlamaConfig,
    dict(HF_LLAMA, vocab_size=67, intermediate_size=48, bos_token_id=None, eos_token_id=None),
  ),
}


@pytest.fixture(scope='module', params=sorted(FAMILIES))
def checkpoint(request, tmp_path_factory):
  config_cls, kwargs = FAMILIES[request.param]
  model = make_hf(config_cls, kwargs, seed=3)
  path = save(model, tmp_path_factory.mktemp(request.param))
  cfg, params = hf.import_checkpoint(path)
  return model, cfg, params


@pytest.mark.parametrize('scan_layers', [True, pytest.param(False, marks=pytest.mark.slow)])
def test_cached_decode_equals_full_forward(checkpoint, scan_layers):
  _, cfg, params = checkpoint
  if not scan_layers:
    cfg = cfg.replace(scan_layers=False)
    params = {
      **{k: v for k, v in params.items() if k != 'layers'},
      **{
        f'layer_{i}': jax.tree.map(lambda x, i=i: x[i], params['layers'])
        for i in range(cfg.n_layers)
      },
    }
  new = NEW
  out, logits_BxTxV = generation.generate_with_logits(cfg, params, PROMPTS, new)
  out, logits_BxTxV = np.asarray(out), np.asarray(logits_BxTxV)
  for b, prompt in enumerate(PROMPTS):
    seq = np.concatenate([prompt, out[b, -new:]])[None].astype(np.int32)
    full_TxV = np.asarray(models.logits(cfg, params, seq))[0, len(prompt) - 1 : -1]
    np.testing.assert_allclose(logits_BxTxV[b], full_TxV, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(out[b, :-new][len(out[b]) - new - len(prompt) :], prompt)


def test_greedy_equals_transformers_generate(checkpoint):
  model, cfg, params = checkpoint
  new = NEW
  out = np.asarray(models.generate(cfg, params, PROMPTS, new))
  assert out.shape == (len(PROMPTS), max(map(len, PROMPTS)) + new)
  for b, prompt in enumerate(PROMPTS):
    with torch.no_grad():
      ref = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=new,
        do_sample=False,
        min_new_tokens=new,
        pad_token_id=0,
      )
    np.testing.assert_array_equal(out[b, -new:], ref[0, len(prompt) :].numpy())


def test_filters_and_sampling(checkpoint):
  _, cfg, params = checkpoint
  if cfg.positions == 'learned':
    pytest.skip('one family is enough: sampling does not depend on it')
  logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
  kept = lambda **kw: np.isfinite(np.asarray(generation.filter_logits(logits, **kw)))[0].tolist()
  assert kept(top_k=2) == [True, True, False, False]
  assert kept(top_p=0.5) == [True, False, False, False]
  assert kept(top_p=0.81) == [True, True, True, False]
  assert kept(top_p=1.0) == [True] * 4
  greedy = np.asarray(models.generate(cfg, params, PROMPTS, NEW))
  top1 = np.asarray(
    models.generate(cfg, params, PROMPTS, NEW, temperature=1.0, top_k=1, rng=jax.random.key(0))
  )
  np.testing.assert_array_equal(greedy, top1)
  draw = lambda seed: np.asarray(
    models.generate(cfg, params, PROMPTS, NEW, temperature=1.5, top_p=0.9, rng=jax.random.key(seed))
  )
  np.testing.assert_array_equal(draw(1), draw(1))
  assert (draw(1) != draw(2)).any()


@pytest.mark.parametrize(
  'kw, match',
  [
    (dict(max_new_tokens=30), 'exceeds the context'),
    (dict(top_p=0.0), 'top_p'),
    (dict(temperature=-1.0), 'temperature'),
    (dict(top_k=10_000), 'top_k'),
    (dict(temperature=0.7), 'rng'),
  ],
)
def test_bad_options(checkpoint, kw, match):
  _, cfg, params = checkpoint
  kw = {'max_new_tokens': 4, **kw}
  with pytest.raises(ValueError, match=match):
    models.generate(cfg, params, PROMPTS, kw.pop('max_new_tokens'), **kw)


def test_sample_cli_on_trained_workdir(trained_workdir):
  """`python -m train.tools.sample` on a run of ours: continuations, the decode speed, a one-line
  error."""
  workdir = trained_workdir
  cmd = [
    sys.executable,
    '-m',
    'train.tools.sample',
    f'--checkpoint={workdir}',
    '--prompt=def ',
    '--prompt=import os',
    '--max_new_tokens=8',
  ]
  env = cpu_env()
  done = run(cmd, env, timeout=300)
  assert done.returncode == 0, done.stderr
  assert "--- 'def '" in done.stdout and "--- 'import os'" in done.stdout
  assert 'decode:' in done.stdout and 'tokens/s' in done.stdout
  bad = run(cmd[:-1] + ['--max_new_tokens=40'], env, timeout=300)
  assert bad.returncode == 2 and 'exceeds the context' in bad.stderr
  assert 'Traceback' not in bad.stderr


def test_generate_with_params_sharded_like_training(checkpoint):
  """Params on a (data, fsdp, tensor) = (2, 2, 2) mesh by the training rules: the same tokens."""
  from train import sharding

  _, cfg, params = checkpoint
  if cfg.positions == 'learned':
    pytest.skip('one family is enough: the decode path is shared')
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  shardings = sharding.tree_shardings(models.logical_axes(cfg), models.param_shapes(cfg), mesh)
  sharded = jax.device_put(params, shardings)
  assert len(jax.tree.leaves(sharded)[0].sharding.device_set) == 8
  np.testing.assert_array_equal(
    np.asarray(models.generate(cfg, sharded, PROMPTS, NEW)),
    np.asarray(models.generate(cfg, params, PROMPTS, NEW)),
  )
