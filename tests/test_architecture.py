"""The layers point one way (setup.cfg's import-linter contracts), and core stays pure.

import-linter is a test requirement (setup.cfg's ``test`` extra, installed by CI): its absence is a
failure, not a skip. The core check below does not depend on it: it reads every module of
``glmx_workflows.core`` (imports inside functions too) and imports them all in a fresh interpreter.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "glmx_workflows" / "core"
# what core may never reach: the workflow engine, BIDS queries, and every layer above it (files live in io)
FORBIDDEN = ("nipype", "bids", "glmx_workflows.io", "glmx_workflows.spec", "glmx_workflows.interfaces",
             "glmx_workflows.workflows", "glmx_workflows.reports", "glmx_workflows.api", "glmx_workflows.cli",
             "glmx_workflows.planning", "glmx_workflows.engine")


def _core_modules():
    mods = sorted(p for p in CORE.glob("*.py"))
    assert len(mods) > 10, "core modules not found"
    return mods


def _imports(path):
    """Absolute names of everything a module imports, at any depth of its code."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = "glmx_workflows.core"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module
            yield name, node.lineno
            for alias in node.names:  # "from .. import io" names a module
                yield f"{name}.{alias.name}", node.lineno


def _forbidden(name):
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_import_contracts_kept():
    from importlinter import cli  # noqa: F401  (a test requirement: pip install -e '.[test]')

    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    proc = subprocess.run([sys.executable, "-c", code, "--config", str(ROOT / "setup.cfg"), "--no-cache"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_every_core_module_imports_nothing_forbidden():
    bad = [f"{path.name}:{line} imports {name}" for path in _core_modules() for name, line in _imports(path)
           if _forbidden(name)]
    assert not bad, "; ".join(bad)


def test_the_static_check_sees_a_forbidden_import(tmp_path):
    # the check above is only as good as its parser: a lazy import inside a function is caught too
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy\n\ndef f():\n    from ..io import tables\n    import nipype.pipeline\n"
                     "    from .. import io\n")
    found = sorted({name for name, _ in _imports(probe) if _forbidden(name)})
    assert found == ["glmx_workflows.io", "glmx_workflows.io.tables", "nipype.pipeline"]


def test_core_imports_without_nipype_bids_or_io():
    names = [f"glmx_workflows.core.{p.stem}" for p in _core_modules() if p.stem != "__init__"]
    code = ("import sys\n"
            f"for name in {names!r}:\n    __import__(name)\n"
            f"bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in {FORBIDDEN!r}))\n"
            "assert not bad, 'core pulled in ' + ', '.join(bad)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
