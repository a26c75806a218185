"""The engine's and the settlement core's hot modules run compiled (mypyc, see setup.py), from an up-to-date
build, and the compiled engine behaves exactly as its source run by the interpreter:
the same events, byte for byte, and the same state hash, on seeded workloads of the
engine alone (every regime, with and without holds; the property tests' streams, with
position limits, member suspensions, notes and operators' cancels) and of the whole
exchange core (engine and settlement ledger, with fees). ``ETX_PURE_PYTHON=1``
installs run the source itself; the first test then checks that nothing compiled is
loaded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import engine.book
import engine.ledger
import engine.matching
import settlement.exchange
import settlement.ledger

ROOT = Path(__file__).resolve().parents[2]
COMPILED = (engine.book, engine.ledger, engine.matching, settlement.ledger, settlement.exchange)
SEED = 20261130

PROBE = """
import hashlib, sys
import msgspec
import engine.matching
import settlement.ledger
from benchmarks.generator import REGIMES, generate
from engine.stream import build_engine
from tests.crash.workload import exchange_workload
from tests.property.workload import build_engine as property_engine, recorded

seed = int(sys.argv[1])
print(engine.matching.__spec__.origin, settlement.ledger.__spec__.origin)

def digest(core, batches):
    h = hashlib.blake2b(digest_size=16)
    enc = msgspec.msgpack.Encoder()
    for batch in batches:
        core.apply_batch(batch)
        for ev in core.out:
            h.update(enc.encode(ev))
        core.out.clear()
    return f"{h.hexdigest()} {core.state_hash()}"

for regime in sorted(REGIMES):
    for holds in (False, True):
        work = generate(regime, 6000, seed, holds=holds, members=8)
        cmds = work.all()
        print(regime, holds, digest(build_engine(work.header), [cmds[i:i + 97] for i in range(0, len(cmds), 97)]))
for rseed in (1, 4):  # position limits near A and B (1), near C and POOR (4)
    pair = recorded(rseed, 4000)
    journal = pair.journal
    print("rules", rseed, digest(property_engine(pair.config)[0], [journal[i:i + 89] for i in range(0, len(journal), 89)]))
make_core, cmds = exchange_workload(8000, seed)
print("exchange", digest(make_core(), [cmds[i:i + 101] for i in range(0, len(cmds), 101)]))
"""


def run_probe(pythonpath: list[Path], cwd: Path) -> list[str]:
    """The probe's lines, run in ``cwd`` (an empty folder: python -c puts it first on
    the path) with the given import path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, pythonpath)), PYTHONHASHSEED="0")
    out = subprocess.run([sys.executable, "-c", PROBE, str(SEED)], env=env, cwd=cwd, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_the_engine_runs_compiled_from_its_current_source() -> None:
    if os.environ.get("ETX_PURE_PYTHON") == "1":
        assert all(str(m.__spec__.origin).endswith(".py") for m in COMPILED), [m.__spec__.origin for m in COMPILED]
        return
    for module in COMPILED:
        loaded = str(module.__spec__.origin)
        assert loaded.endswith(".so"), (
            f"{module.__name__} runs from {loaded}, not compiled: install etx with ./dev test "
            "(or pip install -e .), or set ETX_PURE_PYTHON=1 to run the source on purpose")
        # The module's own extension (its origin, as mypyc sets it, lies beside the
        # shared library in engine/).
        stem = ROOT / module.__name__.replace(".", "/")
        built = stem.with_name(stem.name + sysconfig.get_config_var("EXT_SUFFIX"))
        source = stem.with_suffix(".py")
        assert built.stat().st_mtime >= source.stat().st_mtime, (
            f"{built.name} is older than {source.name}: the engine would run stale code; "
            "rebuild with ./dev test (or pip install -e .)")


def test_compiled_and_interpreted_engines_agree(tmp_path: Path) -> None:
    """The same probe, once on this installation and once on a copy of the engine's
    source alone (no compiled module next to it), prints the same lines."""
    print(f"seed {SEED}")
    if os.environ.get("ETX_PURE_PYTHON") == "1":
        pytest.fail("this installation runs the source: there is no compiled engine to compare")
    source = tmp_path / "src" / "engine"
    for package in ("engine", "settlement"):  # their source alone
        (tmp_path / "src" / package).mkdir(parents=True)
        for path in (ROOT / package).glob("*.py"):
            shutil.copy(path, tmp_path / "src" / package / path.name)
    empty = tmp_path / "run"
    empty.mkdir()
    compiled = run_probe([ROOT], empty)
    interpreted = run_probe([source.parent, ROOT], empty)
    assert compiled[0].count(".so") == 2, compiled[0]
    assert interpreted[0] == f"{source / 'matching.py'} {source.parent / 'settlement' / 'ledger.py'}", interpreted[0]
    assert len(compiled) > 10
    assert compiled[1:] == interpreted[1:]
