"""``etx registry``: accounts, balances, history, registry operations and the audit.

The registry store is a projection of the exchange's journal (docs/registry.md, "One
history"), so the tools never write it:

- Registry operations (open, deposit, allocate, surrender ...) are commands of the
  exchange's core, run as one of its staff users (a clerk; the authority for
  allocation and obligations), whose secret comes from a credentials file only its
  owner can read (``--credentials``) or a prompt, never the command line. With the
  exchange running on the data folder (``--data``; its lock names the address) they
  go through its gateway like any staff command. With it stopped, the tool takes the
  folder's lock, recovers the core from its snapshots and journal, checks the user
  against the configuration, stamps and journals the command, applies it and settles
  its posting into the store, exactly as the exchange would, and leaves; the next
  ``etx serve`` replays it like any other command.
- Reading (accounts, balances, history) works on a running exchange's store; ``audit``
  checks the store against itself, and with a data folder against the journal too
  (``tools.registry_audit``).

The configuration is the copy ``etx serve`` keeps in the data folder unless
``--config`` names one. Amounts are entered and printed in yuan (two decimals) and
tonnes, parsed exactly. Exit status: 0 done, 1 rejected (or audit differences), 2 bad
input or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.ledger import CASH
from gateway.config import Config, ConfigError, load
from gateway.credentials import Credentials, CredentialsError, obtain
from gateway.datadir import FolderInUse, config_copy, holder, registry_url
from settlement.ledger import Ledger, LedgerError
from settlement.messages import (
    Allocate,
    AnyPosting,
    ApproveVerification,
    CloseCompliance,
    Deposit,
    HolderType,
    OpenAccount,
    PreAllocate,
    RegistryDone,
    RegistryReason,
    RegistryRejected,
    ReinstateAccount,
    Retire,
    SetObligation,
    SubmitVerification,
    Surrender,
    SuspendAccount,
    Transfer,
    Withdraw,
)
from settlement.store import RegistryStore, StoreError, open_store
from settlement.units import format_tonnes, format_yuan, parse_tonnes, parse_yuan

DEFAULT_DATA = "etx-data"
HISTORY_DEFAULT = 50
HISTORY_MAX = 10_000
ANSWER_TIMEOUT_S = 30.0
READS = ("accounts", "balances", "history", "audit", "compliance")
HOLDER_NAMES = {t.name.lower(): t for t in HolderType if t in (HolderType.COMPLIANCE, HolderType.INSTITUTION,
                                                               HolderType.INDIVIDUAL, HolderType.STAFF)}


class ToolError(Exception):
    """Bad input or a failure the user can act on: printed as ``error: ...``, exit 2."""


def amount(asset: str, value: int) -> str:
    return f"{format_yuan(value)} CNY" if asset == CASH else f"{format_tonnes(value)} t {asset}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    for p in (parser, common):
        default = argparse.SUPPRESS if p is common else None
        p.add_argument("--data", default=default if p is common else DEFAULT_DATA,
                       help=f"the exchange's data folder (default {DEFAULT_DATA})")
        p.add_argument("--config", default=default, help="the exchange's configuration (default: the copy in --data)")
        p.add_argument("--store", default=default,
                       help="read this store (a SQLite file or postgresql:// URL) instead of the data folder's")
        p.add_argument("--as", dest="user", default=default if p is common else "",
                       help="the staff user running an operation: USER or MEMBER/USER")
        p.add_argument("--credentials", default=default,
                       help="a file (chmod 600) with member, user and secret; without it the secret is asked")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, parents=[common])

    add("accounts", "list accounts")
    p = add("balances", "balance, held, not yet sellable (or withdrawable) and available, per asset")
    p.add_argument("account", nargs="?", default="")
    p = add("history", "an account's postings, newest last")
    p.add_argument("account")
    p.add_argument("--limit", type=int, default=HISTORY_DEFAULT)
    add("audit", "check the store against itself and the journal; exit 1 on any difference")
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
    p = add("allocate", "issue allowances of a vintage (or CCER) into an account (the authority)")
    p.add_argument("account")
    p.add_argument("asset")
    p.add_argument("tonnes")
    p.add_argument("--authority", default="AUTHORITY", help="the authority account issuing (default AUTHORITY)")
    p = add("obligation", "set an account's compliance obligation for a year (the authority)")
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
    p = add("preallocate", "pre-allocate a covered entity's year from its output and industry (the authority)")
    p.add_argument("account")
    p.add_argument("year", type=int)
    p.add_argument("industry")
    p.add_argument("output", help="units of output (MWh, tonnes of product) the benchmark applies to")
    p.add_argument("--authority", default="AUTHORITY")
    p = add("verify", "submit an entity's verified output and emissions for a year (a verifier)")
    p.add_argument("account")
    p.add_argument("year", type=int)
    p.add_argument("output")
    p.add_argument("emissions", help="tonnes of CO2")
    p = add("approve", "approve the submitted verification: obligation and true-up (the authority)")
    p.add_argument("account")
    p.add_argument("year", type=int)
    p.add_argument("--authority", default="AUTHORITY")
    p = add("close", "close a compliance year after its deadline: shortfalls, penalties, banking (the authority)")
    p.add_argument("year", type=int)
    p.add_argument("--authority", default="AUTHORITY")
    p = add("compliance", "the year per entity and per industry: allocation, emissions, surrender, shortfall, penalty")
    p.add_argument("year", type=int)
    p.add_argument("--account", default="", help="one entity only")
    p.add_argument("--csv", action="store_true", help="comma-separated values instead of a table")
    p = add("retire", "voluntary cancellation")
    p.add_argument("account")
    p.add_argument("asset")
    p.add_argument("tonnes")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action in READS:
            return _read(args)
        return asyncio.run(_operate(args))
    except (ToolError, StoreError, ConfigError, CredentialsError, FolderInUse, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# --- configuration and store ---------------------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    path = Path(args.config) if args.config else config_copy(args.data)
    if not path.exists():
        if args.config:
            raise ToolError(f"no configuration at {path}")
        raise ToolError(f"{args.data} holds no copy of the exchange's configuration ({path.name}, written by etx "
                        "serve): give --config FILE")
    try:
        return load(path)
    except OSError as e:
        raise ToolError(f"{path}: {e.strerror or e}") from None


def _store_url(args: argparse.Namespace) -> str:
    if args.store:
        return str(args.store)
    return registry_url(args.data, _config(args).exchange.registry)


# --- reading ---------------------------------------------------------------------------


def _read(args: argparse.Namespace) -> int:
    url = _store_url(args)
    if "://" not in url and not Path(url).exists():
        raise ToolError(f"no registry store at {url}")
    store = open_store(url)
    try:
        if args.action == "accounts":
            return _accounts(store)
        if args.action == "balances":
            try:
                ledger = store.load_ledger()
            except (AssertionError, LedgerError, ValueError) as e:
                raise ToolError(f"the store's records do not add up ({e or 'an invariant fails'}); "
                                "run etx registry audit") from None
            return _balances(ledger, args.account)
        if args.action == "compliance":
            return print_compliance(compliance_rows(store, args.year, args.account), args.csv)
        if args.action == "history":
            if not 0 < args.limit <= HISTORY_MAX:
                raise ToolError(f"--limit must be in [1, {HISTORY_MAX}], got {args.limit}")
            return _history(store, args.account, args.limit)
        return _audit(args, store)
    finally:
        store.close()


def _audit(args: argparse.Namespace, store: RegistryStore) -> int:
    from settlement.audit import audit
    from tools.registry_audit import audit_folder

    journal = Path(args.data) / "journal"
    if args.store and not journal.is_dir():
        diffs = audit(store)  # a store alone: against itself
        summary = f"{len(store.accounts())} accounts, last settled sequence {store.last_seq()}"
    else:
        result = audit_folder(args.data, _config(args), store)
        diffs, summary = result.differences, result.summary()
    for d in diffs:
        print(d)
    if diffs:
        print(f"audit: {len(diffs)} differences", file=sys.stderr)
        return 1
    print(f"audit: clean ({summary})")
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
        if (account and name != account) or not any(e.values()):
            continue
        balance, held, unsellable, unwithdrawable = e.values()
        if asset == CASH:
            cells = [format_yuan(balance), format_yuan(held), format_yuan(unwithdrawable),
                     format_yuan(ledger.withdrawable(name))]
        else:
            cells = [format_tonnes(balance), format_tonnes(held), format_tonnes(unsellable),
                     format_tonnes(ledger.available(name, asset))]
        print(f"{name:<20} {asset:<9} {cells[0]:>18} {cells[1]:>16} {cells[2]:>16} {cells[3]:>18}")
    return 0


COMPLIANCE_COLUMNS = ("entity", "industry", "allocated", "deducted", "emissions", "obligation", "allowances",
                      "offsets", "shortfall", "penalty_cny", "expired", "status")


def compliance_rows(store: RegistryStore, year: int, account: str = "") -> list[dict[str, Any]]:
    """One row per covered entity with an obligation or an allocation for ``year``, then
    one per industry and one for all: tonnes, the penalty in yuan."""
    states = {c.account: c for c in store.compliance() if c.year == year}
    obligations = {o.account: o for o in store.obligations() if o.year == year}
    rows: list[dict[str, Any]] = []
    for name in sorted(set(states) | set(obligations)):
        if account and name != account:
            continue
        c, ob = states.get(name), obligations.get(name)
        required = ob.required if ob else 0
        surrendered, ccer = (ob.surrendered, ob.ccer) if ob else (0, 0)
        closed = bool(c and c.closed)
        status = "closed" if closed else "verified" if c and c.verified_by else "allocated" if c and c.industry else "open"
        rows.append({
            "entity": name, "industry": (c.industry if c else "") or "-",
            "allocated": c.allocated if c else 0, "deducted": c.deducted if c else 0,
            "emissions": c.verified_emissions if c else 0, "obligation": required,
            "allowances": surrendered - ccer, "offsets": ccer,
            "shortfall": c.shortfall if closed and c else required - surrendered,
            "penalty_cny": format_yuan(c.penalty if c else 0), "expired": c.expired if c else 0, "status": status,
        })
    totals: dict[str, dict[str, Any]] = {}
    for row in list(rows):
        for key in (f"industry {row['industry']}", "all"):
            t = totals.setdefault(key, {"entity": key, "industry": row["industry"] if key != "all" else "-",
                                        "penalty_fen": 0, "status": ""})
            for column in ("allocated", "deducted", "emissions", "obligation", "allowances", "offsets", "shortfall",
                           "expired"):
                t[column] = t.get(column, 0) + row[column]
            t["penalty_fen"] += parse_yuan(row["penalty_cny"])
    for key in sorted(totals, key=lambda k: (k == "all", k)):
        t = totals[key]
        t["penalty_cny"] = format_yuan(t.pop("penalty_fen"))
        rows.append(t)
    return rows


def print_compliance(rows: list[dict[str, Any]], as_csv: bool) -> int:
    if as_csv:
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=COMPLIANCE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return 0
    widths = (22, 10, 12, 10, 12, 12, 12, 10, 10, 16, 10, 9)
    print(" ".join(f"{c.upper():<{w}}" if i < 2 else f"{c.upper():>{w}}"
                   for i, (c, w) in enumerate(zip(COMPLIANCE_COLUMNS, widths, strict=True))).rstrip())
    for row in rows:
        cells = [row[c] if isinstance(row[c], str) else format_tonnes(row[c]) for c in COMPLIANCE_COLUMNS]
        print(" ".join(f"{v:<{w}}" if i < 2 else f"{v:>{w}}"
                       for i, (v, w) in enumerate(zip(cells, widths, strict=True))).rstrip())
    return 0


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _history(store: RegistryStore, account: str, limit: int) -> int:
    if account not in {a.account for a in store.accounts()}:
        print(f"rejected: UNKNOWN_ACCOUNT ({int(RegistryReason.UNKNOWN_ACCOUNT)}): no account {account!r}",
              file=sys.stderr)
        return 1
    for p in store.history(account, limit):
        print(history_line(p, account))
    return 0


def history_line(p: AnyPosting, account: str) -> str:
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


# --- operations ------------------------------------------------------------------------


def command(args: argparse.Namespace) -> Any:
    """The registry command the arguments name (amounts parsed exactly); its actor is
    filled in by whoever runs it (the gateway, or the offline path below)."""
    action = args.action
    if action == "open":
        return OpenAccount("", args.account, int(HOLDER_NAMES[args.holder]), args.name)
    if action == "suspend":
        return SuspendAccount("", args.account)
    if action == "reinstate":
        return ReinstateAccount("", args.account)
    if action == "deposit":
        return Deposit("", args.account, parse_yuan(args.yuan))
    if action == "withdraw":
        return Withdraw("", args.account, parse_yuan(args.yuan))
    if action == "allocate":
        return Allocate("", args.authority, args.account, args.asset, parse_tonnes(args.tonnes))
    if action == "obligation":
        return SetObligation("", args.authority, args.account, args.year, parse_tonnes(args.tonnes))
    if action == "transfer":
        return Transfer("", args.source, args.target, args.asset, parse_tonnes(args.tonnes))
    if action == "surrender":
        return Surrender("", args.account, args.asset, parse_tonnes(args.tonnes), args.year)
    if action == "retire":
        return Retire("", args.account, args.asset, parse_tonnes(args.tonnes))
    if action == "preallocate":
        return PreAllocate("", args.authority, args.account, args.year, args.industry, parse_tonnes(args.output))
    if action == "verify":
        return SubmitVerification("", args.account, args.year, parse_tonnes(args.output), parse_tonnes(args.emissions))
    if action == "approve":
        return ApproveVerification("", args.authority, args.account, args.year)
    if action == "close":
        return CloseCompliance("", args.authority, args.year)
    raise ToolError(f"unknown action {action!r}")


async def _operate(args: argparse.Namespace) -> int:
    if args.store:
        raise ToolError("registry operations are commands of the exchange, not writes to a store: name its data "
                        "folder (--data DIR) and they go through the running exchange, or are journaled by it "
                        "when it is stopped")
    cmd = command(args)
    cfg = _config(args)
    creds = obtain(args.credentials, args.user, cfg.exchange.operator_member)
    running = holder(args.data)
    if running and running.get("listen"):
        answer = await _online(cfg, creds, cmd, str(running["listen"]))
    elif running:
        raise FolderInUse(Path(args.data), running)
    else:
        answer = await _offline(args, cfg, creds, cmd)
    return _print_answer(answer)


def _print_answer(answer: Any) -> int:
    if type(answer) is RegistryDone:
        print(f"done: {answer.posting_id} {answer.text} (seq {answer.seq})")
        return 0
    reason = int(answer.reason)
    name = _reason_name(reason)
    print(f"rejected: {name} ({reason}): {answer.text}", file=sys.stderr)
    return 1


def _reason_name(code: int) -> str:
    from engine.messages import Reason
    from gateway.protocol import GatewayReason

    for enum in (RegistryReason, GatewayReason, Reason):
        try:
            return enum(code).name
        except ValueError:
            continue
    return "REJECTED"


async def _online(cfg: Config, creds: Credentials, cmd: Any, listen: str) -> Any:
    """Send the command through the running exchange's gateway as the staff user."""
    from gateway.client import CannotLogOn, connect_staff
    from gateway.protocol import Report

    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    try:
        # Beside the exchange the tool trusts its own certificate, at whatever name.
        client = await connect_staff(host.strip("[]"), int(port), creds.member, creds.user, creds.secret,
                                     cfg.exchange.tls_cert)
    except CannotLogOn as e:
        raise ToolError(str(e)) from None
    try:
        # The command's ref names it in its answer (RegistryDone or RegistryRejected, or
        # the gateway's refusal, outside the sequence): other sessions of the same user
        # may send commands meanwhile, and their answers travel in the same stream.
        cmd.ref = secrets.token_hex(8)
        client.send(cmd)
        rep = await client.wait_for(
            lambda m: type(m) is Report and (
                type(m.body) in (RegistryDone, RegistryRejected) and getattr(m.body, "ref", None) == cmd.ref
                or m.seq_out == 0 and getattr(m.body, "coid", None) == cmd.ref),
            ANSWER_TIMEOUT_S)
        return rep.body
    except TimeoutError:
        raise ToolError(f"no answer from the exchange at {listen} within {ANSWER_TIMEOUT_S:g} s") from None
    finally:
        await client.close()


async def _offline(args: argparse.Namespace, cfg: Config, creds: Credentials, cmd: Any) -> Any:
    """Run the command through the stopped exchange's core (see the module docstring)."""
    if cfg.replication.enabled:
        # The stream is the history: a command journaled here alone would be one the
        # stream and the standby never had (docs/operations.md).
        raise ToolError("replication is enabled and no exchange runs on this data folder: start the primary and "
                        "run the operation through it")
    from gateway.auth import verify_secret
    from gateway.protocol import Role
    from gateway.serve import ServeError, Service
    from gateway.session import K_STAFF, PERMISSIONS

    user = next((u for u in cfg.users() if (u.member, u.user) == (creds.member, creds.user)), None)
    if user is None or not verify_secret(creds.secret, user.secret_hash):
        raise ToolError("unknown member or user, or wrong secret")
    if PERMISSIONS[user.role].get(type(cmd)) != K_STAFF:
        return RegistryRejected(0, 0, creds.name, args.action, int(RegistryReason.NOT_PERMITTED),
                                f"role {Role(user.role).name.lower()} may not send {type(cmd).__name__}")
    # Named with --config, the configuration becomes the folder's copy, as etx serve's does.
    text = Path(args.config).read_text() if args.config else None
    try:
        service = Service(cfg, args.data, market_data=False, snapshots=False, config_text=text,
                          what=f"etx registry {args.action}")
    except ServeError as e:
        raise ToolError(str(e)) from None
    try:
        cmd.actor = creds.name
        events = await service.server.execute([cmd], service.server.origin_of(cmd))
    finally:
        await service.stop()
    return next(ev for ev in events if type(ev) in (RegistryDone, RegistryRejected))
