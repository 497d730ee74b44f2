"""The layout a reader relies on: no import circle among the top-level files, matplotlib in figures.py alone.
(Formatting and lint are ruff's: `ruff format --check . && ruff check .`, configured in pyproject.toml.)"""

import ast
import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, '*.py')))


def imports_of(name):
    """Every name imported anywhere in the file (module level and inside functions)."""
    tree = ast.parse(open(os.path.join(ROOT, name + '.py')).read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split('.')[0])
    return out


def test_no_module_imports_one_that_imports_it_back():
    graph = {m: imports_of(m) & set(MODULES) - {m} for m in MODULES}

    def reaches(a, b, seen=()):  # is there an import path a -> ... -> b?
        return b in graph[a] or any(reaches(c, b, seen + (a,)) for c in graph[a] - set(seen) - {a})

    circles = sorted(f"{a} <-> {b}" for a in MODULES for b in graph[a] if reaches(b, a))
    assert not circles, circles
    # and dynamically: what a fresh interpreter loads on `import m` never imports m back
    code = (
        "import json, sys; sys.path.insert(0, %r); import {m}; "
        "print(json.dumps(sorted(k for k in sys.modules if k in %r)))" % (ROOT, MODULES)
    )
    procs = {
        m: subprocess.Popen(
            [sys.executable, '-c', code.format(m=m)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for m in MODULES
    }
    for m, p in procs.items():
        loaded = json.loads(p.communicate(timeout=120)[0])
        assert m in loaded
        back = [k for k in loaded if k != m and m in graph[k]]
        assert not back, f"importing {m} loads {back}, which import {m} back"


def test_matplotlib_only_in_figures():
    users = [m for m in MODULES if 'matplotlib' in imports_of(m)]
    assert users == ['figures'], users
    # importing every other file (figures.py included: it imports matplotlib lazily) loads no matplotlib
    code = "import sys; sys.path.insert(0, %r); import %s; print('matplotlib' in sys.modules)" % (
        ROOT,
        ', '.join(MODULES),
    )
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == 'False', out.stderr[-2000:]
