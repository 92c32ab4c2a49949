"""Test setup: 8 simulated CPU devices (set before JAX is imported); the packages come from
`pip install --no-deps -e .` (pyproject.toml)."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# One persistent compilation cache per test session (subprocesses inherit it): the many tests that
# train the same tiny step, resume it or run it again in a child process load the executable
# instead of compiling it again. Empty at the start, so every session still compiles each HLO once.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='lmscale-test-xla-cache-')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')  # tiny steps too.


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One TFDS data_dir per test session: the embedded corpus is built (offline) once."""
  return os.environ.get('TEST_TFDS_DIR') or str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def tiny_config(data_dir):
  """Factory for a seconds-fast config on the embedded corpus, with {'section.key': value} overrides."""
  from helpers import TINY_RUN, apply_overrides

  from configs import base

  def make(overrides=None):
    c = base.get_config()
    c.model.update(d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=32)
    c.data.update(seq_len=32, data_dir=data_dir)
    c.train.async_checkpoint = False
    c.optimizer.lr = 1e-3
    return apply_overrides(c, {**TINY_RUN, **(overrides or {})})

  return make
