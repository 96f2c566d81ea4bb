"""Helpers for the tests of issue 13 points 1, 2, 5, 8 (tests/test_providers_*.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT


def rawgw_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m rawgw ARGS`` from the tree under test (RAWGW_TEST_SRC, else this repo)."""
    full = {k: v for k, v in os.environ.items() if k != "RAWGW_CONFIG"}
    full["PYTHONPATH"] = os.environ.get("RAWGW_TEST_SRC") or str(REPO_ROOT)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "rawgw", *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=30)
