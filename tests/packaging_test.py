"""pyproject.toml installs what requirements*.txt pin, and ships the data files."""

import os
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pins(name):
  with open(os.path.join(REPO, name)) as f:
    return [
        line.strip()
        for line in f
        if line.strip() and not line.startswith(('#', '-r'))
    ]


def _project():
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)


def test_dependencies_are_the_requirements_pins():
  project = _project()['project']
  assert project['dependencies'] == _pins('requirements.txt')
  extras = project['optional-dependencies']
  assert extras['test'] == _pins('requirements-test.txt')
  assert extras['cache'] == _pins('requirements-cache.txt')
  jax = next(p for p in _pins('requirements.txt') if p.startswith('jax=='))
  assert extras['tpu'] == [jax.replace('jax==', 'jax[tpu]==')]


def test_packages_and_data_cover_the_tree():
  setuptools = _project()['tool']['setuptools']
  assert setuptools['packages']['find']['include'] == [
      'spt_jax*',
      'tasks*',
      'gin_configs*',
  ]
  data = setuptools['package-data']
  assert data['gin_configs'] == ['**/*.gin']
  kinds = {
      os.path.splitext(f)[1]
      for folder in ('templates', 'data')
      for f in os.listdir(os.path.join(REPO, 'tasks', folder))
  }
  patterns = ' '.join(data['tasks'])
  assert all(kind in patterns for kind in kinds), kinds
  # Every folder of packaged code is a package (setuptools finds only those).
  for top in ('spt_jax', 'tasks', 'gin_configs'):
    for root, dirs, files in os.walk(os.path.join(REPO, top)):
      dirs[:] = [
          d for d in dirs if d not in ('__pycache__', 'templates', 'data')
      ]
      if any(f.endswith(('.py', '.gin')) for f in files):
        assert '__init__.py' in files, root
