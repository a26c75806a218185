"""Build of etx: the exchange core's hot modules are compiled with mypyc.

The modules in ``COMPILED`` (matching engine and settlement ledger) are plain, typed
Python (mypy --strict). mypyc, mypy's compiler, turns them into C extensions that run
the core about 1.5 times as fast (docs/benchmarks.md). The source stays the
reference: with ``ETX_PURE_PYTHON=1`` nothing is compiled and the same code runs
interpreted (tests/engine/test_compiled.py checks that both give the same events and
state hash). Everything else is configured in pyproject.toml.
"""

import os
from pathlib import Path

from setuptools import setup

COMPILED = ["engine/book.py", "engine/matching.py", "engine/ledger.py", "settlement/ledger.py", "settlement/exchange.py"]

ext_modules = []
if os.environ.get("ETX_PURE_PYTHON") == "1":
    # Compiled modules of an earlier build would take precedence over the source.
    for built in [*Path(__file__).parent.glob("engine/*.so"), *Path(__file__).parent.glob("settlement/*.so")]:
        built.unlink()
else:
    from mypyc.build import mypycify

    # group_name puts mypyc's shared library inside the engine package
    # (engine/compiled__mypyc.*.so) rather than at the top level, where an editable
    # install would not find it.
    ext_modules = mypycify(COMPILED, opt_level="3", group_name="engine.compiled")

setup(ext_modules=ext_modules)
