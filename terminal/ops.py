"""``etx ops``: the market operator's commands in the terminal, against a running exchange.

Every action of the console is here, and the same views as lists: sessions, alerts,
health, open orders. Each runs as the operator's own gateway session (credentials from
a file only its owner can read, ``--credentials``, or a prompt; never the command line),
so the gateway checks the role and the journal records the operator's name and the
reason (``--reason``, required for every action). The exchange is found through its
data folder (``--data``: the lock of the running ``etx serve`` names its address) or
named (``--exchange HOST:PORT``).

Answers: one line, the exchange's (``done``, or the refusal with its reason); exit 0
done, 1 refused, 2 bad input or no exchange.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from typing import Any

from engine.messages import (
    Cancel,
    CancelReason,
    EndOfDay,
    Halt,
    MassCancel,
    ReinstateMember,
    Resume,
    Side,
    SuspendMember,
)
from gateway.client import CannotLogOn, Client, QueryError, connect_staff
from gateway.credentials import CredentialsError, obtain
from gateway.datadir import exchange_address
from gateway.protocol import AlertView, HealthView, Role

ACTIONS = ("halt", "resume", "end-of-day", "cancel", "cancel-all", "suspend", "reinstate", "unlock", "disconnect")
VIEWS = ("sessions", "alerts", "health", "orders")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    for p in (parser, common):
        suppress = p is common
        p.add_argument("--data", default=argparse.SUPPRESS if suppress else "etx-data",
                       help="the exchange's data folder: finds the running exchange (default etx-data)")
        p.add_argument("--exchange", default=argparse.SUPPRESS if suppress else "",
                       help="HOST:PORT of the gateway (instead of --data)")
        p.add_argument("--credentials", default=argparse.SUPPRESS if suppress else "",
                       help="a file (chmod 600) with member, user and secret; without it the secret is asked")
        p.add_argument("--as", dest="user", default=argparse.SUPPRESS if suppress else "",
                       help="the operator: USER or MEMBER/USER (with a prompt for the secret)")
        p.add_argument("--cafile", default=argparse.SUPPRESS if suppress else "",
                       help="the CA (or the exchange's own certificate) of a TLS gateway")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def add(name: str, help_: str, reason: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, parents=[common])
        if reason:
            p.add_argument("--reason", required=True, help="why (journaled with the action)")
        return p

    add("sessions", "the sessions logged on", reason=False)
    p = add("alerts", "the recent alerts (--follow: and those to come)", reason=False)
    p.add_argument("--follow", action="store_true")
    add("health", "the exchange's health figures", reason=False)
    p = add("orders", "open orders: a member's, or those at an instrument's best levels", reason=False)
    p.add_argument("--member", default="")
    p.add_argument("--instrument", default="")
    p.add_argument("--levels", type=int, default=10, help="with --instrument: how many best levels of each side")
    p = add("halt", "halt an instrument (or all: \"\")")
    p.add_argument("instrument")
    p.add_argument("--cancel-orders", action="store_true", help="and cancel its resting orders")
    add("resume", "resume a halted instrument").add_argument("instrument")
    add("end-of-day", "end the trading day: resting orders expire, closing prices are fixed")
    p = add("cancel", "cancel one order")
    p.add_argument("order_id", type=int)
    p.add_argument("--member", required=True, help="the order's member")
    p = add("cancel-all", "cancel all of a member's orders (in one instrument, or all)")
    p.add_argument("member")
    p.add_argument("--instrument", default="")
    p = add("suspend", "suspend a member's trading")
    p.add_argument("member")
    p.add_argument("--cancel-orders", action="store_true", help="and cancel its resting orders")
    add("reinstate", "reinstate a member's trading").add_argument("member")
    add("unlock", "lift a user's logon lockouts").add_argument("who", metavar="MEMBER/USER")
    add("disconnect", "end a session").add_argument("session_id", type=int)
    p = add("cluster", "the replicated journal: primary, standbys and their lag, the lease, the JetStream stream",
            reason=False)
    p.add_argument("--config", default="", help="the exchange's configuration (default: the copy in --data)")


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (ValueError, CredentialsError) as e:
        print(f"etx ops: {e}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace) -> int:
    if args.action == "cluster":
        return await _cluster(args)
    host, port = exchange_address(args.data, args.exchange)
    creds = obtain(args.credentials, args.user, "EXCH")
    try:
        client = await connect_staff(host, port, creds.member, creds.user, creds.secret, args.cafile)
    except CannotLogOn as e:
        print(f"etx ops: {e}", file=sys.stderr)
        return 2
    try:
        if args.action in VIEWS:
            return await _view(client, args)
        return await _act(client, args)
    except QueryError as e:
        print(f"refused: {e.text}", file=sys.stderr)
        return 1
    except (TimeoutError, ConnectionError) as e:
        print(f"etx ops: no answer from the exchange: {e!r}", file=sys.stderr)
        return 2
    finally:
        await client.close()


async def _cluster(args: argparse.Namespace) -> int:
    """Read from JetStream itself: it answers while a primary is down, when the operator
    needs it most."""
    from gateway.config import ConfigError, load
    from gateway.datadir import config_copy
    from gateway.replication import Link

    path = args.config or str(config_copy(args.data))
    try:
        cfg = load(path)
    except (OSError, ConfigError) as e:
        print(f"etx ops: {path}: {e}", file=sys.stderr)
        return 2
    r = cfg.replication
    if not r.enabled:
        print("etx ops: replication is not enabled in the configuration ([replication] enabled = true)",
              file=sys.stderr)
        return 2
    try:
        link = await asyncio.to_thread(Link, r.servers, cfg.stream_name(), r.replicas)
    except Exception as e:
        print(f"etx ops: no JetStream at {', '.join(r.servers)}: {e!r}", file=sys.stderr)
        return 2
    try:
        c = await link.run(link.cluster())
    finally:
        await asyncio.to_thread(link.close)
    print(f"stream {c['stream']}: {c['replicas']} replicas, {c['messages']} messages, leader {c['leader']}")
    for name, current, active, lag in c["peers"]:
        print(f"  replica {name}: {'current' if current else 'catching up'}, seen {active:.2f} s ago, lag {lag}")
    print(f"last batch: stream seq {c['last_batch']}, command seq {c['last_seq']}")
    lease = c["lease"]
    if lease is None:
        print("primary: none (no lease taken)")
    else:
        left = (lease.until_ns - time.time_ns()) / 1e9
        state = f"renewed, {left:.1f} s left" if left > 0 else f"EXPIRED {-left:.1f} s ago"
        print(f"primary: {lease.node} (lease revision {c['revision']}, {state})")
    for node, pos in sorted(c["standbys"].items()):
        behind = max(0, c["last_seq"] - pos.seq)
        lag_ms = max(0.0, (c["last_ts"] - pos.ts_ns) / 1e6) if behind else 0.0
        print(f"standby {node}: at seq {pos.seq}, {behind} commands and {lag_ms:.0f} ms behind "
              f"(reported {(time.time_ns() - pos.at_ns) / 1e9:.1f} s ago)")
    return 0


async def _act(client: Client, args: argparse.Namespace) -> int:
    reason = args.reason.strip()[:256]
    if not reason:
        raise ValueError("--reason must say why: it is journaled with the action")
    action = args.action
    if action == "unlock":
        member, _, user = args.who.rpartition("/")
        if not member or not user:
            raise ValueError(f"expected MEMBER/USER, got {args.who!r}")
        got = await client.unlock(member, user, reason)
        print(f"done: {got.member}/{got.user}: {got.locks} lockouts lifted")
        return 0
    if action == "disconnect":
        done = await client.disconnect(args.session_id, reason)
        if not done.found:
            print(f"refused: session {done.session_id} is not connected", file=sys.stderr)
            return 1
        print(f"done: session {done.session_id} disconnected")
        return 0
    cmd: Any
    if action == "halt":
        cmd = Halt(args.instrument, args.cancel_orders, "", reason)
    elif action == "resume":
        cmd = Resume(args.instrument, "", reason)
    elif action == "end-of-day":
        cmd = EndOfDay("", reason)
    elif action == "cancel":
        cmd = Cancel(args.member, args.order_id, "", reason)
    elif action == "cancel-all":
        cmd = MassCancel(args.member, args.instrument, int(CancelReason.MASS_CANCEL), "", reason)
    elif action == "suspend":
        cmd = SuspendMember(args.member, args.cancel_orders, "", reason)
    else:
        cmd = ReinstateMember(args.member, "", reason)
    rejected = await client.command(cmd)
    if rejected is not None:
        print(f"refused: {_reason(rejected.reason)} ({rejected.reason}): {rejected.text}", file=sys.stderr)
        return 1
    print(f"done: {action}")
    return 0


async def _view(client: Client, args: argparse.Namespace) -> int:
    action = args.action
    if action == "orders":
        if args.instrument and not args.member:
            # The best levels, not the whole book: the cost is that of what is shown.
            top = await client.query_top_orders(args.instrument, args.levels)
            orders, more = top.orders, top.more
        elif args.member:
            orders, more = await client.query_orders(args.instrument, args.member), False
        else:
            raise ValueError("orders: name a member (--member) or an instrument (--instrument)")
        print(f"{'ORDER':>8} {'MEMBER':<10} {'INSTRUMENT':<10} {'SIDE':<4} {'PRICE':>10} {'QTY':>8} {'FILLED':>8}  COID")
        for o in orders:
            side = "buy" if o.side == Side.BUY else "sell"
            print(f"{o.order_id:>8} {o.member:<10} {o.instrument:<10} {side:<4} {_yuan(o.price):>10} {o.qty:>8} "
                  f"{o.filled:>8}  {o.coid}")
        if more:
            print("(more at these levels than one reply holds)")
        return 0
    if action == "sessions":
        reply = await client.query_sessions()
        print(f"{'ID':>5} {'MEMBER':<10} {'USER':<12} {'ROLE':<10} {'ADDRESS':<22} {'SINCE':<8} {'CMDS':>8} "
              f"{'REFUSED':>8} {'COD':<3}")
        for s in reply.sessions:
            print(f"{s.session_id:>5} {s.member:<10} {s.user:<12} {Role(s.role).name.lower():<10} {s.peer:<22} "
                  f"{_clock(s.since):<8} {s.commands:>8} {s.refused:>8} {'on' if s.cod else 'off':<3}")
        return 0
    # alerts and health come with the operator feed.
    client.watch(depth=1, interval_ms=10_000)
    while True:
        msg = await client.next(timeout=None if action == "alerts" and args.follow else 5.0)
        if msg is None:
            return 0
        if isinstance(msg, AlertView):
            where = " ".join(x for x in (msg.instrument, msg.member) if x)
            print(f"{_clock(msg.ts)} {msg.kind:<16} {where + ': ' if where else ''}{msg.text}", flush=True)
        elif isinstance(msg, HealthView):
            if action == "health":
                print(_health(msg))
                return 0
            if not args.follow:
                return 0  # the first push carries the kept alerts before the health view


def _health(h: HealthView) -> str:
    return (f"seq {h.last_seq}; {h.commands_per_s} commands/s in {h.batches_per_s} batches/s; batch p50 "
            f"{h.batch_p50_us} us p99 {h.batch_p99_us} us; journal commit p50 {h.fsync_p50_us} us p99 "
            f"{h.fsync_p99_us} us; settlement lag {h.settlement_lag}; snapshot age {h.snapshot_age_s} s; "
            f"market data lag {h.md_lag_ms} ms; {h.sessions} sessions, {h.connecting} connecting")


def _clock(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%H:%M:%S")


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _reason(code: int) -> str:
    from engine.messages import Reason
    from gateway.protocol import GatewayReason

    for enum in (Reason, GatewayReason):
        try:
            return enum(code).name
        except ValueError:
            continue
    return "REJECTED"
