"""pytest configuration of the benchmark suites: a saved run records which build of the
exchange core it measured and how busy the machine was when it started, so that
``benchmarks.compare`` can say when two runs are not alike."""

from __future__ import annotations

import os
from typing import Any

import engine.matching

# Taken when pytest loads this file, before any suite runs (the machine is shared).
LOAD_AT_START = os.getloadavg()


def pytest_benchmark_update_machine_info(config: Any, machine_info: dict[str, Any]) -> None:
    origin = str(engine.matching.__spec__.origin)
    machine_info["etx_build"] = "compiled" if origin.endswith(".so") else "interpreted"
    machine_info["load_average_at_start"] = [round(x, 2) for x in LOAD_AT_START]
