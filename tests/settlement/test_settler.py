"""The settler and the audit, against both stores; the crash test with a real
subprocess killed in the middle of a batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine import CASH
from settlement import Exchange, Ledger, Posting, TradePosting
from settlement.audit import audit
from settlement.settler import Settler, SettlerError
from settlement.store import open_store
from tests.settlement.helpers import FEES, INSTRUMENTS
from tests.settlement.settle_proc import run
from tests.settlement.workload import stream

ROOT = Path(__file__).resolve().parents[2]


def exchange_run(seed: int = 1) -> Exchange:
    ex = Exchange(INSTRUMENTS, Ledger(FEES))
    ex.apply_batch(stream(seed))
    return ex


def test_settler_writes_everything_in_bounded_batches(store_url: str) -> None:
    ex = Exchange(INSTRUMENTS, Ledger(FEES))
    settler = Settler(store_url, batch_max=100, pending_max=100_000).start()
    cmds = stream(2)
    for i in range(0, len(cmds), 37):
        ex.apply_batch(cmds[i:i + 37])
        assert settler.pump(ex.ledger, ex.last_seq)
    assert settler.close() == ex.last_seq
    assert settler.batches >= settler.written // 100
    store = open_store(store_url)
    try:
        assert store.last_seq() == ex.last_seq
        assert audit(store, ex.ledger) == []
    finally:
        store.close()


def test_a_full_queue_refuses_and_keeps_the_outbox(store_url: str) -> None:
    ex = Exchange(INSTRUMENTS, Ledger(FEES))
    settler = Settler(store_url, batch_max=10, pending_max=10)
    cmds = stream(3, orders=300)
    ex.apply_batch(cmds[:100])
    assert settler.pump(ex.ledger, ex.last_seq)  # not started: stays queued
    ex.apply_batch(cmds[100:])
    n = len(ex.ledger.postings)
    assert n and not settler.pump(ex.ledger, ex.last_seq)
    assert len(ex.ledger.postings) == n  # nothing taken, nothing lost
    settler.start()
    settler.flush()
    assert settler.pump(ex.ledger, ex.last_seq)
    settler.close()
    store = open_store(store_url)
    try:
        assert audit(store, ex.ledger) == []
    finally:
        store.close()


def test_a_failed_write_stops_the_settler_loudly(store_url: str) -> None:
    settler = Settler(store_url, batch_max=10).start()
    bad = Posting("X1", 1, 1, "withdraw", "1", "clerk", (("NOBODY", CASH, -5, 0),), "NOBODY")
    settler.submit([bad], 1)
    with pytest.raises(SettlerError, match="refused"):
        settler.flush()
    with pytest.raises(SettlerError):
        settler.close()


def test_settler_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        Settler("x.sqlite", batch_max=0)
    with pytest.raises(ValueError):
        Settler("x.sqlite", batch_max=10, pending_max=5)


def test_audit_finds_every_kind_of_difference(store: Any) -> None:
    ex = exchange_run()
    store.write_batch(ex.ledger.take_postings(), ex.last_seq)
    assert audit(store, ex.ledger) == []
    # The live ledger disagrees with the store.
    ex.ledger.entries["M001", CASH].balance += 5
    ex.ledger.deposited += 5
    diffs = audit(store, ex.ledger)
    assert any("M001 CNY" in d and "live ledger" in d for d in diffs), diffs
    # Tamper with the store behind its back: a balance, and a posting's body.
    store._exec(f"UPDATE balances SET balance = balance + 7 WHERE account = 'M002' AND asset = {store.ph}", ("CEA24",))
    diffs = audit(store)
    assert any("M002 CEA24" in d for d in diffs), diffs
    assert any("CEA24: allocated - surrendered - retired" in d for d in diffs), diffs


def test_audit_detects_a_partial_or_double_trade(store: Any) -> None:
    ex = exchange_run()
    postings = ex.ledger.take_postings()
    trade = next(p for p in postings if isinstance(p, TradePosting))
    # Trades written as plain postings with legs of their own: part of a trade, and the
    # same trade id under another posting id.
    half = Posting("T999999", trade.seq, trade.ts, "trade", "999999", "", trade.legs[:3])
    twice = Posting("T1000000", trade.seq, trade.ts, "trade", trade.ref, "", trade.legs)
    # A compact trade whose numbers no ledger would make: a reserve above the trading fees.
    greedy = msgspec.structs.replace(trade, trade_id=1000001, qty=1, reserve=2 * trade.trading_fee + 1, buyer_pending=0)
    store.write_batch(postings, ex.last_seq)
    store.write_batch([half, twice, greedy], ex.last_seq)  # the store takes legs it cannot judge
    diffs = audit(store)
    assert any("T999999" in d and "legs" in d for d in diffs), diffs
    assert any(f"trade {trade.ref} settled twice" in d for d in diffs), diffs
    assert any("T1000001" in d and "reserve" in d for d in diffs), diffs


@pytest.mark.parametrize("batch", [3, 7])
def test_killed_mid_batch_the_restart_applies_it_exactly_once(store_url: str, tmp_path: Path, batch: int) -> None:
    """A real settling process is SIGKILLed inside the transaction of batch N, after
    half its postings; a new process replays the stream and resumes."""
    env = dict(os.environ, ETX_TEST_PAUSE_IN_BATCH=str(batch), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "tests.settlement.settle_proc", store_url, "1", "150"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        words = proc.stderr.readline().split()
        assert words[:1] == ["PAUSED"], " ".join(words) + proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    first_id, size = words[1], int(words[2])
    reference = exchange_run(1)
    all_postings = reference.ledger.take_postings()
    cut = [p.posting_id for p in all_postings].index(first_id)
    store = open_store(store_url)
    try:
        # Exactly the batches before the killed one are there, none of its postings.
        assert list(store.postings()) == all_postings[:cut]
        last = store.last_seq()
        assert 0 < last < reference.last_seq and size > 1
        assert all(p.seq > last for p in all_postings[cut:])
    finally:
        store.close()
    # Restart: replays the whole stream, writes only what is missing.
    done = subprocess.run([sys.executable, "-m", "tests.settlement.settle_proc", store_url, "1", "150"],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    _, last_seq, digest = done.stdout.split()
    assert int(last_seq) == reference.last_seq and digest == reference.state_hash()
    store = open_store(store_url)
    try:
        assert list(store.postings()) == all_postings  # each exactly once, in order
        assert store.last_seq() == reference.last_seq
        assert audit(store, reference.ledger) == []
    finally:
        store.close()


def test_restart_after_a_clean_run_writes_nothing_new(store_url: str) -> None:
    last, digest, ex = run(store_url, 4, 500)
    last2, digest2, _ = run(store_url, 4, 500)
    assert (last, digest) == (last2, digest2)
    store = open_store(store_url)
    try:
        assert audit(store, ex.ledger) == []
        stored = list(store.postings())
        # Every command posting once (the ledger's applied ids), every trade once, in order.
        assert len([p for p in stored if p.kind != "trade"]) == len(ex.ledger.applied)
        trade_ids = [p.trade_id for p in stored if isinstance(p, TradePosting)]
        assert trade_ids == list(range(1, ex.ledger.trade_mark + 1)) and trade_ids
    finally:
        store.close()


def test_an_unavailable_store_is_written_again_once_it_works(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that cannot be written now (StoreUnavailable) holds nothing up: the
    settler tries the same batch again, says so, and everything is written once the
    store works; the record is the same as if nothing had happened."""
    import settlement.settler as settler_module
    from settlement.store import StoreUnavailable

    monkeypatch.setattr(settler_module, "RETRY_FIRST_S", 0.01)
    failures = {"left": 3}

    class Flaky:
        """The real store, unavailable for its first three writes."""

        def __init__(self) -> None:
            self.store = open_store(store_url)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.store, name)

        def write_batch(self, postings: Any, last_seq: int) -> int:
            if failures["left"]:
                failures["left"] -= 1
                raise StoreUnavailable("the registry store is unavailable: connection lost (a test)")
            return self.store.write_batch(postings, last_seq)

    told: list[str] = []
    ex = exchange_run(3)
    settler = Settler(Flaky, batch_max=50, on_trouble=told.append).start()  # type: ignore[arg-type]
    assert settler.pump(ex.ledger, ex.last_seq)
    assert settler.close() == ex.last_seq
    assert told[:3] == ["the registry store is unavailable: connection lost (a test)"] * 3 and told[3:] == [""]
    store = open_store(store_url)
    try:
        assert audit(store, ex.ledger) == [] and store.last_seq() == ex.last_seq
    finally:
        store.close()


def test_a_settler_process_waits_for_its_store_to_be_reachable(tmp_path: Path) -> None:
    """The child process's store cannot be opened at first (its folder is not there):
    it says so and tries again, and writes everything once it can."""
    import threading

    folder = tmp_path / "later"
    url = str(folder / "registry.sqlite")
    told: list[str] = []
    came = threading.Event()

    def trouble(text: str) -> None:
        told.append(text)
        came.set()

    ex = exchange_run(4)
    settler = Settler(url, batch_max=100, on_trouble=trouble).start()
    assert settler.process
    assert settler.pump(ex.ledger, ex.last_seq)
    assert came.wait(60), "the settler process never said its store was unavailable"
    folder.mkdir()
    assert settler.close(timeout_s=120) == ex.last_seq
    assert told[0].startswith("cannot open SQLite store") and told[-1] == ""
    store = open_store(url)
    try:
        assert audit(store, ex.ledger) == []
    finally:
        store.close()
