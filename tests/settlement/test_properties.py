"""Property-based tests: the hold always covers its fills, and random sequences of
registry operations and trades keep every conservation law and invariant."""

from __future__ import annotations

import os
import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine import CASH, Cancel, EndOfDay, ManualClock, NewOrder, Sequencer, Side, Trade
from settlement import (
    Allocate,
    Deposit,
    Exchange,
    Fees,
    Ledger,
    OpenAccount,
    Posting,
    ReinstateAccount,
    Retire,
    SetObligation,
    Surrender,
    SuspendAccount,
    TradePosting,
    Transfer,
    Withdraw,
)
from settlement.audit import audit
from settlement.ledger import legs_by_asset
from settlement.store import SqliteStore, _Prepared
from tests.settlement.helpers import INSTRUMENTS, Driver, member
from tests.settlement.workload import stream

ppm = st.integers(min_value=0, max_value=20_000)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(tp=ppm, sp=ppm, limit=st.integers(1, 10**7), qty=st.integers(1, 100_000),
       fills=st.lists(st.tuples(st.integers(1, 100_000), st.integers(0, 10**7)), min_size=1, max_size=8))
def test_the_hold_covers_every_fill(tp: int, sp: int, limit: int, qty: int, fills: list[tuple[int, int]]) -> None:
    """The engine holds cash_required(limit * qty) and frees, per fill, the difference
    between that and cash_required(limit * what is left); the ledger's settle refuses
    any fill the freed part does not cover. Fills at any price up to the limit."""
    ledger = Ledger(Fees(trading_ppm=tp, settlement_ppm=sp, reserve_share_ppm=250_000))
    drive = Driver(ledger)
    need = ledger.cash_required(limit * qty)
    member(drive, "B", cash=need)
    member(drive, "S", holdings={"CEA24": qty})
    assert ledger.hold("B", CASH, need) and ledger.hold("S", "CEA24", qty)
    hold, left = need, qty
    for trade_id, (size, price_cut) in enumerate(fills, start=1):
        fill = min(size, left)
        price = max(1, limit - price_cut)
        left -= fill
        new = ledger.cash_required(limit * left) if left else 0
        ledger.settle(Trade(9, 9, trade_id, "CEA24", price, fill, int(Side.BUY), 1, "S", 2, "B"), hold - new)
        hold = new
        if not left:
            break
    ledger.release("B", CASH, hold)
    ledger.release("S", "CEA24", left)
    assert ledger.held == {}
    ledger._check()
    for p in ledger.postings:
        if p.kind == "trade":
            assert set(legs_by_asset(p.legs).values()) == {0}


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(0, 10**15), st.integers(0, 10**15), ppm, ppm)
def test_cash_required_is_monotonic_and_covers_differences(a: int, b: int, tp: int, sp: int) -> None:
    ledger = Ledger(Fees(trading_ppm=tp, settlement_ppm=sp))
    a, b = max(a, b), min(a, b)
    d = a - b
    cost = d + d * tp // 1_000_000 + d * sp // 1_000_000
    assert ledger.cash_required(a) >= ledger.cash_required(b)
    assert ledger.cash_required(a) - ledger.cash_required(b) >= cost


names = st.sampled_from(["A", "B", "C", "FEE-X", "FEE-R"])
trade_postings = st.builds(
    TradePosting, trade_id=st.integers(1, 10**6), seq=st.integers(1, 10**6), ts=st.integers(0, 10**18),
    instrument=st.sampled_from(["CEA24", "CEA23"]), price=st.integers(1, 10**6), qty=st.integers(1, 10**5),
    buyer=names, seller=names, buyer_pending=st.integers(-10**9, 0),
    # Fees as the ledger makes them, and amounts no ledger makes (negative, a reserve
    # above the trading fees), which a forged record could hold and the store must sum alike.
    trading_fee=st.integers(-50, 10**6), settlement_fee=st.integers(-50, 10**6), reserve=st.integers(-50, 2 * 10**6),
    exchange_account=st.sampled_from(["FEE-X", "EXCHANGE-FEES"]), reserve_account=st.sampled_from(["FEE-R", "A"]),
    registry_account=st.sampled_from(["REGISTRY-FEES", "FEE-X"]),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.one_of(trade_postings, st.just(None)), max_size=12), st.integers(1, 1000))
def test_the_store_sums_trade_postings_as_their_legs(batch: list[TradePosting | None], next_no: int) -> None:
    """The store sums a trade's balance changes without building its legs: the rows,
    balances and account spans are those of the same trades written as plain postings
    with the legs that TradePosting.legs derives (and zero fee legs, left out, touch
    no account)."""
    postings: list[TradePosting | Posting] = [
        p if p is not None else Posting(f"C{i}", i, i, "deposit", str(i), "clerk", (("B", CASH, 7, 0),), "B")
        for i, p in enumerate(batch)
    ]
    plain = [Posting(p.posting_id, p.seq, p.ts, p.kind, p.ref, p.actor, p.legs) if isinstance(p, TradePosting)
             else p for p in postings]
    fast, slow = _Prepared(postings, next_no), _Prepared(plain, next_no)
    assert [row[:-1] for row in fast.postings] == [row[:-1] for row in slow.postings]
    assert sorted(fast.balances) == sorted(slow.balances)
    assert sorted(fast.spans) == sorted(slow.spans)
    assert fast.next_no == slow.next_no == next_no + len(postings)


MEMBERS = ["M0", "M1", "M2", "M3"]


class ExchangeMachine(RuleBasedStateMachine):
    """Random orders, cancels and registry operations through one exchange; after
    every step every invariant holds (engine holds equal the ledger's, no negative
    number, conservation per asset); at the end the record, written to a real SQLite
    file, passes the audit."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger(Fees(trading_ppm=700, settlement_ppm=150, reserve_share_ppm=100_000))
        self.exchange = Exchange(INSTRUMENTS, self.ledger)
        self.clock = ManualClock(1_700_000_000_000_000_000)
        self.seq = Sequencer(self.clock)
        self.n = 0
        for m in MEMBERS:
            self.send(OpenAccount("clerk", m, 1))

    def send(self, cmd: object) -> None:
        self.clock.advance(1000)
        self.n += 1
        self.exchange.apply(self.seq.stamp(cmd))  # type: ignore[arg-type]

    @rule(m=st.sampled_from(MEMBERS), amount=st.integers(1, 10**9))
    def deposit(self, m: str, amount: int) -> None:
        self.send(Deposit("clerk", m, amount))

    @rule(m=st.sampled_from(MEMBERS), amount=st.integers(1, 10**8))
    def withdraw(self, m: str, amount: int) -> None:
        self.send(Withdraw("clerk", m, amount))

    @rule(m=st.sampled_from(MEMBERS), asset=st.sampled_from(["CEA24", "CEA23", "CCER"]), qty=st.integers(1, 5000))
    def allocate(self, m: str, asset: str, qty: int) -> None:
        self.send(Allocate("mee", "AUTHORITY", m, asset, qty))

    @rule(a=st.sampled_from(MEMBERS), b=st.sampled_from(MEMBERS), qty=st.integers(1, 500))
    def transfer(self, a: str, b: str, qty: int) -> None:
        self.send(Transfer("clerk", a, b, "CEA24", qty))

    @rule(m=st.sampled_from(MEMBERS), qty=st.integers(0, 5000))
    def obligation(self, m: str, qty: int) -> None:
        self.send(SetObligation("mee", "AUTHORITY", m, 2024, qty))

    @rule(m=st.sampled_from(MEMBERS), asset=st.sampled_from(["CEA24", "CEA23", "CCER"]), qty=st.integers(1, 300))
    def surrender(self, m: str, asset: str, qty: int) -> None:
        self.send(Surrender("clerk", m, asset, qty, 2024))

    @rule(m=st.sampled_from(MEMBERS), qty=st.integers(1, 100))
    def retire(self, m: str, qty: int) -> None:
        self.send(Retire("clerk", m, "CEA23", qty))

    @rule(m=st.sampled_from(MEMBERS), suspend=st.booleans())
    def suspend(self, m: str, suspend: bool) -> None:
        self.send(SuspendAccount("clerk", m) if suspend else ReinstateAccount("clerk", m))

    @rule(m=st.sampled_from(MEMBERS), buy=st.booleans(), qty=st.integers(1, 400), tick=st.integers(-30, 30),
          symbol=st.sampled_from(["CEA24", "CEA23"]))
    def order(self, m: str, buy: bool, qty: int, tick: int, symbol: str) -> None:
        ref = 10_000 if symbol == "CEA24" else 9_000
        side = int(Side.BUY) if buy else int(Side.SELL)
        self.send(NewOrder(m, f"c{self.n}", symbol, side, qty, ref + tick * 10))

    @precondition(lambda self: bool(self.exchange.engine.orders))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        oid = data.draw(st.sampled_from(sorted(self.exchange.engine.orders)))
        self.send(Cancel(self.exchange.engine.orders[oid].member, oid))

    @rule()
    def end_of_day(self) -> None:
        self.send(EndOfDay())

    @invariant()
    def invariants_hold(self) -> None:
        self.exchange._check()

    def teardown(self) -> None:
        for p in self.ledger.postings:
            if p.kind in ("trade", "transfer", "eod"):
                assert set(legs_by_asset(p.legs).values()) <= {0}, p
        path = Path(self._tmp) / f"m{random.getrandbits(40)}.sqlite"
        store = SqliteStore(str(path))
        try:
            store.migrate()
            store.write_batch(self.ledger.take_postings(), self.exchange.last_seq)
            assert audit(store, self.ledger) == []
        finally:
            store.close()
            path.unlink()

    _tmp = "/tmp"


def test_random_exchange_sessions_keep_every_law(tmp_path: Path) -> None:
    ExchangeMachine._tmp = str(tmp_path)
    run = ExchangeMachine.TestCase
    run.settings = settings(max_examples=40, stateful_step_count=60, deadline=None, derandomize=True,
                            suppress_health_check=[HealthCheck.too_slow])
    run().runTest()


def test_seeded_stream_checked_after_every_command() -> None:
    seed = int(os.environ.get("ETX_SEED", "20240501"))
    print(f"seed {seed} (set ETX_SEED to change)")
    ex = Exchange(INSTRUMENTS, Ledger(Fees(trading_ppm=300, settlement_ppm=50, reserve_share_ppm=500_000)))
    for cmd in stream(seed, accounts=6, orders=600):
        ex.apply(cmd)
        ex._check()
