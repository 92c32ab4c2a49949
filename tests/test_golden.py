"""Golden values: the first steps of the default config (GPT-2) and of its LLaMA-style twin,
pinned (as nanodo's train test pins first-step metrics), so a refactor is shown to change no result.

Bit for bit on one machine, but XLA's CPU code differs in the last bits between CPU models (the
values below, taken on one x86-64 CPU, are 1-2 float32 ulps off on another), so they are compared
to 2e-6: a change to the model, data order or optimizer moves them by far more."""

import json
import os

import numpy as np
import pytest

from configs import default
from train import loop, validation

# float.hex of train/loss, train/grad_norm for steps 1-3 (8 simulated CPU devices, x86-64).
GOLDEN = {
  'gpt2': [
    ['0x1.5842b60000000p+2', '0x1.3e90e80000000p+3'],
    ['0x1.57d2760000000p+2', '0x1.4efde80000000p+3'],
    ['0x1.4c635c0000000p+2', '0x1.e0cbd80000000p+2'],
  ],
  'llama': [
    ['0x1.6334320000000p+2', '0x1.42a0ca0000000p+3'],
    ['0x1.63454c0000000p+2', '0x1.5b72480000000p+3'],
    ['0x1.58091c0000000p+2', '0x1.2baade0000000p+3'],
  ],
}

LLAMA = dict(
  positions='rope',
  norm='rmsnorm',
  mlp='swiglu',
  n_kv_heads=2,
  tie_embeddings=False,
  use_bias=False,
)


def _first_steps(data_dir, workdir, model_overrides):
  c = default.get_config()
  c.model.update(model_overrides)
  c.data.data_dir = data_dir
  c.train.update(log_every=1, async_checkpoint=False)
  loop.run(
    validation.derive(c), workdir, stop_after=3
  )  # the 500-step schedule, stopped after step 3.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return [[float(r[k]).hex() for k in ('train/loss', 'train/grad_norm')] for r in rows]


# The default config's pin in the default tier; its LLaMA twin's (20 s) in the slow tier.
@pytest.mark.parametrize('family', ['gpt2', pytest.param('llama', marks=pytest.mark.slow)])
def test_first_steps_are_pinned(family, data_dir, tmp_path):
  got = _first_steps(data_dir, str(tmp_path), LLAMA if family == 'llama' else {})
  np.testing.assert_allclose(
    [[float.fromhex(v) for v in row] for row in got],
    [[float.fromhex(v) for v in row] for row in GOLDEN[family]],
    rtol=2e-6,
    err_msg=str(got),
  )
