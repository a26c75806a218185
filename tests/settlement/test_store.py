"""The registry store, the same tests on a SQLite file and on PostgreSQL."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from engine import CASH, EndOfDay, NewOrder, Side
from settlement import (
    Allocate,
    Deposit,
    HolderType,
    Ledger,
    OpenAccount,
    Posting,
    SetObligation,
    Surrender,
    SuspendAccount,
    Withdraw,
)
from settlement.ledger import BALANCE_MAX
from settlement.store import SCHEMA_VERSION, StoreError, _migrations, open_store
from tests.settlement.helpers import FEES, Driver, Market


def busy_market() -> Market:
    m = Market()
    m.send(
        OpenAccount("clerk", "A", 1, "Alpha Power"), OpenAccount("clerk", "B", 1), OpenAccount("clerk", "C", 2),
        Deposit("clerk", "A", 90_000_000), Deposit("clerk", "C", 10_000_000),
        Allocate("mee", "AUTHORITY", "B", "CEA24", 20_000), Allocate("mee", "AUTHORITY", "B", "CEA23", 500),
        SetObligation("mee", "AUTHORITY", "B", 2024, 1000),
    )
    m.send(NewOrder("B", "s1", "CEA24", int(Side.SELL), 5000, 10_000),
           NewOrder("B", "s2", "CEA24", int(Side.SELL), 5000, 10_100),
           NewOrder("A", "b1", "CEA24", int(Side.BUY), 6000, 10_100),
           NewOrder("C", "b2", "CEA24", int(Side.BUY), 100, 10_100))
    m.send(Surrender("clerk", "B", "CEA23", 300, 2024), SuspendAccount("clerk", "C"))
    return m


def store_picture(ledger: Any) -> list[tuple[str, str, int, int]]:
    out = []
    for (account, asset), e in sorted(ledger.entries.items()):
        if e.balance:
            out.append((account, asset, e.balance, e.unwithdrawable if asset == CASH else e.unsellable))
    return out


def nonzero(rows: list[tuple[str, str, int, int]]) -> list[tuple[str, str, int, int]]:
    return [r for r in rows if r[2] or r[3]]


def test_migrate_is_versioned_and_idempotent(store: Any) -> None:
    assert store.migrate() == SCHEMA_VERSION
    assert store.migrate() == SCHEMA_VERSION
    assert store.last_seq() == 0
    assert store.balances() == []


def test_batch_writes_everything_and_reads_back(store: Any) -> None:
    m = busy_market()
    postings = m.ledger.take_postings()
    assert store.write_batch(postings, m.exchange.last_seq) == len(postings)
    assert store.last_seq() == m.exchange.last_seq
    assert nonzero(store.balances()) == store_picture(m.ledger)
    assert store.accounts() == [m.ledger.accounts[a] for a in sorted(m.ledger.accounts)]
    assert store.obligations() == list(m.ledger.obligations.values())
    assert list(store.postings()) == postings
    # The account history is the audit trail: opened, funded, traded, in order.
    history = store.history("A")
    assert [p.kind for p in history] == ["open", "deposit", "trade", "trade"]
    assert history[0].actor == "clerk" and history[2].ref == "1"
    assert store.history("A", limit=1) == history[-1:]
    loaded = store.load_ledger(FEES)
    assert store_picture(loaded) == store_picture(m.ledger)
    assert loaded.accounts == m.ledger.accounts and loaded.obligations == m.ledger.obligations
    assert loaded.supply() == m.ledger.supply()
    loaded._check()


def test_end_of_day_survives_a_reload(store: Any) -> None:
    m = busy_market()
    m.send(EndOfDay())
    store.write_batch(m.ledger.take_postings(), m.exchange.last_seq)
    loaded = store.load_ledger(FEES)
    assert loaded.day == 2
    assert loaded.withdrawable("B") == m.ledger.withdrawable("B") > 0
    assert all(p == 0 for _, _, _, p in store.balances())


def test_same_posting_twice_changes_nothing(store: Any) -> None:
    m = busy_market()
    postings = m.ledger.take_postings()
    store.write_batch(postings[:10], 3)
    before = store.balances()
    assert store.write_batch(postings[:10], 3) == 0
    assert store.balances() == before
    # A batch that overlaps what is stored writes only the rest.
    assert store.write_batch(postings, m.exchange.last_seq) == len(postings) - 10
    assert nonzero(store.balances()) == store_picture(m.ledger)
    assert len(list(store.postings())) == len(postings)


def test_same_id_different_content_is_refused_whole(store: Any) -> None:
    m = busy_market()
    postings = m.ledger.take_postings()
    store.write_batch(postings[:-1], 1)
    before = (store.balances(), store.last_seq())
    forged = msgspec.structs.replace(postings[5], text="forged")
    with pytest.raises(StoreError, match="different content"):
        store.write_batch([postings[-1], forged], 99)
    assert (store.balances(), store.last_seq()) == before


def test_constraints_forbid_negative_balances(store: Any) -> None:
    m = busy_market()
    store.write_batch(m.ledger.take_postings(), 5)
    before = (store.balances(), store.last_seq(), len(list(store.postings())))
    bad = Posting("X1", 6, 6, "withdraw", "6", "clerk", (("A", CASH, -10**12, 0),), "A")
    with pytest.raises(StoreError, match="refused"):
        store.write_batch([bad], 6)
    pending = Posting("X2", 6, 6, "eod", "6", "", (("A", CASH, 0, 10**12),))
    with pytest.raises(StoreError, match="refused"):
        store.write_batch([pending], 6)
    assert (store.balances(), store.last_seq(), len(list(store.postings()))) == before


def test_last_seq_never_goes_back(store: Any) -> None:
    m = busy_market()
    store.write_batch(m.ledger.take_postings(), 20)
    store.write_batch([], 7)
    assert store.last_seq() == 20


def test_withdraw_posting_round_trip(store: Any) -> None:
    m = busy_market()
    m.send(EndOfDay())
    m.send(Withdraw("clerk", "B", 1000))
    store.write_batch(m.ledger.take_postings(), m.exchange.last_seq)
    assert store.load_ledger(FEES).supply()[CASH] == m.ledger.supply()[CASH]


def test_a_balance_past_the_maximum_is_refused_by_the_store(store: Any) -> None:
    """Schema 2: every balance is an exact integer within BALANCE_MAX (SQLite would
    otherwise turn an overflowing sum into a float), whatever the caller does."""
    ledger = Ledger()
    Driver(ledger).ok(OpenAccount("clerk", "A", int(HolderType.COMPLIANCE), "A"))
    store.write_batch(ledger.take_postings(), 1)
    big = Posting("C2", 2, 2, "deposit", "2", "clerk", (("A", "CNY", BALANCE_MAX, 0),), "A")
    store.write_batch([big], 2)
    over = Posting("C3", 3, 3, "deposit", "3", "clerk", (("A", "CNY", 1, 0),), "A")
    with pytest.raises(StoreError):
        store.write_batch([over], 3)
    assert ("A", "CNY", BALANCE_MAX, 0) in store.balances() and store.last_seq() == 2


def test_migrations_keep_the_balances_and_accounts_drop_users_and_admit_staff(store_url: str) -> None:
    s = open_store(store_url)
    try:
        statements = _migrations(s._dialect())[0]
        s._begin()
        s._exec("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for sql in statements:
            s._exec(sql)
        s._exec("INSERT INTO schema_version (version) VALUES (1)")
        s._exec("INSERT INTO users (name, role) VALUES ('li', 'clerk')")
        s._exec("INSERT INTO balances (account, asset, balance, pending) VALUES ('A', 'CNY', 700, 300)")
        s._exec("INSERT INTO accounts (account, holder_type, name, status) VALUES ('A', 1, 'A Ltd', 1)")
        s._commit()
        assert s.migrate() == 3
        assert s.balances() == [("A", "CNY", 700, 300)]
        assert [(a.account, a.holder_type) for a in s.accounts()] == [("A", 1)]
        assert s.compliance() == []
        s._begin()  # 3: a staff account (holder type 8) is admitted, 9 is not
        s._exec("INSERT INTO accounts (account, holder_type, name, status) VALUES ('S', 8, 'staff', 1)")
        s._commit()
        with pytest.raises(Exception):  # noqa: B017 - a CHECK violation, whichever driver says so
            s._begin()
            s._exec("INSERT INTO accounts (account, holder_type, name, status) VALUES ('X', 9, 'x', 1)")
        with pytest.raises(Exception):  # noqa: B017 - the table is gone, whichever driver says so
            s._query("SELECT * FROM users")
    finally:
        s._rollback()
        s.close()


def test_two_connections_see_the_same_record(store_url: str, store: Any) -> None:
    m = busy_market()
    store.write_batch(m.ledger.take_postings(), 9)
    other = open_store(store_url)
    try:
        assert other.migrate() == SCHEMA_VERSION
        assert other.last_seq() == 9 and other.balances() == store.balances()
    finally:
        other.close()


def test_bad_store_location_fails_clearly(tmp_path: Any) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        open_store(str(tmp_path / "missing-dir" / "x.sqlite"))
    with pytest.raises(StoreError, match="cannot connect"):
        open_store("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")


def test_history_across_batches_and_for_fee_accounts(store: Any) -> None:
    m = busy_market()
    m.send(EndOfDay())
    postings = m.ledger.take_postings()
    for i in range(0, len(postings), 3):  # many small batches: many spans
        store.write_batch(postings[i:i + 3], 0)
    expected = [p for p in postings if p.subject == "A" or any(leg[0] == "A" for leg in p.legs)]
    assert store.history("A", limit=1000) == expected
    assert [p.kind for p in expected] == ["open", "deposit", "trade", "trade", "eod"]
    assert store.history("A", limit=2) == expected[-2:]
    fees = store.history("EXCHANGE-FEES", limit=1000)
    assert [p.kind for p in fees] == ["open", "trade", "trade", "trade"]
    assert store.history("NOBODY") == [] and store.history("A", limit=0) == []


def test_a_refused_batch_leaves_no_trace_in_later_batches(store: Any) -> None:
    """A batch refused after it created a balance row (rolled back with it) must not
    leave the store believing that row exists: the account's deposit written later
    would then update no row and vanish. (SQLite remembers which rows exist between
    batches; PostgreSQL keeps nothing, so there it holds trivially.)"""
    m = busy_market()
    store.write_batch(m.ledger.take_postings(), m.exchange.last_seq)
    m.send(OpenAccount("clerk", "D", 1), Deposit("clerk", "D", 500))
    opened, deposited = m.ledger.take_postings()
    assert deposited.legs == (("D", CASH, 500, 0),)
    bad = Posting("X1", 99, 99, "withdraw", "99", "clerk", (("A", CASH, -10**12, 0),), "A")
    before = store.balances()
    # D's balance row is inserted, then A's overdraft breaks a CHECK and the batch rolls
    # back. (A posting id reused with another content is refused before any balance row
    # is made, so it cannot show this.)
    with pytest.raises(StoreError, match="refused"):
        store.write_batch([opened, deposited, bad], 99)
    assert store.balances() == before
    store.write_batch([opened], opened.seq)  # a batch that touches no balance
    store.write_batch([deposited], deposited.seq)
    assert nonzero(store.balances()) == store_picture(m.ledger)
    assert ("D", CASH, 500, 0) in store.balances()
