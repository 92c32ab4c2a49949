"""train/tools/compress.py's run config: what calibrates and evaluates a compression of a source."""

import json

from configs import default
from train import validation
from train.tools import compress


def test_run_config_of_a_quantized_workdir_drops_its_quantized_record(tmp_path):
  """A quantized workdir's config.json carries a "quantized" record (scheme, group) beside the
  source's config: compressing it again without --config takes the config, not the record."""
  config = default.get_config().to_dict()
  config['quantized'] = {'scheme': 'int4', 'group': 64}
  (tmp_path / 'config.json').write_text(json.dumps(config))
  run = compress.run_config(str(tmp_path), None)
  assert 'quantized' not in run and run.init_from == ''
  assert validation.derive(run, 1).model == validation.derive(default.get_config(), 1).model
