"""Orbax checkpoints: async, atomic, keep-last-N plus keep-every-K; train state + run metadata.

The data position needs only the step (batches are a function of (seed, step)); the
metadata records what the stream depends on so a resume with a different stream fails.
"""
import os

import orbax.checkpoint as ocp


def manager(workdir: str, train_config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=train_config.keep_checkpoints,
      keep_period=train_config.keep_every or None,
      enable_async_checkpointing=train_config.async_checkpoint,
      create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options, item_names=('state', 'meta'))


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict, force: bool = False):
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)), force=force)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """Restore onto the shardings carried by `abstract_state` (ShapeDtypeStructs with .sharding)."""
  out = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return out['state'], out['meta']


def check_meta(saved: dict, current: dict):
  """The data stream and model must match the checkpoint's, else resuming is not exact."""
  for key, value in current.items():
    if key in saved and saved[key] != value:
      raise ValueError(f'Checkpoint was written with {key}={saved[key]!r} but the config now '
                       f'gives {value!r}; use a new --workdir or restore the config.')
