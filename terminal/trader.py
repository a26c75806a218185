"""``etx trader``: a dealer's terminal for one trading member's user (Textual).

What a dealer sees: per instrument the best five levels and the orders resting there
(those it may hit: other members' anonymous), the instrument's last trades (anyone's,
without members), its member's open orders, the day's fills with their fees, the balances (cash, held, unsellable
until the next trading day, available), and a status line (phase, connection, last
seq_out, heartbeat). What it does, keyboard first, on the command line at the bottom:

    buy 100 100.25 [day|ioc|fok]     a limit order (price in yuan)
    sell 50 mkt [ioc|fok]            a market order
    hit 17 40                        take 40 t of resting order 17 (among the best five)
    amend 17 100.10 30               new limit and open quantity
    cancel 17                        cancel one order;  cancel all: every open order
    show CEA23                       switch instrument
    offer sell 100000 102.00 [to M002] [partial]   a block agreement offer (100,000 t or more)
    accept 3 100000                  take block offer 3 (all of it, or a part if it allows)
    withdraw 3                       withdraw one's block offer 3
    bid 1 20000 101.50               a sealed bid in auction 1;  unbid 1 7: withdraw bid 7

Keys: ``b``/``s`` start a buy/sell, ``h`` hits the order selected in the book's orders,
``a`` amends and ``x`` cancels the open order selected (each fills the command line:
Enter sends it, Escape clears it), ``r`` refreshes, ``q`` quits.

Nothing is assumed: an order appears among the open orders, a cancel removes it and a
balance changes only when the exchange says so (a report, then a query of the new
state). A dropped connection is retried with growing waits; the logon replays what the
member missed, and those reports are shown as "while away".
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Header, Input, RichLog, Static

from engine.messages import (
    Accepted,
    Amended,
    AuctionAnnounced,
    AuctionFill,
    AuctionResult,
    BidPlaced,
    BlockOffered,
    BlockTraded,
    BlockWithdrawn,
    Cancelled,
    CancelReason,
    DayClosed,
    Decremented,
    Expired,
    MemberStatus,
    OrdType,
    Phase,
    Rejected,
    Side,
    StatusChanged,
    TimeInForce,
)
from gateway.client import CannotLogOn, Client, LogonError, QueryError, log_on, tls_context
from gateway.credentials import CredentialsError, obtain
from gateway.datadir import exchange_address
from gateway.protocol import CodMode, Fill, Notice, Report, Resent, SessionClosed

LEVELS = 5
MARKET_TRADES = 20  # the instrument's last trades shown
FILLS_SHOWN = 200
REFRESH_S = 1.0
RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # waits between reconnection attempts, the last one repeated
TIFS = {"day": TimeInForce.DAY, "ioc": TimeInForce.IOC, "fok": TimeInForce.FOK}
CANCEL_WORDS = {int(r): r.name.lower().replace("_", " ") for r in CancelReason}


def yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100:,}.{fen % 100:02d}"


def parse_price(text: str) -> int:
    """Yuan with at most two decimals, to fen; ValueError saying what is wrong."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a price: {text!r} (yuan, e.g. 100.25)") from None
    fen = value * 100
    if not value.is_finite() or fen != fen.to_integral_value() or value <= 0:
        raise ValueError(f"not a price: {text!r} (positive yuan with at most two decimals)")
    return int(fen)


def parse_qty(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"not a quantity: {text!r} (whole tonnes)")
    return int(text)


def parse_id(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"not an order id: {text!r}")
    return int(text)


class TraderApp(App[int]):
    """The screen; ``client`` is a logged-on member session (the caller connects it)."""

    TITLE = "etx trader"
    CSS = """
    #status { height: 1; padding: 0 1; }
    #left { width: 58; }
    #book { height: 13; }
    #top { height: 1fr; }
    #market { height: 1fr; }
    #deals { height: 8; }
    #orders { height: 1fr; }
    #fills { height: 1fr; }
    #balances { height: 6; }
    #log { height: 8; }
    #command { dock: bottom; }
    """
    BINDINGS = [
        Binding("b", "start('buy ')", "Buy"),
        Binding("s", "start('sell ')", "Sell"),
        Binding("h", "hit", "Hit selected"),
        Binding("a", "amend", "Amend selected"),
        Binding("x", "cancel", "Cancel selected"),
        Binding("r", "refresh", "Refresh"),
        Binding("escape", "clear", "Clear", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, client: Client, instrument: str, instruments: list[str]) -> None:
        super().__init__()
        self.client = client
        self.instrument = instrument
        self.instruments = instruments
        self.lines: list[str] = []  # what the log showed, plain (for tests and the record)
        self.pending: dict[str, str] = {}  # client order id -> what was sent, until the exchange answers
        self.open_orders: list[Any] = []
        self.top: list[Any] = []
        self.market: list[Any] = []
        self.offers: list[Any] = []
        self.auctions: list[Any] = []
        self.fills: list[Any] = []
        self.balances: list[Any] = []
        self.phase = "?"
        self.connection = "connected"
        self.away_until = -1  # reports up to this seq_out arrived in a replay after a reconnection
        self.quitting = False
        self._dirty = asyncio.Event()

    # --- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="status")
        with Horizontal():
            with Vertical(id="left"):
                yield DataTable(id="book", show_cursor=False)
                yield DataTable(id="top", cursor_type="row")
                yield DataTable(id="market", show_cursor=False)
                yield DataTable(id="deals", show_cursor=False)
            with Vertical():
                yield DataTable(id="orders", cursor_type="row")
                yield DataTable(id="fills", show_cursor=False)
                yield DataTable(id="balances", show_cursor=False)
        yield RichLog(id="log", markup=False, wrap=True)
        yield Input(placeholder="buy 100 100.25 | sell 50 mkt ioc | hit ID QTY | amend ID PRICE QTY | cancel ID|all",
                    id="command")
        yield Footer()

    def on_mount(self) -> None:
        c = self.client
        self.sub_title = f"{c.member}/{c.user} at {c.host}:{c.port}"
        self.query_one("#book", DataTable).add_columns("Orders", "Bid qty", "Price", "Ask qty", "Orders")
        self.query_one("#top", DataTable).add_columns("Order", "Side", "Price", "Qty", "Member")
        self.query_one("#market", DataTable).add_columns("Last trades", "Price", "Qty", "Aggressor")
        self.query_one("#deals", DataTable).add_columns("Block / auction", "Id", "Side", "Qty", "Price", "Terms")
        self.query_one("#orders", DataTable).add_columns("Order", "Coid", "Instr", "Side", "Price", "Open", "Filled")
        self.query_one("#fills", DataTable).add_columns("Time", "Instr", "Side", "Price", "Qty", "Liq", "Fee", "Order")
        self.query_one("#balances", DataTable).add_columns("Asset", "Balance", "Held", "Unsellable T+1", "Available")
        self.run_worker(self.follow(), group="follow")
        self.run_worker(self.refresher(), group="refresh")
        self.set_interval(0.5, self.render_status)
        self.query_one("#command", Input).focus()
        self._dirty.set()

    # --- the exchange's messages ----------------------------------------------------------

    async def follow(self) -> None:
        """Every report as it comes; a lost connection is logged on again (with replay)."""
        while True:
            async for msg in self.client.reports():
                self.handle(msg)
            if self.quitting:
                return
            closed = self.client.closed_by_server
            self.connection = "disconnected" + (f" ({closed.text})" if closed is not None else "")
            self.say(f"connection lost{': ' + closed.text if closed is not None else ''}; reconnecting")
            self.render_status()
            await self.reconnect()

    async def reconnect(self) -> None:
        attempt = 0
        before = self.client.last_seq
        while not self.quitting:
            try:
                ack = await self.client.reconnect()
            except (OSError, LogonError, TimeoutError) as e:
                wait = RETRY_S[min(attempt, len(RETRY_S) - 1)]
                attempt += 1
                self.connection = f"reconnecting (attempt {attempt}: {e})"
                self.render_status()
                await asyncio.sleep(wait)
                continue
            self.away_until = ack.next_seq
            missed = ack.next_seq - before
            self.connection = "connected"
            self.say(f"reconnected: {missed} report{'s' if missed != 1 else ''} while away" if missed
                     else "reconnected: nothing happened while away")
            self._dirty.set()
            return

    def handle(self, msg: Any) -> None:
        t = type(msg)
        if t is Report:
            away = " (while away)" if 0 < msg.seq_out <= self.away_until else ""
            self.report(msg.body, away, refused=msg.seq_out == 0)
        elif t is Resent:
            self.report(msg.body, " (sent before)", refused=False)
        elif t is Notice:
            self.say(f"notice {msg.code}: {msg.text}")
        elif t is SessionClosed:
            self.say(f"the exchange closed the session ({msg.reason}): {msg.text}")

    def report(self, body: Any, away: str, refused: bool) -> None:
        t = type(body)
        if t is Accepted:
            what = self.pending.pop(body.coid, "")
            self.say(f"accepted{away}: order {body.order_id} {what or self.describe(body)}")
        elif t is Rejected:
            what = self.pending.pop(body.coid, "") if body.coid else ""
            by = "refused by the gateway" if refused else "rejected"
            target = what or (f"order {body.order_id}" if body.order_id else body.coid or "command")
            self.say(f"{by}{away}: {target}: {body.text} ({body.reason})")
        elif t is Fill:
            side = "bought" if body.side == Side.BUY else "sold"
            self.say(f"fill{away}: {side} {body.qty:,} t {body.instrument} at {yuan(body.price)} "
                     f"(order {body.order_id}, {body.leaves:,} t open)")
        elif t is Cancelled:
            self.say(f"cancelled{away}: order {body.order_id}, {body.qty:,} t "
                     f"({CANCEL_WORDS.get(body.reason, str(body.reason))})")
        elif t is Amended:
            self.say(f"amended{away}: order {body.order_id} now {body.qty:,} t at {yuan(body.price)}"
                     f"{'' if body.priority_kept else ', time priority lost'}")
        elif t is Expired:
            self.say(f"expired{away}: order {body.order_id}, {body.qty:,} t")
        elif t is Decremented:
            self.say(f"decremented{away}: order {body.order_id} by {body.qty:,} t (self-trade prevention)")
        elif t is StatusChanged:
            self.say(f"{body.instrument}: {Phase(body.phase).name.lower()}{away}")
        elif t is DayClosed:
            self.say(f"{body.instrument}: day closed at {yuan(body.close_price)}{away}")
        elif t is MemberStatus:
            self.say(f"trading {'suspended' if body.suspended else 'reinstated'}{away}: {body.text}")
        elif t is BlockOffered:
            self.pending.pop(body.coid, None)
            side = "buy" if body.side == Side.BUY else "sell"
            self.say(f"block offer {body.offer_id} open{away}: {side} {body.qty:,} t {body.instrument} at "
                     f"{yuan(body.price)}" + (f" to {body.counterparty}" if body.counterparty else ""))
        elif t is BlockTraded:
            self.pending.pop(body.coid, None)
            mine = "bought" if body.buyer == self.client.member else "sold"
            other = body.seller if mine == "bought" else body.buyer
            self.say(f"block trade{away}: {mine} {body.qty:,} t {body.instrument} at {yuan(body.price)} with {other} "
                     f"(offer {body.offer_id}, {body.left:,} t left)")
        elif t is BlockWithdrawn:
            self.say(f"block offer {body.offer_id} {'withdrawn' if body.reason == 1 else 'expired'}{away}: "
                     f"{body.qty:,} t released")
        elif t is AuctionAnnounced:
            self.say(f"auction {body.auction_id} announced{away}: {body.seller} sells {body.qty:,} t {body.instrument}, "
                     f"bids {yuan(body.floor)}-{yuan(body.ceiling)}")
        elif t is BidPlaced:
            self.pending.pop(body.coid, None)
            what = "withdrawn" if not body.qty else ("amended" if body.amended else "placed")
            self.say(f"bid {body.bid_id} {what}{away} in auction {body.auction_id}: {body.qty:,} t at {yuan(body.price)}")
        elif t is AuctionFill:
            self.say(f"auction {body.auction_id} fill{away}: bought {body.qty:,} t {body.instrument} at "
                     f"{yuan(body.price)} (bid {body.bid_id})")
        elif t is AuctionResult:
            self.say(f"auction {body.auction_id} result{away}: {body.qty_sold:,} of {body.qty:,} t sold at "
                     f"{yuan(body.clearing_price)} to {body.winners} of {body.bids} bids"
                     + (" (cancelled: too little demand)" if body.cancelled else ""))
        self._dirty.set()

    def describe(self, acc: Accepted) -> str:
        side = "buy" if acc.side == Side.BUY else "sell"
        price = "mkt" if acc.ord_type == OrdType.MARKET else yuan(acc.price)
        return f"{side} {acc.qty:,} {acc.instrument} {price}"

    def say(self, line: str) -> None:
        when = datetime.now(UTC).strftime("%H:%M:%S")
        self.lines.append(line)
        self.query_one("#log", RichLog).write(f"{when} {line}")

    # --- the state, from queries ------------------------------------------------------------

    async def refresher(self) -> None:
        """The state shown, asked again after each change the exchange reported and at
        least every REFRESH_S (the book changes without reports to this member)."""
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), REFRESH_S)
            except TimeoutError:
                pass
            self._dirty.clear()
            if not self.client.connected:
                continue
            try:
                await self.refresh_state()
            except (QueryError, ConnectionError, TimeoutError) as e:
                self.connection = f"query failed: {e}"
            self.render_all()

    async def refresh_state(self) -> None:
        c = self.client
        info = (await c.query_instruments(self.instrument)).instruments
        if info:
            i = info[0]
            self.phase = "HALTED" if i.halted else Phase(i.phase).name.lower()
        self.book = await c.query_book(self.instrument)
        self.top = (await c.query_top_orders(self.instrument, LEVELS)).orders
        self.market = (await c.query_market_trades(self.instrument, MARKET_TRADES)).trades
        self.offers = (await c.query_block_offers(self.instrument)).offers
        self.auctions = [a for a in (await c.query_auctions()).auctions if a.instrument == self.instrument]
        self.open_orders = await c.query_orders()
        self.fills = (await c.query_all_trades())[-FILLS_SHOWN:]
        self.balances = (await c.query_balances()).balances

    async def action_refresh(self) -> None:
        self._dirty.set()

    # --- drawing -----------------------------------------------------------------------------

    def render_status(self) -> None:
        c = self.client
        loop = asyncio.get_running_loop()
        heard = f"{loop.time() - c.last_rx:.1f}s ago" if c.last_rx else "never"
        style = "green" if self.connection == "connected" else "bold red"
        self.query_one("#status", Static).update(Text.assemble(
            (f"{self.instrument} ", "bold"), (self.phase, "bold red" if self.phase != "continuous" else "green"),
            "  ", (self.connection, style), f"  seq {c.last_seq}  heard {heard}"))

    def render_all(self) -> None:
        self.render_status()
        book = self.query_one("#book", DataTable)
        book.clear()
        b = getattr(self, "book", None)
        if b is not None:
            for level in reversed(b.asks):
                book.add_row("", "", Text(yuan(level.price), style="bold red"), f"{level.qty:,}", str(level.orders))
            for level in b.bids:
                book.add_row(str(level.orders), f"{level.qty:,}", Text(yuan(level.price), style="bold green"), "", "")
        self._fill_table("#top", [
            (str(o.order_id), "buy" if o.side == Side.BUY else "sell", yuan(o.price), f"{o.qty:,}", o.member or "·")
            for o in self.top], [str(o.order_id) for o in self.top])
        market = self.query_one("#market", DataTable)
        market.clear()
        for t in self.market:  # newest first
            when = datetime.fromtimestamp(t.ts / 1e9, UTC).strftime("%H:%M:%S")
            market.add_row(when, yuan(t.price), f"{t.qty:,}", "buy" if t.aggressor == Side.BUY else "sell")
        deals = self.query_one("#deals", DataTable)
        deals.clear()
        for o in self.offers:
            terms = ("all or nothing" if not o.partial else "parts") + (", named" if o.named else "")
            deals.add_row("offer" + (" (yours)" if o.member else ""), str(o.offer_id), "buy" if o.side == Side.BUY else "sell",
                          f"{o.qty:,}", yuan(o.price), terms)
        for a in self.auctions:
            ends = datetime.fromtimestamp(a.end_ts / 1e9, UTC).strftime("%H:%M:%S")
            deals.add_row(f"auction of {a.seller}", str(a.auction_id), "sell", f"{a.qty:,}",
                          f"{yuan(a.floor)}-{yuan(a.ceiling)}", f"bids {a.bid_min:,}-{a.bid_max:,} t, ends {ends}")
        self._fill_table("#orders", [
            (str(o.order_id), o.coid, o.instrument, "buy" if o.side == Side.BUY else "sell", yuan(o.price),
             f"{o.qty:,}", f"{o.filled:,}") for o in self.open_orders], [str(o.order_id) for o in self.open_orders])
        fills = self.query_one("#fills", DataTable)
        fills.clear()
        for f in reversed(self.fills):
            when = datetime.fromtimestamp(f.ts / 1e9, UTC).strftime("%H:%M:%S")
            fills.add_row(when, f.instrument, "buy" if f.side == Side.BUY else "sell", yuan(f.price), f"{f.qty:,}",
                          "maker" if f.liquidity == 1 else "taker", yuan(f.fee), str(f.order_id))
        balances = self.query_one("#balances", DataTable)
        balances.clear()
        for row in sorted(self.balances, key=lambda r: (r.asset != "CNY", r.asset)):  # cash first
            cash = row.asset == "CNY"
            fmt = yuan if cash else (lambda n: f"{n:,} t")
            # Available excludes holds and, for allowances, today's purchases (sellable from
            # the next trading day); for cash it is what may be withdrawn.
            unsellable = 0 if cash else max(row.balance - row.held - row.available, 0)
            balances.add_row(row.asset, fmt(row.balance), fmt(row.held), "" if cash else fmt(unsellable),
                             fmt(row.available))

    def _fill_table(self, selector: str, rows: list[tuple[str, ...]], keys: list[str]) -> None:
        """Rows of a table with a cursor, keeping the cursor on the same row (by key)."""
        table = self.query_one(selector, DataTable)
        current = None
        if table.row_count and table.cursor_row < table.row_count:
            current = str(table.get_row_at(table.cursor_row)[0])
        table.clear()
        for row, key in zip(rows, keys, strict=True):
            table.add_row(*row, key=key)
        if current in keys:
            table.move_cursor(row=keys.index(current))

    # --- actions -------------------------------------------------------------------------

    def action_start(self, text: str) -> None:
        self.prefill(text)

    def action_clear(self) -> None:
        self.prefill("")

    def prefill(self, text: str) -> None:
        entry = self.query_one("#command", Input)
        entry.value = text
        entry.cursor_position = len(text)
        entry.focus()

    def _selected(self, selector: str, rows: list[Any]) -> Any:
        table = self.query_one(selector, DataTable)
        if not rows or not table.row_count:
            return None
        key = str(table.get_row_at(table.cursor_row)[0])
        return next((o for o in rows if str(o.order_id) == key), None)

    def action_hit(self) -> None:
        o = self._selected("#top", self.top)
        if o is None:
            self.say("no order selected in the book's orders (Tab to it, arrows to choose)")
            return
        self.prefill(f"hit {o.order_id} {o.qty}")

    def action_amend(self) -> None:
        o = self._selected("#orders", self.open_orders)
        if o is None:
            self.say("no open order selected")
            return
        self.prefill(f"amend {o.order_id} {yuan(o.price).replace(',', '')} {o.qty}")

    def action_cancel(self) -> None:
        o = self._selected("#orders", self.open_orders)
        if o is None:
            self.say("no open order selected")
            return
        self.prefill(f"cancel {o.order_id}")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        try:
            self.execute(text)
        except ValueError as e:
            self.say(f"not sent: {e}")
            return
        self.prefill("")

    def execute(self, text: str) -> None:
        """Send what a command line says (ValueError, nothing sent, when it is wrong)."""
        words = text.split()
        verb, args = words[0].lower(), words[1:]
        c = self.client
        if not c.connected:
            raise ValueError("not connected to the exchange")
        if verb in ("buy", "sell"):
            side = Side.BUY if verb == "buy" else Side.SELL
            if not args:
                raise ValueError(f"{verb} QTY PRICE [day|ioc|fok], or {verb} QTY mkt [ioc|fok]")
            qty = parse_qty(args[0])
            rest = [a.lower() for a in args[1:] if a != "@"]
            if not rest:
                raise ValueError("a price in yuan, or mkt")
            tif = TimeInForce.DAY
            if len(rest) > 1:
                if rest[1] not in TIFS or len(rest) > 2:
                    raise ValueError(f"time in force is day, ioc or fok, not {' '.join(rest[1:])!r}")
                tif = TIFS[rest[1]]
            if rest[0] in ("mkt", "market"):
                coid = c.new_order(self.instrument, side, qty, 0, ord_type=OrdType.MARKET, tif=tif)
                what = f"{verb} {qty:,} {self.instrument} mkt"
            else:
                price = parse_price(rest[0])
                coid = c.new_order(self.instrument, side, qty, price, tif=tif)
                what = f"{verb} {qty:,} {self.instrument} {yuan(price)}"
            if tif != TimeInForce.DAY:
                what += f" {tif.name.lower()}"
            self.pending[coid] = what
            self.say(f"sent: {what} (coid {coid})")
        elif verb == "hit":
            if len(args) != 2:
                raise ValueError("hit ORDER_ID QTY")
            target, qty = parse_id(args[0]), parse_qty(args[1])
            coid = c.hit(self.instrument, target, qty)
            self.pending[coid] = f"hit {qty:,} t of order {target}"
            self.say(f"sent: hit {qty:,} t of order {target} (coid {coid})")
        elif verb == "amend":
            if len(args) != 3:
                raise ValueError("amend ORDER_ID PRICE QTY")
            oid, price, qty = parse_id(args[0]), parse_price(args[1]), parse_qty(args[2])
            c.amend(oid, price, qty)
            self.say(f"sent: amend order {oid} to {qty:,} t at {yuan(price)}")
        elif verb == "cancel":
            if len(args) != 1:
                raise ValueError("cancel ORDER_ID, or cancel all")
            if args[0].lower() == "all":
                c.mass_cancel()
                self.say("sent: cancel every open order")
            else:
                oid = parse_id(args[0])
                c.cancel(oid)
                self.say(f"sent: cancel order {oid}")
        elif verb == "offer":
            # offer buy|sell QTY PRICE [to MEMBER] [partial]
            if len(args) < 3 or args[0].lower() not in ("buy", "sell"):
                raise ValueError("offer buy|sell QTY PRICE [to MEMBER] [partial]")
            side = Side.BUY if args[0].lower() == "buy" else Side.SELL
            qty, price = parse_qty(args[1]), parse_price(args[2])
            rest = [a for a in args[3:]]
            partial = "partial" in [a.lower() for a in rest]
            rest = [a for a in rest if a.lower() != "partial"]
            counterparty = ""
            if rest:
                if len(rest) != 2 or rest[0].lower() != "to":
                    raise ValueError("offer buy|sell QTY PRICE [to MEMBER] [partial]")
                counterparty = rest[1]
            coid = c.block_offer(self.instrument, side, qty, price, counterparty=counterparty, partial=partial)
            what = f"block offer {args[0].lower()} {qty:,} {self.instrument} {yuan(price)}"
            self.pending[coid] = what
            self.say(f"sent: {what} (coid {coid})")
        elif verb == "accept":
            if len(args) != 2:
                raise ValueError("accept OFFER_ID QTY")
            offer_id, qty = parse_id(args[0]), parse_qty(args[1])
            coid = c.block_accept(offer_id, qty)
            self.pending[coid] = f"accept {qty:,} t of block offer {offer_id}"
            self.say(f"sent: accept {qty:,} t of block offer {offer_id} (coid {coid})")
        elif verb == "withdraw":
            if len(args) != 1:
                raise ValueError("withdraw OFFER_ID")
            c.block_withdraw(parse_id(args[0]))
            self.say(f"sent: withdraw block offer {args[0]}")
        elif verb == "bid":
            if len(args) != 3:
                raise ValueError("bid AUCTION_ID QTY PRICE")
            auction, qty, price = parse_id(args[0]), parse_qty(args[1]), parse_price(args[2])
            coid = c.bid(auction, qty, price)
            self.pending[coid] = f"bid {qty:,} t at {yuan(price)} in auction {auction}"
            self.say(f"sent: bid {qty:,} t at {yuan(price)} in auction {auction} (coid {coid})")
        elif verb == "unbid":
            if len(args) != 2:
                raise ValueError("unbid AUCTION_ID BID_ID")
            c.withdraw_bid(parse_id(args[0]), parse_id(args[1]))
            self.say(f"sent: withdraw bid {args[1]} of auction {args[0]}")
        elif verb == "show":
            if len(args) != 1 or args[0] not in self.instruments:
                raise ValueError(f"show one of {', '.join(self.instruments)}")
            self.instrument = args[0]
            self._dirty.set()
        else:
            raise ValueError(f"unknown command {verb!r}: buy, sell, hit, amend, cancel, show, offer, accept, withdraw, "
                             "bid or unbid")

    async def action_quit(self) -> None:
        self.quitting = True
        self.exit(0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("instrument", nargs="?", default="", help="the instrument shown first (default: the first)")
    parser.add_argument("--data", default="etx-data", help="the exchange's data folder: finds the running exchange")
    parser.add_argument("--exchange", default="", help="HOST:PORT of the gateway (instead of --data)")
    parser.add_argument("--credentials", default="", help="a file (chmod 600) with member, user and secret")
    parser.add_argument("--as", dest="user", default="", help="MEMBER/USER of the trader (a prompt asks the secret)")
    parser.add_argument("--cafile", default="", help="the CA (or the exchange's own certificate) of a TLS gateway")


async def connect(args: argparse.Namespace) -> tuple[Client, str, list[str]]:
    host, port = exchange_address(args.data, args.exchange)
    creds = obtain(args.credentials, args.user, "")
    if not creds.member:
        raise ValueError("name the member too: --as MEMBER/USER")
    # Cancel on disconnect as the member chose for its traders (the exchange's default).
    client = Client(host, port, creds.member, creds.user, creds.secret, cod=CodMode.DEFAULT,
                    ssl=tls_context(args.cafile))
    try:
        await log_on(client)
    except CannotLogOn as e:
        raise ValueError(str(e)) from None
    symbols = [i.symbol for i in (await client.query_instruments()).instruments]
    instrument = args.instrument or (symbols[0] if symbols else "")
    if instrument not in symbols:
        await client.close()
        raise ValueError(f"no instrument {instrument!r} (the exchange lists {', '.join(symbols) or 'none'})")
    return client, instrument, symbols


def run(args: argparse.Namespace) -> int:
    async def main() -> int:
        client, instrument, symbols = await connect(args)
        app = TraderApp(client, instrument, symbols)
        try:
            await app.run_async()
        finally:
            app.quitting = True
            await client.close()
        return 0

    try:
        return asyncio.run(main())
    except (ValueError, CredentialsError) as e:
        print(f"etx trader: {e}", file=sys.stderr)
        return 2
