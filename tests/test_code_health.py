"""Code-health guards read from the source: no import circle among the project's modules (lazy
imports inside functions included, TYPE_CHECKING-only ones aside), short functions in train/ and
scaling/, typed parameters, and tests/ mirroring the source folders."""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ('models', 'train', 'scaling', 'configs', 'bench')
MAX_LINES = 80  # per function in train/ and scaling/
MIN_TYPED = 0.85  # typed fraction of non-test function parameters


def _modules() -> dict:
  """Dotted module name -> parsed tree, for main.py and every module of the packages."""
  out = {'main': ast.parse((REPO / 'main.py').read_text())}
  for pkg in PACKAGES:
    for path in (REPO / pkg).rglob('*.py'):
      parts = path.relative_to(REPO).with_suffix('').parts
      name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
      out[name] = ast.parse(path.read_text())
  return out


def _type_checking_nodes(tree: ast.AST) -> set:
  """ids of the nodes under `if TYPE_CHECKING:` (imports for annotations only)."""
  ids = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.If) and 'TYPE_CHECKING' in ast.unparse(node.test):
      ids.update(id(n) for n in ast.walk(node))
  return ids


def _imports(name: str, tree: ast.AST, known: dict) -> set:
  """Project modules `name` imports anywhere in its body; `from pkg import sub` counts as pkg.sub."""
  skip, out = _type_checking_nodes(tree), set()
  for node in ast.walk(tree):
    if id(node) in skip:
      continue
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for a in node.names:
        sub = f'{node.module}.{a.name}'
        out.add(sub if sub in known else node.module)
  return {m for m in out if m in known and m != name}


def _cycles(graph: dict) -> list:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        found.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def _functions(tree: ast.AST):
  return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_import_circles():
  mods = _modules()
  graph = {name: _imports(name, tree, mods) for name, tree in mods.items()}
  assert _cycles(graph) == []


def test_layers_import_one_way():
  """models/ <- train/ <- scaling/ <- main.py; configs/ import no trainer code."""
  mods = _modules()
  below = {
    'models': ('train', 'scaling', 'bench'),
    'train': ('scaling', 'bench'),
    'configs': ('train', 'scaling', 'bench'),
  }
  wrong = []
  for name, tree in mods.items():
    for dep in _imports(name, tree, mods):
      if dep.split('.')[0] in below.get(name.split('.')[0], ()) or dep == 'main':
        wrong.append(f'{name} -> {dep}')
  assert wrong == []


def test_functions_in_train_and_scaling_are_short():
  long = [
    f'{name}.{fn.name}: {fn.end_lineno - fn.lineno + 1} lines'
    for name, tree in _modules().items()
    if name.split('.')[0] in ('train', 'scaling')
    for fn in _functions(tree)
    if fn.end_lineno - fn.lineno + 1 > MAX_LINES
  ]
  assert long == []


def test_parameters_are_typed():
  typed = total = 0
  for tree in _modules().values():
    for fn in _functions(tree):
      a = fn.args
      params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *(p for p in (a.vararg, a.kwarg) if p)]
      params = [p for p in params if p.arg not in ('self', 'cls')]
      total += len(params)
      typed += sum(p.annotation is not None for p in params)
  assert typed / total >= MIN_TYPED, f'{typed}/{total} = {typed / total:.1%} typed'


def test_loop_and_validation_do_not_import_the_harness():
  """lm-eval is a plug-in: whoever wants it builds its evaluator; the loop only calls it."""
  mods = _modules()
  for name in ('train.loop', 'train.validation'):
    assert 'train.tools.harness' not in _imports(name, mods[name], mods), name


def test_inner_layers_of_train_and_scaling_import_one_way():
  """Inside train/: distillation/ and tools/ build on the core (train/*.py, train/data/), which
  imports neither; inside scaling/: studies/ build on the library (scaling/*.py), which imports
  none of them."""
  mods = _modules()
  upper = {'train': ('train.distillation', 'train.tools'), 'scaling': ('scaling.studies',)}

  def in_upper(name: str) -> bool:
    return any(name == u or name.startswith(u + '.') for u in upper.get(name.split('.')[0], ()))

  wrong = [
    f'{name} -> {dep}'
    for name, tree in mods.items()
    if name.split('.')[0] in upper and not in_upper(name)
    for dep in _imports(name, tree, mods)
    if dep.split('.')[0] == name.split('.')[0] and in_upper(dep)
  ]
  assert wrong == []


def test_tests_mirror_the_source_tree():
  """tests/<package>/test_<name>.py sits in a folder the source has (tests/train/tools/ for
  train/tools/), and no two test files share a name (pytest imports them by it)."""
  files = sorted((REPO / 'tests').rglob('test_*.py'))
  for path in files:
    folder = path.parent.relative_to(REPO / 'tests')
    assert folder == pathlib.Path('.') or (REPO / folder).is_dir(), f'{path}: no {folder}/'
  names = [p.name for p in files]
  assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
