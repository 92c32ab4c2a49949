"""Orbax checkpoints: async, atomic, keep-last-N plus keep-every-K; train state + run metadata.

The data position needs only the step (batches are a function of (seed, step)); the
metadata records what the stream depends on so a resume with a different stream fails.
Each checkpoint's metadata also carries a checksum of every array's contents, computed on
device before the save and inside orbax's atomic commit, so a torn or corrupted checkpoint
is detected on restore, moved aside and the previous good one used (`restore_latest_good`).
A LoRA run's checkpoints hold its adapters only (`stored`): their metadata's LORA_BASE record
names the frozen base and its checksums (train/init_from.py loads and verifies it).
"""

import datetime
import gc
import json
import logging
import os
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from models import lora
from models.config import PyTree

CORRUPT_DIR = 'checkpoints.corrupt'  # bad checkpoints are moved here, never deleted.
# The metadata key of a LoRA run's frozen base: {'init_from', 'base', 'step', 'checksum'}.
LORA_BASE = 'lora_base'


# Replica-parallel saving (the replicas of a replicated array each write a slice of it) compiles
# a slice per array shape and device at a process's first save: 80 compiles, ~2.5 s, for a
# 1-layer model on 8 devices. Below 1 MiB per slice the split saves no write time, so such
# arrays are written whole by one replica; larger ones keep it. orbax's default handler
# otherwise (its metadata store included); the files written are the same.
def _register_array_handler() -> None:
  default = ocp.type_handlers.get_type_handler(jax.Array)
  handler = ocp.type_handlers.ArrayHandler(
    array_metadata_store=default._array_metadata_store,
    min_slice_bytes_for_replica_parallel=1 << 20,
  )
  absl_logger = logging.getLogger('absl')  # orbax's: not its "overriding jax.Array" warning.
  disabled, absl_logger.disabled = absl_logger.disabled, True  # (absl's verbosity stays unset.)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logger.disabled = disabled


_register_array_handler()


def manager(workdir: str, train_config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  silence_abandoned_io()
  options = ocp.CheckpointManagerOptions(
    max_to_keep=train_config.keep_checkpoints,
    keep_period=train_config.keep_every or None,
    enable_async_checkpointing=train_config.async_checkpoint,
    cleanup_tmp_directories=True,  # a save cut short (kill, disk full) left only a tmp dir.
    create=True,
  )
  return ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), 'checkpoints'),
    options=options,
    item_names=('state', 'meta'),
  )


def _leaf_checksum(x: jax.Array) -> jax.Array:
  """Two order-independent 32-bit sums of the array's raw words: sum(w_i * (2i+1)) and
  sum(rotl(w_i, 13) ^ (i * golden)). Integer sums wrap, so they are exact under any sharding
  or reduction order; an odd weight makes any single changed word change the first sum."""
  words = jax.lax.bitcast_convert_type(
    x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  )
  w = words.reshape(-1).astype(jnp.uint32)
  i = jnp.arange(w.shape[0], dtype=jnp.uint32)
  rot = (w << 13) | (w >> 19)
  return jnp.stack([jnp.sum(w * (2 * i + 1)), jnp.sum(rot ^ (i * jnp.uint32(0x9E3779B9)))])


@jax.jit
def _checksums(state: PyTree) -> PyTree:
  return jax.tree.map(_leaf_checksum, state)


def checksum(state: PyTree) -> dict:
  """{leaf path: 16 hex digits} of the state's contents (a global value on every process)."""
  sums = jax.device_get(_checksums(state))
  flat, _ = jax.tree_util.tree_flatten_with_path(sums)
  return {
    jax.tree_util.keystr(path): ''.join(f'{int(v):08x}' for v in np.asarray(s)) for path, s in flat
  }


def stored(state: PyTree, meta: dict) -> PyTree:
  """What a checkpoint with `meta` holds of a train state: all of it, or with a LORA_BASE record
  (a LoRA run's frozen base, referenced) the state with only the adapters as its params."""
  if not meta.get(LORA_BASE):
    return state
  return state.replace(params=lora.split(state.params)[1])


def save(
  mngr: ocp.CheckpointManager, step: int, state: PyTree, meta: dict, force: bool = False
) -> None:
  """Checkpoint `step`: the state (`stored`: a LoRA run's adapters) and `meta` + checksums."""
  state = stored(state, meta)
  meta = {**meta, 'checksum': checksum(state)}
  mngr.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    force=force,
  )


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: PyTree) -> tuple[PyTree, dict]:
  """Restore onto the shardings carried by `abstract_state` (ShapeDtypeStructs with .sharding)."""
  out = mngr.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
    ),
  )
  return out['state'], out['meta']


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  """Only the JSON metadata of `step` (cheap; read before the arrays to check compatibility)."""
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def array_shapes(directory: str, step: int) -> dict | None:
  """{leaf path: shape} of checkpoint `step`'s state as written (orbax's array metadata; nothing
  is loaded), or None when that metadata cannot be read (a damaged checkpoint: restoring says)."""
  handlers = {'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}
  try:
    with ocp.CheckpointManager(
      directory, item_names=('state', 'meta'), item_handlers=handlers
    ) as m:
      tree = m.item_metadata(step)['state']
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {leaf_name(p): tuple(x.shape) for p, x in leaves}
  except Exception:  # unreadable metadata: orbax/json raise many types.
    return None


def leaf_name(path: tuple) -> str:
  """A leaf's path as 'params.layers.attn.query' / 'opt_state.1.0.mu...': the same for a train
  state (attributes) and orbax's metadata of it (dict keys)."""
  return '.'.join(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k)))) for k in path)


def other_shapes(tree: PyTree, written: dict) -> list[tuple[str, tuple, tuple]]:
  """(leaf name, shape in the checkpoint, shape in `tree`) of each leaf whose shapes differ."""
  out = []
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    k = leaf_name(path)
    if k in written and written[k] != tuple(x.shape):
      out.append((k, written[k], tuple(x.shape)))
  return out


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


# Metadata keys (context.stream_meta) -> the config fields they come from.
_FIELDS = {
  'dataset': 'data.dataset',
  'tokenizer': 'data.tokenizer',
  'seq_len': 'data.seq_len',
  'global_batch_size': 'train.global_batch_size',
  **{k: f'data.{k}' for k in ('pack', 'truncation', 'eval_fraction')},
}


def check_meta(saved: dict, current: dict, workdir: str = '') -> None:
  """The data stream and model must match the checkpoint's, else resuming is not exact."""
  saved_flat, current_flat = _flat({k: saved[k] for k in current if k in saved}), _flat(current)
  diffs = [
    f'config.{_FIELDS.get(k, k)}={saved_flat[k]!r} (now {v!r})'
    for k, v in current_flat.items()
    if k in saved_flat and saved_flat[k] != v
  ]
  if 'pipeline' in current and saved.get('pipeline') != current['pipeline']:
    diffs.append(
      f'input pipeline {saved.get("pipeline", "before token shards")!r} '
      f'(now {current["pipeline"]!r}: another batch order)'
    )
  if diffs:
    raise ValueError(
      f'the checkpoint in {workdir or "the workdir"} was written with '
      f'{", ".join(diffs)}; restore those settings or use a new --workdir'
    )


def _agree(ok: bool) -> bool:
  """True only if every process found the checkpoint good (all take the same branch)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.array([int(ok)]))))


def set_aside(mngr: ocp.CheckpointManager, workdir: str, step: int, into: str = CORRUPT_DIR) -> str:
  """Move checkpoint `step` to workdir/<into>/<step>-<time> (process 0); never delete."""
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  dest = epath.Path(workdir) / into / f'{step}-{stamp}'
  if jax.process_index() == 0:
    dest.parent.mkdir(parents=True, exist_ok=True)
    (epath.Path(mngr.directory) / str(step)).rename(dest)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'lmscale set aside checkpoint {step}')
  mngr.reload()
  return str(dest)


def _is_abandoned_read(exc_value: BaseException | None, obj: object = None) -> bool:
  return (
    isinstance(exc_value, RuntimeError) and 'Event loop is closed' in str(exc_value)
  ) or 'orbax' in getattr(getattr(obj, 'cr_code', None), 'co_filename', '')


def silence_abandoned_io() -> None:
  """After one array read or write of a failed restore/save raises (torn file, disk full), orbax
  abandons the others; each then prints an 'Event loop is closed' traceback (hundreds of lines
  under the one error that matters). Drop those, nothing else."""
  if getattr(sys.excepthook, 'lmscale', False):
    return
  unraisable, excepthook = sys.unraisablehook, sys.excepthook

  def quiet_unraisable(u: object) -> None:  # sys.UnraisableHookArgs
    if not _is_abandoned_read(u.exc_value, u.object):
      unraisable(u)

  def quiet_excepthook(kind: type, value: BaseException, tb: types.TracebackType) -> None:
    if not _is_abandoned_read(value):
      excepthook(kind, value, tb)

  quiet_excepthook.lmscale = True
  sys.unraisablehook, sys.excepthook = quiet_unraisable, quiet_excepthook


def restore_latest_good(
  mngr: ocp.CheckpointManager, abstract_state: PyTree, meta: dict, workdir: str
) -> tuple[PyTree | None, int | None]:
  """(state, step) from the newest checkpoint that loads and matches its checksums, or
  (None, None). A checkpoint that does not is reported and moved aside; one written with a
  different config raises ValueError (bad input, nothing is moved). A LoRA checkpoint's state
  comes back as `stored` it: the adapters as its params (its LORA_BASE record says the base)."""
  for step in sorted(mngr.all_steps(), reverse=True):
    state, problem = None, 'corrupt on another process'  # unless this process finds otherwise.
    try:
      saved = restore_meta(mngr, step)
    except Exception as e:  # torn or garbled JSON: orbax/json raise many types.
      saved, problem = None, f'unreadable metadata ({type(e).__name__}: {str(e)[:200]})'
    if _agree(saved is not None):
      check_meta(saved, meta, workdir)
      target = stored(abstract_state, saved)
      check_structure(saved.get('checksum'), target, step, workdir)
      try:
        state, _ = restore(mngr, step, target)
        problem = _verify(state, saved.get('checksum'))
      except Exception as e:  # truncated/emptied array files: TensorStore raises many types.
        state, problem = None, f'unreadable arrays ({str(e).split(". ")[0][:160]})'
        # Intact arrays of other shapes are not corrupt (read only here: 0.1 s per checkpoint).
        check_structure(None, target, step, workdir, array_shapes(mngr.directory, step))
    gc.collect()  # abandoned reads of a failed restore end here, not mid-training.
    if _agree(problem is None):
      if saved.get('checksum') is None:
        logging.warning(
          'Checkpoint %d in %s has no checksums (written by an older version); loaded unverified.',
          step,
          workdir,
        )
      return state, step
    dest = set_aside(mngr, workdir, step)
    logging.warning(
      'Checkpoint %d in %s is corrupt: %s; moved to %s, trying the previous one.',
      step,
      workdir,
      problem,
      dest,
    )
  return None, None


class StateMismatch(ValueError):
  """An intact checkpoint of another train-state structure (an optimizer, loss-scale or sparsity
  setting changed): bad input, so nothing is moved and the run stops (exit 2)."""


def check_structure(
  saved_sums: dict | None,
  abstract_state: PyTree,
  step: int,
  workdir: str,
  written: dict | None = None,
) -> None:
  """Raises StateMismatch when checkpoint `step` holds other arrays than the state this config
  builds: other leaf paths (its checksums are keyed by them) or other shapes (`written`, orbax's
  array metadata: array_shapes). Both are read without loading an array."""
  leaves = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  what = []
  if saved_sums is not None:  # (written before checksums: the shapes below, then orbax, check)
    paths = {jax.tree_util.keystr(p) for p, _ in leaves}
    gone, new = sorted(set(saved_sums) - paths), sorted(paths - set(saved_sums))
    what = [f'{len(l)} {k}, e.g. {l[0]}' for k, l in (('not built now', gone), ('new', new)) if l]
  moved = other_shapes(abstract_state, written) if not what and written else []
  if moved:
    k, there, now = moved[0]
    what = [f'{len(moved)} of other shapes, e.g. {k} is {there} there, {now} now']
  if what:
    raise StateMismatch(
      f'checkpoint {step} in {workdir} is intact but holds another train state than this config '
      f'builds ({"; ".join(what)})'
    )


def config_changes(workdir: str, config: dict, limit: int = 6) -> str:
  """The settings of config that differ from workdir/config.json, as 'key=old (now new)'."""
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      old = _flat(json.load(f))
  except (OSError, ValueError):
    return ''
  new = _flat(json.loads(json.dumps(config)))  # tuples as the saved lists.
  keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
  shown = [f'config.{k}={old.get(k)!r} (now {new.get(k)!r})' for k in keys[:limit]]
  return ', '.join(shown) + (f' and {len(keys) - limit} more' if len(keys) > limit else '')


def _verify(state: PyTree, expected: dict | None) -> str | None:
  """None if `state` matches the checksums saved with it (or none were saved), else what differs."""
  if expected is None:
    return None
  got = checksum(state)
  bad = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
  if bad:
    return f'checksum mismatch in {len(bad)} array(s), e.g. {bad[0]}'
  return None


def write_config(workdir: str, config_json: str) -> None:
  """Write workdir/config.json (process 0), keeping a different previous one as config.previous.json.
  Called only once the resume check has passed, so a rejected run never changes it."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
    if old == config_json:
      return
    os.replace(path, os.path.join(workdir, 'config.previous.json'))
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config_json)
  os.replace(tmp, path)


def write_params(workdir: str, config_json: str, params: PyTree, step: int, meta: dict) -> None:
  """A params-only workdir (config.json + one checkpoint) that every loader accepts: init_from,
  train.tools.export, train.tools.sample, train.tools.harness, distillation teachers (e.g. a pruned
  model). Refuses a directory that already holds a checkpoint: nothing is ever overwritten."""
  ckpt_dir = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise ValueError(f'{workdir}: already holds checkpoints; choose a new --out')
  os.makedirs(workdir, exist_ok=True)
  options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
  mngr = ocp.CheckpointManager(ckpt_dir, options=options, item_names=('state', 'meta'))
  sums = {'.params' + k: v for k, v in checksum(params).items()}  # as a train state's are keyed.
  mngr.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave({'params': params}),
      meta=ocp.args.JsonSave({**meta, 'checksum': sums}),
    ),
  )
  mngr.wait_until_finished()
  write_config(workdir, config_json)
