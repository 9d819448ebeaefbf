"""The package's import graph: no circles, and the library never climbs up into the commands.

Read from the source (ast), so imports inside functions count too; only the ``if __name__ ==
'__main__'`` block of a module that doubles as ``python -m`` target is left out.
"""

import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, 'vxm_keras')
# the command layer: argument parsing, printing, exit codes (cli.py and what builds on it)
COMMAND_LAYER = ('vxm_keras.cli', 'vxm_keras.commands', 'vxm_keras.bench')


def _modules():
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
                found[module.removesuffix('.__init__')] = path
    return found


def _is_main_guard(node):
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == '__name__')


def _imports(module, path, modules):
    tree = ast.parse(open(path).read())
    package = module if path.endswith('__init__.py') else module.rsplit('.', 1)[0]
    body = [node for node in tree.body if not _is_main_guard(node)]
    targets = set()
    for node in (sub for top in body for sub in ast.walk(top)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split('.')
                base = '.'.join(parts[:len(parts) - node.level + 1])
                base = f'{base}.{node.module}' if node.module else base
            else:
                base = node.module or ''
            candidates = [base] + [f'{base}.{alias.name}' for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        # the module itself, or the submodule imported from a package (from . import layers); a
        # module's own parent packages are loaded before it anyway, they are not its dependencies
        targets |= {c for c in candidates if c in modules and c != module and not module.startswith(c + '.')}
    return targets


def _graph():
    modules = _modules()
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def _in_command_layer(module):
    return any(module == layer or module.startswith(layer + '.') for layer in COMMAND_LAYER)


def test_the_graph_reader_sees_imports_of_every_kind():
    graph = _graph()
    assert 'vxm_keras.layers' in graph['vxm_keras.networks']           # from .layers import ...
    assert 'vxm_keras.spatial' in graph['vxm_keras.networks']          # inside a function
    assert 'vxm_keras.cli' in graph['vxm_keras.commands.register']     # from ..cli import ...
    assert 'vxm_keras.commands.prepare' not in graph['vxm_keras.prepare']  # the __main__ block is left out


def test_no_import_circle():
    graph = _graph()
    circles = []

    def visit(module, path, done):
        for target in sorted(graph[module]):
            if target in path:
                circles.append(path[path.index(target):] + [target])
            elif target not in done:
                done.add(target)
                visit(target, path + [target], done)

    for start in sorted(graph):
        visit(start, [start], set())
    assert not circles, circles[:5]


def test_the_library_never_imports_the_commands():
    graph = _graph()
    upward = {module: sorted(t for t in targets if _in_command_layer(t))
              for module, targets in graph.items() if not _in_command_layer(module)}
    assert {m: t for m, t in upward.items() if t} == {}


# the library's modules a user imports (not the commands, not internal plumbing)
PUBLIC = ('affine', 'augment', 'callbacks', 'device', 'errors', 'evaluation', 'generators', 'grid', 'io', 'layers',
          'losses', 'metrics', 'modelio', 'native', 'networks', 'optim', 'outputs', 'pipeline', 'plot', 'prepare',
          'registration', 'runs', 'settings', 'shipped', 'spatial', 'synth', 'templates', 'transforms', 'unet')


def test_public_modules_say_what_they_export_and_document_it():
    import importlib
    import inspect
    undocumented, missing, absent = [], [], []
    for name in PUBLIC:
        module = importlib.import_module(f'vxm_keras.{name}')
        if not hasattr(module, '__all__'):
            absent.append(name)
            continue
        missing += [f'{name}.{n}' for n in module.__all__ if not hasattr(module, n)]
        for n in module.__all__:
            obj = getattr(module, n, None)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and not inspect.getdoc(obj):
                undocumented.append(f'{name}.{n}')
    assert (absent, missing, undocumented) == ([], [], [])
