"""The exchange: engine and ledger behind one sequenced entry, one event stream."""

from __future__ import annotations

from engine import CASH, Cancel, EndOfDay, NewOrder, Reason, Rejected, Side, Trade
from settlement import (
    Allocate,
    Deposit,
    Exchange,
    Ledger,
    OpenAccount,
    RegistryDone,
    RegistryReason,
    RegistryRejected,
    SettleDay,
    SuspendAccount,
    Transfer,
)
from tests.settlement.helpers import FEES, INSTRUMENTS, Market


def open_market() -> Market:
    m = Market()
    m.send(
        OpenAccount("clerk", "A", 1), OpenAccount("clerk", "B", 1),
        Deposit("clerk", "A", 50_000_000), Allocate("mee", "AUTHORITY", "B", "CEA24", 10_000),
    )
    return m


def test_orders_trade_and_settle_into_the_ledger() -> None:
    m = open_market()
    evs = m.send(NewOrder("B", "s1", "CEA24", int(Side.SELL), 1000, 10_000),
                 NewOrder("A", "b1", "CEA24", int(Side.BUY), 400, 10_100))
    trades = [e for e in evs if isinstance(e, Trade)]
    assert len(trades) == 1 and trades[0].price == 10_000 and trades[0].qty == 400
    led = m.ledger
    notional = 400 * 10_000
    fee = notional * 500 // 10**6 + notional * 100 // 10**6
    assert led.entry("A", CASH) == (50_000_000 - notional - fee, 0, 0, 0)
    assert led.entry("A", "CEA24") == (400, 0, 400, 0)
    assert led.entry("B", "CEA24") == (9600, 600, 0, 0)  # 600 t still held by the resting sell
    assert led.entry("B", CASH) == (notional - fee, 0, 0, notional - fee)
    m.exchange._check()
    # A cannot sell what it bought today.
    [rej] = m.send(NewOrder("A", "s2", "CEA24", int(Side.SELL), 1, 10_000))
    assert isinstance(rej, Rejected) and rej.reason == Reason.INSUFFICIENT_HOLDINGS
    # A registry transfer of held allowances is refused; of free ones it works.
    [r] = m.send(Transfer("clerk", "B", "A", "CEA24", 9601))
    assert isinstance(r, RegistryRejected) and r.reason == RegistryReason.INSUFFICIENT_HOLDINGS
    [d] = m.send(Transfer("clerk", "B", "A", "CEA24", 9000))
    assert isinstance(d, RegistryDone)
    # The exchange ends the day with EndOfDay; SettleDay is for the registry alone.
    [r] = m.send(SettleDay("clerk"))
    assert isinstance(r, RegistryRejected) and r.reason == RegistryReason.USE_END_OF_DAY
    before = len(led.postings)
    m.send(EndOfDay())
    eod = led.postings[before:]
    assert [p.posting_id for p in eod] == ["D1"] and eod[0].seq == m.exchange.last_seq
    assert led.entry("A", "CEA24") == (9400, 0, 0, 0)
    assert led.entry("B", "CEA24")[1] == 0  # the resting sell expired, its hold released
    assert led.withdrawable("B") == notional - fee
    m.exchange._check()
    led._check()


def test_suspended_member_orders_are_refused() -> None:
    m = open_market()
    m.send(SuspendAccount("clerk", "A"))
    [rej] = m.send(NewOrder("A", "b1", "CEA24", int(Side.BUY), 1, 10_000))
    assert isinstance(rej, Rejected) and rej.reason == Reason.INSUFFICIENT_FUNDS


def test_cancel_releases_and_hash_is_deterministic() -> None:
    def run() -> Exchange:
        m = open_market()
        m.send(NewOrder("A", "b1", "CEA24", int(Side.BUY), 100, 9_990),
               NewOrder("B", "s1", "CEA24", int(Side.SELL), 50, 9_990))
        m.send(Cancel("A", 1))
        assert m.ledger.entry("A", CASH)[1] == 0
        m.exchange._check()
        return m.exchange

    a, b = run(), run()
    assert a.state_hash() == b.state_hash()
    fresh = Exchange(INSTRUMENTS, Ledger(FEES))
    fresh.restore(a.snapshot())
    assert fresh.state_hash() == a.state_hash()
    assert not fresh.ledger.postings
