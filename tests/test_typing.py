"""The public API's annotations, checked with mypy: tests/typing/api_usage.py
uses every public function as users do and misuses each where the
annotations must catch it (every `type: ignore` there must be needed)."""
from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_public_api_annotations_hold():
    import firkin

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(firkin.__file__))
    if os.path.basename(root) not in ("site-packages", "dist-packages"):
        # a source tree (an in-place build on PYTHONPATH); an installed firkin
        # is found by mypy in the interpreter's site-packages, which mypy
        # refuses to be given on MYPYPATH
        env["MYPYPATH"] = root
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--warn-unused-ignores", "--strict-equality",
         "--follow-imports=silent", "--python-version", "3.10", "--no-error-summary",
         os.path.join(HERE, "typing", "api_usage.py")],
        capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
