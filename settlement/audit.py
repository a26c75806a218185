"""Reconciliation: does the record add up? Returns every difference found (empty: clean).

Checks, over the whole store:
- every posting applies cleanly, in order, to a fresh ledger (no balance, pending or
  obligation ever out of bounds; no leg on an unknown account; no id twice);
- postings are stored in the order of the sequence, and none is beyond the store's
  last settled seq;
- every trade posting is complete delivery versus payment: its cash and its one
  allowance asset each sum to zero over its legs, the buyer pays, the seller
  delivers, and no trade id is settled twice; a ``TradePosting`` (whose legs are
  derived, so complete by construction) also has a positive price and quantity,
  fees that are not negative, a reserve share within the trading fees and a buyer's
  pending change within what the buyer paid;
- the balances table equals the sum of all postings' legs (each an exact integer), and
  the account and obligation tables equal what the postings say;
- conservation per asset: allocated - surrendered - retired = sum of balances of each
  allowance vintage and CCER; deposited - withdrawn = sum of cash balances (fee
  accounts included);
- when a live ledger is given: its balances, T+1 quantities, accounts and obligations
  equal the store's (settle everything first: flush the settler).
"""

from __future__ import annotations

from typing import Any

from engine.ledger import CASH
from settlement.ledger import Ledger, LedgerError
from settlement.messages import TradePosting
from settlement.store import RegistryStore, StoreError
from settlement.structs import Fees

DIFFERENCES_MAX = 1000  # stop listing after this many; the count is still reported


def _picture(ledger: Ledger) -> dict[tuple[str, str], tuple[int, int]]:
    """(account, asset) -> (balance, pending) for every non-zero entry."""
    out = {}
    for (account, asset), e in ledger.entries.items():
        pending = e.unwithdrawable if asset == CASH else e.unsellable
        if e.balance or pending:
            out[account, asset] = (e.balance, pending)
    return out


def _trade_problems(p: Any) -> list[str]:
    legs = p.legs
    if len(legs) < 4:
        return [f"trade {p.posting_id}: {len(legs)} legs, a trade has at least 4"]
    (buyer, c1, pay, _), (seller, c2, receive, _), (seller2, a1, deliver, _), (buyer2, a2, take, _) = legs[:4]
    problems = []
    if not (c1 == c2 == CASH and a1 == a2 != CASH and buyer == buyer2 and seller == seller2):
        problems.append(f"trade {p.posting_id}: legs are not buyer/seller cash and delivery: {legs[:4]}")
    if not (pay < 0 < receive and deliver < 0 < take and take == -deliver):
        problems.append(f"trade {p.posting_id}: amounts do not make delivery versus payment: {legs[:4]}")
    sums: dict[str, int] = {}
    for _, asset, delta, _ in legs:
        sums[asset] = sums.get(asset, 0) + delta
    for asset, total in sums.items():
        if total:
            problems.append(f"trade {p.posting_id}: {asset} legs sum to {total}, not 0")
    if any(asset not in (CASH, a1) for _, asset, _, _ in legs):
        problems.append(f"trade {p.posting_id}: legs in more than one allowance asset")
    if p.posting_id != f"T{p.ref}":
        problems.append(f"trade {p.posting_id}: id does not match its trade id {p.ref}")
    if type(p) is TradePosting:
        if p.price <= 0 or p.qty <= 0:
            problems.append(f"trade {p.posting_id}: price {p.price} and quantity {p.qty} must be positive")
        if p.trading_fee < 0 or p.settlement_fee < 0 or not 0 <= p.reserve <= 2 * p.trading_fee:
            problems.append(f"trade {p.posting_id}: fees do not add up: trading {p.trading_fee} and settlement "
                            f"{p.settlement_fee} per side must not be negative, and the reserve {p.reserve} must "
                            f"be within both trading fees ({2 * p.trading_fee})")
        if not -pay >= -p.buyer_pending >= 0:
            problems.append(f"trade {p.posting_id}: the buyer's pending change {p.buyer_pending} is not within "
                            f"[{pay}, 0]")
    return problems


def audit(store: RegistryStore, ledger: Ledger | None = None, fees: Fees | None = None) -> list[str]:
    """Every difference between what the record says and what it must say."""
    diffs: list[str] = []
    overflow = 0

    def report(text: str) -> None:
        nonlocal overflow
        if len(diffs) < DIFFERENCES_MAX:
            diffs.append(text)
        else:
            overflow += 1

    fees = fees or (ledger.fees if ledger is not None else Fees())
    rebuilt = Ledger(fees)
    rebuilt.take_postings()
    trade_refs: set[str] = set()
    broken = False
    count = 0
    previous: Any = None
    for p in store.postings():
        count += 1
        if previous is not None and p.seq < previous.seq:
            report(f"posting {p.posting_id} (seq {p.seq}) is stored after posting {previous.posting_id} (seq "
                   f"{previous.seq}): the store keeps postings in the order of the sequence")
        if previous is None or p.seq > previous.seq:
            previous = p
        if p.kind == "trade":
            if p.ref in trade_refs:
                report(f"trade {p.ref} settled twice")
            trade_refs.add(p.ref)
            for problem in _trade_problems(p):
                report(problem)
        elif p.kind in ("transfer", "eod"):
            for asset, total in _sums(p.legs).items():
                if total:
                    report(f"{p.kind} {p.posting_id}: {asset} legs sum to {total}, not 0")
        if broken:
            continue
        try:
            if not rebuilt.apply_posting(p) and not p.posting_id.startswith("G-"):
                report(f"posting {p.posting_id} recorded twice")
        except LedgerError as exc:
            report(f"posting {p.posting_id} does not apply: {exc}; the rest is not replayed")
            broken = True
    settled = store.last_seq()
    if previous is not None and previous.seq > settled:
        report(f"the store's last settled seq is {settled}, but posting {previous.posting_id} has seq {previous.seq}: "
               "every stored posting must be at or below it")
    if not broken:
        try:
            _compare_store(store, rebuilt, "postings", report)
            _conservation(store, rebuilt, report)
        except StoreError as exc:
            report(str(exc))
    if ledger is not None:
        _compare_store(store, ledger, "live ledger", report)
        supply = ledger.supply()
        totals = _store_totals(store)
        for asset in sorted(set(supply) | set(totals)):
            if supply.get(asset, 0) != totals.get(asset, 0):
                report(f"{asset}: live ledger counters say {supply.get(asset, 0)}, store balances sum to "
                       f"{totals.get(asset, 0)}")
    if overflow:
        diffs.append(f"... and {overflow} more differences")
    return diffs


def _sums(legs: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, asset, delta, _ in legs:
        out[asset] = out.get(asset, 0) + delta
    return out


def _store_totals(store: RegistryStore) -> dict[str, int]:
    totals: dict[str, int] = {}
    for _, asset, balance, _ in store.balances():
        totals[asset] = totals.get(asset, 0) + balance
    return totals


def _compare_store(store: RegistryStore, ledger: Ledger, what: str, report: Any) -> None:
    stored = {(a, s): (b, p) for a, s, b, p in store.balances() if b or p}
    mine = _picture(ledger)
    for key in sorted(set(stored) | set(mine)):
        if stored.get(key, (0, 0)) != mine.get(key, (0, 0)):
            report(f"{key[0]} {key[1]}: store has (balance, pending) {stored.get(key, (0, 0))}, "
                   f"{what} say {mine.get(key, (0, 0))}")
    accounts = {a.account: a for a in store.accounts()}
    for name in sorted(set(accounts) | set(ledger.accounts)):
        if accounts.get(name) != ledger.accounts.get(name):
            report(f"account {name}: store has {accounts.get(name)}, {what} say {ledger.accounts.get(name)}")
    obligations = {(o.account, o.year): o for o in store.obligations()}
    for ob_key in sorted(set(obligations) | set(ledger.obligations)):
        if obligations.get(ob_key) != ledger.obligations.get(ob_key):
            report(f"obligation {ob_key[0]} {ob_key[1]}: store has {obligations.get(ob_key)}, "
                   f"{what} say {ledger.obligations.get(ob_key)}")
    years = {(c.account, c.year): c for c in store.compliance()}
    for c_key in sorted(set(years) | set(ledger.compliance)):
        if years.get(c_key) != ledger.compliance.get(c_key):
            report(f"compliance {c_key[0]} {c_key[1]}: store has {years.get(c_key)}, "
                   f"{what} say {ledger.compliance.get(c_key)}")


def _conservation(store: RegistryStore, rebuilt: Ledger, report: Any) -> None:
    totals = _store_totals(store)
    supply = rebuilt.supply()
    for asset in sorted(set(supply) | set(totals)):
        have, want = totals.get(asset, 0), supply.get(asset, 0)
        if have != want:
            if asset == CASH:
                report(f"CNY: deposited - withdrawn = {want} fen, cash balances sum to {have}")
            else:
                report(f"{asset}: allocated - surrendered - retired - expired = {want} t, balances sum to {have}")
