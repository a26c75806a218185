"""The compliance year in the registry, rule by rule from issue 14: allocation from
output x the industry's benchmark x adjustment factors, 70 % pre-allocated and the rest
trued up (up or down) after verification; verified emissions submitted by a verifier and
approved by the authority (every correction kept, with who and when) set the
obligation; surrender by the deadline with CCER at most 5 % and no later vintage; at the
deadline each shortfall recorded with a penalty of a multiple of the average price and
deducted from the next year's allocation; the banking cap when a vintage rolls; staff
accounts never trade; the authority sells its own allowances by auction."""

from __future__ import annotations

from typing import Any

import msgspec

from engine import Reason
from engine.messages import (
    AuctionAnnounce,
    AuctionBid,
    AuctionFill,
    BlockOffer,
    NewOrder,
    Rejected,
    Side,
    Tick,
    Trade,
)
from settlement import (
    Allocate,
    ApproveVerification,
    Benchmark,
    CloseCompliance,
    ComplianceRules,
    Deposit,
    Exchange,
    HolderType,
    Ledger,
    OpenAccount,
    PreAllocate,
    RegistryDone,
    RegistryReason,
    RegistryRejected,
    SetObligation,
    SubmitVerification,
    Surrender,
    Transfer,
)
from tests.settlement.helpers import FEES, INSTRUMENTS, Market

RULES = ComplianceRules(
    benchmarks=(
        Benchmark(industry="power", year=2024, intensity_ppm=800_000, factors_ppm=(1_000_000, 950_000)),  # 0.76
        Benchmark(industry="cement", year=2024, intensity_ppm=500_000),
        Benchmark(industry="cement", year=2025, intensity_ppm=500_000),
    ),
    penalty_multiple_ppm=3_000_000,
)
# 2024's deadline is 2025-12-31 in Beijing time: the year closes from 2026-01-01 00:00+08:00.
AFTER_DEADLINE_2024 = 1_767_196_800 * 1_000_000_000


def market() -> Market:
    m = Market(rules=RULES)
    done(m, OpenAccount("clerk", "P", int(HolderType.COMPLIANCE), "P Power"),
         OpenAccount("clerk", "Q", int(HolderType.COMPLIANCE), "Q Cement"),
         OpenAccount("clerk", "T", int(HolderType.INSTITUTION), "T Fund"),
         Deposit("clerk", "T", 10_000_000_000))
    return m


def done(m: Market, *cmds: Any) -> list[Any]:
    out = m.send(*cmds)
    answers = [e for e in out if isinstance(e, (RegistryDone, RegistryRejected))]
    assert all(isinstance(e, RegistryDone) for e in answers), answers
    return out


def refused(m: Market, cmd: Any, reason: int) -> str:
    """The command is rejected for ``reason`` and changes nothing (but the clock)."""
    before = m.ledger.full_state()
    out = m.send(cmd)
    [answer] = [e for e in out if isinstance(e, (RegistryDone, RegistryRejected))]
    assert isinstance(answer, RegistryRejected) and answer.reason == reason, answer
    assert m.ledger.full_state() == before
    return answer.text


def holding(m: Market, account: str, asset: str) -> int:
    return m.ledger.entry(account, asset)[0]


def state(m: Market, account: str, year: int) -> Any:
    return m.ledger.compliance[account, year]


def test_pre_allocation_is_output_times_benchmark_times_factors_times_the_pre_share() -> None:
    m = market()
    done(m, PreAllocate("mee", "AUTHORITY", "P", 2024, "power", 1_000_000))
    # 1,000,000 MWh x 0.8 t/MWh x 1.0 x 0.95 = 760,000 t; 70 % of it before verification.
    assert holding(m, "P", "CEA24") == 532_000
    c = state(m, "P", 2024)
    assert (c.industry, c.base_output, c.pre_allocated, c.trued_up) == ("power", 1_000_000, 532_000, 0)
    assert refused(m, PreAllocate("mee", "AUTHORITY", "P", 2024, "power", 1), RegistryReason.ALREADY_ALLOCATED)
    assert "oil" in refused(m, PreAllocate("mee", "AUTHORITY", "Q", 2024, "oil", 1), RegistryReason.UNKNOWN_INDUSTRY)
    assert "no benchmark for steel in 2024" in refused(
        m, PreAllocate("mee", "AUTHORITY", "Q", 2024, "steel", 1), RegistryReason.UNKNOWN_INDUSTRY)
    refused(m, PreAllocate("mee", "AUTHORITY", "T", 2024, "power", 1), RegistryReason.WRONG_ACCOUNT_TYPE)
    refused(m, PreAllocate("mee", "P", "Q", 2024, "power", 1), RegistryReason.NOT_AUTHORITY)
    refused(m, PreAllocate("mee", "AUTHORITY", "Q", 2024, "power", 0), RegistryReason.INVALID_AMOUNT)
    m.exchange._check()


def test_a_verifier_submits_the_authority_approves_and_the_allocation_is_trued_up_both_ways() -> None:
    m = market()
    done(m, PreAllocate("mee", "AUTHORITY", "P", 2024, "power", 1_000_000))
    refused(m, ApproveVerification("mee", "AUTHORITY", "P", 2024), RegistryReason.NOT_SUBMITTED)
    refused(m, SubmitVerification("ver", "Q", 2024, 1, 1), RegistryReason.NOT_PRE_ALLOCATED)
    done(m, SubmitVerification("ver", "P", 2024, 1_100_000, 800_000))
    assert m.ledger.obligations.get(("P", 2024)) is None  # not before the authority approves
    done(m, ApproveVerification("mee", "AUTHORITY", "P", 2024))
    # Verified output 1,100,000 MWh: 836,000 t in all, 304,000 t more than pre-allocated.
    assert holding(m, "P", "CEA24") == 836_000
    assert m.ledger.obligations["P", 2024].required == 800_000
    # A correction: the verifier submits again, the authority approves again; the
    # allocation comes down to 760,000 t and the obligation to 790,000 t.
    done(m, SubmitVerification("ver2", "P", 2024, 1_000_000, 790_000))
    done(m, ApproveVerification("boss", "AUTHORITY", "P", 2024))
    assert holding(m, "P", "CEA24") == 760_000
    c = state(m, "P", 2024)
    assert (c.pre_allocated, c.trued_up, c.owed, c.verified_emissions, c.verified_by) == (
        532_000, 228_000, 0, 790_000, "ver2/boss")
    assert m.ledger.obligations["P", 2024].required == 790_000
    # Every submission and approval is kept: who and when.
    kept = [(p.kind, p.actor, p.ts) for p in m.ledger.postings if p.kind in ("submit", "approve")]
    assert [(k, a) for k, a, _ in kept] == [("submit", "ver"), ("approve", "mee"), ("submit", "ver2"),
                                            ("approve", "boss")]
    assert all(ts > 0 for _, _, ts in kept)
    m.exchange._check()


def test_a_downward_true_up_the_entity_cannot_give_back_is_added_to_its_obligation() -> None:
    m = market()
    done(m, PreAllocate("mee", "AUTHORITY", "P", 2024, "power", 1_000_000),  # 532,000 t
         Transfer("clerk", "P", "T", "CEA24", 500_000),
         SubmitVerification("ver", "P", 2024, 500_000, 400_000),  # entitled to 380,000 t
         ApproveVerification("mee", "AUTHORITY", "P", 2024))
    # 152,000 t too many were given; 32,000 t are taken back, 120,000 t are owed.
    assert holding(m, "P", "CEA24") == 0
    c = state(m, "P", 2024)
    assert (c.trued_up, c.owed) == (-32_000, 120_000)
    assert m.ledger.obligations["P", 2024].required == 520_000
    assert m.ledger.supply()["CEA24"] == 500_000
    m.exchange._check()


def trade(m: Market, seller: str, buyer: str, qty: int, price: int) -> None:
    m.seq_no = getattr(m, "seq_no", 0) + 1
    out = m.send(NewOrder(seller, f"s{m.seq_no}", "CEA24", int(Side.SELL), qty, price),
                 NewOrder(buyer, f"b{m.seq_no}", "CEA24", int(Side.BUY), qty, price))
    assert sum(t.qty for t in out if isinstance(t, Trade)) == qty, out


def year_2024(m: Market) -> None:
    """P (power) and Q (cement) through 2024: allocation, trades, verification, surrender."""
    done(m, PreAllocate("mee", "AUTHORITY", "P", 2024, "power", 1_000_000),  # 532,000 t
         PreAllocate("mee", "AUTHORITY", "Q", 2024, "cement", 200_000),  # 70 % of 100,000 t
         Allocate("mee", "AUTHORITY", "P", "CCER", 40_000))
    trade(m, "Q", "T", 50_000, 10_000)
    trade(m, "Q", "T", 10_000, 11_000)  # the average price: 610,000,000 fen / 60,000 t = 10,166 fen/t
    done(m, SubmitVerification("ver", "P", 2024, 1_000_000, 700_000),  # 760,000 t: 228,000 more
         ApproveVerification("mee", "AUTHORITY", "P", 2024),
         SubmitVerification("ver", "Q", 2024, 200_000, 120_000),  # 100,000 t: 30,000 more
         ApproveVerification("mee", "AUTHORITY", "Q", 2024))
    assert (holding(m, "P", "CEA24"), holding(m, "Q", "CEA24")) == (760_000, 40_000)


def test_surrender_offsets_at_most_five_percent_and_no_later_vintage() -> None:
    m = market()
    year_2024(m)
    done(m, Allocate("mee", "AUTHORITY", "P", "CEA25", 1))
    assert "35000 t (5 %)" in refused(m, Surrender("clerk", "P", "CCER", 35_001, 2024), RegistryReason.CCER_LIMIT)
    refused(m, Surrender("clerk", "P", "CEA25", 1, 2024), RegistryReason.VINTAGE_TOO_LATE)
    done(m, Surrender("clerk", "P", "CCER", 35_000, 2024), Surrender("clerk", "P", "CEA24", 665_000, 2024))
    ob = m.ledger.obligations["P", 2024]
    assert (ob.required, ob.surrendered, ob.ccer) == (700_000, 700_000, 35_000)


def test_the_deadline_shortfall_penalty_deduction_and_banking_cap() -> None:
    m = market()
    year_2024(m)
    done(m, Surrender("clerk", "P", "CCER", 35_000, 2024), Surrender("clerk", "P", "CEA24", 665_000, 2024),
         Surrender("clerk", "Q", "CEA24", 40_000, 2024))  # Q is 80,000 t short
    # 2025 starts before 2024 closes: Q's pre-allocation knows no shortfall yet.
    done(m, PreAllocate("mee", "AUTHORITY", "Q", 2025, "cement", 200_000),
         SubmitVerification("ver", "Q", 2025, 200_000, 100_000))
    assert holding(m, "Q", "CEA25") == 70_000
    assert "2024 must be closed" in refused(m, ApproveVerification("mee", "AUTHORITY", "Q", 2025),
                                           RegistryReason.YEAR_CLOSED)
    # Not before the deadline (2025-12-31, Beijing time), by the exchange's clock.
    assert "deadline is 2025-12-31" in refused(m, CloseCompliance("mee", "AUTHORITY", 2024),
                                              RegistryReason.BEFORE_DEADLINE)
    m.clock.now = AFTER_DEADLINE_2024 - 2_000  # send() advances 1,000 ns: the last nanosecond of the day
    refused(m, CloseCompliance("mee", "AUTHORITY", 2024), RegistryReason.BEFORE_DEADLINE)
    refused(m, CloseCompliance("mee", "P", 2024), RegistryReason.NOT_AUTHORITY)
    supply = m.ledger.supply()["CEA24"]
    done(m, CloseCompliance("mee", "AUTHORITY", 2024))
    q, p = state(m, "Q", 2024), state(m, "P", 2024)
    assert q.closed and p.closed
    assert (q.shortfall, q.penalty) == (80_000, 80_000 * 10_166 * 3)
    assert (p.shortfall, p.penalty) == (0, 0)
    # Banking: P carries 95,000 t of 2024 allowances with nothing sold: the cap is
    # 10,000 t, 85,000 t expire. Q sold 60,000 t net: its cap is 100,000 t (it has none left).
    assert (p.expired, holding(m, "P", "CEA24")) == (85_000, 10_000)
    assert q.expired == 0
    assert m.ledger.supply()["CEA24"] == supply - 85_000 and m.ledger.expired["CEA24"] == 85_000
    # After the close: no surrender, no obligation change, no second close for 2024.
    refused(m, Surrender("clerk", "P", "CEA24", 1, 2024), RegistryReason.YEAR_CLOSED)
    refused(m, SetObligation("mee", "AUTHORITY", "P", 2024, 1), RegistryReason.YEAR_CLOSED)
    refused(m, CloseCompliance("mee", "AUTHORITY", 2024), RegistryReason.YEAR_CLOSED)
    # The shortfall comes off 2025: Q is entitled to 100,000 - 80,000 = 20,000 t, so
    # 50,000 of the 70,000 t pre-allocated are taken back at the true-up.
    assert state(m, "Q", 2025).deducted == 80_000
    done(m, ApproveVerification("mee", "AUTHORITY", "Q", 2025))
    assert holding(m, "Q", "CEA25") == 20_000
    assert state(m, "Q", 2025).allocated == 20_000
    # The next cycle's figures start again at the close.
    assert (m.ledger.cycle_value, m.ledger.cycle_qty, m.ledger.sold) == (0, 0, {})
    m.exchange._check()

    # Everything is in the postings (a fresh ledger replaying them gives the same
    # compliance records and counters) and in the snapshot.
    replayed = Ledger(FEES)
    for posting in m.ledger.postings:
        replayed.apply_posting(posting)
    assert replayed.compliance == m.ledger.compliance and replayed.supply() == m.ledger.supply()
    assert replayed.full_state() == m.ledger.full_state()
    restored = Exchange(INSTRUMENTS, Ledger(FEES, RULES))
    restored.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(m.exchange.snapshot()),
                                            type=type(m.exchange.snapshot())))
    assert restored.state_hash() == m.exchange.state_hash()


def test_a_shortfall_known_before_the_pre_allocation_reduces_it() -> None:
    m = market()
    done(m, SetObligation("mee", "AUTHORITY", "Q", 2024, 90_000))
    m.clock.now = AFTER_DEADLINE_2024
    done(m, CloseCompliance("mee", "AUTHORITY", 2024))
    assert state(m, "Q", 2024).shortfall == 90_000 and state(m, "Q", 2024).penalty == 0  # no trades: no price
    done(m, PreAllocate("mee", "AUTHORITY", "Q", 2025, "cement", 200_000))  # 70,000 t less 90,000 t
    assert holding(m, "Q", "CEA25") == 0 and state(m, "Q", 2025).pre_allocated == 0


def test_the_average_price_and_net_sold_count_since_the_last_close() -> None:
    m = market()
    year_2024(m)
    assert m.ledger.average_price() == 10_166
    assert m.ledger.sold == {"Q": 60_000}  # covered entities only: T is an institution


def test_staff_accounts_hold_but_never_trade() -> None:
    m = market()
    done(m, OpenAccount("clerk", "S", int(HolderType.STAFF), "an exchange employee"),
         Deposit("clerk", "S", 100_000_000), Allocate("mee", "AUTHORITY", "S", "CEA24", 200_000))
    for cmd in (NewOrder("S", "o1", "CEA24", int(Side.BUY), 10, 10_000),
                NewOrder("S", "o2", "CEA24", int(Side.SELL), 10, 10_000),
                BlockOffer("S", "k1", "CEA24", int(Side.SELL), 100_000, 10_000)):
        [rej] = [e for e in m.send(cmd) if isinstance(e, Rejected)]
        assert rej.reason == Reason.STAFF_MAY_NOT_TRADE and "may not trade" in rej.text
    # After a restart from a snapshot the rule still holds.
    restored = Exchange(INSTRUMENTS, Ledger(FEES, RULES))
    restored.restore(m.exchange.snapshot())
    assert restored.engine.staff == {"S"}


def test_the_authority_issues_into_its_own_account_and_sells_by_auction() -> None:
    m = market()
    done(m, Allocate("mee", "AUTHORITY", "AUTHORITY", "CEA24", 200_000))
    refused(m, Allocate("mee", "AUTHORITY", "EXCHANGE-FEES", "CEA24", 1), RegistryReason.WRONG_ACCOUNT_TYPE)
    now = m.clock.now
    m.send(AuctionAnnounce("AUTHORITY", "CEA24", 150_000, 9_500, now, now + 10_000_000))
    out = m.send(AuctionBid("T", "b1", 1, 150_000, 10_000))
    assert not any(isinstance(e, Rejected) for e in out), out
    m.clock.now = now + 20_000_000
    fills = [e for e in m.send(Tick()) if isinstance(e, AuctionFill)]
    assert [(f.member, f.qty, f.price) for f in fills] == [("T", 150_000, 10_000)]
    assert holding(m, "T", "CEA24") == 150_000 and holding(m, "AUTHORITY", "CEA24") == 50_000
    assert holding(m, "AUTHORITY", "CNY") > 0
    m.exchange._check()
