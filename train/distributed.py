"""Multi-host start-up: jax.distributed.initialize when the run spans several processes."""

import glob
import logging
import os
import sys
import threading

import jax
import ml_collections

# Environment variables that mean "this process is one of several" (TPU pod slices,
# SLURM, Open MPI, or an explicit JAX coordinator).
_MULTI_PROCESS_ENV = (
  'TPU_WORKER_HOSTNAMES',
  'MEGASCALE_COORDINATOR_ADDRESS',
  'SLURM_NTASKS',
  'OMPI_COMM_WORLD_SIZE',
  'JAX_COORDINATOR_ADDRESS',
)


def _looks_multi_process() -> bool:
  """True on Cloud TPU VMs (JAX then finds the slice's hosts itself) and in multi-process envs."""
  if glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'):
    return True
  if ',' in os.environ.get('TPU_WORKER_HOSTNAMES', ''):
    return True
  for var in _MULTI_PROCESS_ENV[1:]:
    value = os.environ.get(var, '')
    if value and value != '1':
      return True
  return False


def initialize(dist_config: ml_collections.ConfigDict) -> None:
  """Call jax.distributed.initialize per `config.distributed` (before any other JAX call)."""
  mode = dist_config.initialize
  explicit = bool(dist_config.coordinator_address)
  if mode == 'no' or (mode == 'auto' and not explicit and not _looks_multi_process()):
    return
  if jax.config.jax_platforms and 'cpu' in jax.config.jax_platforms:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {}
  if explicit:
    kwargs['coordinator_address'] = dist_config.coordinator_address
  if dist_config.num_processes > 0:
    kwargs['num_processes'] = dist_config.num_processes
  if dist_config.process_id >= 0:
    kwargs['process_id'] = dist_config.process_id
  _connect(kwargs, dist_config.timeout_s)
  logging.info(
    'jax.distributed: process %d of %d, %d local / %d global devices',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def _connect(kwargs: dict, timeout_s: int) -> None:
  """jax.distributed.initialize, or after timeout_s one `error:` line and exit 1: JAX's own
  timeout aborts the process from C++ with a stack trace, so ours fires first (30 s earlier)."""
  done = threading.Event()

  def give_up() -> None:
    if done.wait(timeout_s):
      return
    who = kwargs.get('process_id', '?')
    sys.stderr.write(
      f'error: config.distributed: process {who} of {kwargs.get("num_processes", "?")} waited '
      f'{timeout_s} s for the others at {kwargs.get("coordinator_address", "(auto)")}; start '
      'every process (each with its process_id) or check the address and num_processes '
      '(config.distributed.timeout_s sets the wait)\n'
    )
    sys.stderr.flush()
    os._exit(1)

  threading.Thread(target=give_up, daemon=True, name='lmscale-distributed-timeout').start()
  try:
    jax.distributed.initialize(**kwargs, initialization_timeout=timeout_s + 30)
  finally:
    done.set()
