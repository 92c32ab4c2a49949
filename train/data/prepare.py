"""One-time preparation: TFDS text split -> tokenized, sharded token files (train/data/shards.py).

  python -m train.data.prepare --config=configs/default.py [--config.data.dataset=c4/en:3.1.0 ...]
      [--num_shards=0] [--workers=1] [--process_index=-1 --process_count=0]

Prepares the train and eval split of every source in config.data.dataset, under
config.data.prepared_dir (default <data_dir>/tokenized), with config.data.tokenizer. Shard i of n
holds the i-th of n even, contiguous ranges of the split's documents. On several hosts run the
same command on each: process p of P writes shards p, p+P, ... (SLURM, Open MPI and TPU-VM worker
ids are read from the environment unless --process_index/--process_count are given), and
--workers local processes share this host's shards. Finished shards are skipped on a re-run;
whichever process completes the last shard writes manifest.json, after which training reads the
directory. Bad input (unknown dataset, another tokenizer than the directory's) is one `error:`
line and exit code 2, with nothing written.
"""

import os
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from configs import schema
from train import cli
from train.data import sources, writer


def _env_process() -> tuple[int, int]:
  """(process index, count) from SLURM, Open MPI or a Cloud TPU VM's worker variables."""
  env = os.environ
  for rank, size in (
    ('SLURM_PROCID', 'SLURM_NTASKS'),
    ('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE'),
  ):
    if rank in env and size in env:
      return int(env[rank]), int(env[size])
  if 'TPU_WORKER_ID' in env and env.get('TPU_WORKER_HOSTNAMES'):
    return int(env['TPU_WORKER_ID']), len(env['TPU_WORKER_HOSTNAMES'].split(','))
  return 0, 1


def prepare(
  config: schema.Config | schema.Section,
  *,
  num_shards: int = 0,
  process_index: int = -1,
  process_count: int = 0,
  workers: int = 1,
) -> list[dict]:
  """Prepare the train and eval split of every source of config.data; the manifests written
  (fewer than the splits when other processes still have shards to write)."""
  if process_count <= 0 or process_index < 0:
    process_index, process_count = _env_process()
  if not 0 <= process_index < process_count:
    raise ValueError(f'--process_index={process_index} not in [0, --process_count={process_count})')
  share = writer.Share(num_shards, process_index, process_count, workers)
  out = []
  for source in sources.parse_sources(config.data):
    splits = (
      (source.train_split,) if source.carves_eval else (source.train_split, source.eval_split)
    )
    for split in dict.fromkeys(splits):
      request = writer.SplitRequest.of(config.data, source, split)
      manifest = writer.prepare_split(request, share)
      if manifest is not None:
        t = manifest['totals']
        print(
          f'{source.dataset} {split}: {manifest["num_shards"]} shards, {t["num_documents"]} '
          f'documents, {t["num_bytes"]} bytes -> {t["num_tokens"]} tokens in {request.out_dir}',
          flush=True,
        )
        out.append(manifest)
      else:
        print(
          f'{source.dataset} {split}: my shards are done; others are still being written '
          f'into {request.out_dir}',
          flush=True,
        )
  return out


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  with cli.one_line_errors():
    prepare(
      f.config,
      num_shards=f.num_shards,
      process_index=f.process_index,
      process_count=f.process_count,
      workers=f.workers,
    )


if __name__ == '__main__':
  config_flags.DEFINE_config_file(
    'config', None, 'Training config file (path[:arg]).', lock_config=True
  )
  flags.DEFINE_integer(
    'num_shards',
    0,
    'Shards per split (0: about 64 MiB of text each, at '
    'least one per process; an existing directory keeps its own).',
  )
  flags.DEFINE_integer('workers', 1, "Local processes tokenizing this process's shards.")
  flags.DEFINE_integer('process_index', -1, "This host's index (-1: from the environment).")
  flags.DEFINE_integer('process_count', 0, 'Number of hosts preparing (0: from the environment).')
  flags.mark_flags_as_required(['config'])
  cli.run(main)
