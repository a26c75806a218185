"""``etx load --spawn`` end to end: it starts an exchange, funds its load members through
the registry staff (each with a stream of its own) and drives orders (issue 13 holds
the load tool's full tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_load_spawn_funds_and_trades() -> None:
    done = subprocess.run([sys.executable, "-m", "tools.cli", "load", "--spawn", "--seconds", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "acknowledged (0 rejected)" in done.stdout and "orders/s" in done.stdout, done.stdout
