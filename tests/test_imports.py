"""The package's modules import each other without a circle.

Read from the source (ast), imports inside functions included: an import put
inside a function to dodge a circle still makes one.
"""
import ast
from pathlib import Path

import scipion_gain

PACKAGE = Path(scipion_gain.__file__).resolve().parent


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imports_of(path, modules):
    """The package's modules that ``path`` imports (anywhere in it)."""
    name = module_name(path)
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split('.')
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # 'from package import module' depends on that module; any other name on the
            # package (its __init__) itself
            targets = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules
                       else target for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def import_graph():
    paths = {module_name(p): p for p in PACKAGE.rglob('*.py')}
    return {name: imports_of(path, paths) for name, path in paths.items()}


def circles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_the_checker_sees_a_circle_held_open_inside_a_function():
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert circles(graph) == [['a', 'b', 'c']]
    source = PACKAGE / 'estimator' / 'stages' / 'lattice.py'
    assert 'scipion_gain.estimator.filters' in imports_of(source, import_graph())


def test_the_estimator_has_no_import_circle():
    graph = import_graph()
    estimator = {name: {t for t in targets if t.startswith('scipion_gain.estimator')}
                 for name, targets in graph.items() if name.startswith('scipion_gain.estimator')}
    assert circles(estimator) == []


def test_the_package_has_no_import_circle_but_the_lazy_scipion_plugin():
    # the package's __getattr__ loads the Scipion Plugin only when Scipion asks for it (so
    # that the estimator and the command line never import pyworkflow); the plugin reads
    # the package's __version__, defined before anything is imported
    assert circles(import_graph()) == [['scipion_gain', 'scipion_gain.plugin']]
