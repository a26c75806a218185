"""``etx registry``: accounts, balances, history, registry operations and the audit.

The tools work directly on a registry store (``--store``, a SQLite path or a
``postgresql://`` URL) while the exchange is stopped: an operation loads the ledger
from the store, applies the same registry command the exchange would (the same
``Ledger`` code, the same checks and rejection reasons) and writes its posting with
the next sequence number. On a running exchange, operations go through the gateway,
which sequences them with the orders.

Amounts are entered and printed in yuan (two decimals) and tonnes, parsed exactly.
Roles: reading (accounts, balances, history, audit) is open; ``clerk`` runs account,
cash and holding operations and the end of day; ``authority`` allocates and sets
obligations; ``admin`` manages users. ``user NAME ROLE`` needs no ``--as`` while the
store has no user at all (to create the first admin).

Exit status: 0 done, 1 rejected (or audit differences), 2 bad input or store error.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

from engine.ledger import CASH
from settlement.audit import audit
from settlement.ledger import Ledger
from settlement.messages import (
    Allocate,
    AnyPosting,
    Deposit,
    HolderType,
    OpenAccount,
    RegistryReason,
    RegistryRejected,
    ReinstateAccount,
    Retire,
    SetObligation,
    SettleDay,
    Surrender,
    SuspendAccount,
    Transfer,
    Withdraw,
)
from settlement.store import ROLES, RegistryStore, StoreError, open_store
from settlement.units import format_tonnes, format_yuan, parse_tonnes, parse_yuan

DEFAULT_STORE = "./etx-registry.sqlite"
HISTORY_DEFAULT = 50
HISTORY_MAX = 10_000

# subcommand -> the role that may run it (None: anyone)
ROLE_OF: dict[str, str | None] = {
    "accounts": None, "balances": None, "history": None, "audit": None,
    "open": "clerk", "suspend": "clerk", "reinstate": "clerk", "deposit": "clerk", "withdraw": "clerk",
    "transfer": "clerk", "surrender": "clerk", "retire": "clerk", "end-of-day": "clerk",
    "allocate": "authority", "obligation": "authority", "user": "admin",
}
HOLDER_NAMES = {t.name.lower(): t for t in HolderType if t in (HolderType.COMPLIANCE, HolderType.INSTITUTION,
                                                               HolderType.INDIVIDUAL)}


def amount(asset: str, value: int) -> str:
    return f"{format_yuan(value)} CNY" if asset == CASH else f"{format_tonnes(value)} t {asset}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS,
                        help=f"SQLite file or postgresql:// URL (default {DEFAULT_STORE})")
    common.add_argument("--as", dest="user", default=argparse.SUPPRESS, help="the user running the command")
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"SQLite file or postgresql:// URL (default {DEFAULT_STORE})")
    parser.add_argument("--as", dest="user", default="", help="the user running the command")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, parents=[common])

    add("accounts", "list accounts")
    p = add("balances", "balance, held, not yet sellable (or withdrawable) and available, per asset")
    p.add_argument("account", nargs="?", default="")
    p = add("history", "an account's postings, newest last")
    p.add_argument("account")
    p.add_argument("--limit", type=int, default=HISTORY_DEFAULT)
    p = add("open", "open an account")
    p.add_argument("account")
    p.add_argument("--type", dest="holder", choices=sorted(HOLDER_NAMES), default="compliance")
    p.add_argument("--name", default="")
    for name, help_ in (("suspend", "suspend an account"), ("reinstate", "reinstate a suspended account")):
        add(name, help_).add_argument("account")
    for name, help_ in (("deposit", "cash in, yuan"), ("withdraw", "cash out, yuan (settled, unheld cash only)")):
        p = add(name, help_)
        p.add_argument("account")
        p.add_argument("yuan")
    p = add("allocate", "issue allowances of a vintage (or CCER) into an account")
    p.add_argument("account")
    p.add_argument("asset")
    p.add_argument("tonnes")
    p.add_argument("--authority", default="AUTHORITY", help="the authority account issuing (default AUTHORITY)")
    p = add("obligation", "set an account's compliance obligation for a year")
    p.add_argument("account")
    p.add_argument("year", type=int)
    p.add_argument("tonnes")
    p.add_argument("--authority", default="AUTHORITY")
    p = add("transfer", "move allowances between accounts")
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("asset")
    p.add_argument("tonnes")
    p = add("surrender", "surrender for compliance against a year's obligation")
    p.add_argument("account")
    p.add_argument("asset")
    p.add_argument("tonnes")
    p.add_argument("year", type=int)
    p = add("retire", "voluntary cancellation")
    p.add_argument("account")
    p.add_argument("asset")
    p.add_argument("tonnes")
    add("end-of-day", "settle the day: T+1 quantities become sellable, sale proceeds withdrawable")
    p = add("user", "add a user or change a user's role")
    p.add_argument("name")
    p.add_argument("role", choices=ROLES)
    add("audit", "check conservation, settlement and the balance tables; exit 1 on any difference")


def run(args: argparse.Namespace) -> int:
    try:
        store = open_store(args.store)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        store.migrate()
        return _run(store, args)
    except (StoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _run(store: RegistryStore, args: argparse.Namespace) -> int:
    action = args.action
    needed = ROLE_OF[action]
    if needed is not None and not (action == "user" and store.user_count() == 0):
        role = store.role_of(args.user) if args.user else None
        if role != needed:
            who = f"user {args.user!r} ({role or 'unknown'})" if args.user else "no user (--as)"
            print(f"rejected: NOT_PERMITTED ({int(RegistryReason.NOT_PERMITTED)}): {action} needs the role "
                  f"{needed}; {who}", file=sys.stderr)
            return 1
    if action == "user":
        store.add_user(args.name, args.role)
        print(f"user {args.name}: {args.role}")
        return 0
    if action == "accounts":
        return _accounts(store)
    if action == "balances":
        return _balances(store.load_ledger(), args.account)
    if action == "history":
        if not 0 < args.limit <= HISTORY_MAX:
            raise ValueError(f"--limit must be in [1, {HISTORY_MAX}], got {args.limit}")
        return _history(store, args.account, args.limit)
    if action == "audit":
        diffs = audit(store)
        for d in diffs:
            print(d)
        if diffs:
            print(f"audit: {len(diffs)} differences", file=sys.stderr)
            return 1
        print(f"audit: clean ({len(store.accounts())} accounts, last settled sequence {store.last_seq()})")
        return 0
    return _operate(store, args)


def _command(args: argparse.Namespace) -> Any:
    """The registry command the arguments name (amounts parsed exactly)."""
    user, action = args.user, args.action
    if action == "open":
        return OpenAccount(user, args.account, int(HOLDER_NAMES[args.holder]), args.name)
    if action == "suspend":
        return SuspendAccount(user, args.account)
    if action == "reinstate":
        return ReinstateAccount(user, args.account)
    if action == "deposit":
        return Deposit(user, args.account, parse_yuan(args.yuan))
    if action == "withdraw":
        return Withdraw(user, args.account, parse_yuan(args.yuan))
    if action == "allocate":
        return Allocate(user, args.authority, args.account, args.asset, parse_tonnes(args.tonnes))
    if action == "obligation":
        return SetObligation(user, args.authority, args.account, args.year, parse_tonnes(args.tonnes))
    if action == "transfer":
        return Transfer(user, args.source, args.target, args.asset, parse_tonnes(args.tonnes))
    if action == "surrender":
        return Surrender(user, args.account, args.asset, parse_tonnes(args.tonnes), args.year)
    if action == "retire":
        return Retire(user, args.account, args.asset, parse_tonnes(args.tonnes))
    if action == "end-of-day":
        return SettleDay(user)
    raise ValueError(f"unknown action {action!r}")


def _operate(store: RegistryStore, args: argparse.Namespace) -> int:
    cmd = _command(args)
    ledger = store.load_ledger()
    seq = store.last_seq() + 1
    cmd.seq, cmd.ts = seq, time.time_ns()
    ev = ledger.execute(cmd)
    if isinstance(ev, RegistryRejected):
        print(f"rejected: {RegistryReason(ev.reason).name} ({ev.reason}): {ev.text}", file=sys.stderr)
        return 1
    store.write_batch(ledger.take_postings(), seq)
    print(f"done: {ev.posting_id} {ev.text}")
    return 0


def _accounts(store: RegistryStore) -> int:
    print(f"{'ACCOUNT':<20} {'TYPE':<14} {'STATUS':<10} NAME")
    for a in store.accounts():
        status = "active" if a.status == 1 else "suspended"
        print(f"{a.account:<20} {HolderType(a.holder_type).name.lower():<14} {status:<10} {a.name}")
    return 0


def _balances(ledger: Ledger, account: str) -> int:
    if account and account not in ledger.accounts:
        print(f"rejected: UNKNOWN_ACCOUNT ({int(RegistryReason.UNKNOWN_ACCOUNT)}): no account {account!r}",
              file=sys.stderr)
        return 1
    print(f"{'ACCOUNT':<20} {'ASSET':<9} {'BALANCE':>18} {'HELD':>16} {'NOT YET FREE':>16} {'AVAILABLE':>18}")
    for (name, asset), e in sorted(ledger.entries.items()):
        if (account and name != account) or not any(e):
            continue
        balance, held, unsellable, unwithdrawable = e
        if asset == CASH:
            cells = [format_yuan(balance), format_yuan(held), format_yuan(unwithdrawable),
                     format_yuan(ledger.withdrawable(name))]
        else:
            cells = [format_tonnes(balance), format_tonnes(held), format_tonnes(unsellable),
                     format_tonnes(ledger.available(name, asset))]
        print(f"{name:<20} {asset:<9} {cells[0]:>18} {cells[1]:>16} {cells[2]:>16} {cells[3]:>18}")
    return 0


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _history(store: RegistryStore, account: str, limit: int) -> int:
    if account not in {a.account for a in store.accounts()}:
        print(f"rejected: UNKNOWN_ACCOUNT ({int(RegistryReason.UNKNOWN_ACCOUNT)}): no account {account!r}",
              file=sys.stderr)
        return 1
    for p in store.history(account, limit):
        print(_history_line(p, account))
    return 0


def _history_line(p: AnyPosting, account: str) -> str:
    moves = []
    for name, asset, delta, pending in p.legs:
        if name != account:
            continue
        if delta:
            sign = "+" if delta > 0 else "-"
            moves.append(f"{sign}{amount(asset, abs(delta))}")
        if pending < 0:
            moves.append(f"freed {amount(asset, -pending)}")
    cause = f"trade {p.ref}" if p.kind == "trade" else f"seq {p.seq}"
    actor = f" by {p.actor}" if p.actor else ""
    text = f" ({p.text})" if p.text and p.kind != "trade" else ""
    return f"{_when(p.ts)}  {p.posting_id:<10} {p.kind:<10} {cause}{actor}: {', '.join(moves) or '-'}{text}"
