"""The ledger: holds, settlement with fees, T+1, registry commands and their rejections."""

from __future__ import annotations

import gc

import msgspec
import pytest

from engine import CASH, Side, Trade
from settlement import (
    Allocate,
    Deposit,
    Fees,
    HolderType,
    Ledger,
    LedgerError,
    OpenAccount,
    Posting,
    RegistryDone,
    RegistryReason,
    RegistryRejected,
    ReinstateAccount,
    Retire,
    SetObligation,
    SettleDay,
    Surrender,
    SuspendAccount,
    TradePosting,
    Transfer,
    Withdraw,
)
from settlement.ledger import legs_by_asset, vintage
from tests.settlement.helpers import FEES, Driver, member

R = RegistryReason


def setup(fees: Fees = FEES) -> tuple[Ledger, Driver]:
    ledger = Ledger(fees)
    drive = Driver(ledger)
    member(drive, "BUYER", cash=10_000_000)
    member(drive, "SELLER", holdings={"CEA24": 1000, "CEA23": 500})
    return ledger, drive


def trade(trade_id: int, qty: int, price: int, buyer: str = "BUYER", seller: str = "SELLER",
          instrument: str = "CEA24") -> Trade:
    return Trade(1000 + trade_id, 5, trade_id, instrument, price, qty, int(Side.BUY), 1, seller, 2, buyer)


def test_vintage() -> None:
    assert vintage("CEA24") == 2024
    assert vintage("CEA19-20") == 2020
    assert vintage("CCER") == 0
    assert vintage("CNY") == -1
    assert vintage("CEA2024") == -1


def test_fees_check() -> None:
    with pytest.raises(ValueError, match="below 1,000,000"):
        Ledger(Fees(trading_ppm=600_000, settlement_ppm=400_000))
    with pytest.raises(ValueError, match="must differ"):
        Ledger(Fees(exchange_account="X", registry_account="X"))
    with pytest.raises(ValueError, match="reserve_share_ppm"):
        Ledger(Fees(reserve_share_ppm=-1))


@pytest.mark.parametrize("trading_ppm,settlement_ppm,notional,cash", [
    (250, 100, 0, 0),
    (250, 100, 1, 2),  # 0.00035 fen of fees: a whole fen
    (250, 100, 2_857, 2_858),  # 0.99995 fen
    (250, 100, 2_858, 2_860),  # 1.0003 fen
    (250, 100, 10_000, 10_004),  # 3.5 fen
    (250, 100, 1_000_000, 1_000_350),  # exactly 350 fen: nothing to round
    (250, 100, 10**15, 10**15 + 350_000_000_000),
    (500, 100, 1_666, 1_667),  # 0.9996 fen
    (500, 100, 1_667, 1_669),  # 1.0002 fen
    (0, 0, 12_345, 12_345),
])
def test_cash_required_rounds_the_fee_up(trading_ppm: int, settlement_ppm: int, notional: int, cash: int) -> None:
    """The documented formula, cash_required(n) = n + ceil(n * (trading_ppm +
    settlement_ppm) / 1e6), against hand-computed numbers: the other tests take their
    holds from cash_required itself, so they cannot tell which way it rounds."""
    ledger = Ledger(Fees(trading_ppm=trading_ppm, settlement_ppm=settlement_ppm))
    assert ledger.cash_required(notional) == cash


def test_hold_and_release() -> None:
    ledger, _ = setup()
    assert ledger.hold("BUYER", CASH, 9_000_000)
    assert not ledger.hold("BUYER", CASH, 1_000_001)  # all or nothing
    assert ledger.entry("BUYER", CASH) == (10_000_000, 9_000_000, 0, 0)
    assert ledger.hold("BUYER", CASH, 1_000_000)
    assert not ledger.hold("BUYER", CASH, 1)
    ledger.release("BUYER", CASH, 10_000_000)
    assert ledger.available("BUYER", CASH) == 10_000_000
    with pytest.raises(LedgerError, match="only 0 held"):
        ledger.release("BUYER", CASH, 1)
    assert not ledger.hold("BUYER", CASH, -1)
    assert not ledger.hold("NOBODY", CASH, 1)
    assert not ledger.hold("BUYER", "CEA24", 1)
    ledger._check()


def test_settle_moves_cash_allowances_and_fees() -> None:
    ledger, _ = setup()
    price, qty = 10_000, 300  # 3,000,000 fen notional
    need = ledger.cash_required(price * qty)
    assert need == 3_000_000 + 1800  # (500 + 100) ppm
    assert ledger.hold("BUYER", CASH, need)
    assert ledger.hold("SELLER", "CEA24", qty)
    ledger.take_postings()
    ledger.settle(trade(1, qty, price), need)
    tf, sf = 1500, 300  # per side
    assert ledger.entry("BUYER", CASH) == (10_000_000 - 3_000_000 - tf - sf, 0, 0, 0)
    assert ledger.entry("SELLER", CASH) == (3_000_000 - tf - sf, 0, 0, 3_000_000 - tf - sf)
    assert ledger.entry("BUYER", "CEA24") == (300, 0, 300, 0)  # T+1: not sellable today
    assert ledger.entry("SELLER", "CEA24") == (700, 0, 0, 0)
    reserve = 2 * tf * 200_000 // 1_000_000
    assert ledger.entry("EXCHANGE-FEES", CASH)[0] == 2 * tf - reserve
    assert ledger.entry("RISK-RESERVE", CASH)[0] == reserve
    assert ledger.entry("REGISTRY-FEES", CASH)[0] == 2 * sf
    [posting] = ledger.take_postings()
    assert posting.posting_id == "T1" and posting.kind == "trade" and posting.seq == 1001 and posting.ref == "1"
    assert legs_by_asset(posting.legs) == {CASH: 0, "CEA24": 0}
    assert posting.legs == (
        ("BUYER", CASH, -(3_000_000 + tf + sf), 0), ("SELLER", CASH, 3_000_000 - tf - sf, 3_000_000 - tf - sf),
        ("SELLER", "CEA24", -300, 0), ("BUYER", "CEA24", 300, 300),
        ("EXCHANGE-FEES", CASH, 2 * tf - reserve, 0), ("RISK-RESERVE", CASH, reserve, 0),
        ("REGISTRY-FEES", CASH, 2 * sf, 0),
    )
    # One object per trade, which the garbage collector does not track.
    assert isinstance(posting, TradePosting) and not gc.is_tracked(posting)
    # The buyer cannot sell today what it bought today; the seller may buy with the proceeds.
    assert not ledger.hold("BUYER", "CEA24", 1)
    assert ledger.hold("SELLER", CASH, 2_000_000)
    ledger.release("SELLER", CASH, 2_000_000)
    assert ledger.withdrawable("SELLER") == 0
    ledger._check()
    ledger.end_of_day()
    assert ledger.entry("BUYER", "CEA24") == (300, 0, 0, 0)
    assert ledger.withdrawable("SELLER") == 3_000_000 - tf - sf
    [eod] = ledger.take_postings()
    assert eod.posting_id == "D1" and eod.kind == "eod"
    assert sorted(eod.legs) == [("BUYER", "CEA24", 0, -300), ("SELLER", CASH, 0, -(3_000_000 - tf - sf))]
    ledger._check()


def test_settle_same_id_twice_changes_nothing_and_different_content_is_an_error() -> None:
    ledger, _ = setup()
    need = ledger.cash_required(10_000 * 10)
    assert ledger.hold("BUYER", CASH, 2 * need) and ledger.hold("SELLER", "CEA24", 20)
    ledger.settle(trade(1, 10, 10_000), need)
    before = ledger.snapshot()
    ledger.settle(trade(1, 10, 10_000), need)
    assert ledger.snapshot() == before
    with pytest.raises(LedgerError, match="different content"):
        ledger.settle(trade(1, 11, 10_000), need)
    assert ledger.snapshot() == before


def test_settle_without_fees_has_no_fee_legs() -> None:
    ledger, _ = setup(Fees())
    need = ledger.cash_required(10_000 * 10)
    assert need == 100_000 and ledger.hold("BUYER", CASH, need) and ledger.hold("SELLER", "CEA24", 10)
    ledger.take_postings()
    ledger.settle(trade(1, 10, 10_000), need)
    [posting] = ledger.take_postings()
    assert posting.legs == (("BUYER", CASH, -100_000, 0), ("SELLER", CASH, 100_000, 100_000),
                            ("SELLER", "CEA24", -10, 0), ("BUYER", "CEA24", 10, 10))
    assert ledger.entry("EXCHANGE-FEES", CASH) == (0, 0, 0, 0)
    ledger._check()


def test_settle_refuses_a_trade_older_than_the_last() -> None:
    ledger, _ = setup()
    need = ledger.cash_required(10_000 * 10)
    assert ledger.hold("BUYER", CASH, 3 * need) and ledger.hold("SELLER", "CEA24", 30)
    ledger.settle(trade(2, 10, 10_000), need)
    ledger.settle(trade(5, 10, 10_000), need)  # ids may skip; they only increase
    assert ledger.trade_mark == 5
    before, n = ledger.snapshot(), len(ledger.postings)
    for old in (1, 2, 4):
        with pytest.raises(LedgerError, match="increasing id order"):
            ledger.settle(trade(old, 10, 10_000), need)
    assert ledger.snapshot() == before and len(ledger.postings) == n and ledger.trade_mark == 5
    ledger._check()


def test_settle_refuses_what_the_holds_do_not_cover() -> None:
    ledger, _ = setup()
    need = ledger.cash_required(10_000 * 10)
    assert ledger.hold("BUYER", CASH, need) and ledger.hold("SELLER", "CEA24", 5)
    before = ledger.snapshot()
    with pytest.raises(LedgerError, match="do not cover"):
        ledger.settle(trade(1, 10, 10_000), need)  # seller holds only 5 t
    with pytest.raises(LedgerError, match="do not cover"):
        ledger.settle(trade(2, 5, 10_000), 100)  # frees less than the cost
    assert ledger.snapshot() == before and len(ledger.postings) == len(ledger.postings)


def test_proceeds_spent_first_keep_withdrawable_right() -> None:
    ledger, drive = setup()
    # SELLER sells 100 t, then buys 50 t of CEA23 with the proceeds the same day.
    need = ledger.cash_required(1_000_000)
    assert ledger.hold("BUYER", CASH, need) and ledger.hold("SELLER", "CEA24", 100)
    ledger.settle(trade(1, 100, 10_000), need)
    proceeds = ledger.entry("SELLER", CASH)[0]
    member(drive, "OTHER", holdings={"CEA23": 50})
    need2 = ledger.cash_required(50 * 9_000)
    assert ledger.hold("SELLER", CASH, need2) and ledger.hold("OTHER", "CEA23", 50)
    ledger.settle(trade(2, 50, 9_000, buyer="SELLER", seller="OTHER", instrument="CEA23"), need2)
    b, h, u, w = ledger.entry("SELLER", CASH)
    assert b == w < proceeds and h == 0  # what is left is still today's proceeds
    assert ledger.withdrawable("SELLER") == 0
    assert drive(Withdraw("clerk", "SELLER", 1)).reason == R.INSUFFICIENT_CASH  # type: ignore[union-attr]
    ledger._check()


def test_registry_operations() -> None:
    ledger, drive = setup()
    assert drive.ok(Deposit("clerk", "BUYER", 500)).posting_id.startswith("C")
    drive.ok(Withdraw("clerk", "BUYER", 10_000_500))
    assert ledger.entry("BUYER", CASH)[0] == 0
    drive.ok(Transfer("clerk", "SELLER", "BUYER", "CEA24", 100))
    drive.ok(Retire("clerk", "BUYER", "CEA24", 10))
    drive.ok(SetObligation("mee", "AUTHORITY", "SELLER", 2024, 1000))
    drive.ok(Surrender("clerk", "SELLER", "CEA23", 400, 2024))
    drive.ok(Allocate("mee", "AUTHORITY", "SELLER", "CCER", 100))
    drive.ok(Surrender("clerk", "SELLER", "CCER", 50, 2024))
    assert ledger.obligations["SELLER", 2024].surrendered == 450
    assert ledger.supply() == {CASH: 0, "CEA24": 990, "CEA23": 100, "CCER": 50}
    ledger._check()


@pytest.mark.parametrize("cmd,reason", [
    (OpenAccount("clerk", "BUYER", 1), R.ACCOUNT_EXISTS),
    (OpenAccount("clerk", "bad id!", 1), R.INVALID_FIELD),
    (OpenAccount("clerk", "NEW", 9), R.INVALID_FIELD),
    (OpenAccount("clerk", "NEW", 1, "x" * 65), R.INVALID_FIELD),
    (Deposit("clerk", "NOBODY", 5), R.UNKNOWN_ACCOUNT),
    (Deposit("clerk", "BUYER", 0), R.INVALID_AMOUNT),
    (Deposit("clerk", "BUYER", -5), R.INVALID_AMOUNT),
    (Deposit("clerk", "BUYER", 10**16), R.INVALID_AMOUNT),
    (Deposit("clerk", "AUTHORITY", 5), R.WRONG_ACCOUNT_TYPE),
    (Deposit("clerk", "BUYER", "5"), R.INVALID_FIELD),  # type: ignore[arg-type]
    (Withdraw("clerk", "BUYER", 10_000_001), R.INSUFFICIENT_CASH),
    (Allocate("mee", "BUYER", "SELLER", "CEA24", 5), R.NOT_AUTHORITY),
    (Allocate("mee", "AUTHORITY", "SELLER", "CNY", 5), R.INVALID_ASSET),
    (Allocate("mee", "AUTHORITY", "SELLER", "CEA24", 0), R.INVALID_AMOUNT),
    (Allocate("mee", "AUTHORITY", "EXCHANGE-FEES", "CEA24", 5), R.WRONG_ACCOUNT_TYPE),
    (Transfer("clerk", "SELLER", "SELLER", "CEA24", 5), R.SAME_ACCOUNT),
    (Transfer("clerk", "SELLER", "BUYER", "CEA24", 1001), R.INSUFFICIENT_HOLDINGS),
    (Transfer("clerk", "SELLER", "NOBODY", "CEA24", 1), R.UNKNOWN_ACCOUNT),
    (Transfer("clerk", "SELLER", "BUYER", "CNY", 1), R.INVALID_ASSET),
    (Retire("clerk", "SELLER", "CEA24", 1001), R.INSUFFICIENT_HOLDINGS),
    (Surrender("clerk", "SELLER", "CEA24", 5, 2023), R.NO_OBLIGATION),
    (SetObligation("mee", "BUYER", "SELLER", 2024, 5), R.NOT_AUTHORITY),
    (SetObligation("mee", "AUTHORITY", "SELLER", 1999, 5), R.INVALID_FIELD),
    (SetObligation("mee", "AUTHORITY", "REGISTRY-FEES", 2024, 5), R.WRONG_ACCOUNT_TYPE),
    (SuspendAccount("clerk", "EXCHANGE-FEES"), R.WRONG_ACCOUNT_TYPE),
    (SuspendAccount("clerk", "NOBODY"), R.UNKNOWN_ACCOUNT),
    (ReinstateAccount("clerk", "BUYER"), R.NOT_SUSPENDED),
])
def test_rejections_change_nothing(cmd: object, reason: RegistryReason) -> None:
    ledger, drive = setup()
    before = ledger.snapshot()
    n = len(ledger.postings)
    ev = drive(cmd)
    assert isinstance(ev, RegistryRejected), ev
    assert ev.reason == reason, ev
    assert ev.text
    assert ledger.snapshot() == before and len(ledger.postings) == n


def test_surrender_rules() -> None:
    ledger, drive = setup()
    drive.ok(Allocate("mee", "AUTHORITY", "SELLER", "CCER", 100))
    drive.ok(Allocate("mee", "AUTHORITY", "SELLER", "CEA19-20", 100))
    drive.ok(SetObligation("mee", "AUTHORITY", "SELLER", 2023, 1000))
    assert drive(Surrender("clerk", "SELLER", "CEA24", 10, 2023)).reason == R.VINTAGE_TOO_LATE  # type: ignore[union-attr]
    drive.ok(Surrender("clerk", "SELLER", "CEA19-20", 10, 2023))  # older vintages count
    drive.ok(Surrender("clerk", "SELLER", "CCER", 50, 2023))  # 5 % of 1000
    assert drive(Surrender("clerk", "SELLER", "CCER", 1, 2023)).reason == R.CCER_LIMIT  # type: ignore[union-attr]
    drive.ok(Surrender("clerk", "SELLER", "CEA23", 500, 2023))
    drive.ok(Surrender("clerk", "SELLER", "CEA19-20", 90, 2023))
    assert drive(Surrender("clerk", "SELLER", "CEA19-20", 1, 2023)).reason == R.INSUFFICIENT_HOLDINGS  # type: ignore[union-attr]
    drive.ok(SetObligation("mee", "AUTHORITY", "SELLER", 2024, 100))
    assert drive(Surrender("clerk", "SELLER", "CEA24", 101, 2024)).reason == R.EXCEEDS_OBLIGATION  # type: ignore[union-attr]
    assert drive(SetObligation("mee", "AUTHORITY", "SELLER", 2023, 500)).reason == R.OBLIGATION_BELOW_SURRENDERED  # type: ignore[union-attr]
    ob = ledger.obligations["SELLER", 2023]
    assert (ob.required, ob.surrendered, ob.ccer) == (1000, 650, 50)
    ledger._check()


def test_suspended_account_takes_no_holds_and_no_operations() -> None:
    ledger, drive = setup()
    assert ledger.hold("SELLER", "CEA24", 10)  # an order resting before the suspension
    drive.ok(SuspendAccount("clerk", "SELLER"))
    assert not ledger.hold("SELLER", "CEA24", 1)
    assert drive(Transfer("clerk", "SELLER", "BUYER", "CEA24", 1)).reason == R.ACCOUNT_SUSPENDED  # type: ignore[union-attr]
    assert drive(SuspendAccount("clerk", "SELLER")).reason == R.ACCOUNT_SUSPENDED  # type: ignore[union-attr]
    # What rests still settles.
    need = ledger.cash_required(10 * 10_000)
    assert ledger.hold("BUYER", CASH, need)
    ledger.settle(trade(1, 10, 10_000), need)
    assert ledger.entry("SELLER", "CEA24")[1] == 0
    drive.ok(ReinstateAccount("clerk", "SELLER"))
    assert ledger.hold("SELLER", "CEA24", 1) and ledger.hold("SELLER", CASH, 1)
    ledger._check()


def test_settle_day_and_duplicate_command() -> None:
    ledger, drive = setup()
    ev = drive.ok(SettleDay("clerk"))
    assert ev.posting_id == "D1" and ledger.day == 2
    ev2 = ledger.execute(SettleDay("clerk", seq=ev.seq, ts=ev.ts))
    assert isinstance(ev2, RegistryDone) and ev2.text == "already applied" and ledger.day == 2
    cmd = Deposit("clerk", "BUYER", 5, seq=drive.seq + 1, ts=1)
    drive.seq += 1
    assert isinstance(ledger.execute(cmd), RegistryDone)
    assert ledger.execute(msgspec.structs.replace(cmd)).text == "already applied"
    with pytest.raises(LedgerError, match="different content"):
        ledger.execute(msgspec.structs.replace(cmd, amount=6))


def test_snapshot_restore_and_replay_of_postings() -> None:
    ledger, drive = setup()
    drive.ok(SetObligation("mee", "AUTHORITY", "SELLER", 2024, 100))
    drive.ok(SuspendAccount("clerk", "BUYER"))
    copy = Ledger(FEES)
    copy.take_postings()
    copy.restore(ledger.snapshot())
    assert copy.full_state() == ledger.full_state()
    assert not copy.hold("BUYER", CASH, 1)  # still suspended
    # A ledger rebuilt from the postings alone is the same ledger.
    rebuilt = Ledger(FEES)
    for p in ledger.take_postings():
        rebuilt.apply_posting(p)
    assert rebuilt.full_state() == ledger.full_state()
    rebuilt._check()


def test_recorded_trades_rebuild_the_ledger_and_raise_the_watermark() -> None:
    ledger, drive = setup()
    need = ledger.cash_required(10_000 * 10)
    assert ledger.hold("BUYER", CASH, 2 * need) and ledger.hold("SELLER", "CEA24", 20)
    ledger.settle(trade(1, 10, 10_000), need)
    ledger.settle(trade(2, 10, 10_000), need)
    drive.ok(Deposit("clerk", "SELLER", 5))
    postings = ledger.take_postings()
    rebuilt = Ledger(FEES)
    rebuilt.take_postings()
    for p in postings:
        assert rebuilt.apply_posting(p) != p.posting_id.startswith("G-")  # genesis: its own already
    assert not rebuilt.apply_posting(postings[-2])  # a recorded posting again changes nothing
    assert rebuilt.full_state() == ledger.full_state() and rebuilt.trade_mark == 2
    with pytest.raises(LedgerError, match="different content"):
        rebuilt.apply_posting(msgspec.structs.replace(postings[-2], reserve=0))
    # The trades it holds cannot settle again through the engine's path either.
    assert rebuilt.hold("BUYER", CASH, need) and rebuilt.hold("SELLER", "CEA24", 10)
    with pytest.raises(LedgerError, match="increasing id order"):
        rebuilt.settle(trade(1, 10, 10_000), need)
    rebuilt.settle(trade(2, 10, 10_000), need)  # the last one again: nothing changes
    assert rebuilt.entry("BUYER", CASH)[1] == need
    rebuilt._check()
    # A snapshot keeps no watermark: the trades after it start a new one.
    copy = Ledger(FEES)
    copy.restore(rebuilt.snapshot())
    assert copy.trade_mark == 0
    copy._check()
    # A trade recorded as a plain posting (legs listed) raises the watermark as well.
    trade_posting = postings[-2]
    assert isinstance(trade_posting, TradePosting)
    plain = Posting("T7", trade_posting.seq, trade_posting.ts, "trade", "7", "", trade_posting.legs)
    assert copy.apply_posting(plain) and copy.trade_mark == 7
    with pytest.raises(LedgerError, match="increasing id order"):
        copy.settle(trade(7, 10, 10_000), need)
    copy._check()


def test_account_types() -> None:
    ledger, drive = setup()
    member(drive, "FUND", cash=5, holder_type=HolderType.INSTITUTION)
    assert drive(SetObligation("mee", "AUTHORITY", "FUND", 2024, 5)).reason == R.WRONG_ACCOUNT_TYPE  # type: ignore[union-attr]
    assert ledger.accounts["AUTHORITY"].holder_type == HolderType.AUTHORITY
