"""The tamper suite: copies of a real registry store, altered in a dozen ways, each one
caught by ``etx registry audit --data`` with a message naming what differs.

The data folder is made by a real ``etx serve`` over two runs (accounts, deposits,
allocation, an obligation, trades with fees, an end of day, a surrender; then more
deposits, trades and a withdrawal), and its journal is then cut as retention would
cut it, so that the audit rebuilds the history from the first run's snapshot: the
store's postings before that snapshot are checked against the snapshot's ledger,
those after it one by one against the journal's replay. Tamperings hit both parts.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine import EndOfDay, Side
from engine.journal import Journal, command_decoder, read_journal
from engine.snapshot import SnapshotStore, list_snapshots
from gateway.recovery import JOURNAL_DIR, SNAPSHOT_DIR, journal_command_types
from settlement import Allocate, Deposit, OpenAccount, RegistryDone, SetObligation, Surrender, Withdraw
from settlement.messages import AnyPosting, HolderType, TradePosting
from tests.integration.exchange import Exchange, run, staff_command
from tools import registry as registry_cli

SYMBOL = "CEA24"
_decode = msgspec.msgpack.Decoder(AnyPosting).decode
_encode = msgspec.msgpack.encode


async def _trade(buyer: Any, seller: Any, qty: int, price: int) -> None:
    buyer.new_order(SYMBOL, Side.BUY, qty, price)
    seller.new_order(SYMBOL, Side.SELL, qty, price)
    await buyer.query_instruments()
    await seller.query_instruments()


async def _build(tmp: Path) -> Path:
    ex = Exchange(tmp)
    await ex.start()
    clerk, auth, ops = ex.client("EXCH", "clerk"), ex.client("EXCH", "auth"), ex.client("EXCH", "ops")
    for c in (clerk, auth, ops):
        await c.connect()
    for m in ("M1", "M2", "M3", "M4"):
        assert type(await staff_command(clerk, OpenAccount("", m, int(HolderType.COMPLIANCE), f"{m} Ltd"))) is RegistryDone
        assert type(await staff_command(clerk, Deposit("", m, 100_000_000))) is RegistryDone
        assert type(await staff_command(auth, Allocate("", "AUTHORITY", m, SYMBOL, 10_000))) is RegistryDone
    assert type(await staff_command(auth, SetObligation("", "AUTHORITY", "M1", 2024, 500))) is RegistryDone
    traders = {m: ex.client(m) for m in ("M1", "M2", "M3", "M4")}
    for t in traders.values():
        await t.connect()
    await _trade(traders["M1"], traders["M2"], 100, 10_000)
    await _trade(traders["M3"], traders["M1"], 37, 10_013)
    await _trade(traders["M2"], traders["M4"], 250, 9_987)
    ops.send(EndOfDay())
    await ops.query_instruments()
    assert type(await staff_command(clerk, Surrender("", "M1", SYMBOL, 100, 2024))) is RegistryDone
    for c in (clerk, auth, ops, *traders.values()):
        await c.close()
    assert ex.stop() == 0
    await ex.start()
    clerk = ex.client("EXCH", "clerk")
    await clerk.connect()
    traders = {m: ex.client(m) for m in ("M3", "M4")}
    for t in traders.values():
        await t.connect()
    assert type(await staff_command(clerk, Deposit("", "M3", 500_000))) is RegistryDone
    await _trade(traders["M3"], traders["M4"], 80, 10_005)
    await _trade(traders["M4"], traders["M3"], 20, 10_001)
    assert type(await staff_command(clerk, Withdraw("", "M2", 100_000))) is RegistryDone
    for c in (clerk, *traders.values()):
        await c.close()
    assert ex.stop() == 0
    _cut_journal(ex.data)
    return ex.data


def _cut_journal(data: Path) -> None:
    """Rewrite the journal in small segments and retire those the first snapshot
    covers, as retention does on a long day."""
    journal_dir = data / JOURNAL_DIR
    batches = list(read_journal(journal_dir, command_decoder(journal_command_types())))
    shutil.rmtree(journal_dir)
    with Journal(journal_dir, journal_command_types(), segment_bytes=400) as journal:
        for batch in batches:
            for cmd in batch:  # one record per command: many small segments
                journal.append_batch([cmd])
    snaps = SnapshotStore(data / SNAPSHOT_DIR)
    assert len(snaps.list()) >= 2, snaps.list()
    retired = snaps.retire(journal_dir)
    assert retired.segments, "the first snapshot must cover some of the journal"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(_build(tmp_path_factory.mktemp("tamper")))


def audit(data: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    registry_cli.add_arguments(parser)
    code = registry_cli.run(parser.parse_args(["--data", str(data), "audit"]))
    out, err = capsys.readouterr()
    return code, out + err


def base_seq(data: Path) -> int:
    return list_snapshots(data / SNAPSHOT_DIR)[0][0]


def test_the_untouched_store_is_clean(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = audit(folder, capsys)
    assert code == 0, out
    assert f"seq {base_seq(folder) + 1}-" in out and "from snapshot" in out, out


# --- tamperings ----------------------------------------------------------------------


class Store:
    """The copy's SQLite store, with what the tamperings need."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)

    def postings(self) -> list[tuple[int, str, int, AnyPosting]]:
        rows = self.db.execute("SELECT no, posting_id, seq, body FROM postings ORDER BY no").fetchall()
        return [(no, pid, seq, _decode(body)) for no, pid, seq, body in rows]

    def pick(self, kind: str, after: int | None = None, before: int | None = None) -> tuple[int, str, int, AnyPosting]:
        for row in self.postings():
            p = row[3]
            if p.kind == kind and (after is None or p.seq > after) and (before is None or p.seq <= before):
                return row
        raise AssertionError(f"no {kind} posting in range")

    def rewrite(self, no: int, posting: AnyPosting) -> None:
        self.db.execute("UPDATE postings SET body = ? WHERE no = ?", (_encode(posting), no))

    def add(self, account: str, asset: str, delta: int, pending: int = 0) -> None:
        self.db.execute("UPDATE balances SET balance = balance + ?, pending = pending + ? WHERE account = ? AND asset = ?",
                        (delta, pending, account, asset))

    def adjust_to(self, *pairs: AnyPosting) -> None:
        """Move the balances table as if each ``new`` had been written instead of its
        ``old`` (arguments: old, new, old, new ...), in one step per entry."""
        net: dict[tuple[str, str], list[int]] = {}
        for i, p in enumerate(pairs):
            sign = 1 if i % 2 else -1
            for account, asset, delta, pending in p.legs:
                d = net.setdefault((account, asset), [0, 0])
                d[0] += sign * delta
                d[1] += sign * pending
        for (account, asset), (delta, pending) in net.items():
            self.add(account, asset, delta, pending)


def fee_raised(s: Store, base: int) -> list[str]:
    no, pid, _, p = s.pick("trade", after=base)
    assert type(p) is TradePosting
    new = msgspec.structs.replace(p, trading_fee=p.trading_fee + 1)
    s.rewrite(no, new)
    s.adjust_to(p, new)
    return [pid, p.buyer, "CNY"]


def fee_raised_before_the_snapshot(s: Store, base: int) -> list[str]:
    """A careful forger: the day's settlement frees the seller's proceeds as they now
    are, so the store adds up; only the snapshot of that day tells."""
    eod_no, _, _, eod = s.pick("eod", before=base)
    freed = {a for a, asset, _, q in eod.legs if asset == "CNY" and q}
    no, _, _, p = next(r for r in s.postings() if r[3].kind == "trade" and r[3].seq < eod.seq and r[3].seller in freed)
    assert type(p) is TradePosting
    new = msgspec.structs.replace(p, settlement_fee=p.settlement_fee + 1)
    legs = tuple((a, asset, d, q + 1) if (a, asset) == (p.seller, "CNY") else (a, asset, d, q)
                 for a, asset, d, q in eod.legs)
    new_eod = msgspec.structs.replace(eod, legs=legs)
    s.rewrite(no, new)
    s.rewrite(eod_no, new_eod)
    s.adjust_to(p, new, eod, new_eod)
    return [f"seq {base}", p.seller, "CNY", "balance"]


def settled_seq_behind(s: Store, base: int) -> list[str]:
    last = s.db.execute("SELECT max(seq) FROM postings").fetchone()[0]
    s.db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (last - 1,))
    return [f"last settled seq is {last - 1}", f"seq {last}"]


def out_of_order(s: Store, base: int) -> list[str]:
    rows = [r for r in s.postings() if r[3].seq > base]
    (no_a, pid_a, _, _), (no_b, pid_b, _, _) = next((a, b) for a, b in zip(rows, rows[1:], strict=False) if a[2] != b[2])
    s.db.execute("UPDATE postings SET no = -1 WHERE no = ?", (no_a,))
    s.db.execute("UPDATE postings SET no = ? WHERE no = ?", (no_a, no_b))
    s.db.execute("UPDATE postings SET no = ? WHERE no = -1", (no_b,))
    return [pid_a, pid_b, "order of the sequence"]


def deposit_raised(s: Store, base: int) -> list[str]:
    no, pid, _, p = s.pick("deposit", after=base)
    account, asset, delta, pending = p.legs[0]
    new = msgspec.structs.replace(p, legs=((account, asset, delta + 100, pending),))
    s.rewrite(no, new)
    s.adjust_to(p, new)
    return [pid, account, "CNY", "+5001.00", "+5000.00"]


def deposit_raised_before_the_snapshot(s: Store, base: int) -> list[str]:
    no, _, _, p = s.pick("deposit", before=base)
    account, asset, delta, pending = p.legs[0]
    new = msgspec.structs.replace(p, legs=((account, asset, delta + 1, pending),))
    s.rewrite(no, new)
    s.adjust_to(p, new)
    return [f"seq {base}", account, "CNY", "balance"]


def posting_deleted(s: Store, base: int) -> list[str]:
    no, pid, _, p = s.pick("withdraw", after=base)
    s.db.execute("DELETE FROM postings WHERE no = ?", (no,))
    for account, asset, delta, pending in p.legs:
        s.add(account, asset, -delta, -pending)
    return [pid, "missing", "M2", "CNY", "1000.00"]


def posting_forged(s: Store, base: int) -> list[str]:
    _, _, _, p = s.pick("deposit", after=base)
    last_no, last_seq = s.db.execute("SELECT max(no), max(seq) FROM postings").fetchone()
    forged = msgspec.structs.replace(p, posting_id=f"C{last_seq + 1}", seq=last_seq + 1, ref=str(last_seq + 1),
                                     legs=(("M4", "CNY", 777_700, 0),), subject="M4")
    s.db.execute("INSERT INTO postings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (last_no + 1, forged.posting_id, forged.seq, forged.ts, forged.kind, forged.ref, forged.actor,
                  "M4", "", forged.text, _encode(forged)))
    s.add("M4", "CNY", 777_700)
    s.db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (last_seq + 1,))
    return [forged.posting_id, "M4", "CNY", "7777.00"]


def account_suspended(s: Store, base: int) -> list[str]:
    s.db.execute("UPDATE accounts SET status = 2 WHERE account = 'M3'")
    return ["account M3", "status=2"]


def obligation_lowered(s: Store, base: int) -> list[str]:
    s.db.execute("UPDATE obligations SET required = 400 WHERE account = 'M1' AND year = 2024")
    return ["obligation M1 2024", "required=400", "required=500"]


def actor_changed(s: Store, base: int) -> list[str]:
    no, pid, _, p = s.pick("deposit", after=base)
    s.rewrite(no, msgspec.structs.replace(p, actor="EXCH/nobody"))
    return [pid, "EXCH/nobody", "EXCH/clerk"]


def pending_changed(s: Store, base: int) -> list[str]:
    s.add("M3", SYMBOL, 0, 7)
    return ["M3 CEA24", "(balance, pending)"]


def price_changed(s: Store, base: int) -> list[str]:
    no, pid, _, p = s.pick("trade", after=base)
    assert type(p) is TradePosting
    new = msgspec.structs.replace(p, price=p.price + 1)
    s.rewrite(no, new)
    s.adjust_to(p, new)
    return [pid, p.seller, "CNY", "where the journal gives"]


def settled_beyond_the_journal(s: Store, base: int) -> list[str]:
    last = s.db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0]
    s.db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (last + 5,))
    return [f"settled through seq {last + 5}", f"journal ends at seq {last}"]


TAMPERINGS: list[Callable[[Store, int], list[str]]] = [
    fee_raised, fee_raised_before_the_snapshot, settled_seq_behind, out_of_order, deposit_raised,
    deposit_raised_before_the_snapshot, posting_deleted, posting_forged, account_suspended, obligation_lowered,
    actor_changed, pending_changed, price_changed, settled_beyond_the_journal,
]


@pytest.mark.parametrize("tamper", TAMPERINGS, ids=[t.__name__ for t in TAMPERINGS])
def test_tampering_is_caught(tamper: Callable[[Store, int], list[str]], folder: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "data"
    shutil.copytree(folder, copy)
    store = Store(copy / "registry.sqlite")
    try:
        words = tamper(store, base_seq(copy))
    finally:
        store.db.close()
    code, out = audit(copy, capsys)
    assert code == 1, out
    lines = [line for line in out.splitlines() if all(w in line for w in words)]
    assert lines, f"no line names all of {words}:\n{out}"
