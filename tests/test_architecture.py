"""The layers point one way (setup.cfg's import-linter contracts)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_kept():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    proc = subprocess.run([exe, "--config", str(ROOT / "setup.cfg")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_core_imports_without_nipype():
    code = ("import sys, glmx_workflows.core.events, glmx_workflows.core.confounds, glmx_workflows.core.design, "
            "glmx_workflows.core.formula; assert 'nipype' not in sys.modules, 'core pulled in nipype'")
    subprocess.run([sys.executable, "-c", code], check=True)
