"""What several test modules share: the repo root, free ports, `main.py` command lines and runs as
subprocesses (alone or as a jax.distributed pair), tiny model shapes and random HF checkpoints.

Test modules import from here (`from helpers import ...`; pytest puts tests/ on sys.path), never
from each other. Fixtures (data_dir, tiny_config) are in conftest.py."""

import contextlib
import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The schedule of the seconds-fast runs (conftest.py's tiny_config, tiny_main_cmd): 4 steps of
# batch 8, logged every 2, evaluated at 4 on one batch, checkpointed every 2, one warmup step.
TINY_RUN = {
  'train.global_batch_size': 8,
  'train.num_steps': 4,
  'train.log_every': 2,
  'train.eval_every': 4,
  'train.eval_batches': 1,
  'train.checkpoint_every': 2,
  'optimizer.warmup_steps': 1,
}

# model-config keys of the LLaMA block (rope, RMSNorm, SwiGLU, no biases); GPT-2's is the default.
LLAMA_BLOCK = dict(positions='rope', norm='rmsnorm', mlp='swiglu', use_bias=False)
# transformers config kwargs of tiny random checkpoints (add vocab_size and what differs).
HF_GPT2 = dict(n_embd=32, n_head=4, n_layer=2, n_positions=32, bos_token_id=None, eos_token_id=None)
HF_LLAMA = dict(
  hidden_size=32,
  num_attention_heads=4,
  num_key_value_heads=2,
  num_hidden_layers=2,
  max_position_embeddings=32,
)


def apply_overrides(config, overrides: dict):
  """Sets {'section.key': value} on a ConfigDict, as `--config.section.key=value` would; returns it."""
  for key, value in overrides.items():
    *sections, name = key.split('.')
    node = config
    for section in sections:
      node = node[section]
    node[name] = value
  return config


def config_flags(overrides: dict) -> list:
  """The same {'section.key': value} as main.py flags."""
  return [f'--config.{key}={value}' for key, value in overrides.items()]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def cpu_env(devices: int | None = None, **extra) -> dict:
  """os.environ for a child process on the CPU, with `devices` simulated devices (None: as ours)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', **extra)
  if devices is not None:  # replaces only the device count: the test session's other flags stay.
    flags = env.get('XLA_FLAGS', '').split()
    flags = [f for f in flags if not f.startswith('--xla_force_host_platform_device_count')]
    env['XLA_FLAGS'] = ' '.join([*flags, f'--xla_force_host_platform_device_count={devices}'])
  return env


def run(cmd, env=None, timeout=600) -> subprocess.CompletedProcess:
  """`cmd` in the repo root, stdout and stderr captured as text; the caller checks the exit code."""
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def main_cmd(workdir, *flags, config='configs/default.py') -> list:
  """`python main.py --config=<config> --workdir=<workdir> <flags>`."""
  return [sys.executable, 'main.py', f'--config={config}', f'--workdir={workdir}', *flags]


def tiny_main_cmd(
  workdir, data_dir, *flags, steps=4, log_every=2, eval_every=4, checkpoint_every=2
):
  """main_cmd for a TINY_RUN of the default config with 1 layer (`flags` after, so they win)."""
  schedule = {
    'train.num_steps': steps,
    'train.log_every': log_every,
    'train.eval_every': eval_every,
    'train.checkpoint_every': checkpoint_every,
  }
  values = {'data.data_dir': data_dir, **TINY_RUN, **schedule, 'model.n_layers': 1}
  return main_cmd(workdir, *config_flags(values), *flags)


def fsdp2_main_cmd(workdir, data_dir, *flags, steps=3, **every):
  """The two-process tests' run: tiny_main_cmd, 64 wide, params sharded over fsdp=2, 3 steps."""
  every = {'log_every': steps, 'eval_every': steps, 'checkpoint_every': steps, **every}
  return tiny_main_cmd(
    workdir,
    data_dir,
    '--config.model.d_model=64',
    '--config.model.d_ff=128',
    '--config.mesh.fsdp=2',
    *flags,
    steps=steps,
    **every,
  )


def main_result(stdout: str) -> dict:
  """The final metrics JSON a main.py run prints last on stdout."""
  return json.loads(stdout[stdout.index('{') :])


def distributed_flags(port: int, process_id: int, num_processes: int = 2) -> list:
  """The config flags that make a main.py run one process of a jax.distributed run on localhost."""
  return [
    f'--config.distributed.coordinator_address=localhost:{port}',
    f'--config.distributed.num_processes={num_processes}',
    f'--config.distributed.process_id={process_id}',
  ]


def run_pair(make_cmd, timeout=600) -> list:
  """`make_cmd(*distributed_flags(port, i))` as processes 0 and 1 of one jax.distributed run, on 2
  CPU devices each; asserts both exit 0 and returns their (stdout, stderr)."""
  port = free_port()
  procs = [
    subprocess.Popen(
      make_cmd(*distributed_flags(port, i)),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=cpu_env(2),
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=timeout) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


def make_hf(config_cls, kwargs, seed=0):
  """Random transformers model; every weight (biases, norm scales too) drawn so all are tested."""
  import torch
  import transformers

  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config_cls(**kwargs)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      is_norm_scale = p.ndim == 1 and ('norm' in name or 'ln_' in name) and name.endswith('weight')
      p.copy_((1.0 if is_norm_scale else 0.0) + 0.1 * torch.randn_like(p))
  return model


def save(model, path, **kw) -> str:
  model.save_pretrained(path, **kw)
  return str(path)


@contextlib.contextmanager
def tmpfs(path, size, read_only=False):
  """A real small (or read-only) filesystem at `path`; skips where mounting is not permitted."""
  os.makedirs(path, exist_ok=True)
  opts = f'size={size}' + (',ro' if read_only else '')
  if subprocess.run(
    ['mount', '-t', 'tmpfs', '-o', opts, 'tmpfs', str(path)], capture_output=True
  ).returncode:
    pytest.skip('mounting a tmpfs needs root / CAP_SYS_ADMIN on this machine')
  try:
    yield str(path)
  finally:
    subprocess.run(['umount', '-l', str(path)], check=False)


def train_from(config, workdir, **kw):
  """loop.run of `config` into `workdir` from its config.init_from, as main.py runs it."""
  from train import init_from, loop, validation

  derived = validation.derive(config)
  return loop.run(derived, str(workdir), init_params_fn=init_from.params_fn(config), **kw)


def checkpoint_meta(workdir, step):
  """The meta record (checksums, lora_base, ...) of a workdir's checkpoint `step`."""
  with open(os.path.join(workdir, 'checkpoints', str(step), 'meta', 'metadata')) as f:
    return json.load(f)


def restored_state(workdir, config):
  """(step, params, opt_state) of a workdir's latest checkpoint as loop.run resumes it."""
  import jax

  from train import checkpoint, context, validation

  r = context.setup(validation.derive(config))
  mngr = checkpoint.manager(str(workdir), config.train)
  with jax.set_mesh(r.mesh):
    state, step = checkpoint.restore_latest_good(
      mngr, context.abstract_state(r), context.stream_meta(r.config), str(workdir)
    )
  return step, jax.device_get(state.params), jax.device_get(state.opt_state)


# configs/sweeps/isoflop_tiny.py's members made seconds-fast (a test adds its sweep.sizes).
TINY_SWEEP = {
  'train.global_batch_size': 8,
  'data.seq_len': 32,
  'model.max_len': 32,
  'train.eval_batches': 1,
  'sweep.budgets': (1.2e8,),
  'sweep.sizes_per_budget': (),
  'sweep.min_steps': 2,
  'sweep.min_warmup_steps': 1,
  'sweep.warmup_fraction': 0.0,
  'sweep.logs_per_member': 100,
  'sweep.family.head_dim': 8,
}
