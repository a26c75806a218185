"""``etx demo``: a short exchange day with simulated members, shown to a new user.

On embedded defaults (a fresh folder with a SQLite registry and a journal; no other
service needed) it starts the exchange, has the registry clerk open member accounts
and deposit cash and the authority allocate allowances (all through the real TCP
gateway), runs simulated trading members against the gateway for a few seconds with a
progress line, then prints the books, the last trades, the day's statistics, the
members' balances and the registry audit, and says what to run next.

``run_demo(...)`` returns a ``DemoResult`` for tests; ``run(args)`` is the command.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import msgspec

from engine import Accepted, Cancelled, Expired, Side
from engine.messages import AuctionAnnounce, AuctionAnnounced, AuctionResult, BlockOffered, BlockTraded, Rejected
from gateway.auth import hash_secret
from gateway.client import Client
from gateway.config import Config, from_dict
from gateway.protocol import CodMode, Fill, Liquidity, Report
from gateway.serve import Service
from settlement import Allocate, Deposit, HolderType, OpenAccount, RegistryDone, RegistryRejected
from settlement.units import format_yuan


def money(fen: int) -> str:
    """Yuan with thousands separators: 503614150 -> '5,036,141.50'."""
    whole, _, part = format_yuan(fen).partition(".")
    return f"{int(whole):,}.{part}"

INSTRUMENTS = (("CEA24", "100.00"), ("CEA23", "98.50"))
MEMBER_NAMES = ("Huaneng Demo Power", "Datang Demo Power", "Guodian Demo Power", "Huadian Demo Power",
                "SPIC Demo Power", "Anshan Demo Steel", "Conch Demo Cement", "Chalco Demo Aluminium")
CASH_FEN = 500_000_000  # CNY 5,000,000 per member
ALLOWANCES_T = 20_000  # per member and vintage
STAFF = "EXCH"


class DemoResult(msgspec.Struct):
    folder: str
    orders: int
    trades: int
    volume: int
    audit: list[str]
    port: int


def demo_config(members: int, secrets_by_user: dict[tuple[str, str], str], scrypt_n: int) -> Config:
    users = []
    for (member, user), secret in secrets_by_user.items():
        role = "trader" if member != STAFF else {"op": "operator", "clerk": "clerk", "authority": "authority"}[user]
        users.append({"member": member, "user": user, "role": role, "secret_hash": hash_secret(secret, n=scrypt_n)})
    raw = {
        "exchange": {"listen": "127.0.0.1:0", "schedule": "always", "operator_member": STAFF},
        "fees": {"trading_rate": "0.0003", "registry_rate": "0.00005"},
        "instrument": [{"symbol": s, "ref_price": p} for s, p in INSTRUMENTS],
        "member": [{"id": f"M{i + 1:02d}", "name": MEMBER_NAMES[i % len(MEMBER_NAMES)]} for i in range(members)],
        "user": users,
    }
    return from_dict(raw)


class Tape:
    """What the simulated members saw: orders sent, trades (each once, from the taker's
    fill), and the open orders of each member."""

    def __init__(self) -> None:
        self.orders = 0
        self.trades: list[Fill] = []
        self.volume = 0
        self.last: dict[str, int] = {}


async def _registry_setup(port: int, staff: dict[str, str], members: list[tuple[str, str]], out: TextIO) -> None:
    clerk = Client("127.0.0.1", port, STAFF, "clerk", staff["clerk"])
    authority = Client("127.0.0.1", port, STAFF, "authority", staff["authority"])
    await clerk.connect()
    await authority.connect()
    for member, name in members:
        clerk.send(OpenAccount("", member, int(HolderType.COMPLIANCE), name))
        clerk.send(Deposit("", member, CASH_FEN))
        for symbol, _ in INSTRUMENTS:
            authority.send(Allocate("", "AUTHORITY", member, symbol, ALLOWANCES_T))
    # Each staff user has a stream of its own: each reads the answers to its commands.
    for client, want in ((clerk, 2 * len(members)), (authority, len(INSTRUMENTS) * len(members))):
        done = 0
        while done < want:
            msg = await client.wait_for(lambda m: isinstance(m, Report), 10)
            if isinstance(msg.body, RegistryRejected) or not msg.seq_out:
                raise RuntimeError(f"registry set-up refused: {msg.body.text}")
            if isinstance(msg.body, RegistryDone):
                done += 1
    await clerk.close()
    await authority.close()
    print(f"  registry: {len(members)} accounts opened, CNY {money(CASH_FEN)} deposited and "
          f"{ALLOWANCES_T:,} t of each vintage allocated to each", file=out)


async def _member(client: Client, rng: random.Random, fair: dict[str, float], tape: Tape, until: float) -> None:
    """A simple market participant: limit orders around the fair value (some crossing
    it), cancels of its oldest order now and then."""
    await client.connect()
    loop = asyncio.get_running_loop()
    live: dict[int, str] = {}
    symbols = [s for s, _ in INSTRUMENTS]

    def absorb(msg: Any) -> None:
        if not isinstance(msg, Report):
            return
        b = msg.body
        if isinstance(b, Accepted):
            live[b.order_id] = b.instrument
        elif isinstance(b, Fill):
            if b.leaves == 0:
                live.pop(b.order_id, None)
            if b.liquidity == Liquidity.TAKER:
                tape.trades.append(b)
                tape.volume += b.qty
                tape.last[b.instrument] = b.price
        elif isinstance(b, Cancelled | Expired):
            live.pop(b.order_id, None)

    while loop.time() < until:
        symbol = rng.choice(symbols)
        mid = fair[symbol]
        side = rng.choice((Side.BUY, Side.SELL))
        edge = rng.choice((-3, -2, -1, 0, 1, 2, 4, 6, 9, 12, 20))  # ticks away from the fair value, inwards if < 0
        price = round(mid - edge) if side == Side.BUY else round(mid + edge)
        client.new_order(symbol, side, rng.choice((10, 20, 50, 100, 200, 500)), price)
        tape.orders += 1
        if live and rng.random() < 0.15:
            client.cancel(next(iter(live)))
        await asyncio.sleep(rng.uniform(0.002, 0.01))
        while client.pending():
            absorb(await client.next(1))
    await asyncio.sleep(0.2)
    while client.pending():
        absorb(await client.next(1))
    await client.close()


async def _progress(tape: Tape, started: float, until: float, out: TextIO, tty: bool) -> None:
    loop = asyncio.get_running_loop()
    last_line = ""
    while True:
        now = loop.time()
        prices = "  ".join(f"{s} {format_yuan(p)}" for s, p in sorted(tape.last.items()))
        last_line = (f"  trading {min(now, until) - started:4.1f}s: {tape.orders:6,} orders, {len(tape.trades):5,} trades, "
                     f"{tape.volume:8,} t   {prices}")
        if tty:
            print("\r" + last_line, end="", file=out, flush=True)
        if now >= until:
            break
        await asyncio.sleep(0.25 if tty else 1.0)
    print(("" if tty else last_line), file=out, flush=True)


async def run_demo(seconds: float = 6.0, members: int = 6, folder: str | None = None, *, market_data: bool = True,
                   out: TextIO = sys.stdout, scrypt_n: int = 1 << 14, seed: int | None = None) -> DemoResult:
    folder = folder or tempfile.mkdtemp(prefix="etx-demo-")
    seed = seed if seed is not None else secrets.randbelow(1 << 30)
    rng = random.Random(seed)
    member_ids = [(f"M{i + 1:02d}", MEMBER_NAMES[i % len(MEMBER_NAMES)]) for i in range(members)]
    creds = {(m, "trader"): secrets.token_urlsafe(12) for m, _ in member_ids}
    staff = {u: secrets.token_urlsafe(12) for u in ("op", "clerk", "authority")}
    creds.update({(STAFF, u): s for u, s in staff.items()})
    print(f"etx demo: an exchange day in {folder} (seed {seed})", file=out)
    cfg = demo_config(members, creds, scrypt_n)
    service = Service(cfg, folder, market_data=market_data)
    _, port = await service.start(port=0)
    print(f"  exchange: listening on 127.0.0.1:{port}; registry {service.registry_url}", file=out)
    try:
        await _registry_setup(port, staff, member_ids, out)
        loop = asyncio.get_running_loop()
        started = loop.time()
        until = started + seconds
        tape = Tape()
        fair = {s: float(p.replace(".", "")) for s, p in INSTRUMENTS}

        async def drift() -> None:  # the fair value wanders, so prices move during the day
            while loop.time() < until:
                for s in fair:
                    fair[s] += rng.gauss(0, 3)
                await asyncio.sleep(0.1)

        clients = [Client("127.0.0.1", port, m, "trader", creds[(m, "trader")], cod=CodMode.OFF) for m, _ in member_ids]
        tasks = [asyncio.create_task(_member(c, random.Random(rng.random()), fair, tape, until)) for c in clients]
        tasks.append(asyncio.create_task(drift()))
        await asyncio.gather(_progress(tape, started, until, out, out.isatty()), *tasks)
        if len(member_ids) >= 2:
            await _block_trade(port, staff, creds, member_ids[0][0], member_ids[1][0], out)
        if len(member_ids) >= 3:
            await _auction(port, staff, creds, [m for m, _ in member_ids], out)
        op = Client("127.0.0.1", port, STAFF, "op", staff["op"])
        await op.connect()
        await _show(op, service, tape, out)
        await op.close()
    finally:
        await service.stop()
    problems = service.audit()
    if problems:
        print(f"\nRegistry audit: {len(problems)} difference(s):", file=out)
        for p in problems[:20]:
            print(f"  {p}", file=out)
    else:
        print("\nRegistry audit: OK — the registry store's postings, balances and totals agree with each other "
              "and with the exchange's ledger; every trade moved its cash and allowances once.", file=out)
    print(_next_steps(folder, service.registry_url), file=out)
    return DemoResult(folder, tape.orders, len(tape.trades), tape.volume, problems, port)


BLOCK_T = 100_000  # the smallest block agreement trade


async def _block_trade(port: int, staff: dict[str, str], creds: dict[tuple[str, str], str], seller: str, buyer: str,
                       out: TextIO) -> None:
    """A block agreement trade in the afternoon: the registry tops up the two members
    (a block is at least 100,000 t), the seller offers to the buyer by name, the buyer
    accepts; settled like any trade, outside the listing book and its statistics."""
    symbol, ref = INSTRUMENTS[0]
    price = int(ref.replace(".", ""))
    clerk = Client("127.0.0.1", port, STAFF, "clerk", staff["clerk"])
    authority = Client("127.0.0.1", port, STAFF, "authority", staff["authority"])
    sell = Client("127.0.0.1", port, seller, "trader", creds[(seller, "trader")], cod=CodMode.OFF)
    buy = Client("127.0.0.1", port, buyer, "trader", creds[(buyer, "trader")], cod=CodMode.OFF)
    for c in (clerk, authority, sell, buy):
        await c.connect()
    try:
        for client, cmd in ((authority, Allocate("", "AUTHORITY", seller, symbol, BLOCK_T)),
                            (clerk, Deposit("", buyer, BLOCK_T * price * 11 // 10))):
            if await client.command(cmd) is not None:
                raise RuntimeError(f"the block trade's funding was refused: {cmd}")
        # The members' sessions replay their day first: the answers are found by client order id.
        coid = sell.block_offer(symbol, Side.SELL, BLOCK_T, price, counterparty=buyer)
        offered = await sell.wait_for(lambda m: isinstance(m, Report) and isinstance(m.body, (BlockOffered, Rejected))
                                      and m.body.coid == coid)
        if not isinstance(offered.body, BlockOffered):
            raise RuntimeError(f"the block offer was rejected: {offered.body.text}")
        coid = buy.block_accept(offered.body.offer_id, BLOCK_T)
        done = await buy.wait_for(lambda m: isinstance(m, Report) and isinstance(m.body, (BlockTraded, Rejected))
                                  and m.body.coid == coid)
        if not isinstance(done.body, BlockTraded):
            raise RuntimeError(f"the block acceptance was rejected: {done.body.text}")
        t = done.body
        print(f"\nBlock trade #{t.trade_id}: {t.seller} sold {t.qty:,} t of {t.instrument} to {t.buyer} at "
              f"{format_yuan(t.price)} by agreement (offer {t.offer_id}, named to {buyer}); settled like any trade, "
              f"outside the listing book and its statistics", file=out)
    finally:
        for c in (clerk, authority, sell, buy):
            await c.close()


async def _auction(port: int, staff: dict[str, str], creds: dict[tuple[str, str], str], members: list[str],
                   out: TextIO) -> None:
    """A one-way auction: the operator announces one for the last member, selling 100,000
    t of the first vintage for two seconds; the others bid, sealed; the exchange's clock
    closes it and everyone learns the result, which names no bidder."""
    symbol, ref = INSTRUMENTS[0]
    price = int(ref.replace(".", ""))
    seller, bidders = members[-1], members[:-1]
    authority = Client("127.0.0.1", port, STAFF, "authority", staff["authority"])
    clerk = Client("127.0.0.1", port, STAFF, "clerk", staff["clerk"])
    op = Client("127.0.0.1", port, STAFF, "op", staff["op"])
    clients = [Client("127.0.0.1", port, m, "trader", creds[(m, "trader")], cod=CodMode.OFF) for m in bidders]
    for c in (authority, clerk, op, *clients):
        await c.connect()
    try:
        if await authority.command(Allocate("", "AUTHORITY", seller, symbol, BLOCK_T)) is not None:
            raise RuntimeError("the auction's allowances were refused")
        for m in bidders:
            if await clerk.command(Deposit("", m, BLOCK_T * price * 13 // 10)) is not None:
                raise RuntimeError("the bidders' cash was refused")
        now = time.time_ns()
        floor = price - price // 20  # 5 % under the previous close
        if await op.command(AuctionAnnounce(seller, symbol, BLOCK_T, floor, now, now + 2_000_000_000)) is not None:
            raise RuntimeError("the auction's announcement was refused")
        announced = await clients[0].wait_for(lambda m: isinstance(m, Report) and isinstance(m.body, AuctionAnnounced)
                                              and m.body.seller == seller)
        auction = announced.body.auction_id
        for i, c in enumerate(clients):
            c.bid(auction, 60_000 + 10_000 * i, price + 10 * (len(clients) - i))
        result = await clients[0].wait_for(lambda m: isinstance(m, Report) and isinstance(m.body, AuctionResult)
                                           and m.body.auction_id == auction, 15)
        r = result.body
        print(f"\nAuction {r.auction_id}: {r.seller} sold {r.qty_sold:,} of {r.qty:,} t of {r.instrument} to "
              f"{r.winners} of {r.bids} sealed bids at a uniform {format_yuan(r.clearing_price)} "
              f"(bids for {r.bid_qty:,} t); settled like any trade, the bidders unnamed in the result", file=out)
    finally:
        for c in (authority, clerk, op, *clients):
            await c.close()


async def _show(op: Client, service: Service, tape: Tape, out: TextIO) -> None:
    engine = service.exchange.engine
    for symbol, _ in INSTRUMENTS:
        book = await op.query_book(symbol)
        print(f"\nBook {symbol} (best 5 levels)", file=out)
        print(f"  {'bid qty':>9} {'bid':>9} | {'ask':<9} {'ask qty':<9}", file=out)
        for i in range(max(len(book.bids), len(book.asks), 1)):
            b = book.bids[i] if i < len(book.bids) else None
            a = book.asks[i] if i < len(book.asks) else None
            bq, bp = (f"{b.qty:,}", format_yuan(b.price)) if b else ("", "")
            ap, aq = (format_yuan(a.price), f"{a.qty:,}") if a else ("", "")
            print(f"  {bq:>9} {bp:>9} | {ap:<9} {aq:<9}", file=out)
    print(f"\nLast trades (of {len(tape.trades):,})", file=out)
    for f in sorted(tape.trades, key=lambda f: f.trade_id)[-8:]:
        t = time.strftime("%H:%M:%S", time.localtime(f.ts / 1e9))
        print(f"  #{f.trade_id:<6} {t} {f.instrument}  {f.qty:>5,} t at {format_yuan(f.price)}", file=out)
    print("\nThe day so far", file=out)
    print(f"  {'':6} {'open':>8} {'high':>8} {'low':>8} {'last':>8} {'volume t':>10} {'value CNY':>15} {'trades':>7}",
          file=out)
    for symbol, _ in INSTRUMENTS:
        st = engine.markets[symbol].stats()
        print(f"  {symbol:6} {format_yuan(st['open']):>8} {format_yuan(st['high']):>8} {format_yuan(st['low']):>8} "
              f"{format_yuan(st['last']):>8} {st['volume']:>10,} {money(st['value']):>15} {st['trades']:>7,}",
              file=out)
    balances = (await op.query_balances()).balances
    by_member: dict[str, dict[str, Any]] = {}
    for bal in balances:
        if bal.account.startswith("M"):
            by_member.setdefault(bal.account, {})[bal.asset] = bal
    print("\nMembers' balances (held: what open orders hold)", file=out)
    symbols = [s for s, _ in INSTRUMENTS]
    print(f"  {'member':6} {'cash CNY':>15} {'held CNY':>13} " + " ".join(f"{s + ' t':>9} {'held':>6}" for s in symbols),
          file=out)
    for member in sorted(by_member):
        row = by_member[member]
        cash = row.get("CNY")
        line = f"  {member:6} {money(cash.balance if cash else 0):>15} {money(cash.held if cash else 0):>13} "
        line += " ".join(f"{(row[s].balance if s in row else 0):>9,} {(row[s].held if s in row else 0):>6,}" for s in symbols)
        print(line, file=out)
    fees = {b.account: b.balance for b in balances if b.asset == "CNY" and not b.account.startswith("M")}
    if fees:
        print("  fees: " + ", ".join(f"{a} CNY {money(v)}" for a, v in sorted(fees.items())), file=out)


def _next_steps(folder: str, registry: str) -> str:
    return f"""
What next
  ./dev init                                     an exchange of your own: its configuration with fresh secrets,
                                                 credentials files, and the commands that start and fund it
  ./dev load --spawn --seconds 10                load-test an exchange over TCP and report latency
  ./dev registry --help                          registry accounts, balances, history and audit
                                                 (this demo's registry: {registry})
  mosquitto_sub -t 'etx/v1/#' -v                 watch market data while an exchange runs
  docs/protocol.md                               write a member client in any language
  (this demo's journal and registry stay in {folder})"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=6.0, help="how long the members trade (default 6)")
    parser.add_argument("--members", type=int, default=6, help="simulated trading members (1-8, default 6)")
    parser.add_argument("--dir", default=None, help="folder for the journal and registry (default: a new temporary one)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the simulated members")
    parser.add_argument("--no-market-data", action="store_true", help="do not publish to an MQTT broker")


def run(args: argparse.Namespace, runner: Callable[..., Any] = asyncio.run) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not 1 <= args.members <= len(MEMBER_NAMES):
        print(f"etx demo: --members must be in 1-{len(MEMBER_NAMES)}")
        return 2
    if args.dir and Path(args.dir).exists() and any(Path(args.dir).iterdir()):
        print(f"etx demo: {args.dir} is not empty; the demo starts a fresh exchange")
        return 2
    result = runner(run_demo(args.seconds, args.members, args.dir, market_data=not args.no_market_data, seed=args.seed))
    return 1 if result.audit else 0
