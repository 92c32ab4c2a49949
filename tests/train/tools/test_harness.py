"""Downstream evaluation through lm-evaluation-harness (train/tools/harness.py): log-likelihoods
against transformers, toy tasks (multiple choice, generation, rolling) in lm-eval's YAML format
through lm_eval.simple_evaluate, lm_eval metrics from a training run, unknown-task errors, the
CLI."""

import json
import os
import sys

import flax.linen as nn
import jax
import lm_eval
import numpy as np
import pytest
import torch
import transformers
from helpers import HF_GPT2, cpu_env, fsdp2_main_cmd, make_hf, run, run_pair, save
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from train import context, loop, sharding, validation
from train.tools import harness

TOL = 1e-4
MAX_LEN = 48

DOCS = {
  'mc': [
    {'question': 'import', 'choices': [' os', ' ((', ' \x00'], 'label': 0},
    {'question': 'def f(x):\n  return', 'choices': [' x', ' 1 +'], 'label': 0},
    {'question': 'for i in', 'choices': [' range(3):', ' ]]'], 'label': 0},
  ],
  'gen': [
    {'prompt': 'def main():\n  ', 'answer': 'pass'},
    {'prompt': 'x = ', 'answer': '1'},
    {'prompt': 'y' * 60, 'answer': 'y'},
  ],
  'roll': [{'text': 'import os\nimport sys\n'}, {'text': 'def f(x):\n  return x * 2\n' * 5}],
}
TASKS = {
  'toy_mc': (
    'mc',
    'output_type: multiple_choice\ndoc_to_text: "{{question}}"\n'
    'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
    'metric_list:\n  - metric: acc\n',
  ),
  'toy_gen': (
    'gen',
    'output_type: generate_until\ndoc_to_text: "{{prompt}}"\n'
    'doc_to_target: "{{answer}}"\ngeneration_kwargs:\n  until: ["\\n", "x"]\n'
    '  max_gen_toks: 6\n  do_sample: false\n'
    'metric_list:\n  - metric: exact_match\n',
  ),
  'toy_roll': (
    'roll',
    'output_type: loglikelihood_rolling\ndoc_to_text: ""\n'
    'doc_to_target: "{{text}}"\nmetric_list:\n  - metric: bits_per_byte\n',
  ),
}


@pytest.fixture(scope='module')
def task_dir(tmp_path_factory):
  """Toy tasks in lm-eval's format: one YAML each over a local jsonl file."""
  d = tmp_path_factory.mktemp('lm_eval_tasks')
  for name, (docs, body) in TASKS.items():
    data = d / f'{docs}.jsonl'
    data.write_text(''.join(json.dumps(doc) + '\n' for doc in DOCS[docs]))
    (d / f'{name}.yaml').write_text(
      f'task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n'
      f'test_split: test\n{body}'
    )
  return str(d)


@pytest.fixture(scope='module')
def gpt2(tmp_path_factory):
  """(transformers model, hf dir): a tiny random byte-vocabulary GPT-2, every weight drawn."""
  kwargs = dict(HF_GPT2, vocab_size=257, n_positions=MAX_LEN, bos_token_id=256, eos_token_id=256)
  model = make_hf(transformers.GPT2Config, kwargs)
  return model, save(model, tmp_path_factory.mktemp('gpt2'), safe_serialization=True)


@pytest.fixture(scope='module')
def lm(gpt2):
  """Our adapter on the hf: checkpoint, built the way lm-eval builds registered models."""
  cls = lm_eval.api.registry.get_model('lmscale')
  assert cls is harness.LMScaleLM
  return cls.create_from_arg_string(f'pretrained=hf:{gpt2[1]},tokenizer=byte,batch_size=4')


def _reference(model, pairs):
  """transformers' (sum log p(cont), is greedy) with lm-eval's HF-adapter left truncation."""
  out = []
  for ctx, cont in pairs:
    inp = (ctx + cont)[-(MAX_LEN + 1) :][:-1]
    with torch.no_grad():
      logits = model(torch.tensor([inp])).logits[0, -len(cont) :].double()
    logp = torch.log_softmax(logits, -1)[torch.arange(len(cont)), torch.tensor(cont)]
    out.append((float(logp.sum()), bool((logits.argmax(-1) == torch.tensor(cont)).all())))
  return out


def test_loglikelihoods_match_transformers(gpt2, lm):
  """loglikelihood (batched, bucketed, left-truncated) and loglikelihood_rolling vs PyTorch."""
  model, _ = gpt2
  requests = [
    ('import', ' os'),
    ('', 'hello'),
    ('def f(x):\n  return', ' x'),
    ('a' * 70, ' long context, truncated'),
    ('q', 'z' * 40),
    ('x = ', '1'),
  ]
  got = lm.loglikelihood([Instance('loglikelihood', {}, r, i) for i, r in enumerate(requests)])
  pairs = [
    lm._encode_pair(c, x) if c else ([lm.prefix_token_id], lm.tok_encode(x)) for c, x in requests
  ]
  want = _reference(model, pairs)
  diffs = [abs(g[0] - w[0]) for g, w in zip(got, want)]
  assert [g[1] for g in got] == [w[1] for w in want]
  # Greedy continuations exist: the model's own argmax continuation of a context.
  ctx = lm.tok_encode('import')
  with torch.no_grad():
    greedy = int(model(torch.tensor([ctx])).logits[0, -1].argmax())
  assert lm.score_tokens([(ctx, [greedy])])[0][1] is True

  texts = ['import os\n', 'def f(x):\n  return x * 2\n' * 5]  # the second spans 3 windows.
  rolling = lm.loglikelihood_rolling(
    [Instance('loglikelihood_rolling', {}, (t,), i) for i, t in enumerate(texts)]
  )
  for text, value in zip(texts, rolling):
    windows = lm_eval.utils.get_rolling_token_windows(
      lm.tok_encode(text), lm.prefix_token_id, MAX_LEN, context_len=1
    )
    windows = [lm_eval.utils.make_disjoint_window(w) for w in windows]
    diffs.append(abs(value - sum(logp for logp, _ in _reference(model, windows))))
  print(f'max |loglikelihood diff| vs transformers: {max(diffs):.2e}')
  assert max(diffs) < TOL, diffs


def test_simple_evaluate_toy_tasks(gpt2, lm, task_dir):
  """multiple_choice, generate_until and loglikelihood_rolling tasks via lm_eval.simple_evaluate."""
  results = lm_eval.simple_evaluate(
    model=lm,
    tasks=list(TASKS),
    bootstrap_iters=0,
    task_manager=TaskManager(include_path=task_dir, include_defaults=False),
  )
  metrics = harness.flat_metrics(results)
  assert 0 <= metrics['lm_eval/toy_mc/acc'] <= 1
  assert 0 <= metrics['lm_eval/toy_gen/exact_match'] <= 1
  assert metrics['lm_eval/toy_roll/bits_per_byte'] > 0
  # multiple choice: acc is the argmax of our log-likelihoods over the choices.
  for sample in results['samples']['toy_mc']:
    scores = [
      lm.loglikelihood([Instance('loglikelihood', {}, args, 0)])[0][0]
      for args in sample['arguments']
    ]
    assert sample['acc'] == float(int(np.argmax(scores)) == sample['target'])
  # generation: transformers' greedy continuation of the left-truncated prompt, cut at `until`.
  model = gpt2[0]
  for sample in results['samples']['toy_gen']:
    prompt = lm.tok_encode(sample['arguments'][0][0])[-(MAX_LEN - 6) :]
    with torch.no_grad():
      new = model.generate(
        torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=256
      )[0, len(prompt) :].tolist()
    want = lm.tok.decode(new[: new.index(256)] if 256 in new else new).split('\n')[0].split('x')[0]
    assert sample['resps'][0][0] == want
  path = os.path.join(task_dir, 'results.json')
  harness.write_results(results, path)
  with open(path) as f:
    json.load(f, parse_constant=lambda c: pytest.fail(f'non-strict JSON constant {c}'))


def test_lm_eval_on_sharded_params_matches_unsharded(tiny_config, task_dir):
  """The loop's evaluator on params sharded over a (data 2, fsdp 2, tensor 2) mesh."""
  config = tiny_config(
    {
      'lm_eval.tasks': ('toy_mc', 'toy_roll'),
      'lm_eval.include_path': task_dir,
      'lm_eval.limit': 2,
      'mesh.fsdp': 2,
      'mesh.tensor': 2,
    }
  )
  r = context.setup(validation.derive(config))
  evaluator = harness.LmEvalEvaluator(config.lm_eval)
  evaluator.start(r)
  with jax.set_mesh(r.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    params = context.init_state(r).params
    assert not params['layers']['mlp']['wi'].sharding.is_fully_replicated
    sharded = evaluator(params)
  local = harness.LMScaleLM(
    model_config=r.derived.model, params=jax.device_get(params), tokenizer='byte', batch_size=8
  )
  want = harness.flat_metrics(harness.TaskSet(['toy_mc', 'toy_roll'], task_dir).evaluate(local, 2))
  assert set(sharded) >= {'lm_eval/toy_mc/acc', 'lm_eval/toy_roll/bits_per_byte'}
  assert sharded == pytest.approx(want, rel=1e-5)


@pytest.mark.slow
def test_training_run_logs_lm_eval_metrics(tiny_config, task_dir, tmp_path):
  """config.lm_eval.tasks: the metric is logged at eval steps next to eval/loss (8-device mesh)."""
  config = tiny_config(
    {
      'lm_eval.tasks': ('toy_mc',),
      'lm_eval.include_path': task_dir,
      'lm_eval.limit': 2,
      'train.num_steps': 2,
      'train.eval_every': 2,
    }
  )
  evaluators = [harness.LmEvalEvaluator(config.lm_eval)]  # as main.py builds it.
  result = loop.run(validation.derive(config), str(tmp_path), evaluators=evaluators)
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert 'eval/loss' in rows[-1] and 0 <= rows[-1]['lm_eval/toy_mc/acc'] <= 1
  assert result['lm_eval/toy_mc/acc'] == rows[-1]['lm_eval/toy_mc/acc']


@pytest.mark.slow
def test_unknown_task_is_one_clear_error(tiny_config, task_dir):
  """Named before anything is loaded or compiled: the loop's evaluator when main.py builds it
  (before the run starts), and the command's entry."""
  config = tiny_config({'lm_eval.tasks': ('toy_mcc',), 'lm_eval.include_path': task_dir})
  with pytest.raises(
    ValueError,
    match=r"config\.lm_eval\.tasks: unknown lm-eval task 'toy_mcc'"
    r".*did you mean 'toy_mc'",
  ):
    harness.LmEvalEvaluator(config.lm_eval)
  with pytest.raises(ValueError, match=r"--tasks: unknown lm-eval task 'hellaswagg'.*'hellaswag'"):
    harness.evaluate_source('/no/such/workdir', 'arc_easy,hellaswagg', include_path=task_dir)
  config.lm_eval.include_path = os.path.join(task_dir, 'missing')
  with pytest.raises(ValueError, match=r'config\.lm_eval\.include_path=.*missing.* not a dir'):
    validation.derive(config, 8)


@pytest.mark.slow
def test_cli_on_a_trained_workdir(tiny_config, task_dir, tmp_path):
  """`python -m train.tools.harness` on a workdir: table, strict results JSON; unknown task: exit
  2."""
  workdir = str(tmp_path / 'w')
  loop.run(validation.derive(tiny_config({'train.num_steps': 2})), workdir)
  env = cpu_env(1)
  cmd = [
    sys.executable,
    '-m',
    'train.tools.harness',
    f'--workdir={workdir}',
    f'--include_path={task_dir}',
    '--limit=2',
  ]
  out = run(cmd + ['--tasks=toy_mc,toy_roll'], env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert '|toy_mc' in out.stdout and 'bits_per_byte' in out.stdout
  with open(os.path.join(workdir, harness.RESULTS_FILE)) as f:
    results = json.load(f, parse_constant=lambda c: pytest.fail(f'non-strict JSON constant {c}'))
  assert 0 <= results['results']['toy_mc']['acc,none'] <= 1
  assert results['config']['checkpoint_step'] == 2
  bad = run(cmd + ['--tasks=toy_mcc'], env)
  errors = [l for l in bad.stderr.splitlines() if l.startswith('error: ')]
  assert bad.returncode == 2 and len(errors) == 1 and 'Traceback' not in bad.stderr, bad.stderr
  assert "unknown lm-eval task 'toy_mcc'" in errors[0]


@pytest.mark.slow
def test_two_processes_log_the_same_lm_eval_metrics(data_dir, task_dir, tmp_path):
  """jax.distributed, 2 processes x 2 devices, params sharded (fsdp 2): lm_eval metrics (all
  three request types) equal one process's on 4 devices."""

  def cmd(workdir, *extra):  # test_multihost's tiny fsdp=2 run, plus the lm-eval tasks.
    return fsdp2_main_cmd(
      workdir,
      data_dir,
      f'--config.lm_eval.tasks={",".join(TASKS)}',
      f'--config.lm_eval.include_path={task_dir}',
      *extra,
    )

  def result(stdout):
    return {k: v for k, v in json.loads(stdout[stdout.index('{') :]).items() if 'lm_eval' in k}

  single = run(cmd(tmp_path / 'single'), cpu_env(4))
  assert single.returncode == 0, single.stderr[-3000:]
  outs = run_pair(lambda *flags: cmd(tmp_path / 'multi', *flags))
  want = result(single.stdout)
  assert {'lm_eval/toy_mc/acc', 'lm_eval/toy_gen/exact_match'} <= set(want)
  assert result(outs[0][0]) == pytest.approx(want, rel=1e-5)


def test_name_task_generator_splits_by_file_and_runs_in_lm_eval(lm, tmp_path):
  """train/data/name_task.py on a small source tree: files split by the corpus's rule, the prompt
  ends at `def `, the completion is the name, and both lm-eval tasks load and score."""
  from train.data import name_task, stdlib_corpus

  root = tmp_path / 'lib'
  names = [f'm{i}.py' for i in range(200)]
  val = next(n for n in names if stdlib_corpus.split_of(n) == 'validation')
  train = next(n for n in names if stdlib_corpus.split_of(n) == 'train')
  body = ''.join(
    f'def {n}(x, y=1):\n    """Return the {n} of x and y."""\n\n'
    for n in ('add', 'mul', 'sub', 'div')
  )
  for rel in (val, train):
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(body + 'def _hidden():\n    """Private, never a task."""\n')
  out = str(tmp_path / 'task')
  assert name_task.write(out, root=str(root)) == {'train': 4, 'validation': 4}
  rows = [json.loads(line) for line in open(os.path.join(out, 'name_task.jsonl'))]
  assert rows[0]['prompt'] == f'# {val}\n# (x, y=1)\n# Return the add of x and y.\ndef '
  assert all(
    r['choices'][r['label']] == r['name'] + '(' and len(set(r['choices'])) == 4 for r in rows
  )
  sft = [json.loads(line) for line in open(os.path.join(out, 'train.jsonl'))]
  assert {r['completion'] for r in sft} == {'add(', 'mul(', 'sub(', 'div('}
  assert all(r['prompt'].startswith(f'# {train}\n') for r in sft)
  assert harness.check_tasks('name_gen,name_mc', out) == ['name_gen', 'name_mc']
  results = lm_eval.simple_evaluate(
    model=lm,
    tasks=['name_gen', 'name_mc'],
    bootstrap_iters=0,
    task_manager=TaskManager(include_path=out, include_defaults=False),
  )
  m = harness.flat_metrics(results)
  assert 0 <= m['lm_eval/name_gen/exact_match'] <= 1 and 0 <= m['lm_eval/name_mc/acc'] <= 1
  assert len(results['samples']['name_mc']) == 4
