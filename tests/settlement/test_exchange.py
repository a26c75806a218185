"""The exchange: engine and ledger behind one sequenced entry, one event stream."""

from __future__ import annotations

import msgspec

from engine import (
    CASH,
    Accepted,
    Cancel,
    Cancelled,
    CancelReason,
    EndOfDay,
    Instrument,
    MemberStatus,
    NewOrder,
    Note,
    Noted,
    Reason,
    ReinstateMember,
    Rejected,
    Side,
    SuspendMember,
    Trade,
)
from settlement import (
    Allocate,
    Deposit,
    Exchange,
    Fees,
    Ledger,
    OpenAccount,
    RegistryDone,
    RegistryReason,
    RegistryRejected,
    SettleDay,
    SuspendAccount,
    Transfer,
    Withdraw,
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


def state_but_clock(exchange: Exchange) -> bytes:
    """Everything the exchange owns except the sequence number and the clock, which
    every command advances (a registry command passes through the engine as a Tick)."""
    return msgspec.msgpack.encode([exchange.engine.state()[2:], exchange.ledger.full_state()])


def test_a_buy_needs_the_notional_plus_the_fees_rounded_up() -> None:
    """At 350 ppm a buy of 1 t at 10,000 fen needs 10,000 + ceil(3.5) = 10,004 fen:
    one fen less is refused, exactly that is taken, and the whole of it is held."""
    m = Market(Fees(trading_ppm=250, settlement_ppm=100))
    m.send(OpenAccount("clerk", "SHORT", 1), OpenAccount("clerk", "EXACT", 1),
           Deposit("clerk", "SHORT", 10_003), Deposit("clerk", "EXACT", 10_004))
    [rej] = m.send(NewOrder("SHORT", "b1", "CEA24", int(Side.BUY), 1, 10_000))
    assert isinstance(rej, Rejected) and rej.reason == Reason.INSUFFICIENT_FUNDS, rej
    assert m.ledger.entry("SHORT", CASH) == (10_003, 0, 0, 0)
    [acc] = m.send(NewOrder("EXACT", "b1", "CEA24", int(Side.BUY), 1, 10_000))
    assert isinstance(acc, Accepted), acc
    assert m.ledger.entry("EXACT", CASH) == (10_004, 10_004, 0, 0)
    m.exchange._check()


def test_withdrawing_cash_an_open_order_holds_is_refused_and_changes_nothing() -> None:
    m = open_market()
    [acc] = m.send(NewOrder("A", "b1", "CEA24", int(Side.BUY), 1000, 9_990))  # rests: nothing sells that low
    assert isinstance(acc, Accepted), acc
    balance, held, _, _ = m.ledger.entry("A", CASH)
    assert held == 9_990_000 + 5_994  # 600 ppm of 9,990,000 fen
    before, postings = state_but_clock(m.exchange), len(m.ledger.postings)
    [rej] = m.send(Withdraw("clerk", "A", balance - held + 1))
    assert isinstance(rej, RegistryRejected) and rej.reason == RegistryReason.INSUFFICIENT_CASH, rej
    assert state_but_clock(m.exchange) == before and len(m.ledger.postings) == postings
    # What no order holds can go.
    [done] = m.send(Withdraw("clerk", "A", balance - held))
    assert isinstance(done, RegistryDone), done
    assert m.ledger.entry("A", CASH) == (held, held, 0, 0)
    m.exchange._check()


def test_position_limits_count_the_registrys_holding_t1_included() -> None:
    """The limit reads the settlement ledger's balance: allowances bought today (not yet
    sellable) and allowances an open sell holds both count."""
    m = Market(instruments=[Instrument(symbol="CEA24", ref_price=10_000, position_max=500), INSTRUMENTS[1]])
    m.send(OpenAccount("clerk", "A", 1), OpenAccount("clerk", "B", 1),
           Deposit("clerk", "A", 50_000_000), Allocate("mee", "AUTHORITY", "B", "CEA24", 10_000))
    assert m.ledger.holding("A", "CEA24") == 0 and m.ledger.holding("NOBODY", "CEA24") == 0
    m.send(NewOrder("B", "s1", "CEA24", int(Side.SELL), 1_000, 10_000))  # B holds past the limit: it may sell
    evs = m.send(NewOrder("A", "b1", "CEA24", int(Side.BUY), 300, 10_000))
    assert [type(e) for e in evs] == [Accepted, Trade]
    assert m.ledger.entry("A", "CEA24") == (300, 0, 300, 0) and m.ledger.holding("A", "CEA24") == 300
    m.send(NewOrder("A", "b2", "CEA24", int(Side.BUY), 100, 9_900))  # rests
    [rej] = m.send(NewOrder("A", "b3", "CEA24", int(Side.BUY), 101, 9_900))
    assert isinstance(rej, Rejected) and rej.reason == Reason.POSITION_LIMIT
    assert rej.text == "position limit 500 t in CEA24: holding 300 t + open buys 100 t + 101 t = 501 t"
    [acc] = m.send(NewOrder("A", "b4", "CEA24", int(Side.BUY), 100, 9_900))
    assert isinstance(acc, Accepted)
    m.exchange._check()


def test_the_operators_engine_commands_pass_through_a_batch_with_registry_commands() -> None:
    m = open_market()
    m.send(NewOrder("A", "b1", "CEA24", int(Side.BUY), 100, 9_990))
    evs = m.send(
        SuspendMember("A", True, "EXCH/op1", "surveillance"),
        NewOrder("A", "b2", "CEA24", int(Side.BUY), 100, 9_990),
        Deposit("clerk", "A", 1_000),  # a registry command between them
        Note("EXCH/op1", "unlock", "A/trader1"),
        ReinstateMember("A", "EXCH/op1", "cleared"),
        NewOrder("A", "b3", "CEA24", int(Side.BUY), 100, 9_990),
        Cancel("A", 2, "EXCH/op1", "asked by phone"),  # b3 (b2 never had an id)
    )
    assert [type(e) for e in evs] == [MemberStatus, Cancelled, Rejected, RegistryDone, Noted, MemberStatus, Accepted,
                                      Cancelled]
    assert [e.seq for e in evs] == [evs[0].seq + i for i in (0, 0, 1, 2, 3, 4, 5, 6)]
    assert evs[1].reason == CancelReason.SUSPENDED and evs[2].reason == Reason.MEMBER_SUSPENDED
    assert evs[7].reason == CancelReason.USER
    assert m.ledger.entry("A", CASH)[1] == 0
    m.send(SuspendMember("B"))
    fresh = Exchange(INSTRUMENTS, Ledger(FEES))
    fresh.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(m.exchange.snapshot()), type=Exchange.SNAPSHOT_TYPE))
    assert fresh.engine.suspended == {"B"} and fresh.state_hash() == m.exchange.state_hash()
    m.exchange._check()
