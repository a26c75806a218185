"""The settler's child process: it writes exactly what a settler thread writes, it
ignores stop signals meant for the whole service, and it never outlives its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from settlement import Exchange, Ledger
from settlement.audit import audit
from settlement.settler import Settler
from settlement.store import open_store
from tests.settlement.helpers import FEES, INSTRUMENTS
from tests.settlement.workload import stream

ROOT = Path(__file__).resolve().parents[2]


def _settle(url: str, process: bool) -> tuple[int, list[object]]:
    ex = Exchange(INSTRUMENTS, Ledger(FEES))
    settler = Settler(url, batch_max=50, pending_max=10_000, process=process).start()
    assert settler.process == process
    cmds = stream(5)
    for i in range(0, len(cmds), 41):
        ex.apply_batch(cmds[i:i + 41])
        assert settler.pump(ex.ledger, ex.last_seq)
    last = settler.close()
    assert last == ex.last_seq and settler.written and settler.batches >= settler.written // 50
    if process:
        assert settler._child is not None and settler._child.returncode == 0
    store = open_store(url)
    try:
        assert audit(store, ex.ledger) == []
        return store.last_seq(), list(store.postings())
    finally:
        store.close()


def test_the_child_process_writes_what_a_thread_writes(store_url: str, tmp_path: Path) -> None:
    assert Settler(store_url).process  # a store named by its URL: a child process by default
    by_thread = _settle(str(tmp_path / "thread.sqlite"), process=False)
    assert _settle(store_url, process=True) == by_thread


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_the_child_ignores_a_stop_signal_and_dies_with_its_parent(tmp_path: Path) -> None:
    """The child is stopped inside its first transaction (the store's test pause), so
    only the parent-death signal can end it once the parent is killed."""
    url = str(tmp_path / "registry.sqlite")
    script = (
        "import time\n"
        "from settlement.settler import Settler\n"
        f"s = Settler({url!r}).start()\n"
        "s.submit([], 1)\n"
        "while s._child is None:\n"
        "    time.sleep(0.01)\n"
        "print(s._child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), ETX_TEST_PAUSE_IN_BATCH="1")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    child = 0
    try:
        assert parent.stdout is not None and parent.stderr is not None
        child = int(parent.stdout.readline())
        assert parent.stderr.readline().startswith("PAUSED")  # the child is inside its transaction
        os.kill(child, signal.SIGINT)  # e.g. a Ctrl-C meant for the exchange
        os.kill(child, signal.SIGTERM)
        time.sleep(0.5)
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the settler process outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child and _alive(child):  # leave nothing behind when the test fails
            os.kill(child, signal.SIGKILL)
